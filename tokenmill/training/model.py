"""Decoder-only Transformer for the three MusicLM stages (docs/design.md §7), with a KV cache for sampling.

One architecture serves the semantic, coarse and fine stages; a stage only decides the vocabulary
(its streams' tokens laid out in one id space, sizes from the manifest) and the sequence layout.
``TransformerConfig`` is a frozen dataclass; ``preset(name, vocab_size)`` gives

  tiny    2 layers, 4 heads, d=128, FF 512, no dropout: trains on a CPU in seconds (tests, smoke runs)
  paper   24 layers, 16 heads, d=1024, FF 4096, dropout 0.1 (MusicLM §3.3 / AudioLM)

Block (T5 v1.1 style, as MusicLM's T5X models): pre-norm RMSNorm, no biases, gated-GELU feed-forward
(two input projections d→FF, one output FF→d), untied input embedding and output projection.
With the paper's vocabulary these choices give the paper's "430M parameters per stage": semantic
stage, 1024 semantic + 12×1024 MuLan tokens = 13 312 ids → 429 966 336 parameters
(``tests/test_model.py`` counts them on the meta device). A plain 2-matrix FF would give 329M.

Positions: rotary embeddings (RoPE), not T5's bucketed relative bias. Both are relative (attention
scores depend only on the distance between query and key; ``forward(start_pos=…)`` gives the same
logits for any offset, which a test checks). RoPE was chosen because
  * it adds no [H, T, T] bias tensor, so ``F.scaled_dot_product_attention`` runs its fused causal
    kernels (``is_causal=True``; flash attention on a GPU). A T5 bias is an additive float mask,
    which rules out the flash kernel, and for the coarse stage (10 s: 250 semantic + 2000 acoustic
    tokens) the bias alone would be 16 × 2250² floats per batch;
  * the KV cache stays trivial: keys are cached already rotated at their absolute position, so a
    decoding step needs no bias row recomputed over the whole past;
  * it has no learned parameters and no bucket/max-distance hyper-parameters to tune per stage.
The cost is a departure from the paper's exact positional scheme, which we judge immaterial.

Sampling: ``generate`` prefills the prompt into a ``KVCache`` and then feeds one token per step.
Randomness comes only from an explicit ``torch.Generator`` (``generator=`` is required unless
``temperature=0``, greedy), never from the global RNG, so the same seed gives the same tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

PRESETS: dict[str, dict] = {
    "tiny": dict(n_layers=2, n_heads=4, d_model=128, d_ff=512, dropout=0.0),
    "paper": dict(n_layers=24, n_heads=16, d_model=1024, d_ff=4096, dropout=0.1),
}


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int  # ids of the stage's streams together (from the manifest, never a flag)
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 128
    d_ff: int = 512  # width of each of the two gated input projections
    dropout: float = 0.0  # residual, feed-forward and attention-probability dropout (training only)
    rope_base: float = 10_000.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "n_heads", "d_model", "d_ff"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model={self.d_model} must split into n_heads={self.n_heads} heads of an even "
                             f"size (RoPE rotates pairs of dimensions); e.g. d_model={self.n_heads * 64}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def preset(name: str, vocab_size: int, **overrides) -> TransformerConfig:
    """A named config (`tiny`, `paper`) for a vocabulary of `vocab_size` ids; `overrides` replace fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets are {sorted(PRESETS)}")
    return replace(TransformerConfig(vocab_size=vocab_size, **PRESETS[name]), **overrides)


