"""Compatibility guard: shards tokenized with other codebooks or another schema are refused, and the
error names both values, the dataset and the fix. Uses the hand-made dataset of test_stats.py."""
from __future__ import annotations

import json

import pytest

from helpers import CODEC_SHA, MULAN_ID, SEMANTIC_ID, STREAMS, write_dataset
from tokenmill.schemas.compat import CompatibilityError, check_compatible, codebook_ids
from tokenmill.schemas.records import SCHEMA_VERSION
from tokenmill.schemas.shards import read_dataset, read_manifest

OTHER_SEMANTIC, OTHER_MULAN, OTHER_CODEC = "semantic-ffffffffffff", "mulan-eeeeeeeeeeee", "d" * 64


@pytest.fixture
def ds(tmp_path):
    return write_dataset(tmp_path / "ds")


def test_codebook_ids_cover_every_stream(ds):
    assert codebook_ids(read_manifest(str(ds))) == {
        "semantic": SEMANTIC_ID, "acoustic": CODEC_SHA, "mulan": MULAN_ID}


def test_matching_ids_and_schema_pass(ds):
    m = read_manifest(str(ds))
    check_compatible(m, schema_version=SCHEMA_VERSION, codebooks=codebook_ids(m), source=str(ds))
    check_compatible(m, codebooks={"semantic": SEMANTIC_ID})  # a subset: only the streams named
    check_compatible(m)  # no expectations: nothing to check
    recs = list(read_dataset(str(ds), expect_codebooks=codebook_ids(m), expect_schema=SCHEMA_VERSION))
    assert len(recs) == 3


@pytest.mark.parametrize("stream, expected, found, fix", [
    ("semantic", OTHER_SEMANTIC, SEMANTIC_ID, "tokenize --codebook"),
    ("mulan", OTHER_MULAN, MULAN_ID, "tokenize --mulan_codebook"),
    ("acoustic", OTHER_CODEC, CODEC_SHA, "tokenize --acoustic_model"),
])
def test_a_different_codebook_is_refused_naming_both_ids(ds, stream, expected, found, fix):
    m = read_manifest(str(ds))
    want = {**codebook_ids(m), stream: expected}
    with pytest.raises(CompatibilityError) as e:
        check_compatible(m, codebooks=want, source=str(ds))
    msg = str(e.value)
    assert f"expected {expected}, found {found}" in msg
    assert str(ds) in msg and fix in msg and "rebuild" in msg and f"checkpoint trained on {found}" in msg
    assert msg.count("\n  - ") == 2  # one problem line and one fix line: only that stream


def test_a_different_schema_version_is_refused(ds):
    m = read_manifest(str(ds))
    with pytest.raises(CompatibilityError, match=rf"schema version: expected 2\.0, found {SCHEMA_VERSION}"):
        check_compatible(m, schema_version="2.0", source=str(ds))
    newer = write_dataset(ds.parent / "newer", schema_version="1.7")
    with pytest.raises(CompatibilityError, match=rf"expected {SCHEMA_VERSION}, found 1\.7") as e:
        read_dataset(str(newer), expect_schema=SCHEMA_VERSION)
    assert str(newer) in str(e.value)


def test_every_mismatch_is_listed_at_once(ds):
    m = read_manifest(str(ds))
    with pytest.raises(CompatibilityError) as e:
        check_compatible(m, schema_version="9.9", codebooks={"semantic": OTHER_SEMANTIC, "mulan": OTHER_MULAN})
    msg = str(e.value)
    assert msg.count("\n  - ") == 6 and OTHER_SEMANTIC in msg and MULAN_ID in msg and "9.9" in msg


def test_reader_refuses_before_reading_any_shard(ds):
    for shard in list((ds / "parquet").iterdir()) + list((ds / "wds").iterdir()):
        shard.unlink()  # a reader that read first would fail with FileNotFoundError instead
    with pytest.raises(CompatibilityError, match=f"expected {OTHER_MULAN}, found {MULAN_ID}"):
        read_dataset(str(ds), expect_codebooks={"mulan": OTHER_MULAN})


def test_an_expected_stream_the_dataset_lacks_is_refused(tmp_path):
    streams = {"semantic": STREAMS["semantic"]}
    from helpers import hand_records

    recs = [r.__class__(**{**r.__dict__, "acoustic": None, "mulan": None, "mulan_windows": None})
            for r in hand_records()]
    ds = write_dataset(tmp_path / "sem_only", records=recs, streams=streams,
                       codebooks={"semantic": SEMANTIC_ID}, tokenizers={"semantic": {}})
    m = read_manifest(str(ds))
    assert codebook_ids(m) == {"semantic": SEMANTIC_ID}
    with pytest.raises(CompatibilityError, match=f"expected {MULAN_ID}, found none .*no mulan stream"):
        check_compatible(m, codebooks={"mulan": MULAN_ID}, source=str(ds))


def test_unknown_stream_names_and_unrecorded_ids_are_refused(ds):
    m = read_manifest(str(ds))
    with pytest.raises(CompatibilityError, match=r"unknown stream\(s\) \['semantc'\]"):
        check_compatible(m, codebooks={"semantc": SEMANTIC_ID})
    broken = json.loads(json.dumps(m))
    del broken["codebooks"]["mulan"]
    with pytest.raises(CompatibilityError, match=r"mulan stream is declared but its MuLan RVQ codebook id "
                                                  r"\(codebooks\.mulan\) is missing"):
        check_compatible(broken, codebooks={"semantic": SEMANTIC_ID}, source="x/manifest.json")
