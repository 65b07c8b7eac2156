"""Per-stage crops from full track segments, every stream aligned (docs/design.md §2, §7). Pure numpy.

MusicLM trains each stage on crops of a different length (paper: 30 s semantic, 10 s coarse,
3 s fine). A crop [t0, t1) lies on the 40 ms grid of ``schemas/rates.py``, so it maps to an exact
frame range in every stream; all frame arithmetic goes through ``rates`` (this module only picks
quanta). What each stage gets:

  stage      length  streams in the crop
  semantic   30 s    semantic uint16 [T_s]; M = mulan uint16 [S] of the crop; melody [9, 24]
  coarse     10 s    semantic uint16 [T_s]; coarse uint16 [L_c, T_a] (levels 1–4); M
  fine        3 s    coarse uint16 [L_c, T_a] (levels 1–4); fine uint16 [L_f, T_a] (levels 5–12)

M is ``tokenizers/mulan.crop_tokens(mulan_windows, t0, t1, rvq)``: the L2-normalized mean of the
stored window embeddings that hear the crop, RVQ-encoded. Which stages get M is
``CropConfig.mulan_stages`` (default semantic and coarse; the fine stage is conditioned on the
coarse tokens only, as in AudioLM/MusicLM).

Melody (MusicLM §6, App. C). When the dataset has a melody stream, the stages in
``CropConfig.melody_stages`` (default: semantic) also get the crop's melody tokens uint16 [n, S]:
n = the 4 s windows at a 3 s hop that fit in the crop (10 s → 3, 30 s → 9), each the stored
window tokens of the window starting nearest t0 + 3i (``melody_tokens.crop_tokens_padded``; a
position past a short track's end is pad_id). With probability ``melody_dropout``, drawn from
(seed, epoch, index, stage), the whole melody condition is pad_id, so the stage also learns to
generate from text alone (generation without a hum feeds it pad ids). A dataset without a melody
stream gives no melody condition; the stage layout (training/stages.py) then has no melody part.

Rates and levels come from the manifest (``StreamLayout.from_manifest``): the acoustic frame
rate is the codec's (EnCodec: 75 Hz = 3 frames per 40 ms quantum), and the coarse/fine split is
the manifest's ``coarse_levels`` / ``fine_levels`` (1-based), overridable. Nothing here assumes
50 Hz. A codec whose frame rate is not a multiple of 25 Hz (Mimi, 12.5 Hz) has no whole number of
frames per quantum; ``rates`` refuses it with its own message.

Crop start. ``start_quantum(total_q, length_q, seed, epoch, index, stage)`` draws the start
uniformly from the ``total_q - length_q + 1`` grid positions with a generator seeded by
``SeedSequence([seed, epoch, index, stage number])``: the same (seed, epoch, index) always gives
the same crop whatever the call order, a new epoch gives a fresh crop, and the three stages draw
independently. ``index`` is the record's position in the epoch's (deterministic) record order.

Short tracks (shorter than the crop). Policy ``"pad"`` (the default): take the whole track,
[0, duration), fill the rest of every token stream with ``pad_id`` (default 0xFFFF, which must
lie outside every stream's vocabulary; the cropper refuses a collision), and record the real
length in ``Crop.valid_q`` so the trainer masks the loss past it; M is that of [0, duration).
Policy ``"skip"``: return None. Either way ``StageCropper.counts`` counts them ("padded",
"skipped"). Padding is the default because captioned corpora are often 10 s clips (MusicCaps):
skipping would drop all of them from the 30 s semantic stage, and a padded crop still teaches the
model everything in the clip (plus where music ends).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from tokenmill.errors import TokenmillError
from tokenmill.schemas import rates
from tokenmill.schemas.records import TrackRecord
from tokenmill.tokenizers.melody_tokens import crop_tokens_padded
from tokenmill.tokenizers.mulan import crop_tokens

STAGES = ("semantic", "coarse", "fine")
SHORT_POLICIES = ("pad", "skip")
PAD_ID_DEFAULT = 0xFFFF  # uint16 max: outside any codebook of < 65536 entries
# Streams each stage reads ("coarse"/"fine" are acoustic level subsets); M is per CropConfig.
STAGE_STREAMS = {"semantic": ("semantic",), "coarse": ("semantic", "coarse"), "fine": ("coarse", "fine")}


class CropError(TokenmillError, ValueError):
    """A crop cannot be made: bad config, or a record whose streams do not match the layout."""


def _levels(levels, n_q: int, what: str) -> tuple[int, ...]:
    out = tuple(int(x) for x in levels)
    if not out or any(not 1 <= x <= n_q for x in out) or len(set(out)) != len(out):
        raise CropError(f"{what} levels must be distinct 1-based levels in 1..{n_q}, got {list(levels)}")
    return out


@dataclass(frozen=True)
class StreamLayout:
    """Frame grids, vocabularies and the coarse/fine split of a dataset (from its manifest)."""

    semantic: rates.StreamRate
    acoustic: rates.StreamRate
    n_q: int  # acoustic levels stored per record (K of acoustic [K, T_a])
    coarse_levels: tuple[int, ...]  # 1-based acoustic levels of the coarse stage
    fine_levels: tuple[int, ...]  # 1-based acoustic levels of the fine stage
    semantic_vocab: int
    acoustic_vocab: int
    melody_stages: int = 0  # RVQ stages S of the melody stream (0: the dataset has none)
    melody_vocab: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "coarse_levels", _levels(self.coarse_levels, self.n_q, "coarse"))
        object.__setattr__(self, "fine_levels", _levels(self.fine_levels, self.n_q, "fine"))
        if set(self.coarse_levels) & set(self.fine_levels):
            raise CropError(f"coarse levels {self.coarse_levels} and fine levels {self.fine_levels} overlap")
        for s in (self.semantic, self.acoustic):
            s.frames_per_quantum  # noqa: B018 -- raises rates' fix-it message for off-grid frame rates

    @classmethod
    def builtin(cls) -> StreamLayout:
        """The built-in tokenizers: semantic 25 Hz × 1024, SoundStream 50 Hz × 12 × 1024, levels 1–4 | 5–12."""
        n_q, c = rates.ACOUSTIC_LEVELS, rates.COARSE_LEVELS
        return cls(rates.SEMANTIC, rates.ACOUSTIC, n_q, tuple(range(1, c + 1)), tuple(range(c + 1, n_q + 1)),
                   rates.CODEBOOK_SIZE, rates.CODEBOOK_SIZE)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], coarse_levels=None, fine_levels=None) -> StreamLayout:
        """Read rates, vocabularies and the level split from ``manifest["streams"]``; pass
        `coarse_levels` / `fine_levels` (1-based) to override the manifest's split."""
        streams = manifest.get("streams", {}) if isinstance(manifest, dict) else {}
        missing = [s for s in ("semantic", "acoustic") if s not in streams]
        if missing:
            raise CropError(f"manifest has no {' or '.join(missing)} stream; stage crops need both: "
                            "tokenize with an acoustic codec (--acoustic_codec ...)")
        sem, ac = streams["semantic"], streams["acoustic"]
        mel = streams.get("melody") or {}
        try:
            return cls(
                semantic=rates.StreamRate("semantic", int(sem["sample_rate_hz"]), int(sem["hop_samples"])),
                acoustic=rates.StreamRate("acoustic", int(ac["sample_rate_hz"]), int(ac["hop_samples"])),
                n_q=int(ac["n_q"]),
                coarse_levels=tuple(ac["coarse_levels"] if coarse_levels is None else coarse_levels),
                fine_levels=tuple(ac["fine_levels"] if fine_levels is None else fine_levels),
                semantic_vocab=int(sem["vocab_size"]), acoustic_vocab=int(ac["vocab_size"]),
                melody_stages=int(mel.get("n_stages", 0)), melody_vocab=int(mel.get("vocab_size", 0)))
        except KeyError as e:
            raise CropError(f"manifest streams lack {e}; it was written by an older tokenmill: "
                            "re-run tokenize to get rates and vocab sizes in manifest.json") from None


