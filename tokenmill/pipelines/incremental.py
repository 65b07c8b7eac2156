"""`tokenize --into DIR [--retry_failures]`: grow an existing dataset without rewriting it.

Presence is decided in two steps:
- **by uri, before reading**: a matched file whose uri is already in the dataset, as the uri of a
  record or of a dead letter, is skipped (never read or decoded) and counted as skipped. The uris
  come from the `uri` column of the dataset's shards (Parquet column projection; WebDataset-only
  datasets read each sample's JSON) and from its dead-letter files.
- **by content key, after decoding**: the content hash is what deduplicates, so a new uri whose
  decoded audio is already a record (under another uri) becomes a 'duplicate' dead letter naming
  the uri that is kept, before any model runs. The dataset's copy always wins, even when the new
  uri sorts first (a full run over old + new would keep the smaller uri instead).

New shards get a version suffix (sinks.versioned), and only the shards that receive records are
written; existing shard files are never rewritten. The dead letters of the new version are the
old ones minus those retried plus the new ones, written as one new failures file when they
changed (the earlier file stays on disk as history but is no longer listed). manifest.json is
replaced atomically (temp + rename) last, so a crash leaves the previous version intact: the
versioned files written before it are unlisted and a re-run rewrites them with the same bytes.
The manifest's `history` has one entry per run (version 0 is the run that created the dataset),
with its inputs, the number of inputs skipped as already present, retried sources, and the shards
and failures file it wrote. A run that changes nothing leaves every file untouched.
"""
from __future__ import annotations

import glob
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from tokenmill.errors import UsageError
from tokenmill.pipelines.ingest import DEAD, DuplicateContent, SegmentInput, dead_letter
from tokenmill.pipelines.sinks import atomic_write, write_dead_letters
from tokenmill.schemas import manifest as mf
from tokenmill.schemas import shards as fmt
from tokenmill.schemas.records import MANIFEST_NAME, source_hash_of
from tokenmill.tokenizers import compute

LOG = logging.getLogger("tokenmill")
LAYOUT = ("num_shards", "num_valid_shards", "valid_fraction", "formats")
# where a model lives or runs, not what it computes ("device": manifests of SSL extractors written
# before describe() dropped it hold "device": "cpu")
IGNORED_DESC_KEYS = {"path", "codebook_card", "batch_size", "device"}


def _read(path: str) -> bytes:
    with FileSystems.open(path) as f:
        return f.read()


@dataclass(frozen=True)
class Base:
    """What an existing dataset holds, read once by the launcher."""

    root: str
    manifest: dict
    key_uri: dict  # record key -> uri
    letters: tuple  # DeadLetter, from every listed failures file

    @property
    def version(self) -> int:
        """The version number the next run writes."""
        return len(self.manifest.get("history") or [None])

    @property
    def record_uris(self) -> frozenset[str]:
        return frozenset(self.key_uri.values())

    @property
    def dead_uris(self) -> frozenset[str]:
        return frozenset(d.uri for d in self.letters)

    @property
    def layout(self) -> dict:
        return {k: self.manifest["job"][k] for k in LAYOUT}

    def where(self) -> str:
        return f"{self.root}/{MANIFEST_NAME}"


def load_base(root: str) -> Base:
    """Read DIR/manifest.json, the key and uri of every record and every dead letter."""
    root = root.rstrip("/")
    path = f"{root}/{MANIFEST_NAME}"
    if not FileSystems.exists(path):
        raise UsageError(f"--into {root}: {path} not found; --into adds to a dataset written by "
                         "tokenize (use --output DIR to create one)")
    try:
        manifest = json.loads(_read(path))
    except json.JSONDecodeError as e:
        raise UsageError(f"--into {root}: {path} is not valid JSON ({e})") from e
    problems = mf.validate_manifest(manifest)
    missing = [k for k in LAYOUT if k not in manifest.get("job", {})] if not problems else []
    if problems or missing:
        raise UsageError(f"--into {root}: {path} is not a tokenize manifest this version can extend: "
                         + "; ".join(problems or [f"job lacks {missing}"]) + f"; run `verify {root}`")
    fmt_name = "parquet" if any(s["format"] == "parquet" for s in manifest["shards"]) else "webdataset"
    key_uri: dict[str, str] = {}
    for s in manifest["shards"]:
        if s["format"] != fmt_name:
            continue
        pairs = _key_uris(f"{root}/{s['path']}", fmt_name)
        if len(pairs) != s["records"]:
            raise UsageError(f"--into {root}: {s['path']} holds {len(pairs)} records, the manifest says "
                             f"{s['records']}; run `verify {root}`")
        key_uri.update(pairs)
    letters = []
    for d in manifest["dead_letter_files"]:
        letters += fmt.decode_dead_letters(_read(f"{root}/{d['path']}"))
    return Base(root=root, manifest=manifest, key_uri=key_uri, letters=tuple(letters))


