"""The frozen job configs, stated once: each field's default, its flag's help (`field(metadata=...)`)
and the checks that need no model (`__post_init__`), so a config built in Python is checked as the
CLI's is and means what the CLI means by default. pipelines/options.py turns the fields into flags
(pipelines/flags.py); the configs are baked into the job graph and saved in the manifest / card.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tokenmill.errors import UsageError
from tokenmill.tokenizers.audio import AudioConfig
from tokenmill.tokenizers.compute import ComputeLayout


def _flag(help: str, **kw) -> dict:
    """A field's metadata for pipelines/flags.add_field_args: its help and argparse extras (flag,
    choices, metavar, type)."""
    return {"help": help, **kw}


SSL_EXTRACTORS = ("w2v-bert", "hubert")  # tokenizers/semantic_ssl.py; need --semantic_path
PITCH_EXTRACTORS = ("basic-pitch",)  # tokenizers/semantic_pitch.py; model file from the basic-pitch wheel
BUILTIN_MODEL_EXTRACTORS = ("melodic",)  # tokenizers/semantic_builtin.py; packaged weights
SEMANTIC_EXTRACTORS = ("spectral", *BUILTIN_MODEL_EXTRACTORS, *PITCH_EXTRACTORS, *SSL_EXTRACTORS)
# The semantic extractor of new datasets: the built-in trained model whose tokens follow the melody
# across instruments (README, "Semantic extractors"). Datasets built with another keep it.
DEFAULT_SEMANTIC_EXTRACTOR = "melodic"


@dataclass(frozen=True)
class SemanticConfig:
    extractor: str = field(default=DEFAULT_SEMANTIC_EXTRACTOR, metadata=_flag(
        "feature extractor at 25 Hz (default %(default)s): 'melodic' is our small trained model "
        "(packaged weights, tokenmill/weights/semantic-default.md) whose tokens follow the melody "
        "across instruments; 'spectral' is the built-in weight-free log-mel+chroma baseline "
        "(~10x cheaper; its tokens carry the instrument as much as the pitch); 'basic-pitch' pools the pretrained basic-pitch model's note and onset "
        "posteriorgrams (ONNX file from the basic-pitch wheel, run by torch) into a "
        "pitch-class profile + onset + register per frame; 'w2v-bert' (w2v-BERT 2.0, Wav2Vec2BertModel) and 'hubert' (HubertModel) "
        "load --semantic_path and take hidden layer --semantic_layer, averaged over pairs "
        "of 50 Hz frames; their codebook standardizes each dimension with the fit "
        "sample's mean and std",
        flag="--semantic_extractor", choices=SEMANTIC_EXTRACTORS))
    extractor_config: tuple[tuple[str, object], ...] = ()  # (name, value) pairs, JSON-able
    batch_size: int = field(default=8, metadata=_flag(
        "segments per RunInference batch (default %(default)s)", flag="--batch_size"))
    path: str | None = field(default=None, metadata=_flag(
        "w2v-bert/hubert (required): a transformers save_pretrained directory holding the "
        "model and its feature extractor (config.json, weights, preprocessor_config.json; "
        "a Hub snapshot works). Nothing is downloaded. Tokenize with the same model and "
        "layer the codebook was fitted with", flag="--semantic_path", metavar="DIR"))
    layer: int | None = field(default=None, metadata=_flag(
        "w2v-bert/hubert: use hidden_states[N], the output of the N-th transformer layer "
        "(1 = first; at most the model's num_hidden_layers) (default 7)",
        flag="--semantic_layer", type=int, metavar="N"))  # None = the extractor's default (7)
    device: str = "cpu"  # --device: where SSL extractors run on the worker (spectral: always the CPU)
    compute: ComputeLayout = field(default_factory=ComputeLayout)  # torch threads + kernels on the worker

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError("--batch_size must be >= 1")

    def extractor_kwargs(self) -> dict:
        kw = dict(self.extractor_config)
        if self.path is not None:
            kw["path"] = self.path
        if self.layer is not None:
            kw["layer"] = self.layer
        return kw


ACOUSTIC_CODECS = ("none", "soundstream", "encodec", "dac", "mimi")
ACOUSTIC_DEFAULT = "soundstream"  # the built-in codec with its committed checkpoint


@dataclass(frozen=True)
class AcousticConfig:
    codec: str = field(default=ACOUSTIC_DEFAULT, metadata=_flag(
        "acoustic codec: 'soundstream' is the built-in 24 kHz, 50 Hz x 12x1024 codec; "
        "encodec/dac/mimi load a transformers save_pretrained directory given by "
        "--acoustic_model; 'none' leaves the acoustic field null (default %(default)s)",
        flag="--acoustic_codec", choices=ACOUSTIC_CODECS))
    # (name, value) pairs passed to build_codec: path (--acoustic_model), bandwidth_kbps, n_q
    codec_config: tuple[tuple[str, object], ...] = ()
    batch_size: int = field(default=4, metadata=_flag(
        "segments per acoustic RunInference batch (default %(default)s)", flag="--acoustic_batch_size"))
    device: str = "cpu"  # --device: where the codec runs on the worker (describe_acoustic: the CPU)
    compute: ComputeLayout = field(default_factory=ComputeLayout)  # torch threads + kernels on the worker

    def __post_init__(self) -> None:
        kw = dict(self.codec_config)
        if "bandwidth_kbps" in kw and self.codec != "encodec":
            raise UsageError("--acoustic_bandwidth_kbps applies to --acoustic_codec encodec only")
        if "n_q" in kw and self.codec not in ("dac", "mimi"):
            raise UsageError("--acoustic_n_q applies to --acoustic_codec dac or mimi only")
        if self.codec in ("encodec", "dac", "mimi") and "path" not in kw:
            raise UsageError(f"--acoustic_codec {self.codec} needs --acoustic_model DIR "
                             "(a transformers save_pretrained directory; nothing is downloaded)")
        if self.codec == "none" and kw:
            raise UsageError("--acoustic_model and friends need --acoustic_codec")

    @property
    def enabled(self) -> bool:
        return self.codec != "none"

    def codec_kwargs(self) -> dict:
        return dict(self.codec_config)


MULAN_MODELS = ("none", "mulan", "clap")


@dataclass(frozen=True)
class MulanConfig:
    model: str = field(default="mulan", metadata=_flag(
        "'mulan': the built-in MuLan (16 kHz, 128-d; packaged weights and RVQ); 'clap': "
        "a transformers CLAP save_pretrained directory given by --mulan_path (its own rate "
        "and dim, e.g. 48 kHz, 512-d)", flag="--mulan_model", choices=MULAN_MODELS))
    path: str | None = field(default=None, metadata=_flag(
        "MuLan weights: a built-in .safetensors (default: the packaged one) or, for clap, "
        "the save_pretrained directory (required)", flag="--mulan_path", metavar="PATH"))
    codebook: str | None = field(default=None, metadata=_flag(
        "MuLan RVQ codebook: mulan-<sha12>.safetensors (or its .json card, or a directory "
        "holding exactly one), as written by `fit-codebook --stream mulan` with the same "
        "model. Default: the packaged RVQ, for the packaged built-in model only; any other "
        "model needs one", flag="--mulan_codebook", metavar="PATH"))
    batch_size: int = field(default=16, metadata=_flag(
        "10 s windows in every MuLan forward pass (windows of several segments share a pass; "
        "zero rows fill the last, so a window's bits do not depend on its batch; recorded as "
        "pass_rows), and segments per RunInference batch (default %(default)s)",
        flag="--mulan_batch_size"))
    device: str = "cpu"  # --device: where the model runs on the worker (describe_mulan: the CPU)
    compute: ComputeLayout = field(default_factory=ComputeLayout)  # torch threads + kernels on the worker

    def __post_init__(self) -> None:
        if self.model == "none":
            given = [f for f in ("path", "codebook") if getattr(self, f) is not None]
            if given:
                raise UsageError(f"--mulan_{given[0]} needs --mulan_model mulan or clap (it is 'none')")
        if self.batch_size < 1:
            raise UsageError("--mulan_batch_size must be >= 1")
        if self.model == "clap" and self.path is None:
            raise UsageError("--mulan_model clap needs --mulan_path DIR (a transformers save_pretrained directory "
                             "of a CLAP model and its ClapProcessor; nothing is downloaded)")

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
    model: str = field(default=DEFAULT_MELODY_MODEL, metadata=_flag(
        "melody embedding model, one 192-d vector per 4 s window at a 1 s stride: 'builtin' "
        "(the project's melody model; packaged weights and RVQ), 'basic-pitch' (pitch-class tracks from the pretrained "
        "basic-pitch model in its wheel; needs no training); 'none' leaves melody_windows and "
        "melody null (default %(default)s)", flag="--melody_model", choices=MELODY_MODELS))
    path: str | None = field(default=None, metadata=_flag(
        "builtin: weights .safetensors (default: the packaged one)", flag="--melody_path", metavar="PATH"))
    codebook: str | None = field(default=None, metadata=_flag(
        "melody RVQ codebook (24 stages x 512): melody-<sha12>.safetensors (or its .json card, "
        "or a directory holding exactly one), as written by `fit-codebook --stream melody` with "
        "the same model. Default: the packaged RVQ, for the packaged builtin weights only; any "
        "other weights, and basic-pitch, need one",
        flag="--melody_codebook", metavar="PATH"))
    batch_size: int = field(default=16, metadata=_flag(
        "4 s windows in every melody forward pass (shared by segments, padded like "
        "--mulan_batch_size), and segments per RunInference batch (default %(default)s)",
        flag="--melody_batch_size"))
    device: str = "cpu"  # --device: where the model runs on the worker (describe_melody: the CPU)
    compute: ComputeLayout = field(default_factory=ComputeLayout)  # torch threads + kernels on the worker

    def __post_init__(self) -> None:
        if self.model == "none" and (self.path is not None or self.codebook is not None):
            raise UsageError(f"--{'melody_path' if self.path is not None else 'melody_codebook'} needs "
                             "--melody_model builtin or basic-pitch (it is 'none')")
        if self.model == "basic-pitch" and self.path is not None:
            raise UsageError("--melody_path applies to --melody_model builtin (basic-pitch loads the model in its wheel)")
        if self.batch_size < 1:
            raise UsageError("--melody_batch_size must be >= 1")

    @property
    def enabled(self) -> bool:
        return self.model != "none"

    def model_kwargs(self) -> dict:
        """Keyword arguments of build_melody (the batch size is set on the built model)."""
        return {"path": self.path} if self.path is not None else {}


FIT_STREAMS = ("semantic", "mulan", "melody")
RVQ_STREAMS = ("mulan", "melody")
# fit-codebook fields whose default depends on the stream (None in FitCodebookConfig, filled here)
FIT_STREAM_DEFAULTS = {
    "semantic": {"num_clusters": 1024, "n_iter": 25, "num_stages": 12},
    "mulan": {"num_clusters": 1024, "n_iter": 10, "num_stages": 12},  # 10 per stage: rvq.py's measured setting
    "melody": {"num_clusters": 512, "n_iter": 10, "num_stages": 24},
}
# fit-codebook fields that apply to one stream only (their flags are refused for another stream)
FIT_STREAM_FIELDS = {
    "semantic": ("sample_frames", "heldout_frames", "use_gpu"),
    "mulan": ("num_stages", "max_windows", "heldout_windows"),
    "melody": ("num_stages", "max_windows", "heldout_windows"),
}


@dataclass(frozen=True)
class FitCodebookConfig:
    inputs: tuple[str, ...]
    output: str  # directory that receives <kind>-<sha12>.safetensors + .json
    stream: str = "semantic"  # "semantic": k-means over feature frames; "mulan"/"melody": RVQ over windows
    num_clusters: int | None = None  # k (semantic) or entries per RVQ stage; None: FIT_STREAM_DEFAULTS
    sample_frames: int = 200_000  # semantic frames drawn for the fit (deterministic: smallest hash priorities)
    heldout_frames: int = 20_000  # frames drawn beside them for the held-out MSE
    n_iter: int | None = None  # Lloyd iterations (semantic; per stage for RVQ); None: FIT_STREAM_DEFAULTS
    seed: int = 0
    use_gpu: bool = False
    num_stages: int | None = None  # RVQ stages (tokens per crop / window); None: FIT_STREAM_DEFAULTS
    max_windows: int = 200_000  # RVQ: windows drawn for the fit, same sampling as frames
    heldout_windows: int = 20_000  # RVQ: windows drawn beside them for the held-out MSE
    audio: AudioConfig = field(default_factory=AudioConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    mulan: MulanConfig | None = None  # stream "mulan" only (None there: the built-in MuLan)
    melody: MelodyConfig | None = None  # stream "melody" only (num_stages 24, num_clusters 512)

    def __post_init__(self) -> None:
        if self.stream not in FIT_STREAMS:
            raise UsageError(f"stream {self.stream!r}: choose from {', '.join(FIT_STREAMS)}")
        for name, default in FIT_STREAM_DEFAULTS[self.stream].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if self.stream == "mulan" and self.mulan is None:
            object.__setattr__(self, "mulan", MulanConfig())
        if self.stream == "melody" and (self.melody is None or not self.melody.enabled):
            raise UsageError("fit-codebook --stream melody needs --melody_model builtin or basic-pitch (the model "
                             "whose window embeddings the RVQ quantizes)")
        if self.stream in RVQ_STREAMS:
            k = self.num_clusters
            if k < 2 or k > 1 << 16:
                raise UsageError(f"--num_clusters {k}: the {self.stream} RVQ needs [2, 65536] entries per stage "
                                 "(uint16 tokens)")
            for name in ("num_stages", "max_windows"):
                if getattr(self, name) < 1:
                    raise UsageError(f"--{name} must be >= 1")
            if self.heldout_windows < 0:
                raise UsageError("--heldout_windows must be >= 0")

    def to_json(self) -> dict:
        out = asdict(self)
        if out["melody"] is None:  # configs written before the melody stream read as before
            del out["melody"]
        return out


SHARD_FORMATS = ("parquet", "webdataset")


@dataclass(frozen=True)
class TokenizeConfig:
    inputs: tuple[str, ...]
    output: str
    codebook: str
    captions: str | None = None
    # train shards; fixed for the run so shard = f(key) and re-runs are byte-identical. The CLI sizes
    # the counts by the data (--target_shard_mb); these defaults apply where nothing sizes them.
    num_shards: int = 4
    num_valid_shards: int = 1
    # how the counts were sized by the data (schemas/shard_plan.ShardPlan.to_json()); None: given or --into
    shard_plan: dict | None = None
    valid_fraction: float = 0.05
    formats: tuple[str, ...] = SHARD_FORMATS
    audio: AudioConfig = field(default_factory=AudioConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    acoustic: AcousticConfig = field(default_factory=AcousticConfig)
    mulan: MulanConfig = field(default_factory=MulanConfig)  # the built-in MuLan, as the CLI
    melody: MelodyConfig = field(default_factory=MelodyConfig)  # DEFAULT_MELODY_MODEL, as the CLI

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", tuple(self.formats))
        bad = [f for f in self.formats if f not in SHARD_FORMATS]
        if bad or not self.formats:
            raise UsageError(f"--formats: unknown {bad or 'empty'}; choose from {','.join(SHARD_FORMATS)}")
        for name in ("num_shards", "num_valid_shards"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1")

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
