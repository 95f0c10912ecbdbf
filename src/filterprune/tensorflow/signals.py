"""Keras signals for the ``bn_scale`` importance (``taylor`` is PyTorch-only for now:
the Keras frontend refuses it with a clear message)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.signals import batchnorm_scales, unsupported

__all__ = ["keras_signal"]


def keras_signal(ctrl: Any, source: str) -> dict[str, np.ndarray]:
    """Per producer layer of ``ctrl``, the ``(filters, 1)`` signal ``source`` names."""
    if source != "bn_scale":
        raise unsupported(ctrl.params.filter_importance, "the TensorFlow frontend")
    refs = ctrl.captured.refs
    layers = [name for g in ctrl.analysis.prunable_groups for name in g.producers]

    def read(bn: str, param: str) -> np.ndarray:
        variable = next(v for v in refs[bn].layer.weights if v.name == param)
        return np.asarray(variable.numpy())

    return batchnorm_scales(ctrl.analysis.graph, layers, read)
