"""`manifest.json`: the versioned description of a dataset directory, and its validator.

The manifest holds no wall-clock time, host name or absolute path, so a re-run of the same job on
the same inputs writes the same bytes. Counts must reconcile: every input file is accounted for
either by a record (its `uri`) or by a dead letter. Validation is structural (this module); the
byte-level checks against the files live in `schemas/verify.py`.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from tokenmill.errors import TokenmillError
from tokenmill.schemas.records import SCHEMA_VERSION, json_dumps_stable
from tokenmill.schemas.versions import validate_version

MANIFEST_VERSION = "1.0"
SHARD_FORMATS = ("parquet", "webdataset")


class ManifestError(TokenmillError, ValueError):
    """manifest.json is missing a field, has a wrong type, or its counts do not reconcile."""


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the dataset root, '/'-separated
    format: str  # "parquet" | "webdataset"
    split: str
    records: int
    seconds: float  # audio seconds covered by the shard's records
    bytes: int
    sha256: str
    captioned: int = 0  # records with a caption


@dataclass(frozen=True)
class DeadLetterFileInfo:
    path: str
    records: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Counts:
    inputs: int  # files matched by --input
    sources_in_records: int  # distinct input uris with at least one record
    sources_dead_only: int  # distinct input uris with dead letters and no record
    dead_letters: int  # dead-letter lines (a source may have several: one per failed segment)
    records: int  # per format: every format holds every record
    seconds: float  # audio seconds in records
    inputs_digest: str  # order-free digest of the input uris, see uri_digest()
    dead_by_stage: dict = field(default_factory=dict)
    dead_by_reason: dict = field(default_factory=dict)


def uri_digest(uris: Iterable[str]) -> str:
    """Order-independent digest of a *set* of uris: sum of per-uri sha256 values mod 2^256.

    Combinable across workers (a Beam CombineFn adds partial sums), so the launcher never needs the
    whole input list in one place; `verify` recomputes it from record and dead-letter uris.
    """
    total = 0
    for u in set(uris):
        total = (total + int.from_bytes(hashlib.sha256(u.encode()).digest(), "big")) % 2**256
    return f"{total:064x}"


def digest_add(a: str, b: str) -> str:
    return f"{(int(a, 16) + int(b, 16)) % 2**256:064x}"


def build_manifest(
    *,
    job: dict[str, Any],
    tokenizers: dict[str, Any],
    codebooks: dict[str, str],
    streams: dict[str, Any],
    shards: list[ShardInfo],
    dead_letter_files: list[DeadLetterFileInfo],
    counts: Counts,
    tokenmill_version: str,
    history: list[dict[str, Any]] | None = None,
    compute: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`history`: one entry per run that wrote this dataset (`tokenize --into` adds them; a
    dataset written by one run has none). `compute`: the compute layout and kernels the models
    ran under (threads, kernels, isa; tokenizers/compute.describe), absent in older manifests."""
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "schema_version": SCHEMA_VERSION,
        "tokenmill_version": tokenmill_version,
        "job": job,
        "tokenizers": tokenizers,
        "codebooks": codebooks,
        "streams": streams,
        "shards": [asdict(s) for s in sorted(shards, key=lambda s: s.path)],
        "dead_letter_files": [asdict(d) for d in sorted(dead_letter_files, key=lambda d: d.path)],
        "counts": asdict(counts),
    }
    if history is not None:
        manifest["history"] = history
    if compute is not None:
        manifest["compute"] = compute
    problems = validate_manifest(manifest)
    if problems:
        raise ManifestError("refusing to write an invalid manifest: " + "; ".join(problems))
    return manifest


def dumps(manifest: dict[str, Any]) -> bytes:
    return json_dumps_stable(manifest)


_REQUIRED = {
    "manifest_version": str, "schema_version": str, "tokenmill_version": str, "job": dict,
    "tokenizers": dict, "codebooks": dict, "streams": dict, "shards": list,
    "dead_letter_files": list, "counts": dict,
}
_SHARD_FIELDS = {"path": str, "format": str, "split": str, "records": int, "seconds": (int, float),
                 "bytes": int, "sha256": str, "captioned": int}
