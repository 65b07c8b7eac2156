"""Token sequences of the three MusicLM stages: one id space per stage, offsets from the manifest.

A stage's model reads one flat sequence ``[BOS, conditioning..., targets...]`` and learns the
targets by next-token prediction (the conditioning positions are never targets):

  stage     conditioning                          targets
  semantic  M (n_stages MuLan tokens), melody     S  (semantic tokens of the crop, T_s)
  coarse    M, S                                  A_c (acoustic coarse levels, frame-major)
  fine      A_c (frame-major)                     A_f (acoustic fine levels, frame-major)

Frame-major ("flattened") means frame 0's levels in order, then frame 1's, ...: A[l, t] sits at
t · L + l. M is dropped from a stage that ``CropConfig.mulan_stages`` leaves unconditioned.
Melody tokens (a part named "melody": levels = the melody RVQ's stages, frames = the crop's melody
windows, window-major like M's stages: window 0's S stages, then window 1's, ...) follow M in the
stages of ``CropConfig.melody_stages`` when the dataset has a melody stream. A checkpoint's
layout (its state.json) lists the parts it reads, so one trained without melody says so and
generation gives it none.

Id space (``StageLayout.parts``): BOS = 0, PAD = 1, then each part's block in sequence order.
Every MuLan stage and every acoustic level has its own block of `vocab` ids (AudioLM/MusicLM:
level k's token 5 is not level k+1's token 5): id = offset + level · vocab + code. Vocabulary sizes,
level counts and the coarse/fine split come from the dataset's manifest (``from_manifest``), never
from flags. PAD is an input only: a position whose token is the crop's pad id (a short track,
training/crops.py) reads PAD and its target is ``IGNORE`` (masked out of the loss).

Pure numpy; the trainer and generation import it, the model never sees the layout.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tokenmill.training.crops import STAGES, Crop, CropConfig, CropError, StreamLayout

BOS, PAD = 0, 1
N_SPECIAL = 2
IGNORE = -100  # target of a position that is not learned (conditioning, padding): lm_loss's ignore_index


@dataclass(frozen=True)
class Part:
    """One stream's block of the sequence and of the id space."""

    name: str  # "mulan" | "melody" | "semantic" | "coarse" | "fine"
    levels: int  # rows interleaved frame-major (MuLan: its stages, one frame; semantic: 1)
    frames: int  # frames per crop (MuLan: 1)
    vocab: int  # ids per level
    offset: int  # first id of level 0

    @property
    def length(self) -> int:
        return self.levels * self.frames

    @property
    def n_ids(self) -> int:
        return self.levels * self.vocab


