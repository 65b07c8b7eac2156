"""Journal entries: a tokenized segment on disk, and the small reference that stands for it.

A full `tokenize --output DIR` run journals every segment's tokens as soon as the last model
stage has them (DIR/_work/<uh>-<iiii>.npz, pipelines/journal.py). From there on the tokens do
not travel with the element: deduplication (GroupSource) and shard assignment (GroupShard)
shuffle a `TokenRef` (the entry's path and its token counts), and the shard writer loads each
record's tokens back in key order, a few ahead on threads, once for all formats
(`materialize_in_order`). A runner that shuffles in memory (the embedded FnApiRunner, the
DirectRunner) otherwise holds every token of the corpus at once before the first shard is
written: ~28 KB of runner memory per record with acoustic tokens in bench/bench_scale.py (1-3 s
files), +280 MB at 10,000 files (flat memory). `tokenize --into` writes the same
entries to a spill directory (DIR/_spill-vNNNN, journal.open_spill) that is never resumed from,
for the same reason.
"""
from __future__ import annotations

import io
import json
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from apache_beam.io.filesystems import FileSystems

from tokenmill.errors import TokenmillError
from tokenmill.schemas.records import TrackRecord


class JournalError(TokenmillError, RuntimeError):
    """A journal that cannot be used for this run; the message names the file and the fix."""


def _json_default(x):
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def encode_segment(meta: dict, tokens: dict) -> bytes:
    """meta (JSON, uint8) + each token array (`t.<field>`, dtype and shape kept) as an .npz."""
    arrays = {"meta": np.frombuffer(json.dumps(meta, sort_keys=True, default=_json_default).encode(), np.uint8)}
    arrays.update({f"t.{k}": np.ascontiguousarray(v) for k, v in sorted(tokens.items())})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_segment(data: bytes, where: str) -> tuple[dict, dict]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            tokens = {k[2:]: z[k] for k in z.files if k.startswith("t.")}
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as e:
        raise JournalError(f"{where}: unreadable journal entry ({e}); delete it (that source is then "
                           "tokenized again) or delete the whole _work directory to start over") from e
    return meta, tokens


def read_segment(path: str) -> tuple[dict, dict]:
    """The (meta, tokens) of the journal entry at `path` (any Beam filesystem)."""
    with FileSystems.open(path) as f:
        data = f.read()
    return decode_segment(data, path)


@dataclass(frozen=True)
class TokenRef:
    """A segment's tokens by reference: its journal entry and how many tokens of each field."""

    path: str
    sizes: tuple[tuple[str, int], ...]  # (field, element count) sorted by field, for the token counters

    @classmethod
    def of(cls, path: str, tokens: dict) -> "TokenRef":
        return cls(path=path, sizes=tuple(sorted((k, int(np.size(v))) for k, v in tokens.items())))


@dataclass(frozen=True)
class PendingRecord:
    """A TrackRecord whose arrays are still in its journal entry: what a full run shuffles to its
    shard writer. `fields` holds every TrackRecord field but the arrays (split, caption, tags set)."""

    fields: tuple[tuple[str, object], ...]
    ref: TokenRef

    @classmethod
    def of(cls, fields: dict, ref: TokenRef) -> "PendingRecord":
        return cls(fields=tuple(sorted(fields.items())), ref=ref)

    def _get(self, name: str):
        return next(v for k, v in self.fields if k == name)

    # what the shuffles, the shard writer and the manifest's accounting read before loading
    key = property(lambda self: self._get("key"))
    uri = property(lambda self: self._get("uri"))
    split = property(lambda self: self._get("split"))
    duration_s = property(lambda self: self._get("duration_s"))
    caption = property(lambda self: self._get("caption"))

    def load(self) -> TrackRecord:
        meta, tokens = read_segment(self.ref.path)
        if meta.get("key") != self.key:
            raise JournalError(f"{self.ref.path}: journal entry of record {meta.get('key')!r}, expected "
                               f"{self.key!r}; it was replaced while the job ran. Delete the output's "
                               "_work directory and run again")
        return TrackRecord(**dict(self.fields), **tokens)


def materialize(record) -> TrackRecord:
    """A TrackRecord as is; a PendingRecord with its arrays loaded."""
    return record.load() if isinstance(record, PendingRecord) else record


LOAD_THREADS = 8  # concurrent journal reads per shard writer
LOAD_AHEAD = 32  # records loaded ahead of the writer, at most ...
LOAD_AHEAD_BYTES = 4 << 20  # ... and at most this many bytes of arrays (one record always)


def _nbytes(record) -> int:
    """Array bytes a record holds once loaded (every stream is 2-byte: uint16 or float16)."""
    return 2 * sum(n for _, n in record.ref.sizes) if isinstance(record, PendingRecord) else 0


def materialize_in_order(records: list, threads: int | None = None, ahead: int | None = None,
                         ahead_bytes: int | None = None) -> Iterator[TrackRecord]:
    """`records` materialized, in their order. PendingRecords are loaded by `threads` threads, at
    most `ahead` records and `ahead_bytes` of arrays ahead of the consumer (defaults: LOAD_THREADS,
    LOAD_AHEAD, LOAD_AHEAD_BYTES): an object store answers a small GET in tens of ms, so
    one-by-one loads would dominate a shard's write on Dataflow."""
    if not any(isinstance(r, PendingRecord) for r in records):
        yield from records
        return
    threads, ahead = threads or LOAD_THREADS, ahead or LOAD_AHEAD
    ahead_bytes = ahead_bytes or LOAD_AHEAD_BYTES
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tokenmill-load") as pool:
        window: deque = deque()  # (future, bytes)
        in_flight = 0
        for r in records:
            n = _nbytes(r)
            while window and (len(window) >= ahead or in_flight + n > ahead_bytes):
                fut, m = window.popleft()
                in_flight -= m
                yield fut.result()
            window.append((pool.submit(materialize, r), n))
            in_flight += n
        while window:
            yield window.popleft()[0].result()
