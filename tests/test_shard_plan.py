"""Shard counts sized by the data (schemas/shard_plan.py): the arithmetic against a closed form,
the launch-time listing through a Beam FileSystem (tests/listing_fs.py) against the sizes it
serves, the 280k-hour / 5M-clip corpus of the paper, and the CLI: derived by default, an explicit
--num_shards wins, --into keeps the dataset's layout."""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tokenmill.pipelines.options import DEFAULT_SEMANTIC_EXTRACTOR
from tokenmill.errors import UsageError

import beam_runner
from tokenmill.pipelines import options as opts
from tokenmill.pipelines.ingest import list_inputs
from tokenmill.schemas.shard_plan import MIB, plan_shards, stream_bytes_per_s
from tokenmill.tokenizers import audio
from tokenmill.tokenizers.kmeans import fit_kmeans
from tokenmill.tokenizers.semantic import build_extractor

sys.path.insert(0, str(Path(__file__).parent))
from listing_fs import EXTS, ListingFileSystem, sizes  # noqa: E402

# the built-in models' stream entries, as manifest_entries writes them (only the fields used here)
STREAMS = {"semantic": {"frame_rate_hz": 25.0},
           "acoustic": {"n_q": 12, "frame_rate_hz": 50.0},
           "mulan": {"dim": 128, "stride_s": 1}}


def test_stream_rates_are_the_stored_array_bytes():
    assert stream_bytes_per_s(STREAMS) == {"semantic": 50.0, "acoustic": 1200.0, "mulan_windows": 256.0}


def test_plan_is_the_closed_form_and_order_free():
    by_ext = {".flac": 3_000_000_000, ".mp3": 480_000_000, ".xyz": 16_000}
    audio_s = 3e9 / 100_000 + 4.8e8 / 16_000 + 1.0          # 30,000 + 30,000 + 1 s
    out = audio_s * 1506
    p = plan_shards(by_ext, 7, STREAMS, valid_fraction=0.05, target_shard_mb=8)
    assert (p.num_shards, p.num_valid_shards) == (math.ceil(out * 0.95 / (8 * MIB)), math.ceil(out * 0.05 / (8 * MIB)))
    assert (p.num_shards, p.num_valid_shards) == (11, 1)                 # 85.8e6 B / 8 MiB = 10.2 -> 11
    assert p.est_out_bytes == round(out) and p.input_bytes == 3_480_016_000
    assert plan_shards(dict(reversed(list(by_ext.items()))), 7, STREAMS, valid_fraction=0.05, target_shard_mb=8) == p
    tiny = plan_shards({".wav": 1000}, 1, STREAMS, valid_fraction=0.05)
    assert (tiny.num_shards, tiny.num_valid_shards) == (1, 1)


def test_listing_through_a_filesystem_sums_the_sizes_it_serves():
    ListingFileSystem.n, ListingFileSystem.seed = 20_000, 3
    listing = list_inputs(("tmlist://corpus/*", "tmlist://corpus/clip-000*"))   # overlapping: counted once
    ext, _, size = sizes(20_000, 3)
    assert listing.n_files == 20_000
    want = {}
    for s, x in zip(size.tolist(), ext.tolist()):                        # the slow reference loop
        want[EXTS[x]] = want.get(EXTS[x], 0) + s
    assert listing.bytes_by_ext == want


def test_the_papers_corpus_gets_shards_of_the_target_size():
    """5M clips, 280k hours: the sizes tests/listing_fs.py lists (bench/bench_listing.py lists all
    5M through FileSystems and times it), summed here directly."""
    ext, dur, size = sizes(5_000_000)
    assert abs(dur.sum() / 3600 - 280_000) < 280                       # the corpus is 280k hours (±0.1 %)
    by_ext = {e: int(size[np.isin(ext, [i for i, x in enumerate(EXTS) if x == e])].sum()) for e in set(EXTS)}
    p = plan_shards(by_ext, 5_000_000, STREAMS, valid_fraction=0.05)
    assert abs(p.est_audio_hours / 280_000 - 1) < 0.01                 # the stated rates recover the hours
    # 1.008e9 s x 1,506 B/s = 1.52 TB of arrays: ~5,360 train and ~283 valid shards of 256 MiB
    assert 5_300 <= p.num_shards <= 5_420 and 278 <= p.num_valid_shards <= 286
    assert p.est_out_bytes * 0.95 / p.num_shards <= 256 * MIB          # no shard plans over the target
    assert p.est_out_bytes * 0.95 / p.num_shards > 0.99 * 256 * MIB


