"""The ONNX op table: which core rule each ONNX op uses, and how zeros pass through it.

Adding an op is one entry in :data:`OPS`. An entry names the core rule kind (or a
builder that reads the node's attributes and constant inputs), which inputs are
tensor operands (the others are sizes, axes, scales: never channels), and how a
provably zero channel passes through the op:

- ``keep``: zero in, zero out (Relu, MaxPool, Reshape, Concat...);
- ``none``: the op may turn zero into something else (Sigmoid, Softmax);
- ``all`` / ``any`` / ``first``: elementwise ops; the output is zero where all
  operands are (Add), where any is (Mul), where the first is (Div, PRelu);
- ``branches``: Where, zero where both values are, whatever the condition;
- ``layer``: decided from the layer's weights (Conv, Gemm, BatchNormalization).

A recurrent layer (LSTM, GRU, RNN) reads its input's features with the columns of its
input weights ``W``; its outputs stay whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["OPS", "ZERO_CHECKS", "OpSpec", "NodeView", "Spec", "positions", "foreign_ops",
           "foreign_fix"]

Spec = tuple[str, dict[str, Any]]


class NodeView:
    """What a builder may read about one ONNX node: attributes, shapes, constants."""

    def __init__(self, node: Any, attrs: dict[str, Any], in_shapes: list[Any],
                 out_shapes: list[Any], consts: list[np.ndarray | None],
                 opset: int) -> None:  # fmt: skip
        self.node, self.attrs = node, attrs
        self.in_shapes, self.out_shapes, self.consts = in_shapes, out_shapes, consts
        self.opset = opset

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def const(self, i: int) -> np.ndarray | None:
        return self.consts[i] if i < len(self.consts) else None

    @property
    def rank(self) -> int | None:
        shape = self.in_shapes[0] if self.in_shapes else None
        return len(shape) if isinstance(shape, tuple) else None


@dataclass(frozen=True)
class OpSpec:
    """How one ONNX op type maps to the core.

    Attributes:
        build: A core rule kind, or ``fn(NodeView) -> (kind, attrs)``.
        tensors: Indices of the inputs that are tensor operands (``None``: all).
        zero: How a zero channel passes (see the module docstring).
    """

    build: str | Callable[[NodeView], Spec]
    tensors: tuple[int, ...] | None = (0,)
    zero: str = "keep"


def _stop(reason: str) -> Spec:
    return "stop", {"reason": reason}


def _axis(v: NodeView, default: int = 1) -> int:
    axis = int(v.attr("axis", default))
    return axis % v.rank if v.rank else axis


def _qdq(v: NodeView) -> Spec:
    """Quantize/DequantizeLinear: per-channel scales are a per-channel layer."""
    scale = v.const(1)
    if scale is None:
        return _stop("quantization scale is not a constant")
    if scale.size <= 1:
        return "identity", {}
    if v.attr("block_size", 0):
        return _stop("blocked quantization")
    return "batchnorm", {"num_features": int(scale.size), "channel_axis": _axis(v)}


def _concat(v: NodeView) -> Spec:
    return "concat", {"axis": int(v.attr("axis"))}


def _split(v: NodeView) -> Spec:
    sizes = [s[_axis(v, 0)] if isinstance(s, tuple) else None for s in v.out_shapes]
    if None in sizes or v.rank is None:
        return _stop("split sizes are unknown (dynamic shapes)")
    return "split", {"axis": _axis(v, 0), "sizes": sizes, "equal": False, "free": True}


def _reshape(v: NodeView) -> Spec:
    # allowzero (the current torch exporter sets it for every view) only changes what a
    # 0 in the target means
    target = v.const(1)
    if target is None:  # a computed shape cannot be rewritten: channels must stay
        out = v.out_shapes[0]
        return "reshape", {"fixed_dims": list(range(len(out))) if isinstance(out, tuple) else [],
                           "why": "reshape to a shape computed in the graph"}  # fmt: skip
    if v.opset >= 14 and v.attr("allowzero", 0) and not np.all(target):
        return _stop("Reshape with allowzero and a 0 in its target")
    return "reshape", {}


def _einsum(v: NodeView) -> Spec:
    equation = v.attr("equation", "")
    return "einsum", {"equation": equation.decode() if isinstance(equation, bytes) else equation}


def _transpose(v: NodeView) -> Spec:
    perm = v.attr("perm")
    if perm is None:
        perm = list(range(v.rank or 0))[::-1]
    return "permute", {"perm": [int(p) for p in perm]}


def _axes(v: NodeView, input_index: int) -> list[int] | None:
    axes = v.attr("axes")
    if axes is None and v.const(input_index) is not None:
        axes = v.const(input_index).tolist()
    return None if axes is None else [int(a) for a in np.atleast_1d(axes)]


def _reduce(v: NodeView) -> Spec:
    axes = _axes(v, 1)
    if axes is None:
        if v.attr("noop_with_empty_axes", 0):
            return "identity", {}
        axes = list(range(v.rank or 0))
    return "reduce", {"dims": axes, "keepdim": bool(v.attr("keepdims", 1))}


def _softmax(v: NodeView) -> Spec:
    default = 1 if v.opset < 13 else -1
    if v.opset < 13:
        return "along", {"dims": list(range(_axis(v, default), v.rank or 0))}
    return "along", {"dims": [_axis(v, default)]}


def _cumsum(v: NodeView) -> Spec:
    axis = v.const(1)
    if axis is None:
        return _stop("CumSum axis is not a constant")
    return "along", {"dims": [int(axis)]}


def _dft(v: NodeView) -> Spec:
    """A DFT along ``axis`` (an attribute before opset 20, an input after): the entries of
    the other axes are transformed each alone, but for the last, their real and
    imaginary parts."""
    if v.opset < 20:
        axis = v.attr("axis", 1)
    else:
        given = len(v.node.input) > 2 and v.node.input[2]
        axis = v.const(2) if given else -2
        if axis is None:
            return _stop("DFT axis is not a constant")
    return "along", {"dims": [int(axis), -1]}


def _pad(v: NodeView) -> Spec:
    pads = v.attr("pads") if v.opset < 11 else v.const(1)
    if pads is None or v.rank is None:
        return _stop("Pad widths are not constants")
    pads = np.asarray(pads).reshape(2, -1)
    axes = list(range(v.rank))
    if v.const(3) is not None:
        axes = [int(a) % v.rank for a in v.const(3)]
    widths = [(0, 0)] * v.rank
    for a, b, e in zip(axes, pads[0], pads[1], strict=True):
        widths[a] = (int(b), int(e))
    return "pad", {"widths": widths, "mode": v.attr("mode", b"constant").decode()}


def _pad_zero(v: NodeView) -> bool:
    value = v.attr("value", 0.0) if v.opset < 11 else v.const(2)
    mode = v.attr("mode", b"constant")
    return mode != b"constant" or value is None or not np.any(value)


def _slice(v: NodeView) -> Spec:
    if v.rank is None:
        return _stop("input shape is unknown")
    if v.opset < 10:
        starts, ends, axes, steps = v.attr("starts"), v.attr("ends"), v.attr("axes"), None
    else:
        starts, ends, axes, steps = v.const(1), v.const(2), v.const(3), v.const(4)
        computed_axes = len(v.consts) > 3 and v.node.input[3] and axes is None
        if starts is None or ends is None or computed_axes:
            return _stop("Slice bounds are not constants")
    axes = list(range(len(starts))) if axes is None else [int(a) % v.rank for a in axes]
    steps = [1] * len(axes) if steps is None else [int(s) for s in steps]
    index: list[Any] = [slice(None)] * v.rank
    for a, b, e, st in zip(axes, starts, ends, steps, strict=True):
        index[a] = slice(int(max(b, -(2**62))), int(min(e, 2**62)), st)
    shape = v.in_shapes[0]
    cuts = [(a, *index[a].indices(shape[a])) for a in range(v.rank)
            if index[a].indices(shape[a]) != (0, shape[a], 1)]  # fmt: skip
    if len(cuts) == 1 and cuts[0][3] == 1 and cuts[0][2] > cuts[0][1]:
        # one contiguous cut (torch.chunk exports this way): the middle piece of a split
        # whose bounds the rewrite moves, so channels on both sides may go
        a, b, e, _ = cuts[0]
        sizes = [n for n in (b, e - b, shape[a] - e) if n > 0]
        return "split", {"axis": a, "sizes": sizes, "equal": False, "free": True,
                         "pick": 1 if b > 0 else 0, "bounds": (b, e)}  # fmt: skip
    return "index", {"index": tuple(index)}


def _gather(v: NodeView) -> Spec:
    """Constant indices in order are a slice (channels picked too); others, computed or
    reordering (points picked by their neighbours), pick entries along the axis while the
    other axes pass (core rule ``gather``: an axis holding channels stays whole)."""
    if v.rank is None:
        return _stop("Gather of a tensor of unknown rank")
    idx, axis = v.const(1), _axis(v, 0)
    if idx is None or idx.ndim > 1 or (idx.ndim == 1 and np.any(
            np.diff(idx % v.in_shapes[0][axis]) <= 0)):  # fmt: skip
        return "gather", {"picked": [axis]}
    index: list[Any] = [slice(None)] * v.rank
    index[axis] = int(idx) if idx.ndim == 0 else [int(i) for i in idx]
    return "index", {"index": tuple(index)}


def _gather_nd(v: NodeView) -> Spec:
    """GatherND with constant indices over the leading axes (how the exporter writes an
    adaptive pool whose bins do not divide the map): the axes after them pass whole."""
    idx, shape = v.const(1), v.in_shapes[0] if v.in_shapes else None
    if idx is None or idx.ndim < 1 or shape is None or len(shape) < idx.shape[-1] or int(
            v.attr("batch_dims", 0)):  # fmt: skip
        return _stop("GatherND with computed indices or batch_dims")
    size = np.asarray(shape[: idx.shape[-1]])
    idx = np.where(idx < 0, idx + size, idx)  # negative indices count from the end
    index = tuple(idx[..., j].tolist() for j in range(idx.shape[-1]))
    return "index", {"index": index, "computed_axes": tuple(range(idx.shape[-1])),
                     "computed_reason": "GatherND picks its entries by index"}


def _tile(v: NodeView) -> Spec:
    reps = v.const(1)
    if reps is None:
        return _stop("Tile repeats are not constants")
    return "tile", {"reps": [int(r) for r in reps]}


def _layernorm(v: NodeView) -> Spec:
    rank = v.rank or 0
    return "layernorm", {"normalized_ndim": rank - _axis(v, -1)}


def _groupnorm(v: NodeView) -> Spec:
    """Whole groups may go (the rewrite lowers ``num_groups``) where the scale and bias are
    per channel (opset 21, or a chain read as one, see :mod:`._group_norm`); per group
    (opset 18), the groups stay whole."""
    scale, shape = v.const(1), v.in_shapes[0] if v.in_shapes else None
    per_channel = scale is not None and isinstance(shape, tuple) and len(shape) > 1 and (
        scale.size == shape[1])  # (opset 18 with one channel a group means the same)
    if v.opset < 21 and not per_channel:
        return _stop("GroupNormalization with a scale per group (opset 18)")
    return "groupnorm", {"groups": int(v.attr("num_groups", 1)), "channel_axis": 1,
                         "rewritable": True}


def _spatial(v: NodeView) -> Spec:
    """Pooling or resizing over every axis after the channels: channels there stay whole."""
    return "along", {"dims": list(range(2, v.rank or 0))}


def _crop_pad(v: NodeView) -> Spec:
    """CenterCropPad over ``axes`` (all by default): channels on those axes stay whole."""
    rank = v.rank or 0
    axes = v.attr("axes", list(range(rank)))
    return "along", {"dims": sorted({int(a) % rank for a in axes} if rank else set())}


def _resize(v: NodeView) -> Spec:
    if v.opset >= 11 and len(v.node.input) > 3 and v.node.input[3] and v.const(3) is None:
        return _stop("Resize sizes are not constants")
    return _spatial(v)


def _depth_space(v: NodeView) -> Spec:
    inverse = v.node.op_type == "SpaceToDepth"  # always DCR order
    strided = inverse or v.attr("mode", b"DCR") in (b"DCR", "DCR")
    return "pixel_shuffle", {"factor": int(v.attr("blocksize")), "inverse": inverse,
                             "strided": strided}  # fmt: skip


def positions(shape: Any, start: int) -> int:
    """Output positions per sample: the product of ``shape[start:]`` (1 if unknown)."""
    return int(math.prod(shape[start:])) if isinstance(shape, tuple) else 1


_KEEP_ID = [
    "Relu", "LeakyRelu", "Tanh", "HardSwish", "Elu", "Selu", "Celu", "Softsign", "Erf", "Abs",
    "Neg", "Sqrt", "Sin", "Identity", "Dropout", "Cast", "Mish", "Gelu", "Floor", "Ceil",
    "Round", "Sign", "ThresholdedRelu", "Relu6", "CastLike", "Asin", "Atan", "Sinh", "Tan",
    "Asinh", "Atanh", "Swish",
]  # fmt: skip
_SPATIAL = ["MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
            "GlobalLpPool", "Upsample"]  # fmt: skip
_NONZERO_ID = [
    "Sigmoid", "HardSigmoid", "Softplus", "Exp", "Cos", "Reciprocal", "Log", "Not", "Cosh",
    "Acos", "IsNaN", "IsInf", "Shrink", "Acosh",
]  # fmt: skip

OPS: dict[str, OpSpec] = {
    **{op: OpSpec("identity") for op in _KEEP_ID},
    **{op: OpSpec(_spatial) for op in _SPATIAL},
    **{op: OpSpec("identity", zero="none") for op in _NONZERO_ID},
    "Clip": OpSpec("identity", zero="clip"),
    "Resize": OpSpec(_resize),
    "GridSample": OpSpec("sample", None),
    "RoiAlign": OpSpec("sample", None),  # its features' channels pass; the boxes stay
    "MaxRoiPool": OpSpec("sample", None),
    "QuantizeLinear": OpSpec(_qdq),
    "DequantizeLinear": OpSpec(_qdq),
    "Add": OpSpec("elementwise", None, "all"),
    "Sub": OpSpec("elementwise", None, "all"),
    "Sum": OpSpec("elementwise", None, "all"),
    "Max": OpSpec("elementwise", None, "all"),
    "Min": OpSpec("elementwise", None, "all"),
    "Mean": OpSpec("elementwise", None, "all"),
    "Mul": OpSpec("elementwise", None, "any"),
    "Div": OpSpec("elementwise", None, "first"),
    "PRelu": OpSpec("elementwise", None, "first"),
    "Pow": OpSpec("elementwise", None, "none"),
    "Where": OpSpec("elementwise", None, "branches"),
    **{op: OpSpec("elementwise", None, "none") for op in (
        "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal", "And", "Or", "Xor")},
    "BatchNormalization": OpSpec("batchnorm", zero="layer"),
    "InstanceNormalization": OpSpec("batchnorm", zero="layer"),
    "LayerNormalization": OpSpec(_layernorm, zero="none"),
    "RMSNormalization": OpSpec(_layernorm),  # no mean taken: a zero channel stays zero
    "GroupNormalization": OpSpec(_groupnorm, (0,), zero="layer"),
    "Conv": OpSpec("conv", zero="layer"),
    "ConvTranspose": OpSpec("conv", zero="layer"),
    "Gemm": OpSpec("linear", zero="layer"),
    # X and the initial states (the weights are the layer's); the outputs stay whole
    "LSTM": OpSpec("recurrent", (0, 5, 6), zero="none"),
    "GRU": OpSpec("recurrent", (0, 5), zero="none"),
    "RNN": OpSpec("recurrent", (0, 5), zero="none"),
    "MatMul": OpSpec("linear", zero="layer"),
    "Concat": OpSpec(_concat, None),
    "Split": OpSpec(_split),
    "Flatten": OpSpec("reshape"),
    "Reshape": OpSpec(_reshape),
    "Squeeze": OpSpec("reshape"),
    "Unsqueeze": OpSpec("reshape"),
    "Transpose": OpSpec(_transpose),
    "Einsum": OpSpec(_einsum, None, "none"),
    "Expand": OpSpec("expand"),
    "Tile": OpSpec(_tile),
    "Slice": OpSpec(_slice),
    "Gather": OpSpec(_gather),
    "GatherND": OpSpec(_gather_nd),
    **{op: OpSpec(_reduce) for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
                                      "ReduceL1", "ReduceL2", "ReduceProd", "ReduceSumSquare")},
    "ReduceLogSumExp": OpSpec(_reduce, zero="none"),
    "Softmax": OpSpec(_softmax, zero="none"),
    "LogSoftmax": OpSpec(_softmax, zero="none"),
    "Hardmax": OpSpec(_softmax, zero="none"),
    "CumSum": OpSpec(_cumsum),
    "DFT": OpSpec(_dft),
    "DepthToSpace": OpSpec(_depth_space),
    "SpaceToDepth": OpSpec(_depth_space),
    "Pad": OpSpec(_pad, zero="pad"),
    "CenterCropPad": OpSpec(_crop_pad),
    "Shape": OpSpec("noop", ()),
    "Size": OpSpec("noop", ()),
}



def _clip_keeps_zero(v: NodeView) -> bool:
    lo = v.attr("min") if v.opset < 11 else v.const(1)
    hi = v.attr("max") if v.opset < 11 else v.const(2)
    return (lo is None or float(np.max(lo)) <= 0.0) and (hi is None or float(np.min(hi)) >= 0.0)


# Zero modes decided per node: "keep" if the check passes, else "none".
ZERO_CHECKS: dict[str, Callable[[NodeView], bool]] = {"pad": _pad_zero, "clip": _clip_keeps_zero}


# Ops that hold a layer's weights in a form the op table does not read: the quantized
# operator format (QOperator) and onnxruntime's optimized files (com.microsoft fusions).
_QOPERATOR = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")
_QDQ_TYPES = ("QuantizeLinear", "DequantizeLinear")


def foreign_fix(ops: list[str]) -> str:
    """What to do about the ``ops`` of :func:`foreign_ops`, for the kinds found."""
    types = {op.rsplit(".", 1)[-1]: "." in op for op in ops}  # op type -> com.microsoft
    fixes = []
    if any(t in _QOPERATOR[:2] for t in types):
        fixes.append("re-quantize the float model in QDQ format (onnxruntime "
                     "quantize_static(quant_format=QuantFormat.QDQ))")
    if any(t in _QOPERATOR[2:] for t in types):  # quantize_dynamic's: no calibration data
        fixes.append("convert the float model, then quantize_dynamic the converted file")
    if any(ms and t in _QDQ_TYPES for t, ms in types.items()):
        fixes.append("quantize with the standard Q/DQ ops (quantize_static with "
                     "extra_options={'UseQDQContribOps': False}; opset 21 for 16-bit "
                     "activations; int4 weights exist only as com.microsoft ops)")
    if any(ms and t not in _QOPERATOR + _QDQ_TYPES for t, ms in types.items()):
        fixes.append("convert the float model before onnxruntime's graph optimizations")
    return "; or ".join(fixes)


def foreign_ops(model: Any) -> list[str]:
    """The quantized-operator and com.microsoft op types in ``model`` (sorted, the domain
    prefixed when not the default one): layers in them are not analysed."""
    found = set()
    for node in model.graph.node:
        if node.domain == "com.microsoft":
            found.add(f"{node.domain}.{node.op_type}")
        elif node.op_type in _QOPERATOR:
            found.add(node.op_type)
    return sorted(found)
