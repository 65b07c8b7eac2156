"""Capacity plan for tokenizing a corpus of `--hours` of audio, from numbers measured by the benches here.

    python bench/plan.py --hours 280000            # table
    python bench/plan.py --hours 280000 --json     # machine-readable

Every rate below is a `Const` that names the bench which measured it and the README Benchmarks row
(or section) it comes from. Model choices that were not run here (w2v-BERT, EnCodec) are scaled from
the built-in models' measured rates by FLOPs per audio second, counted with
torch.utils.flop_counter.FlopCounterMode (matmul + convolution FLOPs, 10 s of input; `--count_flops`
recounts them). That scaling assumes the same achieved FLOP/s per thread as the built-in model it is
scaled from, which is an estimate: it says so in its label.

Unit prices (--cpu_hour_usd, --gpu_hour_usd, --gb_month_usd) are parameters; their defaults are
examples, not quotes. `capacity_plan()` is pure arithmetic (no I/O), so tests check it by hand.
Not a benchmark: it measures nothing itself.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenmill.schemas.shard_plan import (  # noqa: E402
    DEFAULT_TARGET_SHARD_MB, INPUT_BYTES_PER_S, plan_shards, stream_bytes_per_s)


@dataclass(frozen=True)
class Const:
    value: float
    unit: str
    source: str  # bench script + README row (or "counted", "estimate: ...")


B = "README Benchmarks row"
# --- decode (bench_frontend: decode -> mono -> 24 kHz + 16 kHz, x real time per core) -------------
DECODE_X_RT = {
    ".mp3": Const(1308, "x real time / core", f"bench_frontend.py, {B} bench_frontend (MP3)"),
    ".flac": Const(1070, "x real time / core", f"bench_frontend.py, {B} bench_frontend (FLAC)"),
    ".ogg": Const(577, "x real time / core", f"bench_frontend.py, {B} bench_frontend (OGG Vorbis)"),
    ".wav": Const(7151, "x real time / core", f"bench_frontend.py, {B} bench_frontend (WAV)"),
    ".opus": Const(172, "x real time / core", f"bench_frontend.py, {B} bench_frontend (Ogg Opus)"),
}
# the format mix of the 280k-hour fake listing (tests/listing_fs.py, bench_listing.py)
DEFAULT_MIX = {".mp3": 0.60, ".flac": 0.25, ".ogg": 0.10, ".wav": 0.05}
CLIP_S = Const(201.6, "s per clip", f"bench_listing.py, {B} bench_listing (5M clips = 280k hours)")

# --- models: x real time per thread (measured) or FLOPs per audio second (counted) ---------------
SOUNDSTREAM_X_RT = Const(46, "x real time / thread", f"bench_codec_quality.py, {B} bench_codec_quality (encode)")
SPECTRAL_X_RT = Const(1675, "x real time / thread",
                      "bench_semantic_invariance.py, README 'Semantic extractors' table (x RT/thread)")
MELODIC_X_RT = Const(263, "x real time / thread",
                     "bench_semantic_invariance.py, README 'Semantic extractors' second table (x RT/thread; "
                     "the same run measured spectral at 1266x on the loaded machine)")
BASIC_PITCH_X_RT = Const(26, "x real time / thread", f"bench_semantic_invariance.py, {B} bench_semantic_invariance")
WB = f"bench_window_batching.py, {B} bench_window_batching"
MULAN_X_RT = Const(365, "x real time / thread",
                   f"{WB} (200 s segments, windows batched across segments, one log-mel per segment)")
MELODY_X_RT = Const(741, "x real time / thread",
                    f"{WB} (200 s segments, windows batched across segments, one log-mel per segment)")
GFLOP_PER_S = {  # forward FLOPs per audio second
    "soundstream": Const(0.531, "GFLOP / audio s", "counted: FlopCounterMode, packaged encoder + RVQ (--count_flops)"),
    "encodec": Const(2.508, "GFLOP / audio s",
                     "counted: FlopCounterMode, transformers EncodecModel default 24 kHz config, encode at 6 kbps"),
    "w2v-bert": Const(18.00, "GFLOP / audio s",
                      "counted: FlopCounterMode, transformers Wav2Vec2BertModel default config (w2v-BERT 2.0 "
                      "size), eval mode, the 7 layers the adapter runs, 10 s input (attention grows with length)"),
}
PARAMS_M = {"encodec": 14.85, "w2v-bert": 169.4}  # millions, counted on the same configs
PIPELINE_OVERHEAD = Const(0.009, "x codec encode CPU time",
                          f"bench_pipeline_overhead.py, {B} bench_pipeline_overhead (Beam/start-up/I-O share)")
TOKENIZE_CPU_X_CODEC = Const(1.10, "x codec encode CPU time",
                             f"bench_pipeline_overhead.py, {B} bench_pipeline_overhead (tokenize CPU time)")

# --- bytes (bench_bytes: written bytes / floor, k = 1024, 2 h of real music) ----------------------
WRITTEN_X_FLOOR = {  # (parquet, webdataset .tar.xz)
    "semantic": (Const(0.63, "x floor", f"bench_bytes.py, {B} bench_bytes (semantic Parquet)"),
                 Const(0.36, "x floor", f"bench_bytes.py, {B} bench_bytes (semantic .tar.xz)")),
    "acoustic": (Const(0.97, "x floor", f"bench_bytes.py, {B} bench_bytes (acoustic Parquet)"),
                 Const(0.94, "x floor", f"bench_bytes.py, {B} bench_bytes (acoustic .tar.xz)")),
    "mulan_windows": (Const(0.89, "x raw float16", f"bench_bytes.py, {B} bench_bytes (mulan_windows Parquet)"),
                      Const(0.80, "x raw float16", f"bench_bytes.py, {B} bench_bytes (mulan_windows .tar.xz)")),
}
MELODY_X_RAW = (  # written / raw bytes of a stored window's float16 embedding + uint16 tokens, per window
    Const(1.07, "x raw", "bench_bytes.py on the 5-min small corpus (melody Parquet: windows 1.12x, tokens 0.66x)"),
    Const(0.88, "x raw", "bench_bytes.py on the 5-min small corpus (melody .tar.xz: windows 0.90x, tokens 0.70x)"))
MULAN_TOKENS_KB_PER_H = (Const(0.8, "kB / audio-hour", f"bench_bytes.py, {B} bench_bytes (mulan Parquet)"),
                         Const(1.0, "kB / audio-hour", f"bench_bytes.py, {B} bench_bytes (mulan .tar.xz)"))

# --- memory, launch, fixed and downstream work -----------------------------------------------------
RSS_MB = {
    "all streams": Const(777, "MB peak RSS / worker",
                         f"bench_scale.py, {B} bench_scale (semantic, acoustic, MuLan, melody; 10,000 files, "
                         "1 torch thread, 1.14x the 1,250-file run)"),
    "semantic+acoustic": Const(765, "MB peak RSS / worker",
                               f"bench_scale.py, {B} bench_scale (10,000 files, 1 torch thread, flat in size)"),
    "semantic": Const(533, "MB peak RSS / worker", f"bench_scale.py, {B} bench_scale (semantic only)"),
}
LISTING_S_PER_ENTRY = Const(5.4e-6, "s / listed file", f"bench_listing.py, {B} bench_listing (list + plan)")
LISTING_RSS_MB_5M = Const(1553, "MB peak RSS at 5M entries", f"bench_listing.py, {B} bench_listing")
KMEANS_FIT_S = Const(28.6, "s, one worker", f"bench_exact.py, {B} bench_exact (k = 1024 fit, 150k x 92)")
RVQ_FIT_S = Const(56.8, "s, one worker", f"bench_rvq.py, {B} bench_rvq (12 x 1024 on 10k x 128)")
MEMO_WORKER_H_PER_25G = Const(660, "worker-hours / 25e9 tokens", f"bench_memorization.py, {B} bench_memorization")

MODELS = {  # stream -> model -> (how its rate is known, stream entry for shard_plan)
    "semantic": {"melodic": {"frame_rate_hz": 25}, "spectral": {"frame_rate_hz": 25},
                 "basic-pitch": {"frame_rate_hz": 25},
                 "w2v-bert": {"frame_rate_hz": 25}},
    "acoustic": {"soundstream": {"n_q": 12, "frame_rate_hz": 50, "codebook_size": 1024},
                 "encodec": {"n_q": 8, "frame_rate_hz": 75, "codebook_size": 1024}},  # 6 kbps
    "mulan": {"mulan": {"dim": 128, "stride_s": 1.0}},
    "melody": {"builtin": {"dim": 192, "n_stages": 24, "stride_s": 1.0}},
}
MODEL_SETS = {"built-in": {"semantic": "melodic", "acoustic": "soundstream", "mulan": "mulan", "melody": "builtin"},
              "large": {"semantic": "w2v-bert", "acoustic": "encodec", "mulan": "mulan", "melody": "builtin"}}
NEURAL = {"soundstream", "encodec", "w2v-bert", "mulan", "basic-pitch", "melodic", "builtin"}


def model_x_rt(model: str) -> Const:
    """x real time per thread of a model: measured, or scaled from a measured one by FLOPs."""
    measured = {"soundstream": SOUNDSTREAM_X_RT, "melodic": MELODIC_X_RT, "spectral": SPECTRAL_X_RT, "basic-pitch": BASIC_PITCH_X_RT,
                "mulan": MULAN_X_RT, "builtin": MELODY_X_RT}
    if model in measured:
        return measured[model]
    ref = GFLOP_PER_S["soundstream"]
    x = SOUNDSTREAM_X_RT.value * ref.value / GFLOP_PER_S[model].value
    return Const(round(x, 2), "x real time / thread",
                 f"estimate: soundstream's {SOUNDSTREAM_X_RT.value:g}x (bench_codec_quality) x "
                 f"{ref.value:g} / {GFLOP_PER_S[model].value:g} GFLOP per audio s (same achieved FLOP/s assumed)")


def written_bytes_per_s(stream: str, model: str, fmt: int) -> float:
    """Bytes per audio second as written (compressed), fmt 0 = Parquet, 1 = WebDataset."""
    cfg = MODELS[stream][model]
    if stream == "semantic":
        return WRITTEN_X_FLOOR["semantic"][fmt].value * 25 * 10 / 8  # 25 tok/s x 10 bit (k = 1024)
    if stream == "acoustic":
        floor = cfg["n_q"] * cfg["frame_rate_hz"] * math.log2(cfg["codebook_size"]) / 8
        return WRITTEN_X_FLOOR["acoustic"][fmt].value * floor
    if stream == "melody":  # float16 windows + uint16 tokens, one row each per stride
        return MELODY_X_RAW[fmt].value * (2 * cfg["dim"] + 2 * cfg["n_stages"]) / cfg["stride_s"]
    return (WRITTEN_X_FLOOR["mulan_windows"][fmt].value * 2 * cfg["dim"] / cfg["stride_s"]
            + MULAN_TOKENS_KB_PER_H[fmt].value * 1000 / 3600)


def capacity_plan(hours: float, *, mix: dict[str, float] | None = None, fmt: str = "parquet",
                  cpu_hour_usd: float = 0.04, gpu_hour_usd: float = 2.5, gb_month_usd: float = 0.02,
                  gpu_x_thread: float | None = None, target_shard_mb: float = DEFAULT_TARGET_SHARD_MB,
                  valid_fraction: float = 0.05) -> dict:
    """The plan as a dict (pure). Worker-hours are single-thread CPU hours (one worker = one thread,
    as the benches measured); `gpu_x_thread` (a GPU's throughput in threads, not measured here)
    moves the neural stages onto GPU hours when given."""
    mix = dict(DEFAULT_MIX if mix is None else mix)
    if abs(sum(mix.values()) - 1.0) > 1e-9 or any(e not in DECODE_X_RT for e in mix):
        raise ValueError(f"--mix must be shares of {sorted(DECODE_X_RT)} summing to 1, got {mix}")
    f = {"parquet": 0, "webdataset": 1}[fmt]
    audio_s = hours * 3600.0
    decode_h = sum(share * hours / DECODE_X_RT[e].value for e, share in sorted(mix.items()))
    stages = {"decode": {"worker_hours": decode_h, "x_rt": hours / decode_h,
                         "source": "bench_frontend.py by format, weighted by the mix"}}
    streams = {}
    for stream, models in MODELS.items():
        for model, cfg in models.items():
            x = model_x_rt(model)
            stored = sum(stream_bytes_per_s({stream: cfg}).values())
            streams[f"{stream}/{model}"] = {
                "x_rt_per_thread": x.value, "source": x.source, "worker_hours": hours / x.value,
                "gflop_per_audio_s": GFLOP_PER_S[model].value if model in GFLOP_PER_S else None,
                "stored_bytes": stored * audio_s, "written_bytes": written_bytes_per_s(stream, model, f) * audio_s}
    n_files = math.ceil(hours * 3600 / CLIP_S.value)
    bytes_by_ext = {e: round(audio_s * share * INPUT_BYTES_PER_S[e]) for e, share in sorted(mix.items())}
    sets = {}
    for name, choice in MODEL_SETS.items():
        entries = {s: MODELS[s][m] for s, m in choice.items()}
        sp = plan_shards(bytes_by_ext, n_files, entries, valid_fraction=valid_fraction,
                         target_shard_mb=target_shard_mb)
        rows = {s: streams[f"{s}/{m}"] for s, m in choice.items()}
        codec_h = rows["acoustic"]["worker_hours"]
        work = {"decode": decode_h, **{f"{s}:{m}": rows[s]["worker_hours"] for s, m in choice.items()},
                "beam+io": PIPELINE_OVERHEAD.value * codec_h}
        total_h = sum(work.values())
        bound = max(work, key=work.get)
        rest = total_h - work[bound]
        gpu_h = None
        cpu_h = total_h
        if gpu_x_thread:
            neural = sum(h for k, h in work.items() if k.split(":")[-1] in NEURAL)
            gpu_h, cpu_h = neural / gpu_x_thread, total_h - neural
        written = sum(r["written_bytes"] for r in rows.values())
        journal = sp.out_bytes_per_s * audio_s  # every segment's tokens, uncompressed, until the manifest
        extra_mb = 4 * 1e6 * sum(PARAMS_M.get(m, 0.0) for m in choice.values()) / 1e6  # fp32 weights
        sets[name] = {
            "models": choice, "worker_hours": work, "total_worker_hours": total_h, "bound_by": bound,
            "bound_share": work[bound] / total_h,
            "speedup_if_bound_stage_were_free": total_h / rest if rest > 0 else math.inf,
            "cpu_hours": cpu_h, "gpu_hours": gpu_h, "written_bytes": written, "journal_bytes": journal,
            "shard_plan": sp.to_json(),
            "memory_per_worker_mb": RSS_MB["all streams"].value + extra_mb,
            "memory_source": RSS_MB["all streams"].source
            + ("" if not extra_mb else f"; + {extra_mb:.0f} MB fp32 weights (estimate: 4 B x counted params; activations not counted)"),
            "cost_usd": {"compute": cpu_h * cpu_hour_usd + (gpu_h or 0.0) * gpu_hour_usd,
                         "storage_per_month": written / 1e9 * gb_month_usd,
                         "journal_one_month": journal / 1e9 * gb_month_usd},
        }
    tokens = audio_s * 25
    return {
        "hours": hours, "format": fmt, "mix": mix, "files": n_files, "input_bytes": sum(bytes_by_ext.values()),
        "prices": {"cpu_hour_usd": cpu_hour_usd, "gpu_hour_usd": gpu_hour_usd, "gb_month_usd": gb_month_usd,
                   "gpu_x_thread": gpu_x_thread, "note": "examples, not quotes"},
        "stages": stages, "streams": streams, "sets": sets,
        "launcher": {"listing_s": n_files * LISTING_S_PER_ENTRY.value,
                     "listing_rss_mb": LISTING_RSS_MB_5M.value * n_files / 5e6,
                     "source": f"{LISTING_S_PER_ENTRY.source}; RSS scaled linearly from 5M entries (estimate)"},
        "fixed": {"kmeans_fit_s": KMEANS_FIT_S.value, "rvq_fit_s": RVQ_FIT_S.value,
                  "note": "one worker; fits draw a fixed-size sample, so they do not grow with the hours"},
        "downstream": {"memorization_worker_hours": MEMO_WORKER_H_PER_25G.value * tokens / 25e9,
                       "semantic_tokens": tokens, "source": MEMO_WORKER_H_PER_25G.source},
        "check": {"builtin_model_sum_x_codec": (
                      sum(h for k, h in sets["built-in"]["worker_hours"].items() if not k.startswith(("mulan", "melody")))
                      / streams["acoustic/soundstream"]["worker_hours"]),
                  "measured_tokenize_x_codec": TOKENIZE_CPU_X_CODEC.value, "source": TOKENIZE_CPU_X_CODEC.source},
    }


def next_10x(s: dict) -> str:
    """Where the next 10x of throughput per worker-hour would come from, from the plan's own numbers."""
    w, bound = s["worker_hours"], s["bound_by"]
    free = s["speedup_if_bound_stage_were_free"]
    model = bound.split(":")[-1]
    lines = [f"bound by {bound}: {s['bound_share']:.0%} of the worker-hours; if it cost nothing the job "
             f"would be {free:.1f}x cheaper"]
    if free < 10:
        second = sorted(w, key=w.get)[-2]
        lines.append(f"so a 10x needs {bound} >= 10x faster AND {second} ({w[second]:,.0f} h) faster too")
    if model in NEURAL:
        g = GFLOP_PER_S.get(model)
        flops = f" ({g.value:g} GFLOP per audio second)" if g else ""
        lines.append(f"{bound}{flops} is dense convolution/matmul work: the 10x is a GPU worker (not measured "
                     "here; price it with --gpu_x_thread), batching several segments per call, or a cheaper "
                     "model; more CPU workers shorten the wall time, not the worker-hours")
    else:
        lines.append(f"{bound} is per-file CPU work: more workers shorten the wall time linearly (no shared "
                     "state between files); worker-hours drop only with a faster kernel or format")
    return "; ".join(lines)


def fmt_bytes(n: float) -> str:
    for unit, k in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:,.2f} {unit}"
    return f"{n:.0f} B"


