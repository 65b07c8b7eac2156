"""MCC (MuLan cycle consistency): the cosine between the text embedding of a clip's caption and
the audio embedding of the clip generated from it, averaged over clips; also per aspect (the mean
over the clips whose aspect list holds that aspect).

The audio embedding of a clip is what `tokenize` stores as the segment's MuLan embedding: the
L2-normalized mean of its 10 s windows at a 1 s stride (tokenizers/mulan.py)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from tokenmill.eval import EvalError


def cosines(text: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """float64 [N]: cos(text_i, audio_i) for text, audio float [N, D]."""
    t, a = np.atleast_2d(np.asarray(text, np.float64)), np.atleast_2d(np.asarray(audio, np.float64))
    if t.shape != a.shape:
        raise EvalError(f"text embeddings {t.shape} and audio embeddings {a.shape} differ: use one "
                        "text/audio model for both")
    tn = np.linalg.norm(t, axis=1)
    an = np.linalg.norm(a, axis=1)
    return (t * a).sum(axis=1) / np.maximum(tn * an, 1e-12)


def per_aspect(values: np.ndarray, aspects: list[tuple[str, ...] | None], min_clips: int = 1) -> dict[str, tuple[float, int]]:
    """{aspect: (mean of values over clips holding it, number of clips)} for aspects held by at
    least `min_clips` clips, sorted by clip count (descending) then name."""
    groups: dict[str, list[float]] = defaultdict(list)
    for v, asp in zip(np.asarray(values, np.float64), aspects):
        for a in sorted(set(asp or ())):
            groups[a].append(float(v))
    rows = [(a, float(np.mean(v)), len(v)) for a, v in groups.items() if len(v) >= min_clips]
    rows.sort(key=lambda r: (-r[2], r[0]))
    return {a: (m, n) for a, m, n in rows}
