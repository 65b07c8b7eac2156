"""Job options: argparse definitions (with the --help text users read) and the frozen configs.

Our options are parsed by `beam_runner.py` with `parse_known_args`; everything left over goes to
Beam's PipelineOptions untouched (--runner, --direct_running_mode, --direct_num_workers,
--project, --temp_location, ...). The parsed values become frozen dataclasses that are baked into
the job graph and saved in the manifest / codebook card.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field

from tokenmill.errors import UsageError
from tokenmill.pipelines.device import add_device_arg
from tokenmill.schemas.shard_plan import DEFAULT_TARGET_SHARD_MB
from tokenmill.tokenizers.audio import AudioConfig
from tokenmill.tokenizers.compute import KERNELS, ComputeError, ComputeLayout


@dataclass(frozen=True)
class SemanticConfig:
    extractor: str = "spectral"  # "spectral" | "basic-pitch" | "w2v-bert" | "hubert" (semantic.known_extractors())
    extractor_config: tuple[tuple[str, object], ...] = ()  # (name, value) pairs, JSON-able
    batch_size: int = 8  # segments per RunInference batch
    path: str | None = None  # SSL extractors: transformers save_pretrained directory
    layer: int | None = None  # SSL extractors: hidden_states[layer]; None = the extractor's default (7)
    device: str = "cpu"  # --device: where SSL extractors run on the worker (spectral: always the CPU)
    compute: ComputeLayout = field(default_factory=ComputeLayout)  # torch threads + kernels on the worker

    def extractor_kwargs(self) -> dict:
        kw = dict(self.extractor_config)
        if self.path is not None:
            kw["path"] = self.path
        if self.layer is not None:
            kw["layer"] = self.layer
        return kw


@dataclass(frozen=True)
class AcousticConfig:
    codec: str = "soundstream"  # "none" | "soundstream" | "encodec" | "dac" | "mimi"
    codec_config: tuple[tuple[str, object], ...] = ()  # (name, value) pairs passed to build_codec
    batch_size: int = 4  # segments per RunInference batch
    device: str = "cpu"  # --device: where the codec runs on the worker (describe_acoustic: the CPU)
    compute: ComputeLayout = field(default_factory=ComputeLayout)  # torch threads + kernels on the worker

    @property
    def enabled(self) -> bool:
        return self.codec != "none"

    def codec_kwargs(self) -> dict:
        return dict(self.codec_config)


MULAN_MODELS = ("none", "mulan", "clap")


@dataclass(frozen=True)
class MulanConfig:
    model: str = "mulan"  # "none" | "mulan" (built-in, 16 kHz, 128-d) | "clap" (adapter, its own rate/dim)
    path: str | None = None  # mulan: weights .safetensors; clap: save_pretrained dir; None = packaged built-in
    codebook: str | None = None  # RVQ artifact file or directory; None = the packaged default model's RVQ
    batch_size: int = 16  # windows per forward pass, and segments per RunInference batch
    device: str = "cpu"  # --device: where the model runs on the worker (describe_mulan: the CPU)
    compute: ComputeLayout = field(default_factory=ComputeLayout)  # torch threads + kernels on the worker

    @property
    def enabled(self) -> bool:
        return self.model != "none"

    def model_kwargs(self) -> dict:
        return {"batch_size": self.batch_size, **({"path": self.path} if self.path is not None else {})}


MELODY_MODELS = ("none", "builtin", "basic-pitch")
# tokenize's default --melody_model: the built-in melody model with its packaged RVQ, so the default
# tokenize produces the melody stream with no extra fit (as MuLan's does).
DEFAULT_MELODY_MODEL = "builtin"


@dataclass(frozen=True)
class MelodyConfig:
    model: str = DEFAULT_MELODY_MODEL  # "none" | "builtin" | "basic-pitch" (plugins.py's melody family)
    path: str | None = None  # builtin: weights .safetensors (None: the packaged one)
    codebook: str | None = None  # RVQ artifact file or directory; None = the model's packaged RVQ, if any
    batch_size: int = 16  # 4 s windows per forward pass, and segments per RunInference batch
    device: str = "cpu"  # --device: where the model runs on the worker (describe_melody: the CPU)
    compute: ComputeLayout = field(default_factory=ComputeLayout)  # torch threads + kernels on the worker

    @property
    def enabled(self) -> bool:
        return self.model != "none"

    def model_kwargs(self) -> dict:
        """Keyword arguments of build_melody (the batch size is set on the built model)."""
        return {"path": self.path} if self.path is not None else {}


@dataclass(frozen=True)
class FitCodebookConfig:
    inputs: tuple[str, ...]
    output: str  # directory that receives <kind>-<sha12>.safetensors + .json
    stream: str = "semantic"  # "semantic": k-means over feature frames; "mulan": RVQ over MuLan windows
    num_clusters: int = 1024  # k (semantic) or entries per RVQ stage (mulan)
    sample_frames: int = 200_000  # semantic frames drawn for the fit (deterministic: smallest hash priorities)
    heldout_frames: int = 20_000  # frames drawn beside them for the held-out MSE
    n_iter: int = 25  # Lloyd iterations (semantic 25; mulan 10 per stage, rvq.py's measured setting)
    seed: int = 0
    use_gpu: bool = False
    num_stages: int = 12  # mulan: RVQ stages (tokens per crop)
    max_windows: int = 200_000  # mulan: 10 s windows drawn for the fit, same sampling as frames
    heldout_windows: int = 20_000  # mulan: windows drawn beside them for the held-out MSE
    audio: AudioConfig = field(default_factory=AudioConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    mulan: MulanConfig | None = None  # stream "mulan" only
    melody: MelodyConfig | None = None  # stream "melody" only (num_stages 24, num_clusters 512)

    def to_json(self) -> dict:
        out = asdict(self)
        if out["melody"] is None:  # configs written before the melody stream read as before
            del out["melody"]
        return out


@dataclass(frozen=True)
class TokenizeConfig:
    inputs: tuple[str, ...]
    output: str
    codebook: str
    captions: str | None = None
    num_shards: int = 4  # train shards; fixed for the run so shard = f(key) and re-runs are byte-identical
    num_valid_shards: int = 1
    # how the counts were sized by the data (schemas/shard_plan.ShardPlan.to_json()); None: given or --into
    shard_plan: dict | None = None
    valid_fraction: float = 0.05
    formats: tuple[str, ...] = ("parquet", "webdataset")
    audio: AudioConfig = field(default_factory=AudioConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    acoustic: AcousticConfig = field(default_factory=AcousticConfig)
    mulan: MulanConfig = field(default_factory=lambda: MulanConfig(model="none"))
    melody: MelodyConfig = field(default_factory=MelodyConfig)  # DEFAULT_MELODY_MODEL, as the CLI

    def shard_count(self, split: str) -> int:
        return self.num_valid_shards if split == "valid" else self.num_shards

    def to_json(self) -> dict:
        out = asdict(self)
        if out["shard_plan"] is None:  # counts given (or --into): the job reads as before sizing existed
            del out["shard_plan"]
        if out["melody"]["model"] == "none":  # no melody stream: the job reads as before the stream existed
            del out["melody"]
        return out


@dataclass(frozen=True)
class RebuildConfig:
    """`rebuild`: refit one stream's codebook (warm start, ids aligned) and write a dataset version
    that rewrites only that stream (pipelines/rebuild.py, schemas/versions.py)."""

    dataset: str  # the parent dataset directory
    stream: str  # "semantic" (k-means) | "mulan" (RVQ)
    output: str  # the new version's directory
    codebook: str  # the parent codebook artifact; its id must be the manifest's
    inputs: tuple[str, ...] = ()  # semantic: audio for the refit sample; () = the dataset's own sources
    n_iter: int = 25  # Lloyd iterations (semantic 25; mulan 10 per stage)
    align: bool = True  # align new ids to the parent's (off: the control)
    warm_start: bool = True  # off (hidden --cold_start): k-means++ seeding, the control
    seed: int = 0  # sample priorities (and the cold start's seeding)
    sample_frames: int = 200_000  # frames (semantic) / windows (mulan) drawn for the refit
    probe_frames: int = 20_000  # frames / windows of the fixed probe set of the drift report
    plots: bool = False  # write codebook_usage.png

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
                   help="'auto' (default) is soundfile for every format, installed packages or not; "
                        "pedalboard needs the [fast-decode] extra, and the content hash of lossy formats "
                        "depends on the decoder")
    g.add_argument("--resample_quality", choices=("VHQ", "HQ", "MQ", "LQ", "QQ"),
                   default=d.resample_quality, help="soxr quality (default %(default)s)")


SSL_EXTRACTORS = ("w2v-bert", "hubert")  # tokenizers/semantic_ssl.py; need --semantic_path
PITCH_EXTRACTORS = ("basic-pitch",)  # tokenizers/semantic_pitch.py; model file from the basic-pitch wheel
BUILTIN_MODEL_EXTRACTORS = ("melodic",)  # tokenizers/semantic_builtin.py; packaged weights
SEMANTIC_EXTRACTORS = ("spectral", *BUILTIN_MODEL_EXTRACTORS, *PITCH_EXTRACTORS, *SSL_EXTRACTORS)


def _add_semantic_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("semantic features")
    g.add_argument("--semantic_extractor", choices=SEMANTIC_EXTRACTORS, default="spectral",
                   help="feature extractor at 25 Hz: 'spectral' is the built-in weight-free log-mel+chroma "
                        "baseline; 'melodic' is our small trained model (packaged weights, "
                        "tokenmill/weights/semantic-default.md) whose tokens follow the melody across "
                        "instruments; 'basic-pitch' pools the pretrained basic-pitch model's note and onset "
                        "posteriorgrams (ONNX file from the basic-pitch wheel, run by torch) into a "
                        "pitch-class profile + onset + register per frame; 'w2v-bert' (w2v-BERT 2.0, Wav2Vec2BertModel) and 'hubert' (HubertModel) "
                        "load --semantic_path and take hidden layer --semantic_layer, averaged over pairs "
                        "of 50 Hz frames; their codebook standardizes each dimension with the fit "
                        "sample's mean and std (default %(default)s)")
    g.add_argument("--semantic_path", metavar="DIR",
                   help="w2v-bert/hubert (required): a transformers save_pretrained directory holding the "
                        "model and its feature extractor (config.json, weights, preprocessor_config.json; "
                        "a Hub snapshot works). Nothing is downloaded. Tokenize with the same model and "
                        "layer the codebook was fitted with")
    g.add_argument("--semantic_layer", type=int, metavar="N",
                   help="w2v-bert/hubert: use hidden_states[N], the output of the N-th transformer layer "
                        "(1 = first; at most the model's num_hidden_layers) (default 7)")
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


def acoustic_config(args: argparse.Namespace) -> AcousticConfig:
    kw = {}
    if args.acoustic_model:
        kw["path"] = args.acoustic_model
    if args.acoustic_bandwidth_kbps is not None:
        if args.acoustic_codec != "encodec":
            raise UsageError("--acoustic_bandwidth_kbps applies to --acoustic_codec encodec only")
        kw["bandwidth_kbps"] = args.acoustic_bandwidth_kbps
    if args.acoustic_n_q is not None:
        if args.acoustic_codec not in ("dac", "mimi"):
            raise UsageError("--acoustic_n_q applies to --acoustic_codec dac or mimi only")
        kw["n_q"] = args.acoustic_n_q
    if args.acoustic_codec in ("encodec", "dac", "mimi") and "path" not in kw:
        raise UsageError(f"--acoustic_codec {args.acoustic_codec} needs --acoustic_model DIR "
                         "(a transformers save_pretrained directory; nothing is downloaded)")
    if args.acoustic_codec == "none" and kw:
        raise UsageError("--acoustic_model and friends need --acoustic_codec")
    return AcousticConfig(codec=args.acoustic_codec, codec_config=tuple(sorted(kw.items())),
                          batch_size=args.acoustic_batch_size, device=getattr(args, "device", "cpu"),
                          compute=compute_layout(args))


def _add_mulan_args(p: argparse.ArgumentParser, *, with_none: bool = True, default: str = "mulan") -> None:
    g = p.add_argument_group("MuLan (text/audio embedding) stream")
    g.add_argument("--mulan_model", choices=MULAN_MODELS if with_none else MULAN_MODELS[1:], default=default,
                   help="'mulan': the built-in MuLan (16 kHz, 128-d; packaged weights and RVQ); 'clap': "
                        "a transformers CLAP save_pretrained directory given by --mulan_path (its own rate "
                        "and dim, e.g. 48 kHz, 512-d)" + ("; 'none' leaves mulan_windows and mulan null"
                                                          if with_none else "") + " (default %(default)s)")
    g.add_argument("--mulan_path", metavar="PATH",
                   help="MuLan weights: a built-in .safetensors (default: the packaged one) or, for clap, "
                        "the save_pretrained directory (required)")
    g.add_argument("--mulan_codebook", metavar="PATH",
                   help="MuLan RVQ codebook: mulan-<sha12>.safetensors (or its .json card, or a directory "
                        "holding exactly one), as written by `fit-codebook --stream mulan` with the same "
                        "model. Default: the packaged RVQ, for the packaged built-in model only; any other "
                        "model needs one")
    g.add_argument("--mulan_batch_size", type=int, default=16,
                   help="10 s windows per MuLan forward pass, and segments per RunInference batch "
                        "(default %(default)s)")


def _add_melody_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("melody stream (melody_windows float16 [W, 192], melody tokens uint16 [W, 24])")
    g.add_argument("--melody_model", choices=MELODY_MODELS, default=DEFAULT_MELODY_MODEL,
                   help="melody embedding model, one 192-d vector per 4 s window at a 1 s stride: 'builtin' "
                        "(the project's melody model; packaged weights and RVQ), 'basic-pitch' (pitch-class tracks "
                        "from the pretrained "
                        "basic-pitch model in its wheel; needs no training); 'none' leaves melody_windows and "
                        "melody null (default %(default)s)")
    g.add_argument("--melody_path", metavar="PATH",
                   help="builtin: weights .safetensors (default: the packaged one)")
    g.add_argument("--melody_codebook", metavar="PATH",
                   help="melody RVQ codebook (24 stages x 512): melody-<sha12>.safetensors (or its .json card, "
                        "or a directory holding exactly one), as written by `fit-codebook --stream melody` with "
                        "the same model. Default: the packaged RVQ, for the packaged builtin weights only; any "
                        "other weights, and basic-pitch, need one")
    g.add_argument("--melody_batch_size", type=int, default=16,
                   help="4 s windows per melody forward pass, and segments per RunInference batch "
                        "(default %(default)s)")


def add_generate_melody_args(p: argparse.ArgumentParser) -> None:
    """`generate --melody hum.wav`: the hum whose melody tokens condition the semantic stage."""
    g = p.add_argument_group("melody conditioning")
    g.add_argument("--melody", metavar="AUDIO",
                   help="a hum, whistle or any recording of the tune: its melody tokens (4 s windows at a 1 s "
                        "stride, the dataset's melody model and RVQ) condition the semantic stage window by "
                        "window (long form: each 30 s window reads the hum's windows at 0, 3, ... s of it). "
                        "Needs checkpoints trained on a dataset with a melody stream; without it they read pad "
                        "ids (text only). Not with --captions")
    g.add_argument("--melody_model", help="melody model name (default: the dataset's tokenize job's)")
    g.add_argument("--melody_path", metavar="PATH", help="melody weights (default: the dataset's tokenize job's)")
    g.add_argument("--melody_codebook", metavar="PATH",
                   help="melody RVQ file or directory (default: the dataset's; its id must match the checkpoints')")


def generate_melody_kwargs(args: argparse.Namespace) -> dict:
    """generate_music's melody keyword arguments from the flags of add_generate_melody_args."""
    if args.melody is None and any(getattr(args, f) is not None for f in ("melody_model", "melody_path", "melody_codebook")):
        raise UsageError("--melody_model/--melody_path/--melody_codebook apply with --melody AUDIO")
    return {"melody": args.melody, "melody_model": args.melody_model, "melody_path": args.melody_path,
            "melody_codebook": args.melody_codebook}


