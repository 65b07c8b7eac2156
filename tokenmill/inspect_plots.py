"""PNG plots for `stats --plots OUT` and (later) `rebuild`: matplotlib's Agg canvas, no pyplot.

matplotlib is imported inside each function (only plotting needs it), and figures are drawn on an
explicit Agg canvas, so no global backend is switched and no window opens. Every function returns
the arrays it plotted, so tests (and callers) can check what the picture shows.

- duration_hist.png: histogram of record (segment) durations in seconds.
- token_usage_<stream>.png: usage count of each id, sorted in decreasing order, log y axis; one
  panel per RVQ level (acoustic) or stage (mulan). Dead codes (count 0) are not drawn on a log
  axis; each panel's title gives their number.
- plot_codebook_usage_before_after: usage of each id before vs after a codebook rebuild.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

DPI = 80


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=DPI)
    return out


def _counts(arr, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim not in (1, 2) or not np.issubdtype(a.dtype, np.integer) or (a.size and a.min() < 0):
        raise ValueError(f"{name} must be non-negative integer counts [vocab] or [levels, vocab], "
                         f"got {a.dtype} {a.shape}")
    return a.astype(np.int64).reshape(-1, a.shape[-1])


def plot_duration_hist(durations_s: np.ndarray, out_png: str | Path, bins: int = 30) -> dict:
    """Histogram of durations (s). Returns {"counts": int64 [bins], "edges_s": float64 [bins + 1]}."""
    d = np.asarray(durations_s, np.float64)
    counts, edges = np.histogram(d, bins=bins if d.size else 1, range=None if d.size else (0.0, 1.0))
    fig = _figure(6, 3.5)
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True)
    ax.set_xlabel("record (segment) duration, s")
    ax.set_ylabel("records")
    ax.set_title(f"{d.size} records, {d.sum() / 3600:.3f} h")
    fig.tight_layout()
    _save(fig, out_png)
    return {"counts": counts.astype(np.int64), "edges_s": edges}


def plot_token_usage(counts, stream: str, out_png: str | Path, level_name: str | None = None) -> dict:
    """Sorted usage per id, one panel per level. `counts`: int [levels, vocab] (or [vocab]).

    Returns {"sorted_counts": int64 [levels, vocab], each row in decreasing order}."""
    c = _counts(counts, "counts")
    srt = -np.sort(-c, axis=1)
    levels, vocab = srt.shape
    cols = min(levels, 4)
    rows = math.ceil(levels / cols)
    fig = _figure(3.2 * cols, 2.4 * rows + 0.6)
    rank = np.arange(1, vocab + 1)
    for lv in range(levels):
        ax = fig.add_subplot(rows, cols, lv + 1)
        used = srt[lv] > 0
        if used.any():
            ax.plot(rank[used], srt[lv][used], lw=1.2)
            ax.set_yscale("log")
        dead = int(vocab - used.sum())
        label = f"{level_name} {lv + 1}: " if level_name else ""
        ax.set_title(f"{label}{int(used.sum())}/{vocab} used, {dead} dead", fontsize=8)
        ax.set_xlim(1, max(vocab, 2))
        ax.tick_params(labelsize=7)
        if lv % cols == 0:
            ax.set_ylabel("count (log)", fontsize=8)
        if lv >= levels - cols:
            ax.set_xlabel("id rank by usage", fontsize=8)
    fig.suptitle(f"{stream} token usage, sorted per id", fontsize=10)
    fig.tight_layout()
    _save(fig, out_png)
    return {"sorted_counts": srt}


def plot_codebook_usage_before_after(before_counts, after_counts, out_png: str | Path) -> dict:
    """Usage of each id before vs after a codebook rebuild (same vocab; [vocab] or [levels, vocab]
    summed over levels). Top: count per id (log); bottom: each sorted by usage (log), with dead
    codes in the legend. Returns {"ids", "before", "after", "before_sorted", "after_sorted"}."""
    b = _counts(before_counts, "before_counts").sum(axis=0)
    a = _counts(after_counts, "after_counts").sum(axis=0)
    if b.shape != a.shape:
        raise ValueError(f"before_counts has vocab {b.shape[0]} but after_counts has {a.shape[0]}; "
                         "a rebuild keeps the vocabulary size, compare codebooks of the same size")
    ids = np.arange(b.shape[0])
    fig = _figure(8, 5.5)
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    for counts, label, colour in ((b, "before", "tab:gray"), (a, "after", "tab:blue")):
        used = counts > 0
        top.plot(ids[used], counts[used], ".", ms=3, color=colour, label=label)
        srt = -np.sort(-counts)
        n = int(used.sum())
        bottom.plot(np.arange(1, n + 1), srt[:n], color=colour,
                    label=f"{label}: {n}/{counts.size} used, {counts.size - n} dead")
    for ax in (top, bottom):
        if (a > 0).any() or (b > 0).any():
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.set_ylabel("count (log)")
    top.set_xlabel("token id")
    bottom.set_xlabel("id rank by usage")
    fig.suptitle("codebook usage before vs after rebuild", fontsize=10)
    fig.tight_layout()
    _save(fig, out_png)
    return {"ids": ids, "before": b, "after": a, "before_sorted": -np.sort(-b), "after_sorted": -np.sort(-a)}


def write_stats_plots(stats, out_dir: str | Path) -> list[Path]:
    """duration_hist.png and token_usage_<stream>.png for a schemas.stats.DatasetStats."""
    out = Path(out_dir)
    paths = [out / "duration_hist.png"]
    plot_duration_hist(stats.durations_s, paths[0])
    for stream, c in stats.counts.items():
        level_name = stats.summary["streams"][stream]["level_name"]
        paths.append(out / f"token_usage_{stream}.png")
        plot_token_usage(c, stream, paths[-1], level_name)
    return paths
