"""Dataset versions that rewrite one stream and reuse every other byte by reference.

docs/design.md §3: one record per track segment, stream fields aligned by key, so one field can be
rewritten without touching the others (lhotse Shar's lesson). A *version* directory written by
`beam_runner.py rebuild` holds:

    NEW_DIR/manifest.json                      the ordinary manifest fields, plus `overrides` and `lineage`
    NEW_DIR/streams/<stream>/part-IIIII.parquet  column shards: `key` + the rewritten field(s)
    NEW_DIR/codebooks/<kind>-<sha12>.*          the refitted codebook
    NEW_DIR/drift.json, rebuild_config.json     the drift report and the frozen rebuild config

- `shards` lists the parent's shard files *by reference*: each path is relative to NEW_DIR
  (`../parent/parquet/train-00000-of-00004.parquet`) and keeps the parent's bytes, sha256 and
  record counts. `dead_letter_files` likewise. Nothing is copied; `verify` hashes the originals.
- `overrides` is a list, one entry per rewritten stream: {"stream", "fields", "format": "parquet",
  "shards": [{"path", "base", "records", "bytes", "sha256"}]}. Each column shard overrides exactly
  one base shard (`base` = a path listed in `shards`): it holds that shard's keys in the same
  (sorted) order, so merging is positional and checked key by key.
- `lineage`: {"parent": {"path", "manifest_sha256"}, "stream", "parent_codebook", "codebook",
  "drift": summary, "config": the rebuild config}.

A version of a version re-bases its parent's references (paths normalized, so they point at the
original files) and keeps the parent's overrides of other streams. Pure code: no Beam, no torch.
"""
from __future__ import annotations

import hashlib
import io
import os
import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenmill.errors import TokenmillError
from tokenmill.schemas.records import ARROW_SCHEMA, TrackRecord, read_parquet_table

STREAMS_DIR = "streams"
# stream -> the record fields its rebuild rewrites (the MuLan / melody windows stay: they are the input)
OVERRIDE_FIELDS: dict[str, tuple[str, ...]] = {"semantic": ("semantic",), "mulan": ("mulan",),
                                                "melody": ("melody",)}
_OVERRIDE_SHARD = {"path": str, "base": str, "records": int, "bytes": int, "sha256": str}


class VersionError(TokenmillError, ValueError):
    """A column shard does not align with the base shard it overrides."""


def column_shard_name(stream: str, index: int) -> str:
    return f"{STREAMS_DIR}/{stream}/part-{index:05d}.parquet"


def column_schema(fields: tuple[str, ...]) -> pa.Schema:
    """`key` + the overridden fields, with the record schema's types (one definition)."""
    return pa.schema([ARROW_SCHEMA.field("key")] + [ARROW_SCHEMA.field(f) for f in fields])


def encode_column_shard(keys: list[str], columns: dict[str, list]) -> bytes:
    """Parquet (zstd) of `key` + the fields in `columns` (arrays, one per key), in the given order
    (the base shard's order)."""
    fields = tuple(columns)
    rows = [{"key": k, **{f: np.asarray(columns[f][i]).tolist() for f in fields}} for i, k in enumerate(keys)]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=column_schema(fields)), buf, compression="zstd",
                   use_dictionary=True, write_statistics=True)
    return buf.getvalue()


def decode_column_shard(source, fields: tuple[str, ...]) -> tuple[list[str], dict[str, list]]:
    """(keys, {field: values}) of a column shard; refuses another schema."""
    try:
        table = read_parquet_table(source)
    except FileNotFoundError:
        raise
    except (pa.ArrowInvalid, OSError) as e:
        raise VersionError(f"not a readable Parquet column shard: {e}") from e
    want = column_schema(fields)
    if not table.schema.equals(want, check_metadata=False):
        raise VersionError(f"column shard schema differs from {want} (got {table.schema})")
    return table.column("key").to_pylist(), {f: table.column(f).to_pylist() for f in fields}


def merge_columns(base: list[TrackRecord], keys: list[str], columns: dict[str, list],
                  where: str) -> list[TrackRecord]:
    """Base records with the fields in `columns` replaced; keys must align position by position."""
    if keys != [r.key for r in base]:
        n_bad = sum(a != b for a, b in zip(keys, (r.key for r in base))) + abs(len(keys) - len(base))
        raise VersionError(f"{where}: keys do not align with the base shard ({len(keys)} vs {len(base)} records, "
                           f"{n_bad} positions differ); the column shard belongs to another base shard "
                           "or a base shard was rewritten: re-run beam_runner.py rebuild")
    out = []
    for i, r in enumerate(base):
        row = r.to_row()
        for f, vals in columns.items():
            row[f] = vals[i]
        out.append(TrackRecord.from_row(row))
    return out


