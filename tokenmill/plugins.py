"""The one plug-in table: every pluggable model family, name → "module:factory".

A row is resolved (its module imported) only when that model is built, so listing or choosing a
model imports nothing heavy, and no module registers itself on import (no import circles). A new
back-end is one file with a factory and one row here; a user's own can be added at run time with
`register(family, name, "package.module:factory")` (or a callable). Evaluation plug-in specs may
also name a target directly (`package.module:factory`, eval/plugins.py).

    family       interface                                       built by
    codec        tokenizers.codec.AcousticCodec                  tokenizers.codec.build_codec
    semantic     tokenizers.semantic.SemanticExtractor           tokenizers.semantic.build_extractor
    mulan        tokenizers.mulan.MulanModel                     tokenizers.mulan.build_mulan
    melody       tokenizers.melody.MelodyModel                   tokenizers.melody.build_melody
    embedder     eval.embedders.Embedder (FAD)                   eval.embedders.build_embedder
    classifier   eval.classifiers.Classifier (KLD)               eval.classifiers.build_classifier
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from tokenmill.errors import TokenmillError

TABLE: dict[str, dict[str, Any]] = {
    "codec": {
        "soundstream": "tokenmill.tokenizers.soundstream:SoundStreamCodec",
        "encodec": "tokenmill.tokenizers.codec_adapters:EncodecCodec",
        "dac": "tokenmill.tokenizers.codec_adapters:DacCodec",
        "mimi": "tokenmill.tokenizers.codec_adapters:MimiCodec",
    },
    "semantic": {
        "spectral": "tokenmill.tokenizers.semantic:build_spectral",
        "basic-pitch": "tokenmill.tokenizers.semantic_pitch:build_pitch",
        "melodic": "tokenmill.tokenizers.semantic_builtin:build_melodic",
        "w2v-bert": "tokenmill.tokenizers.semantic_ssl:build_w2v_bert",
        "hubert": "tokenmill.tokenizers.semantic_ssl:build_hubert",
    },
    "mulan": {
        "mulan": "tokenmill.tokenizers.mulan_builtin:BuiltinMulan",
        "clap": "tokenmill.tokenizers.mulan:ClapMulan",
    },
    "melody": {
        "basic-pitch": "tokenmill.tokenizers.melody_pitch:build_pitch_melody",
        "builtin": "tokenmill.tokenizers.melody_builtin:build_builtin_melody",
    },
    "embedder": {
        "mulan": "tokenmill.eval.embedders.mulan_tower:build",
        "clap": "tokenmill.eval.embedders.clap:build",
        "hf": "tokenmill.eval.embedders.hidden_states:build",
        "encodec": "tokenmill.eval.embedders.encodec:build",
    },
    "classifier": {
        "mulan": "tokenmill.eval.classifiers.zero_shot:build_mulan",
        "clap": "tokenmill.eval.classifiers.zero_shot:build_clap",
        "hf": "tokenmill.eval.classifiers.audio_classification:build",
    },
}


class PluginError(TokenmillError, ValueError):
    """An unknown family or name, a row registered twice, or a target that does not import."""


def _family(family: str) -> dict[str, Any]:
    if family not in TABLE:
        raise PluginError(f"unknown plug-in family {family!r}; known: {', '.join(sorted(TABLE))}")
    return TABLE[family]


def names(family: str) -> list[str]:
    return sorted(_family(family))


def load(target: Any) -> Callable[..., Any]:
    """A row's factory: a callable as it is, or "module:attr" imported now."""
    if callable(target):
        return target
    module, sep, attr = str(target).partition(":")
    if not sep or not module or not attr:
        raise PluginError(f"plug-in target {target!r} is not 'package.module:factory'")
    try:
        obj = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise PluginError(f"plug-in {target!r}: cannot import {e.name!r} ({e}); install it or fix the row") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"plug-in {target!r}: {module} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


def resolve(family: str, name: str) -> Callable[..., Any]:
    rows = _family(family)
    if name not in rows:
        raise PluginError(f"unknown {family} {name!r}; known: {', '.join(sorted(rows))}")
    return load(rows[name])


def register(family: str, name: str, target: Any) -> Any:
    """Add a row (a user's own back-end); refuses a name the family already has."""
    rows = _family(family)
    if name in rows:
        raise PluginError(f"{family} {name!r} is already registered ({rows[name]!r})")
    rows[name] = target
    return target