def melody_config(args: argparse.Namespace) -> MelodyConfig:
    """Flags → MelodyConfig, with the checks that need no model loaded."""
    model = getattr(args, "melody_model", None) or "none"
    path, codebook = getattr(args, "melody_path", None), getattr(args, "melody_codebook", None)
    if model == "none" and (path is not None or codebook is not None):
        raise UsageError(f"--{'melody_path' if path is not None else 'melody_codebook'} needs --melody_model "
                         "builtin or basic-pitch (it is 'none')")
    if model == "basic-pitch" and path is not None:
        raise UsageError("--melody_path applies to --melody_model builtin (basic-pitch loads the model in its wheel)")
    batch = getattr(args, "melody_batch_size", None) or 16
    if batch < 1:
        raise UsageError("--melody_batch_size must be >= 1")
    return MelodyConfig(model=model, path=path, codebook=codebook, batch_size=batch,
                        device=getattr(args, "device", "cpu"), compute=compute_layout(args))


def add_embed_text_args(p: argparse.ArgumentParser) -> None:
    _add_mulan_args(p, with_none=False)


def mulan_config(args: argparse.Namespace, *, need_codebook: bool = True) -> MulanConfig:
    """Flags → MulanConfig, with the checks that need no model loaded (fix-it messages)."""
    if args.mulan_model == "none":
        given = [f for f in ("mulan_path", "mulan_codebook") if getattr(args, f) is not None]
        if given:
            raise UsageError(f"--{given[0]} needs --mulan_model mulan or clap (it is 'none')")
    if args.mulan_batch_size < 1:
        raise UsageError("--mulan_batch_size must be >= 1")
    if args.mulan_model == "clap" and args.mulan_path is None:
        raise UsageError("--mulan_model clap needs --mulan_path DIR (a transformers save_pretrained directory "
                         "of a CLAP model and its ClapProcessor; nothing is downloaded)")
    if need_codebook and args.mulan_model == "clap" and getattr(args, "mulan_codebook", None) is None:
        from tokenmill.tokenizers.mulan import fit_hint

        raise UsageError(f"--mulan_model clap needs --mulan_codebook (an RVQ fitted on this CLAP's windows); "
                         f"{fit_hint('clap', args.mulan_path)}")
    return MulanConfig(model=args.mulan_model, path=args.mulan_path,
                       codebook=getattr(args, "mulan_codebook", None), batch_size=args.mulan_batch_size,
                       device=getattr(args, "device", "cpu"), compute=compute_layout(args))


