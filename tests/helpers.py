"""Helpers shared by several test modules (tests never import each other): the hand-made
datasets written with the schema writers, the train tests' structured dataset, a tiny random CLAP,
and the batch-invariance tests' segments and check."""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from tokenmill.schemas import manifest as mf
from tokenmill.schemas import shards as fmt
from tokenmill.schemas.records import TrackRecord, make_key, parquet_shard_name, split_of, wds_shard_name
from tokenmill.tokenizers.rvq import RVQCodebook
from tokenmill.training.train import TrainConfig
from tokenmill.training.checkpoint import save_checkpoint
from tokenmill.training.crops import CropConfig
from tokenmill.training.generate import StageModel
from tokenmill.training.model import Transformer, preset
from tokenmill.training.stages import StageLayout

# ---- the hand-made dataset of the stats / compat / reader tests ----------------------------------

VALID_FRACTION = 0.5
SEMANTIC_ID, MULAN_ID, CODEC_SHA = "semantic-0123456789ab", "mulan-ba9876543210", "c0dec" + "0" * 59
STREAMS = {
    "semantic": {"sample_rate_hz": 16000, "hop_samples": 640, "frame_rate_hz": 25.0, "vocab_size": 4},
    "acoustic": {"sample_rate_hz": 24000, "hop_samples": 480, "frame_rate_hz": 50.0, "n_q": 2,
                 "codebook_size": 4, "vocab_size": 4, "coarse_levels": [1], "fine_levels": [2]},
    "mulan": {"model": "mulan", "sample_rate_hz": 16000, "window_s": 10, "stride_s": 1, "dim": 4,
              "n_stages": 3, "vocab_size": 4},
}
U16 = np.uint16


def source_hash(split: str, salt: str) -> str:
    """A 16-hex source hash whose key lands in `split` (splits are a function of the key)."""
    for i in range(1000):
        h = hashlib.sha256(f"{salt}{i}".encode()).hexdigest()[:16]
        if split_of(make_key(h, 0), VALID_FRACTION) == split:
            return h
    raise RuntimeError("no hash found")  # pragma: no cover


def hand_records() -> list[TrackRecord]:
    ha, hb = source_hash("train", "a"), source_hash("valid", "b")
    win = np.full((1, 4), 0.5, np.float16)  # one unit-norm window (tracks under 10 s)

    def rec(h, seg, uri, dur, split, sem, ac, mu, caption=None):
        return TrackRecord(key=make_key(h, seg), uri=uri, segment=seg, start_s=0.0, duration_s=dur,
                           source_sample_rate=48000, source_channels=2, split=split,
                           semantic=np.array(sem, U16), acoustic=np.array(ac, U16),
                           mulan_windows=win, mulan=np.array(mu, U16), caption=caption)

    return [
        rec(ha, 0, "/in/a.wav", 0.16, "train", [0, 0, 1, 3],
            [[0, 0, 0, 0, 1, 1, 1, 1], [0, 1, 2, 3, 0, 1, 2, 3]], [0, 1, 2], caption="a piano"),
        rec(ha, 1, "/in/a.wav", 0.08, "train", [0, 1], [[0, 0, 0, 0], [3, 3, 3, 3]], [0, 1, 3]),
        rec(hb, 0, "/in/b.wav", 0.12, "valid", [3, 3, 3], [[1] * 6, [2] * 6], [0, 2, 3]),
    ]


def hand_dead_letters() -> list[fmt.DeadLetter]:
    return [
        fmt.DeadLetter("/in/c.flac", "decode", "UndecodableAudio", "undecodable", "c.flac: bad"),
        fmt.DeadLetter("/in/d.mp3", "decode", "UndecodableAudio", "undecodable", "d.mp3: bad"),
        fmt.DeadLetter("/in/a_copy.wav", "dedupe", "DuplicateSource", "duplicate", "same as a.wav"),
    ]


