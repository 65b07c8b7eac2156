"""The Beam jobs end to end on real audio plus the bad-input corpus (embedded runner)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import beam_runner
from tokenmill.pipelines.options import DEFAULT_SEMANTIC_EXTRACTOR
from tokenmill.schemas.verify import verify_dataset
from tokenmill.tokenizers import audio
from tokenmill.tokenizers.kmeans import Codebook
from tokenmill.tokenizers.semantic import build_extractor

MAX_SEGMENT_S = 8.0  # forces the 12–20 s real clips into 2–3 segments


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, real_audio_dir, bad_inputs):
    """Real clips + every bad input + one byte-identical copy + one lossless re-encode (FLAC of a WAV)."""
    import soundfile

    root = tmp_path_factory.mktemp("corpus")
    for f in sorted(real_audio_dir.iterdir()):
        shutil.copy(f, root / f.name)
    for path, _reason in bad_inputs.values():
        shutil.copy(path, root / path.name)
    shutil.copy(real_audio_dir / "score_bach_bwv66_6.wav", root / "zz_copy_of_bach.wav")
    pcm, sr = soundfile.read(real_audio_dir / "score_joplin_maple_leaf_rag.wav", dtype="int16")
    soundfile.write(root / "zz_joplin_as.flac", pcm, sr, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def codebook_dir(tmp_path_factory, real_audio_dir):
    out = tmp_path_factory.mktemp("codebooks")
    rc = beam_runner.main(["fit-codebook", "--input", str(real_audio_dir / "*"), "--output", str(out),
                           "--num_clusters", "16", "--sample_frames", "2000", "--heldout_frames", "300"])
    assert rc == 0
    return out


def tokenize(corpus, codebook_dir, out, *extra):
    args = ["tokenize", "--input", str(corpus / "*"), "--codebook", str(codebook_dir),
            "--output", str(out), "--captions", str(Path(__file__).parent / "data" / "captions.jsonl"),
            "--num_shards", "3", "--valid_fraction", "0.25", "--max_segment_s", str(MAX_SEGMENT_S), *extra]
    if "--acoustic_codec" not in extra:
        args += ["--acoustic_codec", "none"]  # the codec's own tests below; keep the rest fast
    if not any(a.startswith("--mulan_") for a in extra):
        args += ["--mulan_model", "none"]  # the MuLan stream's tests: test_pipeline_mulan.py
    if not any(a.startswith("--melody_") for a in extra):
        args += ["--melody_model", "none"]  # the melody stream's tests: test_melody_stream.py
    assert beam_runner.main(args) == 0
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, corpus, codebook_dir):
    return tokenize(corpus, codebook_dir, tmp_path_factory.mktemp("run1") / "ds")


def test_fit_codebook_writes_a_loadable_card(codebook_dir, real_audio_dir):
    (path,) = sorted(codebook_dir.glob("semantic-*.safetensors"))
    cb = Codebook.load(path)
    assert cb.centroids.shape[0] == 16 and cb.card["n_train_vectors"] + cb.card["n_heldout_vectors"] <= 2300
    assert cb.card["sources"]["n_inputs"] == len(list(real_audio_dir.iterdir()))
    assert cb.card["heldout_mse"] > 0


def test_every_input_is_in_the_shards_or_the_dead_letters(dataset, corpus, bad_inputs):
    rep = verify_dataset(str(dataset), keep_records=True)
    assert rep.ok, rep.problems
    m = rep.manifest
    inputs = sorted(str(p) for p in corpus.iterdir())
    letters = [json.loads(x) for x in (dataset / "failures-00000-of-00001.jsonl").read_text().splitlines()]
    dead = {d["uri"]: d for d in letters}
    rec_uris = {r.uri for r in rep.records["parquet"]}
    assert sorted(rec_uris | set(dead)) == inputs
    assert m["counts"]["inputs"] == len(inputs)
    assert m["counts"]["sources_in_records"] == len(rec_uris)
    for path, reason in bad_inputs.values():
        uri = str(corpus / path.name)
        if reason is None:
            assert uri in rec_uris, f"{path.name} should be accepted"
        else:
            assert dead[uri]["reason"] == reason and path.name in dead[uri]["message"], dead[uri]
    # duplicates: the byte copy and the lossless re-encode lose to the lexicographically first uri
    assert dead[str(corpus / "zz_copy_of_bach.wav")]["reason"] == "duplicate"
    assert "score_bach_bwv66_6.wav" in dead[str(corpus / "zz_copy_of_bach.wav")]["message"]
    assert dead[str(corpus / "zz_joplin_as.flac")]["reason"] == "duplicate"
    assert m["counts"]["dead_by_reason"]["duplicate"] == 2


def test_tokens_equal_the_pure_kernels(dataset, codebook_dir):
    """Pipeline output == decode → extractor → FAISS assign, called directly on the same file."""
    rep = verify_dataset(str(dataset), keep_records=True)
    cb = Codebook.load(sorted(codebook_dir.glob("semantic-*.safetensors"))[0])
    ex = build_extractor(DEFAULT_SEMANTIC_EXTRACTOR)
    cfg = audio.AudioConfig(target_rates_hz=(16_000,), max_segment_s=MAX_SEGMENT_S)
    by_uri: dict[str, list] = {}
    for r in rep.records["parquet"]:
        by_uri.setdefault(r.uri, []).append(r)
    assert any(len(v) > 1 for v in by_uri.values()), "segmentation should split the real clips"
    for uri, recs in by_uri.items():
        segs = audio.prepare(Path(uri).read_bytes(), uri, cfg)
        assert [s.key for s in segs] == [r.key for r in sorted(recs, key=lambda r: r.segment)]
        for s, r in zip(segs, sorted(recs, key=lambda r: r.segment)):
            want = cb.assign(ex.extract(s.waves[16_000]))
            assert np.array_equal(r.semantic, want), uri
            assert r.duration_s == pytest.approx(s.duration_s) and r.start_s == pytest.approx(s.start_s)


def test_captions_are_joined(dataset):
    rep = verify_dataset(str(dataset), keep_records=True)
    caps = {json.loads(x)["file"]: json.loads(x)
            for x in (Path(__file__).parent / "data" / "captions.jsonl").read_text().splitlines()}
    n = 0
    for r in rep.records["webdataset"]:
        name = Path(r.uri).name
        if name in caps:
            assert r.caption == caps[name]["caption"]
            n += 1
    assert n >= 8


def test_second_run_is_byte_identical(dataset, corpus, codebook_dir, tmp_path):
    again = tokenize(corpus, codebook_dir, tmp_path / "ds")
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (dataset / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_multi_processing_mode_gives_the_same_shards(real_audio_dir, codebook_dir, tmp_path):
    one = tokenize(real_audio_dir, codebook_dir, tmp_path / "a")
    many = tokenize(real_audio_dir, codebook_dir, tmp_path / "b",
                    "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    for f in sorted(one.rglob("*")):
        if f.is_file():
            assert f.read_bytes() == (many / f.relative_to(one)).read_bytes(), f


def test_verify_fails_on_a_flipped_byte_and_names_the_file(dataset, tmp_path, capsys):
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    shard = sorted((copy / "wds").glob("train-*.tar.xz"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    assert beam_runner.main(["verify", str(copy)]) == 1
    err = capsys.readouterr().err
    assert shard.name in err and "sha256" in err
    assert beam_runner.main(["verify", str(dataset)]) == 0


def test_verify_catches_a_dropped_dead_letter(dataset, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    f = copy / "failures-00000-of-00001.jsonl"
    f.write_text("".join(f.read_text().splitlines(keepends=True)[1:]))
    problems = verify_dataset(str(copy)).problems
    assert any("failures-00000-of-00001.jsonl" in p for p in problems)
    assert any("inputs_digest" in p or "unaccounted" in p for p in problems)


def test_fit_sample_does_not_depend_on_the_runner(real_audio_dir, codebook_dir, tmp_path):
    """The bottom-k frame sample is a function of (seed, keys): 2 worker processes, same codebook."""
    out = tmp_path / "cb"
    assert beam_runner.main(["fit-codebook", "--input", str(real_audio_dir / "*"), "--output", str(out),
                             "--num_clusters", "16", "--sample_frames", "2000", "--heldout_frames", "300",
                             "--direct_running_mode=multi_processing", "--direct_num_workers=2"]) == 0
    (a,) = sorted(codebook_dir.glob("semantic-*.safetensors"))
    (b,) = sorted(out.glob("semantic-*.safetensors"))
    assert a.name == b.name and a.read_bytes() == b.read_bytes()
    assert (codebook_dir / (a.stem + ".json")).read_bytes() == (out / (b.stem + ".json")).read_bytes()


@pytest.fixture(scope="module")
def tiny_encodec(tmp_path_factory, real_audio_dir):
    """A randomly initialised EnCodec (24 kHz, 75 Hz) saved with save_pretrained: the real
    from_pretrained path, and a frame rate that is not 50 Hz."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.EncodecModel(transformers.EncodecConfig(
        num_filters=4, hidden_size=8, num_lstm_layers=1, codebook_size=1024)).eval()
    import soundfile
    import soxr

    g = torch.Generator().manual_seed(0)
    wave, sr = soundfile.read(real_audio_dir / "score_bach_bwv66_6.wav", dtype="float32")
    with torch.no_grad():  # HF initialises codebooks to zeros (every code 0): seed them from
        lat = model.encoder(torch.from_numpy(soxr.resample(wave, sr, 24_000))[None, None])[0].T  # [T, D]
        for i, layer in enumerate(model.quantizer.layers):  # latents of real music, as k-means would
            pick = lat[torch.randint(len(lat), (layer.codebook.embed.shape[0],), generator=g)]
            noise = torch.randn(layer.codebook.embed.shape, generator=g) * lat.std()
            layer.codebook.embed.copy_(pick + 0.05 * noise if i == 0 else 0.3 * 0.7 ** i * noise)
    out = tmp_path_factory.mktemp("encodec")
    model.save_pretrained(out)
    transformers.EncodecFeatureExtractor(feature_size=1, sampling_rate=24_000).save_pretrained(out)
    return out