def add_compute_args(p: argparse.ArgumentParser) -> None:
    """--torch_threads and --kernels: the compute layout every worker runs the torch models under
    (tokenizers/compute.py), recorded in the manifest and the codebook card."""
    d = ComputeLayout()
    g = p.add_argument_group("compute layout (reproducible output on any worker)")
    g.add_argument("--torch_threads", type=int, default=d.threads, metavar="N",
                   help="torch intra-op threads per worker process for the semantic extractor, codec and "
                        "MuLan. The models' last float bits, hence some tokens, depend on it, so it is fixed "
                        "per job, not taken from the machine: run one worker process per core "
                        "(--direct_running_mode=multi_processing --direct_num_workers=N locally; Dataflow does "
                        "this by default). 0 = torch's default, all cores: the output then depends on each "
                        "worker's core count (default %(default)s)")
    g.add_argument("--kernels", choices=KERNELS, default=d.kernels,
                   help="'portable': hold torch, oneDNN and MKL to AVX2 kernels on x86-64, so Intel and AMD "
                        "workers of any generation write the same bytes; 'native': the widest instruction set "
                        "each library finds (faster on AVX-512 machines, bench/bench_compute.py says how much; "
                        "outputs then differ in rare tokens between CPU types). Recorded in the manifest "
                        "and the codebook card (default %(default)s)")


