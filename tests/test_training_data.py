"""training/data.py: shard-URL readers over local paths and a local HTTP server, checksums and
codebooks checked against the manifest, the rank × worker split, deterministic shuffles and
mid-epoch resume. Datasets are written with the schema writers (no Beam)."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from conftest import serve
from helpers import SEMANTIC_ID, STREAMS, write_dataset
from torch.utils.data import DataLoader

from tokenmill.schemas import manifest as mf
from tokenmill.schemas import shards as fmt
from tokenmill.schemas import versions
from tokenmill.schemas.compat import CompatibilityError
from tokenmill.schemas.records import (
    TrackRecord,
    make_key,
    parquet_shard_name,
    wds_shard_name,
)
from tokenmill.training.data import (
    ReaderError,
    ShardReader,
    assign_shards,
    expand_braces,
    fetch,
)

# two real DataLoader workers on a one-core runner are intended here (they only read a few KB)
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


# ---- fixtures --------------------------------------------------------------------------------

def _records(n: int, salt: str) -> list[TrackRecord]:
    out = []
    for i in range(n):
        h = hashlib.sha256(f"{salt}{i}".encode()).hexdigest()[:16]
        out.append(TrackRecord(key=make_key(h, 0), uri=f"/in/{salt}{i}.wav", segment=0, start_s=0.0,
                               duration_s=0.04 * (i % 5 + 1), source_sample_rate=48000, source_channels=2,
                               split="train", semantic=np.arange(i % 5 + 1, dtype=np.uint16) + i))
    return out


def write_sharded(root: Path, n_shards: int, per_shard: int) -> Path:
    """A dataset of `n_shards` train shards × `per_shard` records, in both formats."""
    root.mkdir(parents=True, exist_ok=True)
    by_shard = [_records(per_shard, f"s{k}-") for k in range(n_shards)]
    infos = []
    for form, name, enc in (("parquet", parquet_shard_name, fmt.encode_parquet),
                            ("webdataset", wds_shard_name, fmt.encode_wds)):
        for k, recs in enumerate(by_shard):
            data, path = enc(recs), name("train", k, n_shards)
            (root / path).parent.mkdir(exist_ok=True)
            (root / path).write_bytes(data)
            infos.append(mf.ShardInfo(path, form, "train", len(recs), round(sum(r.duration_s for r in recs), 6),
                                      len(data), hashlib.sha256(data).hexdigest()))
    allrecs = [r for recs in by_shard for r in recs]
    uris = {r.uri for r in allrecs}
    counts = mf.Counts(inputs=len(uris), sources_in_records=len(uris), sources_dead_only=0, dead_letters=0,
                       records=len(allrecs), seconds=round(sum(r.duration_s for r in allrecs), 6),
                       inputs_digest=mf.uri_digest(uris))
    m = mf.build_manifest(job={"num_shards": n_shards}, tokenizers={"semantic": {"codebook_id": SEMANTIC_ID}},
                          codebooks={"semantic": SEMANTIC_ID}, streams={"semantic": STREAMS["semantic"]},
                          shards=infos, dead_letter_files=[], counts=counts, tokenmill_version="test")
    (root / "manifest.json").write_bytes(mf.dumps(m))
    return root


def same(a: list[TrackRecord], b: list[TrackRecord]) -> bool:
    return len(a) == len(b) and all(
        x.meta() == y.meta() and x.streams().keys() == y.streams().keys()
        and all(np.array_equal(x.streams()[k], y.streams()[k]) for k in x.streams()) for x, y in zip(a, b))


def keys(recs) -> list[str]:
    return [r.key for r in recs]


@pytest.fixture(scope="module")
def ds8(tmp_path_factory) -> Path:
    return write_sharded(tmp_path_factory.mktemp("ds8"), n_shards=8, per_shard=5)


# ---- brace sets ------------------------------------------------------------------------------

def test_expand_braces():
    assert expand_braces("a/shard.tar") == ["a/shard.tar"]
    assert expand_braces("shard-{000000..000002}.tar") == [
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert expand_braces("s-{8..11}.tar") == ["s-8.tar", "s-9.tar", "s-10.tar", "s-11.tar"]
    assert expand_braces("s-{09..11}") == ["s-09", "s-10", "s-11"]
    assert expand_braces("{train,valid}-{00..01}.parquet") == [
        "train-00.parquet", "train-01.parquet", "valid-00.parquet", "valid-01.parquet"]
    assert expand_braces("x{a,b{1..2}}y") == ["xay", "xb1y", "xb2y"]
    assert expand_braces("{2..0}") == ["2", "1", "0"]
    for bad in ("s-{000..001.tar", "s-}x", "s-{abc}.tar"):
        with pytest.raises(ReaderError, match="shard pattern|brace set"):
            expand_braces(bad)


# ---- sources, checksums, compatibility -------------------------------------------------------

@pytest.mark.parametrize("form", ["parquet", "webdataset"])
def test_http_round_trip_equals_local_read(tmp_path, form):
    root = write_dataset(tmp_path / "ds")
    local = list(ShardReader(str(root), format=form, shuffle_shards=False))
    assert same(local, list(fmt.read_dataset(str(root), format=form)))
    assert len(local) == 3
    with serve(root) as (url, requests):
        remote = list(ShardReader(url, format=form, shuffle_shards=False))
        remote_m = list(ShardReader(url + "/manifest.json", format=form, shuffle_shards=False))
        assert sorted(requests) == sorted(["/manifest.json"] * 2 + [f"/{s['path']}" for s in json.loads(
            (root / "manifest.json").read_text())["shards"] if s["format"] == form] * 2)
    assert same(remote, local) and same(remote_m, local)
    assert same(list(ShardReader("file://" + str(root), format=form, shuffle_shards=False)), local)


def test_explicit_brace_urls_with_manifest(ds8):
    with serve(ds8) as (url, _):
        pat = url + "/wds/train-{00000..00007}-of-00008.tar.xz"
        got = list(ShardReader(pat, manifest=url + "/manifest.json", shuffle_shards=False))
        with pytest.raises(ReaderError, match="verify_checksums=False"):
            ShardReader(pat)
        unchecked = list(ShardReader(pat, verify_checksums=False, shuffle_shards=False))
        with pytest.raises(ReaderError, match=r"wds/nope\.tar.*not listed in .*manifest\.json"):
            ShardReader(url + "/wds/nope.tar", manifest=url)
    assert same(got, list(fmt.read_dataset(str(ds8), format="webdataset")))
    assert same(unchecked, got) and len(got) == 40


def test_checksum_mismatch_over_http_is_refused(tmp_path):
    root = write_dataset(tmp_path / "ds")
    shard = root / wds_shard_name("train", 0, 1)
    good = hashlib.sha256(shard.read_bytes()).hexdigest()
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    bad = hashlib.sha256(bytes(data)).hexdigest()
    with serve(root) as (url, _):
        reader = ShardReader(url, format="webdataset", splits=("train",))
        with pytest.raises(fmt.ChecksumError) as e:
            list(reader)
    msg = str(e.value)
    assert f"{url}/{wds_shard_name('train', 0, 1)}" in msg and good in msg and bad in msg


def test_codebook_mismatch_refused_before_any_shard_is_fetched(tmp_path):
    root = write_dataset(tmp_path / "ds")
    with serve(root) as (url, requests):
        with pytest.raises(CompatibilityError) as e:
            ShardReader(url, expect_codebooks={"semantic": "semantic-ffffffffffff"})
        assert requests == ["/manifest.json"]
        with pytest.raises(CompatibilityError, match="expected 9.9, found 1.0"):
            ShardReader(url, expect_schema="9.9")
        assert requests == ["/manifest.json"] * 2
        ok = ShardReader(url, expect_codebooks={"semantic": SEMANTIC_ID}, expect_schema="1.0")
        assert len(list(ok)) == 3
    assert "semantic-ffffffffffff" in str(e.value) and SEMANTIC_ID in str(e.value)


def test_dataset_version_column_shards_are_merged_and_checked(tmp_path):
    """A `rebuild` version (schemas/versions.py): each shard's semantic field comes from its column
    shard (here: old tokens + 100), fetched over HTTP and checked against the manifest too."""
    root = write_sharded(tmp_path / "v", n_shards=2, per_shard=3)
    m = json.loads((root / "manifest.json").read_text())
    cols = []
    for i, s in enumerate(m["shards"]):
        data = (root / s["path"]).read_bytes()
        recs = fmt.decode_parquet(io.BytesIO(data)) if s["format"] == "parquet" else fmt.decode_wds(io.BytesIO(data))
        col = versions.encode_column_shard([r.key for r in recs], {"semantic": [r.semantic + 100 for r in recs]})
        path = versions.column_shard_name("semantic", i)
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(col)
        cols.append({"path": path, "base": s["path"], "records": len(recs), "bytes": len(col),
                     "sha256": hashlib.sha256(col).hexdigest()})
    m["overrides"] = [{"stream": "semantic", "fields": ["semantic"], "format": "parquet", "shards": cols}]
    m["lineage"] = {"parent": {"path": "../parent", "manifest_sha256": "0" * 64}, "stream": "semantic",
                    "parent_codebook": SEMANTIC_ID, "codebook": SEMANTIC_ID}
    assert mf.validate_manifest(m) == []
    (root / "manifest.json").write_bytes(mf.dumps(m))
    base = {r.key: r.semantic for r in _records(3, "s0-") + _records(3, "s1-")}
    local = list(fmt.read_dataset(str(root), format="webdataset"))
    with serve(root) as (url, requests):
        got = list(ShardReader(url, format="webdataset", shuffle_shards=False))
        assert sum("/streams/semantic/" in p for p in requests) == 2
        (root / cols[-1]["path"]).write_bytes(b"PAR1 not the column shard")
        with pytest.raises(fmt.ChecksumError, match=f"{url}/streams/semantic/part-00003.parquet: sha256"):
            list(ShardReader(url, format="webdataset", shuffle_shards=False))
    assert len(got) == 6 and all(np.array_equal(r.semantic, base[r.key] + 100) for r in got)
    assert same(got, local)


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None or importlib.util.find_spec("s3fs") is not None,
                    reason="gcsfs/s3fs installed: this checks the error when they are not")
def test_cloud_urls_name_the_package_to_install():
    with pytest.raises(ReaderError, match=r"gs://bucket/ds/manifest\.json.*pip install gcsfs"):
        ShardReader("gs://bucket/ds")
    with pytest.raises(ReaderError, match=r"s3://bucket/a\.tar.*pip install s3fs"):
        fetch("s3://bucket/a.tar")


# ---- split over ranks × workers --------------------------------------------------------------

def test_rank_worker_split_covers_every_shard_once_per_epoch(ds8):
    for epoch in (0, 1):
        per = [assign_shards(8, consumer=c, n_consumers=4, seed=0, epoch=epoch) for c in range(4)]
        assert sorted(s for p in per for s in p) == list(range(8)) and all(len(p) == 2 for p in per)
    assert per != [assign_shards(8, consumer=c, n_consumers=4, seed=0, epoch=0) for c in range(4)]
    everything = keys(fmt.read_dataset(str(ds8)))
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            reader = ShardReader(str(ds8), rank=rank, world_size=2, epoch=epoch, shuffle_buffer=3)
            loader = DataLoader(reader, batch_size=None, num_workers=2, collate_fn=lambda r: r.key)
            got = list(loader)
            assert len(got) == 20  # 2 workers × 2 shards × 5 records
            seen += got
        assert sorted(seen) == sorted(everything) and len(set(seen)) == 40


def test_fewer_shards_than_consumers_raises_or_resamples(tmp_path):
    root = write_sharded(tmp_path / "ds3", n_shards=3, per_shard=2)
    it = iter(DataLoader(ShardReader(str(root), rank=0, world_size=2), batch_size=None, num_workers=2,
                         collate_fn=lambda r: r.key))
    try:  # the worker's error reaches the trainer at once (no hang, no empty rank)
        with pytest.raises(ReaderError, match=r"3 shards cannot be split over 4 consumers \(2 ranks x 2 Data"):
            next(it)
    finally:
        it._shutdown_workers()  # now, not at a later gc (which waits ~5 s per worker)
    with pytest.raises(ReaderError, match="3 shards cannot be split over 4 consumers"):
        ShardReader(str(root), rank=0, world_size=4)  # on the launcher, before any worker starts
    per = [assign_shards(3, consumer=c, n_consumers=4, seed=0, epoch=0, resample=True) for c in range(4)]
    assert all(len(p) == 1 for p in per) and {p[0] for p in per} == {0, 1, 2}
    seen = []
    for rank in (0, 1):
        reader = ShardReader(str(root), rank=rank, world_size=2, resample=True)
        got = list(DataLoader(reader, batch_size=None, num_workers=2, collate_fn=lambda r: r.key))
        assert len(got) == 4  # each of 2 workers reads one 2-record shard: no consumer is empty
        seen += got
    assert set(seen) == set(keys(fmt.read_dataset(str(root)))) and len(seen) == 8


# ---- shuffle and resume ----------------------------------------------------------------------

def test_shuffle_is_deterministic_per_seed_and_epoch(ds8):
    a = keys(ShardReader(str(ds8), seed=7, shuffle_buffer=6))
    b = keys(ShardReader(str(ds8), seed=7, shuffle_buffer=6))
    c = keys(ShardReader(str(ds8), seed=7, epoch=1, shuffle_buffer=6))
    d = keys(ShardReader(str(ds8), seed=8, shuffle_buffer=6))
    plain = keys(fmt.read_dataset(str(ds8)))
    assert a == b and len(a) == 40
    assert a != c and a != d and a != plain
    assert sorted(a) == sorted(c) == sorted(d) == sorted(plain)
    r = ShardReader(str(ds8), seed=7, shuffle_buffer=6)
    assert keys(r) == a and keys(r) == c  # a finished epoch moves the reader on to the next one
    r.set_epoch(0)
    assert keys(r) == a


@pytest.mark.parametrize("n_read", [0, 1, 13, 19, 20])
def test_resume_mid_epoch_equals_uninterrupted(ds8, n_read):
    kw = {"seed": 3, "shuffle_buffer": 7, "rank": 1, "world_size": 2, "format": "webdataset"}
    whole = list(ShardReader(str(ds8), **kw)) + list(islice(ShardReader(str(ds8), epoch=1, **kw), 5))
    first = ShardReader(str(ds8), **kw)
    it = iter(first)
    head = list(islice(it, n_read))
    state = json.loads(json.dumps(first.state_dict()))
    assert state["epoch"] == 0 and state["yielded"] == n_read
    resumed = ShardReader(str(ds8), **kw)
    resumed.load_state_dict(state)
    tail = list(resumed)
    assert same(head + tail, whole[:20])
    assert same(list(islice(iter(resumed), 5)), whole[20:])  # then the next epoch, as uninterrupted
    with pytest.raises(ReaderError, match="seed=3.*seed=4"):
        ShardReader(str(ds8), **{**kw, "seed": 4}).load_state_dict(state)


def test_http_fetch_retries_transient_failures_and_logs_them(tmp_path, monkeypatch, caplog):
    """A server answering 503 twice (busy, or still starting) is retried with backoff, each retry
    logged; a 404 fails at once; a closed port fails after the retries with the count in the message."""
    import socket
    import time

    from tokenmill.training import data as dmod

    (tmp_path / "x.bin").write_bytes(b"payload")
    calls = {"n": 0}

    class Flaky(SimpleHTTPRequestHandler):
        def do_GET(self):
            calls["n"] += 1
            if self.path == "/x.bin" and calls["n"] <= 2:
                self.send_error(503, "busy")
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    monkeypatch.setattr(time, "sleep", lambda s: None)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Flaky, directory=str(tmp_path)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        with caplog.at_level("WARNING", logger="tokenmill"):
            assert fetch(f"{base}/x.bin") == b"payload"
        assert calls["n"] == 3
        assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
            "HTTP 503; retry 1 of 3 in 0.5 s", "HTTP 503; retry 2 of 3 in 1.0 s"]
        calls["n"] = 0
        with pytest.raises(ReaderError, match="HTTP 404"):
            fetch(f"{base}/missing.bin")
        assert calls["n"] == 1
    finally:
        srv.shutdown()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ReaderError, match="cannot connect.*tried 3 times"):
        dmod.fetch(f"http://127.0.0.1:{port}/x.bin", retries=2)
