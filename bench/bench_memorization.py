"""`memorization --generated` at scale: generated windows searched per second against a training
set of N semantic tokens, on 1 and 2 workers, and the projection to 280k hours (25 billion tokens).

    python bench/bench_memorization.py [--tokens 2000000] [--sequences 40] [--workers 1,2]

Data (synthetic, written with the schema writers; not timed): records of 300 s (7,500 frames) over
K = 1024 ids whose 92-d centroids (the spectral codebook's shape) lie in 64 clusters of 16 (k-means
centroids of music have such structure; independent random 92-d centroids are all about equally
far apart, which no real codebook is). Each record plays runs of 1-10 frames from its own palette
of 24 ids drawn from 3 clusters, so windows of different records differ as music does; real tokens
share more ids between tracks, which makes more candidates. Generated: 30 s
sequences, half copies or near copies (10 substitutions) of training stretches, half new palettes;
windows of 125 frames every 25 frames.

Printed, all measured in this run, one BLAS thread per worker:
  * OT cost per pair of 125-token windows: POT emd2 (exact) and sinkhorn2 (the paper's solver);
  * the scan kernel in this process (GeneratedIndex.scan over every record, tau calibrated on 1,000
    negative pairs first): training tokens/s, window comparisons/s (training windows x generated
    windows / s), candidates and OT solves;
  * the Beam job (beam_runner.py memorization --generated, --tau fixed to the kernel's) on 1 and 2
    local worker processes: wall time, tokens/s, the 2-worker speed-up;
  * the projection: worker-hours for 25e9 tokens at the kernel rate (a search is linear in the
    training tokens at a fixed generated set; it grows with the generated windows G through the
    sketch comparisons and with the candidates through the OT solves).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

K, D, W, FRAMES = 1024, 92, 125, 7500


def write_dataset(root: Path, records, cb_id: str, cb_path: str, n_shards: int) -> None:
    from tokenmill.schemas import manifest as mf
    from tokenmill.schemas import shards as fmt
    from tokenmill.schemas.records import parquet_shard_name

    root.mkdir(parents=True)
    infos = []
    for s in range(n_shards):
        recs = sorted(records[s::n_shards], key=lambda r: r.key)
        data, path = fmt.encode_parquet(recs), parquet_shard_name("train", s, n_shards)
        (root / path).parent.mkdir(exist_ok=True)
        (root / path).write_bytes(data)
        infos.append(mf.ShardInfo(path, "parquet", "train", len(recs), sum(r.duration_s for r in recs), len(data),
                                  hashlib.sha256(data).hexdigest()))
    uris = {r.uri for r in records}
    counts = mf.Counts(inputs=len(uris), sources_in_records=len(uris), sources_dead_only=0, dead_letters=0,
                       records=len(records), seconds=sum(r.duration_s for r in records), inputs_digest=mf.uri_digest(uris))
    m = mf.build_manifest(job={"num_shards": n_shards, "codebook": cb_path}, tokenizers={"semantic": {"codebook_id": cb_id}},
                          codebooks={"semantic": cb_id}, streams={"semantic": {
                              "sample_rate_hz": 16000, "hop_samples": 640, "frame_rate_hz": 25.0, "vocab_size": K}},
                          shards=infos, dead_letter_files=[], counts=counts, tokenmill_version="bench")
    (root / "manifest.json").write_bytes(mf.dumps(m))


def palette_tokens(rng, n: int):
    import numpy as np

    clusters = rng.choice(K // 16, 3, replace=False)
    palette = rng.choice((clusters[:, None] * 16 + np.arange(16)).reshape(-1), 24, replace=False)
    out = np.repeat(rng.choice(palette, n), rng.integers(1, 11, n))[:n]
    return out.astype(np.uint16)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2_000_000, help="training tokens (default %(default)s)")
    ap.add_argument("--sequences", type=int, default=40, help="generated 30 s sequences (default %(default)s)")
    ap.add_argument("--workers", default="1,2", help="worker counts of the Beam runs (default %(default)s)")
    args = ap.parse_args()

    import numpy as np
    from threadpoolctl import threadpool_limits

    import beam_runner
    from tokenmill.eval.memorization import calibrate_tau, negative_pairs, source_of
    from tokenmill.eval.ot import OTConfig, TokenOT
    from tokenmill.eval.search import GeneratedIndex, ScanStats
    from tokenmill.schemas.records import TrackRecord, make_key
    from tokenmill.tokenizers.kmeans import Codebook

    threadpool_limits(1, "blas")
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    centers = rng.normal(size=(K // 16, D)) * 3.0
    cent = np.repeat(centers, 16, axis=0) + rng.normal(size=(K, D)) * 0.5
    cb_path = Codebook(cent.astype(np.float32), card={}).save(tmp / "codebooks")
    cb = Codebook.load(cb_path)
    n_rec = max(2, args.tokens // FRAMES)
    recs = [TrackRecord(key=make_key(f"{r + 1:016x}", 0), uri=f"/bench/{r}.flac", segment=0, start_s=0.0,
                        duration_s=FRAMES / 25, source_sample_rate=48000, source_channels=2, split="train",
                        semantic=palette_tokens(rng, FRAMES)) for r in range(n_rec)]
    write_dataset(tmp / "ds", recs, cb.id, str(cb_path), n_shards=8)
    gen_dir = tmp / "generated"
    gen_dir.mkdir()
    generated = {}
    for i in range(args.sequences):
        if i % 2 == 0:
            src = recs[int(rng.integers(n_rec))].semantic
            off = int(rng.integers(FRAMES - 750))
            seq = src[off:off + 750].copy()
            if i % 4 == 2:
                pos = rng.choice(750, 60, replace=False)
                seq[pos] = rng.integers(0, K, 60)
        else:
            seq = palette_tokens(rng, 750)
        np.save(gen_dir / f"g{i:03d}.npy", seq)
        generated[f"g{i:03d}#0"] = seq
    print(f"training set: {n_rec} records, {n_rec * FRAMES:,} tokens ({n_rec * FRAMES / 25 / 3600:.1f} h); generated: "
          f"{args.sequences} x 30 s")

    ot_exact = TokenOT(cb.centroids)
    ot_sink = TokenOT(cb.centroids, OTConfig(method="sinkhorn"))
    wins = [(source_of(r.key), r.semantic[o:o + W]) for r in recs[:200] for o in (0, 2000, 4000)]
    pairs = negative_pairs([w[0] for w in wins], 1000, seed=0)
    t0 = time.perf_counter()
    neg = [ot_exact.cost(wins[i][1], wins[j][1]) for i, j in pairs.tolist()]
    emd_ms = (time.perf_counter() - t0) / len(pairs) * 1e3
    t0 = time.perf_counter()
    for i, j in pairs[:50].tolist():
        ot_sink.cost(wins[i][1], wins[j][1])
    sink_ms = (time.perf_counter() - t0) / 50 * 1e3
    tau = calibrate_tau(np.array(neg), 1e-3)["value"]
    print(f"OT per pair of {W}-token windows: exact (emd2) {emd_ms:.2f} ms, sinkhorn2 {sink_ms:.2f} ms "
          f"({sink_ms / emd_ms:.1f}x); tau at FPR 1e-3 over {len(neg)} negatives: {tau:.4g}")

    index = GeneratedIndex(generated, cb.centroids, window=W, stride=25, sketch_dims=8, seed=0, ot=ot_exact)
    st = ScanStats()
    t0 = time.perf_counter()
    for r in recs:
        _, s = index.scan(r.key, r.uri, r.semantic, tau, train_stride=1, max_ot_per_record=4)
        st.add(s)
    dt = time.perf_counter() - t0
    tok_s = st.tokens / dt
    print(f"scan kernel, 1 thread: {len(index)} generated windows, {tok_s:,.0f} training tokens/s, "
          f"{st.windows_sketched * len(index) / dt:,.0f} window comparisons/s; {st.candidates:,} candidates, "
          f"{st.ot_solves:,} OT solves, {st.exact_hits} exact hits, {st.capped} capped")

    walls = {}
    for w in [int(x) for x in args.workers.split(",")]:
        out = tmp / f"report-{w}"
        t0 = time.perf_counter()
        assert beam_runner.main(["memorization", "--generated", str(gen_dir), "--dataset", str(tmp / "ds"),
                                 "--output", str(out), "--tau", repr(tau), "--negatives", "200",
                                 "--negative_windows", "100", "--no_plots", "--direct_running_mode=multi_processing",
                                 f"--direct_num_workers={w}"]) == 0
        walls[w] = time.perf_counter() - t0
        rep = json.loads((out / "memorization.json").read_text())
        print(f"Beam job, {w} worker(s): {walls[w]:.1f} s wall, {st.tokens / walls[w]:,.0f} tokens/s, "
              f"{rep['overall']['exact']['count']} windows with exact copies, "
              f"{rep['overall']['approximate']['count']} with approximate ones")
    if 1 in walls and 2 in walls:
        print(f"2 workers vs 1: {walls[1] / walls[2]:.2f}x faster (2 cores shared with other jobs)")
    total = 25e9
    hours = total / tok_s / 3600
    print(f"projection to 280k hours (25e9 tokens) with {len(index)} generated windows: {hours:,.0f} worker-hours at "
          f"the kernel rate ({hours / 100:,.1f} h on 100 workers); the candidate and OT counts scale with how "
          "alike the real tracks are")
    return 0


if __name__ == "__main__":
    sys.exit(main())
