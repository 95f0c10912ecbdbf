"""The compression controller for Keras filter pruning."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
import tensorflow as tf

from ..core.analysis import Analysis
from ..core.config import FilterPruningParams
from ..core.controller import CompressionStage, PruningControllerBase
from ..core.pruner import Plan
from ..core.weights import filters_first
from .capture import Capture
from .export import export
from .masks import apply_masks, maskable_layers, recreate_masks
from .shrink import strip_model

__all__ = ["FilterPruningController", "CompressionStage", "reset_traced_functions"]

log = logging.getLogger("filterprune")


def reset_traced_functions(model: Any) -> None:
    """Drop ``fit``/``evaluate``/``predict`` functions traced before the masks existed."""
    for attr in ("train_function", "test_function", "predict_function"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)


class FilterPruningController(PruningControllerBase):
    """Drives masks on a Keras model: schedule, importance, statistics, export, strip.

    Created by :func:`filterprune.tensorflow.create_compressed_model`; not built directly.
    The schedule, plans, :meth:`statistics` and the compression state come from
    :class:`~filterprune.core.controller.PruningControllerBase`.

    The masked model keeps its layer classes' names and its variables, so
    ``tf.train.Checkpoint(model=model)`` and ``model.save`` work as before; they store
    the weights without the masks (pruned filters keep their values), which the
    compression state restores. Deploy :meth:`strip` or :meth:`export_model` output.

    Attributes:
        model: The masked model (the same object the user passed in).
        scheduler: Call ``epoch_step()`` each epoch, or use
            :func:`~filterprune.tensorflow.create_compression_callbacks` with ``model.fit``.
    """

    def __init__(self, model: Any, params: FilterPruningParams, analysis: Analysis,
                 cap: Capture) -> None:  # fmt: skip
        self.model = model
        self.capture = cap
        self._strategy: tf.distribute.Strategy | None = None
        self.maskable = maskable_layers(analysis)
        super().__init__(params, analysis)

    # -- hooks -----------------------------------------------------------------------------
    def _weights(self) -> dict[str, np.ndarray]:
        out = {}
        for layer in self.analysis.state.producers:
            info = self.analysis.graph.layers[layer]
            ref = self.capture.refs[layer]
            variable = next(v for v in ref.layer.weights if v.name == info.weight)
            out[layer] = filters_first(np.asarray(variable.numpy()), info.params[info.weight][1])
        return out

    def _install(self, plan: Plan) -> None:
        super()._install(plan)
        strategy = self._strategy
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        with scope:
            apply_masks(self.capture.refs, self.keeps(), self.analysis.graph.layers,
                        self.maskable, bn=self.params.prune_batch_norms)  # fmt: skip

    # -- training --------------------------------------------------------------------------
    def distributed(self) -> None:
        """Call inside ``strategy.scope()`` before training under a ``tf.distribute`` strategy.

        The mask variables are created again as mirrored variables of that strategy and
        are always written from the cross-replica context, so every replica reads the
        same masks (they are computed once, from the replicated weights).
        """
        self._strategy = tf.distribute.get_strategy()
        with self._strategy.scope():
            recreate_masks(self.capture.refs)
        reset_traced_functions(self.model)

    def loss(self) -> tf.Tensor:
        """Filter pruning adds no regulariser: a zero scalar."""
        return tf.constant(0.0)

    # -- output ----------------------------------------------------------------------------
    def strip(self, shrink: bool = True) -> Any:
        """A plain ``keras.Model`` of stock layers without masks (the training model is kept).

        Args:
            shrink: Remove pruned filters physically (fewer filters, sliced weights). With
                ``False`` the shapes stay and pruned filters are zero.

        Returns:
            A new model that computes what the masked model computes and saves to
            ``.keras`` without filterprune objects.
        """
        return strip_model(self.model, self.capture, self.analysis, self.plan.kept,
                           self.keeps(), shrink=shrink)  # fmt: skip

    def export_model(self, save_path: str, save_format: str | None = None,
                     shrink: bool = False) -> None:  # fmt: skip
        """Export the model with pruned filters zeroed (``shrink=True``: removed).

        Args:
            save_path: ``.pb`` (frozen GraphDef, loads with ``tf.compat.v1``), ``.keras``,
                ``.onnx`` (needs tf2onnx) or a folder (SavedModel).
            save_format: ``frozen_graph``, ``saved_model``, ``keras`` or ``onnx``; by default
                taken from the suffix of ``save_path``.
            shrink: Export the physically smaller model.

        Raises:
            ValueError: For an unknown format or a path that does not fit it.
            ImportError: For ``onnx`` without tf2onnx installed.
        """
        fmt = export(self.strip(shrink=shrink), save_path, save_format)
        log.info("exported %s to %s", fmt, save_path)

