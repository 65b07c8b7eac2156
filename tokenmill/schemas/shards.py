"""Byte formats of shards and dead letters: the one encoder and decoder for each.

- Parquet: zstd, pyarrow's default dictionary encoding kept (≤ 1024 distinct token values land at
  the 10-bit floor). Rows sorted by key.
- WebDataset: a tar compressed as a whole (`.tar.xz`), members `KEY.json` + `KEY.<stream>.npy`,
  fixed mtime/uid/gid/mode, samples sorted by key. Compressing the whole tar instead of each member
  removes the 512-byte header and padding that dominate small token members; `webdataset` and
  `datasets` both open compressed tars (tarfile mode "r|*"). bench/bench_bytes.py measures it.
- Dead letters: JSON lines sorted by (uri, stage, key).

Pure functions over bytes / file objects; the atomic file writing lives in pipelines/sinks.py.
`read_dataset` opens a local dataset directory by its manifest (optionally refusing one tokenized
with other codebooks or another schema, see schemas/compat.py) and checks each shard's sha256
against the manifest before decoding it; `verify` checks everything else about the bytes.

Readers decode data, never code: arrays load with allow_pickle=False, pickled members (`.pyd`,
`.pickle`, `.pkl`) are refused, and tar members must be regular files with plain relative names
(no absolute path, no `..`, no links or devices), so a crafted shard cannot run code or point
outside itself.
"""
from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import tarfile
from dataclasses import asdict, dataclass
from typing import IO, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenmill.errors import TokenmillError
from tokenmill.schemas import versions
from tokenmill.schemas.compat import check_compatible
from tokenmill.schemas.manifest import ManifestError, validate_manifest
from tokenmill.schemas.records import (
    ARROW_SCHEMA, LATE_STREAMS, MANIFEST_NAME, STREAMS, TAR_MTIME, TrackRecord, json_dumps_stable,
    read_parquet_table, records_to_table, table_to_records, wds_member_names,
)

PARQUET_COMPRESSION = "zstd"
XZ_PRESET = 9 | lzma.PRESET_EXTREME
# The xz dictionary is capped at 1 MiB (preset 9 alone means 64 MiB): the encoder's memory is
# ~11x the dictionary and is touched as the input grows, measured +363 MB RSS for a 32 MB tar at
# preset 9, and still the largest allocation of a 600-file tokenize at 8 MiB (93 MB, tracemalloc).
# A shard's tokens match within a track (a 3-minute track is ~9 KB semantic, ~216 KB acoustic), so
# a 1 MiB window gives the same bytes on our shards (bench/bench_bytes.py) for ~12 MB of encoder.
XZ_DICT_BYTES = 1 << 20
# Parquet row groups close after this many bytes of token arrays (~500 ten-second segments with
# all four streams): the writer holds one row group, whatever the shard's size. Arrow's encoder
# needs ~7x the arrays while it closes a group (nested lists: int16 repetition and definition
# levels and int32 dictionary indices per uint16 value): measured 232 MB of Arrow memory at
# 32 MiB, 68 MB at 8 MiB, for files 1 % larger and reads as fast (tests/test_shards.py).
PARQUET_ROW_GROUP_BYTES = 8 << 20
XZ_FILTERS = ({"id": lzma.FILTER_LZMA2, "preset": XZ_PRESET, "dict_size": XZ_DICT_BYTES},)


class ShardFormatError(TokenmillError, ValueError):
    """A shard's bytes do not decode to valid records."""


class ChecksumError(ShardFormatError):
    """A shard's sha256 differs from the one its manifest lists."""


PICKLE_SUFFIXES = (".pyd", ".pickle", ".pkl")


def _check_member(info: tarfile.TarInfo) -> None:
    """Refuse members a WebDataset shard of ours never holds and a crafted one could abuse."""
    name = info.name
    if not info.isfile():
        kind = ("symlink" if info.issym() else "hard link" if info.islnk() else "fifo" if info.isfifo()
                else "device" if info.isdev() else "directory" if info.isdir() else f"type {info.type!r}")
        raise ShardFormatError(f"member {name!r} is a {kind}; shards hold regular files only")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or \
            ".." in name.replace("\\", "/").split("/"):
        raise ShardFormatError(f"member {name!r} has an absolute or parent-relative path; "
                               "shard members are plain KEY.<field> names")
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise ShardFormatError(f"member {name!r} is a pickle; tokenmill never reads pickles (they can run "
                               "code), and its shards hold only .json and .npy members")


# ---- Parquet ---------------------------------------------------------------------------------

