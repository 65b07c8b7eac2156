"""The self-continuation memorization protocol of MusicLM §4.4, as pure functions.

An *example* is a training crop of the semantic stage, the crop the trainer would cut: its start
comes from (seed, key) only, its length is the stage's crop (``CropConfig.semantic_s``; a record
shorter than the crop is taken whole), and its M is the MuLan tokens of that crop
(``crops.crop_at``). For each prompt length T (semantic frames):

    prompt  = [BOS, M, S[0:T]]              (the stage layout's ids; T = 0 is BOS + M only)
    truth   = S[T : T + C]                  C = the continuation (125 frames = 5 s at 25 Hz)
    greedy  = the model's next C semantic tokens after the prompt (temperature 0)

Exact match: greedy == truth, token for token. Approximate match: OT cost(greedy, truth) < tau
(``ot.TokenOT``); an exact match has cost 0, so it is an approximate match too whenever tau > 0.

tau comes from *negative pairs*: the true continuations of two examples of different source
tracks (keys ``<source hash>-<segment>``), paired at random from the seed. They are not copies of
each other, so any of them under tau is a false positive; tau is the largest threshold that keeps
the share of negatives under it at or below ``max_fpr`` (the paper: 0.01 %). With n negatives that
share cannot be measured below 1/n, so the report gives the Clopper–Pearson upper bound too.

Sampling: records are ranked by a hash of (seed, key) and the N smallest eligible ones are the
examples, so the sample does not depend on shard order or worker count.
"""
from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import numpy as np

from tokenmill.eval import EvalError


def key_hash(seed: int, key: str) -> int:
    """64-bit hash of (seed, key): the sampling priority of a record (smaller = sampled first)."""
    h = hashlib.blake2b(struct.pack("<q", int(seed)) + key.encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def source_of(key: str) -> str:
    """The source track of a record key (``<16-hex content hash>-<segment>``)."""
    return key.rsplit("-", 1)[0]


def crop_start_q(total_q: int, crop_q: int, seed: int, key: str) -> int:
    """Start of the example crop in 40 ms quanta, uniform over the grid positions, from (seed, key)."""
    if total_q <= crop_q:
        return 0
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), key_hash(seed, key)]))
    return int(rng.integers(0, total_q - crop_q + 1))


def parse_prompt_tokens(text: str) -> tuple[int, ...]:
    """'0,25,50' or '0:250:25' (start:stop:step, stop included) → sorted distinct frame counts."""
    try:
        if ":" in text:
            a, b, s = (int(x) for x in text.split(":"))
            if s < 1:
                raise ValueError
            vals = range(a, b + 1, s)
        else:
            vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise EvalError(f"--prompt_tokens {text!r}: give comma-separated frame counts (0,25,50) or "
                        "start:stop:step (0:250:25)") from None
    out = tuple(sorted(set(vals)))
    if not out or out[0] < 0:
        raise EvalError(f"--prompt_tokens {text!r}: need at least one count, all >= 0")
    return out


@dataclass(frozen=True)
class Example:
    """One sampled training crop: semantic uint16 [n] are its real (unpadded) frames."""

    index: int  # rank in the sample (0 = smallest priority)
    key: str
    uri: str
    q0: int  # crop start, quanta from the segment start
    mulan: np.ndarray | None  # uint16 [S]: M of the crop, or None for a stage without M
    semantic: np.ndarray  # uint16 [n >= max T + C]
    melody: np.ndarray | None = None  # uint16 [windows, S]: the crop's melody tokens, for a stage that reads them


@dataclass(frozen=True)
class Prompt:
    """One (example, T) prompt for the model and the truth it is scored against."""

    index: int
    key: str
    uri: str
    q0: int
    prompt_tokens: int  # T
    ids: np.ndarray  # int64 [prefix + T]: the stage's ids
    truth: np.ndarray  # uint16 [C]


@dataclass(frozen=True)
class Scored:
    index: int
    key: str
    uri: str
    q0: int
    prompt_tokens: int
    exact: bool
    cost: float
    entropy_bits: float  # of the generated continuation's token histogram
    truth_entropy_bits: float


def prompts_of(example: Example, layout, prompt_tokens: tuple[int, ...], continuation: int) -> list[Prompt]:
    """The prompts of one example for every T (``layout``: the semantic stage's StageLayout)."""
    need = max(prompt_tokens) + continuation
    if example.semantic.shape[0] < need:
        raise EvalError(f"example {example.key} has {example.semantic.shape[0]} semantic frames, fewer than the "
                        f"{need} that T = {max(prompt_tokens)} plus a {continuation}-frame continuation need")
    cond = {}
    for part in layout.conditioning:
        if part.name == "melody":  # the crop's own melody tokens, as in training
            if example.melody is None:
                raise EvalError(f"example {example.key} has no melody tokens but the stage is conditioned on them")
            cond["melody"] = example.melody
            continue
        if part.name != "mulan":
            raise EvalError(f"the checkpoint's {layout.stage} stage is conditioned on {part.name}; the memorization "
                            "protocol runs the semantic stage (conditioned on M and melody only)")
        if example.mulan is None:
            raise EvalError(f"example {example.key} has no M tokens but the stage is conditioned on M")
        cond["mulan"] = example.mulan
    prefix = layout.prefix(**cond)
    out = []
    for t in prompt_tokens:
        part = layout.with_frames(**{layout.target.name: t}).target
        ids = np.concatenate([prefix, layout.part_ids(part, example.semantic[:t])]).astype(np.int64)
        out.append(Prompt(example.index, example.key, example.uri, example.q0, t, ids,
                          np.array(example.semantic[t:t + continuation], dtype=np.uint16)))
    return out


