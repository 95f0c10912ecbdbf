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

from ..core.config import Config
from ..core.workflow import Frontend
from ._io import load_model
from .capture import Captured, capture

__all__ = ["OnnxFrontend", "input_shape"]


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
            weight = captured.arrays[layer][info.weight]
            out[layer] = np.moveaxis(weight, roles.index("out"), 0)
        return out

    def read_params(self, captured: Captured,
                    layers: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
        return {layer: captured.arrays.get(layer, {}) for layer in layers}


def input_shape(model: Any) -> list[int]:
    """The first input's shape, with 1 for a symbolic (dynamic) dimension."""
    proto = load_model(model)
    inits = {i.name for i in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name not in inits:
            dims = value.type.tensor_type.shape.dim
            return [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    return []
