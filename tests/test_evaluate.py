"""`beam_runner.py evaluate` end to end on real music: a MusicCaps-format reference (cut from longer
files, one row without audio, one corrupt file) against generated WAVs (noisy copies + one clip
without a pair). Every number equals the kernels run directly on the same clips; counts reconcile;
saved reference statistics give the same FAD without the reference audio."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

import beam_runner
from tokenmill.eval.classifiers import build_classifier
from tokenmill.eval.clips import load_clip
from tokenmill.eval.classifiers.zero_shot import clip_embedding
from tokenmill.eval.embedders import build_embedder
from tokenmill.eval.fad import GaussStats, fad
from tokenmill.eval.kld import kl_rows
from tokenmill.eval.mcc import cosines
from tokenmill.tokenizers.mulan import build_mulan

pytestmark = pytest.mark.usefixtures("torch_one_thread")
FILES = {"a1": "pushover_greek.flac", "b2": "score_bach_bwv66_6.wav", "c3": "asc_frontiers.mp3"}
ASPECTS = {"a1": ["ambient", "synth"], "b2": ["choir", "classical"], "c3": ["ambient", "drums"]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, real_audio_dir):
    root = tmp_path_factory.mktemp("evaluate")
    ref = root / "ref"
    ref.mkdir()
    lines = ["ytid,start_s,end_s,caption,aspect_list"]
    for ytid, name in FILES.items():
        shutil.copy(real_audio_dir / name, ref / f"{ytid}{Path(name).suffix}")
        lines.append(f"{ytid},2,13,{ytid} music for a test,\"{ASPECTS[ytid]}\"")
    lines.append("d4,0,10,no audio for this row,\"['ambient']\"")
    (ref / "e5.wav").write_bytes(b"RIFF not really a wav")
    lines.append("e5,0,10,corrupt file,\"['drums']\"")
    (ref / "ref.csv").write_text("\n".join(lines) + "\n")
    gen = root / "gen"
    gen.mkdir()
    rng = np.random.default_rng(0)
    for ytid in list(FILES) + ["zz"]:
        data = (ref / f"{ytid}{Path(FILES.get(ytid, 'pushover_greek.flac')).suffix}") if ytid in FILES else \
            real_audio_dir / "wesnoth_breaking_the_chains.ogg"
        waves, _ = load_clip(data.read_bytes(), str(data), (16_000,), 2, 13)
        w = waves[16_000]
        soundfile.write(gen / f"{ytid}.wav", w + 0.05 * rng.standard_normal(w.size).astype(np.float32), 16_000,
                        subtype="FLOAT")
    return root


def _run(args: list[str]) -> None:
    assert beam_runner.main(["evaluate", "--torch_threads", "1", "--fad_bootstrap", "20", *args]) == 0


def test_evaluate_end_to_end(setup, small_mulan_weights, capsys):
    w = str(small_mulan_weights)
    out = setup / "report"
    _run(["--generated", str(setup / "gen" / "*.wav"), "--reference", str(setup / "ref" / "ref.csv"),
          "--output", str(out), "--embedder", f"mulan={w}", "--classifier", f"mulan={w}", "--mulan_path", w,
          "--n_labels", "3"])
    assert "| generated |" in capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert rep["inputs"]["reference"] | {} == {**rep["inputs"]["reference"], "inputs": 5, "scored": 3, "dead_letters": 2,
                                                "dead_by_reason": {"missing": 1, "undecodable": 1}}
    assert (rep["inputs"]["generated"]["inputs"], rep["inputs"]["generated"]["scored"]) == (4, 4)
    dead = [json.loads(x) for x in (out / "failures-reference.jsonl").read_text().splitlines()]
    assert [(d["key"], d["stage"]) for d in dead] == [("e5", "load"), ("d4", "match")] or \
        sorted((d["key"], d["stage"]) for d in dead) == [("d4", "match"), ("e5", "load")]

    # the same numbers, computed directly on the same clips
    emb = build_embedder(f"mulan={w}")
    model = build_mulan("mulan", path=w)
    ref_w = {k: load_clip((setup / "ref" / f"{k}{Path(n).suffix}").read_bytes(), k, (16_000,), 2, 13)[0][16_000]
             for k, n in FILES.items()}
    gen_w = {k: load_clip((setup / "gen" / f"{k}.wav").read_bytes(), k, (16_000,))[0][16_000] for k in [*FILES, "zz"]}
    assert all(len(v) == 11 * 16_000 for v in ref_w.values())  # cut to [2, 13) from the longer files
    gen_s = GaussStats.of(np.concatenate([emb.embed(gen_w[k]) for k in sorted(gen_w)]))
    ref_s = GaussStats.of(np.concatenate([emb.embed(ref_w[k]) for k in sorted(ref_w)]))
    f = rep["fad"][f"mulan={w}"]
    assert (f["n_generated_frames"], f["n_reference_frames"], f["n_generated_clips"]) == (8, 6, 4)
    assert f["fad"] == pytest.approx(fad(gen_s, ref_s), rel=1e-5)
    assert f["interval"]["n_boot"] == 20 and f["interval"]["lo"] <= f["interval"]["hi"]

    labels = ["ambient", "drums", "choir"]  # the 3 most frequent aspects of all rows (ties by name)
    assert rep["kld"]["labels"] == labels
    clf = build_classifier(f"mulan={w}", labels=labels)
    keys = sorted(FILES)
    p = np.stack([clf.probs(ref_w[k]) for k in keys])
    q = np.stack([clf.probs(gen_w[k]) for k in keys])
    assert rep["kld"]["n_pairs"] == 3 and rep["kld"]["unpaired"] == {"generated": 1, "reference": 0}
    assert rep["kld"]["kl_ref_gen"]["value"] == pytest.approx(kl_rows(p, q).mean(), rel=1e-4)
    assert rep["kld"]["kl_gen_ref"]["value"] == pytest.approx(kl_rows(q, p).mean(), rel=1e-4)

    text = model.embed_text([f"{k} music for a test" for k in keys])
    audio = np.stack([clip_embedding(model, gen_w[k]) for k in keys])
    assert rep["mcc"]["n"] == 3 and rep["mcc"]["uncaptioned_generated_clips"] == 1
    assert rep["mcc"]["mcc"]["value"] == pytest.approx(cosines(text, audio).mean(), rel=1e-5)
    cos = dict(zip(keys, cosines(text, audio)))
    assert rep["mcc"]["per_aspect"]["ambient"]["mcc"] == pytest.approx((cos["a1"] + cos["c3"]) / 2, rel=1e-5)
    clips = [json.loads(x) for x in (out / "clips.jsonl").read_text().splitlines()]
    assert sorted((c["side"], c["key"]) for c in clips) == sorted(
        [("generated", k) for k in [*FILES, "zz"]] + [("reference", k) for k in FILES])
    from tokenmill.eval.report import file_label

    label = file_label(f"mulan={w}")
    assert label.startswith("mulan-") and len(label) == 14
    for name in ("report.md", "mcc_per_aspect.png", "kld_distribution.png", f"embeddings_{label}.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    arts = sorted((out / "reference_stats").iterdir())
    assert [a.suffix for a in arts] == [".json", ".safetensors"] and f["reference_stats"] == arts[0].stem

    # saved reference statistics: the same FAD without the reference audio
    out2 = setup / "report2"
    _run(["--generated", str(setup / "gen" / "*.wav"), "--output", str(out2), "--embedder", f"mulan={w}",
          "--classifier", "none", "--mulan_model", "none", "--reference_stats", str(out / "reference_stats")])
    rep2 = json.loads((out2 / "report.json").read_text())
    assert rep2["fad"][f"mulan={w}"]["fad"] == pytest.approx(f["fad"], rel=1e-9)
    assert rep2["fad"][f"mulan={w}"]["reference_stats"] == f["reference_stats"]
    assert rep2["kld"] is None and rep2["mcc"] is None


def test_evaluate_refuses_bad_specs(setup, tmp_path):
    with pytest.raises(SystemExit, match="matched no files"):
        beam_runner.main(["evaluate", "--generated", str(tmp_path / "none*.wav"), "--reference",
                          str(setup / "ref" / "ref.csv"), "--output", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--reference is needed"):
        beam_runner.main(["evaluate", "--generated", str(setup / "gen" / "*.wav"), "--output", str(tmp_path / "o"),
                          "--classifier", "none"])


def test_dataset_spec_decodes_the_tokens_through_its_codec(tmp_path, real_audio_dir, small_mulan_weights):
    """--generated DATASET --levels 4: each record decoded from its first 4 acoustic levels by the
    dataset's codec, keyed by its source's stem, paired with the originals."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import small_corpus

    from tokenmill.training.listen import decode_record, load_manifest
    from tokenmill.schemas.shards import read_dataset

    src = small_corpus(tmp_path / "in", real_audio_dir)
    (src / "broken.mp3").unlink()
    (src / "zz_copy_of_bach.wav").unlink()
    assert beam_runner.main(["fit-codebook", "--input", str(src / "*"), "--num_clusters", "8", "--sample_frames",
                             "400", "--heldout_frames", "40", "--output", str(tmp_path / "cb")]) == 0
    assert beam_runner.main(["tokenize", "--input", str(src / "*"), "--codebook", str(tmp_path / "cb"),
                             "--mulan_model", "none", "--melody_model", "none", "--output", str(tmp_path / "ds")]) == 0
    w = str(small_mulan_weights)
    _run(["--generated", str(tmp_path / "ds"), "--levels", "4", "--reference", str(src / "*"), "--output",
          str(tmp_path / "rep"), "--embedder", f"mulan={w}", "--classifier", f"mulan={w}", "--labels",
          str(_labels(tmp_path)), "--mulan_model", "none"])
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["kld"]["n_pairs"] == 2 and rep["inputs"]["generated"]["inputs"] == 2
    emb = build_embedder(f"mulan={w}")
    recs = sorted(read_dataset(str(tmp_path / "ds")), key=lambda r: Path(r.uri).stem)
    assert [Path(r.uri).stem for r in recs] == ["pushover_greek", "score_bach_bwv66_6"]
    gen = []
    for r in recs:
        wave, sr, _ = decode_record(str(tmp_path / "ds"), r.key, levels=4)
        gen.append(emb.embed(resample_all_16k(wave, sr)))
    ref = [emb.embed(load_clip((src / f"{Path(r.uri).name}").read_bytes(), r.uri, (16_000,))[0][16_000]) for r in recs]
    want = fad(GaussStats.of(np.concatenate(gen)), GaussStats.of(np.concatenate(ref)))
    got = rep["fad"][f"mulan={w}"]
    assert got["n_generated_frames"] == 2 and got["fad"] == pytest.approx(want, rel=1e-5)
    assert load_manifest(str(tmp_path / "ds"))["tokenizers"]["acoustic"]["name"] == "soundstream"