@dataclass(frozen=True)
class CropConfig:
    """Crop lengths (seconds, on the 40 ms grid), short-track policy, pad id, stages that get M."""

    semantic_s: float | Fraction = 30
    coarse_s: float | Fraction = 10
    fine_s: float | Fraction = 3
    short_tracks: str = "pad"  # "pad" | "skip" (module docstring)
    pad_id: int = PAD_ID_DEFAULT
    mulan_stages: tuple[str, ...] = ("semantic", "coarse")
    melody_stages: tuple[str, ...] = ("semantic",)  # when the dataset has a melody stream
    melody_dropout: float = 0.1  # share of crops whose melody condition is all pad_id

    def __post_init__(self) -> None:
        for stage in STAGES:
            if self.length_q(stage) < 1:
                raise CropError(f"{stage}_s must be at least 0.04 s (one 40 ms quantum), got {getattr(self, stage + '_s')}")
        if self.short_tracks not in SHORT_POLICIES:
            raise CropError(f"short_tracks must be one of {SHORT_POLICIES}, got {self.short_tracks!r}")
        if not 0 <= int(self.pad_id) <= 0xFFFF:
            raise CropError(f"pad_id must fit uint16 (0..65535), got {self.pad_id}")
        bad = [s for s in (*self.mulan_stages, *self.melody_stages) if s not in STAGES]
        if bad:
            raise CropError(f"mulan_stages and melody_stages must be among {STAGES}, got {bad}")
        if not 0 <= float(self.melody_dropout) <= 1:
            raise CropError(f"melody_dropout must be in [0, 1], got {self.melody_dropout}")

    def takes_melody(self, stage: str, layout: "StreamLayout") -> bool:
        """Whether `stage` crops carry a melody condition: listed, and the dataset has the stream."""
        return stage in self.melody_stages and layout.melody_stages > 0

    def length_q(self, stage: str) -> int:
        """Crop length of `stage` in 40 ms quanta (raises rates' message if off the grid)."""
        if stage not in STAGES:
            raise CropError(f"unknown stage {stage!r}; stages are {STAGES}")
        return rates.quanta_of_seconds(getattr(self, f"{stage}_s"))


