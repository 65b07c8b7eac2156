"""Manifest validator and the captions join formats."""
import json
from pathlib import Path

import pytest

from tokenmill.schemas import manifest as mf
from tokenmill.schemas.captions import CaptionFileError, parse_captions

DATA = Path(__file__).parent / "data"


def good_manifest():
    shards = [mf.ShardInfo("parquet/train-00000-of-00001.parquet", "parquet", "train", 3, 30.0, 10, "0" * 64, 1),
              mf.ShardInfo("wds/train-00000-of-00001.tar.xz", "webdataset", "train", 3, 30.0, 10, "0" * 64)]
    dead = [mf.DeadLetterFileInfo("failures-00000-of-00001.jsonl", 2, 10, "0" * 64)]
    counts = mf.Counts(inputs=4, sources_in_records=2, sources_dead_only=2, dead_letters=2, records=3,
                       seconds=30.0, inputs_digest=mf.uri_digest(["a", "b", "c", "d"]))
    return mf.build_manifest(job={}, tokenizers={}, codebooks={}, streams={}, shards=shards,
                             dead_letter_files=dead, counts=counts, tokenmill_version="0")


def test_valid_manifest_round_trips_through_json():
    m = good_manifest()
    assert mf.validate_manifest(json.loads(mf.dumps(m))) == []
    assert mf.dumps(m) == mf.dumps(good_manifest())  # deterministic bytes


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m["counts"].update(inputs=5), "do not reconcile"),
    (lambda m: m["shards"][1].update(records=2), "webdataset shards hold 2 records"),
    (lambda m: m["dead_letter_files"][0].update(records=1), "dead-letter files hold 1"),
    (lambda m: m.pop("counts"), "missing field 'counts'"),
    (lambda m: m["shards"][0].update(format="csv"), "format must be one of"),
    (lambda m: m.update(manifest_version="2.0"), "upgrade tokenmill"),
])
def test_validator_names_the_problem(mutate, message):
    m = good_manifest()
    mutate(m)
    assert any(message in p for p in mf.validate_manifest(m)), mf.validate_manifest(m)


def test_build_refuses_an_unreconciled_manifest():
    counts = mf.Counts(inputs=3, sources_in_records=1, sources_dead_only=1, dead_letters=1, records=0,
                       seconds=0.0, inputs_digest="0" * 64)
    with pytest.raises(mf.ManifestError, match="reconcile"):
        mf.build_manifest(job={}, tokenizers={}, codebooks={}, streams={}, shards=[],
                          dead_letter_files=[], counts=counts, tokenmill_version="0")


def test_uri_digest_is_order_free_and_combinable():
    a = mf.uri_digest(["x", "y", "z"])
    assert a == mf.uri_digest(["z", "x", "y", "x"])
    assert mf.digest_add(mf.uri_digest(["x"]), mf.uri_digest(["y", "z"])) == a
    assert a != mf.uri_digest(["x", "y"])


def test_musiccaps_csv_matches_the_download_names():
    data = (DATA / "musiccaps-sample.csv").read_bytes()
    idx = parse_captions(data, "musiccaps-sample.csv")
    cap = idx.lookup(key="0123456789abcdef-0000", uri="/x/-0Gj8-vB1q4.wav")
    assert cap.caption.startswith("The low quality recording features a ballad")
    assert cap.tags[:2] == ("low quality", "sustained strings melody")
    assert idx.lookup(key="k-0000", uri="gs://b/-0Gj8-vB1q4_30-40.flac") == cap
    assert idx.lookup(key="k-0000", uri="gs://b/unknown.flac") is None


def test_jsonl_by_file_uri_and_key():
    lines = [{"file": "flac/a.flac", "caption": "by file", "tags": {"genre": "metal", "title": ""}},
             {"uri": "gs://b/c.wav", "caption": "by uri", "tags": ["x"]},
             {"key": "00000000000000aa", "caption": "by source hash"}]
    idx = parse_captions("\n".join(json.dumps(x) for x in lines).encode(), "c.jsonl")
    assert idx.lookup(key="k-0000", uri="/data/flac/a.flac").tags == ("genre: metal",)
    assert idx.lookup(key="k-0000", uri="/data/a.flac") is None  # 'flac/a.flac' is not a suffix
    assert idx.lookup(key="k-0000", uri="gs://b/c.wav").caption == "by uri"
    assert idx.lookup(key="00000000000000aa-0003", uri="/z.wav").caption == "by source hash"


def test_bad_caption_files_name_the_line():
    with pytest.raises(CaptionFileError, match="c.jsonl:2"):
        parse_captions(b'{"file": "a", "caption": "x"}\nnot json\n', "c.jsonl")
    with pytest.raises(CaptionFileError, match="missing columns"):
        parse_captions(b"a,b\n1,2\n", "c.csv")
    with pytest.raises(CaptionFileError, match="unknown captions format"):
        parse_captions(b"", "c.txt")


def test_file_paths_with_the_same_name_do_not_collide():
    """Regression: the large corpus has battle.ogg in several games; basename matching mixed them."""
    lines = [{"file": "audio/wesnoth/music/battle.ogg", "caption": "wesnoth"},
             {"file": "audio/supertux/music/battle.ogg", "caption": "supertux"},
             {"file": "battle.ogg", "caption": "bare"}]
    idx = parse_captions("\n".join(json.dumps(x) for x in lines).encode(), "c.jsonl")
    assert idx.lookup(key="k-0000", uri="/corpus/audio/supertux/music/battle.ogg").caption == "supertux"
    assert idx.lookup(key="k-0000", uri="gs://b/audio/wesnoth/music/battle.ogg").caption == "wesnoth"
    assert idx.lookup(key="k-0000", uri="/elsewhere/battle.ogg").caption == "bare"
    assert idx.lookup(key="k-0000", uri="/x/notbattle.ogg") is None
