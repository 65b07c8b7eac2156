"""Captions are data: the tokenize job reads and joins them itself (pipelines/tokenize.ReadCaptions
as a side input of the Dedupe step), so its serialized graph is the same size for a captions file
of 1 row and of 1,000,000 rows (the launcher only checks the file parses). The join's results are
checked by tests/test_pipeline.py (JSONL) and tests/test_distributed.py (portable runner)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tokenmill.pipelines.options import DEFAULT_SEMANTIC_EXTRACTOR
from tokenmill.errors import UsageError

import beam_runner
from tokenmill.pipelines import options as opts
from tokenmill.pipelines.runner import make_pipeline
from tokenmill.pipelines.tokenize import build_tokenize, check_captions, read_captions
from tokenmill.tokenizers.kmeans import fit_kmeans
from tokenmill.tokenizers.semantic import build_extractor

ROWS = 1_000_000


def write_captions(path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(f'{{"uri": "gs://bucket/audio/{i:07d}.flac", "caption": "caption-{i:07d}: a calm piano piece", '
                     f'"tags": ["piano", "calm"]}}\n' for i in range(n))


@pytest.fixture(scope="module")
def codebook(tmp_path_factory):
    out = tmp_path_factory.mktemp("cb")
    x = np.random.default_rng(0).standard_normal((400, build_extractor(DEFAULT_SEMANTIC_EXTRACTOR).dim)).astype(np.float32)
    fit_kmeans(x, 8, seed=0, kind="semantic").save(out)
    return out


def graph_bytes(captions, codebook) -> bytes:
    from tokenmill.pipelines.handlers import describe_semantic

    args, rest = beam_runner._parser().parse_known_args(
        ["tokenize", "--input", "gs://bucket/audio/*.flac", "--output", "gs://bucket/ds", "--codebook", str(codebook),
         "--acoustic_codec", "none", "--mulan_model", "none", "--num_shards", "2", "--captions", str(captions)])
    cfg = opts.tokenize_config(args)
    semantic_desc, _ = describe_semantic(cfg.semantic, cfg.codebook)
    p = make_pipeline([])
    build_tokenize(p, cfg, semantic_desc=semantic_desc)
    return p.to_runner_api().SerializeToString()


def test_graph_size_does_not_depend_on_the_number_of_captions(tmp_path, codebook):
    """The same path holds 1 row, then 1M rows. Beam's graph is not byte-stable between two builds
    (random ids in Reshuffle and RunInference payloads move its size by a few dozen bytes), so the
    sizes must agree within 1 KiB; the 1M rows' index, which the launcher used to pickle into the
    Dedupe step, pickles to over 50 MB (Beam then bz2-compresses it: 2.8 MB for these repetitive
    rows, far more for real captions)."""
    import pickle

    path = tmp_path / "captions.jsonl"
    write_captions(path, 1)
    g1 = graph_bytes(path, codebook)
    write_captions(path, ROWS)
    gm = graph_bytes(path, codebook)
    assert abs(len(gm) - len(g1)) <= 1024, (len(g1), len(gm))
    index = read_captions(str(path))                    # what ReadCaptions builds on a worker
    assert len(index) == ROWS and len(pickle.dumps(index)) > 50_000_000


def test_the_side_input_is_the_index_the_launcher_used_to_pickle(tmp_path):
    """ReadCaptions runs the same parser on a worker: lookups equal the file's rows. The launcher
    still parses the file once to fail fast, naming the line."""
    path = tmp_path / "captions.jsonl"
    rows = [{"uri": "gs://b/x.flac", "caption": "x", "tags": ["a"]},
            {"file": "dir/y.flac", "caption": "y"}, {"key": "00ff", "caption": "z", "tags": {"mood": "calm"}}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    idx = read_captions(str(path))
    assert idx.lookup(key="aa-0000", uri="gs://b/x.flac").caption == "x"
    assert idx.lookup(key="aa-0000", uri="gs://b/dir/y.flac").caption == "y"
    assert idx.lookup(key="00ff-0001", uri="gs://b/q.flac").tags == ("mood: calm",)
    assert idx.lookup(key="aa-0000", uri="gs://b/q.flac") is None
    assert check_captions(str(path)) == 3
    path.write_text('{"uri": "gs://b/x.flac", "caption": 3}\n')
    with pytest.raises(UsageError, match=r"captions.jsonl:1: 'caption' must be a string"):
        check_captions(str(path))