def test_acoustic_stream_from_a_75hz_codec_round_trips_and_decodes(real_audio_dir, codebook_dir,
                                                                   tiny_encodec, tmp_path):
    from tokenmill.tokenizers.codec import build_codec
    from tokenmill.training.listen import decode_record

    ds = tokenize(real_audio_dir, codebook_dir, tmp_path / "ds", "--acoustic_codec", "encodec",
                  "--acoustic_model", str(tiny_encodec), "--acoustic_bandwidth_kbps", "6")
    rep = verify_dataset(str(ds), keep_records=True)
    assert rep.ok, rep.problems
    info = rep.manifest["streams"]["acoustic"]
    assert info["frame_rate_hz"] == 75.0 and info["hop_samples"] == 320 and info["coarse_levels"] == [1, 2, 3, 4]
    codec = build_codec("encodec", path=str(tiny_encodec), bandwidth_kbps=6)
    cfg = audio.AudioConfig(target_rates_hz=(16_000, 24_000), max_segment_s=MAX_SEGMENT_S)
    rec = rep.records["parquet"][0]
    seg = next(s for s in audio.prepare(Path(rec.uri).read_bytes(), rec.uri, cfg) if s.key == rec.key)
    assert np.array_equal(rec.acoustic, codec.encode(seg.waves[24_000]))  # pipeline == pure kernel
    assert len(np.unique(rec.acoustic[0])) > 10  # codes carry information
    assert rec.acoustic.shape == (codec.n_q, round(rec.duration_s * 75))
    wave, sr, _ = decode_record(str(ds), rec.key)
    assert sr == 24_000 and np.allclose(wave, codec.decode(rec.acoustic), atol=1e-6)
    out = tmp_path / "x.wav"
    assert beam_runner.main(["decode", "--dataset", str(ds), "--key", rec.key, "--out", str(out)]) == 0
    import soundfile

    back, sr2 = soundfile.read(out, dtype="float32")
    assert sr2 == 24_000 and len(back) == len(wave)


