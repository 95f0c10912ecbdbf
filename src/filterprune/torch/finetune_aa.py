"""Accuracy-aware runs of ``filterprune prune``, and the CLI's inputs to a LeGR search.

With ``accuracy_aware_training`` in the config, the level is searched by
:mod:`filterprune.core.accuracy_aware` instead of following the schedule: ``--epochs``
caps the epochs the search may train (with the section's ``maximal_total_epochs``), every
level change gets a fresh optimizer whose cosine spans the epochs that level may train,
and validation is on the run's validation split; the bound is relative to the dense
model's validation accuracy (epoch 0) unless ``uncompressed_model_accuracy`` is set. The
search keeps no checkpoint, so such a run cannot be resumed; ``history.json`` is written
after every epoch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..examples._training import evaluate, train_one_epoch
from .accuracy_aware import create_accuracy_aware_training_loop

__all__ = ["run_accuracy_aware", "legr_init_args"]


def legr_init_args(device: torch.device) -> dict[str, Any]:
    """``validate_fn`` and ``train_steps_fn`` for ``register_default_init_args``: the run's
    cross-entropy and top-1 accuracy, on ``device`` (only a LeGR search reads them)."""
    from .finetune import OnDevice

    def validate(model: nn.Module, loader: Any) -> float:
        return evaluate(model, OnDevice(loader, device))

    def train_steps(loader: Any, model: nn.Module, optimizer: Any, ctrl: Any,
                    steps: int) -> None:  # fmt: skip
        model.train()
        for _, (images, labels) in zip(range(steps), OnDevice(loader, device), strict=False):
            loss = nn.functional.cross_entropy(model(images), labels) + ctrl.loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return {"validate_fn": validate, "train_steps_fn": train_steps}


def run_accuracy_aware(loop: Any, config: Any, history: list[dict[str, Any]]) -> list[str]:
    """Search the level with the run's ``loop`` (``finetune._Loop``); returns notes for the
    summary. The model ends with the best level's masks and weights."""
    from .finetune import HISTORY, OnDevice, _epoch_line, _optimizer, _write_json

    search = create_accuracy_aware_training_loop(config, loop.ctrl)
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

    def configure():
        loop.optimizer, loop.schedule = _optimizer(loop.settings, loop.model,
                                                   next(spans, p.patience_epochs) * steps)
        return loop.optimizer, loop.schedule

    def train_epoch(ctrl, model, epoch, optimizer, lr_scheduler):
        loop.data.shuffle_for(epoch + 1)
        now = loop._pruning_now()
        result = train_one_epoch(
            loop.net, OnDevice(loop.data.train, loop.device), optimizer,
            extra_loss=lambda _m: ctrl.loss(), on_step=lambda *_: lr_scheduler.step(),
            desc=f"epoch {epoch + 1}/{cap} level {now['level']:.3f}")
        row = {"epoch": epoch + 1, "train_loss": result["loss"],
               "train_accuracy": result["accuracy"],
               "val_accuracy": evaluate(loop.net, OnDevice(loop.data.val, loop.device)),
               **now, "lr": optimizer.param_groups[0]["lr"], "seconds": result["seconds"]}
        history.append(row)
        print(_epoch_line(row, cap), flush=True)
        loop._log(row)
        _write_json(Path(loop.folder) / HISTORY, history)

    def validate(model, epoch):
        row = history[-1]  # the epoch just trained, unless the level moved since
        if row["epoch"] == epoch and row["level"] == loop._pruning_now()["level"]:
            return row["val_accuracy"]
        return evaluate(loop.net, OnDevice(loop.data.val, loop.device))

    print(f"accuracy-aware: searching the level for at most {cap} epochs (--epochs "
          f"{loop.settings['epochs']}, maximal_total_epochs {allowed})")
    dense, classes = history[0]["val_accuracy"], len(loop.data.classes)
    if dense <= 1.5 / classes:
        print(f"warning: the dense model is at chance level (val acc {dense:.4f} for {classes} "
              "classes), so the bound keeps nothing and the search goes to the highest "
              "level. Give --weights of a trained model.")
    search.run(loop.model, train_epoch_fn=train_epoch, validate_fn=validate,
               configure_optimizers_fn=configure)
    tries = ", ".join(f"{level:.3f}: {acc:.4f}" for _, level, acc in search.history)
    return [f"accuracy-aware: uncompressed val acc {search.uncompressed_accuracy:.4f}, "
            f"bound {search.minimal_accuracy:.4f}; best level {search.best_level:.3f} at "
            f"{search.best_accuracy:.4f} after {search.epoch} epochs (level: val acc of "
            f"each validation: {tries})"]
