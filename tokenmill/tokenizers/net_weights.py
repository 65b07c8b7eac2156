"""Model-only weights files of the built-in torch models (MuLan, melodic, melody): a safetensors
state dict with string metadata {format, config (JSON), ...}, written under a temp name and renamed,
and read back with the format checked before any tensor loads. Each model states its own format
tag, config class and fix-it hints; this module is the file handling they share.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path


def save_net_file(net, path: Path | str, fmt: str, extra_meta: dict[str, str] | None = None) -> Path:
    """Write `net`'s state dict to `path` (atomic) with metadata {format, config, **extra_meta};
    `net.cfg` is the model's config dataclass."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    meta = {"format": fmt, "config": json.dumps(asdict(net.cfg)), **(extra_meta or {})}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_net_file(path: Path | str, fmt: str, error: Callable[[str], Exception], *, what: str, missing: str,
                  wrong_format: str) -> tuple[dict, dict[str, str]]:
    """(state dict, metadata) of a weights file whose format tag is `fmt`. Raises `error` with
    `missing` when there is no file, and with `wrong_format` (after the format found) when the file
    is not safetensors or holds another format (`error` makes the model's own error class)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise error(f"no weights file at {path}{missing}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise error(f"cannot read {path} as safetensors ({e}){wrong_format}") from e
    if meta.get("format") != fmt:
        raise error(f"{path} is not a {what} weights file (format {meta.get('format')!r}, expected {fmt!r})"
                    f"{wrong_format}")
    return load_file(str(path)), meta
