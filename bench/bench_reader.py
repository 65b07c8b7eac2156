"""Shard reader throughput (training/data.py) in tokens/s, as two ratios measured in one run:

1. reader / training: tokens/s the reader yields over tokens/s one training step consumes (goal
   >= 20x). Assumption (no stage-model preset exists yet): the `tiny` preset is a decoder-only
   Transformer, d=256, 4 layers, 4 heads, FFN 1024, vocab 1024, batch 8 x 1024 tokens, one AdamW
   step, timed here on the CPU (`--step_s S` replaces the measured step time). A CPU step is slow,
   so the ratio is also printed for an assumed accelerator step of `--gpu_step_s` (default 50 ms,
   about 160k tokens/s), the case the goal is about.
2. reader / on-the-fly: acoustic tokens/s read from shards over acoustic tokens/s produced by
   decoding the same audio files and encoding them with the codec inside the loader, as
   audiolm-pytorch does (goal >= 100x).

Tokens: every integer token in a record (semantic [T_s] + acoustic [K, T_a] + mulan [12]); ratio 2
counts acoustic tokens on both sides. The reader runs in one process (no DataLoader workers,
checksums verified, shuffle buffer 256); everything uses one torch thread.

    python bench/bench_reader.py                 # tokenizes tests/data/audio into a temp dir first
    python bench/bench_reader.py --dataset DIR   # an existing dataset (on-the-fly uses its uris)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_dataset(work: Path) -> Path:
    import beam_runner

    audio_glob = str(ROOT / "tests" / "data" / "audio" / "*")
    cb, out = work / "codebooks", work / "ds"
    assert beam_runner.main(["fit-codebook", "--input", audio_glob, "--output", str(cb), "--num_clusters", "64",
                             "--sample_frames", "4000", "--heldout_frames", "400"]) == 0
    assert beam_runner.main(["tokenize", "--input", audio_glob, "--codebook", str(cb), "--output", str(out),
                             "--num_shards", "4", "--valid_fraction", "0.0", "--mulan_model", "none",
                             "--acoustic_codec", "soundstream", "--torch_threads", "1"]) == 0
    return out


def read_rate(root: Path, fmt: str, min_s: float) -> tuple[float, float, int]:
    """(all tokens/s, acoustic tokens/s, records) over whole epochs until `min_s` seconds pass."""
    from tokenmill.training.data import ShardReader

    reader = ShardReader(str(root), format=fmt, shuffle_buffer=256, seed=0)
    tokens = acoustic = n = 0
    t0 = time.perf_counter()
    while True:
        for rec in reader:
            a = 0 if rec.acoustic is None else rec.acoustic.size
            tokens += rec.semantic.size + a + (0 if rec.mulan is None else rec.mulan.size)
            acoustic += a
            n += 1
        wall = time.perf_counter() - t0
        if wall >= min_s:
            return tokens / wall, acoustic / wall, n


def train_step_s(batch: int, seq: int, steps: int = 3) -> float:
    """Median seconds of one forward + backward + AdamW step of the assumed `tiny` preset."""
    import torch

    torch.manual_seed(0)
    d, vocab = 256, 1024
    layer = torch.nn.TransformerEncoderLayer(d, 4, 1024, dropout=0.0, batch_first=True,
                                               norm_first=True)
    model = torch.nn.ModuleDict({"emb": torch.nn.Embedding(vocab, d), "pos": torch.nn.Embedding(seq, d),
                                 "body": torch.nn.TransformerEncoder(layer, 4, enable_nested_tensor=False), "head": torch.nn.Linear(d, vocab)})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(seq)
    x = torch.randint(0, vocab, (batch, seq))
    times = []
    for _ in range(steps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        h = model["emb"](x) + model["pos"](torch.arange(seq))
        logits = model["head"](model["body"](h, mask=mask, is_causal=True))
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def on_the_fly_rate(uris: list[str], max_audio_s: float) -> tuple[float, float]:
    """(acoustic tokens/s, audio seconds) of decode + resample + codec encode of the files."""
    from tokenmill.tokenizers import audio
    from tokenmill.tokenizers.codec import build_codec

    codec = build_codec("soundstream")
    cfg = audio.AudioConfig(target_rates_hz=(codec.sample_rate_hz,), max_segment_s=30.0)
    codec.encode(__import__("numpy").zeros(codec.sample_rate_hz, "float32"))  # warm-up
    tokens, seconds, wall = 0, 0.0, 0.0
    for uri in uris:
        data = Path(uri).read_bytes()
        t0 = time.perf_counter()
        for seg in audio.prepare(data, uri, cfg):
            tokens += codec.encode(seg.waves[codec.sample_rate_hz]).size
            seconds += seg.duration_s
        wall += time.perf_counter() - t0
        if seconds >= max_audio_s:
            break
    return tokens / wall, seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, help="dataset directory (default: tokenize tests/data/audio)")
    ap.add_argument("--min_s", type=float, default=3.0, help="seconds of reading per format (default 3)")
    ap.add_argument("--batch", type=int, default=8, help="assumed tiny-preset batch (default 8)")
    ap.add_argument("--seq", type=int, default=1024, help="assumed tokens per sequence (default 1024)")
    ap.add_argument("--step_s", type=float, help="training step seconds to assume instead of timing one")
    ap.add_argument("--gpu_step_s", type=float, default=0.05,
                    help="assumed accelerator step seconds for the second training ratio (default 0.05)")
    ap.add_argument("--otf_audio_s", type=float, default=60.0,
                    help="audio seconds to tokenize on the fly (default 60)")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from tokenmill.schemas.shards import read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = a.dataset or build_dataset(Path(tmp))
        if a.dataset is None:
            print(f"built {root} from tests/data/audio in {time.perf_counter() - t0:.1f} s")
        m = read_manifest(str(root))
        formats = sorted({s["format"] for s in m["shards"]})
        print(f"dataset: {m['counts']['records']} records, {m['counts']['seconds']:.1f} s of audio, "
              f"{len(m['shards'])} shards ({', '.join(formats)}), streams {sorted(m['streams'])}")
        step_s = a.step_s if a.step_s is not None else train_step_s(a.batch, a.seq)
        need = a.batch * a.seq / step_s
        print(f"training: tiny preset step ({a.batch} x {a.seq} tokens) {step_s * 1e3:.0f} ms "
              f"({'given' if a.step_s is not None else 'measured, CPU, 1 thread'}) -> {need:,.0f} tokens/s")
        from tokenmill.training.data import ShardReader

        uris = sorted({r.uri for r in ShardReader(str(root), shuffle_shards=False)})
        otf, otf_s = on_the_fly_rate(uris, a.otf_audio_s)
        print(f"on the fly: decode + soundstream encode of {otf_s:.0f} s of audio -> {otf:,.0f} acoustic tokens/s")
        for fmt in formats:
            rate, ac_rate, n = read_rate(root, fmt, a.min_s)
            gpu_need = a.batch * a.seq / a.gpu_step_s
            line = (f"reader {fmt:10s}: {rate:>12,.0f} tokens/s ({n} records); vs training {rate / need:,.0f}x, "
                    f"vs a {a.gpu_step_s * 1e3:.0f} ms step {rate / gpu_need:,.1f}x (goal >= 20)")
            if ac_rate:
                line += f"; acoustic {ac_rate:,.0f}/s vs on the fly {ac_rate / otf:,.1f}x (goal >= 100)"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