def entropy_bits(tokens: np.ndarray) -> float:
    """Shannon entropy (bits) of the token histogram of `tokens`; 0 for a constant window."""
    _, counts = np.unique(np.asarray(tokens).reshape(-1), return_counts=True)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def score(prompt: Prompt, generated: np.ndarray, ot_cost) -> Scored:
    """Exact and approximate match of `generated` (uint16 [C]) against the prompt's truth;
    `ot_cost(a, b)` is ``TokenOT.cost``."""
    g = np.asarray(generated, dtype=np.uint16).reshape(-1)
    if g.shape != prompt.truth.shape:
        raise EvalError(f"generated {g.shape[0]} tokens for {prompt.key} at T = {prompt.prompt_tokens}, "
                        f"expected {prompt.truth.shape[0]}")
    exact = bool(np.array_equal(g, prompt.truth))
    cost = 0.0 if exact else float(ot_cost(g, prompt.truth))
    return Scored(prompt.index, prompt.key, prompt.uri, prompt.q0, prompt.prompt_tokens, exact, cost,
                  entropy_bits(g), entropy_bits(prompt.truth))


# ---- negative pairs and tau ----------------------------------------------------------------------

def negative_pairs(groups: list[str], n_pairs: int, seed: int) -> np.ndarray:
    """int64 [m, 2] index pairs (i < j) with groups[i] != groups[j], m = min(n_pairs, all such
    pairs), distinct, drawn from `seed` only (the order of `groups` is the caller's, fixed)."""
    n = len(groups)
    g = np.unique(np.asarray(groups), return_inverse=True)[1]
    total = n * (n - 1) // 2
    if n_pairs < 1 or total == 0:
        return np.zeros((0, 2), np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x4E47]))
    if total <= 4 * n_pairs:  # few: enumerate every valid pair, take a random subset
        i, j = np.triu_indices(n, 1)
        keep = g[i] != g[j]
        pairs = np.stack([i[keep], j[keep]], 1)
        if len(pairs) > n_pairs:
            pairs = pairs[np.sort(rng.choice(len(pairs), n_pairs, replace=False))]
        return pairs.astype(np.int64)
    seen: set[tuple[int, int]] = set()
    out = []
    while len(out) < n_pairs:
        a, b = rng.integers(0, n, size=(2, 2 * (n_pairs - len(out)) + 16))
        for x, y in zip(a.tolist(), b.tolist()):
            if x == y or g[x] == g[y]:
                continue
            p = (min(x, y), max(x, y))
            if p not in seen:
                seen.add(p)
                out.append(p)
                if len(out) == n_pairs:
                    break
        if not seen and len(set(g.tolist())) < 2:
            break
    return np.array(out, np.int64).reshape(-1, 2)


def binomial_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson (exact) interval of a share k/n; (0, 1) when n = 0."""
    from scipy.stats import beta

    if n == 0:
        return 0.0, 1.0
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def calibrate_tau(negative_costs: np.ndarray, max_fpr: float) -> dict:
    """tau: the largest threshold with (negatives whose cost < tau) / n <= max_fpr.

    With the costs sorted, s[a] with a = floor(max_fpr · n) has exactly the a smaller costs below
    it (ties at s[a] are not below it). Refuses without negatives."""
    c = np.sort(np.asarray(negative_costs, dtype=np.float64))
    n = int(c.size)
    if n == 0:
        raise EvalError("no negative pairs to calibrate tau on: the sample needs examples of at least two "
                        "different source tracks (raise --examples), or pass --tau")
    if not 0 <= max_fpr < 1:
        raise EvalError(f"max_fpr must be in [0, 1), got {max_fpr}")
    allowed = int(math.floor(max_fpr * n + 1e-12))
    tau = float(c[min(allowed, n - 1)]) if allowed < n else float(c[-1])
    return threshold_report(c, tau, max_fpr, source="calibrated")


def threshold_report(negative_costs: np.ndarray, tau: float, max_fpr: float | None, source: str) -> dict:
    """tau with its false-positive count and rate on the negatives (and the rate's 95 % interval)."""
    c = np.asarray(negative_costs, dtype=np.float64)
    n = int(c.size)
    fp = int((c < tau).sum())
    lo, hi = binomial_ci(fp, n)
    out = {"value": float(tau), "source": source, "target_fpr": max_fpr, "negatives": n, "false_positives": fp,
           "fpr": fp / n if n else None, "fpr_ci95": [lo, hi],
           "resolvable": bool(max_fpr is None or n * max_fpr >= 1),
           "negative_cost_quantiles": ({q: float(np.quantile(c, float(q))) for q in ("0.0001", "0.001", "0.01", "0.5")}
                                       if n else {})}
    if n and max_fpr is not None and n * max_fpr < 1:
        out["note"] = (f"{n} negatives cannot resolve a false-positive rate of {max_fpr:g}: tau is the smallest "
                       f"negative cost (no negative under it); use at least {math.ceil(1 / max_fpr)} negatives")
    if tau <= 0:
        out["note"] = ("tau is 0: identical continuations of different tracks occur among the negatives (silence, "
                       "a repeated token), so no approximate match can be called at this false-positive target")
    return out
