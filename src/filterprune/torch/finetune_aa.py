"""Accuracy-aware runs of ``filterprune prune``.

With ``accuracy_aware_training`` in the config, the level is searched by
:mod:`filterprune.core.accuracy_aware` instead of following the schedule: ``--epochs``
caps the epochs the search may train (with the section's ``maximal_total_epochs``), every
level change gets a fresh optimizer whose cosine spans the epochs that level may train,
and validation is on the run's validation split; the bound is relative to the dense
model's validation accuracy (epoch 0) unless ``uncompressed_model_accuracy`` is set.
``checkpoint.pt`` is written after every epoch with the search's state (its position, the
best level's weights and masks so far) beside the run's, so ``--resume`` continues the
search where it stopped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .accuracy_aware import create_accuracy_aware_training_loop
from .finetune import _optimizer

__all__ = ["run_accuracy_aware"]


def run_accuracy_aware(loop: Any, config: Any, history: list[dict[str, Any]],
                       ckpt: dict[str, Any] | None = None) -> list[str]:  # fmt: skip
    """Search the level with the run's ``loop`` (``finetune._Loop``), from ``ckpt`` when
    it continues one; returns notes for the summary. The model ends with the best level's
    masks and weights."""
    search = create_accuracy_aware_training_loop(config, loop.ctrl)
    if ckpt is not None:
        search.load_state(ckpt["search"])
    allowed, given = (search.params.maximal_total_epochs,
                      search.params.uncompressed_model_accuracy)  # fmt: skip
    cap = min(allowed, loop.settings["epochs"])
    # the bound is relative to the model as the user gave it (epoch 0), not to level 0
    # after the start's BatchNorm adaptation
    search.params = dataclasses.replace(
        search.params, maximal_total_epochs=cap,
        uncompressed_model_accuracy=history[0]["val_accuracy"] if given is None else given)
    p = search.params
    steps = len(loop.data.train)
    spans = iter([p.initial_training_phase_epochs + p.patience_epochs])
    saved = [] if ckpt is None else [(ckpt["optimizer"], ckpt["lr_schedule"])]

    def configure():  # the loop trains with what this puts in place
        loop.optimizer, loop.schedule = _optimizer(loop.settings, loop.model,
                                                   next(spans, p.patience_epochs) * steps)
        if saved:  # continuing: the first call makes the optimizer the checkpoint has
            optimizer, schedule = saved.pop()
            loop.optimizer.load_state_dict(optimizer)
            loop.schedule.load_state_dict(schedule)
        return loop.optimizer, loop.schedule

    def train_epoch(ctrl, model, epoch, optimizer, lr_scheduler):
        loop.record(loop.train(epoch + 1, cap), history, cap)

    def save(search):
        loop._save(search.epoch, history, search=search.get_state())

    def validate(model, epoch):
        row = history[-1]  # the epoch just trained, unless the level moved since
        if row["epoch"] == epoch and row["level"] == loop._pruning_now()["level"]:
            return row["val_accuracy"]
        return loop.validate()

    print(f"accuracy-aware: searching the level for at most {cap} epochs (--epochs "
          f"{loop.settings['epochs']}, maximal_total_epochs {allowed})")
    dense, classes = history[0]["val_accuracy"], len(loop.data.classes)
    if dense <= 1.5 / classes:
        print(f"warning: the dense model is at chance level (val acc {dense:.4f} for {classes} "
              "classes), so the bound keeps nothing and the search goes to the highest "
              "level. Give --weights of a trained model.")
    try:
        search.run(loop.model, train_epoch_fn=train_epoch, validate_fn=validate,
                   configure_optimizers_fn=configure, epoch_end_fn=save)
    finally:
        loop.close()
    tries = ", ".join(f"{level:.3f}: {acc:.4f}" for _, level, acc in search.history)
    return [f"accuracy-aware: uncompressed val acc {search.uncompressed_accuracy:.4f}, "
            f"bound {search.minimal_accuracy:.4f}; best level {search.best_level:.3f} at "
            f"{search.best_accuracy:.4f} after {search.epoch} epochs (level: val acc of "
            f"each validation: {tries})"]
