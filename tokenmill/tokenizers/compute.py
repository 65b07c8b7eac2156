"""The compute layout of the torch models: intra-op threads and CPU kernels, pinned and recorded.

Pure code (no Beam): docs/design.md §6 (determinism).

A convolution or matmul in torch sums in an order set by its kernel: oneDNN and MKL pick kernels
by instruction set (AVX2, AVX-512, AMX) and split the work by thread count, so the last float bits
of a codec latent, a MuLan window or a spectral frame change with the machine, and where a vector
sits near a Voronoi boundary its token changes with them (measured: 0.02 % of acoustic codes
between 1 and 2 threads). The nearest-centroid decisions themselves are exact (nearest.py); the
models' floats are made reproducible by running them under one fixed layout:

* ``threads``: torch intra-op threads per worker process (default 1; Dataflow runs one Python
  process per vCPU, so nothing is left idle there). 0 means torch's default, all cores: the output
  then depends on the worker's core count, and the manifest says so.
* ``kernels="portable"`` (default): on x86-64, torch's ATen vector kernels, oneDNN and MKL are held
  to AVX2 (``PORTABLE_ENV``), so every x86 CPU from Haswell/Zen 1 on, Intel or AMD, runs the same
  kernels. ``"native"`` lets each library pick the widest ISA (faster on AVX-512 machines; the
  bench says by how much) and records it. On other architectures there is nothing to pin.

The libraries read these variables when their kernels are first dispatched, so `apply` must run
before the process's first torch operation; a process that already ran one under other kernels is
refused with a fix-it message rather than silently mixing. `facts()` is what the manifest and the
codebook cards record.
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

from tokenmill.errors import TokenmillError

KERNELS = ("portable", "native")
PORTABLE_ENV = {                        # read at first use by torch (ATen), oneDNN and MKL
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
_X86 = ("x86_64", "amd64", "i686", "i386")


class ComputeError(TokenmillError, RuntimeError):
    """The requested layout cannot be applied in this process (fix-it message)."""


@dataclass(frozen=True)
class ComputeLayout:
    threads: int = 1            # torch intra-op threads per worker process; 0 = torch's default
    kernels: str = "portable"   # "portable" (AVX2 on x86-64) | "native" (the widest ISA each library finds)

    def __post_init__(self):
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ComputeError(f"threads must be an int >= 0 (0 = torch's default), got {self.threads!r}; "
                               "check --torch_threads")
        if self.kernels not in KERNELS:
            raise ComputeError(f"kernels must be one of {KERNELS}, got {self.kernels!r}; check --kernels")

    def to_json(self) -> dict:
        return asdict(self)


def is_x86() -> bool:
    return platform.machine().lower() in _X86


def kernel_env(kernels: str) -> dict[str, str]:
    """Environment that pins `kernels` (empty for native, or off x86-64)."""
    return dict(PORTABLE_ENV) if kernels == "portable" and is_x86() else {}


def pin_kernels(kernels: str) -> None:
    """Set (or, for native, clear) the kernel variables; effective before the first torch op."""
    want = kernel_env(kernels)
    for name in PORTABLE_ENV:
        if name in want:
            os.environ[name] = want[name]
        else:
            os.environ.pop(name, None)


def apply(layout: ComputeLayout, device: str = "cpu") -> dict:
    """Pin this process to `layout` (kernels, then torch threads) and return `facts()`. On a CUDA
    `device`, cuDNN is also held to deterministic algorithms (no autotuning by timing).

    Raises ComputeError when torch already dispatched kernels of another instruction set here."""
    pin_kernels(layout.kernels)
    import torch

    if layout.threads:
        torch.set_num_threads(layout.threads)
    if device.startswith("cuda"):
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    got = facts(device)
    want = "AVX2" if kernel_env(layout.kernels) else None
    if want and got["torch_cpu_capability"] != want:
        raise ComputeError(
            f"--kernels portable asks for AVX2 kernels, but torch in this process already runs "
            f"{got['torch_cpu_capability']} kernels (a torch operation ran before the layout was applied, "
            f"or this CPU lacks AVX2). Start the process with "
            + " ".join(f"{k}={v}" for k, v in PORTABLE_ENV.items())
            + " in its environment (deploy/Dockerfile sets them for workers), or pass --kernels native")
    return got


def facts(device: str = "cpu") -> dict:
    """The kernels this process computes with, as recorded in manifests and codebook cards
    (with the GPU's name when `device` is a CUDA device this process can see)."""
    import torch

    out = {"machine": platform.machine().lower(),
           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
           "mkl_cbwr": os.environ.get("MKL_CBWR", "native"),
           "torch_threads": torch.get_num_threads(),
           "torch_version": torch.__version__}
    if device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        out["gpu"] = torch.cuda.get_device_name(index)
    return out


def describe(layout: ComputeLayout, applied: dict | None = None, device: str = "cpu") -> dict:
    """The manifest's / card's `compute` entry: the layout, the models' `device`, and the facts
    of the process that applied it (the launcher, or the worker that fitted a codebook; workers
    refuse to run under other CPU kernels when they are pinned)."""
    entry = {"threads": layout.threads, "kernels": layout.kernels, "device": device,
             "isa": {k: v for k, v in (applied or facts(device)).items() if k != "torch_threads"}}
    if layout.threads == 0:
        entry["note"] = "threads 0: torch's default (all cores); outputs depend on each worker's core count"
    elif layout.kernels == "native":
        entry["note"] = "native kernels: workers of another instruction set compute other last bits"
    if device.startswith("cuda"):
        entry["note"] = ("models on the GPU: cuDNN held to deterministic algorithms; tokens are "
                         "reproducible on the same GPU model, driver and torch build")
    return entry


def differences(old: dict | None, new: dict) -> list[str]:
    """Human-readable differences between two `compute` entries (empty when they agree); an
    entry missing from an older manifest counts as unknown."""
    if not old:
        return ["the earlier run recorded no compute layout (made before tokenmill recorded it)"]
    out = []
    for key in ("threads", "kernels", "device"):
        if old.get(key, "cpu" if key == "device" else None) != new.get(key, "cpu" if key == "device" else None):
            out.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    a, b = old.get("isa") or {}, new.get("isa") or {}
    for key in ("machine", "torch_cpu_capability", "onednn_max_cpu_isa", "mkl_cbwr", "torch_version"):
        if a.get(key) != b.get(key):
            out.append(f"{key} {a.get(key)!r} -> {b.get(key)!r}")
    return out