class _KeyOrder:
    """Refuses a record whose key does not follow the previous one (shards are sorted by key)."""

    def __init__(self):
        self.last = None

    def check(self, rec: TrackRecord) -> None:
        if self.last is not None and rec.key <= self.last:
            raise ValueError(f"shard records must come sorted by key, without repeats: {rec.key} after {self.last}")
        self.last = rec.key


def _stream_bytes(rec: TrackRecord) -> int:
    return sum(a.nbytes for a in rec.streams().values())


class ParquetShardWriter:
    """A Parquet shard written to the binary file object `out` one record at a time (`add`, in key
    order; `close` finishes the file), one row group per `row_group_bytes` of arrays (default
    PARQUET_ROW_GROUP_BYTES): memory is bounded by a row group, not the shard. Same records →
    same bytes."""

    def __init__(self, out: IO[bytes], row_group_bytes: int | None = None):
        self.row_group_bytes = row_group_bytes or PARQUET_ROW_GROUP_BYTES
        self._writer = pq.ParquetWriter(out, ARROW_SCHEMA, compression=PARQUET_COMPRESSION,
                                        use_dictionary=True, write_statistics=True)
        self._order, self._group, self._size, self._groups = _KeyOrder(), [], 0, 0

    def add(self, rec: TrackRecord) -> None:
        self._order.check(rec)
        self._group.append(rec)
        self._size += _stream_bytes(rec)
        if self._size >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        self._writer.write_table(records_to_table(self._group), row_group_size=max(1, len(self._group)))
        self._group, self._size, self._groups = [], 0, self._groups + 1

    def close(self) -> None:
        if self._group or self._groups == 0:  # an empty shard still holds one (empty) row group
            self._flush()
        self._writer.close()


def _write_all(writer, records: Iterable[TrackRecord]) -> None:
    for rec in records:
        writer.add(rec)
    writer.close()


def write_parquet(records: Iterable[TrackRecord], out: IO[bytes],
                  row_group_bytes: int | None = None) -> None:
    """The Parquet shard of `records` (in key order) written to `out` (see ParquetShardWriter)."""
    _write_all(ParquetShardWriter(out, row_group_bytes), records)


def encode_parquet(records: list[TrackRecord]) -> bytes:
    """The Parquet shard of `records` (any order) as bytes (see write_parquet)."""
    buf = io.BytesIO()
    write_parquet(sorted(records, key=lambda r: r.key), buf)
    return buf.getvalue()


def _with_late_streams(table: pa.Table) -> pa.Table:
    """A shard written before the melody fields existed gets them as null columns (records.LATE_STREAMS)."""
    names = set(table.column_names)
    missing = [f for f in LATE_STREAMS if f not in names]
    if not missing or any(f not in names for f in ARROW_SCHEMA.names if f not in LATE_STREAMS):
        return table
    for f in missing:
        table = table.append_column(ARROW_SCHEMA.field(f), pa.nulls(table.num_rows, ARROW_SCHEMA.field(f).type))
    return table.select(ARROW_SCHEMA.names)


def decode_parquet(source: str | IO[bytes]) -> list[TrackRecord]:
    try:
        table = read_parquet_table(source)
    except (pa.ArrowInvalid, OSError) as e:
        raise ShardFormatError(f"not a readable Parquet file: {e}") from e
    table = _with_late_streams(table)
    if not table.schema.equals(ARROW_SCHEMA, check_metadata=False):
        raise ShardFormatError(f"schema differs from tokenmill's record schema:\n{table.schema}")
    return table_to_records(table)


# ---- WebDataset tar --------------------------------------------------------------------------

def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


class _XzWriter:
    """A write-only file object that xz-compresses what it is given into `out` as it goes, so
    neither the raw tar nor the compressed shard is ever held whole in memory."""

    def __init__(self, out: IO[bytes]):
        self.out = out
        self._c = lzma.LZMACompressor(format=lzma.FORMAT_XZ, filters=list(XZ_FILTERS))

    def write(self, data: bytes) -> int:
        self.out.write(self._c.compress(data))
        return len(data)

    def finish(self) -> None:
        self.out.write(self._c.flush())


def xz_compress(data: bytes) -> bytes:
    """`data` compressed exactly as a WebDataset shard's tar is (same filters)."""
    return lzma.compress(data, format=lzma.FORMAT_XZ, filters=list(XZ_FILTERS))