def report(p: dict) -> str:
    out = [f"capacity plan: {p['hours']:,.0f} audio-hours, {p['files']:,} files "
           f"({CLIP_S.value} s per clip, {CLIP_S.source}), {fmt_bytes(p['input_bytes'])} of inputs "
           f"(mix {', '.join(f'{e} {v:.0%}' for e, v in p['mix'].items())}), {p['format']} shards",
           f"prices (examples, not quotes): CPU thread-hour ${p['prices']['cpu_hour_usd']}, GPU hour "
           f"${p['prices']['gpu_hour_usd']}, GB-month ${p['prices']['gb_month_usd']}", "",
           "per stream and model (1 worker = 1 thread):",
           f"{'stream/model':24s}{'x RT/thread':>12s}{'worker-h':>12s}{'stored':>12s}{'written':>12s}  source"]
    d = p["stages"]["decode"]
    out.append(f"{'decode (once per file)':24s}{d['x_rt']:>12.0f}{d['worker_hours']:>12,.0f}{'':>24s}  {d['source']}")
    for k, r in p["streams"].items():
        out.append(f"{k:24s}{r['x_rt_per_thread']:>12g}{r['worker_hours']:>12,.0f}{fmt_bytes(r['stored_bytes']):>12s}"
                   f"{fmt_bytes(r['written_bytes']):>12s}  {r['source']}")
    for name, s in p["sets"].items():
        sp = s["shard_plan"]
        c = s["cost_usd"]
        out += ["", f"model set '{name}': {', '.join(f'{k}={v}' for k, v in s['models'].items())}",
                "  worker-hours: " + ", ".join(f"{k} {v:,.0f}" for k, v in s["worker_hours"].items())
                + f"; total {s['total_worker_hours']:,.0f}"
                + (f" (CPU {s['cpu_hours']:,.0f} + GPU {s['gpu_hours']:,.0f})" if s["gpu_hours"] is not None else ""),
                f"  output: {fmt_bytes(s['written_bytes'])} written; {sp['num_shards']:,} train + "
                f"{sp['num_valid_shards']:,} valid shards of <= {sp['target_shard_mb']:g} MiB stored "
                f"(schemas/shard_plan.plan_shards: {fmt_bytes(sp['est_out_bytes'])} of arrays)",
                f"  journal while running: {fmt_bytes(s['journal_bytes'])} "
                f"({sp['out_bytes_per_s'] * 3600 / 1e6:.2f} MB per audio-hour, uncompressed; removed at the end)",
                f"  memory per worker: {s['memory_per_worker_mb']:,.0f} MB ({s['memory_source']})",
                f"  cost: compute ${c['compute']:,.0f}; storage ${c['storage_per_month']:,.2f} per month; "
                f"journal ${c['journal_one_month']:,.2f} if held a month",
                f"  {next_10x(s)}"]
    la, fx, dn, ck = p["launcher"], p["fixed"], p["downstream"], p["check"]
    out += ["", f"launcher (one process): listing {la['listing_s']:,.0f} s, ~{la['listing_rss_mb']:,.0f} MB "
            f"peak ({la['source']})",
            f"fixed, one worker: k-means fit {fx['kmeans_fit_s']} s ({KMEANS_FIT_S.source}); RVQ fit "
            f"{fx['rvq_fit_s']} s ({RVQ_FIT_S.source}); {fx['note']}",
            f"downstream: memorization scan of {dn['semantic_tokens']:.3g} semantic tokens "
            f"{dn['memorization_worker_hours']:,.0f} worker-hours ({dn['source']})",
            f"check: built-in decode + semantic + codec + Beam = {ck['builtin_model_sum_x_codec']:.3f}x the codec's "
            f"time; measured tokenize {ck['measured_tokenize_x_codec']}x ({ck['source']})"]
    return "\n".join(out)


