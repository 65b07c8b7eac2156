"""The melody stream in `tokenize` against direct calls of the pure code: melody_windows equal the
basic-pitch melody model's windows within float16 rounding, tokens equal the RVQ codes of the
stored windows; verify, stats, `--into` and the compatibility guard know the stream; and
`fit-codebook --stream melody` writes a melody RVQ whose card names the model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import beam_runner
from tokenmill.pipelines.options import DEFAULT_SEMANTIC_EXTRACTOR
from tokenmill.cli import CommandError
from tokenmill.schemas import rates
from tokenmill.schemas.compat import CompatibilityError, check_compatible, codebook_ids
from tokenmill.schemas.shards import read_dataset
from tokenmill.schemas.stats import dataset_stats, format_stats
from tokenmill.schemas.verify import verify_dataset
from tokenmill.tokenizers import audio
from tokenmill.tokenizers.kmeans import fit_kmeans
from tokenmill.tokenizers.melody import build_melody
from tokenmill.tokenizers.melody_tokens import check_codebook, crop_tokens, window_tokens
from tokenmill.tokenizers.rvq import RVQCodebook, fit_rvq
from tokenmill.tokenizers.semantic import build_extractor

pytestmark = pytest.mark.usefixtures("torch_one_thread")
CLIPS = (("score_bach_bwv66_6.wav", 0, 9), ("pushover_greek.flac", 2, 6))  # name, start s, seconds


@pytest.fixture(scope="module")
def clips(tmp_path_factory, real_audio_dir) -> Path:
    """Two excerpts (9 s: 6 windows; 6 s: 3 windows) so the test stays a few seconds long."""
    import soundfile

    root = tmp_path_factory.mktemp("melody_clips")
    for name, start, n in CLIPS:
        pcm, sr = soundfile.read(real_audio_dir / name, dtype="int16")
        soundfile.write(root / name.replace(".flac", ".wav"), pcm[start * sr:(start + n) * sr], sr, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def waves(clips) -> dict:
    cfg = audio.AudioConfig(target_rates_hz=(16_000,))
    return {s.key: s for f in sorted(clips.iterdir()) for s in audio.prepare(f.read_bytes(), str(f), cfg)}


@pytest.fixture(scope="module")
def semantic_codebook(tmp_path_factory, waves) -> Path:
    seg = next(iter(waves.values()))
    out = tmp_path_factory.mktemp("semantic_cb")
    fit_kmeans(build_extractor(DEFAULT_SEMANTIC_EXTRACTOR).extract(seg.waves[16_000]), 8, seed=0, kind="semantic").save(out)
    return out


@pytest.fixture(scope="module")
def model():
    return build_melody("basic-pitch")


@pytest.fixture(scope="module")
def direct(model, waves) -> dict:
    """key -> float32 [W, 192] from a direct call of the model."""
    return {k: model.embed_windows(s.waves[16_000]) for k, s in waves.items()}


@pytest.fixture(scope="module")
def small_rvq(tmp_path_factory, model, direct) -> tuple[RVQCodebook, Path]:
    """A 3 x 4 melody RVQ fitted directly on the clips' 9 windows; its card names the model."""
    x = np.concatenate(list(direct.values()))
    rvq = fit_rvq(x, n_stages=3, k=4, seed=0, sources={"melody": model.describe()}, kind="melody")
    out = tmp_path_factory.mktemp("melody_cb")
    rvq.save(out)
    return rvq, out


def tokenize(clips: Path, codebook: Path, out: Path, *extra: str, into: bool = False) -> Path:
    args = ["tokenize", "--input", str(clips / "*"), "--codebook", str(codebook), "--into" if into else "--output",
            str(out), *([] if into else ["--num_shards", "1"]), "--acoustic_codec", "none", "--mulan_model", "none",
            *extra]
    assert beam_runner.main(args) == 0
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, clips, semantic_codebook, small_rvq) -> Path:
    out = tmp_path_factory.mktemp("melody_ds") / "ds"
    return tokenize(clips, semantic_codebook, out, "--melody_model", "basic-pitch", "--melody_codebook",
                    str(small_rvq[1]))


