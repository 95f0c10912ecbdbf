"""Accuracy-aware training for Keras (:mod:`filterprune.core.accuracy_aware`).

``train_epoch_fn(ctrl, model, epoch=, optimizer=, lr_scheduler=)`` typically calls
``model.fit(..., epochs=epoch + 1, initial_epoch=epoch, callbacks=...)``; ``validate_fn(model,
epoch=)`` returns the accuracy. Weights (masks included) are copied with ``get_weights``.
"""

from __future__ import annotations

from typing import Any

from ..core.accuracy_aware import AccuracyAwareParams, AdaptiveCompressionLevelLoop

__all__ = ["create_accuracy_aware_training_loop"]


def create_accuracy_aware_training_loop(config: Any, ctrl: Any) -> AdaptiveCompressionLevelLoop:
    """The loop of ``config["accuracy_aware_training"]`` driving ``ctrl``'s pruning level.

    Raises:
        ConfigError: If the section is missing or invalid, or ``ctrl`` runs no pruning.
    """
    params = AccuracyAwareParams.from_config(config)
    return AdaptiveCompressionLevelLoop(
        params, ctrl, lambda m: [w.copy() for w in m.get_weights()], lambda m, w: m.set_weights(w)
    )
