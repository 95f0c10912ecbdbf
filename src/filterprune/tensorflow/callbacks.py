"""Keras callbacks and checkpoint objects of the compression workflow.

Example::

    callbacks = create_compression_callbacks(ctrl, log_dir="logs")
    checkpoint = tf.train.Checkpoint(model=model,
                                     compression_state=TFCompressionState(ctrl))
    callbacks.append(CheckpointManagerCallback(checkpoint, "ckpt"))
    model.fit(dataset, epochs=10, callbacks=callbacks)
"""

from __future__ import annotations

import json
import logging
from typing import Any

import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

__all__ = [
    "CompressionCallback",
    "CheckpointManagerCallback",
    "TFCompressionState",
    "TFCompressionStateLoader",
    "create_compression_callbacks",
]

log = logging.getLogger("filterprune")


class CompressionCallback(keras.callbacks.Callback):
    """Steps the compression schedule during ``model.fit`` and logs it.

    At the start of each epoch the scheduler moves to that epoch (``epoch_step``), which
    recomputes the pruning masks and the weight quantizers' ranges; each batch calls
    ``step()``. The epoch is ``max(epoch, last + 1)``, so ``fit(initial_epoch=...)`` after
    a resume and repeated ``fit(epochs=1)`` calls both advance the schedule; a state saved
    inside an epoch (a checkpoint every few batches, or one listed before this callback,
    which saves at ``on_epoch_end`` before this callback ends the epoch) runs that epoch
    again where fit runs it again (Keras' own epoch count). With
    ``log_dir``, levels, FLOPs, parameters and per-layer levels go to TensorBoard
    (``tf.summary``) at every epoch; ``logs`` gain ``pruning_level`` and ``flops_kept``
    when filter pruning runs. Events are written with ``tf.summary.write``
    in the layout of TensorBoard's scalar and text plugins, so the tensorboard package is
    not needed.

    Args:
        ctrl: The compression controller.
        log_dir: Folder of the TensorBoard event files; ``None`` writes none.
    """

    def __init__(self, ctrl: Any, log_dir: str | None = None) -> None:
        super().__init__()
        self.ctrl = ctrl
        self.log_dir = log_dir
        self._writer = tf.summary.create_file_writer(str(log_dir)) if log_dir else None
        self._said_jump = self._said_optimizer = False
        self._first = True  # the next epoch is a fit's first

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._first = True
        if _pruning(self.ctrl) is not None and not self._said_optimizer:
            self._said_optimizer = _check_optimizer(getattr(self.model, "optimizer", None))

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        scheduler = self.ctrl.scheduler
        first, self._first = self._first, False
        if not hasattr(scheduler, "current_epoch"):  # no schedule (distillation alone)
            scheduler.epoch_step(int(epoch))
            return
        expected = scheduler.current_epoch + 1
        # a held schedule (the accuracy-aware loop sets the level) stays at its epoch
        if int(epoch) > expected and not getattr(scheduler, "held", False) \
                and not self._said_jump:  # fmt: skip
            # a fresh controller asked for a later epoch: fit(initial_epoch=...) or Keras'
            # BackupAndRestore, which restores weights and epoch but not the compression state
            self._said_jump = True
            log.warning(
                "fit starts at epoch %d but the compression schedule is at epoch %d: the "
                "masks are chosen now from the current weights, not restored from the run "
                "being continued (past the freeze epoch they will differ). Resume with the "
                "compression state (TFCompressionState / create_compressed_model(..., "
                "compression_state=...)); keras.callbacks.BackupAndRestore does not save it.",
                int(epoch), expected)
        # a state saved inside the epoch fit starts (a checkpoint every few batches) runs
        # that epoch again; otherwise the schedule never goes back (fit(epochs=1) calls).
        # fit's epoch 0 from a loaded state whose batches all ran (saved by a checkpoint
        # listed before this callback) is a new fit, not that epoch again: fit(epochs=1)
        # runs would stay at epoch 0 for good. In the same process it is fit again after
        # an interruption (in validation): that epoch again, as BackupAndRestore runs it
        again = int(epoch) == scheduler.current_epoch and getattr(scheduler, "in_progress", 0) \
            and not (int(epoch) == 0 and getattr(scheduler, "batches_ended", -1) == 0
                     and getattr(scheduler, "loaded", False))  # fmt: skip
        asked, epoch = int(epoch), int(epoch) if again else max(int(epoch), expected)
        if first and 0 < asked < epoch and not getattr(scheduler, "held", False) \
                and not self._said_jump:  # fmt: skip
            self._said_jump = True  # fit(initial_epoch=...) before the state's epoch
            log.warning(
                "fit starts at epoch %d but the compression schedule goes on at its epoch "
                "%d (it never goes back), so the two count epochs apart from here. Resume "
                "fit and the compression state from the same checkpoint, with "
                "initial_epoch=%d.", asked, epoch, epoch)  # fmt: skip
        scheduler.epoch_step(epoch)
        if self._writer is not None:
            self._log(epoch)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.ctrl.scheduler.step()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        steps = (self.params or {}).get("steps")
        if steps and int(batch) + 1 >= steps and hasattr(self.ctrl.scheduler, "end_batches"):
            self.ctrl.scheduler.end_batches()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if hasattr(self.ctrl.scheduler, "end_epoch"):
            self.ctrl.scheduler.end_epoch()
        pruning = _pruning(self.ctrl)
        if logs is not None and pruning is not None:
            logs["pruning_level"] = float(pruning.pruning_level)
            logs["flops_kept"] = float(pruning.statistics().flops_kept)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._writer is not None:
            self._writer.flush()

    def _log(self, epoch: int) -> None:
        stats = self.ctrl.statistics()
        pruning = _pruning(self.ctrl)
        scalars = _pruning_scalars(pruning) if pruning is not None else {}
        with self._writer.as_default(step=epoch):
            for key, value in scalars.items():
                tf.summary.write(f"compression/{key}", tf.constant(float(value)),
                                 metadata=_metadata("scalars", summary_pb2.DATA_CLASS_SCALAR))
            tf.summary.write("compression/statistics", tf.constant(f"```\n{stats}\n```"),
                             metadata=_metadata("text", summary_pb2.DATA_CLASS_TENSOR))
        self._writer.flush()