def test_tokenize_melody_windows_and_tokens_equal_direct_calls(dataset, direct, small_rvq):
    rvq = small_rvq[0]
    recs = {r.key: r for r in read_dataset(str(dataset), format="parquet")}
    assert sorted(recs) == sorted(direct)
    for key, r in recs.items():
        want = direct[key]
        assert r.melody_windows.dtype == np.float16
        assert r.melody_windows.shape == (rates.melody_window_count(rates.quanta_of_seconds(r.duration_s)), 192)
        # float16 of the same float32 values: equal up to one float16 rounding of each value
        np.testing.assert_allclose(r.melody_windows.astype(np.float32), want, rtol=2 ** -11, atol=2 ** -24)
        np.testing.assert_array_equal(r.melody, rvq.encode(r.melody_windows.astype(np.float32)))
        assert r.melody.dtype == np.uint16 and r.melody.shape == (want.shape[0], 3)
        # a 10 s crop would take windows 0, 3, 6; these clips are shorter: 9 s -> [0, 3], 6 s -> [0]
        idx = [0, 3] if r.duration_s == 9 else [0]
        np.testing.assert_array_equal(crop_tokens(r.melody, 0, r.duration_s), r.melody[idx])
    wds = {r.key: r for r in read_dataset(str(dataset), format="webdataset")}
    for key, r in recs.items():
        np.testing.assert_array_equal(wds[key].melody, r.melody)
        np.testing.assert_array_equal(wds[key].melody_windows, r.melody_windows)


def test_manifest_records_rates_window_rule_and_codebook(dataset, small_rvq, model):
    m = json.loads((dataset / "manifest.json").read_text())
    s = m["streams"]["melody"]
    assert (s["model"], s["sample_rate_hz"], s["window_s"], s["stride_s"], s["crop_hop_s"], s["dim"],
            s["n_stages"], s["vocab_size"]) == ("basic-pitch", 16_000, 4, 1, 3, 192, 3, 4)
    assert m["codebooks"]["melody"] == small_rvq[0].id
    assert m["tokenizers"]["melody"]["model"]["weights_sha256"] == model.weights_sha256
    assert m["job"]["melody"]["model"] == "basic-pitch"
    assert codebook_ids(m)["melody"] == small_rvq[0].id


def test_default_tokenize_has_the_melody_stream_from_the_packaged_model_and_rvq(clips, semantic_codebook, waves,
                                                                                tmp_path):
    """No melody flag: the built-in model and its packaged RVQ, as the README's defaults promise."""
    from tokenmill.tokenizers import melody_builtin

    out = tokenize(clips, semantic_codebook, tmp_path / "ds")
    model = build_melody("builtin")
    rvq = RVQCodebook.load(melody_builtin.DEFAULT_RVQ)
    m = json.loads((out / "manifest.json").read_text())
    assert (m["job"]["melody"]["model"], m["streams"]["melody"]["model"]) == ("builtin", "builtin")
    assert (m["streams"]["melody"]["n_stages"], m["streams"]["melody"]["vocab_size"]) == (24, 512)
    assert m["codebooks"]["melody"] == rvq.id
    assert m["tokenizers"]["melody"]["model"]["weights_sha256"] == model.weights_sha256
    recs = {r.key: r for r in read_dataset(str(out), format="parquet")}
    assert sorted(recs) == sorted(waves)
    for key, r in recs.items():
        want = model.embed_windows(waves[key].waves[16_000])
        np.testing.assert_allclose(r.melody_windows.astype(np.float32), want, rtol=2 ** -11, atol=1e-5)
        np.testing.assert_array_equal(r.melody, rvq.encode(r.melody_windows.astype(np.float32)))