def count_flops() -> dict[str, float]:
    """Recount GFLOP per audio second of the built-in codec (packaged weights) and the two
    transformers architectures at their default configs (random weights on the meta device)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import EncodecConfig, EncodecModel, Wav2Vec2BertConfig, Wav2Vec2BertModel

    from tokenmill.tokenizers.soundstream import SoundStreamCodec

    def gflop_per_s(fn, seconds=10):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            fn()
        return fc.get_total_flops() / seconds / 1e9

    out = {"soundstream": gflop_per_s(lambda: SoundStreamCodec().model.encode(torch.zeros(1, 1, 240_000)))}
    enc = EncodecModel(EncodecConfig()).eval()
    out["encodec"] = gflop_per_s(lambda: enc.encode(torch.zeros(1, 1, 240_000), bandwidth=6.0))
    cfg = Wav2Vec2BertConfig()
    with torch.device("meta"):
        w2v = Wav2Vec2BertModel(cfg).eval()  # eval: no layerdrop
    w2v.encoder.layers = w2v.encoder.layers[:7]
    x = torch.zeros(1, 500, cfg.feature_projection_input_dim, device="meta")  # 10 s of 50 Hz fbank pairs
    out["w2v-bert"] = gflop_per_s(lambda: w2v(input_features=x))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=280_000, help="audio-hours of the corpus (default 280000)")
    ap.add_argument("--format", choices=["parquet", "webdataset"], default="parquet",
                    help="shard format, for the written (compressed) bytes (bench_bytes ratios)")
    ap.add_argument("--mix", default=None, help="input format shares, e.g. '.mp3=0.6,.flac=0.25,.ogg=0.1,.wav=0.05' "
                    "(the default, bench_listing's mix); extensions: " + ", ".join(sorted(DECODE_X_RT)))
    ap.add_argument("--cpu_hour_usd", type=float, default=0.04, help="price of one CPU thread-hour (example)")
    ap.add_argument("--gpu_hour_usd", type=float, default=2.5, help="price of one GPU hour (example)")
    ap.add_argument("--gb_month_usd", type=float, default=0.02, help="price of one GB stored for a month (example)")
    ap.add_argument("--gpu_x_thread", type=float, default=None,
                    help="throughput of one GPU in CPU threads for the neural stages; not measured here, "
                    "so GPU hours are priced only when you give it")
    ap.add_argument("--target_shard_mb", type=float, default=DEFAULT_TARGET_SHARD_MB,
                    help="target stored MiB per shard, as tokenize's flag")
    ap.add_argument("--valid_fraction", type=float, default=0.05, help="share of records in valid, as tokenize's")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    ap.add_argument("--count_flops", action="store_true",
                    help="recount the GFLOP per audio second constants (loads torch/transformers) and exit")
    a = ap.parse_args(argv)
    if a.count_flops:
        print(json.dumps(count_flops(), indent=1))
        return
    mix = None
    if a.mix:
        try:
            mix = {e.strip(): float(v) for e, v in (kv.split("=") for kv in a.mix.split(","))}
        except ValueError:
            ap.error(f"--mix: cannot parse {a.mix!r}; write '.mp3=0.6,.flac=0.4'")
    try:
        p = capacity_plan(a.hours, mix=mix, fmt=a.format, cpu_hour_usd=a.cpu_hour_usd,
                          gpu_hour_usd=a.gpu_hour_usd, gb_month_usd=a.gb_month_usd, gpu_x_thread=a.gpu_x_thread,
                          target_shard_mb=a.target_shard_mb, valid_fraction=a.valid_fraction)
    except ValueError as e:
        ap.error(str(e))
    print(json.dumps(p, indent=1) if a.json else report(p))


if __name__ == "__main__":
    main()
