"""`rebuild`: refit one stream's codebook and write a dataset version that rewrites only that stream.

    parent manifest + --codebook (id must match) ─► pass 1 (Beam): refit sample + drift probe
        ─► refit in the launcher (warm start, ids aligned) ─► pass 2 (Beam): new tokens for every
        record ─► column shards streams/<stream>/part-IIIII.parquet ─► drift.json
        (+ codebook_usage.png) ─► manifest.json (parent shards by reference)

The passes are Beam jobs on any runner (pipelines/rebuild_beam.py), and every path (--dataset,
--output, --input) may be any Beam FileSystems URL (local, gs://, ...):

- **semantic**: the k-means needs features, so each source in the dataset is decoded again with the
  dataset's own front end and only the semantic extractor runs (no codec, no MuLan); the segment
  keys must come out as the dataset's (same content), else the rebuild stops. Pass 1 selects the
  refit sample and the probe set from the keys and frame counts (global bottom-k combiners), then
  decodes only the sources that hold selected frames; pass 2 decodes and extracts every source
  again and assigns with the new codebook: no worker holds more than one source's features.
- **mulan**: the RVQ quantizes the stored `mulan_windows`; `mulan` is recomputed with
  `segment_tokens(windows, new_rvq)` on the workers. The audio tower is never built.
- **melody**: the same over the stored `melody_windows`; `melody` [W, S] is recomputed with
  `melody_tokens.window_tokens(windows, new_rvq)` on the workers.
- The refit sample: every frame (window) gets fit.py's hash priority from (seed, key, index), and
  the `sample_frames` smallest (priority, key, index) are kept, in (key, index) order: the rows and
  their order (hence the float64 sums of the Lloyd steps) do not depend on the runner. The drift
  probe is the same with a fixed probe seed over the dataset's own frames (windows),
  `probe_frames` of them. `bottom_k` below is the one-process reference of that rule.
- Resume: OUT/_work holds job.json (what the version depends on), p1-<uri hash>.npz per source
  decoded in pass 1 (its selected rows), pass1.npz (the sample and the probe) and col-IIIII.json
  per written column shard (its entry and drift counts). Re-running the same command on a killed
  rebuild decodes no journaled source in pass 1, skips pass 1 when pass1.npz exists and, in pass
  2, every column shard already written; the output is byte-identical to an uninterrupted run.
  _work is removed after manifest.json is written.
- The version format (references, column shards, lineage) is schemas/versions.py.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import posixpath
import tempfile
import time

import numpy as np
from apache_beam.io.filesystems import FileSystems

from tokenmill.errors import UsageError
from tokenmill import __version__
from tokenmill.pipelines.ingest import frames_priority
from tokenmill.pipelines.configs import RebuildConfig, SemanticConfig
from tokenmill.pipelines.rebuild_beam import RebuildError, join, read_bytes  # noqa: F401 (RebuildError: API)
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
WORK_DIR, JOB_NAME, PASS1_NAME = "_work", "job.json", "pass1.npz"


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
                        "relative path and sha256, never copied, so keep the parent where it is. Any "
                        "Beam FileSystems URL, on the parent's filesystem. A killed rebuild resumes when "
                        "the same command runs again on it (NEW_DIR/_work)")
    p.add_argument("--codebook", required=True, metavar="PATH",
                   help="the parent codebook artifact (.safetensors, its .json card, or a directory "
                        "holding exactly one); its id must be the one the dataset's manifest records")
    p.add_argument("--input", dest="inputs", action="extend", nargs="+", default=[], metavar="GLOB",
                   help="semantic only: audio for the refit sample, matched through Beam FileSystems "
                        "(repeatable; default: the dataset's own sources)")
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

def _read_parent(cfg: RebuildConfig) -> tuple[dict, bytes]:
    path = join(cfg.dataset, MANIFEST_NAME)
    try:
        data = read_bytes(path)
    except (FileNotFoundError, IOError):
        raise FileNotFoundError(f"{path} not found; is {cfg.dataset} a tokenmill dataset (tokenize --output), "
                                "and did its job finish?") from None
    return fmt.parse_manifest(data, path), data


def _load_parent_codebook(cfg: RebuildConfig, manifest: dict):
    want = manifest["codebooks"].get(cfg.stream)
    mpath = join(cfg.dataset, MANIFEST_NAME)
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


def _is_url(path: str) -> bool:
    return "://" in path


def _relpath(target: str, start: str) -> str:
    """target relative to start, '/'-separated; both local, or both URLs of one scheme and bucket."""
    if not _is_url(target) and not _is_url(start):
        return os.path.relpath(os.path.abspath(target), os.path.abspath(start)).replace(os.sep, "/")
    (ts, tp), (ss, sp) = (x.split("://", 1) for x in (target, start))
    t_bucket, s_bucket = tp.split("/", 1)[0], sp.split("/", 1)[0]
    if (ts, t_bucket) != (ss, s_bucket):
        raise RebuildError(f"--output {start} and --dataset {target} must lie on one filesystem (and bucket): "
                           "a version references its parent's shards by relative path")
    return posixpath.relpath("/" + tp.rstrip("/"), "/" + sp.rstrip("/"))


def _exists(path: str) -> bool:
    return FileSystems.exists(path)


def _listing(path: str) -> list[str]:
    if not _exists(path):
        return []
    return sorted(m.path for m in FileSystems.match([join(path, "*")])[0].metadata_list)


def _check_output(cfg: RebuildConfig) -> None:
    out, src = cfg.output.rstrip("/"), cfg.dataset.rstrip("/")
    if not _is_url(out) and not _is_url(src):
        out, src = os.path.abspath(out), os.path.abspath(src)
    if out == src or out.startswith(src + "/") or out.startswith(src + os.sep):
        raise RebuildError(f"--output {cfg.output} lies inside --dataset {cfg.dataset}; a version sits "
                           "beside its parent (e.g. DATASET.v2)")
    if _exists(join(cfg.output, MANIFEST_NAME)):
        raise RebuildError(f"--output {cfg.output} holds a finished version (manifest.json); choose a new "
                           "directory (a rebuild never overwrites)")
    if _listing(cfg.output) and not _exists(join(join(cfg.output, WORK_DIR), JOB_NAME)):
        raise RebuildError(f"--output {cfg.output} exists and is not an empty directory; choose a new "
                           "directory (a rebuild never overwrites)")


def _open_work(cfg: RebuildConfig, parent_bytes: bytes) -> str:
    """OUT/_work, created with job.json, or the one a killed run of the same command left."""
    from tokenmill.pipelines.journal import _first_diff

    work = join(cfg.output, WORK_DIR)
    want = json.loads(json.dumps({"config": cfg.to_json(), "tokenmill_version": __version__,
                                  "parent_manifest_sha256": hashlib.sha256(parent_bytes).hexdigest()}))
    path = join(work, JOB_NAME)
    if not _exists(path):
        atomic_write(path, json.dumps(want, sort_keys=True, indent=1).encode())
        return work
    have = json.loads(read_bytes(path))
    if have != want:
        raise RebuildError(f"{path}: an interrupted rebuild of {cfg.output} used other settings "
                           f"({_first_diff(have, want, '')}); re-run it with those settings to resume it, or "
                           f"delete {cfg.output} to start over")
    return work


# ---------------------------------------------------------------- models

def _semantic_setup(manifest: dict, parent: Codebook):
    """(SemanticConfig, AudioConfig, extractor description) of the dataset's semantic stream,
    checked here (the launcher) before any worker starts."""
    from tokenmill.pipelines.handlers import check_codebook_matches, semantic_extractor
    from tokenmill.tokenizers import audio

    job = manifest["job"]
    scfg = dict(job["semantic"])
    scfg["extractor_config"] = tuple(tuple(x) for x in scfg.get("extractor_config") or ())
    # the dataset's compute layout (older manifests: the default), applied on every worker
    scfg["compute"] = ComputeLayout(**(scfg.get("compute") or {}))
    scfg = SemanticConfig(**scfg)
    compute.apply(scfg.compute)
    desc, was = semantic_extractor(scfg).describe(), manifest["tokenizers"]["semantic"]["extractor"]
    for k in ("name", "dim", "weights_sha256"):
        if desc.get(k) != was.get(k):
            raise RebuildError(f"the semantic extractor rebuilt from the manifest's job.semantic gives {k} "
                               f"{desc.get(k)!r}, but the dataset was tokenized with {was.get(k)!r}; make "
                               f"the model at {scfg.path!r} available as it was")
    check_codebook_matches(desc, parent)
    acfg = audio.AudioConfig(**{**job["audio"], "target_rates_hz": (16_000,)})
    return scfg, acfg, desc


def _window_source(manifest: dict, parent: RVQCodebook, stream: str) -> dict:
    """The window model (MuLan or melody) the parent RVQ was fitted on; refused when the dataset's
    windows come from another."""
    model = manifest["tokenizers"][stream]["model"]
    was = (parent.card.get("sources") or {}).get(stream)
    if isinstance(was, dict) and (was.get("name"), was.get("weights_sha256")) != (
            model.get("name"), model.get("weights_sha256")):
        raise RebuildError(f"the parent RVQ {parent.id} was fitted on {stream} model {was.get('name')!r} "
                           f"({str(was.get('weights_sha256'))[:12]}…) but the dataset's windows come from "
                           f"{model.get('name')!r} ({str(model.get('weights_sha256'))[:12]}…); pass the RVQ "
                           "the dataset was tokenized with")
    return was if was is not None else model


def _input_uris(patterns: tuple[str, ...]) -> list[str]:
    found = {m.path for r in FileSystems.match(list(patterns)) for m in r.metadata_list}
    if not found:
        raise RebuildError(f"--input {list(patterns)} matched no files; check the path (quote the glob)")
    return sorted(found)


def _save_codebook(child, directory: str) -> None:
    """child's <id>.safetensors + <id>.json under `directory` (any FileSystems URL)."""
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp(prefix="tokenmill-rebuild-"))
    child.save(tmp)
    for f in sorted(tmp.iterdir()):
        atomic_write(join(directory, f.name), f.read_bytes())