def compute_layout(args: argparse.Namespace) -> ComputeLayout:
    try:
        return ComputeLayout(threads=getattr(args, "torch_threads", 1), kernels=getattr(args, "kernels", "portable"))
    except ComputeError as e:
        raise UsageError(f"{e}") from e


def _common_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", dest="inputs", action="extend", nargs="+", required=True, metavar="GLOB",
                   help="audio files to read; a local glob, gs://bucket/dir/*.flac or s3://...; "
                        "several patterns after one --input, or --input repeated. Every matched file "
                        "is an input: it ends up in the shards or in the dead letters.")


# fit-codebook flags that apply to one stream only: stream -> {dest: default}. Their argparse default
# is None so a flag given for the other stream is refused instead of silently ignored.
_FIT_STREAM_FLAGS = {
    "semantic": {"sample_frames": 200_000, "heldout_frames": 20_000, "use_gpu": False},
    "mulan": {"num_stages": 12, "max_windows": 200_000, "heldout_windows": 20_000, "mulan_model": "mulan",
              "mulan_path": None, "mulan_batch_size": 16},
    "melody": {"num_stages": 24, "max_windows": 200_000, "heldout_windows": 20_000, "melody_model": None,
               "melody_path": None, "melody_batch_size": 16},
}
_RVQ_STREAMS = ("mulan", "melody")


