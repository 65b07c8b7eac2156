"""Evaluation clips: decode a file's bytes, cut it to [start_s, end_s) when it is longer, mono,
and resample to each rate the models need. Pure: bytes in, waves out.

Cut rule (MusicCaps): a row names the clip's span in the source video. A downloaded file holding
only the clip (at most CUT_SLACK_S longer than end_s - start_s) is used whole; a longer file is the
whole source, and [start_s, end_s) is cut from it (a span past its end raises)."""
from __future__ import annotations

import numpy as np

from tokenmill.eval import EvalError
from tokenmill.tokenizers import audio

CUT_SLACK_S = 0.5
MIN_CLIP_S = 0.1


def cut_span(n_samples: int, sample_rate_hz: int, start_s: float | None, end_s: float | None,
             uri: str) -> tuple[int, int]:
    """Sample range [a, b) of the clip within a decoded file of `n_samples` (rule: module docstring)."""
    dur = n_samples / sample_rate_hz
    if start_s is None or end_s is None or dur <= (end_s - start_s) + CUT_SLACK_S:
        return 0, n_samples
    if end_s > dur + CUT_SLACK_S:
        raise EvalError(f"{uri}: {dur:.2f} s long, but its row asks for [{start_s:g}, {end_s:g}) s; the file is "
                        "neither the clip alone nor a source that holds it: re-download the clip")
    return int(round(start_s * sample_rate_hz)), min(n_samples, int(round(end_s * sample_rate_hz)))


def resample_all(mono: np.ndarray, sr: int, rates_hz: tuple[int, ...], uri: str) -> dict[int, np.ndarray]:
    if mono.shape[0] < MIN_CLIP_S * sr:
        raise EvalError(f"{uri}: {mono.shape[0] / sr:.3f} s of audio is too short to score (< {MIN_CLIP_S} s)")
    if not np.isfinite(mono).all():
        raise EvalError(f"{uri}: decoded samples contain NaN or Inf; re-export the file")
    return {r: audio.resample(mono, sr, r) for r in rates_hz}


def load_clip(data: bytes, uri: str, rates_hz: tuple[int, ...], start_s: float | None = None,
              end_s: float | None = None) -> tuple[dict[int, np.ndarray], float]:
    """→ ({rate: float32 mono wave}, duration_s of the clip)."""
    dec = audio.decode(data, uri)
    a, b = cut_span(dec.n_frames, dec.sample_rate_hz, start_s, end_s, uri)
    mono = audio.to_mono(dec.pcm[a:b])
    return resample_all(mono, dec.sample_rate_hz, rates_hz, uri), (b - a) / dec.sample_rate_hz
