"""`beam_runner.py rebuild`: a dataset version that rewrites one stream and references
every other byte of its parent. Values against direct calls: the new semantic tokens are the new
codebook's assign of directly extracted features, the new MuLan tokens are segment_tokens of the
stored windows; the drift report agrees with a direct comparison of the records."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import beam_runner
from tokenmill.schemas import shards as fmt
from tokenmill.schemas.verify import verify_dataset
from tokenmill.tokenizers import audio
from tokenmill.tokenizers.kmeans import Codebook, fit_kmeans
from tokenmill.tokenizers.mulan import build_mulan, segment_tokens
from tokenmill.tokenizers.rvq import RVQCodebook, fit_rvq
from tokenmill.tokenizers.semantic import build_extractor

pytestmark = pytest.mark.usefixtures("torch_one_thread")
CLIPS = ("pushover_greek.flac", "score_bach_bwv66_6.wav", "singularity_through_space.opus")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def src(tmp_path_factory, real_audio_dir) -> Path:
    out = tmp_path_factory.mktemp("src")
    for name in CLIPS:
        shutil.copy(real_audio_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def feats(src) -> dict:
    """key -> spectral features, extracted directly (no job) from the same decode path. The rebuild
    tests use the spectral extractor on purpose: 20 Lloyd steps leave its fit unconverged (see
    parent_cb); on the melodic features of these clips the fit converges sooner."""
    ex, out = build_extractor("spectral"), {}
    for f in sorted(src.iterdir()):
        for s in audio.prepare(f.read_bytes(), str(f), audio.AudioConfig(target_rates_hz=(16_000,))):
            out[s.key] = ex.extract(s.waves[16_000])
    return out


@pytest.fixture(scope="module")
def parent_cb(tmp_path_factory, feats) -> tuple[Codebook, Path]:
    """k = 16 fitted directly on the same clips' features (so a refit on them is 'the same data'),
    stopped after 20 Lloyd steps (not yet converged): a converged fit is a fixed point of the refit's Lloyd (the same
    exact kernel), and its refit would change nothing."""
    cb = fit_kmeans(np.concatenate([feats[k] for k in sorted(feats)]), 16, seed=0, n_iter=20, kind="semantic")
    d = tmp_path_factory.mktemp("cb")
    return cb, cb.save(d)


def tokenize(src: Path, cb_path: Path, out: Path, *extra: str) -> Path:
    assert beam_runner.main(["tokenize", "--input", str(src / "*"), "--codebook", str(cb_path), "--output",
                             str(out), "--num_shards", "2", "--acoustic_codec", "none", "--semantic_extractor", "spectral",
                             *extra]) == 0
    return out


def rebuild(ds: Path, stream: str, cb: Path, out: Path, *extra: str) -> dict:
    assert beam_runner.main(["rebuild", "--dataset", str(ds), "--stream", stream, "--codebook", str(cb),
                             "--output", str(out), *extra]) == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def parent(tmp_path_factory, src, parent_cb) -> Path:
    return tokenize(src, parent_cb[1], tmp_path_factory.mktemp("parent") / "ds", "--mulan_model", "none",
                    "--melody_model", "none")


@pytest.fixture(scope="module")
def warm(tmp_path_factory, parent, parent_cb) -> Path:
    out = tmp_path_factory.mktemp("warm") / "v2"
    rebuild(parent, "semantic", parent_cb[1], out, "--plots", "--probe_frames", "100000")
    return out


def by_key(root: Path, format: str = "parquet") -> dict:
    return {r.key: r for r in fmt.read_dataset(str(root), format=format)}


def test_semantic_rebuild_rewrites_only_the_semantic_column(parent, warm):
    pm = json.loads((parent / "manifest.json").read_text())
    m = json.loads((warm / "manifest.json").read_text())
    parent_files = {s["path"]: s for s in pm["shards"]}
    assert len(m["shards"]) == len(pm["shards"]) == 6                  # 2 train + 1 valid, 2 formats
    rel = os.path.relpath(parent, warm)
    for s in m["shards"]:                                              # by reference, original bytes
        orig = parent_files[os.path.relpath(warm / s["path"], parent)]
        assert s["path"].startswith(rel + "/") and s["sha256"] == orig["sha256"] == sha(warm / s["path"])
    new_hashes = {sha(p) for p in warm.rglob("*") if p.is_file()}
    assert not new_hashes & {s["sha256"] for s in pm["shards"]}         # no copies in the version
    assert sorted(p.name for p in warm.iterdir()) == ["codebook_usage.png", "codebooks", "drift.json",
                                                      "manifest.json", "rebuild_config.json", "streams"]
    (ov,) = m["overrides"]
    assert ov["stream"] == "semantic" and ov["fields"] == ["semantic"]
    assert [c["path"] for c in ov["shards"]] == [f"streams/semantic/part-{i:05d}.parquet" for i in range(6)]
    lin = m["lineage"]
    assert lin["parent"] == {"path": rel, "manifest_sha256": sha(parent / "manifest.json")}
    assert lin["parent_codebook"] == pm["codebooks"]["semantic"] and lin["codebook"] == m["codebooks"]["semantic"]
    assert m["tokenizers"]["semantic"]["codebook_id"] == lin["codebook"] != lin["parent_codebook"]
    old, new = by_key(parent), by_key(warm)
    assert sorted(old) == sorted(new) and len(new) == 3
    for k in old:                                                       # every other field unchanged
        assert {f: v for f, v in old[k].meta().items()} == new[k].meta()
        assert old[k].acoustic is new[k].acoustic is None and old[k].mulan is new[k].mulan is None
        assert new[k].semantic.shape == old[k].semantic.shape and new[k].semantic.dtype == np.uint16
    wds = by_key(warm, "webdataset")                                   # both formats get the override
    assert all(np.array_equal(wds[k].semantic, new[k].semantic) for k in new)
    assert json.loads((warm / "rebuild_config.json").read_text())["stream"] == "semantic"
    from tokenmill.schemas.stats import dataset_stats

    st = dataset_stats(str(warm)).summary                              # readers see merged records
    assert st["streams"]["semantic"]["tokens"] == sum(r.semantic.size for r in new.values())


def test_new_semantic_tokens_equal_a_direct_assign_with_the_new_codebook(warm, feats):
    m = json.loads((warm / "manifest.json").read_text())
    child = Codebook.load(warm / "codebooks" / f"{m['codebooks']['semantic']}.safetensors")
    assert child.card["parent"] == m["lineage"]["parent_codebook"]
    new = by_key(warm)
    assert sorted(new) == sorted(feats)
    for k, r in new.items():
        np.testing.assert_array_equal(r.semantic, child.assign(feats[k]))


def test_warm_rebuild_keeps_tokens_and_cold_unaligned_does_not(parent, warm, parent_cb, tmp_path, real_audio_dir):
    old, new = by_key(parent), by_key(warm)
    direct = np.mean(np.concatenate([old[k].semantic != new[k].semantic for k in old]))
    drift = json.loads((warm / "drift.json").read_text())
    n_frames = sum(r.semantic.size for r in old.values())
    # the probe (100000 >= every frame) is the whole dataset: the probe share is the direct one
    assert drift["n_probe"] == n_frames == drift["dataset"]["n_tokens"]
    assert drift["changed_share"] == pytest.approx(direct) == drift["dataset"]["changed_share"]
    assert drift["changed_share"] <= 0.05                              # >= 95 % kept (same data, warm)
    assert sum(drift["usage_before"]) == sum(drift["usage_after"]) == n_frames
    m = json.loads((warm / "manifest.json").read_text())
    assert m["lineage"]["drift"]["probe_changed_share"] == drift["changed_share"]
    cold = tmp_path / "cold"
    rebuild(parent, "semantic", parent_cb[1], cold, "--no_align", "--cold_start", "--seed", "3",
            "--probe_frames", "500")
    cd = json.loads((cold / "drift.json").read_text())
    cnew = by_key(cold)
    cdirect = np.mean(np.concatenate([old[k].semantic != cnew[k].semantic for k in old]))
    assert cd["n_probe"] == 500 and cd["dataset"]["changed_share"] == pytest.approx(cdirect)
    assert cdirect > 0.5 and cd["changed_share"] > 0.5                 # most tokens change
    # a new sample (--input: other clips), warm-started and aligned: the drift is measured, not hidden
    fresh = tmp_path / "fresh"
    rebuild(parent, "semantic", parent_cb[1], fresh, "--input", str(real_audio_dir / "*.wav"),
            "--input", str(real_audio_dir / "*.ogg"), "--probe_frames", "100000")
    fd = json.loads((fresh / "drift.json").read_text())
    assert fd["sample"]["source"] == "inputs" and fd["sample"]["n_files"] == 4
    assert fd["sample"]["n_sample"] == 4 * 500                         # four 20 s clips, every frame
    fnew = by_key(fresh)
    fdirect = np.mean(np.concatenate([old[k].semantic != fnew[k].semantic for k in old]))
    assert fd["changed_share"] == pytest.approx(fdirect) and fdirect < cdirect
    print(f"kept: warm {1 - direct:.3f}, fresh sample {1 - fdirect:.3f}, cold+unaligned {1 - cdirect:.3f}")


def test_verify_passes_and_fails_on_a_modified_parent_shard(tmp_path, parent, parent_cb, capsys):
    p = tmp_path / "ds"
    shutil.copytree(parent, p)
    v = tmp_path / "v2"
    rebuild(p, "semantic", parent_cb[1], v)
    assert verify_dataset(str(v)).ok, verify_dataset(str(v)).problems
    # a version of the version re-bases the references onto the original files
    cb2 = json.loads((v / "manifest.json").read_text())["codebooks"]["semantic"]
    v3 = rebuild(v, "semantic", v / "codebooks" / f"{cb2}.safetensors", tmp_path / "v3")
    assert all(s["path"].startswith("../ds/") for s in v3["shards"]) and len(v3["overrides"]) == 1
    assert verify_dataset(str(tmp_path / "v3")).ok
    col = v / "streams" / "semantic" / "part-00000.parquet"
    data = bytearray(col.read_bytes())
    data[len(data) // 2] ^= 0xFF
    col.write_bytes(bytes(data))
    assert any("part-00000.parquet: sha256 differs" in x for x in verify_dataset(str(v)).problems)
    shard = sorted((p / "parquet").iterdir())[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert beam_runner.main(["verify", str(v)]) == 1
    err = capsys.readouterr().err
    assert f"{shard.name}: sha256 differs" in err


def test_rebuild_refuses_a_codebook_that_is_not_the_manifests(parent, feats, tmp_path):
    other = fit_kmeans(np.concatenate(list(feats.values())), 16, seed=5, kind="semantic")
    path = other.save(tmp_path / "other")
    want = json.loads((parent / "manifest.json").read_text())["codebooks"]["semantic"]
    with pytest.raises(SystemExit, match=f"{other.id}.*{want}"):
        beam_runner.main(["rebuild", "--dataset", str(parent), "--stream", "semantic", "--codebook", str(path),
                          "--output", str(tmp_path / "v")])
    with pytest.raises(SystemExit, match="no mulan codebook"):
        beam_runner.main(["rebuild", "--dataset", str(parent), "--stream", "mulan", "--codebook", str(path),
                          "--output", str(tmp_path / "v")])
    assert not (tmp_path / "v").exists()


# ---------------------------------------------------------------- MuLan

@pytest.fixture(scope="module")
def mulan_parent(tmp_path_factory, src, parent_cb, small_mulan_weights):
    """A dataset with mulan streams from the small built-in MuLan and a 4 x 8 RVQ fitted directly."""
    model = build_mulan("mulan", path=str(small_mulan_weights), batch_size=1)
    x = np.concatenate([model.embed_audio_windows(s.waves[16_000]) for f in sorted(src.iterdir())
                        for s in audio.prepare(f.read_bytes(), str(f), audio.AudioConfig(target_rates_hz=(16_000,)))])
    rvq = fit_rvq(x, n_stages=4, k=8, seed=0, sources={"mulan": model.describe()})
    rvq_path = rvq.save(tmp_path_factory.mktemp("rvq"))
    ds = tokenize(src, parent_cb[1], tmp_path_factory.mktemp("mparent") / "ds", "--mulan_model", "mulan",
                  "--mulan_path", str(small_mulan_weights), "--mulan_codebook", str(rvq_path))
    return ds, rvq_path


def test_mulan_rebuild_reencodes_stored_windows_without_the_audio_tower(mulan_parent, tmp_path, monkeypatch):
    import tokenmill.pipelines.mulan as pm
    import tokenmill.tokenizers.mulan as tm

    def no_model(*a, **k):
        raise AssertionError("the MuLan audio tower must not be built by a rebuild")
    monkeypatch.setattr(tm, "build_mulan", no_model)
    monkeypatch.setattr(pm, "build_mulan", no_model)
    ds, rvq_path = mulan_parent
    out = tmp_path / "v2"
    m = rebuild(ds, "mulan", rvq_path, out, "--n_iter", "5", "--plots")
    new_rvq = RVQCodebook.load(out / "codebooks" / f"{m['codebooks']['mulan']}.safetensors")
    assert m["lineage"]["parent_codebook"] == RVQCodebook.load(rvq_path).id
    assert m["tokenizers"]["mulan"]["codebook_id"] == new_rvq.id and new_rvq.card["parent"] == \
        m["lineage"]["parent_codebook"]
    old, new = by_key(ds), by_key(out)
    assert len(new) == 3
    for k, r in new.items():
        np.testing.assert_array_equal(r.mulan, segment_tokens(r.mulan_windows, new_rvq))
        np.testing.assert_array_equal(r.mulan_windows, old[k].mulan_windows)
        np.testing.assert_array_equal(r.semantic, old[k].semantic)
        assert r.meta() == old[k].meta()
    assert [o["stream"] for o in m["overrides"]] == ["mulan"]
    assert (out / "codebook_usage.png").stat().st_size > 0
    drift = json.loads((out / "drift.json").read_text())
    assert drift["kind"] == "rvq" and drift["n_stages"] == 4 and drift["n_probe"] == 28   # 11 + 11 + 6
    assert verify_dataset(str(out)).ok


# ---------------------------------------------------------------- the Beam passes

def test_bottom_k_combiner_equals_the_reference_in_any_merge_order():
    """BottomKRows over per-segment candidates, added and merged in any grouping, returns exactly
    rebuild.bottom_k of all rows (same rows, same (key, row) order); a key seen twice counts once."""
    from tokenmill.pipelines.rebuild import bottom_k
    from tokenmill.pipelines.rebuild_sample import BottomKRows, candidates

    rng = np.random.default_rng(0)
    per_key = {f"{i:04x}-{j:04d}": rng.standard_normal((int(rng.integers(1, 40)), 3)).astype(np.float32)
               for i in range(12) for j in range(2)}
    for k in (1, 7, 50, 10_000):
        want = bottom_k(per_key, k, 5)
        elems = [candidates(key, f, k, 5) for key, f in per_key.items()]
        elems.append(candidates("0003-0001", per_key["0003-0001"], k, 5))       # a repeat
        for trial in range(3):
            fn = BottomKRows(k)
            order = rng.permutation(len(elems))
            parts = np.array_split(order, 1 + trial * 2)
            accs = []
            for part in parts:
                acc = fn.create_accumulator()
                for i in part:
                    acc = fn.add_input(acc, elems[i])
                accs.append(acc)
            keys, rows, x = fn.extract_output(fn.merge_accumulators(accs[::-1]))
            np.testing.assert_array_equal(x, want)
            assert list(zip(keys, rows)) == sorted(zip(keys, rows))


def test_the_refit_sample_and_probe_are_the_reference_ones(warm, parent, parent_cb, feats):
    """The child codebook is refit_kmeans on rebuild.bottom_k of the directly extracted features
    (the one-process rule), and the drift report's probe numbers are drift_report's on the
    reference probe: the Beam passes keep the rows and their order."""
    from tokenmill.pipelines.rebuild import PROBE_SEED, bottom_k
    from tokenmill.tokenizers.refit import drift_report, refit_kmeans

    parent, _ = parent_cb
    m = json.loads((warm / "manifest.json").read_text())
    child = Codebook.load(warm / "codebooks" / f"{m['codebooks']['semantic']}.safetensors")
    ref = refit_kmeans(parent, bottom_k(feats, 200_000, 0), seed=0, n_iter=25, align=True, warm_start=True,
                       sources=child.card["sources"])
    np.testing.assert_array_equal(child.centroids, ref.centroids)
    assert child.id == ref.id
    want = drift_report(parent, child, bottom_k(feats, 100_000, PROBE_SEED))
    got = json.loads((warm / "drift.json").read_text())
    assert {k: got[k] for k in want} == json.loads(json.dumps(want))


def test_rebuild_reads_and_writes_only_through_filesystems(parent, parent_cb, warm, tmp_path, real_audio_dir):
    """Dataset, output and --input as URLs of a scheme no local file API can open (tests/dir_fs.py):
    the same bytes as the local run."""
    import dir_fs  # noqa: F401 — registers tmdir://

    ds = tmp_path / "ds"
    shutil.copytree(parent, ds)
    args = ["--probe_frames", "100000", "--plots"]
    rebuild(ds, "semantic", parent_cb[1], tmp_path / "local", *args)
    assert beam_runner.main(["rebuild", "--dataset", f"tmdir://{ds}", "--stream", "semantic", "--codebook",
                             str(parent_cb[1]), "--output", f"tmdir://{tmp_path}/url", *args]) == 0
    a, b = (dict((str(p.relative_to(d)), p.read_bytes()) for p in sorted(d.rglob("*")) if p.is_file())
            for d in (tmp_path / "local", tmp_path / "url"))
    assert sorted(a) == sorted(b)
    for rel in a:
        if rel != "rebuild_config.json":   # names --dataset and --output
            assert a[rel] == b[rel], rel
    assert verify_dataset(str(tmp_path / "url")).ok
    out = tmp_path / "url_inputs"
    assert beam_runner.main(["rebuild", "--dataset", f"tmdir://{ds}", "--stream", "semantic", "--codebook",
                             str(parent_cb[1]), "--output", f"tmdir://{out}",
                             "--input", f"tmdir://{real_audio_dir}/*.wav"]) == 0
    assert json.loads((out / "drift.json").read_text())["sample"]["n_files"] == 2


KILL_ARGS = ("--probe_frames", "300")


@pytest.fixture(scope="module")
def whole(tmp_path_factory, parent, parent_cb) -> Path:
    out = tmp_path_factory.mktemp("whole") / "v2"
    rebuild(parent, "semantic", parent_cb[1], out, *KILL_ARGS)
    return out


@pytest.mark.parametrize("pause_after,resumed", [
    (2, "pass 1 of 2 sources"),                        # 2 of the 3 sources journaled, pass 1 unfinished
    (5, "pass 1, 1 of 6 column shards")])             # 3 sources + pass1.npz + one column shard
def test_killed_rebuild_resumes_to_identical_bytes(parent, parent_cb, whole, tmp_path, capsys, pause_after, resumed):
    """Killed in pass 1 or in pass 2: the same command finishes without redoing what was journaled
    and writes the uninterrupted run's bytes; other settings are refused, naming the setting."""
    import signal
    import subprocess
    import sys
    import time

    from tokenmill.pipelines import journal as jr

    root = Path(__file__).resolve().parents[1]
    args = ["rebuild", "--dataset", str(parent), "--stream", "semantic", "--codebook", str(parent_cb[1]), *KILL_ARGS]
    out, marker = tmp_path / "killed", tmp_path / "paused"
    env = {**os.environ, jr.PAUSE_ENV: f"{pause_after}:{marker}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "beam_runner.py", *args, "--output", str(out)], cwd=root,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, (tmp_path / "log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the rebuild never reached the pause point"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "manifest.json").exists()
    work = sorted(p.name for p in (out / "_work").iterdir() if ".tmp-" not in p.name)
    assert len([n for n in work if n.startswith("p1-")]) == min(pause_after, 3)
    assert ("pass1.npz" in work) == (pause_after > 3)
    assert len([n for n in work if n.startswith("col-")]) == max(0, pause_after - 4)
    with pytest.raises(SystemExit, match="seed was 0, now 4"):
        beam_runner.main([*args, "--output", str(out), "--seed", "4"])
    capsys.readouterr()
    assert beam_runner.main([*args, "--output", str(out)]) == 0
    assert f"{resumed} finished before, not redone" in capsys.readouterr().out
    a, b = (dict((str(p.relative_to(d)), p.read_bytes()) for p in sorted(d.rglob("*")) if p.is_file())
            for d in (whole, out))
    assert sorted(a) == sorted(b) and not (out / "_work").exists()
    for rel in a:
        if rel != "rebuild_config.json":   # names --output
            assert a[rel] == b[rel], rel
