"""Pitch-posteriorgram semantic extractor: basic-pitch's pretrained note/onset model, run by torch.

`build_extractor("basic-pitch")`. The model is Spotify's basic-pitch (ICASSP 2022 "NMP" model,
Apache-2.0); its ONNX file ships inside the `basic-pitch` wheel, which is installed without its
dependencies (`pip install --no-deps basic-pitch==0.4.0`: its own requirements pull tensorflow,
which this extractor never uses). Only the .onnx file is read, located without importing the
package; its sha256 is the extractor's `weights_sha256`.

Runtime (`runtime`). "torch" (default): the ONNX graph is read from the wheel's file and executed
op by op with torch (onnx_torch.py), so the model runs under the job's compute layout like every
torch model: `--kernels portable` holds its kernels to AVX2 and its features are bit-identical for
any `--torch_threads` and whatever windows run beside it (tests/test_pitch_torch.py). It agrees
with onnxruntime within float32 rounding: on the test clips the posteriorgrams differ by at most
1e-4, each runtime lying within 8e-5 of a float64 run, and every top-key and threshold decision
is the same (bench/bench_pitch_torch.py). "onnxruntime": the same file under onnxruntime on one thread (its kernels follow
the CPU's ISA, outside the compute layout); needs `pip install onnxruntime`, kept for comparison.
The runtime is part of the config, so the manifest and codebook cards record which one ran.

Model. Input: mono audio at 22 050 Hz in windows of 43 844 samples; output per window 172 frames
at 22050/256 Hz (~86.1 Hz) of three posteriorgrams: `note` [172, 88] and `onset` [172, 88] (one bin
per piano key, MIDI 21..108) and `contour` [172, 264] (a third of a semitone per bin). Frame f of
a window describes the audio around the window's sample 256·f.

Windows. The 16 kHz wave is resampled to 22 050 Hz (soxr, quality `resample_quality`): n samples
become n·441/320, an integer because n is a multiple of 640. 15 frames (3 840 samples) of zeros
are put in front, and window w starts at padded sample w·141·256, so its frames 15..155 are the
global model frames w·141 + 0..140 exactly (the 15 frames at each window edge, which see the
window's zero padding, are dropped). Zeros pad the end.

25 Hz. Model frame j sits at j·256/22050 s; 25 Hz frame t owns the model frames with
floor(j·128/441) = t, i.e. j·256/22050 in [0.04·t, 0.04·(t+1)): 3 or 4 frames, never none.

Features per 25 Hz frame t (float32 [T, 14]), from the model frames it owns:
  note_pc  [0, 12)   pitch-class profile, C..B: for each class the largest note posterior over its
                     octaves, averaged over the frame's model frames, divided by
                     max(largest class, pc_norm_floor); · pc_weight
  onset    [12, 13)  largest onset posterior over all keys and the frame's model frames; · onset_weight
  register [13, 14)  posterior-weighted mean MIDI pitch of the frame's notes, (pitch - 60) / 12,
                     0 when no note is above `register_floor`; · register_weight
So a token says which pitch classes sound, whether a note starts, and roughly in which octave;
no timbre feature enters. Polyphony gives several large pitch classes.

Pure model code: numpy/torch in, arrays out. No Beam.
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokenmill.errors import TokenmillError
from tokenmill.tokenizers.semantic import HOP_SAMPLES, SAMPLE_RATE_HZ, SemanticExtractor

MODEL_RATE_HZ = 22050
MODEL_HOP = 256  # samples per model frame at 22 050 Hz
WINDOW_SAMPLES = 43844  # the ONNX model's fixed input length
WINDOW_FRAMES = 172
EDGE_FRAMES = 15  # dropped at each window edge
KEEP_FRAMES = 141  # model frames kept per window: window stride 141·256 samples
FIRST_MIDI = 21  # note bin 0 is A0
N_KEYS = 88
MODEL_FILE = ("saved_models", "icassp_2022", "nmp.onnx")  # inside the basic_pitch package
OUTPUTS = {"note": "StatefulPartitionedCall:1", "onset": "StatefulPartitionedCall:2"}
INSTALL_HINT = "pip install --no-deps basic-pitch==0.4.0"
RUNTIMES = ("torch", "onnxruntime")


class PitchModelError(TokenmillError, RuntimeError):
    """The basic-pitch model file (or, for runtime onnxruntime, onnxruntime) is missing or unusable;
    the message says the fix."""


@dataclass(frozen=True)
class PitchConfig:
    """Everything that defines the features; recorded in the manifest and the codebook card.

    The block weights act as weights in k-means' Euclidean distance. Posteriors lie in [0, 1], but
    how sure the model is of a note depends on the instrument (a piano's note posterior runs
    higher than a flute's), so the profile is divided by max(largest class, pc_norm_floor): a
    sounding note's class becomes 1 whatever plays it, and frames whose largest class is below the
    floor (silence, ~0.1 everywhere) keep their small values. With pc_weight = 2 a change of pitch
    class costs ~8 in squared distance, an onset (onset_weight = 1.5) ~2, an octave
    (register_weight = 1) 1. Chosen on bench/bench_semantic_invariance.py (README table): without
    the normalization, or with register_weight 0 or 0.5, tokens split more by instrument.
    """

    pc_weight: float = 2.0
    onset_weight: float = 1.5
    register_weight: float = 1.0
    register_floor: float = 0.3  # note posterior below this does not count towards the register
    pc_norm_floor: float = 0.3  # divide the profile by max(its largest class, this); 0 = off
    resample_quality: str = "HQ"  # soxr quality for 16 kHz -> 22 050 Hz
    # Model windows (~1.6 s of audio each) per model call. 1: each window runs alone, so its bits
    # depend on nothing else (in a batch, torch's products are blocked by the batch's shape:
    # measured 1e-8 differences); > 1 is still reproducible per segment (the batches follow from
    # the segment's length) but a window's bits then depend on its batch.
    batch_windows: int = 1
    runtime: str = "torch"  # "torch" (the compute layout holds it) | "onnxruntime" (module doc)

    def __post_init__(self) -> None:
        for f in ("pc_weight", "onset_weight", "register_weight"):
            if not getattr(self, f) >= 0:
                raise ValueError(f"{f} must be >= 0, got {getattr(self, f)}")
        if not 0 <= self.pc_norm_floor < 1:
            raise ValueError(f"pc_norm_floor must be in [0, 1), got {self.pc_norm_floor}")
        if not 0 < self.register_floor < 1:
            raise ValueError(f"register_floor must be in (0, 1), got {self.register_floor}")
        if self.resample_quality not in ("VHQ", "HQ", "MQ", "LQ", "QQ"):
            raise ValueError(f"resample_quality must be one of VHQ HQ MQ LQ QQ, got {self.resample_quality!r}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.batch_windows < 1:
            raise ValueError(f"batch_windows must be >= 1, got {self.batch_windows}")


def model_path() -> Path:
    """The .onnx file inside the installed basic_pitch package (the package is not imported)."""
    spec = importlib.util.find_spec("basic_pitch")
    if spec is None or not spec.submodule_search_locations:
        raise PitchModelError(f"semantic extractor 'basic-pitch' needs the basic-pitch wheel for its "
                              f"model file; install it with: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*MODEL_FILE)
    if not path.is_file():
        raise PitchModelError(f"{path} is missing: the installed basic-pitch has no ONNX model; "
                              f"reinstall it with: {INSTALL_HINT}")
    return path


def frames_25hz_owner(n_model_frames: int) -> np.ndarray:
    """int64 [n_model_frames]: the 25 Hz frame each model frame belongs to, floor(j·128/441)."""
    return (np.arange(n_model_frames, dtype=np.int64) * 128) // 441


def model_frames_needed(n_frames_25hz: int) -> int:
    """Model frames j with floor(j·128/441) < T: j < ceil(441·T/128)."""
    return -(-441 * n_frames_25hz // 128)


def pool_to_25hz(note: np.ndarray, onset: np.ndarray, n_frames: int, cfg: PitchConfig) -> np.ndarray:
    """note, onset float32 [J, 88] model frames (J >= model_frames_needed) → float32 [T, 14]."""
    j = model_frames_needed(n_frames)
    owner = frames_25hz_owner(j)
    counts = np.bincount(owner, minlength=n_frames).astype(np.float64)  # 3 or 4 each
    keys = np.arange(N_KEYS)
    pc_of_key = (keys + FIRST_MIDI) % 12
    note = note[:j].astype(np.float64)
    pc = np.zeros((j, 12))
    np.maximum.at(pc.T, pc_of_key, note.T)  # per model frame: max over octaves
    pc_25 = np.zeros((n_frames, 12))
    np.add.at(pc_25, owner, pc)
    pc_25 /= counts[:, None]
    if cfg.pc_norm_floor > 0:
        pc_25 /= np.maximum(pc_25.max(1, keepdims=True), cfg.pc_norm_floor)
    onset_25 = np.zeros(n_frames)
    np.maximum.at(onset_25, owner, onset[:j].max(1))
    mass = np.where(note >= cfg.register_floor, note, 0.0)
    w = np.zeros((n_frames, N_KEYS))
    np.add.at(w, owner, mass)
    total = w.sum(1)
    pitch = np.divide(w @ (keys + FIRST_MIDI).astype(np.float64), total, out=np.full(n_frames, 60.0),
                      where=total > 0)
    register = (pitch - 60.0) / 12.0
    out = np.concatenate([pc_25 * cfg.pc_weight, onset_25[:, None] * cfg.onset_weight,
                          register[:, None] * cfg.register_weight], axis=1)
    return np.ascontiguousarray(out, dtype=np.float32)


class PitchExtractor(SemanticExtractor):
    """basic-pitch note/onset posteriorgrams pooled to 25 Hz (layout in the module doc)."""

    name = "basic-pitch"
    dim = 14

    def __init__(self, config: PitchConfig | None = None) -> None:
        self.config = config or PitchConfig()
        path = model_path()
        blob = path.read_bytes()
        self.weights_sha256 = hashlib.sha256(blob).hexdigest()
        if self.config.runtime == "torch":
            self._run = self._torch_runner(blob, path)
        else:
            self._run = self._onnxruntime_runner(blob)

    @staticmethod
    def _torch_runner(blob: bytes, path: Path):
        import torch

        from tokenmill.tokenizers.onnx_proto import OnnxFormatError, read_model
        from tokenmill.tokenizers.onnx_torch import OnnxModule

        try:
            module = OnnxModule(read_model(blob), outputs=(OUTPUTS["note"], OUTPUTS["onset"])).eval()
        except OnnxFormatError as e:
            raise PitchModelError(f"{path}: {e}; reinstall basic-pitch with: {INSTALL_HINT}") from e

        def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with torch.inference_mode():
                note, onset = module(torch.from_numpy(batch))
            return note.numpy(), onset.numpy()

        return run

    @staticmethod
    def _onnxruntime_runner(blob: bytes):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise PitchModelError("basic-pitch with runtime 'onnxruntime' needs onnxruntime: pip install "
                                  "onnxruntime (or use the default runtime 'torch')") from e
        opts = ort.SessionOptions()
        # One intra-op thread, always: onnxruntime's floats change with its thread count (measured:
        # 1 vs 2 threads differ by ~1e-7), and tokens must not depend on --torch_threads. Beam
        # parallelizes over segments instead. (Its kernels follow the CPU's ISA: see README.)
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            note, onset = session.run([OUTPUTS["note"], OUTPUTS["onset"]], {name: batch})
            return note, onset

        return run

    def layout(self) -> dict[str, list[int]]:
        return {"note_pc": [0, 12], "onset": [12, 13], "register": [13, 14]}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layout": self.layout(), "standardize": False,
                "model": f"basic-pitch 0.4.0 icassp_2022/nmp.onnx (Apache-2.0), run by {self.config.runtime}"}

    def posteriorgrams(self, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [n] at 16 kHz → (note, onset) float32 [J, 88] model frames, J = model_frames_needed."""
        import soxr

        n_frames = len(wave) // HOP_SAMPLES
        need = model_frames_needed(n_frames)
        n_windows = -(-need // KEEP_FRAMES)
        x = soxr.resample(wave, SAMPLE_RATE_HZ, MODEL_RATE_HZ, quality=self.config.resample_quality)
        stride = KEEP_FRAMES * MODEL_HOP
        padded = np.zeros((n_windows - 1) * stride + WINDOW_SAMPLES, np.float32)
        body = x[: len(padded) - EDGE_FRAMES * MODEL_HOP]
        padded[EDGE_FRAMES * MODEL_HOP: EDGE_FRAMES * MODEL_HOP + len(body)] = body
        note = np.empty((n_windows * KEEP_FRAMES, N_KEYS), np.float32)
        onset = np.empty_like(note)
        b = self.config.batch_windows
        for w0 in range(0, n_windows, b):
            ws = range(w0, min(w0 + b, n_windows))
            batch = np.stack([padded[w * stride: w * stride + WINDOW_SAMPLES] for w in ws])[:, :, None]
            n_out, o_out = self._run(batch)
            keep = slice(EDGE_FRAMES, EDGE_FRAMES + KEEP_FRAMES)
            note[w0 * KEEP_FRAMES: (w0 + len(ws)) * KEEP_FRAMES] = n_out[:, keep].reshape(-1, N_KEYS)
            onset[w0 * KEEP_FRAMES: (w0 + len(ws)) * KEEP_FRAMES] = o_out[:, keep].reshape(-1, N_KEYS)
        return note[:need], onset[:need]

    def _extract(self, wave: np.ndarray) -> np.ndarray:
        note, onset = self.posteriorgrams(wave)
        return pool_to_25hz(note, onset, len(wave) // HOP_SAMPLES, self.config)


def build_pitch(**config: Any) -> PitchExtractor:
    import dataclasses

    fields = {f.name for f in dataclasses.fields(PitchConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"unknown basic-pitch config keys {unknown}; valid: {sorted(fields)}")
    return PitchExtractor(PitchConfig(**config))
