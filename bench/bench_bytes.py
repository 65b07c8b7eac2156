"""Bytes per audio-hour of each token stream, Parquet vs WebDataset layouts, against the floor.

The floor of a stream is its token rate × log2(vocab) bits (semantic: 25 tok/s × 10 bit =
112.5 kB per hour for k = 1024). Everything is measured in one run on the same records:

- Parquet (ours: zstd + dictionary encoding), the stream's column-chunk bytes;
- WebDataset variants, holding only that stream's members so header costs are counted:
  plain tar of .npy (the usual layout), tar of .npy.gz members, whole-tar .tar.gz, and
  whole-tar .tar.xz (ours).

The MuLan and melody streams are measured too (built-in models, packaged RVQs; `--mulan_model
none` / `--melody_model none` skip them); their `*_windows` fields are float16 embeddings, compared
with their raw size at one window per second.

Usage:
    python bench/bench_bytes.py --input '/path/to/corpus/**/*.ogg' --max_hours 3
Without --input it uses tests/data/audio (2.6 min: too short for k=1024, so k shrinks and the
floor is computed for that k; point it at a real corpus for the headline numbers).
"""
from __future__ import annotations

import argparse
import glob
import gzip
import io
import math
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenmill.schemas import shards as fmt  # noqa: E402
from tokenmill.schemas.records import TrackRecord, split_of  # noqa: E402
from tokenmill.tokenizers import audio  # noqa: E402
from tokenmill.tokenizers.kmeans import fit_kmeans  # noqa: E402
from tokenmill.tokenizers.melody_tokens import window_tokens  # noqa: E402
from tokenmill.tokenizers.mulan import segment_tokens  # noqa: E402
from tokenmill.tokenizers.semantic import build_extractor  # noqa: E402


