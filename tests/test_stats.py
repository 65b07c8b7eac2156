"""`stats DIR`: counts, hours, dead letters and token usage of a small hand-made dataset, and plots.

The dataset is written with the schema writers (no Beam) and passes `verify`, so the numbers below
are those of a real dataset directory. Tokens (vocab 4 everywhere):

    record  split  uri    s     semantic    acoustic level 1 / level 2          mulan
    a-0     train  a.wav  0.16  [0,0,1,3]   [0,0,0,0,1,1,1,1] / [0,1,2,3,0,1,2,3]  [0,1,2]
    a-1     train  a.wav  0.08  [0,1]       [0,0,0,0] / [3,3,3,3]                  [0,1,3]
    b-0     valid  b.wav  0.12  [3,3,3]     [1,1,1,1,1,1] / [2,2,2,2,2,2]          [0,2,3]
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import beam_runner
from tokenmill.schemas.records import TrackRecord
from tokenmill.schemas.stats import StatsError, compute_stats, dataset_stats, format_stats
from tokenmill.schemas.verify import verify_dataset

from helpers import STREAMS, U16, hand_records, write_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ds(tmp_path) -> Path:
    return write_dataset(tmp_path / "ds")


def entropy_reference(counts: list[int]) -> float:
    """Slow, obviously-correct Shannon entropy in bits."""
    total = sum(counts)
    h = 0.0
    for c in counts:
        if c:
            p = c / total
            h -= p * math.log(p, 2)
    return h


EXPECTED_COUNTS = {  # stream -> [levels][vocab], counted by hand from the module docstring's table
    "semantic": [[3, 2, 0, 4]],
    "acoustic": [[8, 10, 0, 0], [2, 2, 8, 6]],
    "mulan": [[3, 0, 0, 0], [0, 2, 1, 0], [0, 0, 1, 2]],
}


def test_hand_made_dataset_is_valid(ds):
    rep = verify_dataset(str(ds))
    assert rep.ok, rep.problems


def test_counts_hours_splits_and_dead_letters(ds):
    s = dataset_stats(str(ds)).summary
    assert (s["records"], s["sources"], s["captioned"]) == (3, 2, 1)
    assert s["seconds"] == pytest.approx(0.36) and s["hours"] == pytest.approx(0.36 / 3600)
    assert s["splits"]["train"]["records"] == 2 and s["splits"]["train"]["sources"] == 1
    assert s["splits"]["train"]["hours"] == pytest.approx(0.24 / 3600)
    assert (s["splits"]["valid"]["records"], s["splits"]["valid"]["sources"]) == (1, 1)
    assert s["splits"]["valid"]["hours"] == pytest.approx(0.12 / 3600)
    dl = s["dead_letters"]
    assert dl["total"] == 3
    assert dl["by_reason"] == {"duplicate": 1, "undecodable": 2}
    assert dl["by_stage"] == {"decode": 2, "dedupe": 1}
    assert dl["by_error"] == {"DuplicateSource": 1, "UndecodableAudio": 2}
    assert dl["rows"] == [
        {"reason": "duplicate", "stage": "dedupe", "error": "DuplicateSource", "count": 1},
        {"reason": "undecodable", "stage": "decode", "error": "UndecodableAudio", "count": 2}]


def test_token_usage_per_stream_and_level(ds):
    st = dataset_stats(str(ds))
    assert list(st.counts) == ["semantic", "acoustic", "mulan"]
    for stream, want in EXPECTED_COUNTS.items():
        assert st.counts[stream].tolist() == want, stream
        info = st.summary["streams"][stream]
        assert info["tokens"] == sum(map(sum, want)) and info["levels"] == len(want)
        for row, counts in zip(info["per_level"], want):
            h = entropy_reference(counts)
            assert row["tokens"] == sum(counts)
            assert row["used"] == sum(c > 0 for c in counts) and row["vocab"] == 4
            assert row["dead_codes"] == sum(c == 0 for c in counts)
            assert row["entropy_bits"] == pytest.approx(h, abs=1e-12)
            assert row["entropy_fraction"] == pytest.approx(h / 2.0, abs=1e-12)  # log2(4) = 2
    sem = st.summary["streams"]["semantic"]["per_level"][0]
    assert (sem["tokens"], sem["used"], sem["dead_codes"]) == (9, 3, 1)
    assert sem["entropy_bits"] == pytest.approx(1.5304930567574826)  # -(3/9 lg 3/9 + 2/9 lg 2/9 + 4/9 lg 4/9)
    assert st.summary["streams"]["mulan"]["per_level"][0]["entropy_bits"] == 0.0  # stage 1: always id 0
    assert st.summary["streams"]["acoustic"]["level_name"] == "level"
    assert st.summary["streams"]["mulan"]["level_name"] == "stage"
    assert sorted(st.durations_s.tolist()) == pytest.approx([0.08, 0.12, 0.16])


def test_parquet_and_webdataset_give_the_same_stats(ds):
    a = dataset_stats(str(ds), format="parquet")
    b = dataset_stats(str(ds), format="webdataset")
    assert a.summary == b.summary
    assert all(np.array_equal(a.counts[k], b.counts[k]) for k in a.counts)


def test_ids_outside_the_vocab_are_refused():
    rec = hand_records()[0]
    bad = TrackRecord(**{**rec.__dict__, "semantic": np.array([0, 9, 1, 1], U16)})
    with pytest.raises(StatsError, match=f"record {rec.key}: semantic id 9 >= vocab_size 4.*verify"):
        compute_stats([bad], STREAMS)


def test_table_is_readable(ds):
    text = format_stats(dataset_stats(str(ds)).summary)
    assert "3 records (segments) from 2 sources" in text
    lines = text.splitlines()
    sem = next(line for line in lines if line.split()[:1] == ["semantic"])
    assert sem.split() == ["semantic", "-", "9", "3/4", "1.530", "0.765", "1"]
    assert any(line.split()[:3] == ["acoustic", "2", "18"] for line in lines)
    assert any(line.split() == ["undecodable", "decode", "UndecodableAudio", "2"] for line in lines)


def test_cli_prints_the_table_json_and_plots(ds, tmp_path, capsys):
    assert beam_runner.main(["stats", str(ds)]) == 0
    out = capsys.readouterr().out
    assert "tokenmill stats" in out and "dead letters  3" in out and "mulan" in out
    assert beam_runner.main(["stats", str(ds), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == json.loads(json.dumps(dataset_stats(str(ds)).summary))
    assert got["streams"]["acoustic"]["per_level"][0]["dead_codes"] == 2
    plots = tmp_path / "plots"
    assert beam_runner.main(["stats", str(ds), "--plots", str(plots)]) == 0
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["duration_hist.png", "token_usage_acoustic.png", "token_usage_mulan.png",
                     "token_usage_semantic.png"]
    for p in plots.iterdir():
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, p


def test_cli_names_a_missing_dataset(tmp_path):
    with pytest.raises(SystemExit, match=r"stats: .*manifest.json not found"):
        beam_runner.main(["stats", str(tmp_path / "nope")])


def test_help_explains_what_is_printed():
    out = subprocess.run([sys.executable, str(ROOT / "beam_runner.py"), "stats", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for text in ("--plots", "--json", "dead codes", "entropy", "per RVQ level", "split"):
        assert text in out


# ---- plots -----------------------------------------------------------------------------------

def _rgb(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    return (imread(path)[..., :3] * 255).round().astype(int)


def test_token_usage_plot_returns_its_data_and_draws_it(tmp_path):
    from tokenmill.inspect_plots import DPI, plot_token_usage

    counts = np.array(EXPECTED_COUNTS["acoustic"])
    out = tmp_path / "u.png"
    got = plot_token_usage(counts, "acoustic", out, "level")
    assert got["sorted_counts"].tolist() == [[10, 8, 0, 0], [8, 6, 2, 2]]
    img = _rgb(out)
    assert img.shape[1] == round(3.2 * 2 * DPI)  # two panels side by side
    blue = np.all(np.abs(img - [31, 119, 180]) < 30, axis=-1)  # the line colour (tab:blue)
    assert blue.sum() > 50
    assert blue[:, : img.shape[1] // 2].any() and blue[:, img.shape[1] // 2:].any()  # one per panel


def test_duration_hist(tmp_path):
    from tokenmill.inspect_plots import plot_duration_hist

    got = plot_duration_hist(np.array([0.08, 0.12, 0.16]), tmp_path / "d.png", bins=4)
    assert got["counts"].tolist() == [1, 0, 1, 1] and got["edges_s"][[0, -1]].tolist() == pytest.approx([0.08, 0.16])
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


def test_codebook_usage_before_after(tmp_path):
    from tokenmill.inspect_plots import plot_codebook_usage_before_after

    before = np.array([50, 0, 0, 30, 0, 20])  # 3 dead codes before the rebuild
    after = np.array([[10, 12, 8, 20, 15, 5], [5, 5, 5, 5, 5, 5]])  # [levels, vocab]: summed
    out = tmp_path / "ba.png"
    got = plot_codebook_usage_before_after(before, after, out)
    assert got["ids"].tolist() == [0, 1, 2, 3, 4, 5]
    assert got["before"].tolist() == before.tolist()
    assert got["after"].tolist() == [15, 17, 13, 25, 20, 10]
    assert got["before_sorted"].tolist() == [50, 30, 20, 0, 0, 0]
    assert got["after_sorted"].tolist() == [25, 20, 17, 15, 13, 10]
    img = _rgb(out)
    assert np.all(np.abs(img - [31, 119, 180]) < 30, axis=-1).sum() > 20  # "after" (tab:blue) drawn
    assert np.all(np.abs(img - [127, 127, 127]) < 12, axis=-1).sum() > 20  # "before" (tab:gray) drawn
    with pytest.raises(ValueError, match="vocab 6 but after_counts has 4"):
        plot_codebook_usage_before_after(before, np.ones(4, int), out)
    with pytest.raises(ValueError, match="non-negative integer counts"):
        plot_codebook_usage_before_after(before, -after, out)
