"""bench/plan.py's capacity_plan against a hand computation for 100 audio-hours of FLAC."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from tokenmill.schemas.shard_plan import plan_shards

ROOT = Path(__file__).resolve().parents[1]


def load_plan():
    spec = importlib.util.spec_from_file_location("bench_plan", ROOT / "bench" / "plan.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_plan"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def test_plan_arithmetic_by_hand():
    plan = load_plan()
    p = plan.capacity_plan(100, mix={".flac": 1.0}, cpu_hour_usd=0.5, gb_month_usd=0.1)
    s = p["sets"]["built-in"]
    w = s["worker_hours"]
    # worker-hours = hours / (x real time per thread), with the README's measured rates
    assert w["decode"] == pytest.approx(100 / 1070)             # bench_frontend FLAC
    assert w["acoustic:soundstream"] == pytest.approx(100 / 46)  # bench_codec_quality encode
    assert w["semantic:melodic"] == pytest.approx(100 / 263)     # bench_semantic_invariance
    assert w["mulan:mulan"] == pytest.approx(100 / 365)          # bench_window_batching, 200 s segments
    assert w["melody:builtin"] == pytest.approx(100 / 741)       # the same run
    assert w["beam+io"] == pytest.approx(0.009 * 100 / 46)
    total = 100 / 1070 + 100 / 46 + 100 / 263 + 100 / 365 + 100 / 741 + 0.009 * 100 / 46
    assert s["total_worker_hours"] == pytest.approx(total)
    assert s["bound_by"] == "acoustic:soundstream"
    assert s["speedup_if_bound_stage_were_free"] == pytest.approx(total / (total - 100 / 46))
    assert s["cost_usd"]["compute"] == pytest.approx(0.5 * total)
    # FLOPs scaling: EnCodec runs at soundstream's rate x (0.531 / 2.508) GFLOP per audio second
    assert p["sets"]["large"]["worker_hours"]["acoustic:encodec"] == pytest.approx(100 / (46 * 0.531 / 2.508), rel=1e-3)
    # shard counts are schemas/shard_plan's for the same listing (100 h of FLAC in 201.6 s clips)
    n_files = math.ceil(100 * 3600 / 201.6)
    streams = {"semantic": {"frame_rate_hz": 25}, "acoustic": {"n_q": 12, "frame_rate_hz": 50},
               "mulan": {"dim": 128, "stride_s": 1.0}, "melody": {"dim": 192, "n_stages": 24, "stride_s": 1.0}}
    ref = plan_shards({".flac": 100 * 3600 * 100_000}, n_files, streams, valid_fraction=0.05)
    assert s["shard_plan"] == ref.to_json()
    # journal: (50 + 1200 + 256 + 384 + 48) B per audio second, uncompressed (melody: 192 float16 + 24 uint16)
    assert s["journal_bytes"] == pytest.approx(1938 * 100 * 3600)
    # written Parquet: semantic 0.63 x 31.25 B/s, acoustic 0.97 x 750 B/s, windows 0.89 x 256 B/s + 0.8 kB/h,
    # melody 1.07 x its raw 432 B/s (bench_bytes, small corpus)
    written = (0.63 * 31.25 + 0.97 * 750 + 0.89 * 256 + 1.07 * 432) * 360_000 + 0.8 * 1000 * 100
    assert s["written_bytes"] == pytest.approx(written)
    assert s["cost_usd"]["storage_per_month"] == pytest.approx(written / 1e9 * 0.1)
    assert p["downstream"]["memorization_worker_hours"] == pytest.approx(660 * 100 * 3600 * 25 / 25e9)


def test_plan_cli_json_and_bad_mix(capsys):
    plan = load_plan()
    plan.main(["--hours", "10", "--json", "--gpu_x_thread", "20"])
    p = json.loads(capsys.readouterr().out)
    s = p["sets"]["large"]
    neural = sum(h for k, h in s["worker_hours"].items() if k.split(":")[-1] in plan.NEURAL)
    assert s["gpu_hours"] == pytest.approx(neural / 20)
    assert s["cpu_hours"] + neural == pytest.approx(s["total_worker_hours"])
    with pytest.raises(SystemExit):
        plan.main(["--mix", ".mp3=0.5"])
    assert "summing to 1" in capsys.readouterr().err
