"""The job configs state each default, flag help and model-free check once (pipelines/configs.py):
the CLI's defaults are the dataclasses' (found by introspection, so a default stated twice that
drifts fails here), a config built in Python is refused with the CLI's error and message, and the
flags of tokenize and fit-codebook are the ones users have always typed."""
from __future__ import annotations

from dataclasses import fields

import pytest

from tokenmill import cli
from tokenmill.errors import UsageError
from tokenmill.pipelines import options as opts
from tokenmill.pipelines.configs import (AcousticConfig, FitCodebookConfig, MelodyConfig, MulanConfig,
                                         SemanticConfig, TokenizeConfig)
from tokenmill.pipelines.flags import field_defaults, field_flags
from tokenmill.tokenizers.audio import AudioConfig
from tokenmill.tokenizers.compute import ComputeLayout

# option strings recorded from the parsers before the flags were made from the configs' fields
TOKENIZE_FLAGS = {
    "--acoustic_bandwidth_kbps", "--acoustic_batch_size", "--acoustic_codec", "--acoustic_model", "--acoustic_n_q",
    "--batch_size", "--captions", "--codebook", "--decoder", "--device", "--formats", "--input", "--into",
    "--kernels", "--max_channels", "--max_segment_s", "--melody_batch_size", "--melody_codebook", "--melody_model",
    "--melody_path", "--min_duration_s", "--min_source_rate_hz", "--mulan_batch_size", "--mulan_codebook",
    "--mulan_model", "--mulan_path", "--num_shards", "--num_valid_shards", "--output", "--resample_quality",
    "--retry-failures", "--retry_failures", "--semantic_extractor", "--semantic_layer", "--semantic_path",
    "--silence_dbfs", "--target_shard_mb", "--torch_threads", "--valid_fraction"}
FIT_CODEBOOK_FLAGS = {
    "--batch_size", "--decoder", "--device", "--heldout_frames", "--heldout_windows", "--input", "--kernels",
    "--max_channels", "--max_segment_s", "--max_windows", "--melody_batch_size", "--melody_model", "--melody_path",
    "--min_duration_s", "--min_source_rate_hz", "--mulan_batch_size", "--mulan_model", "--mulan_path", "--n_iter",
    "--num_clusters", "--num_stages", "--output", "--resample_quality", "--sample_frames", "--seed",
    "--semantic_extractor", "--semantic_layer", "--semantic_path", "--silence_dbfs", "--stream", "--torch_threads",
    "--use_gpu"}
COMMON = {"-h", "--help", "-v", "--verbose"}


def _parser(command):
    return cli.subparser(cli.build_parser(command), command)


def _parse(command, *flags):
    req = ["--input", "x", "--output", "out"] + (["--codebook", "cb"] if command == "tokenize" else [])
    return _parser(command).parse_args([*req, *flags])


@pytest.mark.parametrize("command, recorded", [("tokenize", TOKENIZE_FLAGS), ("fit-codebook", FIT_CODEBOOK_FLAGS)])
def test_help_lists_the_same_flags_as_before(command, recorded):
    p = _parser(command)
    assert {o for a in p._actions for o in a.option_strings} == recorded | COMMON
    text = p.format_help()
    assert all(flag in text for flag in recorded)


# (config class, {field: dest} of its flags); AudioConfig and ComputeLayout (tokenizers/) get theirs
# from options.AUDIO_FLAGS / COMPUTE_FLAGS
def _flag_dests(cls):
    if cls is AudioConfig:
        return {name: name for name in opts.AUDIO_FLAGS}
    if cls is ComputeLayout:
        return {name: spec.get("flag", f"--{name}")[2:] for name, spec in opts.COMPUTE_FLAGS.items()}
    return {name: flag[2:] for name, flag in field_flags(cls).items()}


@pytest.mark.parametrize("cls", [AudioConfig, SemanticConfig, AcousticConfig, MulanConfig, MelodyConfig,
                                 ComputeLayout])
def test_tokenize_parser_defaults_are_the_config_fields_defaults(cls):
    args, defaults = _parse("tokenize"), field_defaults(cls)
    dests = _flag_dests(cls)
    assert dests, cls
    for name, dest in dests.items():
        assert getattr(args, dest) == defaults[name], (cls.__name__, name)


def test_a_tokenize_config_built_in_python_means_what_the_cli_means_by_default():
    args = _parse("tokenize")
    # the launcher passes the codec's and MuLan's rates; built-in: 24 kHz and 16 kHz (the Python default)
    from_cli = opts.tokenize_config(args, acoustic_rate_hz=24_000, mulan_rate_hz=16_000)
    assert from_cli == TokenizeConfig(inputs=("x",), output="out", codebook="cb")
    assert from_cli.mulan.model == "mulan" and TokenizeConfig(inputs=(), output="", codebook="").mulan.enabled
    layout = {f.name for f in fields(TokenizeConfig)} & {a.dest for a in _parser("tokenize")._actions}
    assert {"num_shards", "num_valid_shards", "valid_fraction", "formats"} <= layout