class WdsShardWriter:
    """The whole-shard xz-compressed tar written to `out` one record at a time (`add`, in key
    order; `close` finishes the file): deterministic bytes for the same records, memory bounded by
    one record + the xz window."""

    def __init__(self, out: IO[bytes]):
        self._xz = _XzWriter(out)
        self._tar = tarfile.open(fileobj=self._xz, mode="w|", format=tarfile.USTAR_FORMAT)
        self._order = _KeyOrder()

    def add(self, rec: TrackRecord) -> None:
        self._order.check(rec)
        streams = rec.streams()
        names = wds_member_names(rec.key, list(streams))
        _add_member(self._tar, names[0], json_dumps_stable(rec.meta()))
        for name, stream in zip(names[1:], streams):
            _add_member(self._tar, name, _npy_bytes(streams[stream]))

    def close(self) -> None:
        self._tar.close()
        self._xz.finish()


SHARD_WRITERS = {"parquet": ParquetShardWriter, "webdataset": WdsShardWriter}  # format -> writer class


def write_wds(records: Iterable[TrackRecord], out: IO[bytes]) -> None:
    """The WebDataset shard of `records` (in key order) written to `out` (see WdsShardWriter)."""
    _write_all(WdsShardWriter(out), records)


def encode_wds(records: list[TrackRecord]) -> bytes:
    """Whole-shard xz-compressed tar of `records` (any order) as bytes (see write_wds)."""
    buf = io.BytesIO()
    write_wds(sorted(records, key=lambda r: r.key), buf)
    return buf.getvalue()


