"""Plug-in specs and lazy resolution, shared by embedders and classifiers.

A spec names a plug-in and its options: ``NAME[=PATH][,KEY=VALUE...]``, e.g. ``mulan``,
``clap=/models/clap``, ``hf=/models/mert,layer=7``. NAME is a row of the family's table
(name → "module:factory", imported only when used) or, for a plug-in of your own, the target
itself: ``mypkg.embed:build=/models/x``. The factory is called as ``factory(path=PATH, **options)``
(``path`` left out when no PATH is given); option values that parse as int, float or true/false are
converted. Nothing registers itself on import; `register(table, name, target)` adds a row."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from tokenmill.eval import EvalError


@dataclass(frozen=True)
class Spec:
    name: str
    path: str | None
    options: tuple[tuple[str, Any], ...]

    @property
    def kwargs(self) -> dict[str, Any]:
        kw = dict(self.options)
        if self.path is not None:
            kw["path"] = self.path
        return kw

    def __str__(self) -> str:
        parts = [self.name + (f"={self.path}" if self.path is not None else "")]
        return ",".join(parts + [f"{k}={v}" for k, v in self.options])


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_spec(text: str, what: str) -> Spec:
    parts = [p.strip() for p in str(text).split(",")]
    head, opts = parts[0], parts[1:]
    name, _, path = head.partition("=")
    if not name:
        raise EvalError(f"{what} {text!r}: empty name; write NAME[=PATH][,KEY=VALUE...]")
    options = []
    for o in opts:
        k, eq, v = o.partition("=")
        if not eq or not k:
            raise EvalError(f"{what} {text!r}: option {o!r} is not KEY=VALUE")
        options.append((k.strip(), _value(v.strip())))
    return Spec(name.strip(), path.strip() or None, tuple(options))


def resolve(table: dict[str, str], name: str, what: str):
    """The factory for `name`: a table row, or a "module:factory" target given directly."""
    target = table.get(name, name if ":" in name else None)
    if target is None:
        raise EvalError(f"unknown {what} {name!r}; known: {', '.join(sorted(table))}, or give your own as "
                        "'package.module:factory'")
    mod, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise EvalError(f"{what} {name!r}: cannot import {target!r} ({e})") from e


def register(table: dict[str, str], name: str, target: str) -> None:
    if ":" not in target:
        raise EvalError(f"plug-in target {target!r} must be 'package.module:factory'")
    if name in table and table[name] != target:
        raise EvalError(f"plug-in {name!r} is already {table[name]!r}")
    table[name] = target
