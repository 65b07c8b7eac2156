"""`rebuild`: refit one stream's codebook and write a dataset version that rewrites only that stream.

    parent manifest + --codebook (id must match) ─► new sample ─► refit (warm start, ids aligned)
        ─► new tokens for every record ─► column shards streams/<stream>/part-IIIII.parquet
        ─► drift.json (+ codebook_usage.png) ─► manifest.json (parent shards by reference)

- **semantic**: the k-means needs features, so each source in the dataset is decoded again with the
  dataset's own front-end options and only the semantic extractor runs (no codec, no MuLan); the
  segment keys must come out as the dataset's (same content), else the rebuild stops. This is
  plain Python over the sources with the ingest decode path (`audio.prepare`), not a Beam job.
- **mulan**: the RVQ quantizes the stored `mulan_windows`; `mulan` is recomputed with
  `segment_tokens(windows, new_rvq)`. The audio tower is never built.
- **melody**: the same over the stored `melody_windows`; `melody` [W, S] is recomputed with
  `melody_tokens.window_tokens(windows, new_rvq)`.
- The refit sample: every frame (window) gets fit.py's hash priority from (seed, key, index), and
  the `sample_frames` smallest are kept (deterministic, order-free). The drift probe is the same
  with a fixed probe seed over the dataset's own frames (windows), `probe_frames` of them.
- The version format (references, column shards, lineage) is schemas/versions.py.
"""
from __future__ import annotations

import argparse
import copy
import glob
import hashlib
import logging
import os
import time

import numpy as np

from tokenmill.errors import TokenmillError, UsageError
from tokenmill import __version__
from tokenmill.pipelines.ingest import Progress, frames_priority
from tokenmill.pipelines.options import RebuildConfig, SemanticConfig
from tokenmill.pipelines.sinks import atomic_write
from tokenmill.schemas import shards as fmt
from tokenmill.schemas import versions
from tokenmill.schemas.manifest import ManifestError, dumps, validate_manifest
from tokenmill.schemas.records import MANIFEST_NAME, json_dumps_stable
from tokenmill.tokenizers import compute
from tokenmill.tokenizers.compute import ComputeLayout
from tokenmill.tokenizers.kmeans import Codebook
from tokenmill.tokenizers.refit import drift_report, refit_kmeans, refit_rvq, render_drift
from tokenmill.tokenizers.rvq import RVQCodebook

LOG = logging.getLogger("tokenmill")
PROBE_SEED = 7_919_000_001   # fixed: the probe set does not move with --seed
REBUILD_STREAMS = ("semantic", "mulan", "melody")
CONFIG_NAME, DRIFT_NAME, PLOT_NAME = "rebuild_config.json", "drift.json", "codebook_usage.png"


class RebuildError(TokenmillError, ValueError):
    """A rebuild cannot start or cannot finish consistently; the message names the file and the fix."""


# ---------------------------------------------------------------- options

def add_rebuild_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, metavar="DIR", help="the parent dataset (tokenize --output, "
                   "or an earlier rebuild); it is only read")
    p.add_argument("--stream", required=True, choices=REBUILD_STREAMS,
                   help="semantic: refit the k-means and re-assign every frame (decodes the sources "
                        "again, runs only the semantic extractor); mulan: refit the RVQ and re-encode "
                        "the stored mulan_windows (the MuLan audio tower never runs); melody: the same "
                        "over the stored melody_windows")
    p.add_argument("--output", required=True, metavar="NEW_DIR",
                   help="the new version's directory (must not exist, or be empty). It gets "
                        "streams/<stream>/part-IIIII.parquet column shards, codebooks/, drift.json, "
                        "rebuild_config.json and manifest.json; the parent's shard files are listed by "
                        "relative path and sha256, never copied, so keep the parent where it is")
    p.add_argument("--codebook", required=True, metavar="PATH",
                   help="the parent codebook artifact (.safetensors, its .json card, or a directory "
                        "holding exactly one); its id must be the one the dataset's manifest records")
    p.add_argument("--input", dest="inputs", action="extend", nargs="+", default=[], metavar="GLOB",
                   help="semantic only: audio for the refit sample (repeatable; default: the "
                        "dataset's own sources)")
    p.add_argument("--n_iter", type=int, help="Lloyd iterations of the refit (default: semantic 25, "
                   "mulan 10 per stage); a warm start usually converges sooner")
    p.add_argument("--no_align", action="store_true",
                   help="do not align the new ids to the parent's (the control: token ids may move)")
    p.add_argument("--cold_start", action="store_true", help=argparse.SUPPRESS)  # test-only control
    p.add_argument("--seed", type=int, default=0, help="sample seed (default %(default)s)")
    p.add_argument("--sample_frames", type=int, default=200_000,
                   help="frames (mulan: windows) drawn for the refit (default %(default)s)")
    p.add_argument("--probe_frames", type=int, default=20_000,
                   help="frames (mulan: windows) of the dataset in the fixed probe set of the drift "
                        "report (default %(default)s)")
    p.add_argument("--plots", action="store_true",
                   help="also write NEW_DIR/codebook_usage.png (usage per id before vs after)")


