"""ONNX frontend: remove zero filters from exported models, write ONNX or OpenVINO IR.

Example::

    from filterprune.onnx import remove_zero_filters, save_model
    small, report = remove_zero_filters("masked.onnx")
    save_model(small, "pruned.onnx"); print(report)
"""

from __future__ import annotations

from ._io import load_model, save_model
from .capture import Captured, capture
from .convert import max_rel_diff, random_inputs, remove_zero_filters, run_onnxruntime
from .int8_weights import store_int8_weights, weight_integers
from .report import ConversionReport, LayerReport
from .zero_filters import Decision, find_removable

__all__ = [
    "remove_zero_filters",
    "load_model",
    "save_model",
    "capture",
    "find_removable",
    "max_rel_diff",
    "random_inputs",
    "run_onnxruntime",
    "store_int8_weights",
    "weight_integers",
    "Captured",
    "Decision",
    "ConversionReport",
    "LayerReport",
]
