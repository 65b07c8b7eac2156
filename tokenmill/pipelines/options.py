"""Job options: the argparse flags (with the --help text users read) and the builders that turn
parsed flags into the frozen configs of pipelines/configs.py.

Our options are parsed by `beam_runner.py` with `parse_known_args`; everything left over goes to
Beam's PipelineOptions untouched (--runner, --direct_running_mode, --direct_num_workers,
--project, --temp_location, ...). Flags that map 1:1 to a config field are made from the field
(pipelines/flags.py: default, type, choices and help stated once, in configs.py); the others are
written here, their defaults read from the fields. The configs check themselves (`__post_init__`);
the builders add the checks that are about flags (a flag that does not apply) or need a model file.
"""
from __future__ import annotations

import argparse

from tokenmill.errors import UsageError
from tokenmill.pipelines.configs import (  # noqa: F401 (the configs and names are this module's API too)
    ACOUSTIC_DEFAULT, BUILTIN_MODEL_EXTRACTORS, DEFAULT_MELODY_MODEL, DEFAULT_SEMANTIC_EXTRACTOR,
    FIT_STREAM_DEFAULTS, FIT_STREAM_FIELDS, FIT_STREAMS, MELODY_MODELS, MULAN_MODELS, PITCH_EXTRACTORS,
    RVQ_STREAMS, SEMANTIC_EXTRACTORS, SHARD_FORMATS, SSL_EXTRACTORS, AcousticConfig, FitCodebookConfig,
    MelodyConfig, MulanConfig, RebuildConfig, SemanticConfig, TokenizeConfig)
from tokenmill.pipelines.device import add_device_arg
from tokenmill.pipelines.flags import add_field_args, field_defaults
from tokenmill.schemas.shard_plan import DEFAULT_TARGET_SHARD_MB
from tokenmill.tokenizers.audio import AudioConfig
from tokenmill.tokenizers.compute import KERNELS, ComputeError, ComputeLayout


# AudioConfig lives in tokenizers/ (no flags there): its flags' help and choices, by field
AUDIO_FLAGS = {
    "max_segment_s": dict(help="split longer files into near-equal segments of at most this many seconds, "
                               "on 40 ms boundaries (default %(default)s)"),
    "min_duration_s": dict(help="shorter files become dead letters with reason 'empty' (default %(default)s)"),
    "min_source_rate_hz": dict(help="lower source sample rates are dead letters ('unsupported'); 8000 accepts "
                                    "telephone-band audio (default %(default)s)"),
    "max_channels": dict(help="more channels than this are dead letters (default %(default)s)"),
    "silence_dbfs": dict(help="files whose peak is below this level are dead letters ('silent') "
                              "(default %(default)s)"),
    "decoder": dict(choices=("auto", "soundfile", "pedalboard"),
                    help="'auto' (default) is soundfile for every format, installed packages or not; "
                         "pedalboard needs the [fast-decode] extra, and the content hash of lossy formats "
                         "depends on the decoder"),
    "resample_quality": dict(choices=("VHQ", "HQ", "MQ", "LQ", "QQ"), help="soxr quality (default %(default)s)"),
}


def _add_audio_args(p: argparse.ArgumentParser) -> None:
    add_field_args(p.add_argument_group("audio front end"), AudioConfig, AUDIO_FLAGS, AUDIO_FLAGS)


def _add_semantic_args(p: argparse.ArgumentParser) -> None:
    add_field_args(p.add_argument_group("semantic features"), SemanticConfig,
                   ("extractor", "path", "layer", "batch_size"))


def _add_acoustic_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("acoustic tokens")
    add_field_args(g, AcousticConfig, ("codec",))
    # the codec's codec_config entries: not fields of their own
    g.add_argument("--acoustic_model", metavar="PATH",
                   help="weights: a save_pretrained directory (encodec/dac/mimi) or a SoundStream "
                        ".safetensors (default: the committed built-in checkpoint)")
    g.add_argument("--acoustic_bandwidth_kbps", type=float,
                   help="EnCodec only: target bandwidth, which sets the number of levels")
    g.add_argument("--acoustic_n_q", type=int, help="DAC/Mimi only: number of levels to keep")
    add_field_args(g, AcousticConfig, ("batch_size",))


