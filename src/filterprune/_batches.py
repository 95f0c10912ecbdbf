"""Reading model inputs out of a data loader's batches (any framework)."""

from __future__ import annotations

from typing import Any

__all__ = ["batch_inputs"]


def batch_inputs(batch: Any) -> Any:
    """The inputs of a batch: the first item of ``(inputs, targets)``, the first value of
    a dict, or the batch itself."""
    if isinstance(batch, (list, tuple)):
        return batch[0]
    if isinstance(batch, dict):
        return next(iter(batch.values()))
    return batch