@dataclass(frozen=True)
class Crop:
    """One stage's training example. Token arrays are padded with `pad_id` past `valid_q`."""

    key: str
    stage: str
    q0: int  # crop start, 40 ms quanta from the segment start
    length_q: int  # crop length in quanta, padding included
    valid_q: int  # quanta of real audio from q0 (= length_q unless the track was shorter)
    semantic: np.ndarray | None  # uint16 [length_q · semantic frames/quantum] @ semantic rate
    coarse: np.ndarray | None  # uint16 [L_c, length_q · acoustic frames/quantum] @ acoustic rate
    fine: np.ndarray | None  # uint16 [L_f, T_a] @ acoustic rate
    mulan: np.ndarray | None  # uint16 [S]: M of [t0_s, t1_s)
    melody: np.ndarray | None = None  # uint16 [n, S_melody]: the crop's melody windows' tokens

    @property
    def padded(self) -> bool:
        return self.valid_q < self.length_q

    @property
    def t0_s(self) -> Fraction:
        return self.q0 * rates.QUANTUM_S

    @property
    def t1_s(self) -> Fraction:
        """End of the real audio in the crop (exclusive)."""
        return (self.q0 + self.valid_q) * rates.QUANTUM_S


def start_quantum(total_q: int, length_q: int, seed: int, epoch: int, index: int, stage: str) -> int:
    """Crop start in quanta, uniform over the grid positions, from (seed, epoch, index, stage) only.
    A track no longer than the crop starts at 0."""
    if stage not in STAGES:
        raise CropError(f"unknown stage {stage!r}; stages are {STAGES}")
    for name, v in (("seed", seed), ("epoch", epoch), ("index", index)):
        if int(v) < 0:
            raise CropError(f"{name} must be a non-negative integer, got {v}")
    if total_q <= length_q:
        return 0
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index), STAGES.index(stage)]))
    return int(rng.integers(0, total_q - length_q + 1))


