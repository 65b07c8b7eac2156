"""The track-segment record: Arrow schema, WebDataset member names, keys, splits and shards.

One record per track segment. Stream fields are aligned by key; the later streams (acoustic,
MuLan) are nullable so they plug in without a schema change. Writers (pipelines/sinks) and
readers (training/, verify) both import this module. No Beam, no torch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenmill.errors import TokenmillError

SCHEMA_VERSION = "1.0"

# Stream fields: name -> (numpy dtype, rank). Shapes are documented in ARROW_SCHEMA below.
STREAMS: dict[str, tuple[str, int]] = {
    "semantic": ("uint16", 1),  # [T_s] @ 25 Hz
    "acoustic": ("uint16", 2),  # [K, T_a] codebook-major @ 50 Hz (K = 12 for SoundStream)
    "mulan_windows": ("float16", 2),  # [W, 128], one 10 s window per second
    "mulan": ("uint16", 1),  # [12] RVQ codes of the segment-mean embedding
    "melody_windows": ("float16", 2),  # [W, 192], one 4 s window per second
    "melody": ("uint16", 2),  # [W, 24] RVQ codes of each stored melody window
}
# Fields added after schema 1.0's first datasets: shards written without them read as null.
LATE_STREAMS = ("melody_windows", "melody")

META_FIELDS = (
    "key", "uri", "segment", "start_s", "duration_s", "source_sample_rate", "source_channels",
    "split", "caption", "tags",
)

ARROW_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # "<16 hex content hash>-<segment 4 digits>"
        pa.field("uri", pa.string(), nullable=False),
        pa.field("segment", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),  # segment start in the source file
        pa.field("duration_s", pa.float64(), nullable=False),  # a whole number of 40 ms
        pa.field("source_sample_rate", pa.int32(), nullable=False),
        pa.field("source_channels", pa.int16(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # "train" | "valid"
        pa.field("caption", pa.string(), nullable=True),
        pa.field("tags", pa.list_(pa.string()), nullable=True),
        pa.field("semantic", pa.list_(pa.uint16()), nullable=False),
        pa.field("acoustic", pa.list_(pa.list_(pa.uint16())), nullable=True),
        pa.field("mulan_windows", pa.list_(pa.list_(pa.float16())), nullable=True),
        pa.field("mulan", pa.list_(pa.uint16()), nullable=True),
        pa.field("melody_windows", pa.list_(pa.list_(pa.float16())), nullable=True),
        pa.field("melody", pa.list_(pa.list_(pa.uint16())), nullable=True),
    ],
    metadata={"tokenmill.schema_version": SCHEMA_VERSION},
)

SPLITS = ("train", "valid")


class RecordError(TokenmillError, ValueError):
    """A record does not match the schema (wrong dtype, rank or alignment)."""


@dataclass(frozen=True)
class TrackRecord:
    """One track segment with its token streams. Arrays are numpy; None means 'not computed'."""

    key: str
    uri: str
    segment: int
    start_s: float
    duration_s: float
    source_sample_rate: int
    source_channels: int
    split: str
    semantic: np.ndarray  # uint16 [T_s] @ 25 Hz
    caption: str | None = None
    tags: tuple[str, ...] | None = None
    acoustic: np.ndarray | None = None  # uint16 [K, T_a] @ codec frame rate
    mulan_windows: np.ndarray | None = None  # float16 [W, 128]
    mulan: np.ndarray | None = None  # uint16 [12]
    melody_windows: np.ndarray | None = None  # float16 [W, 192] (4 s windows, 1 s stride)
    melody: np.ndarray | None = None  # uint16 [W, 24]: RVQ codes of each melody window

    def __post_init__(self) -> None:
        for name, (dtype, rank) in STREAMS.items():
            arr = getattr(self, name)
            if arr is None:
                continue
            if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(dtype) or arr.ndim != rank:
                got = f"{getattr(arr, 'dtype', type(arr).__name__)} rank {getattr(arr, 'ndim', '?')}"
                raise RecordError(f"record {self.key}: field {name} must be {dtype} rank {rank}, got {got}")
        if self.split not in SPLITS:
            raise RecordError(f"record {self.key}: split must be one of {SPLITS}, got {self.split!r}")

    def meta(self) -> dict[str, Any]:
        """The JSON-able metadata (everything but the arrays)."""
        d = {k: getattr(self, k) for k in META_FIELDS}
        d["tags"] = list(self.tags) if self.tags is not None else None
        return d

    def streams(self) -> dict[str, np.ndarray]:
        """Present (non-None) stream arrays, in STREAMS order."""
        return {k: getattr(self, k) for k in STREAMS if getattr(self, k) is not None}

    def to_row(self) -> dict[str, Any]:
        row = self.meta()
        for name in STREAMS:
            arr = getattr(self, name)
            row[name] = None if arr is None else arr.tolist()
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "TrackRecord":
        kw = {k: row[k] for k in META_FIELDS}
        kw["tags"] = tuple(row["tags"]) if row.get("tags") is not None else None
        for name, (dtype, _rank) in STREAMS.items():
            v = row.get(name)
            kw[name] = None if v is None else np.asarray(v, dtype=dtype)
        return cls(**kw)

    @classmethod
    def from_parts(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "TrackRecord":
        kw = {k: meta[k] for k in META_FIELDS}
        kw["tags"] = tuple(meta["tags"]) if meta.get("tags") is not None else None
        for name, (dtype, _rank) in STREAMS.items():
            kw[name] = None if name not in arrays else np.asarray(arrays[name], dtype=dtype)
        return cls(**kw)


def read_parquet_table(source, **kw) -> pa.Table:
    """pq.read_table on one thread. Reading a Python file object (BytesIO, a FileSystems stream)
    with Arrow's thread pool left threads that aborted the process at exit ("terminate called
    without an active exception", SIGABRT) in ~1 of 5 runs with pyarrow 25: a training rank, or
    any command, would exit 134 after its work was done (tests/test_shards.py). Decoding a shard
    is not the bound here (the loaders run their own threads), so nothing is lost."""
    return pq.read_table(source, use_threads=False, **kw)


def records_to_table(records: list[TrackRecord]) -> pa.Table:
    """A table in the record schema. Stream columns are built from numpy (offsets + one flat
    values array per column), not from Python lists: `to_row()` made a Python int per token, ~1 GB
    of objects for a 32 MB row group of acoustic tokens. Equal to
    `pa.Table.from_pylist([r.to_row() for r in records], schema=ARROW_SCHEMA)` (tests/test_shards.py)."""
    columns = []
    for f in ARROW_SCHEMA:
        if f.name in STREAMS:
            dtype, rank = STREAMS[f.name]
            columns.append(_stream_array([getattr(r, f.name) for r in records], f.type, dtype, rank))
        elif f.name == "tags":
            columns.append(pa.array([list(r.tags) if r.tags is not None else None for r in records], type=f.type))
        else:
            columns.append(pa.array([getattr(r, f.name) for r in records], type=f.type))
    return pa.Table.from_arrays(columns, schema=ARROW_SCHEMA)


def _offsets(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)


def _stream_array(arrays: list[np.ndarray | None], type_: pa.DataType, dtype: str, rank: int) -> pa.Array:
    """One stream column (list<…> for rank 1, list<list<…>> for rank 2) from per-row arrays."""
    present = [np.asarray(a, dtype=dtype) for a in arrays if a is not None]
    mask = pa.array([a is None for a in arrays], type=pa.bool_()) if any(a is None for a in arrays) else None
    leaf = pa.array(np.concatenate([a.ravel() for a in present]) if present else np.zeros(0, dtype),
                    type=type_.value_type if rank == 1 else type_.value_type.value_type)
    if rank == 1:
        lengths = [0 if a is None else np.asarray(a).size for a in arrays]
        return pa.ListArray.from_arrays(pa.array(_offsets(lengths)), leaf, type=type_, mask=mask)
    inner_lengths = [a.shape[1] for a in present for _ in range(a.shape[0])]
    inner = pa.ListArray.from_arrays(pa.array(_offsets(inner_lengths)), leaf, type=type_.value_type)
    outer_lengths = [0 if a is None else np.asarray(a).shape[0] for a in arrays]
    return pa.ListArray.from_arrays(pa.array(_offsets(outer_lengths)), inner, type=type_, mask=mask)


def table_to_records(table: pa.Table) -> list[TrackRecord]:
    """Records of a table in the record schema. Stream columns go from Arrow's offsets and flat
    values straight to numpy (one copy per column): `to_pylist()` built a Python int per token
    and was 85 % of a shard read. Equal to `[TrackRecord.from_row(r) for r in table.to_pylist()]`
    (tests/test_shards.py checks it)."""
    n = table.num_rows
    meta = {name: table.column(name).to_pylist() for name in META_FIELDS + ("tags",)}
    streams = {name: _stream_column(table.column(name), dtype, rank)
               for name, (dtype, rank) in STREAMS.items()}
    out = []
    for i in range(n):
        kw = {k: meta[k][i] for k in META_FIELDS}
        kw["tags"] = tuple(meta["tags"][i]) if meta["tags"][i] is not None else None
        for name in STREAMS:
            kw[name] = streams[name][i]
        out.append(TrackRecord(**kw))
    return out


def _stream_column(col: pa.ChunkedArray, dtype: str, rank: int) -> list[np.ndarray | None]:
    """A list<…> (rank 1) or list<list<…>> (rank 2) column → one numpy array per row (None where
    null). A ragged rank-2 row is passed to numpy as Python lists, as from_row does, which raises."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if isinstance(arr, pa.ChunkedArray):  # combine_chunks of a ChunkedArray (older pyarrow)
        arr = pa.concat_arrays(arr.chunks) if arr.num_chunks else pa.array([], type=col.type)
    n = len(arr)
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else np.ones(n, dtype=bool)
    off1 = arr.offsets.to_numpy()
    inner = arr.values
    if rank == 1:
        leaf = np.array(inner.to_numpy(zero_copy_only=False), dtype=dtype)
        return [leaf[off1[i]:off1[i + 1]] if valid[i] else None for i in range(n)]
    off2 = inner.offsets.to_numpy()
    leaf = np.array(inner.values.to_numpy(zero_copy_only=False), dtype=dtype)
    rows: list[np.ndarray | None] = []
    for i in range(n):
        if not valid[i]:
            rows.append(None)
            continue
        a, b = off1[i], off1[i + 1]
        lens = np.diff(off2[a:b + 1])
        if b > a and (lens == lens[0]).all():
            rows.append(leaf[off2[a]:off2[b]].reshape(b - a, int(lens[0])))
        else:  # empty or ragged: exactly what from_row gives
            rows.append(np.asarray(arr[i].as_py(), dtype=dtype))
    return rows