def _refit(cfg: RebuildConfig, manifest: dict, parent, sample, extra: dict):
    """The new codebook from pass 1's sample (keys, rows, x), and the drift report's sample info."""
    keys, _, x = sample
    if not len(keys):
        raise RebuildError("no frames to sample: the dataset holds no records" if not cfg.inputs else
                           f"no frames to sample: every --input file was skipped ({len(extra['skipped'])})")
    sampling = {"seed": cfg.seed, "sample_frames": cfg.sample_frames}
    if cfg.stream == "semantic":
        info = ({"source": "inputs", "patterns": list(cfg.inputs), "n_files": extra["n_files"],
                 "skipped": extra["skipped"]} if cfg.inputs else {"source": "dataset"})
        sources = {"rebuild_of": manifest["codebooks"]["semantic"], **info, "sampling": sampling}
        was = (parent.card.get("sources") or {}).get("extractor")
        sources["extractor"] = was if was is not None else extra["extractor"]
        child = refit_kmeans(parent, x, seed=cfg.seed, n_iter=cfg.n_iter, align=cfg.align,
                             warm_start=cfg.warm_start, sources=sources)
    else:
        info = {"source": f"dataset {cfg.stream}_windows"}
        sources = {"rebuild_of": parent.id, **info, cfg.stream: _window_source(manifest, parent, cfg.stream),
                   "sampling": sampling}
        child = refit_rvq(parent, x, seed=cfg.seed, n_iter=cfg.n_iter, align=cfg.align,
                          warm_start=cfg.warm_start, sources=sources)
    return child, {**info, "n_sample": int(len(keys))}


