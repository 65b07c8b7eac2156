r"""Held-out melody retrieval: find a hummed tune among 100 segments played on other instruments.

    PYTHONPATH=. python bench/bench_melody_retrieval.py --pairs PAIRS \
        [--models builtin basic-pitch] [--weights W.safetensors] [--draws 10] [--json out.json]

Data: the held-out split of `scripts/corpus/melody_pairs.py` (tunes no melody model trained on;
split by the hash of the tune id). Each held-out class is one 4 s score segment with views: a hum
stand-in rendered on a voice-like patch (Voice Oohs, Whistle or Ocarina), a synthesized sine hum,
two solo General MIDI programs (never a hum patch) and the melody with an accompaniment, each
with its own room, noise and gain.

For each draw d (from `--seed`, d), 100 held-out classes are picked; the candidates are their
first solo view (or their ensemble view), the queries their hum views; a query's correct answer
is its own segment. Every model is scored on the same draws (`tokenmill/eval/melody_retrieval.py`):
R@1, R@10 and the median rank, averaged over draws, beside chance (R@1 = 0.01, R@10 = 0.10,
median 50.5). Embeddings are the model's one window for the 4 s view (`embed_windows`), cached
per model and weights under `--cache`, so re-runs only score. One CPU thread.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenmill.eval.melody_retrieval import retrieval_metrics  # noqa: E402
from tokenmill.tokenizers.melody import build_melody  # noqa: E402

KINDS = ("hum-patch", "hum-sine", "solo", "ensemble")


def heldout_views(pairs: Path) -> tuple[list[dict], dict[str, list[int]]]:
    """Held-out classes (sorted) and, per kind, the index of each class's first view of that kind."""
    lines = [json.loads(x) for x in (pairs / "index.jsonl").read_text().splitlines() if x.strip()]
    classes = sorted((x for x in lines if x["split"] == "heldout"), key=lambda x: x["class"])
    first: dict[str, list[int]] = {k: [] for k in KINDS}
    for c in classes:
        kinds = [v["kind"] for v in json.loads((pairs / c["file"]).with_suffix(".json").read_text())["views"]]
        for k in KINDS:
            first[k].append(kinds.index(k) if k in kinds else -1)
    return classes, first


def embed_all(model, pairs: Path, classes: list[dict], first: dict[str, list[int]], cache: Path) -> dict[str, np.ndarray]:
    path = cache / f"emb-{model.name}-{(model.weights_sha256 or 'none')[:12]}-{len(classes)}.npz"
    if path.is_file():
        got = np.load(path)
        return {k: got[k] for k in got.files}
    out: dict[str, list] = {k: [] for k in KINDS}
    t0, seconds = time.time(), 0.0
    for i, c in enumerate(classes):
        waves = np.load(pairs / c["file"]).astype(np.float32) / 32767.0
        for k in KINDS:
            j = first[k][i]
            out[k].append(model.embed_windows(waves[j])[0] if j >= 0 else np.full(model.dim, np.nan, np.float32))
            seconds += 4.0 if j >= 0 else 0.0
    wall = time.time() - t0
    print(f"{model.name}: embedded {seconds:.0f} s of audio in {wall:.0f} s ({seconds / wall:.1f}x real time, "
          f"1 thread, shared machine)", file=sys.stderr)
    arrays = {k: np.stack(v).astype(np.float32) for k, v in out.items()}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=Path, required=True)
    ap.add_argument("--models", nargs="+", default=["builtin", "basic-pitch"])
    ap.add_argument("--weights", help="built-in model weights (default: the packaged ones)")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tokenmill-melody-bench"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    classes, first = heldout_views(args.pairs)
    ok = [i for i in range(len(classes)) if all(first[k][i] >= 0 for k in KINDS)]
    if len(ok) < args.candidates:
        print(f"only {len(ok)} held-out classes with every view; need {args.candidates} (lower --candidates)")
        return 2
    draws = [np.random.default_rng([args.seed, d]).choice(ok, args.candidates, replace=False) for d in range(args.draws)]
    results = []
    for name in args.models:
        cfg = {"path": args.weights} if name == "builtin" and args.weights else {}
        model = build_melody(name, **cfg)
        emb = embed_all(model, args.pairs, classes, first, args.cache)
        for q_kind in ("hum-patch", "hum-sine"):
            for c_kind in ("solo", "ensemble"):
                per = [retrieval_metrics(emb[q_kind][idx], emb[c_kind][idx], np.arange(len(idx))) for idx in draws]
                row = {"model": name, "query": q_kind, "candidates": c_kind, "n_candidates": args.candidates,
                       "draws": args.draws, "weights_sha256": model.weights_sha256}
                for key in ("R@1", "R@10", "median_rank", "chance_R@1", "chance_R@10", "chance_median_rank"):
                    row[key] = float(np.mean([p[key] for p in per]))
                row["R@1_draw_std"] = float(np.std([p["R@1"] for p in per]))
                results.append(row)
    print(f"held-out melody retrieval: {len(ok)} held-out segments, {args.draws} draws of {args.candidates} candidates")
    print("| model | query | candidates | R@1 | R@10 | median rank |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['query']} | {r['candidates']} | {r['R@1']:.3f} ± {r['R@1_draw_std']:.3f} | "
              f"{r['R@10']:.3f} | {r['median_rank']:.1f} |")
    r = results[0]
    print(f"| chance | | | {r['chance_R@1']:.3f} | {r['chance_R@10']:.3f} | {r['chance_median_rank']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