def test_builtin_soundstream_stream_is_aligned_with_semantic(real_audio_dir, codebook_dir, tmp_path):
    """The default codec: T_a = 2 T_s at 50 Hz x 12 levels, equal to the pure codec on each segment."""
    from tokenmill.tokenizers.codec import build_codec

    src = tmp_path / "in"
    src.mkdir()
    for name in ("score_bach_bwv66_6.wav", "asc_frontiers.mp3"):
        shutil.copy(real_audio_dir / name, src / name)
    ds = tokenize(src, codebook_dir, tmp_path / "ds", "--acoustic_codec", "soundstream")
    rep = verify_dataset(str(ds), keep_records=True)
    assert rep.ok, rep.problems
    codec = build_codec("soundstream")
    assert rep.manifest["tokenizers"]["acoustic"]["weights_sha256"] == codec.weights_sha256
    cfg = audio.AudioConfig(target_rates_hz=(16_000, 24_000), max_segment_s=MAX_SEGMENT_S)
    for rec in rep.records["webdataset"]:
        assert rec.acoustic.shape == (12, 2 * rec.semantic.shape[0])
        seg = next(s for s in audio.prepare(Path(rec.uri).read_bytes(), rec.uri, cfg) if s.key == rec.key)
        assert np.array_equal(rec.acoustic, codec.encode(seg.waves[24_000]))