def _check_optimizer(optimizer: Any) -> bool:
    """Say (and return whether) Keras's Adafactor will turn the pruned layers' weights into
    NaN: a kernel entry both of whose channels are pruned has zero gradient on its row and
    column, and at the default ``epsilon_1`` its factored second moment rounds to 0 (0/0)."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's
    if not isinstance(optimizer, keras.optimizers.Adafactor) or optimizer.epsilon_1 >= 1e-20:
        return False
    log.warning(
        "Adafactor with epsilon_1=%g makes a pruned layer's weights NaN (a kernel entry "
        "between two pruned channels has zero gradient, and its second moment rounds to "
        "0). Pass keras.optimizers.Adafactor(epsilon_1=1e-15).", optimizer.epsilon_1)
    return True


def _pruning(ctrl: Any) -> Any:
    """The filter pruning controller of ``ctrl`` (itself or a child), or ``None``."""
    if ctrl.name == "filter_pruning":
        return ctrl
    for child in getattr(ctrl, "child_ctrls", []):
        if child.name == "filter_pruning":
            return child
    return None


def _pruning_scalars(pruning: Any) -> dict[str, float]:
    stats = pruning.statistics()
    scalars = {
        "pruning_level": pruning.pruning_level,
        "scheduler_level": stats.current_level,
        "target_level": stats.target_level,
        "flops_kept": stats.flops_kept,
        "params_kept": stats.params_kept,
        "current_flops": stats.current_flops,
        "current_params": stats.current_params,
        "filters_kept": stats.current_filters / max(stats.full_filters, 1),
    }
    scalars.update({f"layer_level/{s.name}": s.level for s in stats.layers})
    return scalars


def _metadata(plugin: str, data_class: int) -> Any:
    """Summary metadata TensorBoard's ``plugin`` reads (``tf.summary.scalar`` and
    ``tf.summary.text`` need the tensorboard package; the raw write does not)."""
    data = tf.compat.v1.SummaryMetadata.PluginData(plugin_name=plugin)
    return tf.compat.v1.SummaryMetadata(plugin_data=data, data_class=data_class)


def create_compression_callbacks(ctrl: Any, log_dir: str | None = None) -> list[Any]:
    """The callbacks that drive pruning in ``model.fit`` (a list, to extend).

    Args:
        ctrl: The controller from ``create_compressed_model``.
        log_dir: TensorBoard folder for pruning levels, FLOPs and parameters.

    Returns:
        ``[CompressionCallback(ctrl, log_dir)]``.
    """
    return [CompressionCallback(ctrl, log_dir)]


class CheckpointManagerCallback(keras.callbacks.Callback):
    """Saves a ``tf.train.Checkpoint`` into ``directory`` every epoch (or every N batches).

    Restore the latest with ``checkpoint.restore(tf.train.latest_checkpoint(directory))``.

    Args:
        checkpoint: The checkpoint (model, optimizer, ``TFCompressionState``...).
        directory: Folder of the checkpoints.
        max_to_keep: Checkpoints kept (``None``: all).
        save_freq: ``"epoch"`` or a number of batches.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str,
                 max_to_keep: int | None = None,
                 save_freq: str | int = "epoch") -> None:  # fmt: skip
        super().__init__()
        if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
            raise ValueError(
                f"`save_freq` must be 'epoch' or a positive int. Received: save_freq={save_freq!r}."
            )
        self.manager = tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep)
        self.save_freq = save_freq
        self._batches = 0  # since the last save
        self._last = -1  # the epoch's last batch seen

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._last = -1

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # ``batch`` is the last of the call: steps_per_execution runs several per call
        self._batches += int(batch) - self._last
        self._last = int(batch)
        if isinstance(self.save_freq, int) and self._batches >= self.save_freq:
            self._batches %= self.save_freq  # at the first call past each multiple
            self.manager.save()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.save_freq == "epoch":
            self.manager.save()


class TFCompressionState(tf.train.experimental.PythonState):
    """The controller's compression state as a ``tf.train.Checkpoint`` entry (JSON).

    Restoring it into a checkpoint that holds a live controller loads the state there.
    """

    def __init__(self, ctrl: Any) -> None:
        self.ctrl = ctrl

    def serialize(self) -> str:
        return json.dumps(self.ctrl.get_compression_state())

    def deserialize(self, string_value: Any) -> None:
        self.ctrl.load_state(json.loads(_text(string_value)))


class TFCompressionStateLoader(tf.train.experimental.PythonState):
    """Reads a saved compression state back, for ``create_compressed_model(..., state)``.

    Example::

        checkpoint = tf.train.Checkpoint(compression_state=TFCompressionStateLoader())
        checkpoint.restore(path).expect_partial()
        state = checkpoint.compression_state.state
    """

    def __init__(self) -> None:
        self._state: dict | None = None

    @property
    def state(self) -> dict | None:
        """The restored state (``None`` before a restore)."""
        return self._state

    def serialize(self) -> str:
        return json.dumps(self._state)

    def deserialize(self, string_value: Any) -> None:
        self._state = json.loads(_text(string_value))


def _text(value: Any) -> str:
    if hasattr(value, "numpy"):
        value = value.numpy()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
