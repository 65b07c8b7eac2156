"""Run an ONNX inference graph with torch ops: a torch nn.Module built from the graph read by onnx_proto.

Why: a model that ships as an .onnx file (basic-pitch's) would otherwise need onnxruntime, whose
CPU kernels follow the CPU's instruction set and its own thread pool, outside the compute layout
that holds every torch model (compute.py, docs/design.md §6). Executed here node by node with the
matching torch operation, the same graph runs under torch's pinned kernels and intra-op threads.

Each node maps to one torch call with ONNX's semantics (broadcasting, NCHW convolutions with
ONNX's [begin..., end...] pads, Pad's reflect mode, Slice's clamped ends, Reshape's 0 and -1).
The op set is what inference graphs exported from Keras/TF use (`OPS`); a graph with another op
is refused when the module is built, naming the op. Constants (initializers) are buffers of the
module, read from the file: nothing is converted or stored elsewhere. Only the ONNX default
domain is accepted. Intermediate results are dropped after their last use.

Pure model code: no Beam, no file system (the caller passes the file's bytes).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from tokenmill.tokenizers.onnx_proto import Graph, OnnxFormatError

TORCH_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 11: torch.float64}


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _reshape(x, shape, allowzero=0):
    dims = _ints(shape)
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _unsqueeze(x, axes):
    rank = x.dim() + len(_ints(axes))
    for a in sorted(_axis(a, rank) for a in _ints(axes)):
        x = x.unsqueeze(a)
    return x


def _slice(x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) or list(range(len(starts)))
    steps = _ints(steps) or [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st <= 0:
            raise OnnxFormatError(f"Slice with step {st} is not supported (only positive steps)")
        n = x.shape[_axis(a, x.dim())]
        s = min(max(s + n if s < 0 else s, 0), n)
        e = min(max(e + n if e < 0 else e, 0), n)
        index[_axis(a, x.dim())] = slice(s, e, st)
    return x[tuple(index)]


def _reflect_index(n: int, before: int, after: int) -> torch.Tensor:
    """Indices of a reflect-padded axis of length n (edge sample not repeated, like numpy 'reflect')."""
    if before >= n or after >= n:
        raise OnnxFormatError(f"reflect pad of {before}/{after} on an axis of length {n}")
    i = torch.arange(-before, n + after)
    i = torch.where(i < 0, -i, i)
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def _pad(x, pads, constant_value=None, axes=None, mode="constant"):
    p = _ints(pads)
    rank = x.dim()
    axes_ = [_axis(a, rank) for a in (_ints(axes) or range(rank))]
    k = len(axes_)
    before, after = dict(zip(axes_, p[:k])), dict(zip(axes_, p[k:]))
    if mode == "reflect":
        for a in axes_:
            if before[a] or after[a]:
                x = x.index_select(a, _reflect_index(x.shape[a], before[a], after[a]).to(x.device))
        return x
    if mode != "constant":
        raise OnnxFormatError(f"Pad mode {mode!r} is not supported (constant, reflect)")
    value = 0.0 if constant_value is None else float(constant_value.reshape(-1)[0])
    flat = []
    for a in reversed(range(rank)):  # F.pad wants (last_before, last_after, ...)
        flat += [before.get(a, 0), after.get(a, 0)]
    return F.pad(x, flat, value=value)


def _conv(x, w, b=None, strides=None, pads=None, dilations=None, group=1, kernel_shape=None, auto_pad="NOTSET"):
    if auto_pad not in ("NOTSET", ""):
        raise OnnxFormatError(f"Conv auto_pad={auto_pad!r} is not supported")
    nd = x.dim() - 2
    pads = pads or [0] * (2 * nd)
    if pads[:nd] == pads[nd:]:
        padding = pads[:nd]
    else:
        flat = []
        for i in reversed(range(nd)):
            flat += [pads[i], pads[nd + i]]
        x, padding = F.pad(x, flat), [0] * nd
    if x.shape[1] == 1 and group == 1 and all(k == 1 for k in w.shape[2:-1]) and not any(padding):
        return _conv_one_channel(x, w, b, (strides or [1] * nd)[-1], (dilations or [1] * nd)[-1])
    conv = {1: F.conv1d, 2: F.conv2d}.get(nd)
    if conv is None:
        raise OnnxFormatError(f"Conv on {nd}-d input is not supported")
    return conv(x, w, b, stride=strides or 1, padding=padding, dilation=dilations or 1, groups=group)


CHUNK_PRODUCTS = 1 << 17  # products formed at once by _conv_one_channel (512 KiB of float32: stays in cache)


def _conv_one_channel(x, w, b, stride: int, dilation: int):
    """A convolution of one input channel along the last axis (kernels of height 1: a filter bank on
    a waveform, like a CQT's, or a decimating low-pass), with sums in an order fixed by the kernel:
    the unfolded frames [N, 1, L, K] times the taps [O, 1, K], summed along the contiguous K axis
    (each output reduced whole by one thread), a few frames at a time so the products stay in
    cache. Chunking does not change a bit: every output is the same K-term reduction.

    torch's own convolution (and a matrix product) picks its kernel for these shapes by thread
    count and batch size, and the sums then come out in another order (measured: 1e-8 differences
    between 1 and 2 threads on one window). This form has no such choice. Against float64 it is as
    close as the convolution (bench/bench_pitch_torch.py)."""
    k = (w.shape[-1] - 1) * dilation + 1
    frames = x.unfold(-1, k, stride)[..., ::dilation]  # [N, 1, (1,) L, K], a view
    taps = w.reshape(w.shape[0], *([1] * (x.dim() - 2)), w.shape[-1])  # [O, (1,) 1, K]
    step = max(1, CHUNK_PRODUCTS // (w.shape[0] * w.shape[-1] * x.shape[0]))
    out = torch.cat([(frames[..., i:i + step, :].contiguous() * taps).sum(-1)
                     for i in range(0, frames.shape[-2], step)], dim=-1)  # [N, O, (1,) L]
    return out if b is None else out + b.reshape(-1, *([1] * (x.dim() - 2)))


def _reduce(fn: Callable) -> Callable:
    def run(x, axes=None, keepdims=1, noop_with_empty_axes=0):
        ax = axes if isinstance(axes, list) else _ints(axes)  # opset < 18: an attribute
        if not ax:
            if noop_with_empty_axes:
                return x
            ax = list(range(x.dim()))
        return fn(x, dim=[_axis(a, x.dim()) for a in ax], keepdim=bool(keepdims))
    return run


def _div(a, b):
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


OPS: dict[str, Callable[..., torch.Tensor]] = {
    "Reshape": _reshape,
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
    "Pad": _pad,
    "Conv": _conv,
    "Transpose": lambda x, perm=None: x.permute(*(perm or reversed(range(x.dim())))),
    "Concat": lambda *xs, axis: torch.cat(xs, dim=axis),
    "Neg": torch.neg,
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _div,
    "Sqrt": torch.sqrt,
    "Log": torch.log,
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Equal": torch.eq,
    "Where": torch.where,
    "Cast": lambda x, to: x.to(TORCH_DTYPES[to]),
    "Shape": lambda x: torch.tensor(list(x.shape), dtype=torch.int64),
    "ReduceSum": _reduce(torch.sum),
    "ReduceMin": _reduce(torch.amin),
    "ReduceMax": _reduce(torch.amax),
}


class OnnxModule(torch.nn.Module):
    """`forward(*inputs) -> tuple of outputs` in `graph.outputs` order (or the names given)."""

    def __init__(self, graph: Graph, outputs: tuple[str, ...] | None = None) -> None:
        super().__init__()
        for node in graph.nodes:
            if node.domain not in ("", "ai.onnx"):
                raise OnnxFormatError(f"node {node.name!r}: op domain {node.domain!r} is not supported")
            if node.op_type not in OPS:
                raise OnnxFormatError(f"node {node.name!r}: ONNX op {node.op_type!r} has no torch mapping "
                                      f"here; supported: {sorted(OPS)}")
            if node.op_type == "Cast" and node.attrs.get("to") not in TORCH_DTYPES:
                raise OnnxFormatError(f"node {node.name!r}: Cast to ONNX type {node.attrs.get('to')}")
        self.nodes = graph.nodes
        self.input_names = graph.inputs
        self.output_names = tuple(outputs or graph.outputs)
        self._const: dict[str, str] = {}
        for i, (name, arr) in enumerate(sorted(graph.initializers.items())):
            self.register_buffer(f"c{i}", torch.from_numpy(np.ascontiguousarray(arr)), persistent=False)
            self._const[name] = f"c{i}"
        last: dict[str, int] = {}
        for k, node in enumerate(self.nodes):
            for name in node.inputs:
                last[name] = k
        self._free = [[n for n in set(node.inputs) if last.get(n) == k and n not in self.output_names]
                      for k, node in enumerate(self.nodes)]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the graph takes {len(self.input_names)} inputs, got {len(inputs)}")
        env: dict[str, torch.Tensor] = dict(zip(self.input_names, inputs))
        for node, free in zip(self.nodes, self._free):
            args = [None if not n else env[n] if n in env else getattr(self, self._const[n]) for n in node.inputs]
            out = OPS[node.op_type](*args, **node.attrs)
            env[node.outputs[0]] = out
            for n in free:
                env.pop(n, None)
        return tuple(env[n] for n in self.output_names)
