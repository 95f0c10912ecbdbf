"""Frozen-graph fixes that let tf2onnx convert what Keras 3 builds.

- Keras runs grouped convolutions in a function compiled with XLA
  (``_XlaMustCompile``); grappler will not inline such a function, and tf2onnx
  then writes the call as an op that ONNX does not have. Without the flag the
  function is inlined and its convolution converts like any other.
- Keras's exact GELU uses ``Erfc``, which tf2onnx 1.17 cannot convert;
  ``erfc(x) = 1 - erf(x)`` can.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = ["prepare_for_onnx"]

_XLA_ATTRS = ("_XlaMustCompile", "_XlaCompile", "_XlaScope", "_noinline")


def prepare_for_onnx(graph_def: Any) -> Any:
    """A copy of ``graph_def`` with both fixes applied."""
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    for attrs in [*(n.attr for n in out.node), *(f.attr for f in out.library.function)]:
        for key in _XLA_ATTRS:
            if key in attrs:
                del attrs[key]
    for node in list(out.node):
        if node.op == "Erfc":
            _erfc_as_erf(out, node)
    return out


def _erfc_as_erf(graph_def: Any, node: Any) -> None:
    dtype = node.attr["T"]
    erf = graph_def.node.add(name=f"{node.name}/erf", op="Erf", input=[node.input[0]])
    erf.attr["T"].CopyFrom(dtype)
    one = graph_def.node.add(name=f"{node.name}/one", op="Const")
    one.attr["dtype"].type = dtype.type
    one.attr["value"].tensor.CopyFrom(
        tf.make_tensor_proto(1.0, dtype=tf.dtypes.as_dtype(dtype.type)))  # fmt: skip
    node.op = "Sub"
    node.input[:] = [one.name, erf.name]