def overrides_for(manifest: dict, base_path: str) -> list[dict]:
    """[{"fields", "shard": {...}}] of the column shards that override the base shard `base_path`."""
    out = []
    for ov in manifest.get("overrides") or []:
        for s in ov["shards"]:
            if s["base"] == base_path:
                out.append({"stream": ov["stream"], "fields": tuple(ov["fields"]), "shard": s})
    return out


def rebase(path: str, parent_rel: str) -> str:
    """A path relative to the parent dir → relative to the new dir (normalized, '/'-separated)."""
    if "://" in path:
        return path
    return posixpath.normpath(posixpath.join(parent_rel, path))


def validate_version(m: dict[str, Any]) -> list[str]:
    """Structural checks of `overrides` / `lineage` (absent on a dataset written by tokenize)."""
    if "overrides" not in m and "lineage" not in m:
        return []
    if not isinstance(m.get("overrides"), list) or not isinstance(m.get("lineage"), dict):
        return ["a dataset version needs both 'overrides' (a list) and 'lineage' (an object)"]
    problems = []
    lin = m["lineage"]
    for k in ("parent", "stream", "parent_codebook", "codebook"):
        if k not in lin:
            problems.append(f"lineage.{k} missing")
    parent = lin.get("parent")
    if not isinstance(parent, dict) or not all(isinstance(parent.get(k), str) for k in ("path", "manifest_sha256")):
        problems.append("lineage.parent must be {'path': str, 'manifest_sha256': str}")
    base_paths = {s.get("path"): s for s in m.get("shards", []) if isinstance(s, dict)}
    streams_seen = set()
    for i, ov in enumerate(m["overrides"]):
        if not isinstance(ov, dict) or ov.get("stream") not in OVERRIDE_FIELDS:
            problems.append(f"overrides[{i}].stream must be one of {sorted(OVERRIDE_FIELDS)}")
            continue
        if ov["stream"] in streams_seen:
            problems.append(f"overrides[{i}]: stream {ov['stream']} is overridden twice")
        streams_seen.add(ov["stream"])
        if list(ov.get("fields") or []) != list(OVERRIDE_FIELDS[ov["stream"]]) or ov.get("format") != "parquet":
            problems.append(f"overrides[{i}] must have fields {list(OVERRIDE_FIELDS[ov['stream']])} and "
                            "format 'parquet'")
        if not isinstance(ov.get("shards"), list):
            problems.append(f"overrides[{i}].shards must be a list")
            continue
        covered = set()
        for j, s in enumerate(ov["shards"]):
            for k, t in _OVERRIDE_SHARD.items():
                if not isinstance(s, dict) or not isinstance(s.get(k), t):
                    problems.append(f"overrides[{i}].shards[{j}].{k} missing or wrong type")
            if not isinstance(s, dict) or not isinstance(s.get("base"), str):
                continue
            b = base_paths.get(s["base"])
            if b is None:
                problems.append(f"overrides[{i}].shards[{j}].base {s['base']} is not a listed shard")
            elif b.get("records") != s.get("records"):
                problems.append(f"overrides[{i}].shards[{j}] holds {s.get('records')} records but its base "
                                f"{s['base']} holds {b.get('records')}")
            if s["base"] in covered:
                problems.append(f"overrides[{i}]: base {s['base']} is overridden twice")
            covered.add(s["base"])
        missing = sorted(set(base_paths) - covered)
        if missing:
            problems.append(f"overrides[{i}] ({ov['stream']}) leaves base shards without a column shard: "
                            f"{missing[:3]}")
    return problems


def verify_overrides(root: str, manifest: dict, base: dict,
                     recs: list[TrackRecord]) -> tuple[list[TrackRecord], list[str]]:
    """For `verify`: check each column shard overriding the base shard `base` (bytes, sha256,
    schema, record count, keys aligned with `recs`) and return the merged records + problems."""
    problems = []
    for ov in overrides_for(manifest, base["path"]):
        s = ov["shard"]
        path = os.path.join(root, s["path"])
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            problems.append(f"{path}: column shard ({ov['stream']}) listed in the manifest but missing; "
                            "re-run beam_runner.py rebuild")
            continue
        if len(data) != s["bytes"]:
            problems.append(f"{path}: {len(data)} bytes, manifest says {s['bytes']}")
        if hashlib.sha256(data).hexdigest() != s["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest (corrupt or rewritten column "
                            "shard); re-run beam_runner.py rebuild")
            continue
        try:
            keys, cols = decode_column_shard(io.BytesIO(data), ov["fields"])
            if len(keys) != s["records"]:
                problems.append(f"{path}: {len(keys)} records, manifest says {s['records']}")
            recs = merge_columns(recs, keys, cols, path)
        except (VersionError, ValueError) as e:
            problems.append(f"{path}: {e}")
    return recs, problems
