"""The Keras side of the finite-cut probe (:mod:`filterprune.core.finite`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from keras import tree

from ..core.analysis import Analysis, Group
from ..core.finite import SKIPPED, Probe, probe_cut, verdict
from ..core.params import FilterPruningParams
from ._snapshot import restore, snapshot
from .capture import Capture
from .masks import apply_masks, maskable_layers

__all__ = ["cut_probe"]

log = logging.getLogger("filterprune")
Checked = tuple[bool, bool] | None  # (forward finite, gradients finite); None: it failed


@contextlib.contextmanager
def cut_probe(model: Any, captured: Capture, analysis: Analysis,
              params: FilterPruningParams) -> Iterator[Probe | None]:  # fmt: skip
    """``finite(groups)`` on ``model``: the probe's cut of ``groups`` masked, the float
    outputs and the weights' gradients checked (:func:`~filterprune.core.finite.verdict`)
    on the first of a few seeded inputs of the example input's shapes on which the uncut
    model is finite. Afterwards the model is as it was (classes, masks, statistics)."""
    before = snapshot(model)
    try:
        inputs, uncut = _finite_inputs(model, captured.sample)
        if inputs is None:
            log.info(SKIPPED)
            yield None
            return
        maskable = maskable_layers(analysis)

        def finite(groups: Sequence[Group]) -> bool:
            apply_masks(captured.refs, analysis.keeps(probe_cut(groups)),
                        analysis.graph.layers, maskable, bn=params.prune_batch_norms)  # fmt: skip
            return verdict(uncut, _finite(model, inputs))

        yield finite
    finally:
        restore(model, before)


def _finite_inputs(model: Any, sample: list[np.ndarray]) -> tuple[Any, Checked]:
    """The first input on which the uncut model's output is finite, and its check: float
    arrays drawn normal, then uniform in [0, 1), then the example input itself (integer
    arrays drawn 0 or 1 first: an all-zero token input can leave a channel dead)."""
    rng = np.random.default_rng(0)

    def normal(a: np.ndarray) -> np.ndarray:
        if a.dtype.kind == "f":
            return rng.standard_normal(a.shape).astype(a.dtype)
        return rng.integers(0, 2, a.shape).astype(a.dtype) if a.dtype.kind in "iu" else a

    def uniform(a: np.ndarray) -> np.ndarray:
        return rng.random(a.shape).astype(a.dtype) if a.dtype.kind == "f" else a

    for inputs in ([normal(a) for a in sample], [uniform(a) for a in sample], sample):
        checked = _finite(model, inputs)
        if checked is not None and checked[0]:
            return inputs, checked
    return None, None


def _finite(model: Any, inputs: list[np.ndarray]) -> Checked:
    """Whether the float outputs of ``model`` on ``inputs`` (inference mode) and the
    gradients of their sum are finite; ``None`` where the forward fails."""
    try:
        with tf.GradientTape() as tape:
            out = model(inputs if len(inputs) > 1 else inputs[0], training=False)
            floats = [t for t in tree.flatten(out) if t.dtype.is_floating]
            total = tf.add_n([tf.reduce_sum(tf.cast(t, "float32")) for t in floats] or [0.0])
        grads = tape.gradient(total, model.trainable_variables)
        forward = all(np.isfinite(np.asarray(t)).all() for t in floats)
        backward = all(np.isfinite(np.asarray(tf.convert_to_tensor(g))).all()
                       for g in grads if g is not None)  # fmt: skip
    except Exception:  # noqa: BLE001 - a model that needs more than its example input
        return None
    return forward, backward
