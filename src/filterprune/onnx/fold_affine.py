"""Fold a per-channel scale and shift after a quantized Conv into the Conv.

tf2onnx writes a Keras BatchNormalization as ``Mul`` and ``Add`` after the Conv, so a
quantized Conv reads ``DQ(x)`` and ``DQ(w)`` but ends in ``Mul -> Add`` instead of a
QuantizeLinear: ONNX Runtime then runs it in float. ``Conv(x, w) * s + b`` is
``Conv(x, w * s) + b``, and with per-channel weight scales ``DQ(q) * s`` is
``DQ'(sign(s) q)`` with scales ``scale * |s|``: the same integers up to sign, so the
folded file computes what the unfolded one does (up to float rounding) and the Conv
meets its QuantizeLinear. A Conv is left as it is where the integers do not come back
exactly (a -128 in a filter whose ``s`` is negative, which has no positive in int8), where
its input is not dequantized (no int8 kernel to gain), or where the bias would not fit
ONNX Runtime's int32 bias (a tiny ``s``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .facts import LAYOUT_OPS, attrs_of, laid_out, layout_arg, subgraph_inputs
from .int8_weights import RANGES, computed_quantize, drop_unused

__all__ = ["fold_channel_affine"]

# ONNX Runtime quantizes a fused Conv's float bias to int32 at the input's scale times the
# weights': a tiny BatchNorm gamma makes that scale tiny and the bias saturate (0.4 off)
_BIAS_STEPS = 2.0**30


def fold_channel_affine(model: onnx.ModelProto) -> int:
    """Fold each ``Mul`` and ``Add`` by per-channel constants after a Conv whose weight is
    dequantized into that Conv, in place.

    Returns:
        The number of Convs folded.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    folded = 0
    for conv in [n for n in graph.node if n.op_type == "Conv" and n.domain in ("", "ai.onnx")]:
        folded += _fold(graph, conv, inits)
    if folded:
        drop_unused(graph)
    return folded


def _fold(graph: onnx.GraphProto, conv: onnx.NodeProto, inits: dict) -> bool:
    made = {o: n for n in graph.node for o in n.output}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in [*node.input, *subgraph_inputs(node)]:
            users.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    weight = _dequantized_weight(conv, made, users, inits, outputs)
    if weight is None:
        return False
    deq, scale, zero, chain = weight  # in the Conv's layout; scale, zero point per filter
    channels = deq.shape[0]
    affine, end = [], conv.output[0]
    for op in ("Mul", "Add"):
        after = users.get(end, [])
        if len(after) != 1 or after[0].op_type != op or end in outputs:
            continue
        value = _per_channel(after[0], end, inits, channels, deq.ndim)
        if value is None:
            break
        affine.append((after[0], value))
        end = after[0].output[0]
    if not affine:
        return False
    mul = affine[0][1] if affine[0][0].op_type == "Mul" else np.ones(channels, np.float32)
    add = affine[-1][1] if affine[-1][0].op_type == "Add" else np.zeros(channels, np.float32)
    if not (np.all(np.isfinite(mul)) and np.all(np.isfinite(add))):
        return False
    with np.errstate(over="ignore"):
        new_scale = np.where(mul == 0, scale, scale * np.abs(mul)).astype(np.float32)
        new_weight = (deq * mul.reshape(-1, *[1] * (deq.ndim - 1))).astype(np.float32)
    if not (np.all(np.isfinite(new_scale)) and np.all(np.isfinite(new_weight))):
        return False
    if not _integers_kept(new_weight, new_scale, zero, deq, scale, mul):
        return False
    bias = np.zeros(channels, np.float32)
    if len(conv.input) > 2 and conv.input[2]:
        if conv.input[2] not in inits:
            return False  # a bias made at run time (or dequantized): left as it is
        bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float32)
    bias = bias * mul + add
    x_scale = _input_scale(conv, made, inits)
    with np.errstate(over="ignore", divide="ignore"):
        steps = np.abs(bias) / (x_scale * new_scale) if x_scale else np.inf
    if not np.all(steps < _BIAS_STEPS):
        return False
    _rewrite(graph, conv, inits, (new_weight, new_scale, zero), bias, end)
    for node in [node for node, _ in affine] + chain:
        graph.node.remove(node)
    return True


def _input_scale(conv, made, inits) -> float | None:
    """The scale of the DequantizeLinear of one scale the Conv reads (through layout ops,
    which ONNX Runtime moves it across), else None."""
    dq = made.get(conv.input[0])
    while dq is not None and dq.op_type in LAYOUT_OPS:
        dq = made.get(dq.input[0])
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in inits:
        return None
    scale = numpy_helper.to_array(inits[dq.input[1]])
    return float(scale.reshape(())) if scale.size == 1 and scale.reshape(()) > 0 else None