def acoustic_config(args: argparse.Namespace) -> AcousticConfig:
    """Flags → AcousticConfig (which checks that the codec_config entries fit the codec)."""
    kw = {}
    if args.acoustic_model:
        kw["path"] = args.acoustic_model
    if args.acoustic_bandwidth_kbps is not None:
        kw["bandwidth_kbps"] = args.acoustic_bandwidth_kbps
    if args.acoustic_n_q is not None:
        kw["n_q"] = args.acoustic_n_q
    return AcousticConfig(codec=args.acoustic_codec, codec_config=tuple(sorted(kw.items())),
                          batch_size=args.acoustic_batch_size, device=getattr(args, "device", "cpu"),
                          compute=compute_layout(args))


def _add_mulan_args(p: argparse.ArgumentParser, *, with_none: bool = True) -> None:
    g = p.add_argument_group("MuLan (text/audio embedding) stream")
    model_help = MulanConfig.__dataclass_fields__["model"].metadata["help"]
    add_field_args(g, MulanConfig, ("model", "path", "codebook", "batch_size"), {"model": dict(
        choices=MULAN_MODELS if with_none else MULAN_MODELS[1:],
        help=model_help + ("; 'none' leaves mulan_windows and mulan null" if with_none else "")
        + " (default %(default)s)")})


def _add_melody_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("melody stream (melody_windows float16 [W, 192], melody tokens uint16 [W, 24])")
    add_field_args(g, MelodyConfig, ("model", "path", "codebook", "batch_size"))


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


def _given(args: argparse.Namespace, prefix: str, names) -> dict:
    """{field: value} of the flags --<prefix><field> that are set (not None) in `args`; an unset one
    takes the config field's default."""
    return {n: getattr(args, prefix + n) for n in names if getattr(args, prefix + n, None) is not None}


def melody_config(args: argparse.Namespace) -> MelodyConfig:
    """Flags → MelodyConfig (which checks itself; no model loaded). No --melody_model: 'none'."""
    kw = _given(args, "melody_", ("path", "codebook", "batch_size"))
    return MelodyConfig(model=getattr(args, "melody_model", None) or "none", **kw,
                        device=getattr(args, "device", "cpu"), compute=compute_layout(args))


def add_embed_text_args(p: argparse.ArgumentParser) -> None:
    _add_mulan_args(p, with_none=False)


def mulan_config(args: argparse.Namespace, *, need_codebook: bool = True) -> MulanConfig:
    """Flags → MulanConfig (which checks itself; no model loaded); `need_codebook`: a CLAP model
    needs --mulan_codebook (tokenize, not fit-codebook)."""
    cfg = MulanConfig(**_given(args, "mulan_", ("model", "path", "codebook", "batch_size")),
                      device=getattr(args, "device", "cpu"), compute=compute_layout(args))
    if need_codebook and cfg.model == "clap" and cfg.codebook is None:
        from tokenmill.tokenizers.mulan import fit_hint

        raise UsageError(f"--mulan_model clap needs --mulan_codebook (an RVQ fitted on this CLAP's windows); "
                         f"{fit_hint('clap', cfg.path)}")
    return cfg


COMPUTE_FLAGS = {
    "threads": dict(flag="--torch_threads", metavar="N",
                    help="torch intra-op threads per worker process for the semantic extractor, codec and "
                         "MuLan. The models' last float bits, hence some tokens, depend on it, so it is fixed "
                         "per job, not taken from the machine: run one worker process per core "
                         "(--direct_running_mode=multi_processing --direct_num_workers=N locally; Dataflow does "
                         "this by default). 0 = torch's default, all cores: the output then depends on each "
                         "worker's core count (default %(default)s)"),
    "kernels": dict(choices=KERNELS,
                    help="'portable': hold torch, oneDNN and MKL to AVX2 kernels on x86-64, so Intel and AMD "
                         "workers of any generation write the same bytes; 'native': the widest instruction set "
                         "each library finds (faster on AVX-512 machines, bench/bench_compute.py says how much; "
                         "outputs then differ in rare tokens between CPU types). Recorded in the manifest "
                         "and the codebook card (default %(default)s)"),
}