def parse(*argv: str):
    p = beam_runner._parser()
    args, _ = p.parse_known_args(["tokenize", "--input", "x/*", "--codebook", "cb", "--output", "out", *argv])
    return args


def test_flags_explicit_counts_win_and_into_keeps_the_layout():
    listing = type("L", (), {"n_files": 2, "bytes_by_ext": {".flac": 10 * 100_000 * 3600}})()  # 10 h of FLAC
    sized = (listing, STREAMS)
    cfg = opts.tokenize_config(parse(), 24_000, sizing=sized)
    want = plan_shards(listing.bytes_by_ext, 2, STREAMS, valid_fraction=0.05)
    assert (cfg.num_shards, cfg.num_valid_shards, cfg.shard_plan) == (1, 1, want.to_json())
    cfg = opts.tokenize_config(parse("--target_shard_mb", "4"), 24_000, sizing=sized)   # 54.2 MB of arrays
    assert (cfg.num_shards, cfg.num_valid_shards) == (13, 1) and cfg.shard_plan["target_shard_mb"] == 4
    cfg = opts.tokenize_config(parse("--target_shard_mb", "4", "--num_shards", "2"), 24_000, sizing=sized)
    assert (cfg.num_shards, cfg.num_valid_shards) == (2, 1)
    cfg = opts.tokenize_config(parse("--num_shards", "2", "--num_valid_shards", "3"), 24_000, sizing=sized)
    assert (cfg.num_shards, cfg.num_valid_shards, cfg.shard_plan) == (2, 3, None)
    layout = {"num_shards": 7, "num_valid_shards": 2, "valid_fraction": 0.1, "formats": ["parquet"]}
    into = parse()
    into.output, into.into = None, "ds"
    cfg = opts.tokenize_config(into, 24_000, layout=layout, sizing=sized)
    assert (cfg.num_shards, cfg.num_valid_shards, cfg.shard_plan) == (7, 2, None)
    into.target_shard_mb = 4.0
    with pytest.raises(UsageError, match="--target_shard_mb applies to a new dataset"):
        opts.tokenize_config(into, 24_000, layout=layout, sizing=sized)
    with pytest.raises(UsageError, match="must be > 0"):
        opts.tokenize_config(parse("--target_shard_mb", "0"), 24_000, sizing=sized)


def test_tokenize_derives_the_count_and_records_the_plan(real_audio_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("pushover_greek.flac", "asc_frontiers.mp3"):
        shutil.copy(real_audio_dir / name, src)
    seg = audio.prepare((src / "pushover_greek.flac").read_bytes(), "x", audio.AudioConfig(target_rates_hz=(16_000,)))[0]
    fit_kmeans(build_extractor(DEFAULT_SEMANTIC_EXTRACTOR).extract(seg.waves[16_000]), 8, seed=0, kind="semantic").save(tmp_path / "cb")
    out = tmp_path / "ds"
    assert beam_runner.main(["tokenize", "--input", str(src / "*"), "--codebook", str(tmp_path / "cb"), "--output",
                             str(out), "--acoustic_codec", "none", "--mulan_model", "none", "--melody_model", "none",
                             "--formats", "parquet",
                             "--target_shard_mb", "0.0005"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    by_ext = {".flac": (src / "pushover_greek.flac").stat().st_size, ".mp3": (src / "asc_frontiers.mp3").stat().st_size}
    want = plan_shards(by_ext, 2, {"semantic": {"frame_rate_hz": 25.0}}, valid_fraction=0.05, target_shard_mb=0.0005)
    assert m["job"]["shard_plan"] == json.loads(json.dumps(want.to_json()))
    assert (m["job"]["num_shards"], m["job"]["num_valid_shards"]) == (want.num_shards, want.num_valid_shards)
    assert want.num_shards > 1
    assert len(list((out / "parquet").glob("train-*.parquet"))) == want.num_shards
