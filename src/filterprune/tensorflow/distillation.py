"""Knowledge distillation for Keras: the dense model teaches the compressed one.

At creation the controller keeps a copy of the model as given (stock layers, before any
mask or quantizer is put in place) as the teacher, frozen and always called with
``training=False``, and taps the student: each ``training=True`` call of the model
records its inputs and outputs. ``ctrl.loss()`` then calls the teacher on the same
inputs and returns ``scale`` times the distance between the two outputs, as in the
PyTorch frontend. Outputs may be tensors or nested lists and dicts of them; every
floating tensor pair counts. Only the last training call before ``ctrl.loss()`` is
distilled, as in PyTorch. Each recorded call's term is taken once: a second
``ctrl.loss()`` (or one in another traced function) returns zero.

``model.fit`` needs no change: the tapped model's ``compute_loss`` (which ``fit``'s
train step calls, and so does a custom ``train_step`` that calls ``self.compute_loss``)
adds ``ctrl.loss()`` to the compiled loss, and the ``loss`` that ``fit`` reports includes
it. In a ``tf.GradientTape`` loop add it yourself. Under ``tf.distribute`` call
``ctrl.distributed()`` inside ``strategy.scope()``; ``fit`` then scales the term per
replica as it scales its own losses (a loop of your own scales it like its task loss).

Example::

    config["compression"] = [{"algorithm": "filter_pruning", ...},
                             {"algorithm": "knowledge_distillation", "type": "softmax",
                              "temperature": 4}]
    ctrl, model = create_compressed_model(model, config)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(data, epochs=4, callbacks=create_compression_callbacks(ctrl))  # distils

    with tf.GradientTape() as tape:                  # or a loop of your own
        loss = loss_fn(y, model(x, training=True)) + ctrl.loss()

The tap lives on the training model object only (two instance attributes, ``call`` and
``compute_loss``); ``strip()`` output, checkpoints and ``.keras`` files never carry it.
"""

from __future__ import annotations

import functools
from typing import Any

import keras
import tensorflow as tf

from ..core.compression import CompressionStage
from ..core.distillation import (
    DistillationStatistics,
    KnowledgeDistillationParams,
    TeacherState,
    check_classes,
    check_pairs,
    fingerprint,
)
from .controller import export_model, reset_traced_functions
from .shrink import plain_copy

__all__ = ["KnowledgeDistillationController", "distillation_loss"]


def _context() -> Any:
    """Where tensors made now live: the traced graph, or ``"eager"``."""
    return "eager" if tf.executing_eagerly() else tf.compat.v1.get_default_graph()


class _Tap:
    """The student's last ``training=True`` call: its arguments, outputs and context."""

    def __init__(self) -> None:
        self.last: tuple[tuple, dict, Any, Any] | None = None

    def record(self, args: tuple, kwargs: dict, output: Any) -> None:
        self.last = (args, kwargs, output, _context())

    def take(self) -> tuple[tuple, dict, Any] | None:
        """The recorded call, once; ``None`` if there is none made in this context."""
        last, self.last = self.last, None
        if last is None or last[3] is not _context():
            return None  # a traced function's tensors cannot be used outside it
        return last[:3]


def _tensors(value: Any) -> list[Any]:
    return [t for t in keras.tree.flatten(value) if tf.is_tensor(t) and t.dtype.is_floating]