def add_compute_args(p: argparse.ArgumentParser) -> None:
    """--torch_threads and --kernels: the compute layout every worker runs the torch models under
    (tokenizers/compute.py), recorded in the manifest and the codebook card."""
    add_field_args(p.add_argument_group("compute layout (reproducible output on any worker)"), ComputeLayout,
                   COMPUTE_FLAGS, COMPUTE_FLAGS)


def compute_layout(args: argparse.Namespace) -> ComputeLayout:
    try:
        d = ComputeLayout()
        return ComputeLayout(threads=getattr(args, "torch_threads", d.threads), kernels=getattr(args, "kernels", d.kernels))
    except ComputeError as e:
        raise UsageError(f"{e}") from e


def _common_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", dest="inputs", action="extend", nargs="+", required=True, metavar="GLOB",
                   help="audio files to read; a local glob, gs://bucket/dir/*.flac or s3://...; "
                        "several patterns after one --input, or --input repeated. Every matched file "
                        "is an input: it ends up in the shards or in the dead letters.")


# fit-codebook flags that apply to one stream only: stream -> dests. Their argparse default is None
# so a flag given for the other stream is refused instead of silently ignored; an omitted one takes
# the config field's default (FitCodebookConfig, FIT_STREAM_DEFAULTS, MulanConfig, MelodyConfig).
_FIT_STREAM_FLAGS = {
    "semantic": FIT_STREAM_FIELDS["semantic"],
    "mulan": (*FIT_STREAM_FIELDS["mulan"], "mulan_model", "mulan_path", "mulan_batch_size"),
    "melody": (*FIT_STREAM_FIELDS["melody"], "melody_model", "melody_path", "melody_batch_size"),
}


