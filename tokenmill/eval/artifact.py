"""Reference statistics as a content-addressed artifact: `<embedder>-<sha12>.safetensors` (n,
mean float64 [D], m2 float64 [D, D]) + `<same>.json`, a card naming the embedder (its describe():
name, config, weights sha256) and the data (spec, clips, frames, inputs digest). The id hashes the
tensors and the card's embedder entry, so the same embedder on the same data gives the same file,
and a reference embedded once is reused by `evaluate --reference_stats`. Pure: bytes in and out."""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np

from tokenmill.eval import EvalError
from tokenmill.eval.fad import GaussStats

FORMAT = "tokenmill.eval.reference_stats.v1"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", name).strip("_") or "embedder"


def encode(stats: GaussStats, embedder: dict, data: dict) -> tuple[str, bytes, bytes]:
    """→ (artifact id, safetensors bytes, card JSON bytes)."""
    from safetensors.numpy import save

    tensors = {"n": np.array([stats.n], np.int64), "mean": np.ascontiguousarray(stats.mean, np.float64),
               "m2": np.ascontiguousarray(stats.m2, np.float64)}
    h = hashlib.sha256()
    for k in ("n", "mean", "m2"):
        h.update(tensors[k].tobytes())
    h.update(json.dumps(embedder, sort_keys=True).encode())
    art_id = f"{_slug(embedder.get('name', 'embedder'))}-{h.hexdigest()[:12]}"
    card = {"format": FORMAT, "id": art_id, "embedder": embedder, "data": data, "n": stats.n, "dim": stats.dim,
            "statistics": "n, mean (float64 [D]), m2 = centred second moment (float64 [D, D]); cov = m2 / (n - 1)"}
    return art_id, save(tensors, metadata={"format": FORMAT, "id": art_id}), \
        (json.dumps(card, indent=1, sort_keys=True) + "\n").encode()


def decode(data: bytes, card: dict, source: str) -> GaussStats:
    from safetensors.numpy import load

    try:
        t = load(data)
        stats = GaussStats(int(t["n"][0]), t["mean"], t["m2"])
    except Exception as e:  # noqa: BLE001 — any parse failure is a bad artifact
        raise EvalError(f"{source}: not a reference-statistics artifact ({e}); write one with evaluate") from e
    if card.get("format") != FORMAT or card.get("n") != stats.n:
        raise EvalError(f"{source}: its card does not describe these statistics (format {card.get('format')!r}, "
                        f"n {card.get('n')} vs {stats.n}); keep the .json written beside it")
    return stats


def matches(card: dict, embedder: dict) -> bool:
    """Whether a card's statistics were made by this embedder (name, config and weights hash)."""
    e = card.get("embedder") or {}
    want = json.loads(json.dumps(embedder, sort_keys=True))  # as the card stores it (tuples become lists)
    return all(e.get(k) == want.get(k) for k in ("name", "config", "weights_sha256"))
