"""Keras signals for the ``taylor`` and ``bn_scale`` importances.

:class:`TaylorAccumulator` puts a *weight tap* (see :mod:`~filterprune.tensorflow.masks`)
on each producer's main weight: an identity whose gradient function adds
``(sum over a filter of gradient x weight)^2`` to a per-filter total (Molchanov et al.
2019), the Keras counterpart of the PyTorch gradient hook. A producer with a
BatchNorm reading it (see :func:`~filterprune.core.signals.taylor_batchnorms`) is
scored there instead: one tap on the BatchNorm's ``gamma`` and ``beta`` adds
``(g_gamma * gamma + g_beta * beta)^2`` per channel (where they do not train, as with
``scale=False``, a tap on its output ``y`` adds the same term, ``(sum g * y)^2``). The
taps sit on the masked weight and BatchNorms zero their pruned channels, so pruned
filters stop gaining, as in PyTorch. The totals are non-trainable ``tf.Variable`` s
created with the controller, before ``model.fit`` traces its step, so every traced step
adds to them; a ``tf.GradientTape`` loop works the same way. Before any gradient has
reached them the weights' L1 norm stands in. They travel in the compression state
(:meth:`~TaylorAccumulator.state`, :meth:`~TaylorAccumulator.load`), so a resumed run
ranks as the uninterrupted one.

``bn_scale`` reads the ``gamma`` of the ``BatchNormalization`` right after each pruned
layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from ..core.signals import batchnorm_scales, taylor_batchnorms, taylor_scores
from .masks import set_output_tap, set_weight_tap

__all__ = ["TaylorAccumulator", "keras_signal", "ranked_layers"]


Consumer = tuple[str, int, int]  # (layer, offset of its filters in the tapped channels, count)


def _tap_targets(captured: Any, name: str) -> list[tuple[Any, tuple[str, ...] | None, Any, int]]:
    """``(keras layer, variable names, axes summed per variable, offset)`` of each tap
    that scores producer ``name``, its filters at ``offset`` among the channels tapped: the
    BatchNorms that read it (:func:`~filterprune.core.signals.taylor_batchnorms`), on their
    scale and shift where they train, else on their output (variables None, the channel
    axis for the axes); else its weight."""
    found = taylor_batchnorms(captured.graph, name)
    if found is None:
        info = captured.graph.layers[name]
        shape, roles = info.params[info.weight]
        others = [a for a in range(len(shape)) if a != roles.index("out")]
        return [(captured.refs[name].layer, (info.weight,), [others], 0)]
    out = []
    for bn_name, names, offset in found:
        bn = captured.refs[bn_name].layer
        tapped = [v for v in bn.weights if v.name in names]
        if names and bn.trainable and len(tapped) == len(names) \
                and all(v.trainable for v in tapped):  # fmt: skip
            out.append((bn, tuple(names), [[] for _ in names], offset))
        else:  # no gradient gives the term there (``scale=False``, frozen): the output
            out.append((bn, None, bn.axis, offset))
    return out


class TaylorAccumulator:
    """Per-filter Taylor scores of each tapped layer, summed over backward passes.

    Args:
        captured: The model's capture (layer refs and the core graph's layer infos).
        layers: Core names of the producers scored (their weight or BatchNorm is tapped).
        model: The model whose optimizer scales the loss (a ``LossScaleOptimizer`` under
            ``mixed_float16``): each step's gradients are divided by that scale, which
            changes during training and would weigh each step by its square. A loop that
            scales with another optimizer (or none) sets :attr:`loss_scaler`.

    Attributes:
        totals: Layer -> ``tf.Variable`` of its per-filter totals.
        passes: Layer -> ``tf.Variable`` counting the taps' gradient calls that reached
            it (one per backward pass, per BatchNorm call reading it).
    """

    def __init__(self, captured: Any, layers: list[str], model: Any = None) -> None:
        self.model = model
        self.loss_scaler: Any = None  # what scales the loss; None: the model's optimizer
        self.totals: dict[str, tf.Variable] = {}
        self.passes: dict[str, tf.Variable] = {}
        taps: dict[tuple, tuple[Any, Any, Any, list[Consumer]]] = {}  # one per BatchNorm
        for name in layers:
            info = captured.graph.layers[name]
            shape, roles = info.params[info.weight]
            filters = shape[roles.index("out")]
            self._make_variables(name, np.zeros(filters, "float32"), 0)
            for layer, variables, axes, offset in _tap_targets(captured, name):
                taps.setdefault((id(layer), variables), (layer, variables, axes, []))[3].append(
                    (name, offset, filters))  # fmt: skip
        for layer, variables, axes, consumers in taps.values():
            if variables is None:
                set_output_tap(layer, self._output_tap(consumers, axes))
            else:
                set_weight_tap(layer, variables, self._tap(consumers, axes))

    def _make_variables(self, name: str, total: np.ndarray, passes: int) -> None:
        once = tf.VariableAggregation.ONLY_FIRST_REPLICA  # one replica's gradients, as masks
        safe = name.replace("/", "_")
        with tf.init_scope():
            self.totals[name] = tf.Variable(total, trainable=False, aggregation=once,
                                            name=f"{safe}_taylor")  # fmt: skip
            self.passes[name] = tf.Variable(passes, trainable=False, dtype=tf.int64,
                                            aggregation=once, name=f"{safe}_taylor_passes")

    def _tap(self, consumers: list[Consumer], axes: list[list[int]]) -> Any:
        """Identity of the tapped values; its gradient adds ``(sum of g*w)^2`` per channel
        to each consumer's slice of them, summing each value over its ``axes`` and the
        values together."""

        @tf.custom_gradient
        def identity(*weights: Any) -> Any:
            def gradient(*upstream: Any) -> Any:
                per_channel = tf.add_n([
                    tf.reduce_sum(tf.cast(g * w, tf.float32), axis=axis)
                    for g, w, axis in zip(upstream, weights, axes, strict=True)
                ])  # fmt: skip
                score = tf.square(per_channel / self._loss_scale())
                # a skipped mixed-precision step (an overflow) adds nothing
                finite = tf.reduce_all(tf.math.is_finite(score))
                score = tf.where(finite, score, 0.0)
                updates = []
                for name, offset, filters in consumers:
                    updates += [self.totals[name].assign_add(score[offset:offset + filters]),
                                self.passes[name].assign_add(tf.cast(finite, tf.int64))]
                with tf.control_dependencies(updates):
                    return [tf.identity(g) for g in upstream]

            return [tf.identity(w) for w in weights], gradient

        def tap(*values: Any) -> list[Any]:
            # tensors in: a variable read inside the custom gradient would need its own
            return identity(*(tf.convert_to_tensor(v) for v in values))

        return tap

    def _loss_scale(self) -> Any:
        """The scale the loss carries now: that of :attr:`loss_scaler` (a loop's own
        optimizer), else of the model's optimizer, as ``fit`` applies it (1 without one)."""
        optimizer = self.loss_scaler or getattr(self.model, "optimizer", None)
        if optimizer is None or not hasattr(optimizer, "scale_loss"):
            return 1.0
        return tf.cast(optimizer.scale_loss(1.0), tf.float32)

    def _output_tap(self, consumers: list[Consumer], axis: int) -> Any:
        """Identity of a BatchNorm's output ``y``; its gradient adds ``(sum g*y)^2`` per
        channel (``axis``): the term its scale and shift give where they train."""

        def tap(out: Any) -> Any:
            channel = axis % len(out.shape)
            summed = [a for a in range(len(out.shape)) if a != channel]
            return self._tap(consumers, [summed])(out)[0]

        return tap

    def scores(self, name: str) -> np.ndarray | None:
        """The totals of layer ``name`` as ``(filters, 1)``; None before any backward pass."""
        if int(self.passes[name].numpy()) == 0:
            return None
        return self.totals[name].numpy().astype(np.float64)[:, None]

    def state(self) -> dict[str, Any]:
        """The totals and passes of the layers a backward pass reached, JSON-able (float32
        values as exact floats)."""
        reached = [name for name, n in self.passes.items() if int(n.numpy()) > 0]
        return {"totals": {name: self.totals[name].numpy().tolist() for name in reached},
                "passes": {name: int(self.passes[name].numpy()) for name in reached}}  # fmt: skip

    def load(self, saved: dict[str, tuple[list[float], int]]) -> None:
        """Replace the totals with ``saved`` (layer -> ``(totals, passes)``); layers not in
        it start afresh, as before their first backward pass. The variables stay (a traced
        step keeps adding to them)."""
        for name, total in self.totals.items():
            values, passes = saved.get(name, (None, 0))
            total.assign(np.zeros(total.shape, "float32") if values is None
                         else np.asarray(values, "float32"))  # fmt: skip
            self.passes[name].assign(passes)

    @contextlib.contextmanager
    def kept(self) -> Iterator[None]:
        """Totals and passes put back as they are now on exit: backward passes meanwhile
        (a probe's) are not training."""
        before = {name: (total.numpy(), int(self.passes[name].numpy()))
                  for name, total in self.totals.items()}  # fmt: skip
        try:
            yield
        finally:
            for name, (total, passes) in before.items():
                self.totals[name].assign(total)
                self.passes[name].assign(passes)

    def recreate(self) -> None:
        """Make the variables again (under the current distribution strategy)."""
        for name in list(self.totals):
            self._make_variables(name, self.totals[name].numpy(),
                                 int(self.passes[name].numpy()))  # fmt: skip


def ranked_layers(ctrl: Any) -> list[str]:
    """The producer layers whose filters ``ctrl`` ranks."""
    return [name for g in ctrl.analysis.prunable_groups for name in g.producers]


def keras_signal(ctrl: Any, source: str) -> dict[str, np.ndarray]:
    """Per producer layer of ``ctrl``, the ``(filters, 1)`` signal ``source`` names."""
    layers = ranked_layers(ctrl)
    if source == "gradient":
        acc = ctrl.taylor
        return taylor_scores({name: acc.scores(name) for name in layers}, ctrl._weights)
    refs = ctrl.captured.refs

    def read(bn: str, param: str) -> np.ndarray:
        variable = next(v for v in refs[bn].layer.weights if v.name == param)
        return np.asarray(variable.numpy())

    return batchnorm_scales(ctrl.analysis.graph, layers, read)