def test_verify_and_stats_include_the_melody_stream(dataset, small_rvq):
    rep = verify_dataset(str(dataset), keep_records=True)
    assert rep.ok, rep.problems
    st = dataset_stats(str(dataset))
    mel = st.summary["streams"]["melody"]
    recs = rep.records["parquet"]
    all_tokens = np.concatenate([r.melody for r in recs])
    assert (mel["levels"], mel["vocab_size"], mel["level_name"]) == (3, 4, "stage")
    for lv in range(3):  # per stage: the id counts of that column, by hand
        np.testing.assert_array_equal(st.counts["melody"][lv], np.bincount(all_tokens[:, lv], minlength=4))
    assert "melody" in format_stats(st.summary)


def test_verify_flags_a_melody_stream_the_manifest_does_not_declare(dataset, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    m = json.loads((bad / "manifest.json").read_text())
    del m["streams"]["melody"]
    (bad / "manifest.json").write_text(json.dumps(m))
    assert any("declares no melody stream" in p for p in verify_dataset(str(bad)).problems)


def test_compat_refuses_datasets_with_other_or_no_melody(dataset, small_rvq):
    m = json.loads((dataset / "manifest.json").read_text())
    check_compatible(m, codebooks={"melody": small_rvq[0].id})
    with pytest.raises(CompatibilityError, match="melody RVQ codebook id: expected melody-000000000000"):
        check_compatible(m, codebooks={"melody": "melody-000000000000"})
    no_melody = {k: v for k, v in m.items()}
    no_melody["streams"] = {k: v for k, v in m["streams"].items() if k != "melody"}
    no_melody["codebooks"] = {k: v for k, v in m["codebooks"].items() if k != "melody"}
    with pytest.raises(CompatibilityError, match="has no melody stream"):
        check_compatible(no_melody, codebooks={"melody": small_rvq[0].id})


def test_into_refuses_to_mix_with_and_without_melody(dataset, clips, semantic_codebook, small_rvq, tmp_path):
    grown = tmp_path / "grown"
    shutil.copytree(dataset, grown)
    with pytest.raises(CommandError, match=r"streams \['semantic'\] but the dataset has \['melody', 'semantic'\]"):
        tokenize(clips, semantic_codebook, grown, "--melody_model", "none", into=True)
    other = fit_rvq(np.random.default_rng(0).standard_normal((16, 192)).astype(np.float32), n_stages=3, k=4,
                    seed=0, kind="melody")
    other_dir = tmp_path / "other_cb"
    other.save(other_dir)
    with pytest.raises(CommandError, match="melody codebook is melody-"):
        tokenize(clips, semantic_codebook, grown, "--melody_model", "basic-pitch", "--melody_codebook",
                 str(other_dir), into=True)


def test_into_adds_records_with_the_melody_stream(dataset, clips, semantic_codebook, small_rvq, model, tmp_path,
                                                 real_audio_dir):
    import soundfile

    grown, more = tmp_path / "grown", tmp_path / "more"
    shutil.copytree(dataset, grown)
    shutil.copytree(clips, more)
    pcm, sr = soundfile.read(real_audio_dir / "score_joplin_maple_leaf_rag.wav", dtype="int16")
    soundfile.write(more / "joplin.wav", pcm[:5 * sr], sr, subtype="PCM_16")
    tokenize(more, semantic_codebook, grown, "--melody_model", "basic-pitch", "--melody_codebook",
             str(small_rvq[1]), into=True)
    assert verify_dataset(str(grown)).ok
    (new,) = [r for r in read_dataset(str(grown), format="parquet") if r.uri.endswith("joplin.wav")]
    wave = audio.prepare((more / "joplin.wav").read_bytes(), "j", audio.AudioConfig(target_rates_hz=(16_000,)))[0]
    want = model.embed_windows(wave.waves[16_000])
    np.testing.assert_allclose(new.melody_windows.astype(np.float32), want, rtol=2 ** -11, atol=2 ** -24)
    np.testing.assert_array_equal(new.melody, small_rvq[0].encode(new.melody_windows.astype(np.float32)))


def test_window_tokens_and_codebook_check(model, small_rvq, direct):
    rvq = small_rvq[0]
    w = next(iter(direct.values())).astype(np.float16)
    np.testing.assert_array_equal(window_tokens(w, rvq), rvq.encode(w.astype(np.float32)))
    check_codebook(model, rvq)
    wrong = fit_rvq(np.eye(8, 192, dtype=np.float32), n_stages=1, k=2, seed=0,
                    sources={"melody": {"name": "builtin", "weights_sha256": "ab" * 32}}, kind="melody")
    with pytest.raises(Exception, match="was fitted on model 'builtin'"):
        check_codebook(model, wrong)


def test_melody_flags_need_a_model(clips, semantic_codebook, small_rvq, tmp_path):
    with pytest.raises(CommandError, match="--melody_codebook needs --melody_model"):
        tokenize(clips, semantic_codebook, tmp_path / "x", "--melody_model", "none", "--melody_codebook",
                 str(small_rvq[1]))
    with pytest.raises(CommandError, match="--stream melody needs --melody_model"):
        beam_runner.main(["fit-codebook", "--stream", "melody", "--input", str(clips / "*"),
                          "--output", str(tmp_path / "cb")])


def test_fit_codebook_stream_melody(clips, model, direct, tmp_path):
    out = tmp_path / "cb"
    assert beam_runner.main(["fit-codebook", "--stream", "melody", "--melody_model", "basic-pitch", "--input",
                             str(clips / "*"), "--output", str(out), "--num_clusters", "2", "--num_stages", "2",
                             "--heldout_windows", "0"]) == 0
    (path,) = out.glob("melody-*.safetensors")
    rvq = RVQCodebook.load(path)
    assert (rvq.n_stages, rvq.k, rvq.dim, rvq.kind) == (2, 2, 192, "melody")
    assert rvq.card["sources"]["melody"]["name"] == "basic-pitch"
    assert rvq.card["sources"]["n_windows_sampled"] == sum(len(w) for w in direct.values())


def test_rebuild_stream_melody_reencodes_the_stored_windows(dataset, small_rvq, tmp_path):
    out = tmp_path / "v1"
    assert beam_runner.main(["rebuild", "--dataset", str(dataset), "--stream", "melody", "--codebook",
                             str(small_rvq[1]), "--output", str(out)]) == 0
    rep = verify_dataset(str(out), keep_records=True)
    assert rep.ok, rep.problems
    m = json.loads((out / "manifest.json").read_text())
    (path,) = (out / "codebooks").glob("melody-*.safetensors")
    child = RVQCodebook.load(path)
    assert m["codebooks"]["melody"] == child.id and m["lineage"]["parent_codebook"] == small_rvq[0].id
    for r in rep.records["parquet"]:
        np.testing.assert_array_equal(r.melody, child.encode(r.melody_windows.astype(np.float32)))


def test_a_shard_written_before_the_melody_fields_reads_them_as_null(dataset):
    import io

    import pyarrow.parquet as pq

    from tokenmill.schemas.shards import decode_parquet

    (shard,) = sorted((dataset / "parquet").glob("train-*.parquet"))
    table = pq.read_table(shard).drop_columns(["melody_windows", "melody"])  # the schema before the stream
    buf = io.BytesIO()
    pq.write_table(table, buf)
    old = decode_parquet(io.BytesIO(buf.getvalue()))
    new = decode_parquet(str(shard))
    assert [r.key for r in old] == [r.key for r in new] and all(r.melody is None and r.melody_windows is None
                                                                for r in old)
    np.testing.assert_array_equal(old[0].semantic, new[0].semantic)
