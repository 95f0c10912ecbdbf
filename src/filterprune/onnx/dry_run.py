"""ONNX models in the core workflow's dry run: what pruning would do to an exported model.

``filterprune analyze model.onnx`` uses this frontend with
:func:`filterprune.core.workflow.dry_run`: the same analysis, importance and ranking as
the PyTorch and Keras frontends, on the weights stored in the file. Nothing is written.

Example:
    >>> ctrl = dry_run(OnnxFrontend(), "model.onnx", config)  # doctest: +SKIP
    >>> print(ctrl.statistics())  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx

from ..core.config import Config
from ..core.workflow import Frontend
from ._io import load_model
from ._shapes import type_dims
from .capture import Captured, capture

__all__ = ["OnnxFrontend", "input_shape", "with_input_shape"]


class OnnxFrontend(Frontend):
    """Reads an ONNX file or ``ModelProto`` into the core graph (analysis only)."""

    name = "ONNX"

    def capture(self, model: Any, config: Config) -> Captured:
        return capture(load_model(model))

    def read_weights(self, captured: Captured, layers: Iterable[str]) -> dict[str, np.ndarray]:
        out = {}
        for layer in layers:
            info = captured.graph.layers[layer]
            _, roles = info.params[info.weight]
            weight = np.moveaxis(captured.arrays[layer][info.weight], roles.index("out"), 0)
            if info.transposed and info.groups > 1:  # (out/g, in, ...) -> (out, in/g, ...)
                g = info.groups
                weight = weight.reshape(weight.shape[0], g, -1, *weight.shape[2:])
                weight = weight.swapaxes(0, 1).reshape(-1, weight.shape[2], *weight.shape[3:])
            out[layer] = weight
        return out

    def read_params(self, captured: Captured,
                    layers: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
        return {layer: captured.arrays.get(layer, {}) for layer in layers}


def input_shape(model: Any) -> list[int]:
    """The first input's shape, with 1 for a symbolic (dynamic) dimension."""
    value = _first_input(load_model(model))
    return [d or 1 for d in _dims(value)] if value is not None else []


def dynamic_note(model: Any) -> str:
    """A note where the first input has dynamic dimensions after the batch (read at 1,
    which makes FLOPs and sizes those of a 1x1 input), else ''."""
    value = _first_input(load_model(model))
    dims = _dims(value) if value is not None else []
    if None not in dims[1:]:
        return ""
    names = [d.dim_param or f"d{i}" for i, d in enumerate(value.type.tensor_type.shape.dim)]
    fixed = ",".join(["1", *(str(d) if d else names[i].upper() for i, d in enumerate(dims)
                             if i)])  # fmt: skip
    return (f"note: input {value.name!r} is {_show(dims)}: its dynamic dimensions are read at 1, "
            f"FLOPs too; give them with --input-size {fixed} (your sizes)")


def with_input_shape(model: Any, shape: list[int]) -> onnx.ModelProto:
    """A copy of ``model`` whose first input has ``shape``: its dynamic dimensions set,
    so that sizes, FLOPs and shape-dependent ops are read at that size.

    Raises:
        ValueError: ``shape`` has another rank, or differs on a dimension the file fixes.
    """
    proto = load_model(model)
    value = _first_input(proto)
    if value is None:
        raise ValueError("it has no graph input to give a shape.")
    dims = _dims(value)
    if len(dims) != len(shape):
        raise ValueError(f"input {value.name!r} has {len(dims)} dimensions "
                         f"({_show(dims)}); the shape given has {len(shape)}.")  # fmt: skip
    clash = [i for i, (d, n) in enumerate(zip(dims, shape, strict=True)) if d and d != n]
    if clash:
        raise ValueError(f"input {value.name!r} is {_show(dims)}: dimension {clash[0]} is "
                         f"fixed at {dims[clash[0]]}, the shape given has "
                         f"{shape[clash[0]]}.")  # fmt: skip
    for d, n in zip(value.type.tensor_type.shape.dim, shape, strict=True):
        if not d.HasField("dim_value"):
            d.Clear()
            d.dim_value = int(n)
    del proto.graph.value_info[:]  # inferred at the symbolic size; inferred again at this one
    return proto


def _first_input(proto: onnx.ModelProto) -> Any:
    """The first graph input that is not an initializer, or None."""
    inits = {i.name for i in proto.graph.initializer}
    return next((v for v in proto.graph.input if v.name not in inits), None)


def _dims(value: Any) -> list[int | None]:
    """A graph input's dimensions, None where symbolic."""
    return list(type_dims(value.type) or ())


def _show(dims: list[int | None]) -> str:
    return "x".join("?" if d is None else str(d) for d in dims)