def rebuild_config(args: argparse.Namespace) -> RebuildConfig:
    for name in ("sample_frames", "probe_frames"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1")
    if args.n_iter is not None and args.n_iter < 1:
        raise UsageError("--n_iter must be >= 1")
    if args.inputs and args.stream != "semantic":
        raise UsageError(f"--input applies to --stream semantic only: the {args.stream} RVQ is refitted on the "
                         f"dataset's stored {args.stream}_windows (tokenize the other audio with the same "
                         "model first, and rebuild that dataset)")
    n_iter = args.n_iter if args.n_iter is not None else (25 if args.stream == "semantic" else 10)
    return RebuildConfig(dataset=args.dataset, stream=args.stream, output=args.output, codebook=args.codebook,
                         inputs=tuple(args.inputs), n_iter=n_iter, align=not args.no_align,
                         warm_start=not args.cold_start, seed=args.seed, sample_frames=args.sample_frames,
                         probe_frames=args.probe_frames, plots=args.plots)


# ---------------------------------------------------------------- sampling

def bottom_k(per_key: dict[str, np.ndarray], k: int, seed) -> np.ndarray:
    """float32 [<=k, D]: the rows with the k smallest (frames_priority, key, index) over all keys."""
    keys = sorted(k_ for k_, v in per_key.items() if len(v))
    if not keys:
        raise RebuildError("no frames to sample: the dataset holds no records")
    prio = np.concatenate([frames_priority(key, len(per_key[key]), seed) for key in keys])
    kid = np.concatenate([np.full(len(per_key[key]), i) for i, key in enumerate(keys)])
    row = np.concatenate([np.arange(len(per_key[key])) for key in keys])
    take = np.lexsort((row, kid, prio))[:k]
    take = take[np.lexsort((row[take], kid[take]))]          # dataset order: key, then frame
    return np.stack([per_key[keys[kid[i]]][row[i]] for i in take]).astype(np.float32)


# ---------------------------------------------------------------- parent

def _load_parent_codebook(cfg: RebuildConfig, manifest: dict):
    want = manifest["codebooks"].get(cfg.stream)
    mpath = os.path.join(cfg.dataset, MANIFEST_NAME)
    if want is None:
        raise RebuildError(f"{mpath} records no {cfg.stream} codebook (streams: {sorted(manifest['codebooks'])}); "
                           f"this dataset has no {cfg.stream} stream to rebuild")
    if cfg.stream == "semantic":
        from tokenmill.pipelines.handlers import resolve_codebook_path

        path = resolve_codebook_path(cfg.codebook)
        cb = Codebook.load(path)
    else:
        if cfg.stream == "melody":
            from tokenmill.tokenizers.melody_tokens import resolve_rvq_path
        else:
            from tokenmill.tokenizers.mulan import resolve_rvq_path

        path = resolve_rvq_path(cfg.codebook)
        cb = RVQCodebook.load(path)
    if cb.id != want:
        raise RebuildError(f"--codebook {path} is {cb.id}, but {mpath} says the {cfg.stream} stream was "
                           f"tokenized with {want}; pass the artifact with id {want} (its "
                           f"{want}.safetensors)")
    return cb


def _check_output(cfg: RebuildConfig) -> None:
    out, src = os.path.abspath(cfg.output), os.path.abspath(cfg.dataset)
    if out == src or out.startswith(src + os.sep):
        raise RebuildError(f"--output {cfg.output} lies inside --dataset {cfg.dataset}; a version sits "
                           "beside its parent (e.g. DATASET.v2)")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        done = os.path.exists(os.path.join(out, MANIFEST_NAME))
        raise RebuildError(f"--output {cfg.output} exists and is not an empty directory; choose a new "
                           "directory (a rebuild never overwrites)" + ("" if done else
                           "; it has no manifest.json, so it is an interrupted rebuild: delete it and re-run"))


def _base_shards(root: str, manifest: dict) -> list[tuple[dict, list]]:
    """[(shard entry, records)] of every listed shard (every format), overrides applied."""
    return [(s, list(fmt._iter_shards(root, [s], manifest))) for s in manifest["shards"]]  # noqa: SLF001


def _unique_records(base: list[tuple[dict, list]]) -> dict:
    out = {}
    for _, recs in base:
        for r in recs:
            out.setdefault(r.key, r)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------- semantic features

def _semantic_setup(manifest: dict, parent: Codebook):
    from tokenmill.pipelines.handlers import check_codebook_matches
    from tokenmill.tokenizers import audio
    from tokenmill.pipelines.handlers import semantic_extractor

    job = manifest["job"]
    scfg = dict(job["semantic"])
    scfg["extractor_config"] = tuple(tuple(x) for x in scfg.get("extractor_config") or ())
    # the dataset's compute layout (older manifests: the default), applied here: the features are
    # extracted in this process
    scfg["compute"] = ComputeLayout(**(scfg.get("compute") or {}))
    scfg = SemanticConfig(**scfg)
    compute.apply(scfg.compute)
    extractor = semantic_extractor(scfg)
    desc, was = extractor.describe(), manifest["tokenizers"]["semantic"]["extractor"]
    for k in ("name", "dim", "weights_sha256"):
        if desc.get(k) != was.get(k):
            raise RebuildError(f"the semantic extractor rebuilt from the manifest's job.semantic gives {k} "
                               f"{desc.get(k)!r}, but the dataset was tokenized with {was.get(k)!r}; make "
                               f"the model at {scfg.path!r} available as it was")
    check_codebook_matches(desc, parent)
    acfg = audio.AudioConfig(**{**job["audio"], "target_rates_hz": (16_000,)})
    return extractor, acfg


def _read_bytes(uri: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(uri) as f:
        return f.read()


def _dataset_features(records: dict, extractor, acfg) -> dict[str, np.ndarray]:
    """key -> float32 [T_s, D] for every record, decoded from its uri (must reproduce its key)."""
    from tokenmill.tokenizers import audio

    by_uri: dict[str, set] = {}
    for r in records.values():
        by_uri.setdefault(r.uri, set()).add(r.key)
    feats = {}
    progress = Progress("rebuild: decode + extract", unit="segments")
    for uri in sorted(by_uri):
        try:
            segs = {s.key: s for s in audio.prepare(_read_bytes(uri), uri, acfg)}
        except Exception as e:  # noqa: BLE001 — the message names the file
            raise RebuildError(f"{uri}: cannot be decoded again for the semantic rebuild ({type(e).__name__}: "
                               f"{e}); the semantic stream is recomputed from the sources, so restore the file "
                               "(or rebuild from a dataset whose sources are present)") from e
        for key in sorted(by_uri[uri]):
            if key not in segs:
                raise RebuildError(f"{uri}: decodes to other content now (segment key {key} not produced; got "
                                   f"{sorted(segs)[:3]}); the file changed since tokenize: re-tokenize it")
            f = extractor.extract(segs[key].waves[16_000])
            if f.shape[0] != records[key].semantic.shape[0]:
                raise RebuildError(f"{uri}: {f.shape[0]} semantic frames for {key}, but the dataset holds "
                                   f"{records[key].semantic.shape[0]}; the extractor differs from tokenize's")
            feats[key] = np.asarray(f, dtype=np.float32)
            progress.tick(audio_s=segs[key].duration_s)
    progress.report()
    return feats


def _input_features(patterns: tuple[str, ...], extractor, acfg) -> tuple[dict, dict]:
    """key -> features of the --input audio (the refit sample), and what was skipped."""
    from tokenmill.tokenizers import audio

    paths = sorted({p for pat in patterns for p in glob.glob(pat)})
    if not paths:
        raise RebuildError(f"--input {list(patterns)} matched no files; check the glob (quote it)")
    feats, skipped = {}, {}
    progress = Progress("rebuild: sample inputs", unit="segments")
    for path in paths:
        try:
            segs = audio.prepare(_read_bytes(path), path, acfg)
        except audio.AudioError as e:
            LOG.warning("[rebuild] sample input %s skipped: %s", path, e)
            skipped[path] = e.reason
            progress.tick(dead=True)
            continue
        for s in segs:
            feats[s.key] = np.asarray(extractor.extract(s.waves[16_000]), dtype=np.float32)
            progress.tick(audio_s=s.duration_s)
    progress.report()
    return feats, {"n_files": len(paths), "skipped": skipped}


# ---------------------------------------------------------------- the rebuild

def _refit(cfg: RebuildConfig, manifest: dict, parent, records: dict) -> tuple:
    """(new codebook, new field per key, probe vectors, sample info)."""
    if cfg.stream == "semantic":
        extractor, acfg = _semantic_setup(manifest, parent)
        t0 = time.perf_counter()
        feats = _dataset_features(records, extractor, acfg)
        if cfg.inputs:
            sample_src, found = _input_features(cfg.inputs, extractor, acfg)
            info = {"source": "inputs", "patterns": list(cfg.inputs), **found}
        else:
            sample_src, info = feats, {"source": "dataset"}
        x = bottom_k(sample_src, cfg.sample_frames, cfg.seed)
        t_feat = time.perf_counter() - t0
        sources = {"rebuild_of": manifest["codebooks"]["semantic"], **info,
                   "sampling": {"seed": cfg.seed, "sample_frames": cfg.sample_frames}}
        was = (parent.card.get("sources") or {}).get("extractor")
        sources["extractor"] = was if was is not None else extractor.describe()
        child = refit_kmeans(parent, x, seed=cfg.seed, n_iter=cfg.n_iter, align=cfg.align,
                             warm_start=cfg.warm_start, sources=sources)
        new = {k: child.assign(f) for k, f in feats.items()}
        probe = bottom_k(feats, cfg.probe_frames, PROBE_SEED)
    else:
        stream = cfg.stream  # "mulan" | "melody": an RVQ over the stored window embeddings
        windows = {k: getattr(r, f"{stream}_windows").astype(np.float32) for k, r in records.items()}
        t0 = time.perf_counter()
        x = bottom_k(windows, cfg.sample_frames, cfg.seed)
        t_feat = time.perf_counter() - t0
        model = manifest["tokenizers"][stream]["model"]
        was = (parent.card.get("sources") or {}).get(stream)
        if isinstance(was, dict) and (was.get("name"), was.get("weights_sha256")) != (
                model.get("name"), model.get("weights_sha256")):
            raise RebuildError(f"the parent RVQ {parent.id} was fitted on {stream} model {was.get('name')!r} "
                               f"({str(was.get('weights_sha256'))[:12]}…) but the dataset's windows come from "
                               f"{model.get('name')!r} ({str(model.get('weights_sha256'))[:12]}…); pass the RVQ "
                               "the dataset was tokenized with")
        info = {"source": f"dataset {stream}_windows"}
        sources = {"rebuild_of": parent.id, **info, stream: was if was is not None else model,
                   "sampling": {"seed": cfg.seed, "sample_frames": cfg.sample_frames}}
        child = refit_rvq(parent, x, seed=cfg.seed, n_iter=cfg.n_iter, align=cfg.align,
                          warm_start=cfg.warm_start, sources=sources)
        if stream == "melody":
            from tokenmill.tokenizers.melody_tokens import window_tokens

            new = {k: window_tokens(r.melody_windows, child) for k, r in records.items()}
        else:
            from tokenmill.tokenizers.mulan import segment_tokens

            new = {k: segment_tokens(r.mulan_windows, child) for k, r in records.items()}
        probe = bottom_k(windows, cfg.probe_frames, PROBE_SEED)
    info.update(n_sample=int(len(x)), features_s=round(t_feat, 3))
    return child, new, probe, info


def _dataset_drift(stream: str, records: dict, new: dict, k: int) -> dict:
    """Direct comparison over every record of the dataset: share of tokens changed, usage."""
    old_t = [getattr(records[key], stream) for key in records]
    new_t = [new[key] for key in records]
    changed = sum(int((a != b).sum()) for a, b in zip(old_t, new_t))
    total = sum(a.size for a in old_t)
    if stream in ("mulan", "melody"):  # per RVQ stage: mulan [S] per record, melody [W, S]
        old_rows = np.concatenate([np.asarray(a).reshape(-1, a.shape[-1]) for a in old_t])
        new_rows = np.concatenate([np.asarray(a).reshape(-1, a.shape[-1]) for a in new_t])
        before = np.stack([np.bincount(old_rows[:, s].astype(np.int64), minlength=k)
                           for s in range(old_rows.shape[1])])
        after = np.stack([np.bincount(new_rows[:, s].astype(np.int64), minlength=k)
                          for s in range(new_rows.shape[1])])
    else:
        before = np.bincount(np.concatenate(old_t).astype(np.int64), minlength=k)
        after = np.bincount(np.concatenate(new_t).astype(np.int64), minlength=k)
    return {"n_records": len(records), "n_tokens": total, "tokens_changed": changed,
            "changed_share": changed / total if total else 0.0,
            "records_changed": sum(bool((a != b).any()) for a, b in zip(old_t, new_t)),
            "usage_before": before.tolist(), "usage_after": after.tolist()}


def _version_manifest(cfg: RebuildConfig, parent_m: dict, parent_bytes: bytes, child, overrides: dict,
                      drift_summary: dict) -> dict:
    rel = os.path.relpath(os.path.abspath(cfg.dataset), os.path.abspath(cfg.output)).replace(os.sep, "/")
    m = copy.deepcopy(parent_m)
    m.pop("history", None)          # the parent's manifest (lineage.parent) keeps it
    for s in m["shards"] + m["dead_letter_files"]:
        s["path"] = versions.rebase(s["path"], rel)
    kept = []
    for ov in m.get("overrides") or []:
        if ov["stream"] == cfg.stream:
            continue                # replaced by this rebuild's column shards
        for s in ov["shards"]:
            s["path"], s["base"] = versions.rebase(s["path"], rel), versions.rebase(s["base"], rel)
        kept.append(ov)
    overrides = copy.deepcopy(overrides)
    for s in overrides["shards"]:   # written against the parent's paths
        s["base"] = versions.rebase(s["base"], rel)
    m["overrides"] = sorted(kept + [overrides], key=lambda o: o["stream"])
    m["codebooks"][cfg.stream] = child.id
    m["tokenizers"][cfg.stream] = {**m["tokenizers"][cfg.stream], "codebook_id": child.id,
                                   "codebook_card": child.card}
    m["tokenmill_version"] = __version__
    m["lineage"] = {"parent": {"path": rel, "manifest_sha256": hashlib.sha256(parent_bytes).hexdigest()},
                    "stream": cfg.stream, "parent_codebook": parent_m["codebooks"][cfg.stream],
                    "codebook": child.id, "drift": drift_summary,
                    "config": {k: v for k, v in cfg.to_json().items() if k not in ("dataset", "output")}}
    problems = validate_manifest(m)
    if problems:
        raise ManifestError("refusing to write an invalid version manifest: " + "; ".join(problems))
    return m


def run_rebuild(cfg: RebuildConfig) -> dict:
    """Write the version (module docstring). Returns {"manifest", "drift", "text", "timing", "paths"}."""
    t0 = time.perf_counter()
    parent_m = fmt.read_manifest(cfg.dataset)
    with open(os.path.join(cfg.dataset, MANIFEST_NAME), "rb") as f:
        parent_bytes = f.read()
    _check_output(cfg)
    parent = _load_parent_codebook(cfg, parent_m)
    base = _base_shards(cfg.dataset, parent_m)
    records = _unique_records(base)
    child, new, probe, sample_info = _refit(cfg, parent_m, parent, records)
    t_refit = time.perf_counter()
    out = cfg.output.rstrip("/")
    os.makedirs(out, exist_ok=True)
    child.save(os.path.join(out, "codebooks"))
    drift = drift_report(parent, child, probe)
    drift["dataset"] = _dataset_drift(cfg.stream, records, new, parent.k)
    drift["sample"] = sample_info
    drift["probe"] = {"seed": PROBE_SEED, "probe_frames": cfg.probe_frames,
                      "unit": "frames" if cfg.stream == "semantic" else "windows"}
    text = render_drift(drift) + (f"\n  dataset tokens    {100 * drift['dataset']['changed_share']:.1f}% changed "
                                  f"({drift['dataset']['tokens_changed']} of {drift['dataset']['n_tokens']}, "
                                  f"{drift['dataset']['records_changed']} of {drift['dataset']['n_records']} records)")
    atomic_write(f"{out}/{DRIFT_NAME}", json_dumps_stable(drift))
    atomic_write(f"{out}/{CONFIG_NAME}", json_dumps_stable(cfg.to_json()))
    paths = {"drift": f"{out}/{DRIFT_NAME}", "config": f"{out}/{CONFIG_NAME}"}
    if cfg.plots:
        from tokenmill.inspect_plots import plot_codebook_usage_before_after

        paths["plot"] = f"{out}/{PLOT_NAME}"
        plot_codebook_usage_before_after(np.asarray(drift["dataset"]["usage_before"]),
                                         np.asarray(drift["dataset"]["usage_after"]), paths["plot"])
    fields = versions.OVERRIDE_FIELDS[cfg.stream]
    col_shards = []
    for i, (s, recs) in enumerate(base):
        data = versions.encode_column_shard([r.key for r in recs], {fields[0]: [new[r.key] for r in recs]})
        name = versions.column_shard_name(cfg.stream, i)
        atomic_write(f"{out}/{name}", data)
        col_shards.append({"path": name, "base": s["path"], "records": len(recs), "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()})
    overrides = {"stream": cfg.stream, "fields": list(fields), "format": "parquet", "shards": col_shards}
    summary = {"probe_changed_share": drift.get("changed_share", drift.get("changed_share_all")),
               "dataset_changed_share": drift["dataset"]["changed_share"],
               "records_changed": drift["dataset"]["records_changed"], "n_probe": drift["n_probe"]}
    manifest = _version_manifest(cfg, parent_m, parent_bytes, child, overrides, summary)
    atomic_write(f"{out}/{MANIFEST_NAME}", dumps(manifest))       # last: the version is complete
    t_end = time.perf_counter()
    new_bytes = sum(s["bytes"] for s in col_shards)
    total = new_bytes + sum(s["bytes"] for s in parent_m["shards"])
    return {"manifest": manifest, "drift": drift, "text": text, "paths": paths,
            "timing": {"refit_s": t_refit - t0, "total_s": t_end - t0},
            "bytes": {"column_shards": new_bytes, "dataset_total": total}}


def print_rebuild_summary(res: dict) -> None:
    m = res["manifest"]
    lin = m["lineage"]
    print(res["text"])
    print(f"rebuild {lin['stream']}: {lin['parent_codebook']} -> {lin['codebook']}; wrote "
          f"{len(next(o for o in m['overrides'] if o['stream'] == lin['stream'])['shards'])} column shards ({res['bytes']['column_shards']} bytes of "
          f"{res['bytes']['dataset_total']} in the version), {res['timing']['total_s']:.1f} s")
    for k, p in sorted(res["paths"].items()):
        print(f"  {k:8s} {p}")
    print("  verify   beam_runner.py verify " + os.path.dirname(res["paths"]["drift"]))

