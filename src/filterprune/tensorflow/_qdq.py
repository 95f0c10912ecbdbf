"""Frozen-graph rewrite that lets tf2onnx write weight quantizers as QDQ pairs.

tf2onnx converts ``FakeQuantWithMinMaxVars`` with ``narrow_range=False`` (activations)
into ``QuantizeLinear``/``DequantizeLinear`` with a uint8 zero point, but it has no
rule for ``FakeQuantWithMinMaxVarsPerChannel`` and refuses ``narrow_range=True``,
which symmetric weights use. The same grid is TensorFlow's
``QuantizeAndDequantizeV4`` (signed, narrow range, zero point 0, ``axis`` for per
channel), which tf2onnx writes as int8 QDQ pairs, per channel along ``axis``. So every
symmetric narrow-range fake quant is rewritten into it; its ranges become constants.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["check_onnx_quantizers", "weight_qdq"]

_FAKE_QUANT = ("FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel")


def _const_value(graph_def: Any, name: str) -> np.ndarray:
    """The value of the constant ``name`` (through ``Identity`` nodes)."""
    nodes = {n.name: n for n in graph_def.node}
    node = nodes[name.split(":")[0].lstrip("^")]
    while node.op == "Identity":
        node = nodes[node.input[0].split(":")[0]]
    if node.op != "Const":
        raise ValueError(
            f"The range of fake quant {name!r} must be a constant in the frozen graph. "
            f"Received: a {node.op} node."
        )
    return tf.make_ndarray(node.attr["value"].tensor)


def _const(graph_def: Any, name: str, value: np.ndarray) -> str:
    node = graph_def.node.add(name=name, op="Const")
    node.attr["dtype"].type = tf.float32.as_datatype_enum
    tensor = node.attr["value"].tensor
    tensor.dtype = tf.float32.as_datatype_enum
    tensor.tensor_shape.CopyFrom(tf.TensorShape(value.shape).as_proto())
    tensor.tensor_content = np.ascontiguousarray(value, "float32").tobytes()  # tf2onnx reads it
    return name


def check_onnx_quantizers(graph_def: Any) -> None:
    """Refuse fake quants that ONNX QDQ pairs cannot express.

    Raises:
        ValueError: For a quantizer of other than 8 bits, or an asymmetric range on a
            narrow grid or per channel.
    """
    for node in graph_def.node:
        if node.op not in _FAKE_QUANT:
            continue
        bits = node.attr["num_bits"].i
        if bits != 8:
            raise ValueError(
                f"ONNX export needs 8-bit quantizers (QuantizeLinear is int8/uint8). "
                f"Received: num_bits={bits} at {node.name!r}."
            )
        narrow = node.attr["narrow_range"].b
        if narrow or node.op.endswith("PerChannel"):
            low = _const_value(graph_def, node.input[1])
            high = _const_value(graph_def, node.input[2])
            if not (narrow and np.allclose(low, -high, rtol=1e-6, atol=0)):
                raise ValueError(
                    "ONNX export writes per-channel quantizers as symmetric int8 (zero point "
                    "0), so weights must use mode 'symmetric'. Received: an asymmetric "
                    f"range at {node.name!r}."
                )


def weight_qdq(graph_def: Any, graph: Any) -> Any:
    """A copy of ``graph_def`` with symmetric narrow-range fake quants as
    ``QuantizeAndDequantizeV4`` (``graph``: the frozen function's graph, for ranks)."""
    check_onnx_quantizers(graph_def)
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    for node in list(out.node):
        if node.op not in _FAKE_QUANT or not node.attr["narrow_range"].b:
            continue
        per_channel = node.op.endswith("PerChannel")
        high = _const_value(out, node.input[2]).astype("float32")
        rank = graph.get_operation_by_name(node.name).inputs[0].shape.rank
        bits = node.attr["num_bits"].i
        node.op = "QuantizeAndDequantizeV4"
        for key in list(node.attr):
            del node.attr[key]
        node.attr["T"].type = tf.float32.as_datatype_enum
        node.attr["signed_input"].b = True
        node.attr["num_bits"].i = bits
        node.attr["range_given"].b = True
        node.attr["narrow_range"].b = True
        node.attr["axis"].i = rank - 1 if per_channel else -1
        node.attr["round_mode"].s = b"HALF_TO_EVEN"
        node.input[1] = _const(out, f"{node.name}/qdq_min", -high)
        node.input[2] = _const(out, f"{node.name}/qdq_max", high)
    return out
