"""Shared fixtures. Tests read only tests/data (nothing outside the repository); generated inputs go to tmp dirs.

Add new fixtures in their own section below; keep each one documented and deterministic.
"""
from __future__ import annotations

import functools
import hashlib
import io
import shutil
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tokenmill.tokenizers.compute import pin_kernels

# The suite runs jobs in this process (the embedded runner), and every job pins its compute layout
# (tokenizers/compute.py): torch must not dispatch a kernel before the default one is pinned.
pin_kernels("portable")

DATA_DIR = Path(__file__).resolve().parent / "data"


# ---- real audio ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def real_audio_dir() -> Path:
    """tests/data/audio: short, openly licensed real music clips (see tests/data/ATTRIBUTION.md)."""
    return DATA_DIR / "audio"


# ---- bad-input corpus ------------------------------------------------------------------------

def _music_like(sample_rate_hz: int, seconds: float, seed: int) -> np.ndarray:
    """Deterministic music-like mono float32 [n]: a few decaying harmonic notes plus quiet noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sample_rate_hz * seconds)) / sample_rate_hz
    out = np.zeros_like(t)
    note_s = 0.25
    notes_hz = rng.choice([220.0, 246.9, 261.6, 293.7, 329.6, 392.0], size=int(seconds / note_s))
    for k, f0 in enumerate(notes_hz):
        t0 = k * note_s
        local = np.clip(t - t0, 0.0, None)
        env = np.where(t >= t0, np.exp(-local * 6.0), 0.0)
        for h in (1, 2, 3):
            f = f0 * h
            if f < sample_rate_hz / 2:
                out += env * np.sin(2 * np.pi * f * local) / h
    out += 0.01 * rng.standard_normal(len(t))
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


def _wav_bytes(pcm: np.ndarray, sample_rate_hz: int, subtype: str = "PCM_16") -> bytes:
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, pcm, sample_rate_hz, format="WAV", subtype=subtype)
    return buf.getvalue()


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory, real_audio_dir) -> dict[str, tuple[Path, str | None]]:
    """Generated (seeded) awkward inputs: name -> (path, expected AudioError.reason or None if accepted).

    None means the front end must accept the file (e.g. 8 channels is downmixed, 192 kHz resampled).
    """
    root = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(20240601)
    flac = (real_audio_dir / "pushover_greek.flac").read_bytes()
    music_48k = _music_like(48_000, 2.0, seed=1)
    nan_pcm = music_48k.copy()
    nan_pcm[rng.choice(len(nan_pcm), size=5, replace=False)] = np.nan
    eight = np.stack([np.roll(music_48k, 37 * c) * (1.0 - 0.08 * c) for c in range(8)], axis=1)
    cases: dict[str, tuple[str, bytes, str | None]] = {
        "truncated_flac": ("truncated.flac", flac[: len(flac) // 2], "undecodable"),
        "random_bytes_wav": ("random.wav", rng.bytes(16_384), "undecodable"),
        "empty_flac": ("empty.flac", b"", "empty"),
        "nan_samples": ("nan.wav", _wav_bytes(nan_pcm, 48_000, "FLOAT"), "non_finite"),
        "eight_channels": ("eight_channels.wav", _wav_bytes(eight, 48_000), None),
        "rate_8k": ("rate_8k.wav", _wav_bytes(_music_like(8_000, 2.0, seed=2), 8_000), "unsupported"),
        "rate_192k": ("rate_192k.wav", _wav_bytes(_music_like(192_000, 2.0, seed=3), 192_000), None),
        "silence": ("silence.wav", _wav_bytes(np.zeros(2 * 48_000, np.float32), 48_000), "silent"),
        "text_mp3": ("text.mp3", b"This is not audio, just text with an .mp3 name.\n" * 40, "undecodable"),
    }
    out = {}
    for name, (filename, data, reason) in cases.items():
        path = root / filename
        path.write_bytes(data)
        out[name] = (path, reason)
    return out


# ---- torch ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread for a test module: tiny models gain nothing from two, and lose seconds to
    spinning on a loaded 2-core machine. Use with pytestmark = pytest.mark.usefixtures(...)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- MuLan -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def small_mulan_weights(tmp_path_factory) -> Path:
    """A small randomly initialised built-in MuLan (conv channels 16, 16; text head 32), saved as
    a weights file for build_mulan('mulan', path=...). Its per-band mel statistics are those of a
    real clip, so different music gives visibly different (if meaningless) embeddings. Recorded
    MiniLM hash: the installed one (hashed directly; the text tower loads only when used)."""
    import soundfile
    import soxr
    import torch

    from tokenmill.tokenizers.codec import sha256_of_files
    from tokenmill.tokenizers.mulan_builtin import MulanNet, MulanNetConfig, minilm_dir, save_mulan

    wave, sr = soundfile.read(DATA_DIR / "audio" / "score_bach_bwv66_6.wav", dtype="float32")
    wave = soxr.resample(wave.mean(axis=1) if wave.ndim == 2 else wave, sr, 16_000).astype(np.float32)
    torch.manual_seed(0)
    net = MulanNet(MulanNetConfig(channels=(16, 16), text_hidden=32)).eval()
    with torch.no_grad():
        mel = net.logmel(torch.from_numpy(wave)[None])[0]        # [n_mels, T]
        net.mel_mean.copy_(mel.mean(dim=1, keepdim=True))
        net.mel_std.copy_(mel.std(dim=1, keepdim=True).clamp(min=1e-3))
    path = tmp_path_factory.mktemp("mulan_small") / "mulan-small.safetensors"
    return save_mulan(net, path, sha256_of_files([minilm_dir() / "model.safetensors"]))


# ---- a small corpus with a duplicate and a dead letter (distributed and metrics tests) -------

def small_corpus(root: Path, real_audio_dir: Path) -> Path:
    """4 s excerpts of two bundled clips under their own names (so captions join), a byte copy of
    one (a duplicate) and an undecodable file (a dead letter)."""
    import soundfile

    root.mkdir(parents=True, exist_ok=True)
    for name, start_s in (("score_bach_bwv66_6.wav", 0), ("pushover_greek.flac", 2)):
        pcm, sr = soundfile.read(real_audio_dir / name, dtype="int16")
        soundfile.write(root / name, pcm[start_s * sr: (start_s + 4) * sr], sr, subtype="PCM_16")
    shutil.copy(root / "score_bach_bwv66_6.wav", root / "zz_copy_of_bach.wav")
    (root / "broken.mp3").write_bytes(b"This is not audio.\n" * 50)
    return root


# ---- hand-made token datasets and a local HTTP server (no Beam) ------------------------------

def write_token_dataset(root: Path, records, *, streams: dict, codebooks: dict, tokenizers: dict,
                        job: dict | None = None) -> Path:
    """A dataset directory written with the schema writers: one shard per split present in
    `records` and per format, no dead letters, a manifest whose counts reconcile."""
    from tokenmill.schemas import manifest as mf
    from tokenmill.schemas import shards as fmt
    from tokenmill.schemas.records import parquet_shard_name, wds_shard_name

    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for form, name, enc in (("parquet", parquet_shard_name, fmt.encode_parquet),
                            ("webdataset", wds_shard_name, fmt.encode_wds)):
        for split in sorted({r.split for r in records}):
            recs = sorted((r for r in records if r.split == split), key=lambda r: r.key)
            data, path = enc(recs), name(split, 0, 1)
            (root / path).parent.mkdir(exist_ok=True)
            (root / path).write_bytes(data)
            shards.append(mf.ShardInfo(path, form, split, len(recs), round(sum(r.duration_s for r in recs), 6),
                                       len(data), hashlib.sha256(data).hexdigest()))
    uris = {r.uri for r in records}
    counts = mf.Counts(inputs=len(uris), sources_in_records=len(uris), sources_dead_only=0, dead_letters=0,
                       records=len(records), seconds=round(sum(r.duration_s for r in records), 6),
                       inputs_digest=mf.uri_digest(uris))
    m = mf.build_manifest(job={"num_shards": 1, "num_valid_shards": 1, **(job or {})}, tokenizers=tokenizers,
                          codebooks=codebooks, streams=streams, shards=shards, dead_letter_files=[], counts=counts,
                          tokenmill_version="test")
    (root / "manifest.json").write_bytes(mf.dumps(m))
    return root


@contextmanager
def serve(root: Path):
    """A local HTTP server over `root` on a free port: (base URL, list of requested paths)."""
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", requests
    finally:
        srv.shutdown()
        srv.server_close()


# ---- hand-set stage models -----------------------------------------------------------------------

def transition_transformer(nxt: np.ndarray, d_model: int):
    """A tiny stage Transformer whose greedy next token is nxt[current token], hand-set: one-hot
    embeddings (d_model >= len(nxt)), attention and feed-forward outputs zeroed, the head mapping
    id i to nxt[i]. Generation and memorization tests check decoding against this exact rule."""
    import torch

    from tokenmill.training.model import Transformer, preset

    v = len(nxt)
    model = Transformer(preset("tiny", v, n_layers=1, n_heads=2, d_model=d_model, d_ff=64)).eval()
    with torch.no_grad():
        model.embed.weight.copy_(torch.eye(v, d_model))
        for blk in model.blocks:
            blk.attn.out.weight.zero_()
            blk.ff.wo.weight.zero_()
        model.head.weight.zero_()
        model.head.weight[torch.from_numpy(np.asarray(nxt)), torch.arange(v)] = 1.0
    return model

