"""The compression controller for Keras filter pruning."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from ..core.analysis import analyze
from ..core.config import FilterPruningParams
from ..core.controller import CompressionStage, PruningControllerBase, analysis_options
from ..core.finite import Probe
from ..core.pruner import Plan
from ..core.signals import importance_source
from ._init_args import sample_batches
from .capture import Capture
from .export import export
from .masks import apply_masks, maskable_layers, recreate_masks
from .reconstruct import Recording, reconstruct, record
from .shrink import strip_model
from .signals import TaylorAccumulator, keras_signal, ranked_layers

__all__ = ["FilterPruningController", "CompressionStage", "export_model",
           "reset_traced_functions"]

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
        taylor: With ``filter_importance: taylor``, the gradient taps' per-filter totals
            (:class:`~filterprune.tensorflow.signals.TaylorAccumulator`); else ``None``.
        scheduler: Call ``epoch_step()`` each epoch, or use
            :func:`~filterprune.tensorflow.create_compression_callbacks` with ``model.fit``.
    """

    def __init__(self, model: Any, params: FilterPruningParams, captured: Capture,
                 frontend: Any) -> None:  # fmt: skip
        self.model = model
        self.capture = self.captured = captured
        self.frontend = frontend
        self._strategy: tf.distribute.Strategy | None = None
        options = analysis_options(params, captured.graph.scope_types)
        super().__init__(params, analyze(captured.graph, options))
        self.maskable = maskable_layers(self.analysis)
        self.taylor = None
        if importance_source(params.filter_importance) == "gradient":  # before any trace
            self.taylor = TaylorAccumulator(captured, ranked_layers(self), model)

    def set_grad_scaler(self, optimizer: Any) -> None:
        """With ``filter_importance: taylor``, in a ``GradientTape`` loop: the optimizer
        whose ``scale_loss`` the loop's loss went through (or an optimizer that scales
        nothing), whose scale is divided out of each step. ``fit`` needs none: the model's
        optimizer's is (the ``LossScaleOptimizer`` it uses under ``mixed_float16``); give
        ``None`` before a ``fit`` that follows such a loop."""
        if self.taylor is not None:
            self.taylor.loss_scaler = optimizer

    # -- hooks -----------------------------------------------------------------------------
    def _weights(self) -> dict[str, np.ndarray]:
        return self.frontend.read_weights(self.captured, self.analysis.state.producers)

    def _signal(self, source: str) -> dict[str, np.ndarray]:
        return keras_signal(self, source)  # taylor: gradient taps; bn_scale: BN gammas

    def _taylor_state(self) -> dict[str, Any] | None:
        return None if self.taylor is None else self.taylor.state()

    def _load_taylor(self, saved: dict[str, tuple[list[float], int]] | None) -> None:
        if self.taylor is not None and saved is not None:
            self.taylor.load(saved)

    def _ranking_trials(self) -> contextlib.AbstractContextManager[Callable[[Plan], float]]:
        from .legr import ranking_trials  # legr imports this module

        return ranking_trials(self)  # LeGR: prune, fine-tune, validate, undo

    supports_reconstruction = True

    def _record(self) -> Recording:
        data = self.init_data
        batches = sample_batches(self.model, data.dataset, self.params.num_reconstruction_samples,
                                 data.batch_size, "Recording")  # fmt: skip
        return record(self.model, self.capture.refs, self.analysis.graph.layers, batches)

    def _refit(self, recording: Recording) -> None:
        reconstruct(self.model, recording, self.capture.refs, self.keeps())

    @contextlib.contextmanager
    def _cut_probe(self) -> Iterator[Probe | None]:
        # the probe's backward passes must not count as Taylor importance
        kept = self.taylor.kept() if self.taylor is not None else contextlib.nullcontext()
        with kept, self.frontend.cut_probe(self.model, self.captured, self.analysis,
                                           self.params) as finite:  # fmt: skip
            yield finite

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
        same masks (they are computed once, from the replicated weights). Taylor totals
        are made again alike and gather the first replica's gradients.
        """
        self._strategy = tf.distribute.get_strategy()
        with self._strategy.scope():
            recreate_masks(self.capture.refs)
            if self.taylor is not None:
                self.taylor.recreate()
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
        return self.frontend.strip(self, shrink=shrink)

    def strip_model(self, model: Any, shrink: bool = True, **_: Any) -> Any:
        self.say_if_unstepped()
        return strip_model(model, self.capture, self.analysis, self.plan.kept,
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
        export_model(self, save_path, save_format, shrink)


def export_model(ctrl: Any, save_path: str, save_format: str | None = None,
                 shrink: bool = False) -> None:  # fmt: skip
    """Export ``ctrl``'s stripped model (see :meth:`FilterPruningController.export_model`)."""
    fmt = export(ctrl.strip(shrink=shrink), save_path, save_format)
    log.info("exported %s to %s", fmt, save_path)