# ---- keys, splits, shards -------------------------------------------------------------------

def content_hash(pcm: np.ndarray, sample_rate_hz: int) -> str:
    """16-hex-digit (64-bit) hash of decoded PCM plus its rate: stable across runs and machines.

    `pcm` is the decoder's output (float32 [n, channels]) so re-muxed files with identical samples
    (e.g. OGG with a new random stream serial) get the same key and deduplicate.
    """
    h = hashlib.sha256()
    h.update(f"{sample_rate_hz}:{pcm.shape}:".encode())
    h.update(memoryview(np.ascontiguousarray(pcm, dtype="<f4")).cast("B"))
    return h.hexdigest()[:16]


def make_key(source_hash: str, segment: int) -> str:
    """Record key. No dots: WebDataset splits member names at the first dot."""
    return f"{source_hash}-{segment:04d}"


def source_hash_of(key: str) -> str:
    return key.split("-", 1)[0]


def _u64(text: str, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{text}".encode()).digest()[:8], "big")


def split_of(key: str, valid_fraction: float) -> str:
    """train/valid from the *source* hash, so all segments of one track land in the same split."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    return "valid" if _u64(source_hash_of(key), "split") < valid_fraction * 2**64 else "train"


def shard_of(key: str, num_shards: int) -> int:
    """Shard index as a pure function of the key, so re-runs put each record in the same shard."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    return _u64(key, "shard") % num_shards


# ---- shard layout ----------------------------------------------------------------------------

PARQUET_DIR = "parquet"
WDS_DIR = "wds"
FAILURES_GLOB = "failures-*.jsonl"
MANIFEST_NAME = "manifest.json"
TAR_MTIME = 0  # fixed so tar bytes are deterministic
WDS_COMPRESSION = "xz"  # whole-shard compression; see DESIGN §3 and bench/bench_bytes.py


def parquet_shard_name(split: str, index: int, count: int) -> str:
    return f"{PARQUET_DIR}/{split}-{index:05d}-of-{count:05d}.parquet"


def wds_shard_name(split: str, index: int, count: int) -> str:
    return f"{WDS_DIR}/{split}-{index:05d}-of-{count:05d}.tar.{WDS_COMPRESSION}"


def wds_member_names(key: str, streams: list[str]) -> list[str]:
    """Members of one sample, in write order: KEY.json then KEY.<stream>.npy per present stream."""
    unknown = [s for s in streams if s not in STREAMS]
    if unknown:
        raise RecordError(f"unknown stream(s) {unknown}; known: {list(STREAMS)}")
    return [f"{key}.json"] + [f"{key}.{s}.npy" for s in STREAMS if s in streams]


def json_dumps_stable(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()
