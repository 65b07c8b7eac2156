"""`memorization --generated` on planted copies: nothing is trained, the "generated" set is made
from the training set itself.

Training set: 24 records of 20 s (500 frames) over 256 ids with random centroids in 8-d. Each
record plays from its own palette of 12 ids in runs (as music reuses a few sounds in a stretch), so
5 s windows of different records have different histograms. Planted into the generated set:

* exact copies of training windows at random offsets (recall must be 100 %, at the right key
  and offset);
* near copies: k of the 125 tokens replaced by random ids, k = 1 … 60 (approximate recall as a
  function of k, which must not rise with k and is 100 % at k = 1);
* shuffled controls: windows drawn from the whole training set's tokens shuffled together (the
  corpus' unigram distribution without its local structure): no exact and no approximate match;
* permuted windows: a training window's own tokens in another order. The OT cost compares
  histograms, so it cannot tell them from a copy: approximate matches, never exact ones (the
  README says so).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_token_dataset

import beam_runner
from tokenmill.schemas.records import TrackRecord, make_key
from tokenmill.tokenizers.kmeans import Codebook

K, W, FRAMES, N_REC = 256, 125, 500, 24
KS = (1, 10, 40, 80, 110, 125)
STREAMS = {"semantic": {"sample_rate_hz": 16000, "hop_samples": 640, "frame_rate_hz": 25.0, "vocab_size": K}}


def _records(rng) -> list[TrackRecord]:
    out = []
    for r in range(N_REC):
        palette = rng.choice(K, 12, replace=False)
        runs = rng.choice(palette, FRAMES // 5 + 1)
        sem = np.repeat(runs, 5)[:FRAMES].astype(np.uint16)
        out.append(TrackRecord(key=make_key(f"{r + 1:016x}", 0), uri=f"/in/track{r}.wav", segment=0, start_s=0.0,
                               duration_s=FRAMES / 25, source_sample_rate=48000, source_channels=1, split="train",
                               semantic=sem))
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(2024)
    cb_path = Codebook(rng.normal(size=(K, 8)).astype(np.float32), card={}).save(tmp / "codebooks")
    cb = Codebook.load(cb_path)
    recs = _records(rng)
    root = write_token_dataset(tmp / "ds", recs, streams=STREAMS, codebooks={"semantic": cb.id},
                               tokenizers={"semantic": {"codebook_id": cb.id}}, job={"codebook": str(cb_path)})
    gen = tmp / "generated"
    gen.mkdir()
    truth = {}

    def plant(name, tokens, src=None):
        np.save(gen / f"{name}.npy", np.asarray(tokens, np.uint16))
        truth[f"{name}#0"] = src

    def window(i):
        r, off = int(rng.integers(N_REC)), int(rng.integers(FRAMES - W + 1))
        return recs[r], off, recs[r].semantic[off:off + W].copy()

    for i in range(8):
        rec, off, win = window(i)
        plant(f"exact{i}", win, (rec.key, off))
    for k in KS:
        for i in range(8):
            rec, off, win = window(i)
            pos = rng.choice(W, k, replace=False)
            win[pos] = rng.integers(0, K, k)
            plant(f"near{k:03d}_{i}", win, (rec.key, off))
    pool = rng.permutation(np.concatenate([r.semantic for r in recs]))
    for i in range(8):
        plant(f"shuffled{i}", pool[i * W:(i + 1) * W])
    for i in range(4):
        rec, off, win = window(i)
        plant(f"permuted{i}", rng.permutation(win), (rec.key, off))
    # a generate sidecar (semantic_tokens [batch][frames]) holding one more exact copy
    rec, off, win = window(0)
    (gen / "song.json").write_text(json.dumps({"wavs": ["song.wav"], "codebooks": {"semantic": cb.id},
                                               "semantic_tokens": [win.tolist()]}))
    truth["song#0"] = (rec.key, off)
    out = tmp / "report"
    assert beam_runner.main(["memorization", "--generated", str(gen), "--dataset", str(root), "--output", str(out),
                             "--negatives", "600", "--negative_windows", "96", "--max_fpr", "0.002",
                             "--seed", "1"]) == 0
    return {"report": json.loads((out / "memorization.json").read_text()), "truth": truth, "out": out, "cb": cb,
            "root": root, "tmp": tmp}


def _by_sequence(rep):
    return {w["sequence"]: w for w in rep["windows_with_hits"]}


def test_exact_copies_are_all_found_at_their_key_and_offset(planted):
    rep, truth = planted["report"], planted["truth"]
    hits = _by_sequence(rep)
    for sid in [s for s in truth if s.startswith(("exact", "song"))]:
        w = hits[sid]
        assert w["exact"] and w["approximate"]
        top = w["nearest"][0]
        assert top["exact"] and top["cost"] == 0.0
        assert (top["key"], round(top["offset_s"] * 25)) == truth[sid]
    assert rep["overall"]["windows"] == len(truth)  # one 125-frame window per planted sequence
    assert rep["scan"]["records"] == N_REC and rep["scan"]["windows_hashed"] == N_REC * (FRAMES - W + 1)


def test_approximate_recall_falls_with_substitutions_and_controls_never_match(planted):
    rep, truth = planted["report"], planted["truth"]
    hits = _by_sequence(rep)
    recall = {k: np.mean([hits.get(f"near{k:03d}_{i}#0", {}).get("approximate", False) for i in range(8)])
              for k in KS}
    assert recall[1] == 1.0
    assert all(recall[a] >= recall[b] for a, b in zip(KS, KS[1:]))
    assert recall[125] == 0.0  # measured: 1.0 up to k = 80, 0.0 from k = 110 (README)
    for k in KS[:2]:  # a near copy is never an exact one, and it is found at its source (within a run of
        for i in range(8):  # 5 frames: a shifted window has almost the same histogram)
            w = hits[f"near{k:03d}_{i}#0"]
            key, off = truth[f"near{k:03d}_{i}#0"]
            assert not w["exact"] and w["nearest"][0]["key"] == key
            assert abs(round(w["nearest"][0]["offset_s"] * 25) - off) <= 5
    for i in range(8):
        w = hits.get(f"shuffled{i}#0")
        assert w is None or not (w["exact"] or w["approximate"])
    for i in range(4):  # order-blind: a permutation has the copy's histogram
        w = hits[f"permuted{i}#0"]
        assert w["approximate"] and not w["exact"]
    tau = rep["tau"]
    assert tau["negatives"] == 600 and tau["false_positives"] <= 1 and tau["value"] > 0
    assert (planted["out"] / "cost_hist.png").read_bytes()[:4] == b"\x89PNG"
    print({k: float(v) for k, v in recall.items()})


def test_sidecars_of_another_codebook_or_without_tokens_are_refused(planted, tmp_path):
    gen = tmp_path / "g"
    gen.mkdir()
    (gen / "x.json").write_text(json.dumps({"wavs": ["x.wav"], "codebooks": {"semantic": "semantic-000000000000"},
                                            "semantic_tokens": [[1] * 200]}))
    args = ["memorization", "--generated", str(gen), "--dataset", str(planted["root"]), "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="semantic-000000000000 but the dataset uses"):
        beam_runner.main(args)
    (gen / "x.json").write_text(json.dumps({"wavs": ["x.wav"], "text": "old"}))
    with pytest.raises(SystemExit, match="without semantic_tokens"):
        beam_runner.main(args)
