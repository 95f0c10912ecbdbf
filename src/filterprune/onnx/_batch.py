"""Shape vectors computed from a dynamic batch size, read as constants.

Exporters with a dynamic batch often build a Reshape target at run time:
``Concat(Shape(x)[0:1], [512])`` (tf2onnx's Flatten) or ``Concat(Shape(x)[0], -1)``.
Evaluating that small subgraph at two batch sizes shows which entries depend on
the batch. When only one does, and it is the batch size itself, the target can be
written as a constant with that entry as ``-1`` (or ``0``, copy the input's
dimension, when another entry is ``-1`` already), which the converter can then
rewrite like any constant target.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any

import numpy as np
import onnx

__all__ = ["batch_free_target", "evaluate_at_batch"]

_MAX_NODES = 64  # shape arithmetic is small; anything larger is not what we look for


def evaluate_at_batch(name: str, producer: Mapping[str, onnx.NodeProto],
                      consts: Mapping[str, Any], static: Mapping[str, Any],
                      batch_led: Set[str], opset: int,
                      batch: int) -> np.ndarray | None:  # fmt: skip
    """The value of ``name`` when the batch size is ``batch``, or None.

    Args:
        name: A small integer tensor computed from shapes.
        producer: Tensor name -> the node that computes it.
        consts: Known constant values by tensor name.
        static: Inferred shapes by tensor name (``None`` for a dynamic dimension).
        batch_led: Tensors whose leading dimension is the batch itself; a ``Shape`` of
            any other tensor with dynamic dimensions cannot be evaluated.
        opset: The model's default-domain opset.
        batch: The batch size to evaluate at.
    """
    from onnx.reference import ReferenceEvaluator

    nodes: dict[int, onnx.NodeProto] = {}
    feeds: dict[str, np.ndarray] = {}
    stack, seen = [name], set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in consts:
            feeds[t] = np.asarray(consts[t])
            continue
        node = producer.get(t)
        if node is None or len(nodes) >= _MAX_NODES:
            return None  # a graph input, or too much to evaluate
        if node.op_type == "Shape":
            dims = static.get(node.input[0])
            if dims is None or any(d is None for d in dims[1:]):
                return None
            if dims and dims[0] is None and node.input[0] not in batch_led:
                return None  # e.g. batch * rows after a reshape
            a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
            full = [batch if d is None else int(d) for d in dims]
            feeds[t] = np.array(full[slice(a.get("start", 0), a.get("end"))], dtype=np.int64)
            continue
        nodes[id(node)] = node
        stack.extend(i for i in node.input if i)
    order = list({id(n): n for n in producer.values() if id(n) in nodes}.values())  # graph order
    undefined = onnx.TensorProto.UNDEFINED
    graph = onnx.helper.make_graph(
        order, "probe", [onnx.helper.make_tensor_value_info(k, undefined, None) for k in feeds],
        [onnx.helper.make_tensor_value_info(name, undefined, None)])  # fmt: skip
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        (value,) = ReferenceEvaluator(model).run(None, feeds)
    except Exception:  # noqa: BLE001 - anything the evaluator cannot do stays computed
        return None
    return np.asarray(value)


def batch_free_target(node: onnx.NodeProto, producer: Mapping[str, onnx.NodeProto],
                      consts: Mapping[str, Any], static: Mapping[str, Any],
                      batch_led: Set[str], opset: int) -> np.ndarray | None:  # fmt: skip
    """A constant equivalent of Reshape ``node``'s computed target, or None.

    ``node`` is a Reshape whose second input is not a constant; the other arguments
    are those of :func:`evaluate_at_batch`.
    """
    probes = [evaluate_at_batch(node.input[1], producer, consts, static, batch_led, opset, b)
              for b in (1, 2)]  # fmt: skip
    if any(p is None or p.ndim != 1 for p in probes) or probes[0].shape != probes[1].shape:
        return None
    one, two = (p.astype(np.int64) for p in probes)
    varying = np.flatnonzero(one != two)
    if varying.size > 1:
        return None
    if varying.size == 0:
        return one
    i = int(varying[0])
    if (one[i], two[i]) != (1, 2):
        return None  # e.g. batch * height: shapes downstream would read it as the batch
    if -1 not in one.tolist():
        one[i] = -1
        return one
    dims = static.get(node.input[0]) or ()
    if i < len(dims) and dims[i] is None:
        one[i] = 0  # Reshape copies the input's (batch) dimension for a 0 entry
        return one
    return None
