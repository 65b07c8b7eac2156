"""The built-in melody model, its trainer's loss and batches, and the retrieval metric."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from tokenmill import plugins
from tokenmill.eval.melody_retrieval import ranks, retrieval_metrics
from tokenmill.tokenizers import melody, melody_builtin as mb
from tokenmill.training import melody_train as mt

SR = 16000


def tone(midis, seconds_each=0.5, harmonics=1, octave=0, sr=SR):
    """float32 wave: each MIDI note for seconds_each, `harmonics` partials with 1/k amplitudes."""
    out = []
    for m in midis:
        t = np.arange(int(sr * seconds_each)) / sr
        f = 440.0 * 2 ** ((m + octave - 69) / 12)
        env = np.minimum(1.0, np.minimum(t / 0.02, (t[-1] - t + 1e-9) / 0.04))
        out.append(env * sum(np.sin(2 * np.pi * f * k * t) / k for k in range(1, harmonics + 1)) * 0.2)
    return np.concatenate(out).astype(np.float32)


# ---- retrieval metric -----------------------------------------------------------------------------

def test_retrieval_metrics_hand_computed():
    cand = np.eye(4)
    queries = np.array([[1.0, 0, 0, 0],        # own = 0: best → rank 1
                        [0.9, 0.5, 0, 0],      # own = 1 (0.5); candidate 0 scores 0.9 → rank 2
                        [0.3, 0.2, 0.1, 0.4],  # own = 2 (0.1); 0, 1, 3 score higher → rank 4
                        [0, 0, 0.5, 0.5]])     # own = 3 (0.5); tie with 2 counts in its favour → rank 1
    correct = np.array([0, 1, 2, 3])
    assert ranks(queries, cand, correct).tolist() == [1, 2, 4, 1]
    got = retrieval_metrics(queries, cand, correct, ks=(1, 2))
    assert got["R@1"] == 0.5 and got["R@2"] == 0.75 and got["median_rank"] == 1.5
    assert got["chance_R@1"] == 0.25 and got["chance_R@2"] == 0.5 and got["chance_median_rank"] == 2.5
    assert retrieval_metrics(queries, cand, correct)["chance_R@10"] == 1.0  # k > C


def test_retrieval_refuses_mismatched_shapes():
    with pytest.raises(Exception, match="candidates"):
        ranks(np.zeros((2, 3)), np.zeros((4, 5)), np.zeros(2))


# ---- triplet loss --------------------------------------------------------------------------------

def slow_semihard(emb: np.ndarray, labels: list[int], margin: float) -> float:
    n = len(labels)
    d = [[float(((emb[i] - emb[j]) ** 2).sum()) for j in range(n)] for i in range(n)]
    terms = []
    for a in range(n):
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            negs = [d[a][k] for k in range(n) if labels[k] != labels[a]]
            farther = [x for x in negs if x > d[a][p]]
            dn = min(farther) if farther else max(negs)
            terms.append(max(d[a][p] - dn + margin, 0.0))
    return sum(terms) / len(terms)


def test_semihard_triplet_loss_matches_a_slow_loop_on_hand_set_embeddings():
    ang = np.array([0.0, 0.3, 1.2, 1.0, 2.5, 2.4, 0.2])  # points on a circle
    emb = np.stack([np.cos(ang), np.sin(ang)], 1)
    labels = [0, 0, 1, 1, 2, 2, 2]
    # anchor 0, positive 1: d_ap = 2 - 2cos(0.3) = 0.1787; negatives farther: min is to 3 (2-2cos 1.0)
    for margin in (0.2, 1.0, 3.0):
        got = float(mt.semihard_triplet_loss(torch.tensor(emb), torch.tensor(labels), margin))
        assert got == pytest.approx(slow_semihard(emb, labels, margin), rel=1e-9)
    # class 2's point 6 sits inside class 0: for (6, 4) no negative is farther → the farthest one is used
    assert float(mt.semihard_triplet_loss(torch.tensor(emb), torch.tensor(labels), 0.2)) > 0


# ---- the model -----------------------------------------------------------------------------------

def small_net(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = mb.MelodyNetConfig(**{"d_model": 32, "heads": 2, "layers": 2, "n_mels": 48, **kw})
    return mb.MelodyNet(cfg).eval()


def numpy_forward(net: mb.MelodyNet, wave: np.ndarray) -> np.ndarray:
    """Slow reference of MelodyNet.embed_wave for one window, from the state dict."""
    cfg = net.cfg
    sd = {k: v.detach().double().numpy() for k, v in net.state_dict().items()}
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)
    frames = np.stack([wave[i * cfg.hop: i * cfg.hop + cfg.n_fft] * win for i in range(cfg.window_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [T, F]
    mel = np.log10(net.logmel.fb.double().numpy() @ power.T + 1e-12)  # [M, T]
    mel = np.maximum(mel, mel.max() - cfg.range_decades)
    mel = (mel - mel.mean()) / (mel.std() + 1e-3)
    tokens = [mel[:, p * cfg.patch_frames:(p + 1) * cfg.patch_frames].T.reshape(-1) for p in range(cfg.n_patches)]
    h = np.stack([sd["cls"][0, 0]] + [sd["patch.weight"] @ t + sd["patch.bias"] for t in tokens]) + sd["pos"][0]

    def ln(x, pre):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * sd[pre + ".weight"] + sd[pre + ".bias"]

    def lin(x, pre):
        return x @ sd[pre + ".weight"].T + sd[pre + ".bias"]

    dh = cfg.d_model // cfg.heads
    for i in range(cfg.layers):
        b = f"blocks.{i}"
        qkv = lin(ln(h, b + ".ln1"), b + ".qkv")
        heads = []
        for j in range(cfg.heads):
            q, k, v = (qkv[:, s * cfg.d_model + j * dh: s * cfg.d_model + (j + 1) * dh] for s in range(3))
            a = q @ k.T / math.sqrt(dh)
            a = np.exp(a - a.max(1, keepdims=True))
            heads.append((a / a.sum(1, keepdims=True)) @ v)
        h = h + lin(np.concatenate(heads, 1), b + ".proj")
        u = lin(ln(h, b + ".ln2"), b + ".fc1")
        u = 0.5 * u * (1 + np.vectorize(math.erf)(u / math.sqrt(2)))
        h = h + lin(u, b + ".fc2")
    h = ln(h, "ln")
    e = lin(np.concatenate([h[0], h[1:].mean(0)]), "head")
    return e / np.linalg.norm(e)


def test_forward_matches_numpy_reference_and_is_batch_invariant(tmp_path):
    net = small_net()
    path = mb.save_melody_net(net, tmp_path / "m.safetensors")
    model = melody.build_melody("builtin", path=str(path), batch_size=3)
    rng = np.random.default_rng(0)
    wave = np.concatenate([tone([60, 62, 64, 65, 67, 69, 71, 72], harmonics=3),
                           0.01 * rng.standard_normal(SR).astype(np.float32)])  # 5 s → 2 windows
    alone = model.embed_windows(wave)
    others = [tone([50, 55, 57], 1.5), wave, tone([70] * 12, 0.5, 5)]
    batched = model.embed_windows_batch(others)[1]  # its windows share batches with the others'
    np.testing.assert_allclose(batched, alone, atol=2e-6)
    for w in range(2):
        np.testing.assert_allclose(alone[w], numpy_forward(model.net, wave[w * SR: w * SR + 4 * SR]), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-6)
    assert model.weights_sha256 == __import__("hashlib").sha256(path.read_bytes()).hexdigest()


def test_loading_errors_name_the_file(tmp_path):
    with pytest.raises(melody.MelodyError, match="no weights file"):
        melody.build_melody("builtin", path=str(tmp_path / "none.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(melody.MelodyError, match="bad.safetensors"):
        melody.build_melody("builtin", path=str(bad))
    with pytest.raises(melody.MelodyError, match="unknown option"):
        melody.build_melody("builtin", nonsense=1)
    assert "builtin" in plugins.names("melody")


needs_packaged = pytest.mark.skipif(not mb.DEFAULT_WEIGHTS.is_file(), reason="packaged melody weights not built")


@needs_packaged
def test_packaged_weights_are_deterministic_and_batch_invariant():
    model = melody.build_melody("builtin")
    wave = tone([67, 67, 69, 67, 72, 71, 67, 67, 69, 67], 0.45, harmonics=4)
    a = model.embed_windows(wave)
    b = model.embed_windows_batch([tone([40, 45], 3.0), wave, tone([80], 6.0)])[1]
    np.testing.assert_allclose(a, b, atol=2e-6)
    np.testing.assert_array_equal(a, model.embed_windows(wave))


@needs_packaged
def test_packaged_weights_prefer_the_same_tune_on_another_sound_over_its_transposition():
    model = melody.build_melody("builtin")
    tune = [60, 62, 64, 65, 67, 65, 64, 62]
    hum = model.embed_windows(tone(tune, 0.5, harmonics=1))[0]  # a sine "hum"
    saw = model.embed_windows(tone(tune, 0.5, harmonics=8, octave=12))[0]  # a bright saw, an octave up
    up = model.embed_windows(tone([m + 3 for m in tune], 0.5, harmonics=8, octave=12))[0]
    assert float(hum @ saw) > float(hum @ up)


@needs_packaged
def test_packaged_weights_come_with_their_packaged_rvq_and_other_weights_do_not(tmp_path):
    import shutil

    from tokenmill.tokenizers import melody_tokens
    from tokenmill.tokenizers.rvq import RVQCodebook

    model = melody.build_melody("builtin")
    assert model.default_codebook == mb.DEFAULT_RVQ
    rvq = melody_tokens.load_codebook_for(model)  # checked against the packaged weights' sha256
    assert (rvq.n_stages, rvq.k, rvq.dim, rvq.kind) == (24, 512, 192, "melody")
    assert rvq.id == RVQCodebook.load(mb.DEFAULT_RVQ).id
    assert rvq.card["sources"]["melody"]["weights_sha256"] == model.weights_sha256
    w16 = model.embed_windows(tone([60, 64, 67, 72] * 3, 0.5, harmonics=3)).astype(np.float16)
    np.testing.assert_array_equal(melody_tokens.window_tokens(w16, rvq), rvq.encode(w16.astype(np.float32)))
    other = tmp_path / "melody-other.safetensors"  # same bytes, another file: not the packaged weights
    shutil.copy(mb.DEFAULT_WEIGHTS, other)
    copied = melody.build_melody("builtin", path=str(other))
    assert copied.default_codebook is None and copied.weights_sha256 == model.weights_sha256
    with pytest.raises(melody.MelodyError, match="no packaged RVQ codebook; fit one"):
        melody_tokens.load_codebook_for(copied)
    assert melody_tokens.load_codebook_for(copied, mb.DEFAULT_RVQ).id == rvq.id  # given explicitly: fine


# ---- the trainer ---------------------------------------------------------------------------------

def tiny_pairs(root, n_groups=3):
    """index.jsonl + int16 [V, 64000] views: each group = a tune and its +2 transposition."""
    rng = np.random.default_rng(1)
    lines = []
    for g in range(n_groups):
        tune = list(rng.integers(55, 75, size=8))
        for tr in (0, 2):
            cls = f"g{g}-t{tr}"
            views = [tone([m + tr for m in tune], 0.5, h) for h in (1, 3, 6)]
            (root / "renders").mkdir(parents=True, exist_ok=True)
            np.save(root / "renders" / f"{cls}.npy", (np.stack(views) * 32767).astype(np.int16))
            kinds = [{"kind": "hum-sine"}, {"kind": "solo"}, {"kind": "solo"}]
            (root / "renders" / f"{cls}.json").write_text(json.dumps({"views": kinds}))
            lines.append({"class": cls, "tune": f"t{g}", "split": "heldout" if g == 0 else "train",
                          "transpose": tr, "start_s": 0, "n_views": 3, "file": f"renders/{cls}.npy"})
    (root / "index.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def trainer_args(pairs, out, steps):
    ap = argparse.ArgumentParser()
    mt.add_args(ap)
    return ap.parse_args(["--pairs", str(pairs), "--output", str(out), "--steps", str(steps), "--groups", "2",
                          "--views", "2", "--d_model", "16", "--layers", "1", "--heads", "2", "--n_mels", "32",
                          "--eval_every", "2", "--ckpt_every", "1", "--warmup", "1"])


def test_trainer_loss_matches_the_slow_triplet_loss_and_resume_is_exact(tmp_path):
    tiny_pairs(tmp_path / "pairs")
    logs = []
    state = mt.run(trainer_args(tmp_path / "pairs", tmp_path / "a", 2), log=logs.append)
    assert [h["step"] for h in state["history"]] == [1, 2] and "R@1" in state["history"][1]
    # step 0's loss from scratch: the same initial net, batch and dropout seed, then the slow loss
    args = trainer_args(tmp_path / "pairs", tmp_path / "a", 2)
    cfg = mt.MelodyTrainConfig(seed=0, steps=2, groups=2, views=2, warmup=1, ckpt_every=1, eval_every=2)
    torch.manual_seed(cfg.seed)
    net = mb.MelodyNet(mb.MelodyNetConfig(d_model=16, layers=1, heads=2, n_mels=args.n_mels))
    data = mt.PairData(tmp_path / "pairs", "train", net, tmp_path / "a" / "cache")
    x, y = mt.batch_for_step(data, 0, cfg)
    assert sorted(set(y.tolist())) == list(range(4)) and len(y) == 8  # both groups, both transpositions
    torch.manual_seed(cfg.seed * 1_000_003 + 0)
    net.train()
    with torch.no_grad():
        emb = net.embed_mel(torch.from_numpy(x)).double().numpy()
    assert state["history"][0]["loss"] == pytest.approx(slow_semihard(emb, y.tolist(), cfg.margin), abs=1e-5)
    # one step, stop, resume to two: the same weights as the straight run
    mt.run(trainer_args(tmp_path / "pairs", tmp_path / "b", 1), log=logs.append)
    mt.run(trainer_args(tmp_path / "pairs", tmp_path / "b", 2), log=logs.append)
    wa, _ = mb.load_melody_net(tmp_path / "a" / mt.MODEL_FILE)
    wb, _ = mb.load_melody_net(tmp_path / "b" / mt.MODEL_FILE)
    for (k, va), vb in zip(wa.state_dict().items(), wb.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
    ex = trainer_args(tmp_path / "pairs", tmp_path / "a", 2)
    ex.export = tmp_path / "w.safetensors"
    mt.run(ex, log=logs.append)
    assert melody.build_melody("builtin", path=str(ex.export)).cfg.d_model == 16


# ---- the pairs recipe's pure parts (no FluidSynth) -----------------------------------------------

def test_pairs_recipe_notes_hum_and_split():
    mp = pytest.importorskip("scripts.corpus.melody_pairs")
    tune = {"id": "x#1", "notes": [(0.0, 2.0, 60), (2.0, 1.0, 64), (3.0, 4.0, 67), (7.0, 1.0, 72)]}
    # 0.5 s per quarter: the segment from 2 s holds the G clipped to its start (1.5–3.5 s) and the C (3.5 s)
    assert mp.segment_notes(tune, 0.5, 2, 2) == [[0.0, 1.5, 69], [1.5, 0.5, 74]]
    assert mp.segment_notes(tune, 0.5, 0, 0)[:2] == [[0.0, 1.0, 60], [1.0, 0.5, 64]]
    hum = mp.sine_hum([(0.0, 1.0, 69)], SR, mp.rng_for("a"), 0)
    f = np.argmax(np.abs(np.fft.rfft(hum * np.hanning(SR)))) * 1.0  # 1 Hz bins
    assert abs(1200 * np.log2(f / 440.0)) < 45  # detune ≤ 30 cents plus vibrato and bin width
    assert mp.is_heldout("x#1", 25) == mp.is_heldout("x#1", 25)
    assert sum(mp.is_heldout(f"t#{i}", 25) for i in range(400)) in range(70, 131)