def add_fit_codebook_args(p: argparse.ArgumentParser) -> None:
    _common_inputs(p)
    p.add_argument("--output", required=True, metavar="DIR",
                   help="directory for the codebook: <kind>-<sha12>.safetensors plus a JSON card")
    p.add_argument("--stream", choices=("semantic", "mulan", "melody"), default="semantic",
                   help="'semantic': k-means over semantic feature frames (semantic-<sha12>); 'mulan': "
                        "residual VQ over the MuLan model's 10 s window embeddings (mulan-<sha12>), the "
                        "codebook `tokenize --mulan_codebook` and `embed-text` need; 'melody': residual VQ "
                        "(24 stages x 512 by default) over the melody model's 4 s window embeddings "
                        "(melody-<sha12>), the codebook `tokenize --melody_codebook` needs (default %(default)s)")
    p.add_argument("--num_clusters", type=int,
                   help="k: centroids (semantic) or entries per RVQ stage (mulan, melody) "
                        "(default 1024; melody 512)")
    p.add_argument("--sample_frames", type=int,
                   help="semantic: frames used for the fit, drawn deterministically (default 200000)")
    p.add_argument("--heldout_frames", type=int,
                   help="semantic: frames held out for the card's MSE (default 20000)")
    p.add_argument("--num_stages", type=int,
                   help="mulan / melody: RVQ stages = tokens per crop / per window (default 12 / 24)")
    p.add_argument("--max_windows", type=int,
                   help="mulan: at most this many 10 s windows used for the fit, drawn deterministically "
                        "like frames (default 200000)")
    p.add_argument("--heldout_windows", type=int,
                   help="mulan: windows held out for the card's per-stage MSE (at most 10%% of those "
                        "sampled) (default 20000)")
    p.add_argument("--n_iter", type=int,
                   help="Lloyd iterations: semantic k-means (default 25), or per RVQ stage (default 10)")
    p.add_argument("--seed", type=int, default=0, help="sampling and seeding seed (default %(default)s)")
    p.add_argument("--use_gpu", action="store_true", default=None,
                   help="semantic: fit with faiss-gpu; fails (no fallback) when faiss-gpu or a GPU is "
                        "missing (the RVQ fit runs on the CPU)")
    _add_audio_args(p)
    _add_semantic_args(p)
    g = p.add_argument_group("MuLan model (--stream mulan)")
    g.add_argument("--mulan_model", choices=MULAN_MODELS[1:],
                   help="the model whose windows the RVQ quantizes: 'mulan' (built-in) or 'clap' "
                        "(default mulan)")
    g.add_argument("--mulan_path", metavar="PATH",
                   help="built-in weights .safetensors (default: the packaged one) or a CLAP "
                        "save_pretrained directory (required for clap)")
    g.add_argument("--mulan_batch_size", type=int,
                   help="10 s windows per MuLan forward pass, and segments per batch (default 16)")
    g = p.add_argument_group("melody model (--stream melody)")
    g.add_argument("--melody_model", choices=MELODY_MODELS[1:],
                   help="the model whose 4 s windows the RVQ quantizes: 'builtin' or 'basic-pitch' (required)")
    g.add_argument("--melody_path", metavar="PATH", help="builtin: weights .safetensors (default: the packaged one)")
    g.add_argument("--melody_batch_size", type=int,
                   help="4 s windows per melody forward pass, and segments per batch (default 16)")
    add_device_arg(p, "fit-codebook")
    add_compute_args(p)


