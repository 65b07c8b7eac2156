"""KLD between label distributions of paired clips: KL(P_reference ‖ Q_generated) per pair, and
the reverse direction, as the common reimplementation reports both.

Distributions come from a classifier: zero-shot tagging (`zero_shot_probs`: softmax over the
cosine similarities between a clip's audio embedding and each label's text embedding, divided by a
stated temperature) or a trained audio classifier's softmax. Probabilities are clipped below at
EPS before the logarithm (a classifier's exact 0 would make KL infinite); rows are not renormalized.
"""
from __future__ import annotations

import numpy as np

from tokenmill.eval import EvalError

EPS = 1e-10


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float64 softmax over the last axis of logits / temperature."""
    if not temperature > 0:
        raise EvalError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def zero_shot_probs(audio: np.ndarray, labels: np.ndarray, temperature: float) -> np.ndarray:
    """audio float [N, D] (or [D]) and label text embeddings float [L, D] → float64 [N, L] (or [L]):
    softmax(cos(audio, label) / temperature) over the labels."""
    a = np.asarray(audio, np.float64)
    t = np.asarray(labels, np.float64)
    if a.shape[-1] != t.shape[-1]:
        raise EvalError(f"audio embeddings are {a.shape[-1]}-d but label embeddings {t.shape[-1]}-d")
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    t = t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-12)
    return softmax(a @ t.T, temperature)


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """float64 [N]: KL(p_i ‖ q_i) = Σ_l p_il (log p_il - log q_il), natural log, both clipped at EPS."""
    p, q = np.atleast_2d(np.asarray(p, np.float64)), np.atleast_2d(np.asarray(q, np.float64))
    if p.shape != q.shape:
        raise EvalError(f"KL between distributions of shapes {p.shape} and {q.shape}: the classifier must "
                        "give the same labels on both sides")
    pc, qc = np.maximum(p, EPS), np.maximum(q, EPS)
    return (pc * (np.log(pc) - np.log(qc))).sum(axis=1)


def kld_pairs(p_reference: np.ndarray, q_generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: (KL(P_ref ‖ Q_gen), KL(Q_gen ‖ P_ref)), each float64 [N]."""
    return kl_rows(p_reference, q_generated), kl_rows(q_generated, p_reference)
