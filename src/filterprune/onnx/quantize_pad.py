"""Quantize a zero ``Pad``'s input with the scale its output is quantized with.

Keras quantizes a layer's input, so where ``ZeroPadding2D`` sits between two convs the
file reads ``Conv -> Relu -> Pad -> QuantizeLinear``: no QuantizeLinear follows the first
conv, and ONNX Runtime runs it in float. Zero is on every grid (the zero point is an
integer), so ``Q(Pad(DQ(Q(x))))`` is ``Q(Pad(x))`` exactly: a Q/DQ pair with the same
per-tensor scale and zero point before the Pad changes no number, and the conv meets its
QuantizeLinear (the Pad between the pairs runs on the integers).
"""

from __future__ import annotations

import numpy as np
import onnx

from .facts import subgraph_inputs

__all__ = ["quantize_before_pad"]


def quantize_before_pad(model: onnx.ModelProto) -> int:
    """Put a copy of each zero Pad's QuantizeLinear, with its DequantizeLinear, before the
    Pad, in place. Left as it is: a Pad of another mode or value, one whose output is
    read by anything but QuantizeLinears with one per-tensor scale and zero point, or
    whose input is dequantized already.

    Returns:
        The number of Pads given a pair.
    """
    graph = model.graph
    values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    made = {o: n for n in graph.node for o in n.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in [*node.input, *subgraph_inputs(node)]:
            users.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    nodes, moved = [], 0
    for node in graph.node:
        q = _pair_after(node, users, values, made, outputs)
        if q is not None:
            src, tag = node.input[0], f"{node.output[0]}_before_pad"
            copy = onnx.helper.make_node("QuantizeLinear", [src, *q.input[1:]], [f"{tag}_q"],
                                         name=f"{tag}_q")  # fmt: skip
            copy.attribute.extend(q.attribute)  # an output type or saturation, as it is
            nodes += [copy, onnx.helper.make_node("DequantizeLinear", [f"{tag}_q", *q.input[1:]],
                                                  [f"{tag}_dq"], name=f"{tag}_dq")]  # fmt: skip
            node.input[0] = f"{tag}_dq"
            moved += 1
        nodes.append(node)
    if moved:
        del graph.node[:]
        graph.node.extend(nodes)
    return moved


def _pair_after(pad, users, values, made, outputs) -> onnx.NodeProto | None:
    """The QuantizeLinear after zero Pad ``pad`` whose copy may go before it, or None."""
    if pad.op_type != "Pad" or pad.domain not in ("", "ai.onnx") or not pad.input[0]:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pad.attribute}
    value = pad.input[2] if len(pad.input) > 2 else ""
    if attrs.get("mode", b"constant") not in (b"constant", "constant") or attrs.get("value", 0):
        return None
    if value and (value not in values or np.any(values[value])):
        return None
    readers = users.get(pad.output[0], [])
    if not readers or pad.output[0] in outputs:
        return None
    if any(r.op_type != "QuantizeLinear" or r.input[0] != pad.output[0] for r in readers):
        return None
    if len({tuple(r.input[1:]) for r in readers}) > 1:  # one scale for all its readers
        return None
    q = readers[0]
    if any(name not in values or values[name].size != 1 for name in q.input[1:] if name):
        return None  # per-channel or computed scales: left alone
    before = made.get(pad.input[0])
    if before is not None and before.op_type == "DequantizeLinear":
        return None
    return q
