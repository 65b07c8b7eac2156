"""Built-in SoundStream vs Opus 6 kbps on held-out clips, and SoundStream encode speed.

    .venv/bin/python bench/bench_codec_quality.py --heldout RUN_DIR/heldout.txt \
        [--codec-path FILE] [--clip-s 10] [--json OUT]
    .venv/bin/python bench/bench_codec_quality.py --data 'CORPUS/audio/**/*.ogg' --data ...  # same files

Held-out files are those the trainer never saw (RUN_DIR/heldout.txt, chosen by file-name hash in
`codec_train.is_heldout`). From each, one clip of `--clip-s` seconds from the middle of the track
is decoded to 24 kHz mono (tokenizers.audio). Each clip is coded by:
  - SoundStream with all 12 levels (12 x 10 bits x 50 Hz = 6 kbps) and with 4 levels (2 kbps);
  - Opus at 6 kbps (opusenc --bitrate 6, then opusdec --rate 24000; Debian opus-tools/libopus).
Metrics (tokenmill.training.losses): mel distance (mean |ln mel diff| over FFT 512/1024/2048;
lower is better) and SI-SNR in dB (higher is better). Printed per clip, as means, and as ratios
measured in this one run. Encode and decode speed are timed on one torch thread (x real time per core).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tokenmill.tokenizers import audio
from tokenmill.tokenizers.codec import build_codec
from tokenmill.training.codec_train import list_files
from tokenmill.training.losses import mel_distance, si_snr

SR = 24000


def load_clip(path: str, clip_s: float) -> np.ndarray | None:
    dec = audio.decode(Path(path).read_bytes(), path)
    wave = audio.resample(audio.to_mono(dec.pcm), dec.sample_rate_hz, SR, "HQ")
    n = min(int(clip_s * 50), len(wave) // 480) * 480
    if n < SR:
        return None
    start = (len(wave) - n) // 2 // 480 * 480
    clip = np.ascontiguousarray(wave[start:start + n], dtype=np.float32)
    return clip if np.sqrt(np.mean(clip ** 2)) > 1e-3 else None


def opus_roundtrip(clip: np.ndarray, kbps: float, tmp: Path) -> np.ndarray:
    src, enc, out = tmp / "in.wav", tmp / "x.opus", tmp / "out.wav"
    soundfile.write(src, np.clip(clip, -1, 1), SR, subtype="PCM_16")
    subprocess.run(["opusenc", "--quiet", "--bitrate", str(kbps), str(src), str(enc)], check=True)
    subprocess.run(["opusdec", "--quiet", "--rate", str(SR), str(enc), str(out)], check=True)
    dec, sr = soundfile.read(out, dtype="float32")
    assert sr == SR, sr
    dec = dec if dec.ndim == 1 else dec.mean(axis=1)
    return np.pad(dec, (0, max(0, len(clip) - len(dec))))[:len(clip)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heldout", default=None, help="file listing held-out audio (RUN_DIR/heldout.txt)")
    p.add_argument("--data", action="append", default=[],
                   help="instead of --heldout: the trainer's --data globs; held-out files are recomputed")
    p.add_argument("--heldout-percent", type=int, default=3)
    p.add_argument("--codec-path", default=None, help="exported .safetensors (default: the committed one)")
    p.add_argument("--clip-s", type=float, default=10.0)
    p.add_argument("--opus-kbps", type=float, default=6.0)
    p.add_argument("--max-files", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    if not shutil.which("opusenc") or not shutil.which("opusdec"):
        raise SystemExit("opusenc/opusdec not found: apt-get install -y opus-tools")
    torch.set_num_threads(1)
    codec = build_codec("soundstream", **({"path": a.codec_path} if a.codec_path else {}))
    if a.data:
        files = list_files(a.data, a.heldout_percent)[1]
    elif a.heldout:
        files = [f for f in Path(a.heldout).read_text().split("\n") if f]
    else:
        p.error("give --heldout FILE or --data GLOB")
    files = files[:a.max_files] if a.max_files else files
    rows, loaded, enc_s, dec_s, audio_s = [], [], 0.0, 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmpdir:
        for f in files:
            clip = load_clip(f, a.clip_s)
            if clip is None:
                print(f"skip (short or silent): {f}")
                continue
            loaded.append(clip)
            t0 = time.perf_counter()
            codes = codec.encode(clip)
            t1 = time.perf_counter()
            rec12 = codec.decode(codes)
            t2 = time.perf_counter()
            rec4 = codec.decode(codes[:4])
            enc_s, dec_s, audio_s = enc_s + t1 - t0, dec_s + t2 - t1, audio_s + len(clip) / SR
            opus = opus_roundtrip(clip, a.opus_kbps, Path(tmpdir))
            row = {"file": f, "seconds": len(clip) / SR}
            for name, rec in (("ss12", rec12), ("ss4", rec4), ("opus", opus)):
                row[f"{name}_mel"], row[f"{name}_sisnr"] = mel_distance(clip, rec), si_snr(clip, rec)
            rows.append(row)
            print(f"{Path(f).name[:40]:40s} mel ss12 {row['ss12_mel']:.3f} ss4 {row['ss4_mel']:.3f} "
                  f"opus {row['opus_mel']:.3f} | SI-SNR ss12 {row['ss12_sisnr']:6.2f} ss4 "
                  f"{row['ss4_sisnr']:6.2f} opus {row['opus_sisnr']:6.2f}")
    if not rows:
        raise SystemExit("no usable held-out clips")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("file", "seconds")}
    median = {k: float(np.median([r[k] for r in rows])) for k in mean}
    summary = {
        "clips": len(rows), "audio_s": audio_s, "codec": codec.describe(), "opus_kbps": a.opus_kbps,
        "mean": mean, "median": median,
        "ratio_mel_ss12_over_opus": mean["ss12_mel"] / mean["opus_mel"],
        "ratio_mel_ss4_over_opus": mean["ss4_mel"] / mean["opus_mel"],
        "sisnr_ss12_minus_opus_db": mean["ss12_sisnr"] - mean["opus_sisnr"],
        "sisnr_ss4_minus_opus_db": mean["ss4_sisnr"] - mean["opus_sisnr"],
        "encode_x_realtime_per_core": audio_s / enc_s, "decode12_x_realtime_per_core": audio_s / dec_s,
        "rows": rows,
    }
    print(f"\n{len(rows)} held-out clips, {audio_s:.0f} s of audio")
    print(f"mean mel distance: SoundStream 12 levels (6 kbps) {mean['ss12_mel']:.3f}, 4 levels (2 kbps) "
          f"{mean['ss4_mel']:.3f}, Opus {a.opus_kbps:g} kbps {mean['opus_mel']:.3f}")
    print(f"mean SI-SNR dB:    SoundStream 12 levels {mean['ss12_sisnr']:.2f}, 4 levels {mean['ss4_sisnr']:.2f}, "
          f"Opus {mean['opus_sisnr']:.2f}")
    print(f"median SI-SNR dB:  SoundStream 12 levels {median['ss12_sisnr']:.2f}, 4 levels "
          f"{median['ss4_sisnr']:.2f}, Opus {median['opus_sisnr']:.2f}; median mel distance "
          f"{median['ss12_mel']:.3f} / {median['ss4_mel']:.3f} / {median['opus_mel']:.3f}")
    print(f"ratio mel ss12/opus {summary['ratio_mel_ss12_over_opus']:.2f}x, ss4/opus "
          f"{summary['ratio_mel_ss4_over_opus']:.2f}x; SI-SNR ss12 - opus {summary['sisnr_ss12_minus_opus_db']:+.2f} dB")
    print(f"speed on 1 thread: encode {summary['encode_x_realtime_per_core']:.1f}x real time, "
          f"decode (12 levels) {summary['decode12_x_realtime_per_core']:.1f}x real time")
    # batching: one model call on 8 equal clips vs 8 calls (encode_batch loops on a CPU because of this)
    clips = [c[:SR * 5] for c in loaded if len(c) >= SR * 5][:8]
    x = torch.stack([torch.from_numpy(c) for c in clips])[:, None]
    t0 = time.perf_counter()
    single = [codec.model.encode(x[i:i + 1]) for i in range(len(clips))]
    t1 = time.perf_counter()
    batched = codec.model.encode(x)
    t2 = time.perf_counter()
    assert all(torch.equal(s[:, 0], batched[:, i]) for i, s in enumerate(single))
    summary["encode_batch_speedup_vs_loop"] = (t1 - t0) / (t2 - t1)
    print(f"one batch of {len(clips)} equal 5 s clips: {(t1 - t0) / (t2 - t1):.2f}x the speed of one call each")
    if a.json:
        a.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