def _check_record(record: TrackRecord, layout: StreamLayout, streams: tuple[str, ...]) -> int:
    """Total quanta of the record, after checking its streams against the layout."""
    total_q = rates.quanta_of_seconds(record.duration_s)
    want_s = rates.frames_for_quanta(total_q, layout.semantic)
    if "semantic" in streams and record.semantic.shape != (want_s,):
        raise CropError(f"record {record.key}: semantic has shape {record.semantic.shape}, but "
                        f"{float(record.duration_s)} s at {float(layout.semantic.frame_rate_hz):g} Hz is "
                        f"({want_s},); the manifest's rates do not match this dataset")
    if "coarse" in streams or "fine" in streams:
        if record.acoustic is None:
            raise CropError(f"record {record.key} has no acoustic tokens; the coarse and fine stages need a "
                            "dataset tokenized with an acoustic codec")
        want_a = (layout.n_q, rates.frames_for_quanta(total_q, layout.acoustic))
        if record.acoustic.shape != want_a:
            raise CropError(f"record {record.key}: acoustic has shape {record.acoustic.shape}, but "
                            f"{float(record.duration_s)} s at {float(layout.acoustic.frame_rate_hz):g} Hz with "
                            f"n_q={layout.n_q} is {want_a}; the manifest's rates do not match this dataset")
    return total_q


def _padded(frames: np.ndarray, n: int, pad_id: int) -> np.ndarray:
    """`frames` [..., t <= n] padded with pad_id to n frames on the last axis (uint16, a copy)."""
    out = np.full(frames.shape[:-1] + (n,), pad_id, dtype=np.uint16)
    out[..., : frames.shape[-1]] = frames
    return out


def melody_dropped(seed: int, epoch: int, index: int, stage: str, rate: float) -> bool:
    """Whether this crop's melody condition is dropped (all pad), from (seed, epoch, index, stage)."""
    if rate <= 0:
        return False
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index), STAGES.index(stage), 1]))
    return bool(rng.random() < rate)


