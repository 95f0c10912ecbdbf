"""Weighted ONNX ops as core layers: parameter roles, where each parameter lives.

A builder reads the model through :class:`~.facts.ModelFacts` (shapes, constants,
quantized weights) and returns a :class:`Built` or a string: the reason the op is
left whole. ``refs`` maps each parameter to the (node index, input index)
holding it, so the rewrite slices exactly what the analysis saw; for a weight
behind ``DequantizeLinear`` the quantized tensor and per-axis scale and zero
point are parameters too, with the role of the quantization axis.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import onnx

from ..core.graph import LayerInfo
from ._ops import NodeView, positions
from .facts import ModelFacts, laid_out

__all__ = ["Built", "build_layer", "held_layer"]

Ref = tuple[int, int]
Roles = tuple[str | None, ...]


class Built(NamedTuple):
    """A weighted node as a core layer.

    Attributes:
        info: The layer's parameters with their roles.
        refs: Parameter -> (ONNX node index, input index) holding it.
        arrays: Float values for the zero analysis (``W``, ``B``; a per-channel layer's
            ``shift``, its output for a zero input, and a normalization's ``mult``, the
            factor of its input: where 0, the output is ``shift`` whatever comes in).
        attrs: The core node's attributes.
    """

    info: LayerInfo
    refs: dict[str, Ref]
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]


class _Params:
    """Collects a layer's parameters: shapes with roles, refs and float values."""

    def __init__(self, facts: ModelFacts, idx: int, node: onnx.NodeProto) -> None:
        self.facts, self.idx, self.node = facts, idx, node
        self.info: dict[str, tuple[tuple[int, ...], tuple[str | None, ...]]] = {}
        self.refs: dict[str, Ref] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.shared = ""

    def get(self, i: int) -> np.ndarray | None:
        """The float value of input ``i`` if it is a constant (or a layout view of a
        quantized one: :meth:`ModelFacts.weight_view`)."""
        name = self.node.input[i] if i < len(self.node.input) else ""
        value = self.facts.value(name) if name else None
        view = self.facts.weight_view(name) if name and value is None else None
        return _viewed(self.facts.value(view[0]), view[1]) if view else value

    def add(self, key: str, i: int, roles: tuple[str | None, ...]) -> np.ndarray | None:
        """Register input ``i`` as parameter ``key``; None if it is not a constant. A
        layout view of a quantized weight registers that weight, its roles moved back
        through the view (the view's ops need no change once it is cut)."""
        name = self.node.input[i] if i < len(self.node.input) else ""
        value = self.get(i)
        if value is None:
            return None
        view = self.facts.weight_view(name) if self.facts.value(name) is None else None
        if view is not None:
            roles = _roles_before(roles, view[1])
            if roles is None:
                return None
            name, value = view[0], self.facts.value(view[0])
        d = self.facts.dq_node(name)
        if d is not None and self.facts.readers(name) > 1:
            self.shared = name  # one DequantizeLinear feeding two layers cannot serve both
        self.arrays[key] = np.asarray(value, dtype=np.float64)
        self.info[key] = (tuple(value.shape), roles)
        if d is None:
            self.refs[key] = (self.idx, i)
            return self.arrays[key]
        # a quantized weight: int8 -> DQ, or float -> Q -> DQ (sliced as float, Q kept)
        source = self.facts.node(d).input[0]
        q = self.facts.q_node(source)
        if q is not None and self.facts.readers(source) > 1:
            self.shared = source
        self.refs[key] = (d, 0) if q is None else (q, 0)
        self._axis_params(key, d, "", roles)
        if q is not None:
            self._axis_params(key, q, "q_", roles)
        return self.arrays[key]

    def _axis_params(self, key: str, idx: int, tag: str, roles: tuple[str | None, ...]) -> None:
        """The per-axis scale and zero point of Q/DQ node ``idx`` as parameters of ``key``."""
        node = self.facts.node(idx)
        scale = self.facts.const(node.input[1])
        if scale.size <= 1:
            return
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % len(roles)
        for j, part in ((1, "scale"), (2, "zero_point")):
            if j < len(node.input) and node.input[j]:
                self.refs[f"{key}:{tag}{part}"] = (idx, j)
                self.info[f"{key}:{tag}{part}"] = ((scale.size,), (roles[axis],))