# tokenize's shard layout: defaults for a new dataset; `--into` takes the existing dataset's. The
# shard counts' defaults apply only where no listing sizes them (tokenize_config without `sizing`);
# the CLI always sizes them by the data (--target_shard_mb, schemas/shard_plan.py).
LAYOUT_DEFAULTS = {"num_shards": 4, "num_valid_shards": 1, "valid_fraction": 0.05,
                   "formats": "parquet,webdataset"}


def add_tokenize_args(p: argparse.ArgumentParser) -> None:
    _common_inputs(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", metavar="DIR",
                       help="dataset directory: parquet/, wds/, failures-*.jsonl, manifest.json")
    where.add_argument("--into", metavar="DIR",
                       help="add to the existing dataset DIR instead of writing a new one: only inputs "
                            "whose uri is not already in DIR (as a record or a dead letter) are "
                            "read (uris compare as matched, so give --input in the same form, relative "
                            "or absolute, as the first run), and one whose decoded content (key) is "
                            "already there becomes a 'duplicate' dead letter. New shard files get a version suffix "
                            "(train-00000-of-00004.v0001.parquet); existing shards are never "
                            "rewritten. manifest.json is replaced atomically and lists old + new "
                            "shards, summed counts and a 'history' entry per run, with the count of "
                            "skipped inputs. The tokenizers and codebooks must equal the dataset's; "
                            "the shard layout (--num_shards, --num_valid_shards, --valid_fraction, "
                            "--formats) is the dataset's, and giving another value is refused. With "
                            "nothing new to add the dataset is left untouched")
    p.add_argument("--retry_failures", "--retry-failures", dest="retry_failures", action="store_true",
                   help="with --into: also re-attempt every source listed in the dataset's dead "
                        "letters (read again from its uri, e.g. after fixing or replacing the file). "
                        "Successes are added as records; the retried dead letters are replaced by the "
                        "new outcome in a new failures file, each source still counted once. A "
                        "source whose file is gone keeps its old dead letter (counted, logged)")
    p.add_argument("--codebook", required=True, metavar="PATH",
                   help="semantic codebook (.safetensors or its .json card, or a directory holding "
                        "exactly one semantic codebook), as written by fit-codebook")
    p.add_argument("--captions", metavar="FILE",
                   help="MusicCaps CSV (ytid,start_s,end_s,caption,aspect_list) or JSONL with "
                        "caption/tags and key, uri or file")
    # Layout flags default to None so that --into can tell a given value (checked against the
    # dataset's) from an omitted one (the dataset's value is used); tokenize_config fills defaults.
    p.add_argument("--target_shard_mb", type=float,
                   help="size the shard counts by the data: train and valid shards of about this many MiB "
                        "of stored arrays each (before compression, so files come out at or under it). "
                        "The counts are derived at launch from the matched files' sizes (per extension, "
                        "at stated bytes per audio second: WAV 176400, FLAC 100000, MP3/AAC/Vorbis 16000, "
                        "Opus 12000) and the streams' bytes per audio second (semantic 50, built-in "
                        "acoustic 1200, built-in MuLan windows 256): the same inputs give the same "
                        "layout. An explicit --num_shards / --num_valid_shards wins; recorded in the "
                        f"manifest as job.shard_plan (default {DEFAULT_TARGET_SHARD_MB}; not with --into)")
    p.add_argument("--num_shards", type=int,
                   help="train shards per format, fixed for the run so shard = f(key) (default: sized by "
                        "--target_shard_mb; with --into: the dataset's)")
    p.add_argument("--num_valid_shards", type=int,
                   help="valid shards (default: sized by --target_shard_mb; with --into: the dataset's)")
    p.add_argument("--valid_fraction", type=float,
                   help="fraction of tracks in the valid split, by hash of the track's content "
                        f"(default {LAYOUT_DEFAULTS['valid_fraction']}; with --into: the dataset's)")
    p.add_argument("--formats",
                   help=f"comma-separated shard formats (default {LAYOUT_DEFAULTS['formats']}; with "
                        "--into: the dataset's)")
    _add_audio_args(p)
    _add_semantic_args(p)
    _add_acoustic_args(p)
    _add_mulan_args(p)
    _add_melody_args(p)
    add_device_arg(p, "tokenize")
    add_compute_args(p)