def crop_at(record: TrackRecord, stage: str, q0: int, layout: StreamLayout, cfg: CropConfig = CropConfig(),
            rvq=None, drop_melody: bool = False) -> Crop | None:
    """The `stage` crop of `record` starting at quantum `q0` (None when skipped as too short).

    `rvq` (an RVQCodebook) is needed when `stage` is in ``cfg.mulan_stages``. `drop_melody`: the
    melody condition is all pad_id (module docstring)."""
    length_q = cfg.length_q(stage)
    streams = STAGE_STREAMS[stage]
    total_q = _check_record(record, layout, streams)
    if total_q < length_q and cfg.short_tracks == "skip":
        return None
    if total_q < 1:
        raise CropError(f"record {record.key} is empty (duration {record.duration_s} s)")
    valid_q = min(length_q, total_q)
    if not 0 <= q0 <= total_q - valid_q:
        raise CropError(f"crop start {q0} quanta is outside [0, {total_q - valid_q}] for record {record.key}")
    q1 = q0 + valid_q

    def frames(stream: rates.StreamRate) -> tuple[int, int, int]:
        return (rates.frames_for_quanta(q0, stream), rates.frames_for_quanta(q1, stream),
                rates.frames_for_quanta(length_q, stream))

    semantic = coarse = fine = mulan = None
    if "semantic" in streams:
        f0, f1, n_s = frames(layout.semantic)
        semantic = _padded(record.semantic[f0:f1], n_s, cfg.pad_id)
    if "coarse" in streams or "fine" in streams:
        a0, a1, n_a = frames(layout.acoustic)
        if "coarse" in streams:
            rows = np.asarray(layout.coarse_levels) - 1
            coarse = _padded(record.acoustic[rows, a0:a1], n_a, cfg.pad_id)
        if "fine" in streams:
            rows = np.asarray(layout.fine_levels) - 1
            fine = _padded(record.acoustic[rows, a0:a1], n_a, cfg.pad_id)
    if stage in cfg.mulan_stages:
        if rvq is None or record.mulan_windows is None:
            raise CropError(f"the {stage} stage is conditioned on M but "
                            + ("no MuLan RVQ was given: pass rvq=mulan.load_codebook_for(model, codebook)"
                               if rvq is None else f"record {record.key} has no mulan_windows: tokenize with "
                               "--mulan_model, or drop the stage from CropConfig.mulan_stages"))
        mulan = crop_tokens(record.mulan_windows, q0 * rates.QUANTUM_S, q1 * rates.QUANTUM_S, rvq)
    melody = None
    if cfg.takes_melody(stage, layout):
        if record.melody is None or record.melody.shape[-1:] != (layout.melody_stages,):
            raise CropError(f"record {record.key} has melody tokens {getattr(record.melody, 'shape', None)} but the "
                            f"manifest's melody stream has {layout.melody_stages} stages; run beam_runner.py verify")
        melody = crop_tokens_padded(record.melody, q0 * rates.QUANTUM_S, length_q * rates.QUANTUM_S,
                                    valid_q * rates.QUANTUM_S, cfg.pad_id)
        if drop_melody:
            melody[:] = cfg.pad_id
    return Crop(record.key, stage, q0, length_q, valid_q, semantic, coarse, fine, mulan, melody)


class StageCropper:
    """Crops records for one stage from (seed, epoch, index); counts what it did in `counts`.

    Usage: ``crop = cropper(record, epoch=e, index=i)``; None means skipped (policy "skip")."""

    def __init__(self, stage: str, layout: StreamLayout, cfg: CropConfig = CropConfig(), *, seed: int,
                 rvq=None) -> None:
        if stage not in STAGES:
            raise CropError(f"unknown stage {stage!r}; stages are {STAGES}")
        vocab = {"semantic": layout.semantic_vocab, "coarse": layout.acoustic_vocab, "fine": layout.acoustic_vocab}
        for s in STAGE_STREAMS[stage]:
            if cfg.pad_id < vocab[s] and cfg.short_tracks == "pad":
                raise CropError(f"pad_id {cfg.pad_id} is a real {s} token (vocab size {vocab[s]}); choose "
                                f"pad_id >= {vocab[s]} (the default 0xFFFF) so padding never looks like music")
        if stage in cfg.mulan_stages and rvq is None:
            raise CropError(f"the {stage} stage is conditioned on M: pass rvq=mulan.load_codebook_for(...), "
                            f"or CropConfig(mulan_stages=...) without {stage!r}")
        self.stage, self.layout, self.cfg, self.seed, self.rvq = stage, layout, cfg, int(seed), rvq
        self.counts = {"records": 0, "cropped": 0, "padded": 0, "skipped": 0}

    def __call__(self, record: TrackRecord, *, epoch: int, index: int) -> Crop | None:
        self.counts["records"] += 1
        total_q = rates.quanta_of_seconds(record.duration_s)
        q0 = start_quantum(total_q, self.cfg.length_q(self.stage), self.seed, epoch, index, self.stage)
        drop = melody_dropped(self.seed, epoch, index, self.stage, self.cfg.melody_dropout)
        crop = crop_at(record, self.stage, q0, self.layout, self.cfg, self.rvq, drop_melody=drop)
        if crop is None:
            self.counts["skipped"] += 1
        else:
            self.counts["padded" if crop.padded else "cropped"] += 1
        return crop
