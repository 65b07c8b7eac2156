"""Kill `tokenize` midway (SIGKILL), run the same command again: it resumes from the journal
(pipelines/journal.py) and its output is byte-identical to an uninterrupted run; no file is ever
visible under its final name before its bytes are complete. Semantic tokens only, 8 s segments."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import beam_runner
from tokenmill.pipelines import journal as jr
from tokenmill.pipelines.sinks import atomic_write

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("--acoustic_codec", "none", "--mulan_model", "none", "--melody_model", "none", "--max_segment_s", "8", "--num_shards", "2",
         "--valid_fraction", "0.25")
PAUSE_AFTER = 5  # journal entries written before the job pauses to be killed


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, real_audio_dir, bad_inputs):
    """All real clips, two inputs that die at decode and one byte-identical duplicate."""
    import shutil

    root = tmp_path_factory.mktemp("resume_corpus")
    for f in sorted(real_audio_dir.iterdir()):
        shutil.copy(f, root / f.name)
    for name in ("truncated_flac", "silence"):
        shutil.copy(bad_inputs[name][0], root / bad_inputs[name][0].name)
    shutil.copy(real_audio_dir / "score_bach_bwv66_6.wav", root / "zz_copy_of_bach.wav")
    return root


@pytest.fixture(scope="module")
def codebook(tmp_path_factory, real_audio_dir):
    out = tmp_path_factory.mktemp("resume_cb")
    assert beam_runner.main(["fit-codebook", "--input", str(real_audio_dir / "score_*"), "--output", str(out),
                             "--num_clusters", "16", "--sample_frames", "1500", "--heldout_frames", "200"]) == 0
    return out


def _args(corpus, codebook, out):
    return ["tokenize", "--input", str(corpus / "*"), "--codebook", str(codebook), "--output", str(out), *FLAGS]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus, codebook):
    out = tmp_path_factory.mktemp("resume_full") / "ds"
    assert beam_runner.main(_args(corpus, codebook, out)) == 0
    return out


def _check_visible(out: Path) -> list[str]:
    """While the job is paused: nothing final but complete journal entries (and job.json)."""
    names = [str(p.relative_to(out)) for p in sorted(out.rglob("*")) if p.is_file()]
    entries = []
    for rel in names:
        assert rel.startswith(jr.WORK_DIR + "/"), f"{rel} is visible before the job finished"
        name = rel.split("/", 1)[1]
        if ".tmp-" in name or name in (jr.JOB_NAME, jr.COMPUTE_NAME):
            continue
        assert jr._ENTRY.match(name), name
        data = (out / rel).read_bytes()
        if name.endswith(".npz"):
            meta, tokens = jr.decode_segment(data, rel)  # complete: it loads
            assert tokens["semantic"].dtype == np.uint16 and meta["key"]
        else:
            json.loads(data)
        entries.append(name)
    return entries


def test_killed_run_resumes_to_identical_bytes(corpus, codebook, uninterrupted, tmp_path, capsys):
    out = tmp_path / "ds"
    marker = tmp_path / "paused"
    env = {**os.environ, jr.PAUSE_ENV: f"{PAUSE_AFTER}:{marker}"}
    log = tmp_path / "killed-run.log"  # a file, not a pipe: a full pipe would block the job
    with open(log, "wb") as log_f:
        proc = subprocess.Popen([sys.executable, "beam_runner.py", *_args(corpus, codebook, out)], cwd=ROOT,
                                env=env, stdout=log_f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the job never reached the pause point"
            time.sleep(0.2)
        entries = _check_visible(out)
        assert len(entries) >= PAUSE_AFTER
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    _check_visible(out)
    fingerprint = json.loads((out / jr.WORK_DIR / jr.JOB_NAME).read_text())
    finished = jr.open_journal(str(out), fingerprint, (str(corpus / "*"),)).finished
    n_inputs = len(list(corpus.iterdir()))
    assert 0 < len(finished) < n_inputs

    capsys.readouterr()
    assert beam_runner.main(_args(corpus, codebook, out)) == 0
    printed = capsys.readouterr().out
    assert f"{len(finished)} of {n_inputs} sources were finished by an interrupted run and are skipped" in printed
    resumed = json.loads((out / jr.RESUMED_NAME).read_text())
    assert resumed["sources_skipped_finished"] == len(finished)
    assert resumed["sources_read"] == n_inputs - len(finished)
    assert not (out / jr.WORK_DIR).exists()
    got, want = _snapshot(out), _snapshot(uninterrupted)
    got.pop(jr.RESUMED_NAME)
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], f"{rel} differs from the uninterrupted run"


def test_uninterrupted_run_leaves_no_journal(uninterrupted):
    assert not (uninterrupted / jr.WORK_DIR).exists() and not (uninterrupted / jr.RESUMED_NAME).exists()


def test_journal_of_other_settings_is_refused(tmp_path):
    out = tmp_path / "ds"
    jr.open_journal(str(out), {"job": {"max_segment_s": 8.0}}, (str(tmp_path / "none*"),))
    with pytest.raises(jr.JournalError) as e:
        jr.open_journal(str(out), {"job": {"max_segment_s": 10.0}}, (str(tmp_path / "none*"),))
    assert "job.max_segment_s was 8.0, now 10.0" in str(e.value) and str(out / jr.WORK_DIR) in str(e.value)


def test_unfinished_sources_are_read_again(tmp_path):
    """Finished = uri-level dead letter, or a plan of n segments and all n segment entries."""
    out, src = tmp_path / "ds", tmp_path / "src"
    src.mkdir()
    uris = [str(src / n) for n in ("a.wav", "b.wav", "c.wav", "d.wav")]
    for u in uris:
        Path(u).write_bytes(b"x")
    jr.open_journal(str(out), {}, (str(src / "*"),))
    work = out / jr.WORK_DIR
    ha, hb, hc, hd = (jr.uri_hash(u) for u in uris)
    for name in (f"{ha}.plan-2.json", f"{ha}-0000.npz", f"{ha}-0001.dead.json",  # a: finished
                 f"{hb}.plan-2.json", f"{hb}-0000.npz",                          # b: 1 of 2
                 f"{hc}.dead.json",                                              # c: dead at decode
                 f"{hd}-0000.npz.tmp-0badf00d"):                                 # d: a killed write
        (work / name).write_bytes(b"")
    j = jr.open_journal(str(out), {}, (str(src / "*"),))
    assert sorted(j.finished) == [uris[0], uris[2]] and j.n_matched == 4


def test_atomic_write_never_shows_a_partial_file(tmp_path, monkeypatch):
    from apache_beam.io.filesystems import FileSystems

    real_create = FileSystems.create

    class Dies:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError("killed mid-write")

    monkeypatch.setattr(FileSystems, "create", staticmethod(lambda path, *a, **k: Dies(real_create(path))))
    target = tmp_path / "parquet" / "train-00000-of-00001.parquet"
    with pytest.raises(OSError):
        atomic_write(str(target), b"0123456789" * 100)
    assert not target.exists()
    assert [p.name.split(".tmp-")[0] for p in target.parent.iterdir()] == [target.name]


def test_every_writer_writes_to_a_temp_name_first():
    """Shards, dead letters, manifests and codebook artifacts go through sinks.atomic_write (Beam
    FileSystems) or a local temp file + os.replace; no writer in the job code opens a final name."""
    import re

    bad = []
    for path in sorted((ROOT / "tokenmill").rglob("*.py")):
        if "training" in path.parts:
            continue  # trainer checkpoints: tests/test_codec_train.py
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"FileSystems\.create\(|\.write_bytes\(|\.write_text\(", line) and "tmp" not in line:
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)