def _conv(p: _Params, v: NodeView, attrs: dict[str, Any], name: str):
    transposed = p.node.op_type == "ConvTranspose"
    w = p.get(1)
    if w is None:
        return "weights are not constants"
    nk = w.ndim - 2
    roles = (("in", "out") if transposed else ("out", "in")) + (None,) * nk
    p.add("W", 1, roles)
    groups = int(v.attr("group", 1))
    # a conv's weight is (out, in/groups, ...), a transposed conv's (in, out/groups, ...)
    cin = w.shape[0] if transposed else w.shape[1] * groups
    cout = w.shape[1] * groups if transposed else w.shape[0]
    if any(k.startswith("W:") and r == ("out",) and size != (cout,)
           for k, (size, r) in p.info.items()):  # fmt: skip
        return "weight scales per filter of a group (each serves one filter in every group)"
    if len(p.node.input) > 2 and p.node.input[2] and p.add("B", 2, ("out",)) is None:
        return "bias is not a constant"
    out = v.out_shapes[0] if v.out_shapes else None
    if isinstance(out, tuple) and len(out) > 1 and out[1] != cout:  # a symbolic declared one
        return "output shape is unknown"  # after an op shape inference does not know
    spatial = v.in_shapes[0] if transposed else v.out_shapes[0]
    attrs = {"in_channels": cin, "out_channels": cout, "groups": groups, "channel_axis": 1,
             "positions": positions(spatial, 2)}  # fmt: skip
    stride = 1 if transposed else max([int(s) for s in v.attr("strides", [1])] or [1])
    info = LayerInfo(name, "conv", p.info, groups=groups, stride=stride, weight="W",
                     transposed=transposed)  # fmt: skip
    return info, attrs


def _gemm(p: _Params, v: NodeView, attrs: dict[str, Any], name: str):
    if v.attr("transA", 0):
        return "Gemm with transA"
    w = p.get(1)
    if w is None or w.ndim != 2:
        return "weights are not constants"
    roles = ("out", "in") if v.attr("transB", 0) else ("in", "out")
    p.add("W", 1, roles)
    cout = w.shape[roles.index("out")]
    if len(p.node.input) > 2 and p.node.input[2]:
        c = p.facts.value(p.node.input[2])
        if c is None:
            return "Gemm bias C is not a constant"
        c_roles = tuple("out" if (a == c.ndim - 1 and n == cout and n > 1) else None
                        for a, n in enumerate(c.shape))  # fmt: skip
        p.add("B", 2, c_roles)  # rows of C (one per sample) are cut along their columns
        if v.attr("beta", 1.0) == 0:
            p.arrays["B"] = np.zeros_like(p.arrays["B"])  # C adds nothing
    return _linear_info(p, v, name)


COMPUTED_PRODUCT = "MatMul of two computed tensors"  # attention's: read as an einsum


def _matmul(p: _Params, v: NodeView, attrs: dict[str, Any], name: str):
    if p.get(0) is not None:
        return "MatMul with a constant on the left"
    w = p.get(1)
    if w is None:
        return COMPUTED_PRODUCT
    if w.ndim != 2 or (v.rank or 0) < 2:
        return "MatMul with a weight that is not 2-D"
    p.add("W", 1, ("in", "out"))
    return _linear_info(p, v, name)