def _dataset_drift(work: str, n_shards: int) -> tuple[list[dict], dict]:
    """(column shard entries in shard order, dataset drift) from pass 2's col-IIIII.json files;
    the counts are integers, so their sum does not depend on the order."""
    entries, tot = [], None
    for i in range(n_shards):
        rec = json.loads(read_bytes(join(work, f"col-{i:05d}.json")))
        entries.append(rec["shard"])
        c = {k: (np.asarray(v, np.int64) if isinstance(v, list) else v) for k, v in rec["counts"].items()}
        tot = c if tot is None else {k: tot[k] + c[k] for k in tot}
    total = int(tot["n_tokens"])
    return entries, {"n_records": int(tot["n_records"]), "n_tokens": total, "tokens_changed": int(tot["tokens_changed"]),
                     "changed_share": tot["tokens_changed"] / total if total else 0.0,
                     "records_changed": int(tot["records_changed"]),
                     "usage_before": tot["usage_before"].tolist(), "usage_after": tot["usage_after"].tolist()}


# ---------------------------------------------------------------- the rebuild

def _version_manifest(cfg: RebuildConfig, parent_m: dict, parent_bytes: bytes, child, overrides: dict,
                      drift_summary: dict) -> dict:
    rel = _relpath(cfg.dataset, cfg.output)
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




def _own_options() -> list[str]:
    p = argparse.ArgumentParser(add_help=False)
    add_rebuild_args(p)
    return [o for a in p._actions for o in a.option_strings]  # noqa: SLF001


