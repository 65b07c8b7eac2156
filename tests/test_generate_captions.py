"""`generate --captions CSV --output DIR` as a Beam job: one clip per captioned row, each
byte-identical to generating that caption alone with the seed clip_seed(seed, ytid); a row without
a caption is a dead letter; counts reconcile; `evaluate` then pairs the clips by ytid."""
from __future__ import annotations

import json

import pytest

import beam_runner
from helpers import generate_dataset, save_stages
from tokenmill.training.generate import GenerateConfig, clip_seed, generate_music, load_stages, stage_paths

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_clip_seed_depends_on_seed_and_key_only():
    assert clip_seed(0, "abc") == clip_seed(0, "abc")
    assert len({clip_seed(0, "abc"), clip_seed(1, "abc"), clip_seed(0, "abd")}) == 3
    assert 0 <= clip_seed(5, "x") < 2**63


def test_generate_captions_job(tmp_path):
    from tokenmill.tokenizers.codec import build_codec

    codec = build_codec("soundstream")
    root = save_stages(tmp_path / "ckpt", generate_dataset(codec.describe()))
    csv = tmp_path / "caps.csv"
    csv.write_text("ytid,start_s,end_s,caption,aspect_list\n"
                   "aa,30,30.5,a calm piano piece,\"['piano']\"\n"
                   "bb,0,10,,\"['drums']\"\n"
                   "cc,0,0.3,fast drums,\"['drums']\"\n")
    out = tmp_path / "gen"
    assert beam_runner.main(["generate", "--captions", str(csv), "--checkpoints", str(root), "--output", str(out),
                             "--seed", "3", "--top_k", "50", "--torch_threads", "1"]) == 0
    summary = json.loads((out / "generate.json").read_text())
    assert (summary["rows"], summary["clips"], summary["dead_letters"]) == (3, 2, 1)
    dead = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert [(d["key"], d["stage"]) for d in dead] == [("bb", "generate")] and "no caption" in dead[0]["message"]
    stages = load_stages(stage_paths(root), "cpu")
    for ytid, text, seconds in (("aa", "a calm piano piece", 0.48), ("cc", "fast drums", 0.28)):
        side = json.loads((out / f"{ytid}.json").read_text())
        assert side["seconds"] == seconds and side["seed"] == clip_seed(3, ytid) and side["row"]["ytid"] == ytid
        alone = tmp_path / "alone" / f"{ytid}.wav"
        generate_music(text, stages, GenerateConfig(seconds=seconds, seed=clip_seed(3, ytid), top_k=50), alone,
                       codec=codec)
        assert (out / f"{ytid}.wav").read_bytes() == alone.read_bytes()
    with pytest.raises(SystemExit, match="give --output DIR"):
        beam_runner.main(["generate", "--captions", str(csv), "--checkpoints", str(root)])