class KVCache:
    """Keys (RoPE-rotated) and values of every layer for positions [0, length), preallocated to
    `max_len`: float [n_layers, B, H, max_len, head_dim] each."""

    def __init__(self, cfg: TransformerConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        shape = (cfg.n_layers, batch, cfg.n_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled
        self.max_len, self.batch = max_len, batch


def _rope(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin float32 [T, head_dim] for integer `positions` [T] (rotate-half layout)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    ang = positions.to(torch.float32)[:, None] * inv_freq[None]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to x [B, H, T, hd]."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rot.float() * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None, layer: int, start: int) -> torch.Tensor:
        b, t, _ = x.shape
        h, hd = self.cfg.n_heads, self.cfg.head_dim
        q, k, v = self.qkv(x).view(b, t, 3, h, hd).permute(2, 0, 3, 1, 4)  # each [B, H, T, hd]
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        mask, causal = None, True
        if cache is not None:
            cache.k[layer, :, :, start:start + t] = k
            cache.v[layer, :, :, start:start + t] = v
            k, v = cache.k[layer, :, :, :start + t], cache.v[layer, :, :, :start + t]
            if t == 1:  # one new query sees the whole past
                causal = False
            elif start > 0:  # queries at start..start+t-1 over keys 0..start+t-1 (SDPA's is_causal is top-left)
                causal = False
                mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.cfg.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, h * hd))


class FeedForward(nn.Module):
    """Gated GELU: wo(gelu(wi_0 x) · wi_1 x)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.wo(self.drop(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm_attn = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm_ff = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ff = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache, layer, start):
        x = x + self.drop(self.attn(self.norm_attn(x), cos, sin, cache, layer, start))
        return x + self.drop(self.ff(self.norm_ff(x)))


class Transformer(nn.Module):
    """tokens int64 [B, T] → logits float32 [B, T, vocab_size], causal."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)) and not m.weight.is_meta:  # meta: shapes only
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None, start_pos: int = 0, *,
                targets: torch.Tensor | None = None, target_block: tuple[int, int, int] | None = None,
                ignore_index: int = -100) -> torch.Tensor:
        """Logits for every position. With `cache`, `tokens` continue the cached positions (their
        keys/values are appended); without, they sit at positions start_pos, start_pos + 1, …

        With `targets` int64 [B, T] and `target_block` = (offset, levels, vocab): instead of the
        logits, the SUMMED cross-entropy of the targets (ignore_index skipped), each scored by a
        softmax over its own level's block of ids only (see ``block_loss``)."""
        if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be int64 [B, T], got {tokens.dtype} {tuple(tokens.shape)}")
        b, t = tokens.shape
        if cache is not None:
            start_pos = cache.length
            if b != cache.batch or start_pos + t > cache.max_len:
                raise ValueError(f"KV cache holds batch {cache.batch} × {cache.max_len} positions with "
                                 f"{cache.length} used; cannot add batch {b} × {t}: make a larger KVCache")
        cos, sin = _rope(torch.arange(start_pos, start_pos + t, device=tokens.device), self.cfg.head_dim,
                         self.cfg.rope_base)
        x = self.drop(self.embed(tokens))
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i, start_pos)
        if cache is not None:
            cache.length += t
        if targets is not None:
            if target_block is None:
                raise ValueError("targets need target_block=(offset, levels, vocab): the id block they lie in")
            return self.block_loss(self.norm(x), targets, target_block, ignore_index)
        return self.head(self.norm(x)).float()

    def block_loss(self, hidden: torch.Tensor, targets: torch.Tensor, block: tuple[int, int, int],
                   ignore_index: int = -100) -> torch.Tensor:
        """Summed cross-entropy (float32 scalar) of `targets` [B, T] from final hidden states
        [B, T, d], each target scored by a softmax over the `vocab` ids of its level's block
        (offset + level·vocab ...), where the stage's ids for that position live.

        This is the full softmax restricted to the ids a position may take, so it is the same
        distribution the sampler draws from (generation masks every other id, stages.allowed):
        no probability mass is spent on ids the layout rules out. It computes `levels`
        [N_l, vocab] logit blocks instead of one [B·T, vocab_size] matrix: for the coarse stage's
        16,450 ids, 1/16 of the head's work and memory."""
        offset, levels, vocab = (int(v) for v in block)
        valid = targets != ignore_index
        h, t = hidden[valid], targets[valid] - offset
        level = torch.div(t, vocab, rounding_mode="floor")
        if bool(((t < 0) | (level >= levels)).any()):
            raise ValueError(f"targets outside the id block [{offset}, {offset + levels * vocab}) of the stage's "
                             "target stream; build targets with stages.StageLayout.inputs_targets")
        total = self.head.weight[:1].sum() * 0.0  # keeps the head in the graph on a rank with no targets (DDP)
        for lv in range(levels):
            m = level == lv
            w = self.head.weight[offset + lv * vocab: offset + (lv + 1) * vocab]
            logits = (h[m] @ w.T).float()
            total = total + F.cross_entropy(logits, t[m] - lv * vocab, reduction="sum")
        return total.float()

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.embed.weight
        return KVCache(self.cfg, batch, max_len, device=p.device, dtype=p.dtype)

    def step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed `tokens` [B, t] after the cached positions; logits of the last one, float32 [B, V]."""
        return self.forward(tokens, cache)[:, -1]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, n_new: int, *, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """prompt int64 [B, T0 >= 1] → int64 [B, T0 + n_new], sampled with the KV cache (eval mode).
        `allowed`: bool [V] for every new token, or [P, V]: row j % P for the j-th new token (a
        stage's frame-major levels, ``StageLayout.allowed()``; the prompt must end on a whole frame)."""
        if prompt.ndim != 2 or prompt.shape[1] < 1:
            raise ValueError(f"prompt must be int64 [B, T0 >= 1] (start with a BOS id), got {tuple(prompt.shape)}")
        if allowed is not None and (allowed.ndim not in (1, 2) or allowed.shape[-1] != self.cfg.vocab_size
                                    or allowed.shape[0] < 1):
            raise ValueError(f"allowed must be bool [{self.cfg.vocab_size}] or [P, {self.cfg.vocab_size}], "
                             f"got {tuple(allowed.shape)}")
        was_training = self.training
        self.eval()
        try:
            cache = self.new_cache(prompt.shape[0], prompt.shape[1] + n_new)
            out = [prompt]
            logits = self.step(prompt, cache)
            for i in range(n_new):
                row = allowed if allowed is None or allowed.ndim == 1 else allowed[i % allowed.shape[0]]
                nxt = sample_next(logits, temperature=temperature, top_k=top_k, generator=generator,
                                  allowed=row)[:, None]
                out.append(nxt)
                if i + 1 < n_new:
                    logits = self.step(nxt, cache)
            return torch.cat(out, dim=1)
        finally:
            self.train(was_training)


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """logits float [B, V] → int64 [B]. temperature 0: argmax. top_k: keep the k largest logits.
    `allowed` bool [V] masks ids the stage may not emit (e.g. another stream's tokens)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed.to(torch.bool), float("-inf"))
    if temperature == 0:
        return logits.argmax(dim=-1)
    if generator is None:
        raise ValueError("sampling needs an explicit generator: pass generator=torch.Generator().manual_seed(seed) "
                         "(or temperature=0 for greedy decoding)")
    logits = logits / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy; logits [B, T, V] predict targets [B, T] (pad positions → ignore_index)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index)