def run_rebuild(cfg: RebuildConfig, beam_args: list[str] | tuple = ()) -> dict:
    """Write the version (module docstring): pass 1, refit, pass 2 as Beam jobs on the runner
    `beam_args` choose (default: the embedded one). Returns {"manifest", "drift", "text",
    "timing", "paths", "bytes", "resumed"}."""
    from tokenmill.pipelines.journal import remove_work
    from tokenmill.pipelines.rebuild_beam import build_pass1, build_pass2, read_pass1
    from tokenmill.pipelines.runner import check_beam_args, make_pipeline

    check_beam_args(list(beam_args), _own_options())
    t0 = time.perf_counter()
    parent_m, parent_bytes = _read_parent(cfg)
    _check_output(cfg)
    parent = _load_parent_codebook(cfg, parent_m)
    scfg = acfg = None
    extra: dict = {}
    if cfg.stream == "semantic":
        scfg, acfg, extra["extractor"] = _semantic_setup(parent_m, parent)
    else:
        _window_source(parent_m, parent, cfg.stream)
    uris = _input_uris(cfg.inputs) if cfg.inputs else None
    out = cfg.output.rstrip("/")
    work = _open_work(cfg, parent_bytes)
    resumed = []
    pass1 = join(work, PASS1_NAME)
    common = {"root": cfg.dataset.rstrip("/"), "manifest": parent_m, "stream": cfg.stream, "scfg": scfg, "acfg": acfg}
    if _exists(pass1):
        resumed.append("pass 1")
    else:
        done = [m for m in _listing(work) if m.rsplit("/", 1)[-1].startswith("p1-")]
        if done:
            resumed.append(f"pass 1 of {len(done)} sources")
        with make_pipeline(list(beam_args)) as p:
            build_pass1(p, cfg=cfg, probe_seed=PROBE_SEED, out_path=pass1, work=work, input_uris=uris, **common)
    sample, (_, _, probe), extra["skipped"] = read_pass1(pass1)
    extra["n_files"] = len(uris or ())
    t_pass1 = time.perf_counter()
    child, sample_info = _refit(cfg, parent_m, parent, sample, extra)
    _save_codebook(child, join(out, "codebooks"))
    t_refit = time.perf_counter()
    n_shards = len(parent_m["shards"])
    todo = frozenset(i for i in range(n_shards) if not _exists(join(work, f"col-{i:05d}.json")))
    if len(todo) < n_shards:
        resumed.append(f"{n_shards - len(todo)} of {n_shards} column shards")
    if todo:
        with make_pipeline(list(beam_args)) as p:
            build_pass2(p, child=child, codebooks_dir=join(out, "codebooks"), out=out, work=work, todo=todo, **common)
    if resumed:
        LOG.info("[rebuild] resumed %s: %s finished before", cfg.output, ", ".join(resumed))
    col_entries, dataset_drift = _dataset_drift(work, n_shards)
    drift = drift_report(parent, child, probe)
    drift["dataset"] = dataset_drift
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
        local = os.path.join(tempfile.mkdtemp(prefix="tokenmill-rebuild-"), PLOT_NAME)
        plot_codebook_usage_before_after(np.asarray(drift["dataset"]["usage_before"]),
                                         np.asarray(drift["dataset"]["usage_after"]), local)
        with open(local, "rb") as f:
            atomic_write(paths["plot"], f.read())
    col_shards = [{**e, "base": s["path"]} for e, s in zip(col_entries, parent_m["shards"])]
    fields = versions.OVERRIDE_FIELDS[cfg.stream]
    overrides = {"stream": cfg.stream, "fields": list(fields), "format": "parquet", "shards": col_shards}
    summary = {"probe_changed_share": drift.get("changed_share", drift.get("changed_share_all")),
               "dataset_changed_share": drift["dataset"]["changed_share"],
               "records_changed": drift["dataset"]["records_changed"], "n_probe": drift["n_probe"]}
    manifest = _version_manifest(cfg, parent_m, parent_bytes, child, overrides, summary)
    atomic_write(f"{out}/{MANIFEST_NAME}", dumps(manifest))       # last: the version is complete
    remove_work(work)
    t_end = time.perf_counter()
    new_bytes = sum(s["bytes"] for s in col_shards)
    total = new_bytes + sum(s["bytes"] for s in parent_m["shards"])
    return {"manifest": manifest, "drift": drift, "text": text, "paths": paths, "resumed": resumed,
            "timing": {"pass1_s": t_pass1 - t0, "refit_s": t_refit - t_pass1, "total_s": t_end - t0},
            "bytes": {"column_shards": new_bytes, "dataset_total": total}}


def print_rebuild_summary(res: dict) -> None:
    m = res["manifest"]
    lin = m["lineage"]
    if res.get("resumed"):
        print(f"rebuild: resumed an interrupted run: {', '.join(res['resumed'])} finished before, not redone")
    print(res["text"])
    print(f"rebuild {lin['stream']}: {lin['parent_codebook']} -> {lin['codebook']}; wrote "
          f"{len(next(o for o in m['overrides'] if o['stream'] == lin['stream'])['shards'])} column shards ({res['bytes']['column_shards']} bytes of "
          f"{res['bytes']['dataset_total']} in the version), {res['timing']['total_s']:.1f} s")
    for k, p in sorted(res["paths"].items()):
        print(f"  {k:8s} {p}")
    print("  verify   beam_runner.py verify " + os.path.dirname(res["paths"]["drift"]))