_COUNT_FIELDS = {"inputs": int, "sources_in_records": int, "sources_dead_only": int,
                 "dead_letters": int, "records": int, "seconds": (int, float), "inputs_digest": str}


def validate_manifest(m: Any) -> list[str]:
    """Return a list of problems (empty when valid). Structural and arithmetic checks only."""
    if not isinstance(m, dict):
        return ["manifest is not a JSON object"]
    problems = []
    for k, t in _REQUIRED.items():
        if k not in m:
            problems.append(f"missing field '{k}'")
        elif not isinstance(m[k], t):
            problems.append(f"field '{k}' must be {t.__name__}")
    if problems:
        return problems
    if m["manifest_version"].split(".")[0] != MANIFEST_VERSION.split(".")[0]:
        problems.append(f"manifest_version {m['manifest_version']} is not readable by this tokenmill "
                        f"(reads {MANIFEST_VERSION}); upgrade tokenmill")
    if m["schema_version"].split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        problems.append(f"schema_version {m['schema_version']} differs from {SCHEMA_VERSION}")
    for i, s in enumerate(m["shards"]):
        for k, t in _SHARD_FIELDS.items():
            if not isinstance(s, dict) or not isinstance(s.get(k), t):
                problems.append(f"shards[{i}].{k} missing or wrong type")
        if isinstance(s, dict) and s.get("format") not in SHARD_FORMATS:
            problems.append(f"shards[{i}].format must be one of {SHARD_FORMATS}")
    c = m["counts"]
    for k, t in _COUNT_FIELDS.items():
        if not isinstance(c.get(k), t):
            problems.append(f"counts.{k} missing or wrong type")
    if problems:
        return problems
    if c["inputs"] != c["sources_in_records"] + c["sources_dead_only"]:
        problems.append(
            f"counts do not reconcile: inputs={c['inputs']} != sources_in_records="
            f"{c['sources_in_records']} + sources_dead_only={c['sources_dead_only']}")
    for fmt in {s["format"] for s in m["shards"]}:
        n = sum(s["records"] for s in m["shards"] if s["format"] == fmt)
        if n != c["records"]:
            problems.append(f"{fmt} shards hold {n} records but counts.records={c['records']}")
    n_dead = sum(d["records"] for d in m["dead_letter_files"])
    if n_dead != c["dead_letters"]:
        problems.append(f"dead-letter files hold {n_dead} lines but counts.dead_letters={c['dead_letters']}")
    problems += _validate_compute(m)
    problems += _validate_history(m)
    problems += validate_version(m)  # rebuild versions (schemas/versions.py)
    return problems


def _validate_compute(m: dict[str, Any]) -> list[str]:
    """Optional `compute`: {"threads": int >= 0, "kernels": str, "isa": {...}, ...}."""
    if "compute" not in m:
        return []
    c = m["compute"]
    if not isinstance(c, dict) or not isinstance(c.get("isa"), dict) or not isinstance(c.get("kernels"), str) \
            or isinstance(c.get("threads"), bool) or not isinstance(c.get("threads"), int) or c["threads"] < 0:
        return ["field 'compute' must hold threads (int >= 0), kernels (str) and isa (object)"]
    return []


def _validate_history(m: dict[str, Any]) -> list[str]:
    """Optional `history` (datasets grown with `tokenize --into`): versions 0, 1, 2, ... in order,
    and the shards they wrote are exactly the manifest's shards."""
    if "history" not in m:
        return []
    h = m["history"]
    if not isinstance(h, list) or not all(isinstance(e, dict) for e in h):
        return ["field 'history' must be a list of objects"]
    problems = []
    versions = [e.get("version") for e in h]
    if versions != list(range(len(h))):
        problems.append(f"history versions must be 0, 1, 2, ... in order, got {versions}")
    written = [p for e in h for p in (e.get("shards") or [])]
    listed = sorted(s["path"] for s in m["shards"])
    if sorted(written) != listed:
        problems.append(f"history lists shards {sorted(set(written) ^ set(listed))[:5]} that differ "
                        "from the manifest's shards (or lists one twice)")
    return problems
