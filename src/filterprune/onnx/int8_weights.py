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

_RANGES = {np.dtype("int8"): (-128, 127), np.dtype("uint8"): (0, 255)}


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
        value = None if node.output[0] in skip else _computed(node, inits)
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
        graph.node.extend(keep)
        _drop_unused(graph)
    return out, count


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
            if value.dtype in _RANGES:
                out[node.output[0]] = value
    return out


def wide_int8_weights(model: onnx.ModelProto) -> int:
    """How many int8 weights use integers beyond +-64, where the pair sums of x86 int8
    kernels without VNNI may saturate (2 * 255 * 64 fits in 16 bits)."""
    return sum(v.dtype == np.int8 and int(np.abs(v.astype(np.int32)).max(initial=0)) > 64
               for v in weight_integers(model).values())  # fmt: skip


def _computed(node: onnx.NodeProto, inits: dict) -> np.ndarray | None:
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
    if zero.dtype not in _RANGES or x.dtype != np.float32 or scale.dtype != np.float32:
        return None
    if scale.ndim == 1 and scale.size > 1:
        axis = attrs.get("axis", 1) % x.ndim
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    low, high = _RANGES[zero.dtype]
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


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove initializers that no node, subgraph or graph output reads any more."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        used |= subgraph_inputs(node)
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)