def add_fit_codebook_args(p: argparse.ArgumentParser) -> None:
    d, by = field_defaults(FitCodebookConfig), FIT_STREAM_DEFAULTS
    mulan_d, melody_d = MulanConfig(), MelodyConfig()
    _common_inputs(p)
    p.add_argument("--output", required=True, metavar="DIR",
                   help="directory for the codebook: <kind>-<sha12>.safetensors plus a JSON card")
    p.add_argument("--stream", choices=FIT_STREAMS, default=d["stream"],
                   help="'semantic': k-means over semantic feature frames (semantic-<sha12>); 'mulan': "
                        "residual VQ over the MuLan model's 10 s window embeddings (mulan-<sha12>), the "
                        "codebook `tokenize --mulan_codebook` and `embed-text` need; 'melody': residual VQ "
                        f"({by['melody']['num_stages']} stages x {by['melody']['num_clusters']} by default) over "
                        "the melody model's 4 s window embeddings "
                        "(melody-<sha12>), the codebook `tokenize --melody_codebook` needs (default %(default)s)")
    p.add_argument("--num_clusters", type=int,
                   help="k: centroids (semantic) or entries per RVQ stage (mulan, melody) "
                        f"(default {by['semantic']['num_clusters']}; melody {by['melody']['num_clusters']})")
    p.add_argument("--sample_frames", type=int,
                   help=f"semantic: frames used for the fit, drawn deterministically (default {d['sample_frames']})")
    p.add_argument("--heldout_frames", type=int,
                   help=f"semantic: frames held out for the card's MSE (default {d['heldout_frames']})")
    p.add_argument("--num_stages", type=int,
                   help="mulan / melody: RVQ stages = tokens per crop / per window "
                        f"(default {by['mulan']['num_stages']} / {by['melody']['num_stages']})")
    p.add_argument("--max_windows", type=int,
                   help="mulan: at most this many 10 s windows used for the fit, drawn deterministically "
                        f"like frames (default {d['max_windows']})")
    p.add_argument("--heldout_windows", type=int,
                   help="mulan: windows held out for the card's per-stage MSE (at most 10%% of those "
                        f"sampled) (default {d['heldout_windows']})")
    p.add_argument("--n_iter", type=int,
                   help=f"Lloyd iterations: semantic k-means (default {by['semantic']['n_iter']}), or per RVQ "
                        f"stage (default {by['mulan']['n_iter']})")
    p.add_argument("--seed", type=int, default=d["seed"], help="sampling and seeding seed (default %(default)s)")
    p.add_argument("--use_gpu", action="store_true", default=None,
                   help="semantic: fit with faiss-gpu; fails (no fallback) when faiss-gpu or a GPU is "
                        "missing (the RVQ fit runs on the CPU)")
    _add_audio_args(p)
    _add_semantic_args(p)
    g = p.add_argument_group("MuLan model (--stream mulan)")
    g.add_argument("--mulan_model", choices=MULAN_MODELS[1:],
                   help="the model whose windows the RVQ quantizes: 'mulan' (built-in) or 'clap' "
                        f"(default {mulan_d.model})")
    g.add_argument("--mulan_path", metavar="PATH",
                   help="built-in weights .safetensors (default: the packaged one) or a CLAP "
                        "save_pretrained directory (required for clap)")
    g.add_argument("--mulan_batch_size", type=int,
                   help=f"10 s windows per MuLan forward pass, and segments per batch (default {mulan_d.batch_size})")
    g = p.add_argument_group("melody model (--stream melody)")
    g.add_argument("--melody_model", choices=MELODY_MODELS[1:],
                   help="the model whose 4 s windows the RVQ quantizes: 'builtin' or 'basic-pitch' (required)")
    g.add_argument("--melody_path", metavar="PATH", help="builtin: weights .safetensors (default: the packaged one)")
    g.add_argument("--melody_batch_size", type=int,
                   help=f"4 s windows per melody forward pass, and segments per batch (default {melody_d.batch_size})")
    add_device_arg(p, "fit-codebook")
    add_compute_args(p)


# tokenize's shard layout flags: a new dataset's defaults are TokenizeConfig's (the counts' apply only
# where no listing sizes them: tokenize_config without `sizing`; the CLI always sizes them by the data,
# --target_shard_mb, schemas/shard_plan.py); `--into` takes the existing dataset's.
LAYOUT_FIELDS = ("num_shards", "num_valid_shards", "valid_fraction", "formats")


def add_tokenize_args(p: argparse.ArgumentParser) -> None:
    layout_d = field_defaults(TokenizeConfig)
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
                        f"(default {layout_d['valid_fraction']}; with --into: the dataset's)")
    p.add_argument("--formats",
                   help=f"comma-separated shard formats (default {','.join(layout_d['formats'])}; with "
                        "--into: the dataset's)")
    _add_audio_args(p)
    _add_semantic_args(p)
    _add_acoustic_args(p)
    _add_mulan_args(p)
    _add_melody_args(p)
    add_device_arg(p, "tokenize")
    add_compute_args(p)


def audio_config(args: argparse.Namespace, target_rates_hz: tuple[int, ...]) -> AudioConfig:
    return AudioConfig(target_rates_hz=target_rates_hz, **{name: getattr(args, name) for name in AUDIO_FLAGS})


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
    return SemanticConfig(extractor=name, batch_size=args.batch_size, path=path, layer=layer,
                          device=getattr(args, "device", "cpu"), compute=compute_layout(args))


