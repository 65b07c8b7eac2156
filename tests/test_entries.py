"""Journaled tokens travel by reference (pipelines/entries.py): a full run's shard writer loads each
record's arrays from its journal entry, one at a time, and writes the same bytes as from records
held in memory (flat memory)."""
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest

from tokenmill.pipelines import entries
from tokenmill.pipelines.entries import JournalError, PendingRecord, TokenRef, encode_segment
from tokenmill.pipelines.options import TokenizeConfig
from tokenmill.pipelines.sinks import WriteShard
from tokenmill.pipelines.tokenize import DedupeAndBuild
from tokenmill.schemas import shards as fmt
from tokenmill.schemas.records import META_FIELDS, STREAMS, TrackRecord, make_key

ARRAYS = tuple(STREAMS)


def _records(n: int, t_s: int, seed: int = 0) -> list[TrackRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        key = make_key(f"{rng.integers(2**63):016x}", 0)
        out.append(TrackRecord(
            key=key, uri=f"/data/t{i}.flac", segment=0, start_s=0.0, duration_s=t_s * 0.04,
            source_sample_rate=44100, source_channels=2, split="train",
            semantic=rng.integers(0, 1024, t_s).astype(np.uint16),
            acoustic=rng.integers(0, 1024, (12, 2 * t_s)).astype(np.uint16),
            caption=f"caption {i}" if i % 2 else None, tags=("x",) if i % 3 == 0 else None))
    return out


def _journal(records: list[TrackRecord], work) -> list[PendingRecord]:
    """Each record's journal entry (as JournalSegment writes it) and its PendingRecord."""
    pending = []
    for r in records:
        meta = {k: getattr(r, k) for k in META_FIELDS if k not in ("split", "caption", "tags")}
        tokens = {k: getattr(r, k) for k in ARRAYS if getattr(r, k) is not None}
        path = work / f"{r.key}.npz"
        path.write_bytes(encode_segment(meta, tokens))
        fields = {**meta, "split": r.split, "caption": r.caption, "tags": r.tags}
        pending.append(PendingRecord.of(fields, TokenRef.of(str(path), tokens)))
    return pending


def _write(records, out, formats=("parquet", "webdataset")) -> list:
    fn = WriteShard(str(out), formats, {"train": 1, "valid": 1})
    return list(fn.process((("train", 0), list(records))))


def test_each_pending_record_is_loaded_once_for_all_formats(tmp_path, monkeypatch):
    """Regression: WriteShard wrote one format after the other, so every journal entry was read
    once per format (two GETs per record on an object store). All formats now stream at once."""
    recs = _records(5, t_s=40, seed=6)
    pending = _journal(recs, tmp_path)
    loads = []
    real_load = PendingRecord.load
    monkeypatch.setattr(PendingRecord, "load", lambda self: loads.append(self.key) or real_load(self))
    infos = _write(pending, tmp_path / "out")
    assert sorted(loads) == sorted(r.key for r in recs)
    assert [i.format for i in infos] == ["parquet", "webdataset"] and all(i.records == 5 for i in infos)
    assert fmt.decode_wds(open(tmp_path / "out" / infos[1].path, "rb"))[0].key == min(loads)


def test_pending_records_write_the_bytes_of_records_in_memory(tmp_path):
    recs = _records(9, t_s=100)
    pending = _journal(recs, tmp_path)
    from_memory = _write(reversed(recs), tmp_path / "a")
    from_journal = _write(pending[::2] + pending[1::2], tmp_path / "b")  # any order in, key order out
    assert [(s.path, s.sha256, s.bytes, s.records, s.captioned) for s in from_journal] == \
        [(s.path, s.sha256, s.bytes, s.records, s.captioned) for s in from_memory]
    assert (tmp_path / "a" / from_memory[0].path).read_bytes() == (tmp_path / "b" / from_journal[0].path).read_bytes()
    back = fmt.decode_parquet(str(tmp_path / "b" / from_journal[0].path))
    assert [r.key for r in back] == sorted(r.key for r in recs)
    want = {r.key: r for r in recs}
    for r in back:
        assert np.array_equal(r.acoustic, want[r.key].acoustic) and r.caption == want[r.key].caption


def test_shard_writer_memory_is_flat_in_the_shard_size(tmp_path, monkeypatch):
    """12 and 36 records of ~1 MB of acoustic tokens in journal entries, 2 MiB row groups, 1 MiB
    of lookahead: the writer's traced peak (numpy and Python allocations) is the same for both
    and a fraction of the larger shard's arrays. The old writer took a list of every record's
    arrays, then a Python int per token."""
    monkeypatch.setattr(fmt, "PARQUET_ROW_GROUP_BYTES", 2 << 20)
    # one ~1 MB record loaded ahead at most: with the default 4 MiB the peak depended on how far
    # the loader threads got (13.5 MB measured), so the bound below held by luck
    monkeypatch.setattr(entries, "LOAD_AHEAD_BYTES", 1 << 20)
    peaks, totals = [], []
    for n in (12, 36):
        recs = _records(n, t_s=20_000, seed=n)  # 12 x 40,000 uint16 = ~1 MB per record
        totals.append(sum(r.acoustic.nbytes + r.semantic.nbytes for r in recs))
        pending = _journal(recs, tmp_path)
        del recs
        tracemalloc.start()
        try:
            infos = _write(pending, tmp_path / f"out{n}", formats=("parquet",))  # xz: test_shards
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert infos[0].records == n
    assert peaks[1] < 1.2 * peaks[0], peaks
    assert peaks[1] < totals[1] / 3, (peaks, totals)


def test_pending_record_refuses_a_replaced_entry(tmp_path):
    a, b = _records(2, t_s=10, seed=2)
    pa, pb = _journal([a, b], tmp_path)
    assert entries.materialize(pa).key == a.key and entries.materialize(a) is a
    swapped = replace(pa, ref=pb.ref)
    with pytest.raises(JournalError, match="replaced while the job ran"):
        swapped.load()


def test_dedupe_builds_pending_records_with_the_in_memory_fields(tmp_path):
    recs = _records(3, t_s=50, seed=3)
    pending = _journal(recs, tmp_path)
    cfg = TokenizeConfig(inputs=("x",), output=str(tmp_path), codebook="c", valid_fraction=0.0)
    source = recs[0].key.split("-")[0]
    from_refs = list(DedupeAndBuild(cfg).process(
        (source, [(dict(p.fields), p.ref) for p in pending])))
    meta_of = [{k: v for k, v in p.fields if k not in ("split", "caption", "tags")} for p in pending]
    from_arrays = list(DedupeAndBuild(cfg).process(
        (source, [(m, {"semantic": r.semantic, "acoustic": r.acoustic}) for m, r in zip(meta_of, recs)])))
    # one source hash, three uris: the smallest uri is kept, the other two are duplicates
    kept = [x for x in from_refs if isinstance(x, PendingRecord)]
    built = [x for x in from_arrays if isinstance(x, TrackRecord)]
    assert len(kept) == len(built) == 1 and kept[0].uri == min(r.uri for r in recs)
    dups = [x.value for x in from_refs if not isinstance(x, PendingRecord)]
    assert dups == [x.value for x in from_arrays if not isinstance(x, TrackRecord)] and len(dups) == 2
    for p, r in zip(kept, built):
        loaded = p.load()
        assert loaded.meta() == r.meta()
        assert np.array_equal(loaded.acoustic, r.acoustic) and np.array_equal(loaded.semantic, r.semantic)


def test_loads_run_ahead_in_order_within_bounds(tmp_path, monkeypatch):
    """materialize_in_order: the writer gets the records in their order, whatever order the threads
    finish in; at most `ahead` records / `ahead_bytes` are loaded ahead; a failed load raises at its
    record. Loads sleep 20 ms (an object store's GET): 16 records with 8 threads take far less than
    16 sequential loads."""
    import threading
    import time

    recs = _records(16, t_s=50, seed=4)
    pending = sorted(_journal(recs, tmp_path), key=lambda p: p.key)
    real_load = PendingRecord.load
    loading, most = [0], [0]
    lock = threading.Lock()

    def slow_load(self):
        with lock:
            loading[0] += 1
            most[0] = max(most[0], loading[0])
        time.sleep(0.02 if int(self.key[:2], 16) % 2 else 0.04)  # finish out of order
        try:
            return real_load(self)
        finally:
            with lock:
                loading[0] -= 1

    monkeypatch.setattr(PendingRecord, "load", slow_load)
    got = list(entries.materialize_in_order(pending, threads=8, ahead=4))
    assert [r.key for r in got] == [p.key for p in pending]
    by_key = {r.key: r for r in recs}
    assert all(np.array_equal(r.acoustic, by_key[r.key].acoustic) for r in got)
    assert 2 <= most[0] <= 4  # loads overlapped (each sleeps >= 20 ms), at most `ahead` at once
    one = 2 * sum(n for _, n in pending[0].ref.sizes)
    most[0] = 0
    list(entries.materialize_in_order(pending, threads=8, ahead=32, ahead_bytes=2 * one))
    assert most[0] <= 2
    bad = [pending[0], replace(pending[1], ref=pending[2].ref), pending[3]]
    it = entries.materialize_in_order(bad, threads=2)
    assert next(it).key == pending[0].key
    with pytest.raises(JournalError, match="replaced while the job ran"):
        next(it)