def _key_uris(path: str, fmt_name: str) -> list[tuple[str, str]]:
    if not FileSystems.exists(path):
        raise UsageError(f"{path}: listed in the manifest but missing; run `verify` on the dataset")
    if fmt_name == "parquet":
        with FileSystems.open(path) as f:
            t = fmt.read_parquet_table(io.BytesIO(f.read()), columns=["key", "uri"])
        return list(zip(t.column("key").to_pylist(), t.column("uri").to_pylist()))
    with FileSystems.open(path) as f:
        return [(key, json.loads(m["json"])["uri"]) for key, m in fmt.iter_wds_samples(f)]


# ---- compatibility -----------------------------------------------------------------------------

def _strip(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in sorted(x.items()) if k not in IGNORED_DESC_KEYS}
    if isinstance(x, (list, tuple)):
        return [_strip(v) for v in x]
    return x


def _first_difference(a: Any, b: Any, where: str) -> tuple[str, Any, Any] | None:
    """The first field where the dataset's `a` and this run's `b` differ. A field the dataset's
    manifest lacks (written by an older tokenmill that did not record it) is not a conflict."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(a):
            d = _first_difference(a.get(k), b.get(k), f"{where}.{k}")
            if d:
                return d
        return None
    return None if a == b else (where, a, b)


def check_compatible(base: Base, *, tokenizers: dict, codebooks: dict, streams: dict, audio: dict) -> None:
    """Refuse (naming both values) a run whose tokens would not mean what the dataset's mean."""
    m, where = base.manifest, base.where()
    for what, have, want in (("streams", m["streams"], streams), ("tokenizers", m["tokenizers"], tokenizers)):
        if set(have) != set(want):
            raise UsageError(
                f"--into {base.root}: this run has the streams {sorted(want)} but the dataset has "
                f"{sorted(have)} ({where} '{what}'); records of one dataset hold the same streams. Set "
                "--acoustic_codec / --mulan_model / --melody_model as the dataset was written, or write a new dataset with --output")
    for stream in sorted(set(m["codebooks"]) | set(codebooks)):
        have, want = m["codebooks"].get(stream), codebooks.get(stream)
        if have != want:
            raise UsageError(
                f"--into {base.root}: this run's {stream} codebook is {want} but the dataset's is {have} "
                f"({where}); tokens from different codebooks cannot share a dataset. Tokenize with the "
                f"dataset's codebook (and model), or write a new dataset with --output")
    new = _strip(json.loads(json.dumps({"tokenizers": tokenizers, "streams": streams, "audio": audio})))
    old = _strip({"tokenizers": m["tokenizers"], "streams": m["streams"], "audio": m["job"].get("audio")})
    diff = _first_difference(old, new, "")
    if diff:
        field, have, want = diff
        raise UsageError(f"--into {base.root}: {field.lstrip('.')} is {json.dumps(want)} in this run but "
                         f"{json.dumps(have)} in the dataset ({where}); records of one dataset must come "
                         "from the same models and audio front end. Use the dataset's settings, or write "
                         "a new dataset with --output")


