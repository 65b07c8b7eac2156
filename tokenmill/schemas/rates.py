"""Rates and frame arithmetic: the one module that owns time ↔ samples ↔ frames.

Every stream is cut to a whole number of *quanta* of 40 ms (25 per second). At 24 kHz a quantum
is 960 samples = 2 acoustic frames (hop 480, 50 Hz); at 16 kHz it is 640 samples = 1 semantic
frame (hop 640, 25 Hz). Because every stream holds an integral number of frames per quantum, a
crop [t0, t1) on the 40 ms grid maps to exact frame ranges in every stream.

All arithmetic is in integers (or `fractions.Fraction`) so that no float rounding can move a
boundary. Pure Python: no numpy, no Beam, no torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

QUANTA_PER_S = 25  # one quantum = 40 ms
QUANTUM_S = Fraction(1, QUANTA_PER_S)


@dataclass(frozen=True)
class StreamRate:
    """Sample rate in, hop out: the frame grid of one token stream."""

    name: str
    sample_rate_hz: int
    hop_samples: int

    @property
    def frame_rate_hz(self) -> Fraction:
        return Fraction(self.sample_rate_hz, self.hop_samples)

    @property
    def samples_per_quantum(self) -> int:
        n = Fraction(self.sample_rate_hz, QUANTA_PER_S)
        if n.denominator != 1:
            raise ValueError(f"{self.name}: {self.sample_rate_hz} Hz has no whole number of samples per 40 ms")
        return int(n)

    @property
    def frames_per_quantum(self) -> int:
        f = self.frame_rate_hz / QUANTA_PER_S
        if f.denominator != 1:
            raise ValueError(
                f"{self.name}: frame rate {float(self.frame_rate_hz):g} Hz is not a multiple of 25 Hz, "
                "so its frames do not align with the 40 ms grid"
            )
        return int(f)


ACOUSTIC = StreamRate("acoustic", sample_rate_hz=24_000, hop_samples=480)  # 50 Hz
SEMANTIC = StreamRate("semantic", sample_rate_hz=16_000, hop_samples=640)  # 25 Hz
ACOUSTIC_LEVELS = 12
COARSE_LEVELS = 4  # levels 1..4 coarse, 5..12 fine
CODEBOOK_SIZE = 1024
MULAN_DIM = 128
MULAN_LEVELS = 12
MULAN_WINDOW_S = 10
MULAN_STRIDE_S = 1
# Melody stream: one embedding per 4 s window at a 1 s stride (16 kHz mono in), RVQ 24 x 512.
# A training crop takes MELODY_CROP_WINDOWS windows MELODY_CROP_HOP_S apart (10 s crop: 0, 3, 6 s).
MELODY_SAMPLE_RATE_HZ = 16_000
MELODY_WINDOW_S = 4
MELODY_STRIDE_S = 1
MELODY_DIM = 192
MELODY_LEVELS = 24
MELODY_CODEBOOK_SIZE = 512
MELODY_CROP_HOP_S = 3


def n_quanta(n_samples: int, sample_rate_hz: int) -> int:
    """Whole 40 ms quanta contained in `n_samples` at `sample_rate_hz` (floor)."""
    if sample_rate_hz <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate_hz}")
    if n_samples < 0:
        raise ValueError(f"sample count must be >= 0, got {n_samples}")
    return (n_samples * QUANTA_PER_S) // sample_rate_hz


def samples_for_quanta(quanta: int, stream: StreamRate) -> int:
    """Exact sample count of `quanta` 40 ms quanta in `stream`'s sample rate."""
    return quanta * stream.samples_per_quantum


def source_samples_for_quanta(quanta: int, sample_rate_hz: int) -> int:
    """Source samples covering `quanta` quanta at an arbitrary source rate (floor)."""
    return (quanta * sample_rate_hz) // QUANTA_PER_S


def frames_for_quanta(quanta: int, stream: StreamRate) -> int:
    """Token frames of `stream` in `quanta` quanta (exact for 25 Hz-multiple streams)."""
    return quanta * stream.frames_per_quantum


def quanta_of_seconds(t_s: float | Fraction) -> int:
    """Convert a time on the 40 ms grid to quanta; raise if it is off the grid."""
    q = Fraction(t_s).limit_denominator(1_000_000) * QUANTA_PER_S
    nearest = round(q)
    if abs(q - nearest) > Fraction(1, 10_000):
        raise ValueError(f"time {float(t_s)!r} s is not on the 40 ms grid; round it to a multiple of 0.04 s")
    return int(nearest)


def seconds_of_quanta(quanta: int) -> float:
    return float(quanta * QUANTUM_S)


def crop_frames(t0_s: float, t1_s: float, stream: StreamRate) -> tuple[int, int]:
    """Frame range [f0, f1) of the crop [t0, t1) in `stream`. Both ends must be on the 40 ms grid."""
    q0, q1 = quanta_of_seconds(t0_s), quanta_of_seconds(t1_s)
    if not 0 <= q0 <= q1:
        raise ValueError(f"crop [{t0_s}, {t1_s}) must satisfy 0 <= t0 <= t1")
    return frames_for_quanta(q0, stream), frames_for_quanta(q1, stream)


def segment_bounds(total_quanta: int, max_segment_s: float) -> list[tuple[int, int]]:
    """Split `total_quanta` into the fewest near-equal segments of at most `max_segment_s`.

    Returns [(start_q, end_q), ...] covering [0, total_quanta) without gaps. Equal sizes avoid a
    tiny trailing segment (a 301 s file becomes 150.52 s + 150.48 s, not 300 s + 1 s).
    """
    max_q = int(Fraction(max_segment_s).limit_denominator(1_000_000) * QUANTA_PER_S)
    if max_q < 1:
        raise ValueError(f"max_segment_s={max_segment_s} is shorter than one 40 ms quantum")
    if total_quanta <= 0:
        return []
    n_seg = math.ceil(total_quanta / max_q)
    base, extra = divmod(total_quanta, n_seg)
    bounds, start = [], 0
    for i in range(n_seg):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def mulan_window_count(quanta: int) -> int:
    """MuLan windows (10 s long, 1 s stride) of a segment: one per whole second, at least one.

    Window w covers [w, w + 10) s; windows past the end are zero-padded by the audio tower, so a
    3 s clip still has one window. Owned here so the trainer and the tokenizer agree.
    """
    return window_count(quanta, MULAN_WINDOW_S)


def melody_window_count(quanta: int) -> int:
    """Melody windows (4 s long, 1 s stride): the rule of `mulan_window_count` with 4 s windows."""
    return window_count(quanta, MELODY_WINDOW_S)


def window_count(quanta: int, window_s: int) -> int:
    """Windows of `window_s` seconds at a 1 s stride over a segment of `quanta` quanta: one per whole
    second that still leaves a whole window inside the audio, and at least one (zero-padded)."""
    whole_s = quanta // QUANTA_PER_S
    return max(1, whole_s - window_s + 1)
