"""The stage Transformer: parameter count of the paper preset, causality, relative positions,
KV-cache decoding equal to a full forward pass, overfitting a tiny set, seeded sampling."""

import pytest
import torch

from tokenmill.training.model import Transformer, TransformerConfig, lm_loss, preset, sample_next

VOCAB = 48


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is ~40× faster than two on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_model(seed=0, vocab=VOCAB, std=0.1, **overrides):
    """A tiny-preset model in eval mode whose weights (std 0.1, not the 0.02 init) give O(1) logits,
    so float differences are not hidden by small values."""
    torch.manual_seed(seed)
    model = Transformer(preset("tiny", vocab, **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, std, generator=torch.Generator().manual_seed(seed + p.numel()))
    return model


def tokens(seed, shape, vocab=VOCAB):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def test_paper_preset_has_430M_parameters_counted_on_the_meta_device():
    # Vocabulary assumption (paper): the semantic stage sees 1024 semantic ids + 12 × 1024 MuLan ids.
    vocab = 1024 + 12 * 1024
    with torch.device("meta"):
        model = Transformer(preset("paper", vocab))
    assert all(p.is_meta for p in model.parameters())  # nothing allocated
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_ff, cfg.dropout) == (24, 16, 1024, 4096, 0.1)
    d, ff = 1024, 4096
    per_layer = 4 * d * d + 3 * d * ff + 2 * d  # q, k, v, out; gated FF (wi_0, wi_1, wo); two RMSNorms
    assert model.num_parameters() == 24 * per_layer + d + 2 * vocab * d == 429_966_336  # ≈ the paper's 430M
    # the coarse stage adds 4 × 1024 acoustic ids: 438M
    with torch.device("meta"):
        assert Transformer(preset("paper", vocab + 4 * 1024)).num_parameters() == 438_354_944


def test_future_tokens_do_not_change_earlier_logits():
    model = random_model()
    x = tokens(1, (2, 32))
    y = x.clone()
    y[:, 20:] = (y[:, 20:] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, :20], b[:, :20], atol=1e-6, rtol=0)
    assert (a[:, 20:] - b[:, 20:]).abs().amax() > 1e-2


def test_positions_are_relative():
    model = random_model()
    x = tokens(2, (2, 24))
    with torch.no_grad():
        ref = model(x)
        for offset in (1, 37, 1000):
            assert torch.allclose(model(x, start_pos=offset), ref, atol=1e-4, rtol=0)


def test_kv_cache_decoding_equals_a_full_forward_pass():
    model = random_model()
    x = tokens(3, (2, 40))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(2, 40)
        parts = [model(x[:, :7], cache), model(x[:, 7:8], cache), model(x[:, 8:13], cache)]  # prefill, step, chunk
        parts += [model.step(x[:, i:i + 1], cache)[:, None] for i in range(13, 40)]
        inc = torch.cat(parts, dim=1)
    assert full.abs().amax() > 0.5  # the comparison is not between near-zero logits
    assert cache.length == 40
    assert (inc - full).abs().amax() < 1e-5
    with pytest.raises(ValueError, match="larger KVCache"):
        model(x[:, :1], cache)
    # greedy generation with the cache = greedy decoding by full forward passes
    prompt = x[:, :4]
    gen = model.generate(prompt, 12, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(12):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(gen, seq)


def test_tiny_model_overfits_a_tiny_fixed_set():
    # 4 random sequences of 33 tokens over 48 ids: loss starts near ln 48 = 3.87 and must fall
    # below 0.05 within 150 Adam steps (measured: 22 steps).
    torch.manual_seed(0)
    model = Transformer(preset("tiny", VOCAB)).train()
    data = tokens(4, (4, 33))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = lm_loss(model(data[:, :-1]), data[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if loss.item() < 0.05:
            break
    assert losses[0] > 3.0 and losses[-1] < 0.05, f"loss {losses[0]:.3f} → {losses[-1]:.3f} in {len(losses)} steps"


def test_seeded_sampling_is_deterministic_and_respects_top_k():
    model = random_model()
    prompt = tokens(5, (3, 4))
    global_state = torch.get_rng_state()

    def gen(seed, **kw):
        return model.generate(prompt, 16, generator=torch.Generator().manual_seed(seed), **kw)

    for kw in ({"temperature": 1.0}, {"temperature": 0.7, "top_k": 5}):
        assert torch.equal(gen(11, **kw), gen(11, **kw))
        assert not torch.equal(gen(11, **kw), gen(12, **kw))
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG is never drawn from
    assert torch.equal(gen(3, top_k=1), model.generate(prompt, 16, temperature=0))  # top-1 = greedy
    # top-k: every draw is among the k largest logits; `allowed` masks ids out
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    top = torch.topk(logits, 3).indices
    for _ in range(50):
        s = sample_next(logits, temperature=2.0, top_k=3, generator=g)
        assert (top == s[:, None]).any(dim=1).all()
    allowed = torch.zeros(VOCAB, dtype=torch.bool)
    allowed[10:20] = True
    assert ((gen(1, allowed=allowed)[:, 4:] >= 10) & (gen(1, allowed=allowed)[:, 4:] < 20)).all()
    with pytest.raises(ValueError, match="explicit generator"):
        model.generate(prompt, 2)


def test_config_errors_say_how_to_fix_them():
    with pytest.raises(ValueError, match="even size"):
        TransformerConfig(vocab_size=10, d_model=100, n_heads=3)
    with pytest.raises(ValueError, match="presets are"):
        preset("huge", 10)
    with pytest.raises(ValueError, match="int64"):
        random_model()(torch.zeros(2, 3))


def test_block_loss_equals_a_masked_full_softmax_reference():
    """block_loss scores each target by a softmax over its level's block only: the same number as
    the full logits with every other id masked out, computed target by target in NumPy."""
    import numpy as np

    torch.manual_seed(0)
    offset, levels, vocab = 5, 3, 7
    model = Transformer(TransformerConfig(vocab_size=offset + levels * vocab + 4, d_model=32, n_heads=2, d_ff=64))
    tokens = torch.randint(0, model.cfg.vocab_size, (2, 9))
    lv = torch.arange(18).reshape(2, 9) % levels
    targets = offset + lv * vocab + torch.randint(0, vocab, (2, 9))
    targets[0, :3] = -100
    targets[1, 5] = -100
    got = model(tokens, targets=targets, target_block=(offset, levels, vocab)).item()
    logits = model(tokens).detach().numpy().astype(np.float64)
    want = 0.0
    for b in range(2):
        for t in range(9):
            y = int(targets[b, t])
            if y == -100:
                continue
            lo = offset + (y - offset) // vocab * vocab
            row = logits[b, t, lo:lo + vocab]
            want -= row[y - lo] - (np.log(np.exp(row - row.max()).sum()) + row.max())
    assert abs(got - want) < 1e-4 * abs(want)
    with pytest.raises(ValueError, match="outside the id block"):
        model(tokens, targets=torch.zeros_like(targets), target_block=(offset, levels, vocab))