def write_dataset(root: Path, records=None, letters=None, streams=None, codebooks=None,
                  tokenizers=None, schema_version: str | None = None) -> Path:
    """A dataset directory written with the schema writers: 1 train + 1 valid shard per format."""
    records = hand_records() if records is None else records
    letters = hand_dead_letters() if letters is None else letters
    streams = STREAMS if streams is None else streams
    codebooks = {"semantic": SEMANTIC_ID, "mulan": MULAN_ID} if codebooks is None else codebooks
    if tokenizers is None:
        tokenizers = {"semantic": {"codebook_id": SEMANTIC_ID}, "mulan": {"codebook_id": MULAN_ID},
                      "acoustic": {"name": "soundstream", "weights_sha256": CODEC_SHA}}
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for form, name, enc in (("parquet", parquet_shard_name, fmt.encode_parquet),
                            ("webdataset", wds_shard_name, fmt.encode_wds)):
        for split in ("train", "valid"):
            recs = [r for r in records if r.split == split]
            data, path = enc(recs), name(split, 0, 1)
            (root / path).parent.mkdir(exist_ok=True)
            (root / path).write_bytes(data)
            shards.append(mf.ShardInfo(path, form, split, len(recs), round(sum(r.duration_s for r in recs), 6),
                                       len(data), hashlib.sha256(data).hexdigest(),
                                       sum(r.caption is not None for r in recs)))
    dead = fmt.encode_dead_letters(letters)
    (root / "failures-00000-of-00001.jsonl").write_bytes(dead)
    rec_uris, dead_uris = {r.uri for r in records}, {d.uri for d in letters}
    counts = mf.Counts(
        inputs=len(rec_uris | dead_uris), sources_in_records=len(rec_uris),
        sources_dead_only=len(dead_uris - rec_uris), dead_letters=len(letters), records=len(records),
        seconds=round(sum(r.duration_s for r in records), 6), inputs_digest=mf.uri_digest(rec_uris | dead_uris))
    m = mf.build_manifest(
        job={"num_shards": 1, "num_valid_shards": 1, "valid_fraction": VALID_FRACTION},
        tokenizers=tokenizers, codebooks=codebooks, streams=streams, shards=shards,
        dead_letter_files=[mf.DeadLetterFileInfo("failures-00000-of-00001.jsonl", len(letters), len(dead),
                                                 hashlib.sha256(dead).hexdigest())],
        counts=counts, tokenmill_version="test")
    if schema_version is not None:
        m["schema_version"] = schema_version
    (root / "manifest.json").write_bytes(mf.dumps(m))
    return root


# ---- the train tests' structured dataset (tests/test_train.py explains it) -----------------------

TRAIN_V = 16  # the train tests' vocabularies
TRAIN_STREAMS = {
    "semantic": {"sample_rate_hz": 16000, "hop_samples": 640, "frame_rate_hz": 25.0, "vocab_size": TRAIN_V},
    "acoustic": {"sample_rate_hz": 24000, "hop_samples": 480, "frame_rate_hz": 50.0, "n_q": 4,
                 "codebook_size": TRAIN_V, "vocab_size": TRAIN_V, "coarse_levels": [1, 2], "fine_levels": [3, 4]},
    "mulan": {"model": "mulan", "sample_rate_hz": 16000, "window_s": 10, "stride_s": 1, "dim": 4,
              "n_stages": 3, "vocab_size": 4},
}
TRAIN_CROPS = {"semantic_s": 2.0, "coarse_s": 1.0, "fine_s": 0.4}


def make_rvq(tmp: Path) -> Path:
    rng = np.random.default_rng(7)
    return RVQCodebook(rng.normal(size=(3, 4, 4)).astype(np.float32), card={}).save(tmp / "rvq")


def train_records(n: int = 5, seconds: float = 4.0, short_s: float | None = 1.2) -> list[TrackRecord]:
    """n structured records (one `short_s` long, shorter than the semantic crop: padded)."""
    rng = np.random.default_rng(3)
    out = []
    for r in range(n):
        dur = short_s if (short_s is not None and r == n - 1) else seconds
        t_s, t_a = round(dur * 25), round(dur * 50)
        a, b = (1, 3, 5, 7, 9, 11)[r % 6], int(rng.integers(TRAIN_V))
        win = rng.normal(size=(1, 4))
        out.append(TrackRecord(
            key=make_key(source_hash("train", f"t{r}"), 0), uri=f"/in/{r}.wav", segment=0, start_s=0.0,
            duration_s=dur, source_sample_rate=48000, source_channels=1, split="train",
            semantic=((b + a * np.arange(t_s)) % TRAIN_V).astype(np.uint16),
            acoustic=((b + 5 * np.arange(4)[:, None] + a * np.arange(t_a)) % TRAIN_V).astype(np.uint16),
            mulan_windows=(win / np.linalg.norm(win)).astype(np.float16), mulan=np.zeros(3, np.uint16)))
    return out


