"""Stage checkpoints: safetensors for tensors, JSON for everything else. No pickle anywhere.

A checkpoint is a directory ``OUT/step-NNNNNNN/`` holding

  model.safetensors    the Transformer's state_dict (float32)
  optim.safetensors    optimizer tensors (AdamW exp_avg / exp_avg_sq / step per parameter),
                       named ``<param index>.<key>``; absent in an exported (model-only) checkpoint
  state.json           {"format": 1, "stage", "step", "model": TransformerConfig, "layout":
                       StageLayout, "train": the trainer's config, "dataset": {codebooks,
                       tokenizers, streams, job, schema_version} of the shards it trained on,
                       "reader": reader state per rank, "rng": RNG state per rank ({"cpu":
                       hex bytes, "cuda": hex or null}), "optim": optimizer hyper-parameters per group,
                       "history": recent [step, loss]}

and ``OUT/latest.json`` names the newest complete one ({"path": "step-NNNNNNN"}). Each file is
written to a temp name and renamed; latest.json is replaced last, so a kill mid-save leaves the
previous checkpoint in force. `load_model(path)` accepts a step directory or OUT (then latest).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tokenmill.errors import TokenmillError
from tokenmill.training.model import Transformer, TransformerConfig
from tokenmill.training.stages import StageLayout

FORMAT = 1
LATEST = "latest.json"
MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optim.safetensors", "state.json"


class CheckpointError(TokenmillError, ValueError):
    """A checkpoint that is missing, incomplete or does not fit; the message names the file and the fix."""


def step_dir(out: str | Path, step: int) -> Path:
    return Path(out) / f"step-{step:07d}"


def _replace(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def optim_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """(tensors named "<param index>.<key>", JSON-able param groups) of an optimizer's state_dict."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"{idx}.{k}"] = t.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def load_optim(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(out: str | Path, step: int, model: torch.nn.Module, state: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write step-NNNNNNN/ under `out` and point latest.json at it. `model` may be DDP-wrapped.
    `state` must hold stage, layout (StageLayout.to_json()), model (TransformerConfig dict) and
    whatever else the trainer resumes from (JSON-able)."""
    out = Path(out)
    d = step_dir(out, step)
    d.mkdir(parents=True, exist_ok=True)
    module = getattr(model, "module", model)
    weights = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    _replace(d / MODEL_FILE, lambda p: save_file(weights, str(p)))
    full = {"format": FORMAT, "step": int(step), **state}
    if optimizer is not None:
        tensors, groups = optim_tensors(optimizer)
        _replace(d / OPTIM_FILE, lambda p: save_file(tensors, str(p)))
        full["optim"] = groups
    _replace(d / STATE_FILE, lambda p: p.write_text(json.dumps(full, indent=1, sort_keys=True)))
    _replace(out / LATEST, lambda p: p.write_text(json.dumps({"path": d.name, "step": int(step)})))
    return d


def resolve(path: str | Path) -> Path:
    """A step directory: `path` itself, or the one OUT/latest.json names."""
    p = Path(path)
    if (p / LATEST).is_file():
        p = p / json.loads((p / LATEST).read_text())["path"]
    if not (p / STATE_FILE).is_file() or not (p / MODEL_FILE).is_file():
        raise CheckpointError(f"{path} is not a stage checkpoint (no {LATEST}, or no {STATE_FILE} + {MODEL_FILE} "
                              "in it); pass the trainer's --output directory or one of its step-NNNNNNN folders")
    return p


def read_state(path: str | Path) -> tuple[Path, dict[str, Any]]:
    d = resolve(path)
    state = json.loads((d / STATE_FILE).read_text())
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{d / STATE_FILE} has format {state.get('format')}, this tokenmill reads {FORMAT}")
    return d, state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, StageLayout, dict[str, Any]]:
    """(model in eval mode, its stage layout, state.json) from a checkpoint directory."""
    d, state = read_state(path)
    cfg = TransformerConfig(**state["model"])
    layout = StageLayout.from_json(state["layout"])
    if layout.vocab_size != cfg.vocab_size:
        raise CheckpointError(f"{d}: layout has {layout.vocab_size} ids but the model {cfg.vocab_size}")
    model = Transformer(cfg)
    model.load_state_dict(load_file(str(d / MODEL_FILE)))
    return model.to(device).eval(), layout, state


def load_training(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights and optimizer state in place (for resume); returns state.json."""
    d, state = read_state(path)
    if not (d / OPTIM_FILE).is_file():
        raise CheckpointError(f"{d} has no {OPTIM_FILE} (an exported model); training cannot resume from it")
    module = getattr(model, "module", model)
    module.load_state_dict(load_file(str(d / MODEL_FILE)))
    dev = next(module.parameters()).device
    tensors = {k: v.to(dev) if not k.endswith(".step") else v for k, v in load_file(str(d / OPTIM_FILE)).items()}
    load_optim(optimizer, tensors, state["optim"])
    return state
