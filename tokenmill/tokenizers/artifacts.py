"""Codebook artifacts: input checks, the deterministic safetensors format, verified reads and
atomic local writes. Shared by the k-means (kmeans.py) and RVQ (rvq.py) codebooks and their
refits (refit.py); pure code, no Beam (docs/design.md §4)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from tokenmill.errors import TokenmillError


class CodebookError(TokenmillError, ValueError):
    """Bad input to a fit, a missing GPU, or a codebook file that fails verification."""


def check_vectors(x, name: str, dim: int | None = None) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise CodebookError(f"{name} must be a numpy array, got {type(x).__name__}; "
                            f"wrap it with np.asarray(..., dtype=np.float32)")
    if x.ndim != 2:
        raise CodebookError(f"{name} must be 2-D [N, D], got shape {x.shape}; "
                            f"reshape frames to x.reshape(-1, D)")
    if x.dtype != np.float32:
        raise CodebookError(f"{name} must be float32, got {x.dtype}; convert with x.astype(np.float32)")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise CodebookError(f"{name} is empty (shape {x.shape})")
    if dim is not None and x.shape[1] != dim:
        raise CodebookError(f"{name} has dimension D={x.shape[1]} but the codebook has D={dim}; "
                            f"features and codebook come from different extractors or layers")
    return np.ascontiguousarray(x)


def row_sqnorms(x: np.ndarray, name: str) -> np.ndarray:
    """Squared row norms (float32); also the finiteness check: NaN/inf propagate into them."""
    sq = np.einsum("ij,ij->i", x, x)
    bad = ~np.isfinite(sq)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "NaN or inf" if not np.isfinite(x[row]).all() else "values so large that |x|^2 overflows float32"
        raise CodebookError(f"{name} has {int(bad.sum())} rows with {what} (first: row {row}); "
                            f"drop or repair those frames before fitting (e.g. x[np.isfinite(x).all(1)])")
    return sq


def safetensors_bytes(array: np.ndarray, metadata: dict, name: str = "centroids",
                       extra: dict | None = None) -> bytes:
    """Deterministic safetensors serialization of the F32 tensor `name`, then the `extra` F32
    tensors in sorted name order (shared with rvq.py).

    safetensors' own writer emits ``__metadata__`` in hash-map order, which changes from run
    to run; this writes the same format with sorted keys, the header padded to 8 bytes."""
    header, chunks, offset = {"__metadata__": metadata}, [], 0
    for n, a in [(name, array), *sorted((extra or {}).items())]:
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[n] = {"dtype": "F32", "shape": list(np.shape(a)), "data_offsets": [offset, offset + len(b)]}
        chunks.append(b)
        offset += len(b)
    data = b"".join(chunks)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + data


def read_artifact(path, id: str | None, tensor: str, what: str, default_kind: str,
                   check, id_of, extras: dict | None = None) -> tuple[np.ndarray, dict]:
    """(tensor, card) of a codebook artifact pair (k-means and RVQ share it).

    `extras`: when a dict is given, every other tensor in the file is read into it and passed
    to `id_of` as keyword arguments (k-means standardization statistics).

    `path` is ``<id>.safetensors``, ``<id>.json`` or a directory (then `id` is required). `check`
    validates the tensor; `id_of(tensor, kind)` recomputes the content id, which must equal every
    id claimed by the safetensors metadata, the card and the caller. Errors name the file."""
    path = Path(path)
    if path.is_dir():
        if id is None:
            raise CodebookError(f"{path} is a directory; pass the {what} id too")
        path = path / f"{id}.safetensors"
    elif path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    card_path = path.with_suffix(".json")
    for p in (path, card_path):
        if not p.is_file():
            raise CodebookError(f"{what} file {p} is missing")
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            array = f.get_tensor(tensor)
            if extras is not None:
                extras.update({n: f.get_tensor(n) for n in f.keys() if n != tensor})
    except Exception as e:  # corrupt header, missing tensor, truncated file
        raise CodebookError(f"cannot read {what} {path}: {e}") from e
    try:
        card = json.loads(card_path.read_text("utf-8"))
    except ValueError as e:
        raise CodebookError(f"cannot parse {what} card {card_path}: {e}") from e
    array = check(array)
    kind = meta.get("kind", card.get("kind", default_kind))
    try:
        actual = id_of(array, kind, **(extras or {}))
    except TypeError as e:   # an extra tensor id_of does not know
        raise CodebookError(f"{what} {path}: unexpected tensors {sorted(extras or {})}: {e}") from e
    for claimed, where in ((meta.get("id"), path), (card.get("id"), card_path), (id, "the requested id")):
        if claimed is not None and claimed != actual:
            raise CodebookError(f"{what} {where} claims id {claimed} but its {tensor} hash to "
                                f"{actual} ({path}): the file was modified or mismatched")
    card.setdefault("kind", kind)
    return array, card


def atomic_write_local(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)            # mkstemp makes 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