def iter_wds_samples(fileobj: IO[bytes]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {suffix: bytes}) from any (compressed) WebDataset tar stream."""
    current, members = None, {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for info in tar:
                _check_member(info)
                key, _, suffix = info.name.partition(".")
                data = tar.extractfile(info).read()
                if current is not None and key != current:
                    yield current, members
                    members = {}
                current = key
                members[suffix] = data
    except (tarfile.TarError, lzma.LZMAError, EOFError) as e:
        raise ShardFormatError(f"not a readable WebDataset tar: {e}") from e
    if current is not None:
        yield current, members


def decode_wds(fileobj: IO[bytes]) -> list[TrackRecord]:
    out = []
    for key, members in iter_wds_samples(fileobj):
        if "json" not in members:
            raise ShardFormatError(f"sample {key} has no {key}.json member")
        unknown = set(members) - {"json"} - {f"{s}.npy" for s in STREAMS}
        if unknown:
            raise ShardFormatError(f"sample {key} has unknown members {sorted(unknown)}")
        try:
            meta = json.loads(members["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardFormatError(f"member {key}.json is not valid JSON: {e}") from e
        arrays = {}
        for stream in STREAMS:
            blob = members.get(f"{stream}.npy")
            if blob is not None:
                try:
                    arrays[stream] = np.lib.format.read_array(io.BytesIO(blob), allow_pickle=False)
                except ValueError as e:  # object dtype (needs pickle), bad header, short data
                    raise ShardFormatError(f"member {key}.{stream}.npy cannot be loaded without pickle or "
                                           f"is malformed: {e}") from e
        try:
            out.append(TrackRecord.from_parts(meta, arrays))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ShardFormatError(f"sample {key} is not a valid record: {e}") from e
    return out


# ---- dead letters ----------------------------------------------------------------------------

@dataclass(frozen=True)
class DeadLetter:
    """One input (or one segment of it) that produced no record, and why."""

    uri: str
    stage: str  # "read" | "decode" | "dedupe" | "semantic" | ...
    error: str  # exception class name, e.g. "UndecodableAudio"
    reason: str  # short stable code, e.g. "undecodable"
    message: str  # human-readable, names the file and the fix
    key: str | None = None  # record key when a single segment failed

    def sort_key(self) -> tuple:
        return (self.uri, self.stage, self.key or "", self.error)


def encode_dead_letters(letters: Iterable[DeadLetter]) -> bytes:
    lines = [json.dumps(asdict(d), sort_keys=True, ensure_ascii=False)
             for d in sorted(letters, key=DeadLetter.sort_key)]
    return ("\n".join(lines) + "\n").encode() if lines else b""


def decode_dead_letters(data: bytes) -> list[DeadLetter]:
    out = []
    for i, line in enumerate(data.decode().splitlines(), 1):
        if line.strip():
            try:
                out.append(DeadLetter(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as e:
                raise ShardFormatError(f"dead-letter line {i} is malformed: {e}") from e
    return out


# ---- dataset reader --------------------------------------------------------------------------

def parse_manifest(data: bytes | str, where: str) -> dict:
    """The validated manifest in `data`; `where` (its path or URL) names it in errors."""
    try:
        manifest = json.loads(data)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{where}: not valid JSON ({e}); re-run tokenize to rewrite it") from None
    problems = validate_manifest(manifest)
    if problems:
        raise ManifestError(f"{where}: " + "; ".join(problems))
    return manifest


def read_manifest(root: str) -> dict:
    """The validated manifest.json of a local dataset directory."""
    path = os.path.join(root, MANIFEST_NAME)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found; is {root} a tokenmill dataset (tokenize "
                                "--output), and did its job finish?") from None
    return parse_manifest(data, path)


def read_dataset(root: str, *, format: str | None = None, splits: tuple[str, ...] | None = None,
                 expect_codebooks: dict[str, str] | None = None, expect_schema: str | None = None,
                 manifest: dict | None = None, verify_checksums: bool = True) -> Iterator[TrackRecord]:
    """Records of every shard of one format, shard by shard in manifest order (keys sorted within).

    `format`: "parquet" | "webdataset"; None takes Parquet when the manifest lists Parquet shards,
    else WebDataset (both hold the same records; `verify` checks that). `splits`: only these.
    `expect_codebooks` (stream -> id) / `expect_schema`: refuse, before reading any shard, a dataset
    tokenized with other codebooks or another record schema (schemas.compat.CompatibilityError names
    both values and the fix). `verify_checksums`: hash each shard (and column shard) file and
    compare it with the manifest's sha256 before decoding it; a mismatch raises ChecksumError
    naming the file and both hashes. `beam_runner.py verify` checks the rest (sizes, counts, keys).
    A dataset version written by `rebuild` (schemas/versions.py) reads as whole records: its
    column shards replace the rewritten field of the parent's shards it references.
    """
    manifest = manifest if manifest is not None else read_manifest(root)
    if expect_codebooks is not None or expect_schema is not None:
        check_compatible(manifest, schema_version=expect_schema, codebooks=expect_codebooks, source=root)
    formats = sorted({s["format"] for s in manifest["shards"]}, key=lambda f: f != "parquet")
    if format is None and formats:
        format = formats[0]
    if format is not None and format not in formats and manifest["shards"]:
        raise ValueError(f"{root} has no {format} shards (it has {formats}); pass format={formats[0]!r}")
    chosen = [s for s in manifest["shards"] if s["format"] == format
              and (splits is None or s["split"] in splits)]
    return _iter_shards(root, chosen, manifest, verify_checksums=verify_checksums)


def _read_checked(path: str, entry: dict, root: str, verify_checksums: bool) -> IO[bytes]:
    """The bytes of `path` (a file object over them), checked against `entry['sha256']`."""
    with open(path, "rb") as f:
        data = f.read()
    if verify_checksums:
        want = entry.get("sha256")
        if not want:
            raise ChecksumError(f"{path}: {root}/{MANIFEST_NAME} lists no sha256 for it, so it cannot be "
                                "checked; re-run tokenize, or pass verify_checksums=False to read it anyway")
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise ChecksumError(f"{path}: sha256 {got} but {root}/{MANIFEST_NAME} lists {want}; the file "
                                f"was modified or truncated after it was written. Run beam_runner.py verify "
                                f"{root}, then re-run tokenize to rewrite it")
    return io.BytesIO(data)


def _iter_shards(root: str, shards: list[dict], manifest: dict | None = None,
                 verify_checksums: bool = False) -> Iterator[TrackRecord]:
    """Records of `shards`; a dataset version's column shards (schemas/versions.py) replace
    their fields, so a rebuilt dataset reads as whole records."""
    for s in shards:
        path = os.path.join(root, s["path"])
        try:
            f = _read_checked(path, s, root, verify_checksums)
            recs = decode_parquet(f) if s["format"] == "parquet" else decode_wds(f)
        except ChecksumError:
            raise
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: listed in {root}/{MANIFEST_NAME} but missing; "
                                    "run beam_runner.py verify, then re-run tokenize") from None
        except ShardFormatError as e:
            raise ShardFormatError(f"{path}: {e}; run beam_runner.py verify {root}") from e
        for ov in versions.overrides_for(manifest or {}, s["path"]):
            cpath = os.path.join(root, ov["shard"]["path"])
            try:
                keys, cols = versions.decode_column_shard(
                    _read_checked(cpath, ov["shard"], root, verify_checksums), ov["fields"])
                recs = versions.merge_columns(recs, keys, cols, cpath)
            except FileNotFoundError:
                raise FileNotFoundError(f"{cpath}: column shard listed in {root}/{MANIFEST_NAME} but missing; "
                                        f"run beam_runner.py verify {root}, then re-run rebuild") from None
        yield from recs