def audio_config(args: argparse.Namespace, target_rates_hz: tuple[int, ...]) -> AudioConfig:
    return AudioConfig(
        target_rates_hz=target_rates_hz, max_segment_s=args.max_segment_s,
        min_duration_s=args.min_duration_s, min_source_rate_hz=args.min_source_rate_hz,
        max_channels=args.max_channels, silence_dbfs=args.silence_dbfs, decoder=args.decoder,
        resample_quality=args.resample_quality)


def semantic_config(args: argparse.Namespace) -> SemanticConfig:
    """Flags → SemanticConfig; an SSL checkpoint's directory and layer are checked here (reads
    config.json only) so a bad flag stops the command before any job starts."""
    name, path, layer = args.semantic_extractor, args.semantic_path, args.semantic_layer
    if name not in SSL_EXTRACTORS:
        given = [f for f, v in (("--semantic_path", path), ("--semantic_layer", layer)) if v is not None]
        if given:
            raise UsageError(f"{given[0]} applies to --semantic_extractor {' or '.join(SSL_EXTRACTORS)} "
                             f"only (this is {name})")
    else:
        from tokenmill.tokenizers.semantic_ssl import DEFAULT_LAYER, SemanticModelError, read_checkpoint

        try:
            from tokenmill.pipelines.handlers import local_model_path  # gs:// etc.: copied once per machine

            read_checkpoint(name, local_model_path(path, "--semantic_path"), DEFAULT_LAYER if layer is None else layer)
        except (SemanticModelError, FileNotFoundError) as e:
            raise UsageError(f"{e}") from e
    if args.batch_size < 1:
        raise UsageError("--batch_size must be >= 1")
    return SemanticConfig(extractor=name, batch_size=args.batch_size, path=path, layer=layer,
                          device=getattr(args, "device", "cpu"), compute=compute_layout(args))


def fit_codebook_config(args: argparse.Namespace, mulan_rate_hz: int | None = None) -> FitCodebookConfig:
    """`mulan_rate_hz`: the MuLan model's sample rate (--stream mulan; the launcher builds the
    model once to learn it)."""
    mine = set(_FIT_STREAM_FLAGS[args.stream])
    for other in _FIT_STREAM_FLAGS:
        for dest in _FIT_STREAM_FLAGS[other]:
            if other != args.stream and dest not in mine and getattr(args, dest, None) is not None:
                raise UsageError(f"--{dest} applies to --stream {other} only (this is --stream {args.stream})")
    if args.num_clusters is None:
        args.num_clusters = 512 if args.stream == "melody" else 1024
    for dest, default in _FIT_STREAM_FLAGS[args.stream].items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)
    if args.stream in _RVQ_STREAMS and (args.semantic_extractor, args.batch_size, args.semantic_path,
                                   args.semantic_layer) != (
            SemanticConfig().extractor, SemanticConfig().batch_size, None, None):
        raise UsageError("--semantic_extractor, --semantic_path, --semantic_layer and --batch_size apply "
                         f"to --stream semantic; the {args.stream} model's batch is --{args.stream}_batch_size")
    if args.n_iter is None:
        args.n_iter = 25 if args.stream == "semantic" else 10
    kw: dict = {}
    if args.stream == "melody" and args.melody_model is None:
        raise UsageError("fit-codebook --stream melody needs --melody_model builtin or basic-pitch (the model "
                         "whose window embeddings the RVQ quantizes)")
    if args.stream in _RVQ_STREAMS:
        k = args.num_clusters
        if k < 2 or k > 1 << 16:
            raise UsageError(f"--num_clusters {k}: the {args.stream} RVQ needs [2, 65536] entries per stage "
                             "(uint16 tokens)")
        for name in ("num_stages", "max_windows"):
            if getattr(args, name) < 1:
                raise UsageError(f"--{name} must be >= 1")
        if args.heldout_windows < 0:
            raise UsageError("--heldout_windows must be >= 0")
        kw = dict(num_stages=args.num_stages, max_windows=args.max_windows,
                  heldout_windows=args.heldout_windows)
        if args.stream == "mulan":
            kw["mulan"] = mulan_config(args, need_codebook=False)
        else:
            kw["melody"] = melody_config(args)
        rates_hz = (mulan_rate_hz or 16_000,)
    else:
        kw = dict(sample_frames=args.sample_frames, heldout_frames=args.heldout_frames, use_gpu=args.use_gpu)
        rates_hz = (16_000,)
    return FitCodebookConfig(
        inputs=tuple(args.inputs), output=args.output, stream=args.stream, num_clusters=args.num_clusters,
        n_iter=args.n_iter, seed=args.seed, audio=audio_config(args, rates_hz),
        semantic=semantic_config(args), **kw)


