"""Accuracy-aware training for PyTorch (:mod:`filterprune.core.accuracy_aware`).

Example::

    ctrl, model = create_compressed_model(model, config)
    loop = create_accuracy_aware_training_loop(config, ctrl)
    model = loop.run(model, train_epoch_fn=train_epoch, validate_fn=validate,
                     configure_optimizers_fn=lambda: (optimizer, lr_scheduler))
    print(loop.best_level, loop.best_accuracy)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.accuracy_aware import AccuracyAwareParams, AdaptiveCompressionLevelLoop

__all__ = ["create_accuracy_aware_training_loop"]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    # masks are the controller's: its state restores them
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if not k.endswith("_mask")}  # fmt: skip


def _restore(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_mask")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"Restoring the best weights failed: missing {missing}, "
                           f"unexpected {result.unexpected_keys}.")  # fmt: skip


def create_accuracy_aware_training_loop(config: Any, ctrl: Any) -> AdaptiveCompressionLevelLoop:
    """The loop of ``config["accuracy_aware_training"]`` driving ``ctrl``'s pruning level.

    Raises:
        ConfigError: If the section is missing or invalid, or ``ctrl`` runs no pruning.
    """
    params = AccuracyAwareParams.from_config(config)
    return AdaptiveCompressionLevelLoop(params, ctrl, _snapshot, _restore, _rank0s)


def _rank0s(pruning: Any, accuracy: float) -> float:
    """Rank 0's accuracy under DDP (``distributed()``): a rank that validated on its own
    share of the data would otherwise search apart, and the collectives of the level
    changes would meet other ranks' (gloo aborts the job)."""
    if not pruning._ddp():
        return accuracy
    box = [accuracy]
    torch.distributed.broadcast_object_list(box, src=0)
    return float(box[0])
