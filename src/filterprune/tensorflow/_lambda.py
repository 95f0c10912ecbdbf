"""A Keras ``Lambda`` read through: its function called on symbolic inputs gives the
graph of its ``keras.ops`` calls, which the capture reads as a nested model's layers. So
is a layer class of the user's own without weights or sublayers (a DropPath, a custom
activation): its ``call`` at inference (``training`` as the model's graph gives it).

The strip rebuilds the Lambda with the same function (the layer from its config), which
then runs at the cut widths.
Numbers written in it stay as written, so a slice in it is cut only where the function
computes its bounds from the width: called again at twice the sizes, it slices at twice
the bounds. A function that takes any other number from the sizes (``t / t.shape[-1]``)
would compute otherwise at a cut width: it stays one opaque layer.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from ._ops import op_steps
from ._slices import bounds, equal_parts

__all__ = ["lambda_graph"]

Shape = tuple[int, ...]


def lambda_graph(op: Any, node: Any, shapes: dict[int, Shape]) -> tuple[Any, dict] | str | None:
    """The Functional model of the Lambda ``op``'s function at the sizes of the tensors it
    is called on, and per slice in it (by ``id``) the axes whose bounds follow the width;
    None for anything else; for a Lambda (or a layer of the user's) that cannot be read
    through, why: a function that is not only ``keras.ops`` calls (TensorFlow functions
    fail on symbolic tensors), makes layers with weights, or takes numbers from sizes."""
    function = _function(op, node)
    if function is None:
        return None
    if isinstance(getattr(op, "_output_shape", None), (tuple, list)) and (
            len(node.outputs) > 1 or len(op._inbound_nodes) > 1):  # fmt: skip
        return "is given one output_shape for several outputs or calls"
    given = node.arguments.args[0]
    inner = _traced(function, given, lambda t: shapes[id(t)])
    if isinstance(inner, Exception):
        return (f"fails on symbolic Keras tensors ({_said(inner)}): written with keras.ops "
                "only, it can be read and cut")
    if any(isinstance(o, keras.Layer) and o.weights for o in inner.operations):
        return "makes layers with weights in its call"
    wider = _traced(function, given,
                    lambda t: (shapes[id(t)][0], *(2 * d for d in shapes[id(t)][1:])))
    # every narrower size it runs at (depth_to_space of 12 channels fails at 6, runs at 8
    # and 4), so that a number taken from a size (``min(c, 8)``) shows at one of them
    narrower = [_traced(function, given, lambda t, num=num, den=den: (
        shapes[id(t)][0], *(max(1, d * num // den) for d in shapes[id(t)][1:])))
        for num, den in _NARROWER]  # fmt: skip
    ran = [t for t in narrower if not isinstance(t, Exception)]
    failed = wider if isinstance(wider, Exception) else None if ran else narrower[0]
    if failed is not None:
        return (f"fails at other input sizes ({_said(failed)}), so whether its numbers "
                "follow a cut cannot be checked")
    again = _traced(function, given, lambda t: shapes[id(t)])  # constants drawn at random
    by_value = not isinstance(again, Exception) and _numbers(inner) == _numbers(again)
    numbers = _numbers(inner, by_value)
    if any(_numbers(t, by_value) != numbers for t in (wider, *ran)):
        return ("takes numbers from its input's sizes (a reshape to a count it computes, a "
                "branch, a scale), which a cut would change")
    if not _trains_apart(op, node, given, shapes):
        return "mixes entries in training (not as it runs at inference)"
    return inner, _following(inner, wider)


_NARROWER = ((1, 2), (2, 3), (1, 3), (3, 4), (1, 4))  # of every size, to read it at


def _said(err: Exception) -> str:
    """The first sentence of what ``err`` says."""
    return f"{type(err).__name__}: {str(err).strip().split('. ')[0][:120]}"


def _trains_apart(op: Any, node: Any, given: Any, shapes: dict[int, Shape]) -> bool:
    """Whether a layer of the user's, read at inference, acts on each entry alone in
    training too (``training=True``, where the graph leaves it to the caller): each op of
    that call keeps entries apart, and each number it is made with is one value per sample
    (DropPath's mask). A Lambda, or a layer with one path, has nothing more to check."""
    if isinstance(op, keras.layers.Lambda) or "training" in node.arguments.kwargs \
            or "training" not in inspect.signature(op.call).parameters:  # fmt: skip
        return True
    kwargs = {**node.arguments.kwargs, "training": True}
    graph = _traced(lambda t: op.call(t, **kwargs), given, lambda t: shapes[id(t)])
    if isinstance(graph, Exception):
        return False
    for n in _nodes(graph):
        if n.is_input:
            continue
        if isinstance(n.operation, keras.Layer) and n.operation.weights:
            return False
        args = list(n.arguments.args)
        ins = [tuple(t.shape) for t in n.input_tensors]
        steps = op_steps(n.operation, args, ins, tuple(n.outputs[0].shape))
        if any(st.kind not in ("identity", "elementwise") or any(
                math.prod(c[1:]) > 1 for c in st.constants) for st in steps):  # fmt: skip
            return False
    return True


def _function(op: Any, node: Any) -> Any:
    """What ``op`` computes from its one tensor argument, for a Lambda or a layer of the
    user's own without weights or sublayers (called as the graph calls it, ``training``
    False unless given there); None for anything else."""
    if len(node.arguments.args) != 1:
        return None
    if isinstance(op, keras.layers.Lambda):
        return lambda t: op.function(t, **op.arguments)
    own = isinstance(op, keras.Layer) and not isinstance(op, keras.Model) \
        and not type(op).__module__.startswith(("keras", "filterprune"))  # fmt: skip
    if not own or op.weights or list(op._flatten_layers(include_self=False)):
        return None
    kwargs = dict(node.arguments.kwargs)
    if "training" in inspect.signature(op.call).parameters:
        kwargs.setdefault("training", False)
    return lambda t: op.call(t, **kwargs)


def _nodes(functional: Any) -> list[Any]:
    return [node for depth in sorted(functional._nodes_by_depth, reverse=True)
            for node in functional._nodes_by_depth[depth]]  # fmt: skip


def _plain(value: Any, by_value: bool = True) -> Any:
    """``value`` as something ``==`` compares (a symbolic tensor by its shape, a constant
    one by its values)."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v, by_value) for v in value)
    if isinstance(value, np.ndarray) or np.isscalar(value):
        return ("array", np.shape(value), np.asarray(value).tolist())
    if by_value and not isinstance(value, keras.KerasTensor):  # a constant made from sizes
        try:  # (``t / ops.cast(ops.shape(t)[-1], "float32")``): by its values
            found = np.asarray(keras.ops.convert_to_numpy(value))
        except Exception:  # noqa: BLE001 - not a tensor of the backend's
            found = None
        if found is not None and found.dtype.kind in "biuf":
            return "tensor", found.shape, found.dtype.str, found.tobytes()
    shape = getattr(value, "shape", None)
    return type(value).__name__, None if shape is None else tuple(shape)


def _numbers(functional: Any, by_value: bool = True) -> list[Any]:
    """Every number each op of ``functional`` is called or made with (not its slices'
    bounds: :func:`_following` compares those); constant tensors by their values, or
    (``by_value`` False: they are drawn at random) by their shapes."""
    out = []
    for node in _nodes(functional):
        op = node.operation
        if node.is_input or type(op).__name__ == "GetItem":
            continue
        leaves = [v for v in keras.tree.flatten((node.arguments.args, node.arguments.kwargs))
                  if not isinstance(v, keras.KerasTensor)]  # fmt: skip
        made = {k: v for k, v in vars(op).items() if not k.startswith("_") and k != "name"}
        out.append((type(op).__name__, _plain(leaves, by_value),
                    _plain(sorted(made.items()), by_value)))  # fmt: skip
    return out


def _traced(function: Any, given: Any, shape_of) -> Any:
    """``function`` called on inputs of the sizes ``shape_of`` gives, as a Functional
    model; what it raised where it fails."""
    from keras.src.models.functional import Functional

    try:
        fresh = keras.tree.map_structure(
            lambda t: keras.Input(batch_shape=shape_of(t), dtype=t.dtype), given)  # fmt: skip
        with _remat_read_through():
            out = function(fresh)
        return Functional(keras.tree.flatten(fresh), keras.tree.flatten(out))
    except Exception as err:  # noqa: BLE001 - whatever the user's function raises
        return err


@contextlib.contextmanager
def _remat_read_through() -> Iterator[None]:
    """``keras.remat(f)`` read as ``f``: TensorFlow's recompute wrapper behind it refuses
    symbolic tensors, and recomputing in the backward pass changes no value."""
    from keras.src import backend

    remat = backend.core.remat
    backend.core.remat = lambda f: f
    try:
        yield
    finally:
        backend.core.remat = remat


def _getitems(functional: Any) -> list[tuple[Any, Any, Shape]]:
    """``(operation, key, input shape)`` of each slice, in graph order."""
    out = []
    for node in _nodes(functional):
        args = node.arguments.args
        if type(node.operation).__name__ == "GetItem" and len(args) > 1:
            key = tuple(args[1]) if isinstance(args[1], list) else args[1]
            out.append((node.operation, key, tuple(args[0].shape)))
    return out


def _following(inner: Any, wider: Any) -> dict[int, set[int]]:
    """Per slice of ``inner``, the axes on which ``wider`` (the same function at twice the
    sizes) slices at twice the bounds."""
    first_slices, second_slices = _getitems(inner), _getitems(wider)
    if len(first_slices) != len(second_slices):
        return {}
    out: dict[int, set[int]] = {}
    for (op, key, shape), (_, key2, shape2) in zip(first_slices, second_slices, strict=True):
        for axis, _k in equal_parts(key, shape):
            first, second = bounds(key, axis, shape), bounds(key2, axis, shape2)
            if first is not None and second == (2 * first[0], 2 * first[1]):
                out.setdefault(id(op), set()).add(axis)
    return out