def train_dataset(root: Path, rvq_path: Path, semantic_id: str = "semantic-0123456789ab", **kw) -> Path:
    rvq_id = rvq_path.name.removesuffix(".safetensors")
    return write_dataset(root, records=train_records(**kw), letters=[], streams=TRAIN_STREAMS,
                         codebooks={"semantic": semantic_id, "mulan": rvq_id},
                         tokenizers={"semantic": {"codebook_id": semantic_id}, "mulan": {"codebook_id": rvq_id},
                                     "acoustic": {"name": "soundstream", "weights_sha256": CODEC_SHA}})


def train_config(d, out, **kw) -> TrainConfig:
    base = dict(stage="semantic", data=str(d["root"]), out=str(out), steps=4, batch_size=4, lr=1e-3,
                warmup_steps=2, seed=0, shuffle_buffer=4, save_every=1000, log_every=1000, device="cpu",
                mulan_codebook=str(d["rvq"]), **TRAIN_CROPS)
    return TrainConfig(**{**base, **kw})


# ---- a tiny random CLAP --------------------------------------------------------------------------

def save_tiny_clap(d, fused: bool = False, dim: int = 128):
    """A tiny random CLAP (HTSAT depths [1, 1], 1-layer RoBERTa, projection_dim `dim`), with an
    offline byte-level BPE tokenizer (45 tokens, no merges) in a ClapProcessor, saved together."""
    import torch
    import transformers

    torch.manual_seed(0)
    fusion = {"enable_fusion": True, "fusion_type": "aff_2d"} if fused else {}
    cfg = transformers.ClapConfig(
        audio_config={"depths": [1, 1], "num_attention_heads": [2, 2], "patch_embeds_hidden_size": 8,
                      "hidden_size": 16, "projection_dim": dim, **fusion},
        text_config={"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "intermediate_size": 32, "max_position_embeddings": 40, "projection_dim": dim},
        projection_dim=dim)
    model = transformers.ClapModel(cfg).eval()
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789Ġ,.-":    # Ġ: byte-level BPE's space
        vocab[c] = len(vocab)
    tok = transformers.RobertaTokenizer(vocab=vocab, merges=[])
    proc = transformers.ClapProcessor(feature_extractor=transformers.ClapFeatureExtractor(), tokenizer=tok)
    model.save_pretrained(d)
    proc.save_pretrained(d)
    return model, proc


# ---- tiny stage checkpoints of the generate tests ------------------------------------------------

GEN_MULAN_ID = "mulan-038c1bd9f9f5"  # the packaged MuLan RVQ (tokenmill/weights/mulan-default-rvq.*)
GEN_MULAN_SHA = "d316e5c3c354a60da2bf3b2ba646bf7b157bd2d1b9b1d72d952facdb574cf16d"  # the packaged MuLan model
GEN_CROP = CropConfig(semantic_s=0.4, coarse_s=0.2, fine_s=0.12)  # 10, 5 and 3 quanta
GEN_STAGES = ("semantic", "coarse", "fine")


def generate_dataset(codec_desc=None, *, sem_vocab=16, ac_vocab=1024, n_q=12, n_coarse=4, hop=480, mulan=(12, 1024),
            codebooks=None):
    """The `dataset` entry of a trainer's state.json (a manifest excerpt)."""
    desc = codec_desc or {"name": "soundstream", "weights_sha256": "none", "sample_rate_hz": 24000,
                          "hop_samples": hop}
    return {
        "codebooks": codebooks or {"mulan": GEN_MULAN_ID, "semantic": "semantic-0123456789ab"},
        "tokenizers": {"acoustic": desc, "semantic": {"codebook_id": "semantic-0123456789ab", "vocab_size": sem_vocab},
                       "mulan": {"codebook_id": GEN_MULAN_ID, "n_stages": mulan[0], "k": mulan[1],
                                 "model": {"name": "mulan", "weights_sha256": GEN_MULAN_SHA}}},
        "streams": {
            "semantic": {"sample_rate_hz": 16000, "hop_samples": 640, "vocab_size": sem_vocab, "dtype": "uint16"},
            "acoustic": {"sample_rate_hz": 24000, "hop_samples": hop, "n_q": n_q, "vocab_size": ac_vocab,
                         "coarse_levels": list(range(1, n_coarse + 1)),
                         "fine_levels": list(range(n_coarse + 1, n_q + 1)), "dtype": "uint16"},
            "mulan": {"n_stages": mulan[0], "vocab_size": mulan[1], "dtype": "uint16"}},
        "job": {"acoustic": {"codec": "soundstream", "codec_config": []},
                "mulan": {"model": "mulan", "path": None, "codebook": None}},
    }


def tiny_model(vocab: int, seed: int) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(preset("tiny", vocab, n_layers=1, n_heads=2, d_model=32, d_ff=64)).eval()


def stage_state(stage: str, ds: dict, model: Transformer) -> tuple[StageLayout, dict]:
    layout = StageLayout.from_manifest(stage, ds, GEN_CROP)
    return layout, {"stage": stage, "layout": layout.to_json(), "model": asdict(model.cfg),
                    "train": {f"{s}_s": float(getattr(GEN_CROP, f"{s}_s")) for s in GEN_STAGES}, "dataset": ds}


def make_stages(ds: dict, seed: int = 0, wrap=None) -> dict[str, StageModel]:
    out = {}
    for k, stage in enumerate(GEN_STAGES):
        layout = StageLayout.from_manifest(stage, ds, GEN_CROP)
        model = tiny_model(layout.vocab_size, seed + k)
        _, state = stage_state(stage, ds, model)
        out[stage] = StageModel(wrap(model) if wrap else model, layout, state, f"<{stage}>")
    return out


def save_stages(root, ds: dict, seed: int = 0):
    for stage, sm in make_stages(ds, seed).items():
        save_checkpoint(root / stage, 7 + GEN_STAGES.index(stage), sm.model, sm.state)
    return root


# ---- batch invariance: five real segments and the alone-vs-in-a-batch check ------------------

def torch_devices() -> list[str]:
    """The CPU, and CUDA where this machine has it."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def as_segment_input(s):
    from tokenmill.pipelines.ingest import SegmentInput

    return SegmentInput(key=s.key, uri="x", segment=s.segment, start_s=s.start_s, duration_s=s.duration_s,
                        n_quanta=s.n_quanta, source_sample_rate=s.source_sample_rate,
                        source_channels=s.source_channels, waves=dict(s.waves))


def cut_segment(seg, seconds: float):
    """The first `seconds` (a multiple of 40 ms) of a segment: another length in the batch."""
    from tokenmill.pipelines.ingest import SegmentInput

    q = round(seconds / 0.04)
    waves = {r: w[: q * r // 25] for r, w in seg.waves.items()}
    return SegmentInput(key=seg.key[:-4] + "0099", uri=seg.uri, segment=99, start_s=0.0, duration_s=q * 0.04,
                        n_quanta=q, source_sample_rate=seg.source_sample_rate,
                        source_channels=seg.source_channels, waves=waves)


def invariance_segments(real_audio_dir: Path, rates_hz=(16_000, 24_000)) -> list:
    """[target, same-length partner, same-length partner of another track, a 7.52 s segment, a 3.2 s cut]."""
    from tokenmill.tokenizers import audio

    cfg = audio.AudioConfig(target_rates_hz=rates_hz, max_segment_s=11)

    def prep(name, key):
        return [as_segment_input(s) for s in audio.prepare((real_audio_dir / name).read_bytes(), key, cfg)]
    a, b = prep("pushover_greek.flac", "a"), prep("asc_frontiers.mp3", "b")
    c = prep("singularity_through_space.opus", "c")
    segs = [a[0], a[1], b[0], c[0], cut_segment(b[1], 3.2)]
    if [s.duration_s for s in segs] != [10.0, 10.0, 10.0, 7.52, 3.2]:
        raise AssertionError(f"fixture durations changed: {[s.duration_s for s in segs]}")
    return segs


def handler_results(handler, model, batch) -> list:
    return [r.inference for r in handler.run_inference(batch, model)]


def check_invariant(handler, segs, equal) -> tuple:
    """The target's result alone equals it inside four batches (both orders of all five, with its
    equal-length partners only, with the other lengths only); returns (it, the loaded model)."""
    model = handler.load_model()
    alone = handler_results(handler, model, [segs[0]])[0]
    for batch, pos in ((segs, 0), (segs[::-1], len(segs) - 1), ([segs[1], segs[0], segs[2]], 1),
                       ([segs[3], segs[4], segs[0]], 2)):
        equal(handler_results(handler, model, batch)[pos], alone)
    return alone, model
