"""Store quantized weights as 8-bit initializers.

A QAT export writes each weight as a float initializer followed by QuantizeLinear, so
the file is as large as the float model's; the runtime quantizes the weight when it
loads the file. Computing that QuantizeLinear here (``saturate(round_half_even(w / s) +
z)``, as the operator defines it) leaves an int8 or uint8 initializer feeding the
DequantizeLinear: the same numbers the runtime would make, in a quarter of the bytes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .facts import LAYOUT_OPS, attrs_of, laid_out, layout_arg, subgraph_inputs

__all__ = ["store_int8_weights", "weight_integers"]

RANGES = {np.dtype("int8"): (-128, 127), np.dtype("uint8"): (0, 255)}


def store_int8_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace each QuantizeLinear of constant inputs by its 8-bit result.

    Returns:
        ``(model, count)``: a new model (``model`` is not modified) and the number of
        QuantizeLinear nodes computed. Nodes with other output types, blocked
        quantization or inputs made at run time are left as they are.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    skip = _transposed_with_zero_points(graph, inits)
    keep, count, stored = [], 0, set()
    for node in graph.node:
        value = None if node.output[0] in skip else computed_quantize(node, inits)
        if value is None:
            value = _laid_out(node, inits, stored)  # tf2onnx: Q -> Reshape -> Transpose -> DQ
        if value is None:
            keep.append(node)
            continue
        tensor = numpy_helper.from_array(value, node.output[0])
        graph.initializer.append(tensor)
        inits[node.output[0]] = tensor
        stored.add(node.output[0])
        count += node.op_type == "QuantizeLinear"
    if count:
        del graph.node[:]
        graph.node.extend(_layout_before_dequantize(keep, inits, graph))
        drop_unused(graph)
    return out, count


def _layout_before_dequantize(nodes: list, inits: dict, graph: onnx.GraphProto) -> list:
    """``nodes`` with each layout op after the DequantizeLinear of 8-bit integers (tf2onnx:
    ``DQ -> Reshape -> Transpose -> Conv`` for a depthwise kernel) computed on the
    integers, so the DequantizeLinear feeds its layer: OpenVINO (2026.4) ran such layers in
    float32 when their integer weights were laid out after the DequantizeLinear."""
    made = {o: n for n in nodes for o in n.output}
    users: dict[str, list] = {}
    for node in nodes:
        for name in [*node.input, *subgraph_inputs(node)]:
            users.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    dropped = set()
    for node in nodes:
        dq = made.get(node.input[0]) if node.op_type in LAYOUT_OPS else None
        if dq is None or dq.op_type != "DequantizeLinear" or len(users[dq.output[0]]) != 1 or (
                dq.output[0] in outputs):  # fmt: skip
            continue
        moved = _moved(dq, node, inits)
        if moved is None:
            continue
        value, axis = moved
        name = f"{node.output[0]}_integers"
        tensor = numpy_helper.from_array(value, name)
        graph.initializer.append(tensor)
        inits[name] = tensor
        dq.input[0] = name
        del dq.output[:]
        dq.output.append(node.output[0])
        made[node.output[0]] = dq
        attrs = [a for a in dq.attribute if a.name != "axis"]
        del dq.attribute[:]
        dq.attribute.extend(attrs + [onnx.helper.make_attribute("axis", axis)])
        dropped.add(id(node))
    return [n for n in nodes if id(n) not in dropped]


def _moved(dq: onnx.NodeProto, node: onnx.NodeProto, inits: dict) -> tuple | None:
    """The integers ``dq`` reads laid out by ``node``, and the axis its per-channel scales
    lie along then; None where the arguments are not constants or a channel is split."""
    args = [n for n in [*dq.input, *node.input[1:]] if n]
    if not all(n in inits for n in args) or attrs_of(node).get("allowzero"):
        return None
    value = numpy_helper.to_array(inits[dq.input[0]])
    scale = numpy_helper.to_array(inits[dq.input[1]])
    if value.dtype not in RANGES or attrs_of(dq).get("block_size", 0):
        return None
    arg = layout_arg(node, inits)
    laid = laid_out(value, node.op_type, arg)
    if laid is None:
        return None
    if scale.ndim == 0:  # one scale: no axis to follow
        return laid, 0
    axis = attrs_of(dq).get("axis", 1) % value.ndim
    index = np.arange(value.shape[axis]).reshape([-1 if i == axis else 1
                                                  for i in range(value.ndim)])  # fmt: skip
    index = laid_out(np.broadcast_to(index, value.shape), node.op_type, arg)
    for new in range(index.ndim):
        along = np.arange(index.shape[new]).reshape([-1 if i == new else 1
                                                     for i in range(index.ndim)])  # fmt: skip
        if index.shape[new] == value.shape[axis] and np.array_equal(index, np.broadcast_to(
                along, index.shape)):  # fmt: skip
            return laid, new
    return None


def _transposed_with_zero_points(graph: onnx.GraphProto, inits: dict) -> set[str]:
    """QuantizeLinear outputs of ConvTranspose weights with non-zero zero points: stored
    as integers, OpenVINO (2025) runs such a ConvTranspose wrongly (0.4 relative off),
    while it runs the QuantizeLinear of float weights right."""
    made = {o: n for n in graph.node for o in n.output}
    out = set()
    for node in graph.node:
        if node.op_type != "ConvTranspose" or len(node.input) < 2:
            continue
        dq = made.get(node.input[1])
        q = made.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or len(q.input) < 3:
            continue
        zero_point = inits.get(q.input[2])
        if zero_point is not None and np.any(numpy_helper.to_array(zero_point) != 0):
            out.add(q.output[0])
    return out


def weight_integers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The 8-bit integers of each constant a DequantizeLinear reads (the quantized
    weights), by that DequantizeLinear's output, QuantizeLinear of constants computed.

    Without VNNI, x86 int8 kernels add pairs of u8 x s8 products in 16 bits, which
    saturate unless the weights stay within -64..63 (``overflow_fix``).
    """
    stored, _ = store_int8_weights(model)
    inits = {t.name: t for t in stored.graph.initializer}
    out = {}
    for node in stored.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            value = numpy_helper.to_array(inits[node.input[0]])
            if value.dtype in RANGES:
                out[node.output[0]] = value
    return out