@pytest.mark.parametrize("flags, python", [
    ((), dict()),
    (("--stream", "mulan"), dict(stream="mulan")),
    (("--stream", "melody", "--melody_model", "builtin"), dict(stream="melody", melody=MelodyConfig(model="builtin"))),
    (("--stream", "mulan", "--mulan_model", "clap", "--mulan_path", "d"),
     dict(stream="mulan", mulan=MulanConfig(model="clap", path="d"))),
])
def test_a_fit_codebook_config_built_in_python_means_what_the_cli_means_by_default(flags, python):
    from_cli = opts.fit_codebook_config(_parse("fit-codebook", *flags))
    assert from_cli == FitCodebookConfig(inputs=("x",), output="out", audio=AudioConfig(target_rates_hz=(16_000,)),
                                         **python)
    stream = python.get("stream", "semantic")
    for name, value in opts.FIT_STREAM_DEFAULTS[stream].items():
        assert getattr(from_cli, name) == value


def test_fit_codebook_flag_help_states_the_fields_defaults():
    text = " ".join(_parser("fit-codebook").format_help().split())
    d = field_defaults(FitCodebookConfig)
    for name in ("sample_frames", "heldout_frames", "max_windows", "heldout_windows"):
        assert f"(default {d[name]})" in text
    assert f"(default {MulanConfig().batch_size})" in text and f"default {MulanConfig().model}" in text


_TOKENIZE_BAD = [
    (("--acoustic_codec", "encodec"), lambda: AcousticConfig(codec="encodec")),
    (("--acoustic_n_q", "4"), lambda: AcousticConfig(codec_config=(("n_q", 4),))),
    (("--acoustic_codec", "none", "--acoustic_model", "m"), lambda: AcousticConfig(codec="none",
                                                                                     codec_config=(("path", "m"),))),
    (("--mulan_batch_size", "0"), lambda: MulanConfig(batch_size=0)),
    (("--mulan_model", "clap"), lambda: MulanConfig(model="clap")),
    (("--mulan_model", "none", "--mulan_codebook", "c"), lambda: MulanConfig(model="none", codebook="c")),
    (("--acoustic_codec", "none", "--melody_model", "none", "--melody_path", "w"),
     lambda: MelodyConfig(model="none", path="w")),
    (("--acoustic_codec", "none", "--melody_model", "basic-pitch", "--melody_path", "w"),
     lambda: MelodyConfig(model="basic-pitch", path="w")),
    (("--acoustic_codec", "none", "--melody_batch_size", "0"), lambda: MelodyConfig(batch_size=0)),
    (("--acoustic_codec", "none", "--batch_size", "0"), lambda: SemanticConfig(batch_size=0)),
    (("--acoustic_codec", "none", "--formats", "parquet,csv"),
     lambda: TokenizeConfig(inputs=("x",), output="out", codebook="cb", formats=("parquet", "csv"))),
    (("--acoustic_codec", "none", "--num_shards", "0"),
     lambda: TokenizeConfig(inputs=("x",), output="out", codebook="cb", num_shards=0)),
]
_FIT_BAD = [
    (("--stream", "melody"), lambda: FitCodebookConfig(inputs=("x",), output="out", stream="melody")),
    (("--stream", "mulan", "--num_clusters", "1"),
     lambda: FitCodebookConfig(inputs=("x",), output="out", stream="mulan", num_clusters=1)),
    (("--stream", "melody", "--melody_model", "builtin", "--num_stages", "0"),
     lambda: FitCodebookConfig(inputs=("x",), output="out", stream="melody", num_stages=0,
                               melody=MelodyConfig(model="builtin"))),
    (("--stream", "mulan", "--heldout_windows", "-1"),
     lambda: FitCodebookConfig(inputs=("x",), output="out", stream="mulan", heldout_windows=-1)),
]


@pytest.mark.parametrize("command, flags, build", [("tokenize", f, b) for f, b in _TOKENIZE_BAD]
                         + [("fit-codebook", f, b) for f, b in _FIT_BAD])
def test_an_invalid_config_built_in_python_fails_as_the_same_flags_on_the_cli(command, flags, build, tmp_path):
    with pytest.raises(UsageError) as in_python:
        build()
    req = ["--input", str(tmp_path / "*.wav"), "--output", str(tmp_path / "out")]
    req += ["--codebook", "cb"] if command == "tokenize" else []
    with pytest.raises(cli.CommandError) as on_cli:
        cli.main([command, *req, *flags])
    assert type(on_cli.value.__context__) is type(in_python.value)
    assert str(on_cli.value) == f"{command}: {in_python.value}"
