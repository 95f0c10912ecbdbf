"""Shape vectors computed from a dynamic batch size, read as constants.

Exporters with a dynamic batch often build a Reshape target at run time:
``Concat(Shape(x)[0:1], [512])`` (tf2onnx's Flatten) or ``Concat(Shape(x)[0], -1)``.
Evaluating that small subgraph at two batch sizes shows which entries depend on
the batch. When only one does, and it is the batch size itself, the target can be
written as a constant with that entry as ``-1`` (or ``0``, copy the input's
dimension, when another entry is ``-1`` already), which the converter can then
rewrite like any constant target. :class:`BatchShapes` holds what both need from
the whole model (which tensors lead with the batch; shapes at batch 1), computed
on first use since each costs a shape inference.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from functools import cached_property
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ._shapes import Shapes, infer_shapes

__all__ = ["BatchShapes", "batch_free_target", "evaluate_at_batch"]

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
    if i < len(dims) and dims[i] is None and not _allowzero(node):
        one[i] = 0  # Reshape copies the input's (batch) dimension for a 0 entry
        return one
    return None


def _allowzero(node: onnx.NodeProto) -> bool:
    """Whether a 0 in Reshape ``node``'s target means a 0-sized axis, not a copy."""
    return any(a.name == "allowzero" and a.i for a in node.attribute)


class BatchShapes:
    """A model's shapes read at batch sizes 1 and 2, for the two probes above.

    Args:
        model: The model as loaded (dynamic batch kept).
        producer: Tensor name -> the node that computes it.
        opset: The model's default-domain opset.
    """

    def __init__(self, model: onnx.ModelProto, producer: Mapping[str, onnx.NodeProto],
                 opset: int) -> None:  # fmt: skip
        self.model, self.producer, self.opset = model, producer, opset

    @cached_property
    def led(self) -> set[str]:
        """Tensors whose leading dimension is the batch size itself (1 at batch 1, 2 at 2)."""
        one, two = infer_shapes(self.model, batch=1), infer_shapes(self.model, batch=2)
        return {n for n, d in one.items()
                if d and d[0] == 1 and (two.get(n) or (None,))[0] == 2}  # fmt: skip

    def free_target(self, node: onnx.NodeProto, consts: Mapping[str, Any],
                    static: Shapes) -> np.ndarray | None:  # fmt: skip
        """:func:`batch_free_target` of Reshape ``node``."""
        return batch_free_target(node, self.producer, consts, static, self.led, self.opset)

    def at_batch_1(self, shape_model: onnx.ModelProto, consts: Mapping[str, Any],
                   static: Shapes) -> Shapes:  # fmt: skip
        """Shapes of ``shape_model`` at batch 1, Reshape targets computed from it evaluated.

        Args:
            shape_model: The model with its folded constants as initializers.
            consts: The constants known when it was made.
            static: Its inferred shapes (``None`` for a dynamic dimension).
        """
        m = onnx.ModelProto()
        m.CopyFrom(shape_model)
        targets = {}
        for n in m.graph.node:
            if n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] not in consts:
                value = evaluate_at_batch(n.input[1], self.producer, consts, static, self.led,
                                          self.opset, 1)  # fmt: skip
                if value is not None:
                    targets[n.input[1]] = value
        keep = [n for n in m.graph.node if not any(o in targets for o in n.output)]
        del m.graph.node[:]
        m.graph.node.extend(keep)
        m.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in targets.items())
        return infer_shapes(m, batch=1)
