"""Every long phase prints the progress line `tokenize`'s decode prints (pipelines/ingest.Progress):
`[label] N <unit>, M min audio, D dead letters, Xx real time (this worker)`, here checked on the
MuLan embedding of `fit-codebook --stream mulan`, its RVQ fit, and tokenize's model stages."""
from __future__ import annotations

import logging
import re
import shutil
import types

import pytest

import beam_runner
from tokenmill.pipelines import ingest

pytestmark = pytest.mark.usefixtures("torch_one_thread")
LINE = r"\[{label}\] {n} {unit}, {min} min audio, {dead} dead letters, \d+x real time \(this worker\)"


def test_progress_line_counts_what_it_was_given(caplog, monkeypatch):
    # ticks at 0 s, 1 s, 7 s (a line: >= 5 s since the last one; its report reads the clock again), report at 9 s
    clock = iter([0.0, 1.0, 7.0, 7.0, 9.0])
    monkeypatch.setattr(ingest, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    p = ingest.Progress("mulan windows", unit="segments")
    with caplog.at_level(logging.INFO, logger="tokenmill"):
        p.tick(audio_s=30.0)
        p.tick(audio_s=60.0)
        p.tick(dead=True)
        p.report()
    lines = [r.getMessage() for r in caplog.records]
    # 90 s of audio in 7 s, then in 9 s: 13x and 10x real time
    assert lines == ["[mulan windows] 3 segments, 1.5 min audio, 1 dead letters, 13x real time (this worker)",
                     "[mulan windows] 3 segments, 1.5 min audio, 1 dead letters, 10x real time (this worker)"]


def test_fit_codebook_mulan_prints_the_embedding_and_fit_progress(real_audio_dir, small_mulan_weights,
                                                                  tmp_path, caplog):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(real_audio_dir / "singularity_through_space.opus", src)  # one 15.0 s segment: 6 windows
    with caplog.at_level(logging.INFO, logger="tokenmill"):
        assert beam_runner.main(["fit-codebook", "--stream", "mulan", "--input", str(src / "*"),
                                 "--output", str(tmp_path / "cb"), "--mulan_path", str(small_mulan_weights),
                                 "--num_clusters", "2", "--num_stages", "2", "--heldout_windows", "0"]) == 0
    text = caplog.text
    assert re.search(LINE.format(label="decode", n=1, unit="files", min=r"0\.2", dead=0), text), text
    assert re.search(LINE.format(label="mulan windows", n=1, unit="segments", min=r"0\.2", dead=0), text), text
    assert "[fit] RVQ stage 1/2" in text and "[fit] RVQ stage 2/2" in text