# ---- the plan ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What one `--into` run does: skip `skip`, re-attempt `retry` (old dead-letter uris whose
    file exists); `retry_missing` keep their old dead letters."""

    base: Base
    retry: frozenset
    retry_missing: frozenset
    retry_failures: bool = False

    @property
    def version(self) -> int:
        return self.base.version

    @property
    def mode(self) -> str:
        return "retry-failures" if self.retry_failures else "add"

    @property
    def skip(self) -> frozenset:
        return (self.base.record_uris | self.base.dead_uris) - self.retry

    def retry_patterns(self) -> tuple[str, ...]:
        """Each retried uri as a pattern that matches exactly that file."""
        return tuple(glob.escape(u) for u in sorted(self.retry))


def make_plan(base: Base, retry_failures: bool) -> Plan:
    retry, missing = set(), set()
    if retry_failures:
        for uri in sorted(base.dead_uris):
            (retry if FileSystems.exists(uri) else missing).add(uri)
        for uri in sorted(missing):
            LOG.warning("--retry_failures: %s no longer exists; its dead letter is kept", uri)
    return Plan(base=base, retry=frozenset(retry), retry_missing=frozenset(missing),
                retry_failures=retry_failures)


def new_inputs(plan: Plan, patterns: tuple[str, ...]) -> tuple[list[str], int]:
    """(uris the run would read, uris skipped as present), from a launcher-side match."""
    matched = {m.path for r in FileSystems.match(list(patterns)) for m in r.metadata_list}
    todo = sorted((matched - plan.skip) | plan.retry)
    return todo, len(matched & plan.skip)


# ---- pipeline pieces ---------------------------------------------------------------------------

class KnownContent(beam.DoFn):
    """Decoded segments against the dataset's keys. A segment whose key is already a record of
    the same uri (a retried, partly recorded source) is dropped and its uri reported on 'present';
    a source whose content hash is a record under another uri becomes one 'duplicate' dead letter
    (from its segment 0) naming the uri kept; anything else passes."""

    def __init__(self, key_uri: dict):
        self.key_uri = key_uri
        self.source_uri = {}
        for key, uri in sorted(key_uri.items()):
            self.source_uri.setdefault(source_hash_of(key), uri)
        self.n_dup = beam.metrics.Metrics.counter("tokenmill", "duplicates_of_dataset")

    def process(self, seg: SegmentInput):
        if self.key_uri.get(seg.key) == seg.uri:
            yield beam.pvalue.TaggedOutput("present", seg.uri)
            return
        kept = self.source_uri.get(seg.source_hash)
        if kept is not None and kept != seg.uri:
            if seg.segment == 0:
                self.n_dup.inc()
                exc = DuplicateContent(f"{seg.uri} decodes to the same audio as {kept}, already in the "
                                       f"dataset (content hash {seg.source_hash}); only {kept} is kept")
                yield beam.pvalue.TaggedOutput(DEAD, dead_letter(seg.uri, "dedupe", exc))
            return
        yield seg


def _letters_bytes(letters) -> bytes:
    return fmt.encode_dead_letters(letters)


class WriteIncrementalManifest(beam.DoFn):
    """The new version's failures file (when the dead letters changed) and manifest.json, merged
    from the base dataset and this run. Yields the manifest written (or the base's, unchanged)."""

    def __init__(self, cfg, plan: Plan, tokenmill_version: str, compute_entry: dict | None = None):
        self.cfg, self.plan, self.tokenmill_version = cfg, plan, tokenmill_version
        self.compute_entry = compute_entry

    def process(self, _, shards, letters, inputs, status, skipped):
        plan, base, out = self.plan, self.plan.base, self.cfg.output.rstrip("/")
        n_inputs, inputs_digest = inputs
        run_uris = {u for u, _ in status}
        if len(run_uris) != n_inputs or mf.uri_digest(run_uris) != inputs_digest:
            raise RuntimeError(f"accounting failed: {n_inputs} inputs read but {len(run_uris)} uris with an "
                               "outcome, or the uri sets differ; please report this as a tokenmill bug")
        kept_old = [d for d in base.letters if d.uri not in plan.retry]
        merged = sorted(kept_old + list(letters), key=fmt.DeadLetter.sort_key)
        old_bytes = _letters_bytes(base.letters)
        letters_changed = _letters_bytes(merged) != old_bytes
        if not shards and not letters_changed:
            LOG.info("[into] %s: nothing changed (%d inputs read, %d skipped as present); the dataset is "
                     "left as it was", out, n_inputs, skipped)
            yield base.manifest
            return
        first = self.cfg.formats[0]
        new_first = [s for s in shards if s.format == first]
        rec_uris = set(base.record_uris) | {u for u, has in status if has}
        dead_uris = {d.uri for d in merged}
        old_uris = base.record_uris | base.dead_uris
        fresh = run_uris - old_uris
        c = base.manifest["counts"]
        inputs_total = c["inputs"] + len(fresh)
        digest = mf.digest_add(c["inputs_digest"], mf.uri_digest(fresh))
        all_uris = rec_uris | dead_uris
        if len(all_uris) != inputs_total or mf.uri_digest(all_uris) != digest:
            raise RuntimeError(f"accounting failed merging into {out}: {inputs_total} inputs but {len(all_uris)} "
                               "uris in records and dead letters; please report this as a tokenmill bug")
        if letters_changed:
            dead_info = write_dead_letters(merged, out, plan.version)
            dead_files = [dead_info]
        else:
            dead_files = [mf.DeadLetterFileInfo(**d) for d in base.manifest["dead_letter_files"]]
        by_stage, by_reason = {}, {}
        for d in merged:
            by_stage[d.stage] = by_stage.get(d.stage, 0) + 1
            by_reason[d.reason] = by_reason.get(d.reason, 0) + 1
        seconds_added = round(sum(s.seconds for s in new_first), 6)
        counts = mf.Counts(
            inputs=inputs_total, sources_in_records=len(rec_uris), sources_dead_only=len(dead_uris - rec_uris),
            dead_letters=len(merged), records=c["records"] + sum(s.records for s in new_first),
            seconds=round(c["seconds"] + seconds_added, 6), inputs_digest=digest,
            dead_by_stage=dict(sorted(by_stage.items())), dead_by_reason=dict(sorted(by_reason.items())))
        history = list(base.manifest.get("history") or [version_zero(base.manifest)])
        history.append({
            "version": plan.version, "mode": plan.mode, "inputs": list(self.cfg.inputs),
            "captions": self.cfg.captions, "tokenmill_version": self.tokenmill_version,
            "inputs_new": len(fresh), "skipped_present": skipped, "retried": len(plan.retry),
            "retry_missing": len(plan.retry_missing), "records_added": sum(s.records for s in new_first),
            "seconds_added": seconds_added, "dead_letters_added": len(letters),
            "dead_letters_replaced": len(base.letters) - len(kept_old),
            "shards": sorted(s.path for s in shards),
            "dead_letter_file": dead_files[0].path if dead_files else None})
        manifest_compute = None
        if self.compute_entry is not None:
            changed = compute_changes(base.manifest, self.compute_entry)
            history[-1]["compute"] = self.compute_entry
            if changed:
                history[-1]["compute_changed"] = changed
            manifest_compute = dict(self.compute_entry, runs_with_other_compute=sum(
                1 for h in history if h.get("compute_changed")))
        job = {k: v for k, v in self.cfg.to_json().items() if k != "output"}
        old_shards = [mf.ShardInfo(**s) for s in base.manifest["shards"]]
        manifest = mf.build_manifest(
            job=job, tokenizers=base.manifest["tokenizers"], codebooks=base.manifest["codebooks"],
            streams=base.manifest["streams"], shards=old_shards + list(shards), dead_letter_files=dead_files,
            counts=counts, tokenmill_version=self.tokenmill_version, history=history, compute=manifest_compute)
        atomic_write(f"{out}/{MANIFEST_NAME}", mf.dumps(manifest))
        LOG.info("[into] %s: version %d, %d records added, %d inputs skipped as present, %d retried",
                 out, plan.version, counts.records - c["records"], skipped, len(plan.retry))
        yield manifest


def version_zero(manifest: dict) -> dict:
    """The history entry of the run that created a dataset, from its manifest."""
    c, job = manifest["counts"], manifest["job"]
    first = manifest["shards"][0]["format"] if manifest["shards"] else None
    return {"version": 0, "mode": "full", "inputs": job.get("inputs"), "captions": job.get("captions"),
            "tokenmill_version": manifest["tokenmill_version"], "inputs_new": c["inputs"],
            "skipped_present": 0, "retried": 0, "retry_missing": 0,
            "records_added": sum(s["records"] for s in manifest["shards"] if s["format"] == first),
            "seconds_added": c["seconds"], "dead_letters_added": c["dead_letters"],
            "dead_letters_replaced": 0, "shards": sorted(s["path"] for s in manifest["shards"]),
            "dead_letter_file": manifest["dead_letter_files"][0]["path"] if manifest["dead_letter_files"] else None,
            **({"compute": manifest["compute"]} if "compute" in manifest else {})}


def compute_changes(base_manifest: dict, entry: dict) -> list[str]:
    """How this run's compute layout/kernels differ from the dataset's latest run (empty: same).
    `tokenize --into` records them in the new history entry and warns; nothing is refused, since
    tokens differ only where a vector sits at a float-rounding distance from a boundary."""
    last = (base_manifest.get("history") or [{}])[-1].get("compute") or base_manifest.get("compute")
    return compute.differences(last, entry)