def _recurrent(p: _Params, v: NodeView, attrs: dict[str, Any], name: str):
    """LSTM, GRU, RNN: the input weights ``W`` (directions, gates * hidden, input) read
    the features of ``X`` (steps, batch, input; batch first with ``layout`` 1) with their
    columns. ``R`` counts at every step too and is never cut; biases multiply nothing."""
    x = v.in_shapes[0]
    if not isinstance(x, tuple) or len(x) != 3:
        return "input shape is unknown"
    if p.add("W", 1, (None, None, "in")) is None or p.add("R", 2, (None,) * 3) is None:
        return "weights are not constants"
    if len(p.node.input) > 3 and p.node.input[3] and p.add("B", 3, (None, None)) is None:
        return "biases are not constants"
    attrs = {"ndim": 3, "in_features": int(p.arrays["W"].shape[2]),
             "positions": max(1, x[0] * x[1] // p.facts.batch)}  # fmt: skip
    return LayerInfo(name, "recurrent", p.info, weight="W"), attrs


def _viewed(value: np.ndarray, steps: list[tuple[str, tuple[int, ...]]]) -> np.ndarray:
    """``value`` through the layout ``steps`` of :meth:`ModelFacts.weight_view`."""
    for op, arg in steps:
        value = laid_out(value, op, arg)
    return value


def _roles_before(roles: Roles, steps: list[tuple[str, tuple[int, ...]]]) -> Roles | None:
    """The axis roles of a viewed tensor before layout ``steps``; None if an axis with a
    role is one a step adds."""
    for op, arg in reversed(steps):
        if op == "Transpose":
            before: list[str | None] = [None] * len(roles)
            for out_axis, in_axis in enumerate(arg):
                before[in_axis] = roles[out_axis]
            roles = tuple(before)
        elif op == "Unsqueeze":
            added = {a % len(roles) for a in arg}
            if any(roles[a] for a in added):
                return None
            roles = tuple(r for a, r in enumerate(roles) if a not in added)
        elif op == "Squeeze":
            rank = len(roles) + len(arg)
            dropped, rest = {a % rank for a in arg}, iter(roles)
            roles = tuple(None if a in dropped else next(rest) for a in range(rank))
    return roles


def _linear_info(p: _Params, v: NodeView, name: str):
    w = p.arrays["W"]
    roles = p.info["W"][1]  # the stored weight's (a layout view's may differ)
    out = v.out_shapes[0] if v.out_shapes else None
    if not isinstance(out, tuple) or not out or out[-1] != w.shape[roles.index("out")]:
        return "output shape is unknown"  # after an op shape inference does not know
    attrs = {"in_features": int(w.shape[roles.index("in")]),
             "out_features": int(w.shape[roles.index("out")]),
             # per sample: a leading dimension may be batch * rows (a Dense on 4-D input)
             "positions": max(1, positions(out[:-1], 0) // p.facts.batch)}  # fmt: skip
    return LayerInfo(name, "linear", p.info, weight="W"), attrs


def _norm(p: _Params, v: NodeView, attrs: dict[str, Any], name: str):
    """BatchNormalization, InstanceNormalization, per-channel Q/DQ: one value per channel."""
    op = p.node.op_type
    if op == "BatchNormalization":
        if v.attr("training_mode", 0) or len([o for o in p.node.output if o]) > 1:
            return "BatchNormalization in training mode"
        keys = ["scale", "B", "mean", "var"]
    elif op == "InstanceNormalization":
        keys = ["scale", "B"]
    else:
        keys = ["scale", "zero_point"]
    vals = {}
    for i, key in enumerate(keys, start=1):
        if i < len(p.node.input) and p.node.input[i]:
            vals[key] = p.add(key, i, ("channel",))
            if vals[key] is None:
                return f"{op} {key} is not a constant"
    if op == "BatchNormalization":
        eps = float(v.attr("epsilon", 1e-5))
        p.arrays["mult"] = vals["scale"] / np.sqrt(vals["var"] + eps)
        shift = vals["B"] - vals["mean"] * p.arrays["mult"]
    elif op == "InstanceNormalization":
        p.arrays["mult"] = vals["scale"]
        shift = vals["B"]
    else:  # a real zero stays zero through a Q/DQ pair with one zero point (see facts)
        kept = np.broadcast_to(p.facts.keeps_zero(p.node), (attrs["num_features"],))
        shift = (~kept).astype(np.float64)
    p.arrays["shift"] = shift
    if op == "BatchNormalization":
        attrs = {"num_features": int(vals["scale"].size), "channel_axis": 1}
    elif op == "InstanceNormalization":
        attrs = {"num_features": int(vals["scale"].size), "channel_axis": 1}
    return LayerInfo(name, "batchnorm", p.info), attrs


def _groupnorm(p: _Params, v: NodeView, attrs: dict[str, Any], name: str):
    """GroupNormalization (opset 21): a scale and bias per channel. A group whose input is
    all zero normalises to zero, so its output is the bias."""
    for i, key in ((1, "scale"), (2, "B")):
        if p.add(key, i, ("channel",)) is None:
            return f"GroupNormalization {key} is not a constant"
    p.arrays["mult"], p.arrays["shift"] = p.arrays["scale"], p.arrays["B"]
    return LayerInfo(name, "batchnorm", p.info), attrs


_BUILDERS = {"Conv": _conv, "ConvTranspose": _conv, "Gemm": _gemm, "MatMul": _matmul,
             "BatchNormalization": _norm, "InstanceNormalization": _norm,
             "QuantizeLinear": _norm, "DequantizeLinear": _norm,
             "GroupNormalization": _groupnorm, "LSTM": _recurrent, "GRU": _recurrent,
             "RNN": _recurrent}  # fmt: skip


def build_layer(facts: ModelFacts, idx: int, node: onnx.NodeProto, view: NodeView,
                attrs: dict[str, Any], name: str) -> Built | str:  # fmt: skip
    """Weighted ``node`` (at ``idx``) as layer ``name``, or why it stays whole.

    Args:
        facts: Shapes and constants of the model.
        idx: The node's index in graph order.
        node: A Conv, ConvTranspose, Gemm, MatMul, normalization, per-channel Q/DQ or
            recurrent layer.
        view: What the op table read about the node.
        attrs: The core attributes the op table gave it.
        name: The layer's name (unique in the graph).
    """
    p = _Params(facts, idx, node)
    built = _BUILDERS[node.op_type](p, view, attrs, name)
    if isinstance(built, str):
        return built
    if p.shared:
        return f"parameter {p.shared} is shared with another op"
    info, attrs = built
    return Built(info, p.refs, p.arrays, attrs)


def held_layer(facts: ModelFacts, idx: int, node: onnx.NodeProto, name: str) -> Built | None:
    """A Conv or Gemm left whole whose weight is a constant, as a layer that is counted
    (its parameters; its zero filters in the report) and never cut: no refs."""
    p = _Params(facts, idx, node)
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        w = p.get(1)
        if w is None or w.ndim < 3:
            return None
        roles = ("in", "out") if op == "ConvTranspose" else ("out", "in")
        if op == "ConvTranspose" and _attr(node, "group") > 1:
            roles = ("in", None)  # its second axis holds one filter of every group
        roles += (None,) * (w.ndim - 2)
    elif op == "Gemm":
        w = p.get(1)
        if w is None or w.ndim != 2:
            return None
        roles = ("out", "in") if _attr(node, "transB") else ("in", "out")
    else:  # a MatMul's constant operand is counted as a parameter of its own
        return None
    p.add("W", 1, roles)
    cout = w.shape[roles.index("out")] if "out" in roles else None
    b = p.get(2) if len(node.input) > 2 and node.input[2] else None
    if b is not None:  # the output per filter when its weights are all zero
        b = np.asarray(b, dtype=np.float64)
        if op == "Gemm" and _attr(node, "beta", 1.0) == 0:  # C adds nothing
            b = np.zeros_like(b)
        p.arrays["B"] = b
        p.info["B"] = (b.shape, tuple("out" if a == b.ndim - 1 and n == cout else None
                                      for a, n in enumerate(b.shape)))  # fmt: skip
    kind = "conv" if op.startswith("Conv") else "linear"
    return Built(LayerInfo(name, kind, p.info, weight="W"), {}, p.arrays, {})


def _attr(node: onnx.NodeProto, key: str, default: Any = 0) -> Any:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == key),
                default)  # fmt: skip