def fit_codebook_config(args: argparse.Namespace, mulan_rate_hz: int | None = None) -> FitCodebookConfig:
    """`mulan_rate_hz`: the MuLan model's sample rate (--stream mulan; the launcher builds the
    model once to learn it). `args` is only read; an omitted flag takes the config field's default."""
    mine = set(_FIT_STREAM_FLAGS[args.stream])
    for other in _FIT_STREAM_FLAGS:
        for dest in _FIT_STREAM_FLAGS[other]:
            if other != args.stream and dest not in mine and getattr(args, dest, None) is not None:
                raise UsageError(f"--{dest} applies to --stream {other} only (this is --stream {args.stream})")
    sem = SemanticConfig()
    if args.stream in RVQ_STREAMS and (args.semantic_extractor, args.batch_size, args.semantic_path,
                                       args.semantic_layer) != (sem.extractor, sem.batch_size, None, None):
        raise UsageError("--semantic_extractor, --semantic_path, --semantic_layer and --batch_size apply "
                         f"to --stream semantic; the {args.stream} model's batch is --{args.stream}_batch_size")
    if args.stream == "melody" and args.melody_model is None:
        raise UsageError("fit-codebook --stream melody needs --melody_model builtin or basic-pitch (the model "
                         "whose window embeddings the RVQ quantizes)")
    kw = _given(args, "", ("num_clusters", "n_iter", *FIT_STREAM_FIELDS[args.stream]))
    if args.stream == "mulan":
        kw["mulan"] = mulan_config(args, need_codebook=False)
    elif args.stream == "melody":
        kw["melody"] = melody_config(args)
    rates_hz = (mulan_rate_hz or 16_000,) if args.stream in RVQ_STREAMS else (16_000,)
    return FitCodebookConfig(inputs=tuple(args.inputs), output=args.output, stream=args.stream, seed=args.seed,
                             audio=audio_config(args, rates_hz), semantic=semantic_config(args), **kw)


def tokenize_config(args: argparse.Namespace, acoustic_rate_hz: int | None = None,
                    mulan_rate_hz: int | None = None, layout: dict | None = None,
                    sizing: tuple | None = None, *, semantic: SemanticConfig | None = None,
                    acoustic: AcousticConfig | None = None, mulan: MulanConfig | None = None,
                    melody: MelodyConfig | None = None) -> TokenizeConfig:
    """`acoustic_rate_hz`, `mulan_rate_hz`: the codec's and the MuLan model's sample rates (the
    launcher builds each model once to learn them). `layout`: the existing dataset's num_shards,
    num_valid_shards, valid_fraction and formats (--into); an omitted flag takes its value, a given
    one must equal it. `sizing`: (ingest.InputListing, the manifest's stream entries) of a new
    dataset: shard counts not given as flags are sized by the data (schemas/shard_plan.py).
    `args` is only read, so this can be called again once more models are described; `semantic`,
    `acoustic`, `mulan`, `melody`: the stream configs already built from these flags (reused, not
    built again)."""
    if getattr(args, "retry_failures", False) and not getattr(args, "into", None):
        raise UsageError("--retry_failures needs --into DIR (the dataset whose dead letters to retry)")
    target_mb = getattr(args, "target_shard_mb", None)
    if layout is not None and target_mb is not None:
        raise UsageError(f"--target_shard_mb applies to a new dataset; --into keeps the dataset's shard counts "
                         f"({args.into}/manifest.json): omit it")
    defaults = dict(field_defaults(TokenizeConfig))
    defaults["formats"] = ",".join(defaults["formats"])  # as the flag gives it
    lay = {}
    for name in LAYOUT_FIELDS:
        given = getattr(args, name)
        if layout is None:
            lay[name] = defaults[name] if given is None else given
            continue
        have = ",".join(layout[name]) if name == "formats" else layout[name]
        if given is not None and (given.replace(" ", "") if name == "formats" else given) != have:
            raise UsageError(f"--{name} {given} differs from the dataset's {have} ({args.into}/manifest.json); "
                             f"--into keeps the dataset's shard layout: omit --{name}, or write a new "
                             "dataset with --output")
        lay[name] = have
    formats = tuple(f.strip() for f in lay["formats"].split(",") if f.strip())  # TokenizeConfig checks them
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
        semantic=semantic or semantic_config(args), acoustic=acoustic or acoustic_config(args),
        mulan=mulan or mulan_config(args), melody=melody or melody_config(args))