def distillation_loss(student: Any, teacher: Any, kind: str, temperature: float) -> tf.Tensor:
    """Distance between two outputs: ``"mse"``, or ``"softmax"`` (``T^2`` KL over the last
    axis, the classes, averaged over the other positions), in float32. The outputs'
    tensors are paired in order (:func:`~filterprune.core.distillation.check_pairs`)."""
    student, teacher = _tensors(student), _tensors(teacher)
    n = check_pairs([tuple(t.shape) for t in student], [tuple(t.shape) for t in teacher])
    total = tf.constant(0.0)
    for s, t in zip(student[:n], teacher, strict=True):
        s, t = tf.cast(s, tf.float32), tf.stop_gradient(tf.cast(t, tf.float32))
        if kind == "mse":
            total += tf.reduce_mean(tf.square(s - t))
            continue
        check_classes(tuple(s.shape), -1)
        log_s = tf.nn.log_softmax(s / temperature, axis=-1)
        log_t = tf.nn.log_softmax(t / temperature, axis=-1)
        rows = tf.cast(tf.size(s) // tf.shape(s)[-1], tf.float32)
        kl = tf.reduce_sum(tf.exp(log_t) * (log_t - log_s)) / rows
        total += kl * temperature**2
    return total


def _per_replica(value: tf.Tensor) -> tf.Tensor:
    """``value`` scaled as Keras scales the losses of ``fit`` under ``tf.distribute``: each
    replica's part, so that gradients summed over the replicas count the term once."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value / replicas if replicas > 1 else value


def _install_tap(model: Any, tap: _Tap, loss: Any) -> None:
    """Record ``model``'s training calls and add ``loss()`` to its ``compute_loss``."""
    call, compute_loss = model.call, model.compute_loss  # bound: the class's own

    @functools.wraps(call)
    def tapped_call(*args: Any, **kwargs: Any) -> Any:
        output = call(*args, **kwargs)
        if kwargs.get("training") is True:
            tap.record(args, kwargs, output)
        return output

    @functools.wraps(compute_loss)
    def distilled_loss(*args: Any, **kwargs: Any) -> Any:
        total = compute_loss(*args, **kwargs)
        return total + tf.cast(_per_replica(loss()), total.dtype)

    model.__dict__["call"] = tapped_call  # not tracked: no variable, no checkpoint entry
    model.__dict__["compute_loss"] = distilled_loss


class KnowledgeDistillationController(TeacherState):
    """The ``knowledge_distillation`` algorithm on a Keras model.

    Created by :func:`filterprune.tensorflow.create_compressed_model`; not built directly.

    Attributes:
        model: The student (the same object the user passed in), tapped.
        teacher: The frozen copy taken at creation, called with ``training=False``.
    """

    name = "knowledge_distillation"

    def __init__(self, model: Any, params: KnowledgeDistillationParams, captured: Any,
                 frontend: Any) -> None:  # fmt: skip
        self.model, self.params, self.captured, self.frontend = model, params, captured, frontend
        self.teacher = self._frozen(model)
        self.teacher_print = fingerprint(w.numpy() for w in self.teacher.weights)
        self._tap = _Tap()
        _install_tap(model, self._tap, self.loss)

    @staticmethod
    def _frozen(model: Any) -> Any:
        teacher = plain_copy(model)  # stock layers: no mask or quantizer reaches it
        teacher.trainable = False
        return teacher

    def loss(self) -> tf.Tensor:
        """``scale`` x the distance from the last training call's outputs to the teacher's
        on the same inputs; zero before any training call."""
        last = self._tap.take()
        if last is None:
            return tf.constant(0.0)
        args, kwargs, output = last
        taught = self.teacher(*args, **{**kwargs, "training": False})
        kd = distillation_loss(output, taught, self.params.type, self.params.temperature)
        return self.params.scale * kd

    def distributed(self) -> None:
        """Call inside ``strategy.scope()`` before training under a ``tf.distribute``
        strategy: the teacher is made again with that strategy's variables."""
        with tf.distribute.get_strategy().scope():
            self.teacher = self._frozen(self.teacher)
        reset_traced_functions(self.model)

    def compression_stage(self) -> CompressionStage:
        """Always on: distillation does not hold back the other algorithms' stage."""
        return CompressionStage.FULLY_COMPRESSED

    def statistics(self, quickly_collected_only: bool = False) -> dict[str, Any]:
        return DistillationStatistics(type=self.params.type, temperature=self.params.temperature,
                                      scale=self.params.scale)  # fmt: skip

    # -- output ----------------------------------------------------------------------------
    def strip(self, **kwargs: Any) -> Any:
        """A new model of stock layers without the tap (the training model keeps it)."""
        return self.frontend.strip(self, **kwargs)

    def strip_model(self, model: Any, **_: Any) -> Any:
        """Nothing to undo: models rebuilt from the training model never carry the tap
        (the frontend copies the training model itself when no other algorithm did)."""
        return model

    def export_model(self, save_path: str, save_format: str | None = None,
                     shrink: bool = False) -> None:  # fmt: skip
        """Export the stripped model (see the pruning controller's ``export_model``)."""
        export_model(self, save_path, save_format, shrink)
