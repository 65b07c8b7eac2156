"""Byte formats of shards and dead letters: the one encoder and decoder for each.

- Parquet: zstd, pyarrow's default dictionary encoding kept (≤ 1024 distinct token values land at
  the 10-bit floor). Rows sorted by key.
- WebDataset: a tar compressed as a whole (`.tar.xz`), members `KEY.json` + `KEY.<stream>.npy`,
  fixed mtime/uid/gid/mode, samples sorted by key. Compressing the whole tar instead of each member
  removes the 512-byte header and padding that dominate small token members; `webdataset` and
  `datasets` both open compressed tars (tarfile mode "r|*"). bench/bench_bytes.py measures it.
- Dead letters: JSON lines sorted by (uri, stage, key).

Pure functions over bytes / file objects; the atomic file writing lives in pipelines/sinks.py.
"""
from __future__ import annotations

import io
import json
import lzma
import tarfile
from dataclasses import asdict, dataclass
from typing import IO, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenmill.schemas.records import (
    ARROW_SCHEMA, STREAMS, TAR_MTIME, TrackRecord, json_dumps_stable, records_to_table,
    table_to_records, wds_member_names,
)

PARQUET_COMPRESSION = "zstd"
XZ_PRESET = 9 | lzma.PRESET_EXTREME


class ShardFormatError(ValueError):
    """A shard's bytes do not decode to valid records."""


# ---- Parquet ---------------------------------------------------------------------------------

def encode_parquet(records: list[TrackRecord]) -> bytes:
    table = records_to_table(sorted(records, key=lambda r: r.key))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=PARQUET_COMPRESSION, use_dictionary=True,
                   write_statistics=True)
    return buf.getvalue()


def decode_parquet(source: str | IO[bytes]) -> list[TrackRecord]:
    try:
        table = pq.read_table(source)
    except (pa.ArrowInvalid, OSError) as e:
        raise ShardFormatError(f"not a readable Parquet file: {e}") from e
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


def encode_wds(records: list[TrackRecord]) -> bytes:
    """Whole-shard xz-compressed tar; deterministic bytes for the same records."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for rec in sorted(records, key=lambda r: r.key):
            streams = rec.streams()
            names = wds_member_names(rec.key, list(streams))
            _add_member(tar, names[0], json_dumps_stable(rec.meta()))
            for name, stream in zip(names[1:], streams):
                _add_member(tar, name, _npy_bytes(streams[stream]))
    return lzma.compress(raw.getvalue(), format=lzma.FORMAT_XZ, preset=XZ_PRESET)


def iter_wds_samples(fileobj: IO[bytes]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {suffix: bytes}) from any (compressed) WebDataset tar stream."""
    current, members = None, {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
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
        meta = json.loads(members["json"])
        arrays = {}
        for stream in STREAMS:
            blob = members.get(f"{stream}.npy")
            if blob is not None:
                arrays[stream] = np.lib.format.read_array(io.BytesIO(blob), allow_pickle=False)
        unknown = set(members) - {"json"} - {f"{s}.npy" for s in STREAMS}
        if unknown:
            raise ShardFormatError(f"sample {key} has unknown members {sorted(unknown)}")
        out.append(TrackRecord.from_parts(meta, arrays))
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