def _labels(tmp_path: Path) -> Path:
    p = tmp_path / "labels.txt"
    p.write_text("piano\nchoir\nguitar\n")
    return p


def resample_all_16k(wave: np.ndarray, sr: int) -> np.ndarray:
    from tokenmill.eval.clips import resample_all

    return resample_all(np.asarray(wave, np.float32), sr, (16_000,), "x")[16_000]


def test_stats_combinefn_equals_one_pass_numpy_for_any_grouping():
    from tokenmill.pipelines.evaluate import GaussStatsFn

    rng = np.random.default_rng(0)
    clips = [rng.normal(size=(int(rng.integers(1, 5)), 6)) + 50.0 for _ in range(30)]
    x = np.concatenate(clips)
    fn = GaussStatsFn()
    for groups in ([30], [1, 29], [7, 7, 7, 9], [1] * 30):
        accs, i = [], 0
        for g in groups:  # one accumulator per "bundle", merged at the end as a runner would
            acc = fn.create_accumulator()
            for c in clips[i:i + g]:
                acc = fn.add_input(acc, c)
            accs.append(acc)
            i += g
        s = fn.extract_output(fn.merge_accumulators([fn.create_accumulator(), *accs[::-1]]))
        assert s.n == len(x)
        np.testing.assert_allclose(s.mean, x.mean(axis=0), rtol=1e-13)
        np.testing.assert_allclose(s.cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
