"""A Keras ``Lambda`` read through: its function called on symbolic inputs gives the
graph of its ``keras.ops`` calls, which the capture reads as a nested model's layers.

The strip rebuilds the Lambda with the same function, which then runs at the cut widths.
Numbers written in it stay as written, so a slice in it is cut only where the function
computes its bounds from the width: called again at twice the sizes, it slices at twice
the bounds.
"""

from __future__ import annotations

from typing import Any

import keras

from ._slices import bounds, equal_parts

__all__ = ["lambda_graph"]

Shape = tuple[int, ...]


def lambda_graph(op: Any, node: Any, shapes: dict[int, Shape]) -> tuple[Any, dict] | None:
    """The Functional model of the Lambda ``op``'s function at the sizes of the tensors it
    is called on, and per slice in it (by ``id``) the axes whose bounds follow the width;
    None for anything else, and for a function that is not only ``keras.ops`` calls
    (TensorFlow functions fail on symbolic tensors) or makes layers with weights."""
    if not isinstance(op, keras.layers.Lambda) or len(node.arguments.args) != 1:
        return None
    given = node.arguments.args[0]
    inner = _traced(op, given, lambda t: shapes[id(t)])
    if inner is None or any(isinstance(o, keras.Layer) and o.weights for o in inner.operations):
        return None
    wider = _traced(op, given, lambda t: (shapes[id(t)][0], *(2 * d for d in shapes[id(t)][1:])))
    return inner, _following(inner, wider)


def _traced(op: Any, given: Any, shape_of) -> Any:
    from keras.src.models.functional import Functional

    try:
        fresh = keras.tree.map_structure(
            lambda t: keras.Input(batch_shape=shape_of(t), dtype=t.dtype), given)  # fmt: skip
        out = op.function(fresh, **op.arguments)
        return Functional(keras.tree.flatten(fresh), keras.tree.flatten(out))
    except Exception:  # noqa: BLE001 - whatever the user's function raises
        return None


def _slices(functional: Any) -> list[tuple[Any, Any, Shape]]:
    """``(operation, key, input shape)`` of each slice, in graph order."""
    out = []
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for node in functional._nodes_by_depth[depth]:
            args = node.arguments.args
            if type(node.operation).__name__ == "GetItem" and len(args) > 1:
                key = tuple(args[1]) if isinstance(args[1], list) else args[1]
                out.append((node.operation, key, tuple(args[0].shape)))
    return out


def _following(inner: Any, wider: Any) -> dict[int, set[int]]:
    """Per slice of ``inner``, the axes on which ``wider`` (the same function at twice the
    sizes) slices at twice the bounds."""
    if wider is None:
        return {}
    first_slices, second_slices = _slices(inner), _slices(wider)
    if len(first_slices) != len(second_slices):
        return {}
    out: dict[int, set[int]] = {}
    for (op, key, shape), (_, key2, shape2) in zip(first_slices, second_slices, strict=True):
        for axis, _k in equal_parts(key, shape):
            first, second = bounds(key, axis, shape), bounds(key2, axis, shape2)
            if first is not None and second == (2 * first[0], 2 * first[1]):
                out.setdefault(id(op), set()).add(axis)
    return out
