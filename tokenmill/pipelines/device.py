"""`--device` of `tokenize` and `fit-codebook`: where the torch models run on each worker.

The value travels in SemanticConfig/AcousticConfig/MulanConfig.device to the ModelHandlers'
load_model (on the worker). The launcher builds models only to describe them, always on the CPU
(handlers.describe_*), so manifests and codebook cards do not depend on the device. When the
workers are this machine (embedded runner, or a PortableRunner whose job server is embedded),
`check_local_device` stops a CUDA request on a machine without CUDA before the job starts;
remote workers (Dataflow, Flink, Spark) check it themselves when the model loads
(tokenizers/codec.py: resolve_device).
"""
from __future__ import annotations

import argparse
import re
import socket

from tokenmill.errors import UsageError

DEVICE_RE = re.compile(r"cpu|cuda(:\d+)?")
_MODELS = {
    "tokenize": "the SSL semantic extractor (w2v-bert/hubert), the acoustic codec (built-in SoundStream "
                "or encodec/dac/mimi), the MuLan model (built-in or clap) and, with faiss-gpu, the semantic "
                "codebook's nearest-centroid search (same tokens up to near-ties; with faiss-cpu it stays "
                "on the CPU and says so)",
    "fit-codebook": "the SSL semantic extractor (w2v-bert/hubert), or with --stream mulan the MuLan model "
                    "(built-in or clap)",
}
_CPU_PARTS = {
    "tokenize": "the built-in spectral extractor stays on the CPU",
    "fit-codebook": "the built-in spectral extractor stays on the CPU (the k-means fit has its own --use_gpu; "
                    "the RVQ fit runs on the CPU)",
}
DEVICE_HELP = (
    "where the models run on each worker: {models}; {cpu}. 'cuda' or 'cuda:N' (N = GPU index) is for "
    "GPU workers: see docs/runners.md, 'GPU workers, custom container'. The launcher builds the models "
    "on its own CPU only to describe them, so the manifest's tokenizers and the codebook ids do not "
    "depend on this flag. With a local runner (no --runner, DirectRunner, or PortableRunner "
    "--job_endpoint=embed) a CUDA device this machine lacks is refused before the job starts "
    "(default %(default)s)")
LOCAL_RUNNERS = {"direct", "fnapi", "prism", "bundlebaseddirect", "switchingdirect", "testdirect"}
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0", ""}


def device_arg(value: str) -> str:
    """argparse type of --device: 'cpu', 'cuda' or 'cuda:N'."""
    v = value.strip().lower()
    if not DEVICE_RE.fullmatch(v):
        raise argparse.ArgumentTypeError(
            f"invalid device {value!r}: use cpu, cuda (the worker's first GPU) or cuda:N (GPU N, e.g. cuda:1)")
    return v


def device_index(device: str) -> int:
    """The GPU number of 'cuda' (0) or 'cuda:N' (N)."""
    return int(device.split(":", 1)[1]) if ":" in device else 0


def add_device_arg(p: argparse.ArgumentParser, command: str) -> None:
    """--device for `command` ('tokenize' or 'fit-codebook'), in its own help group."""
    g = p.add_argument_group("device")
    g.add_argument("--device", type=device_arg, default="cpu", metavar="{cpu,cuda,cuda:N}",
                   help=DEVICE_HELP.format(models=_MODELS[command], cpu=_CPU_PARTS[command]))


def _runner_key(name: str | None) -> str | None:
    if name is None:
        return None
    key = name.rsplit(".", 1)[-1].lower()
    return key.removesuffix("runner")


def workers_are_local(beam_args: list[str]) -> bool:
    """True when the job's workers run on this machine: no --runner (the embedded runner),
    DirectRunner/FnApiRunner/PrismRunner, a LOOPBACK environment (workers in this process), or a
    PortableRunner with an embedded job server whose workers are not an EXTERNAL pool on another host."""
    from apache_beam.options.pipeline_options import (
        PipelineOptions,
        PortableOptions,
        StandardOptions,
    )

    options = PipelineOptions(beam_args)
    runner = _runner_key(options.view_as(StandardOptions).runner)
    portable = options.view_as(PortableOptions)
    env = (portable.environment_type or "").upper()
    if runner is None or runner in LOCAL_RUNNERS or env == "LOOPBACK":
        return True
    if runner != "portable" or portable.job_endpoint not in (None, "embed"):
        return False
    if env == "EXTERNAL":
        host = (portable.environment_config or "").rsplit(":", 1)[0].strip().lower()
        return host in LOCAL_HOSTS or host in (socket.gethostname().lower(), socket.getfqdn().lower())
    return True


def check_local_device(device: str, beam_args: list[str]) -> None:
    """Refuse (fix-it message) a CUDA --device this machine cannot give a local job's workers."""
    if device == "cpu" or not workers_are_local(beam_args):
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine; run with --device cpu, "
                         "or on GPU workers (docs/runners.md)")
    index = device_index(device)
    n = torch.cuda.device_count()
    if index >= n:
        raise UsageError(f"--device {device}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}; "
                         "pick one of those, or run with --device cpu")