def tokenize_config(args: argparse.Namespace, acoustic_rate_hz: int | None = None,
                    mulan_rate_hz: int | None = None, layout: dict | None = None,
                    sizing: tuple | None = None) -> TokenizeConfig:
    """`acoustic_rate_hz`, `mulan_rate_hz`: the codec's and the MuLan model's sample rates (the
    launcher builds each model once to learn them). `layout`: the existing dataset's num_shards,
    num_valid_shards, valid_fraction and formats (--into); an omitted flag takes its value, a given
    one must equal it. `sizing`: (ingest.InputListing, the manifest's stream entries) of a new
    dataset: shard counts not given as flags are sized by the data (schemas/shard_plan.py).
    `args` is only read, so this can be called again once more models are described."""
    if getattr(args, "retry_failures", False) and not getattr(args, "into", None):
        raise UsageError("--retry_failures needs --into DIR (the dataset whose dead letters to retry)")
    target_mb = getattr(args, "target_shard_mb", None)
    if layout is not None and target_mb is not None:
        raise UsageError(f"--target_shard_mb applies to a new dataset; --into keeps the dataset's shard counts "
                         f"({args.into}/manifest.json): omit it")
    lay = {}
    for name, default in LAYOUT_DEFAULTS.items():
        given = getattr(args, name)
        if layout is None:
            lay[name] = default if given is None else given
            continue
        have = ",".join(layout[name]) if name == "formats" else layout[name]
        if given is not None and (given.replace(" ", "") if name == "formats" else given) != have:
            raise UsageError(f"--{name} {given} differs from the dataset's {have} ({args.into}/manifest.json); "
                             f"--into keeps the dataset's shard layout: omit --{name}, or write a new "
                             "dataset with --output")
        lay[name] = have
    formats = tuple(f.strip() for f in lay["formats"].split(",") if f.strip())
    bad = [f for f in formats if f not in ("parquet", "webdataset")]
    if bad or not formats:
        raise UsageError(f"--formats: unknown {bad or 'empty'}; choose from parquet,webdataset")
    for name in ("num_shards", "num_valid_shards"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1")
    plan = None
    if layout is None and sizing is not None and (args.num_shards is None or args.num_valid_shards is None):
        from tokenmill.schemas.shard_plan import ShardPlanError, plan_shards

        listing, streams = sizing
        try:
            plan = plan_shards(listing.bytes_by_ext, listing.n_files, streams, valid_fraction=lay["valid_fraction"],
                               target_shard_mb=DEFAULT_TARGET_SHARD_MB if target_mb is None else target_mb)
        except ShardPlanError as e:
            raise UsageError(f"{e}") from e
        lay["num_shards"] = plan.num_shards if args.num_shards is None else args.num_shards
        lay["num_valid_shards"] = plan.num_valid_shards if args.num_valid_shards is None else args.num_valid_shards
    rates_hz = tuple(dict.fromkeys(r for r in (16_000, acoustic_rate_hz, mulan_rate_hz) if r))  # unique, in order
    return TokenizeConfig(
        inputs=tuple(args.inputs), output=args.output or args.into, codebook=args.codebook,
        captions=args.captions, num_shards=lay["num_shards"],
        num_valid_shards=lay["num_valid_shards"], valid_fraction=lay["valid_fraction"],
        shard_plan=None if plan is None else plan.to_json(),
        formats=formats, audio=audio_config(args, rates_hz),
        semantic=semantic_config(args), acoustic=acoustic_config(args), mulan=mulan_config(args),
        melody=melody_config(args))
