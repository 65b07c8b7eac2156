"""A minimal reader of ONNX model files: the graph's nodes, attributes and constant tensors.

Reads the protobuf wire format directly (no `onnx` package at run time): only the fields a plain
inference graph uses. Field numbers are those of onnx.proto (ModelProto.graph = 7; GraphProto
node = 1, initializer = 5, input = 11, output = 12; NodeProto input = 1, output = 2, name = 3,
op_type = 4, attribute = 5, domain = 7; AttributeProto name = 1, f = 2, i = 3, s = 4, t = 5,
floats = 7, ints = 8; TensorProto dims = 1, data_type = 2, float_data = 4, int32_data = 5,
int64_data = 7, name = 8, raw_data = 9, double_data = 10, data_location = 14). A tensor stored
outside the file (external data), a subgraph attribute or a data type not listed in `DTYPES`
is refused with OnnxFormatError.

Pure code: bytes in, numpy arrays and plain dataclasses out.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from tokenmill.errors import TokenmillError

# TensorProto.DataType -> numpy dtype (little-endian, as raw_data stores them)
DTYPES = {1: np.dtype("<f4"), 6: np.dtype("<i4"), 7: np.dtype("<i8"), 9: np.dtype("bool"), 11: np.dtype("<f8")}


class OnnxFormatError(TokenmillError, ValueError):
    """The file is not an ONNX model this reader understands (the message names what)."""


@dataclass(frozen=True)
class Node:
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    name: str = ""
    domain: str = ""


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    initializers: dict[str, np.ndarray] = field(repr=False)
    inputs: tuple[str, ...]  # graph inputs that are not initializers
    outputs: tuple[str, ...]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if pos >= len(buf):
            raise OnnxFormatError("truncated varint: the ONNX file is cut short")
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one message; value is an int or a bytes slice."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise OnnxFormatError(f"unsupported protobuf wire type {wire} (field {num})")
        if pos > len(buf):
            raise OnnxFormatError(f"field {num} runs past the end of its message: the ONNX file is cut short")
        yield num, wire, val


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _ints(wire: int, val: Any) -> list[int]:
    """A repeated int64 field, packed (wire 2) or not (wire 0)."""
    if wire == 0:
        return [_signed(val)]
    out, pos = [], 0
    while pos < len(val):
        v, pos = _varint(val, pos)
        out.append(_signed(v))
    return out


def _floats(wire: int, val: Any) -> list[float]:
    if wire == 5:
        return [struct.unpack("<f", val)[0]]
    return list(np.frombuffer(val, "<f4").astype(float))


def read_tensor(buf: bytes) -> tuple[str, np.ndarray]:
    dims: list[int] = []
    dtype = name = None
    raw = None
    typed: dict[int, list] = {}
    for num, wire, val in _fields(buf):
        if num == 1:
            dims += _ints(wire, val)
        elif num == 2:
            dtype = val
        elif num == 8:
            name = val.decode()
        elif num == 9:
            raw = bytes(val)
        elif num == 4:
            typed.setdefault(4, []).extend(_floats(wire, val))
        elif num in (5, 7):
            typed.setdefault(num, []).extend(_ints(wire, val))
        elif num == 10:
            typed.setdefault(10, []).extend(np.frombuffer(val, "<f8").tolist() if wire == 2
                                            else struct.unpack("<d", val))
        elif num == 14 and val == 1:
            raise OnnxFormatError(f"tensor {name!r} keeps its data outside the .onnx file (external data); "
                                  "this reader needs a self-contained model")
    if dtype not in DTYPES:
        raise OnnxFormatError(f"tensor {name!r} has ONNX data type {dtype}; supported: {sorted(DTYPES)}")
    dt = DTYPES[dtype]
    if raw is not None:
        arr = np.frombuffer(raw, dt).copy()
    else:
        vals = next(iter(typed.values()), [])
        arr = np.asarray(vals, dtype=dt)
    count = int(np.prod(dims)) if dims else 1
    if arr.size != count:
        raise OnnxFormatError(f"tensor {name!r}: {arr.size} values for dims {dims}")
    return name or "", arr.reshape(dims)


def _attribute(buf: bytes) -> tuple[str, Any]:
    name, val = "", None
    ints: list[int] = []
    floats: list[float] = []
    for num, wire, v in _fields(buf):
        if num == 1:
            name = v.decode()
        elif num == 2:
            val = struct.unpack("<f", v)[0]
        elif num == 3:
            val = _signed(v)
        elif num == 4:
            val = bytes(v).decode()
        elif num == 5:
            val = read_tensor(v)[1]
        elif num == 7:
            floats += _floats(wire, v)
        elif num == 8:
            ints += _ints(wire, v)
        elif num in (6, 11):
            raise OnnxFormatError(f"attribute {name!r} holds a subgraph; control flow is not supported")
    if ints:
        val = ints
    elif floats:
        val = floats
    return name, val


def _node(buf: bytes) -> Node:
    ins, outs, attrs = [], [], {}
    name = op = domain = ""
    for num, _, v in _fields(buf):
        if num == 1:
            ins.append(v.decode())
        elif num == 2:
            outs.append(v.decode())
        elif num == 3:
            name = v.decode()
        elif num == 4:
            op = v.decode()
        elif num == 5:
            k, a = _attribute(v)
            attrs[k] = a
        elif num == 7:
            domain = v.decode()
    return Node(op, tuple(ins), tuple(outs), attrs, name, domain)


def _value_name(buf: bytes) -> str:
    for num, _, v in _fields(buf):
        if num == 1:
            return v.decode()
    return ""


def read_model(blob: bytes) -> Graph:
    """The main graph of a serialized ModelProto."""
    graph = None
    for num, wire, v in _fields(blob):
        if num == 7 and wire == 2:
            graph = v
    if graph is None:
        raise OnnxFormatError("no graph in the file: not an ONNX model")
    nodes, inits, ins, outs = [], {}, [], []
    for num, _, v in _fields(graph):
        if num == 1:
            nodes.append(_node(v))
        elif num == 5:
            k, arr = read_tensor(v)
            inits[k] = arr
        elif num == 11:
            ins.append(_value_name(v))
        elif num == 12:
            outs.append(_value_name(v))
    return Graph(tuple(nodes), inits, tuple(i for i in ins if i not in inits), tuple(outs))
