"""Frozen-graph rewrite that lets tf2onnx write weight quantizers as QDQ pairs.

tf2onnx converts ``FakeQuantWithMinMaxVars`` with ``narrow_range=False`` (activations)
into ``QuantizeLinear``/``DequantizeLinear`` with a uint8 zero point, but it has no
rule for ``FakeQuantWithMinMaxVarsPerChannel`` and refuses ``narrow_range=True``,
which symmetric weights use. The same grid is TensorFlow's
``QuantizeAndDequantizeV4`` (signed, narrow range, zero point 0, ``axis`` for per
channel), which tf2onnx writes as int8 (uint8 when unsigned) QDQ pairs along ``axis``.
So every per-channel or narrow-range fake quant whose grid has zero point 0 is
rewritten into it; asymmetric per-channel ranges have no such form and are refused. A
per-tensor fake quant of a weight is rewritten too: tf2onnx folds it into float values.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["check_onnx_quantizers", "weight_qdq"]

log = logging.getLogger("filterprune")

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


def _grid(node: Any, low: np.ndarray, high: np.ndarray) -> str | None:
    """``"signed"`` or ``"unsigned"`` when ``[low, high]`` is an integer grid with zero
    point 0 (what ``QuantizeAndDequantizeV4`` expresses), else ``None``."""
    narrow = node.attr["narrow_range"].b
    if np.all(low == 0) and not narrow:
        return "unsigned"
    bits = node.attr["num_bits"].i
    qmax = (1 << (bits - 1)) - 1
    qmin = -qmax if narrow else -qmax - 1
    return "signed" if np.allclose(low * qmax, high * qmin, rtol=1e-5, atol=0) else None


def _needs_rewrite(node: Any) -> bool:
    """Fake quants tf2onnx cannot convert as they are: per channel, or narrow range."""
    return node.op in _FAKE_QUANT and (node.op.endswith("PerChannel")
                                       or node.attr["narrow_range"].b)  # fmt: skip


def _rewritten(node: Any, graph_def: Any, nodes: dict[str, Any]) -> bool:
    """Those, and a fake quant of a constant (a weight) on a grid with zero point 0, which
    tf2onnx would fold into float values (an asymmetric one is left to that)."""
    return _needs_rewrite(node) or node.op in _FAKE_QUANT and _of_constant(node, nodes) and (
        _grid(node, _const_value(graph_def, node.input[1]),
              _const_value(graph_def, node.input[2])) is not None)  # fmt: skip


def _of_constant(node: Any, nodes: dict[str, Any]) -> bool:
    """Whether ``node``'s input is a constant laid out (Identity, Transpose, Reshape)."""
    source = nodes.get(node.input[0].split(":")[0])
    while source is not None and source.op in ("Identity", "Transpose", "Reshape"):
        source = nodes.get(source.input[0].split(":")[0])
    return source is not None and source.op == "Const"


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
        if _needs_rewrite(node) and _grid(node, _const_value(graph_def, node.input[1]),
                                      _const_value(graph_def, node.input[2])) is None:
            raise ValueError(
                "ONNX export writes per-channel quantizers with zero point 0, so they must "
                "use mode 'symmetric' (`weights.mode` / `activations.mode` with "
                "per_channel). Received: an asymmetric range at "
                f"{node.name!r}. Nothing was written; export .keras or a SavedModel instead."
            )


def weight_qdq(graph_def: Any, graph: Any) -> Any:
    """A copy of ``graph_def`` with per-channel and narrow-range fake quants as
    ``QuantizeAndDequantizeV4`` (``graph``: the frozen function's graph, for ranks)."""
    check_onnx_quantizers(graph_def)
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    nodes = {n.name: n for n in out.node}
    folded = [n.name for n in out.node if n.op in _FAKE_QUANT and _of_constant(n, nodes)
              and not _rewritten(n, out, nodes)]  # fmt: skip
    if folded:
        log.warning("ONNX export: %d weight quantizer(s) with an asymmetric range (e.g. %r) are "
                    "written as their fake-quantized float values, which runtimes run in "
                    "float; `weights.mode: symmetric` gives int8 weights.", len(folded),
                    folded[0])  # fmt: skip
    for node in list(out.node):
        if not _rewritten(node, out, nodes):
            continue
        low = _const_value(out, node.input[1]).astype("float32")
        high = _const_value(out, node.input[2]).astype("float32")
        signed = _grid(node, low, high) == "signed"
        rank = graph.get_operation_by_name(node.name).inputs[0].shape.rank
        attrs = {"num_bits": node.attr["num_bits"].i, "narrow": node.attr["narrow_range"].b,
                 "axis": rank - 1 if node.op.endswith("PerChannel") else -1}  # fmt: skip
        node.op = "QuantizeAndDequantizeV4"
        for key in list(node.attr):
            del node.attr[key]
        node.attr["T"].type = tf.float32.as_datatype_enum
        node.attr["signed_input"].b = signed
        node.attr["num_bits"].i = attrs["num_bits"]
        node.attr["range_given"].b = True
        node.attr["narrow_range"].b = attrs["narrow"]
        node.attr["axis"].i = attrs["axis"]
        node.attr["round_mode"].s = b"HALF_TO_EVEN"
        node.input[1] = _const(out, f"{node.name}/qdq_min", low)
        node.input[2] = _const(out, f"{node.name}/qdq_max", high)
    return out
