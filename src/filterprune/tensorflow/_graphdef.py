"""Frozen-graph fixes that let tf2onnx convert what Keras 3 builds.

- Keras runs grouped convolutions in a function compiled with XLA
  (``_XlaMustCompile``); grappler will not inline such a function, and tf2onnx
  then writes the call as an op that ONNX does not have. Without the flag the
  function is inlined and its convolution converts like any other.
- Keras's exact GELU uses ``Erfc``, which tf2onnx 1.17 cannot convert;
  ``erfc(x) = 1 - erf(x)`` can. CELU uses ``Expm1``, which it writes as an op ONNX does
  not have; ``expm1(x) = exp(x) - 1``.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = ["prepare_for_onnx"]

_XLA_ATTRS = ("_XlaMustCompile", "_XlaCompile", "_XlaScope", "_noinline")


def prepare_for_onnx(graph_def: Any) -> Any:
    """A copy of ``graph_def`` with these fixes applied."""
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    for attrs in [*(n.attr for n in out.node), *(f.attr for f in out.library.function)]:
        for key in _XLA_ATTRS:
            if key in attrs:
                del attrs[key]
    for node in list(out.node):
        if node.op == "Erfc":  # 1 - erf(x)
            _with_one(out, node, "Erf", lambda one, made: [one, made])
        elif node.op == "Expm1":  # exp(x) - 1
            _with_one(out, node, "Exp", lambda one, made: [made, one])
    return out


def _with_one(graph_def: Any, node: Any, op: str, operands: Any) -> None:
    """Rewrite ``node`` as a subtraction of ``op`` of its input and the constant 1, the
    operands in the order ``operands(one, made)`` gives."""
    dtype = node.attr["T"]
    made = graph_def.node.add(name=f"{node.name}/{op.lower()}", op=op, input=[node.input[0]])
    made.attr["T"].CopyFrom(dtype)
    one = graph_def.node.add(name=f"{node.name}/one", op="Const")
    one.attr["dtype"].type = dtype.type
    one.attr["value"].tensor.CopyFrom(
        tf.make_tensor_proto(1.0, dtype=tf.dtypes.as_dtype(dtype.type)))  # fmt: skip
    node.op = "Sub"
    node.input[:] = operands(one.name, made.name)