@dataclass(frozen=True)
class StageLayout:
    stage: str
    parts: tuple[Part, ...]  # sequence order: conditioning parts, then the target part (last)
    pad_id: int  # the crops' pad token (uint16), mapped to PAD

    @property
    def target(self) -> Part:
        return self.parts[-1]

    @property
    def conditioning(self) -> tuple[Part, ...]:
        return self.parts[:-1]

    @property
    def vocab_size(self) -> int:
        return N_SPECIAL + sum(p.n_ids for p in self.parts)

    @property
    def prefix_length(self) -> int:
        """BOS + conditioning tokens."""
        return 1 + sum(p.length for p in self.conditioning)

    @property
    def sequence_length(self) -> int:
        """Tokens of a whole crop: BOS + conditioning + targets (the model sees one fewer)."""
        return self.prefix_length + self.target.length

    def part(self, name: str) -> Part:
        for p in self.parts:
            if p.name == name:
                return p
        raise CropError(f"the {self.stage} stage has no {name!r} part; it has {[p.name for p in self.parts]}")

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "pad_id": self.pad_id, "parts": [asdict(p) for p in self.parts]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StageLayout:
        return cls(d["stage"], tuple(Part(**p) for p in d["parts"]), int(d["pad_id"]))

    @classmethod
    def build(cls, stage: str, streams: StreamLayout, crop: CropConfig = CropConfig(), *,
              mulan_stages: int = 0, mulan_vocab: int = 0, frames: dict[str, int] | None = None) -> StageLayout:
        """The layout of `stage` for crops of ``crop``'s length (or `frames`: frames per part for
        another window length, e.g. generation's). `mulan_stages` / `mulan_vocab` are needed when
        the stage is conditioned on M; the melody part comes from `streams` (its melody stream)."""
        from tokenmill.schemas import rates
        from tokenmill.tokenizers.melody_tokens import crop_window_count

        if stage not in STAGES:
            raise CropError(f"unknown stage {stage!r}; stages are {STAGES}")
        length_q = crop.length_q(stage)
        n_s = rates.frames_for_quanta(length_q, streams.semantic)
        n_a = rates.frames_for_quanta(length_q, streams.acoustic)
        frames = {"semantic": n_s, "coarse": n_a, "fine": n_a, **(frames or {})}
        spec: list[tuple[str, int, int, int]] = []  # name, levels, frames, vocab
        if stage in crop.mulan_stages:
            if mulan_stages < 1 or mulan_vocab < 1:
                raise CropError(f"the {stage} stage is conditioned on M: the manifest must list a mulan "
                                "stream (n_stages, vocab_size); tokenize with --mulan_model, or train "
                                f"with CropConfig(mulan_stages=...) without {stage!r}")
            spec.append(("mulan", mulan_stages, 1, mulan_vocab))
        if crop.takes_melody(stage, streams):
            n_win = frames.get("melody", crop_window_count(length_q * rates.QUANTUM_S))
            spec.append(("melody", streams.melody_stages, n_win, streams.melody_vocab))
        if stage in ("semantic", "coarse"):
            spec.append(("semantic", 1, frames["semantic"], streams.semantic_vocab))
        if stage in ("coarse", "fine"):
            spec.append(("coarse", len(streams.coarse_levels), frames["coarse"], streams.acoustic_vocab))
        if stage == "fine":
            spec.append(("fine", len(streams.fine_levels), frames["fine"], streams.acoustic_vocab))
        parts, off = [], N_SPECIAL
        for name, levels, n, vocab in spec:
            parts.append(Part(name, levels, n, vocab, off))
            off += levels * vocab
        pad = int(crop.pad_id)
        if any(pad < p.vocab for p in parts if p.name != "mulan"):
            raise CropError(f"pad_id {pad} is a real token of the {stage} stage's streams; use pad_id >= "
                            "every vocabulary (the default 0xFFFF)")
        return cls(stage, tuple(parts), pad)

    @classmethod
    def from_manifest(cls, stage: str, manifest: dict[str, Any], crop: CropConfig = CropConfig(),
                      **kw) -> StageLayout:
        mul = manifest.get("streams", {}).get("mulan") or {}
        return cls.build(stage, StreamLayout.from_manifest(manifest), crop,
                         mulan_stages=int(mul.get("n_stages", 0)), mulan_vocab=int(mul.get("vocab_size", 0)), **kw)

    def with_frames(self, **frames: int) -> StageLayout:
        """The same id space for windows of other lengths (generation): `frames` per part name."""
        parts = tuple(Part(p.name, p.levels, frames.get(p.name, p.frames), p.vocab, p.offset) for p in self.parts)
        return StageLayout(self.stage, parts, self.pad_id)

    # ---- streams -> ids -----------------------------------------------------------------------

    def part_ids(self, part: Part, tokens: np.ndarray) -> np.ndarray:
        """uint16 stream tokens (MuLan/semantic [n], acoustic [levels, frames]) → int64 ids in
        sequence order (frame-major); pad tokens → PAD. Out-of-vocabulary tokens are refused."""
        a = np.asarray(tokens)
        if part.name == "mulan" or part.name == "semantic":
            a = a.reshape(-1, 1) if part.name == "mulan" else a.reshape(1, -1)
        elif part.name == "melody":  # [windows, stages] -> [levels = stages, frames = windows]
            a = a.T if a.ndim == 2 else a
        if a.shape != (part.levels, part.frames):
            raise CropError(f"{self.stage} stage: {part.name} tokens have shape {np.asarray(tokens).shape}, "
                            f"expected {part.levels} level(s) x {part.frames} frames")
        a = a.astype(np.int64)
        pad = a == self.pad_id
        if (a[~pad] >= part.vocab).any() or (a < 0).any():
            raise CropError(f"{self.stage} stage: a {part.name} token is outside its vocabulary of {part.vocab}; "
                            "the shards and the manifest disagree (re-run tokenize)")
        ids = part.offset + np.arange(part.levels)[:, None] * part.vocab + a
        ids[pad] = PAD
        return ids.T.reshape(-1)  # frame-major

    def crop_sequence(self, crop: Crop, mulan: np.ndarray | None = None,
                      melody: np.ndarray | None = None) -> np.ndarray:
        """int64 [sequence_length]: BOS, conditioning and target ids of a training crop.
        `mulan` replaces the crop's M (e.g. text tokens M_T), `melody` its melody tokens [n, S]."""
        if crop.stage != self.stage:
            raise CropError(f"a {crop.stage} crop given to the {self.stage} stage layout")
        src = {"mulan": crop.mulan if mulan is None else mulan, "semantic": crop.semantic,
               "coarse": crop.coarse, "fine": crop.fine, "melody": crop.melody if melody is None else melody}
        missing = [p.name for p in self.parts if src[p.name] is None]
        if missing:
            raise CropError(f"the {self.stage} stage layout reads {missing} but the crop has none; crop with the "
                            "same CropConfig and dataset as the layout")
        return np.concatenate([[BOS]] + [self.part_ids(p, src[p.name]) for p in self.parts])

    def prefix(self, **streams: np.ndarray) -> np.ndarray:
        """int64 [prefix_length]: BOS + the conditioning ids from the given streams (generation)."""
        missing = [p.name for p in self.conditioning if p.name not in streams]
        if missing:
            raise CropError(f"the {self.stage} stage is conditioned on {missing}; pass them")
        return np.concatenate([[BOS]] + [self.part_ids(p, streams[p.name]) for p in self.conditioning])

    def inputs_targets(self, seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sequence [..., L] → (inputs [..., L-1], targets [..., L-1]): target j is token j+1, or
        IGNORE where token j+1 is conditioning or PAD."""
        seq = np.asarray(seq, dtype=np.int64)
        tgt = seq[..., 1:].copy()
        tgt[..., : self.prefix_length - 1] = IGNORE
        tgt[tgt == PAD] = IGNORE
        return seq[..., :-1], tgt

    # ---- ids -> streams (generation) -----------------------------------------------------------

    def allowed(self, part: Part | None = None) -> np.ndarray:
        """bool [part.levels, vocab_size]: the ids level l of `part` (default: the target) may take;
        a sampler at target position j uses row j % levels."""
        part = part or self.target
        out = np.zeros((part.levels, self.vocab_size), dtype=bool)
        for lv in range(part.levels):
            lo = part.offset + lv * part.vocab
            out[lv, lo: lo + part.vocab] = True
        return out

    def target_tokens(self, ids: np.ndarray, part: Part | None = None) -> np.ndarray:
        """Generated ids of `part` (default: the target) in sequence order [..., levels · frames]
        → uint16 tokens: semantic [..., frames]; acoustic [..., levels, frames]."""
        part = part or self.target
        ids = np.asarray(ids, dtype=np.int64)
        n = ids.shape[-1]
        if n % part.levels:
            raise CropError(f"{n} {part.name} ids are not whole frames of {part.levels} levels")
        a = ids.reshape(ids.shape[:-1] + (n // part.levels, part.levels))
        codes = a - part.offset - np.arange(part.levels) * part.vocab
        if (codes < 0).any() or (codes >= part.vocab).any():
            raise CropError(f"ids outside the {part.name} block of the {self.stage} stage (a sampler without "
                            "the stage's allowed mask?)")
        codes = np.swapaxes(codes, -1, -2).astype(np.uint16)  # [..., levels, frames]
        return codes[..., 0, :] if part.name == "semantic" else codes


def stage_batch(layout: StageLayout, sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Crops' sequences (all of the layout's length) → (inputs, targets) int64 [B, L-1]."""
    bad = {len(s) for s in sequences} - {layout.sequence_length}
    if bad:
        raise CropError(f"{layout.stage} stage sequences must all be {layout.sequence_length} tokens, got {sorted(bad)}")
    return layout.inputs_targets(np.stack(sequences))