def tokenize_corpus(paths, max_hours, k, codec=None, mulan=None, seed=0, melody=None):
    """Records of the corpus: semantic (k-means fitted here), acoustic with `codec`, with
    `mulan` = (model, rvq) the window embeddings (float16) and the segment's RVQ tokens, and with
    `melody` = (model, rvq) the melody windows (float16) and each window's RVQ tokens."""
    ex = build_extractor("spectral")
    rates_hz = (16_000,) + ((codec.sample_rate_hz,) if codec else ()) + ((mulan[0].sample_rate_hz,) if mulan else ())
    cfg = audio.AudioConfig(target_rates_hz=tuple(sorted(set(rates_hz))))
    segs, feats, acoustic, mul, mel, total_s = [], [], [], [], [], 0.0
    for p in paths:
        try:
            for s in audio.prepare(Path(p).read_bytes(), p, cfg):
                segs.append(s)
                feats.append(ex.extract(s.waves[16_000]))
                acoustic.append(codec.encode(s.waves[codec.sample_rate_hz]) if codec else None)
                if mulan:
                    w = mulan[0].embed_audio_windows(s.waves[mulan[0].sample_rate_hz])
                    mul.append((w.astype(np.float16), segment_tokens(w, mulan[1])))
                else:
                    mul.append((None, None))
                if melody:
                    w16 = melody[0].embed_windows(s.waves[melody[0].sample_rate_hz]).astype(np.float16)
                    mel.append((w16, window_tokens(w16, melody[1])))
                else:
                    mel.append((None, None))
                total_s += s.duration_s
        except audio.AudioError as e:
            print(f"  skip {p}: {e.reason}")
        if total_s >= max_hours * 3600:
            break
    allf = np.concatenate(feats)
    k = min(k, 2 ** int(math.log2(max(2, len(allf) // 39))))
    rng = np.random.default_rng(seed)
    sample = allf[rng.choice(len(allf), size=min(len(allf), 200_000), replace=False)]
    cb = fit_kmeans(sample, k, seed=seed, n_iter=20)
    records = [
        TrackRecord(key=s.key, uri=str(s.source_hash), segment=s.segment, start_s=s.start_s,
                    duration_s=s.duration_s, source_sample_rate=s.source_sample_rate,
                    source_channels=s.source_channels, split=split_of(s.key, 0.0),
                    semantic=cb.assign(f), acoustic=a, mulan_windows=m[0], mulan=m[1],
                    melody_windows=ml[0], melody=ml[1])
        for s, f, a, m, ml in zip(segs, feats, acoustic, mul, mel)]
    return records, k, total_s


def tar_of(members, compress=None):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    data = raw.getvalue()
    if compress == "gz":
        return gzip.compress(data, compresslevel=9, mtime=0)
    if compress == "xz":
        return fmt.xz_compress(data)
    return data


def npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def measure(records, stream="semantic", shard_records=200):
    out = {"parquet (ours)": 0, "tar .npy": 0, "tar .npy.gz members": 0, "tar.gz": 0, "tar.xz (ours)": 0}
    for i in range(0, len(records), shard_records):
        chunk = sorted(records[i:i + shard_records], key=lambda r: r.key)
        meta = pq.ParquetFile(io.BytesIO(fmt.encode_parquet(chunk))).metadata
        for rg in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                col = meta.row_group(rg).column(c)
                if col.path_in_schema.split(".")[0] == stream:
                    out["parquet (ours)"] += col.total_compressed_size
        plain = [(f"{r.key}.{stream}.npy", npy(getattr(r, stream))) for r in chunk]
        gzm = [(f"{r.key}.{stream}.npy.gz", gzip.compress(npy(getattr(r, stream)), 9, mtime=0)) for r in chunk]
        out["tar .npy"] += len(tar_of(plain))
        out["tar .npy.gz members"] += len(tar_of(gzm))
        out["tar.gz"] += len(tar_of(plain, "gz"))
        out["tar.xz (ours)"] += len(tar_of(plain, "xz"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(Path(__file__).resolve().parents[1] / "tests/data/audio/*"))
    ap.add_argument("--max_hours", type=float, default=2.0)
    ap.add_argument("--num_clusters", type=int, default=1024)
    ap.add_argument("--shard_records", type=int, default=200)
    ap.add_argument("--acoustic_codec", default="soundstream",
                    help="also measure the acoustic stream with this codec ('none' to skip)")
    ap.add_argument("--mulan_model", default="mulan", choices=("mulan", "none"),
                    help="also measure mulan (12 RVQ tokens per segment) and mulan_windows (float16, one "
                         "128-d window per second) with the built-in MuLan model and its packaged RVQ "
                         "('none' to skip)")
    ap.add_argument("--melody_model", default="builtin", choices=("builtin", "none"),
                    help="also measure melody (24 RVQ tokens per 4 s window, one per second) and "
                    "melody_windows (float16, 192-d) with the built-in melody model and its packaged RVQ")
    args = ap.parse_args()
    paths = sorted(p for p in glob.glob(args.input, recursive=True) if Path(p).is_file())  # "**/*" lists dirs too
    if not paths:
        raise SystemExit(f"--input {args.input} matched nothing")
    t0 = time.perf_counter()
    codec = None
    if args.acoustic_codec != "none":
        from tokenmill.tokenizers.codec import build_codec

        codec = build_codec(args.acoustic_codec)
    mulan = None
    if args.mulan_model != "none":
        from tokenmill.tokenizers.mulan import build_mulan, load_codebook_for

        model = build_mulan(args.mulan_model)
        mulan = (model, load_codebook_for(model))
    melody = None
    if args.melody_model != "none":
        from tokenmill.tokenizers.melody import build_melody
        from tokenmill.tokenizers.melody_tokens import load_codebook_for as melody_codebook

        mmodel = build_melody(args.melody_model)
        melody = (mmodel, melody_codebook(mmodel))
    records, k, total_s = tokenize_corpus(paths, args.max_hours, args.num_clusters, codec, mulan, melody=melody)
    hours = total_s / 3600
    bits = math.log2(k)
    floor = 25 * bits / 8 * 3600  # bytes per hour
    tokens = np.concatenate([r.semantic for r in records])
    p = np.bincount(tokens, minlength=k) / len(tokens)
    h0 = -(p[p > 0] * np.log2(p[p > 0])).sum()
    repeat = float(np.mean(np.concatenate([r.semantic[1:] == r.semantic[:-1] for r in records])))
    print(f"\n{len(records)} records, {hours:.2f} h of audio, k={k} (floor {bits:.0f} bit/token = "
          f"{floor / 1000:.1f} kB/h), tokenized in {time.perf_counter() - t0:.0f} s")
    print(f"token stats: unigram entropy {h0:.2f} bit, {repeat:.0%} of tokens repeat the previous one")
    streams = [("semantic", floor)]
    if codec is not None:
        a_bits = float(codec.frame_rate_hz) * codec.n_q * math.log2(codec.codebook_size)
        streams.append(("acoustic", a_bits / 8 * 3600))
    if mulan is not None:
        rvq = mulan[1]
        per_record = rvq.n_stages * math.log2(rvq.k) / 8  # bytes of one segment's tokens
        streams.append(("mulan", per_record * len(records) / hours))
        # not tokens: the "floor" is the raw float16 payload, 1 window per second
        streams.append(("mulan_windows", mulan[0].dim * 2 * 3600))
    if melody is not None:  # one window per second: its RVQ codes, and its float16 embedding (raw)
        streams.append(("melody", melody[1].n_stages * math.log2(melody[1].k) / 8 * 3600))
        streams.append(("melody_windows", melody[0].dim * 2 * 3600))
    for stream, floor_s in streams:
        sizes = measure(records, stream=stream, shard_records=args.shard_records)
        ref = "raw float16" if stream.endswith("_windows") else "floor"
        print(f"\n{stream} stream, {args.shard_records} records per shard, {ref} {floor_s / 1000:.1f} kB/h")
        print(f"{'layout':<24}{'kB per audio-hour':>18}{'x ' + ref:>14}{'x parquet':>11}")
        pq_bph = sizes["parquet (ours)"] / hours
        for name, n in sizes.items():
            bph = n / hours
            print(f"{name:<24}{bph / 1000:>18.1f}{bph / floor_s:>14.2f}{bph / pq_bph:>11.2f}")
        ours = sizes["tar.xz (ours)"] / hours / floor_s
        if stream in ("semantic", "acoustic"):
            print(f"goal: WebDataset within 1.10x of the floor -> {ours:.2f}x: {'met' if ours <= 1.10 else 'NOT met'}")
        elif stream == "mulan":  # 12 tokens (15 bytes) per segment: the .npy header alone is 128 bytes
            print(f"(no goal: {rvq.n_stages} tokens per segment, so per-member headers dominate; "
                  f"{sizes['tar.xz (ours)'] / hours / 1000:.1f} kB per audio-hour in .tar.xz)")


if __name__ == "__main__":
    main()