def _dequantized_weight(conv, made, users, inits, outputs):
    """``(weight, scale, zero point, nodes)`` of a Conv weight made by DequantizeLinear
    (of an integer initializer, or of QuantizeLinear of a float one) and layout ops with
    constant arguments, each read by nothing else; scale and zero point one per filter,
    ``nodes`` the ones that made it."""
    name, layout, chain = conv.input[1], [], []
    while name in made and made[name].op_type in LAYOUT_OPS:
        node = made[name]
        if len(users.get(name, [])) != 1 or name in outputs or attrs_of(node).get("allowzero"):
            return None
        if not all(n in inits for n in node.input[1:] if n):
            return None
        layout.insert(0, (node.op_type, layout_arg(node, inits)))
        chain.append(node)
        name = node.input[0]
    dq = made.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or len(users.get(name, [])) != 1 or (
            name in outputs or dq.input[0] in outputs):  # fmt: skip
        return None
    args = [n for n in dq.input if n]
    if len(args) < 3 or attrs_of(dq).get("block_size", 0) or not all(n in inits for n in args[1:]):
        return None
    integers = _integers(args[0], made, users, inits)
    if integers is None:
        return None
    scale, zero = (numpy_helper.to_array(inits[n]) for n in args[1:3])
    if scale.dtype != np.float32 or zero.dtype != integers.dtype or not np.all(scale > 0):
        return None
    chain += [dq] + ([made[args[0]]] if args[0] in made else [])
    full = [np.broadcast_to(_along(v, attrs_of(dq).get("axis", 1), integers.ndim),
                            integers.shape) for v in (scale, zero)]  # fmt: skip
    values = [(integers.astype(np.float32) - full[1].astype(np.float32)) * full[0], *full]
    for op, arg in layout:
        values = [laid_out(v, op, arg) for v in values]
        if any(v is None for v in values):
            return None
    deq, scale, zero = values
    rows = [v.reshape(v.shape[0], -1) for v in (scale, zero)]
    if deq.ndim < 3 or any(np.any(r != r[:, :1]) for r in rows):
        return None  # not one scale and zero point per filter
    return deq, rows[0][:, 0].copy(), rows[1][:, 0].copy(), chain


def _integers(name, made, users, inits):
    """The integers a DequantizeLinear reads: an 8-bit initializer, or the
    QuantizeLinear of a float initializer (read by nothing else), computed."""
    if name in inits:
        value = numpy_helper.to_array(inits[name])
        return value if value.dtype in RANGES else None
    q = made.get(name)
    return computed_quantize(q, inits) if q is not None and len(users.get(name, [])) == 1 \
        else None  # fmt: skip


def _along(value: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A per-axis quantization argument shaped to broadcast over a tensor of ``ndim``."""
    if value.ndim == 0 or value.size == 1:
        return value.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return value.reshape(shape)


def _per_channel(node, name, inits, channels, rank):
    """The constant ``node`` applies to ``name`` as one value per channel of a Conv output
    of ``rank`` (a scalar repeated), or None."""
    other = [n for n in node.input if n != name]
    if len(node.input) != 2 or len(other) != 1 or other[0] not in inits:
        return None
    value = numpy_helper.to_array(inits[other[0]])
    if value.dtype != np.float32 or value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float32)


def _integers_kept(new_weight, new_scale, zero, deq, scale, mul) -> bool:
    """Whether quantizing the folded weight gives the old integers (less the zero point)
    times the sign of ``mul``, saturation included."""
    shape = (-1, *[1] * (deq.ndim - 1))
    low, high = RANGES[zero.dtype]
    offset = zero.astype(np.float32).reshape(shape)
    old = np.rint(deq / scale.reshape(shape))
    new = np.clip(np.rint(new_weight / new_scale.reshape(shape)) + offset, low, high) - offset
    return bool(np.array_equal(new, np.sign(mul).reshape(shape) * old))


def _rewrite(graph, conv, inits, weight, bias, end) -> None:
    """The Conv reading ``QuantizeLinear -> DequantizeLinear`` of the folded float weight
    along axis 0, with ``bias``, writing ``end``."""
    value, scale, zero = weight
    tag = conv.output[0]
    names = [f"{tag}_folded_{k}" for k in ("weight", "scale", "zero_point", "q", "bias")]
    for name, array in zip(names, (value, scale, zero, None, bias), strict=True):
        if array is not None:
            tensor = numpy_helper.from_array(np.asarray(array), name)
            graph.initializer.append(tensor)
            inits[name] = tensor
    q = onnx.helper.make_node("QuantizeLinear", names[:3], [names[3]], axis=0)
    dq = onnx.helper.make_node("DequantizeLinear", [names[3], *names[1:3]],
                               [f"{tag}_folded_w"], axis=0)  # fmt: skip
    at = list(graph.node).index(conv)
    graph.node.insert(at, dq)
    graph.node.insert(at, q)
    del conv.input[1:]
    conv.input.extend([f"{tag}_folded_w", names[4]])
    conv.output[0] = end
