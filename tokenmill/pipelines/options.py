"""Job options: argparse definitions (with the --help text users read) and the frozen configs.

Our options are parsed by `beam_runner.py` with `parse_known_args`; everything left over goes to
Beam's PipelineOptions untouched (--runner, --direct_running_mode, --direct_num_workers,
--project, --temp_location, ...). The parsed values become frozen dataclasses that are baked into
the job graph and saved in the manifest / codebook card.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field

from tokenmill.tokenizers.audio import AudioConfig


@dataclass(frozen=True)
class SemanticConfig:
    extractor: str = "spectral"
    extractor_config: tuple[tuple[str, object], ...] = ()  # (name, value) pairs, JSON-able
    batch_size: int = 8  # segments per RunInference batch

    def extractor_kwargs(self) -> dict:
        return dict(self.extractor_config)


@dataclass(frozen=True)
class AcousticConfig:
    codec: str = "soundstream"  # "none" | "soundstream" | "encodec" | "dac" | "mimi"
    codec_config: tuple[tuple[str, object], ...] = ()  # (name, value) pairs passed to build_codec
    batch_size: int = 4  # segments per RunInference batch
    torch_threads: int = 0  # per worker process; 0 = torch's default (all cores)

    @property
    def enabled(self) -> bool:
        return self.codec != "none"

    def codec_kwargs(self) -> dict:
        return dict(self.codec_config)


@dataclass(frozen=True)
class FitCodebookConfig:
    inputs: tuple[str, ...]
    output: str  # directory that receives <kind>-<sha12>.safetensors + .json
    num_clusters: int = 1024
    sample_frames: int = 200_000  # frames drawn for the fit (deterministic: smallest hash priorities)
    heldout_frames: int = 20_000  # frames drawn beside them for the held-out MSE
    n_iter: int = 25
    seed: int = 0
    use_gpu: bool = False
    audio: AudioConfig = field(default_factory=AudioConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TokenizeConfig:
    inputs: tuple[str, ...]
    output: str
    codebook: str
    captions: str | None = None
    num_shards: int = 4  # train shards; fixed so shard = f(key) and re-runs are byte-identical
    num_valid_shards: int = 1
    valid_fraction: float = 0.05
    formats: tuple[str, ...] = ("parquet", "webdataset")
    audio: AudioConfig = field(default_factory=AudioConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    acoustic: AcousticConfig = field(default_factory=AcousticConfig)

    def shard_count(self, split: str) -> int:
        return self.num_valid_shards if split == "valid" else self.num_shards

    def to_json(self) -> dict:
        return asdict(self)


def _add_audio_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("audio front end")
    d = AudioConfig()
    g.add_argument("--max_segment_s", type=float, default=d.max_segment_s,
                   help="split longer files into near-equal segments of at most this many seconds, "
                        "on 40 ms boundaries (default %(default)s)")
    g.add_argument("--min_duration_s", type=float, default=d.min_duration_s,
                   help="shorter files become dead letters with reason 'empty' (default %(default)s)")
    g.add_argument("--min_source_rate_hz", type=int, default=d.min_source_rate_hz,
                   help="lower source sample rates are dead letters ('unsupported'); 8000 accepts "
                        "telephone-band audio (default %(default)s)")
    g.add_argument("--max_channels", type=int, default=d.max_channels,
                   help="more channels than this are dead letters (default %(default)s)")
    g.add_argument("--silence_dbfs", type=float, default=d.silence_dbfs,
                   help="files whose peak is below this level are dead letters ('silent') "
                        "(default %(default)s)")
    g.add_argument("--decoder", choices=("auto", "soundfile", "pedalboard"), default=d.decoder,
                   help="'auto' picks per format the decoder measured fastest (bench/bench_frontend.py); "
                        "the content hash of lossy formats depends on the decoder")
    g.add_argument("--resample_quality", choices=("VHQ", "HQ", "MQ", "LQ", "QQ"),
                   default=d.resample_quality, help="soxr quality (default %(default)s)")


def _add_semantic_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("semantic features")
    g.add_argument("--semantic_extractor", default="spectral",
                   help="feature extractor; 'spectral' is the built-in weight-free log-mel+chroma "
                        "baseline (default %(default)s)")
    g.add_argument("--batch_size", type=int, default=8,
                   help="segments per RunInference batch (default %(default)s)")


ACOUSTIC_DEFAULT = "soundstream"  # the built-in codec with its committed checkpoint


def _add_acoustic_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("acoustic tokens")
    g.add_argument("--acoustic_codec", choices=("none", "soundstream", "encodec", "dac", "mimi"),
                   default=ACOUSTIC_DEFAULT,
                   help="acoustic codec: 'soundstream' is the built-in 24 kHz, 50 Hz x 12x1024 codec; "
                        "encodec/dac/mimi load a transformers save_pretrained directory given by "
                        "--acoustic_model; 'none' leaves the acoustic field null (default %(default)s)")
    g.add_argument("--acoustic_model", metavar="PATH",
                   help="weights: a save_pretrained directory (encodec/dac/mimi) or a SoundStream "
                        ".safetensors (default: the committed built-in checkpoint)")
    g.add_argument("--acoustic_bandwidth_kbps", type=float,
                   help="EnCodec only: target bandwidth, which sets the number of levels")
    g.add_argument("--acoustic_n_q", type=int, help="DAC/Mimi only: number of levels to keep")
    g.add_argument("--acoustic_batch_size", type=int, default=4,
                   help="segments per acoustic RunInference batch (default %(default)s)")
    g.add_argument("--torch_threads", type=int, default=0,
                   help="torch threads per worker process for the codec; with N worker processes on "
                        "C cores use C/N to avoid oversubscription (default 0: torch's default)")


def acoustic_config(args: argparse.Namespace) -> AcousticConfig:
    kw = {}
    if args.acoustic_model:
        kw["path"] = args.acoustic_model
    if args.acoustic_bandwidth_kbps is not None:
        if args.acoustic_codec != "encodec":
            raise SystemExit("--acoustic_bandwidth_kbps applies to --acoustic_codec encodec only")
        kw["bandwidth_kbps"] = args.acoustic_bandwidth_kbps
    if args.acoustic_n_q is not None:
        if args.acoustic_codec not in ("dac", "mimi"):
            raise SystemExit("--acoustic_n_q applies to --acoustic_codec dac or mimi only")
        kw["n_q"] = args.acoustic_n_q
    if args.acoustic_codec in ("encodec", "dac", "mimi") and "path" not in kw:
        raise SystemExit(f"--acoustic_codec {args.acoustic_codec} needs --acoustic_model DIR "
                         "(a transformers save_pretrained directory; nothing is downloaded)")
    if args.acoustic_codec == "none" and kw:
        raise SystemExit("--acoustic_model and friends need --acoustic_codec")
    if args.torch_threads < 0:
        raise SystemExit("--torch_threads must be >= 0")
    return AcousticConfig(codec=args.acoustic_codec, codec_config=tuple(sorted(kw.items())),
                          batch_size=args.acoustic_batch_size, torch_threads=args.torch_threads)


def _common_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", dest="inputs", action="append", required=True, metavar="GLOB",
                   help="audio files to read; a local glob, gs://bucket/dir/*.flac or s3://...; "
                        "repeat for several. Every matched file is an input: it ends up in the "
                        "shards or in the dead letters.")


def add_fit_codebook_args(p: argparse.ArgumentParser) -> None:
    _common_inputs(p)
    p.add_argument("--output", required=True, metavar="DIR",
                   help="directory for the codebook: <kind>-<sha12>.safetensors plus a JSON card")
    p.add_argument("--num_clusters", type=int, default=1024, help="k (default %(default)s)")
    p.add_argument("--sample_frames", type=int, default=200_000,
                   help="frames used for the fit, drawn deterministically (default %(default)s)")
    p.add_argument("--heldout_frames", type=int, default=20_000,
                   help="frames held out for the card's MSE (default %(default)s)")
    p.add_argument("--n_iter", type=int, default=25, help="Lloyd iterations (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling and seeding seed (default %(default)s)")
    p.add_argument("--use_gpu", action="store_true",
                   help="fit with faiss-gpu; fails (no fallback) when faiss-gpu or a GPU is missing")
    _add_audio_args(p)
    _add_semantic_args(p)


def add_tokenize_args(p: argparse.ArgumentParser) -> None:
    _common_inputs(p)
    p.add_argument("--output", required=True, metavar="DIR",
                   help="dataset directory: parquet/, wds/, failures-*.jsonl, manifest.json")
    p.add_argument("--codebook", required=True, metavar="PATH",
                   help="semantic codebook (.safetensors or its .json card, or a directory holding "
                        "exactly one semantic codebook), as written by fit-codebook")
    p.add_argument("--captions", metavar="FILE",
                   help="MusicCaps CSV (ytid,start_s,end_s,caption,aspect_list) or JSONL with "
                        "caption/tags and key, uri or file")
    p.add_argument("--num_shards", type=int, default=4,
                   help="train shards per format (fixed, so shard = f(key)) (default %(default)s)")
    p.add_argument("--num_valid_shards", type=int, default=1, help="valid shards (default %(default)s)")
    p.add_argument("--valid_fraction", type=float, default=0.05,
                   help="fraction of tracks in the valid split, by hash of the track's content "
                        "(default %(default)s)")
    p.add_argument("--formats", default="parquet,webdataset",
                   help="comma-separated shard formats (default %(default)s)")
    _add_audio_args(p)
    _add_semantic_args(p)
    _add_acoustic_args(p)


def audio_config(args: argparse.Namespace, target_rates_hz: tuple[int, ...]) -> AudioConfig:
    return AudioConfig(
        target_rates_hz=target_rates_hz, max_segment_s=args.max_segment_s,
        min_duration_s=args.min_duration_s, min_source_rate_hz=args.min_source_rate_hz,
        max_channels=args.max_channels, silence_dbfs=args.silence_dbfs, decoder=args.decoder,
        resample_quality=args.resample_quality)


def semantic_config(args: argparse.Namespace) -> SemanticConfig:
    return SemanticConfig(extractor=args.semantic_extractor, batch_size=args.batch_size)


def fit_codebook_config(args: argparse.Namespace) -> FitCodebookConfig:
    return FitCodebookConfig(
        inputs=tuple(args.inputs), output=args.output, num_clusters=args.num_clusters,
        sample_frames=args.sample_frames, heldout_frames=args.heldout_frames, n_iter=args.n_iter,
        seed=args.seed, use_gpu=args.use_gpu, audio=audio_config(args, (16_000,)),
        semantic=semantic_config(args))


def tokenize_config(args: argparse.Namespace, acoustic_rate_hz: int | None = None) -> TokenizeConfig:
    """`acoustic_rate_hz`: the codec's sample rate (the launcher builds the codec once to learn it)."""
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    bad = [f for f in formats if f not in ("parquet", "webdataset")]
    if bad or not formats:
        raise SystemExit(f"--formats: unknown {bad or 'empty'}; choose from parquet,webdataset")
    for name in ("num_shards", "num_valid_shards"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1")
    return TokenizeConfig(
        inputs=tuple(args.inputs), output=args.output, codebook=args.codebook,
        captions=args.captions, num_shards=args.num_shards,
        num_valid_shards=args.num_valid_shards, valid_fraction=args.valid_fraction,
        formats=formats,
        audio=audio_config(args, (16_000,) + ((acoustic_rate_hz,) if acoustic_rate_hz else ())),
        semantic=semantic_config(args), acoustic=acoustic_config(args))