def wide_int8_weights(model: onnx.ModelProto) -> int:
    """How many int8 weights use integers beyond +-64, where the pair sums of x86 int8
    kernels without VNNI may saturate (2 * 255 * 64 fits in 16 bits)."""
    return sum(v.dtype == np.int8 and int(np.abs(v.astype(np.int32)).max(initial=0)) > 64
               for v in weight_integers(model).values())  # fmt: skip


def computed_quantize(node: onnx.NodeProto, inits: dict) -> np.ndarray | None:
    """The output of a QuantizeLinear whose inputs are all initializers, else ``None``."""
    if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    names = [n for n in node.input if n]
    if len(names) < 3 or not all(n in inits for n in names):
        return None  # without a zero point the type is uint8 by default: rare, left as is
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("block_size", 0):
        return None
    x, scale, zero = (numpy_helper.to_array(inits[n]) for n in names[:3])
    if zero.dtype not in RANGES or x.dtype != np.float32 or scale.dtype != np.float32:
        return None
    if scale.ndim == 1 and scale.size > 1:
        axis = attrs.get("axis", 1) % x.ndim
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    low, high = RANGES[zero.dtype]
    q = np.rint(x / scale) + zero.astype(np.float32)
    return np.clip(q, low, high).astype(zero.dtype)


def _laid_out(node: onnx.NodeProto, inits: dict, stored: set[str]) -> np.ndarray | None:
    """A layout op (Transpose, Reshape, ...) of integers computed here, with constant
    arguments, computed too, so the DequantizeLinear after it reads them directly."""
    if node.op_type not in LAYOUT_OPS or node.input[0] not in stored or not all(
            n in inits for n in node.input if n) or attrs_of(node).get("allowzero"):  # fmt: skip
        return None
    x = numpy_helper.to_array(inits[node.input[0]])
    return laid_out(x, node.op_type, layout_arg(node, inits))


def drop_unused(graph: onnx.GraphProto) -> None:
    """Remove initializers that no node, subgraph or graph output reads any more."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        used |= subgraph_inputs(node)
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)

