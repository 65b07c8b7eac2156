"""memorization.json summaries and the PNG plots (matplotlib, Agg, imported lazily; bytes out)."""
from __future__ import annotations

import io
from collections import defaultdict

import numpy as np

from tokenmill.eval.memorization import Scored, binomial_ci


def share(k: int, n: int) -> dict:
    lo, hi = binomial_ci(k, n)
    return {"count": int(k), "n": int(n), "share": k / n if n else None, "ci95": [lo, hi]}


def _quantiles(x: list[float]) -> dict:
    if not x:
        return {}
    a = np.asarray(x, dtype=np.float64)
    return {"min": float(a.min()), "p01": float(np.quantile(a, 0.01)), "median": float(np.median(a)),
            "max": float(a.max())}


def summarize(scored: list[Scored], tau: float, prompt_tokens: tuple[int, ...], frame_rate_hz: float) -> dict:
    """Shares of exact and approximate (cost < tau, exact ones included) matches per T and
    overall, with Clopper–Pearson 95 % intervals; the matched examples; entropies."""
    by_t: dict[int, list[Scored]] = defaultdict(list)
    for s in scored:
        by_t[s.prompt_tokens].append(s)
    rows = []
    for t in prompt_tokens:
        group = by_t.get(t, [])
        rows.append({"prompt_tokens": t, "prompt_s": t / frame_rate_hz,
                     "exact": share(sum(s.exact for s in group), len(group)),
                     "approximate": share(sum(s.cost < tau for s in group), len(group)),
                     "cost": _quantiles([s.cost for s in group])})
    matched = sorted((s for s in scored if s.exact or s.cost < tau), key=lambda s: (s.prompt_tokens, s.key))
    ent_all = [s.entropy_bits for s in scored]
    ent_match = [s.entropy_bits for s in matched]
    ent_truth = [s.truth_entropy_bits for s in scored]
    return {
        "by_prompt": rows,
        "overall": {"exact": share(sum(s.exact for s in scored), len(scored)),
                    "approximate": share(sum(s.cost < tau for s in scored), len(scored))},
        "entropy_bits": {"matched_mean": float(np.mean(ent_match)) if ent_match else None,
                         "generated_mean": float(np.mean(ent_all)) if ent_all else None,
                         "truth_mean": float(np.mean(ent_truth)) if ent_truth else None},
        "matched": [{"key": s.key, "uri": s.uri, "crop_start_s": s.q0 * 0.04, "prompt_tokens": s.prompt_tokens,
                     "kind": "exact" if s.exact else "approximate", "cost": s.cost,
                     "entropy_bits": s.entropy_bits, "truth_entropy_bits": s.truth_entropy_bits} for s in matched],
    }


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_match_share(rows: list[dict], title: str) -> bytes:
    """Share of exact and approximate matches vs the prompt length, with 95 % intervals."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    x = np.array([r["prompt_s"] for r in rows])
    for kind, marker in (("exact", "o"), ("approximate", "s")):
        y = np.array([r[kind]["share"] or 0.0 for r in rows]) * 100
        lo = np.array([r[kind]["ci95"][0] for r in rows]) * 100
        hi = np.array([r[kind]["ci95"][1] for r in rows]) * 100
        ax.errorbar(x, y, yerr=[y - lo, hi - y], marker=marker, capsize=3, label=kind)
    ax.set_xlabel("prompt length T (s of semantic tokens)")
    ax.set_ylabel("matched continuations (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def plot_costs(positive: list[float], negative: list[float], tau: float, title: str) -> bytes:
    """Histograms of the OT cost: generated vs true continuations, and negative pairs; tau marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    allc = np.asarray(list(positive) + list(negative), dtype=np.float64)
    hi = float(allc.max()) if allc.size and allc.max() > 0 else 1.0
    bins = np.linspace(0, hi * 1.02, 50)
    if positive:
        ax.hist(positive, bins=bins, alpha=0.6, density=True, label=f"generated vs truth ({len(positive)})")
    if negative:
        ax.hist(negative, bins=bins, alpha=0.6, density=True, label=f"negative pairs ({len(negative)})")
    ax.axvline(tau, color="k", linestyle="--", label=f"tau = {tau:.4g}")
    ax.set_xlabel("OT cost")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend()
    return _png(fig)
