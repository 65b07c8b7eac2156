"""Sinks: atomic shard files, dead-letter files and the manifest, through Beam FileSystems.

Each file is written to a temporary name beside its final one and renamed when complete, so a
half-written shard is never visible under its real name. Contents are a pure function of the
records (sorted by key) and the shard of a record is a pure function of its key, so re-runs are
byte-identical.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from typing import Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from tokenmill.pipelines.entries import materialize_in_order
from tokenmill.schemas import shards as fmt
from tokenmill.schemas.manifest import DeadLetterFileInfo, ShardInfo
from tokenmill.schemas.records import (
    SPLITS, parquet_shard_name, shard_of, wds_shard_name,
)

LOG = logging.getLogger("tokenmill")
FAILURES_NAME = "failures-00000-of-00001.jsonl"


def _ensure_parent(path: str) -> None:
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path and not FileSystems.exists(parent):
        try:
            FileSystems.mkdirs(parent)
        except IOError:
            # another worker created it between our check and mkdirs (seen in multi_processing)
            if not FileSystems.exists(parent):
                raise


def _publish(tmp: str, path: str) -> None:
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def atomic_write(path: str, data: bytes) -> None:
    """Write `data` to `path` via `<path>.tmp-<sha8>` and a rename."""
    _ensure_parent(path)
    tmp = f"{path}.tmp-{hashlib.sha256(data).hexdigest()[:8]}"
    with FileSystems.create(tmp) as f:
        f.write(data)
    _publish(tmp, path)


class _Hashing:
    """Forwards writes to `f`, counting bytes and hashing them on the way."""

    def __init__(self, f):
        self.f, self.sha, self.bytes = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        data = bytes(data)
        self.sha.update(data)
        self.bytes += len(data)
        self.f.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self.bytes

    @property
    def closed(self) -> bool:
        return False


@contextlib.contextmanager
def atomic_stream(path: str) -> Iterator[_Hashing]:
    """Stream a file to `path`: the block writes to `<path>.tmp-<random8>` (random, because its
    sha256 is not known before the end; two retries of one bundle never share a temp file) through
    the yielded object, which counts (`.bytes`) and hashes (`.sha`) what passes; a rename publishes
    the file when the block ends without an exception. Nothing is held in memory."""
    _ensure_parent(path)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with FileSystems.create(tmp) as f:
        yield _Hashing(f)
    _publish(tmp, path)


def versioned(rel: str, version: int) -> str:
    """The file name of `rel` written by dataset version `version` (`tokenize --into`): version 0
    (the first run) keeps the plain name, later ones insert `.vNNNN` before the extension
    (parquet/train-00000-of-00004.v0001.parquet), so they never collide with earlier files and the
    `-IIIII-of-NNNNN` part still names the shard that the key implies."""
    if version == 0:
        return rel
    parent, _, name = rel.rpartition("/")
    stem, dot, ext = name.partition(".")
    return f"{parent}/{stem}.v{version:04d}{dot}{ext}" if parent else f"{stem}.v{version:04d}{dot}{ext}"


def shard_ids(cfg) -> list[tuple[str, int]]:
    return [(split, i) for split in SPLITS for i in range(cfg.shard_count(split))]


class WriteShard(beam.DoFn):
    """((split, index), records) → ShardInfo per format. Records are TrackRecords, or (full runs)
    PendingRecords whose arrays are read back from the journal as the shard is written. Empty
    shards are written too, so the shard count is fixed and every reader rank gets a file (a later
    version, `--into`, writes only the shards that receive records: version 0 already gave every
    rank a file)."""

    def __init__(self, output: str, formats: tuple[str, ...], counts: dict[str, int], version: int = 0):
        self.output, self.formats, self.counts = output.rstrip("/"), formats, counts
        self.version = version

    def process(self, element):
        (split, index), records = element
        records = sorted(records, key=lambda r: r.key)  # TrackRecords, or PendingRecords of a full run
        seconds = round(sum(r.duration_s for r in records), 6)
        count = self.counts[split]
        names = {"parquet": parquet_shard_name, "webdataset": wds_shard_name}
        rels = [versioned(names[name](split, index, count), self.version) for name in self.formats]
        # Every format streams to its file at once, so each record is loaded (PendingRecords: from
        # the journal, a few ahead on threads) once for all formats and dropped after its last
        # write: neither a shard's arrays nor its encoded bytes are ever held whole.
        with contextlib.ExitStack() as stack:
            outs = [stack.enter_context(atomic_stream(f"{self.output}/{rel}")) for rel in rels]
            writers = [fmt.SHARD_WRITERS[name](out) for name, out in zip(self.formats, outs)]
            for rec in materialize_in_order(records):
                for w in writers:
                    w.add(rec)
            for w in writers:
                w.close()
        for name, rel, out in zip(self.formats, rels, outs):
            LOG.info("[write] %s: %d records, %.1f s, %d bytes", rel, len(records), seconds, out.bytes)
            yield ShardInfo(path=rel, format=name, split=split, records=len(records),
                            seconds=seconds, bytes=out.bytes, sha256=out.sha.hexdigest(),
                            captioned=sum(r.caption is not None for r in records))


class WriteShards(beam.PTransform):
    """records → ShardInfo for every (split, shard, format); for `version` > 0 (`--into`) only
    for the shards that receive records, under versioned names."""

    def __init__(self, cfg, version: int = 0):
        super().__init__()
        self.cfg, self.version = cfg, version

    def expand(self, records):
        cfg = self.cfg
        keyed = records | "ByShard" >> beam.Map(
            lambda r: ((r.split, shard_of(r.key, cfg.shard_count(r.split))), r))
        every = (records.pipeline | "AllShards" >> beam.Create(shard_ids(cfg) if self.version == 0 else [])
                 | "Empty" >> beam.Map(lambda sid: (sid, None)))
        grouped = ((keyed, every) | "FlattenShards" >> beam.Flatten()
                   | "GroupShard" >> beam.GroupByKey()
                   | "DropMarker" >> beam.MapTuple(lambda sid, rs: (sid, [r for r in rs if r is not None])))
        counts = {s: cfg.shard_count(s) for s in SPLITS}
        return grouped | "Write" >> beam.ParDo(WriteShard(cfg.output, cfg.formats, counts, self.version))


def write_dead_letters(letters: list[fmt.DeadLetter], output: str, version: int = 0) -> DeadLetterFileInfo:
    """All dead letters in one sorted JSONL file (written even when empty). A later version of
    the dataset (`--into`) writes the whole current set under a versioned name."""
    data = fmt.encode_dead_letters(letters)
    rel = versioned(FAILURES_NAME, version)
    atomic_write(f"{output.rstrip('/')}/{rel}", data)
    return DeadLetterFileInfo(path=rel, records=len(letters), bytes=len(data),
                              sha256=hashlib.sha256(data).hexdigest())
