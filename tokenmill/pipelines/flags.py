"""argparse options from dataclass fields: the flag, its default, type, choices and help are read
from the field (its default and `metadata`), so a config's defaults and help are stated once
(pipelines/configs.py)."""
from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

_ARGPARSE_KEYS = ("help", "choices", "metavar", "type")


def field_defaults(cls) -> dict:
    """{field name: default} of a dataclass (default factories called); required fields left out."""
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def field_flags(cls) -> dict[str, str]:
    """{field name: its option string} for the fields that have one (metadata 'flag', else --name)."""
    return {f.name: f.metadata.get("flag", f"--{f.name}") for f in fields(cls) if "help" in f.metadata}


def add_field_args(g, cls, names, specs: dict | None = None) -> None:
    """Add one option per field of `cls` in `names`, in that order. The option string is the
    field's metadata 'flag' (else --<name>), the default the field's, the type that of the default
    (int, float) unless the metadata says; help, choices and metavar come from the metadata.
    `specs`: {name: argparse keyword arguments} that override (or supply, for a dataclass whose
    module defines no flags, e.g. tokenizers/audio.AudioConfig) the metadata; 'flag' is one of them."""
    by_name = {f.name: f for f in fields(cls)}
    defaults = field_defaults(cls)
    for name in names:
        md = by_name[name].metadata
        kw = {k: md[k] for k in _ARGPARSE_KEYS if k in md}
        kw.update((specs or {}).get(name, {}))
        flag = kw.pop("flag", md.get("flag", f"--{name}"))
        default = kw.pop("default", defaults.get(name))
        if "type" not in kw and type(default) in (int, float):
            kw["type"] = type(default)
        if default is not None:
            kw["default"] = default
        g.add_argument(flag, **kw)


def parser_defaults(add_args) -> dict:
    """{dest: default} of a parser built by `add_args(parser)` (for tests and docs)."""
    p = argparse.ArgumentParser(add_help=False)
    add_args(p)
    return {a.dest: a.default for a in p._actions}
