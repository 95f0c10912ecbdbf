"""Data the algorithms need at creation: the dataset for BatchNorm adaptation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .._batches import batch_inputs
from ..core.config import Config
from ..progress import progress

__all__ = ["TFInitArgs", "register_default_init_args", "adapt_batchnorm", "sample_batches"]


@dataclass
class TFInitArgs:
    """Objects registered by :func:`register_default_init_args`."""

    dataset: Any
    batch_size: int | None = None


def register_default_init_args(config: Config, dataset: Any, batch_size: int | None = None,
                               **_: Any) -> Config:  # fmt: skip
    """Attach ``dataset`` to ``config`` for initialisation (BatchNorm adaptation).

    Args:
        config: The config (returned, with the dataset registered).
        dataset: A ``tf.data.Dataset`` (or any iterable) of inputs or ``(inputs, targets)``
            pairs, batched or not, in the model's own layout.
        batch_size: Batch size used when ``dataset`` yields single samples.

    Returns:
        ``config``.
    """
    config.register_extra_structs([TFInitArgs(dataset, batch_size)])
    return config


def _batches(dataset: Any, rank: int, batch_size: int | None) -> Any:
    if isinstance(dataset, tf.data.Dataset):
        spec = batch_inputs(dataset.element_spec)
        if getattr(spec, "shape", None) is not None and spec.shape.rank == rank - 1:
            return dataset.batch(batch_size or 1)
    return dataset


def batchnorm_layers(model: Any) -> list[Any]:
    """Every BatchNormalization layer of ``model``, nested models included."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]  # fmt: skip


def sample_batches(model: Any, dataset: Any, num_samples: int, batch_size: int | None,
                   desc: str) -> Iterator[Any]:  # fmt: skip
    """The input batches of ``dataset`` until ``num_samples`` samples were yielded."""
    seen = 0
    with progress(total=num_samples, desc=desc) as bar:
        for batch in _batches(dataset, len(model.inputs[0].shape), batch_size):
            x = batch_inputs(batch)
            yield x
            n = int(keras.ops.shape(keras.tree.flatten(x)[0])[0])
            seen += n
            bar.update(n)
            if seen >= num_samples:
                break


def adapt_batchnorm(model: Any, dataset: Any, num_samples: int, batch_size: int | None) -> None:
    """Re-estimate BatchNorm moving statistics on ``num_samples`` training samples.

    The statistics are reset and averaged over the batches seen (momentum
    ``k / (k + 1)`` at batch ``k``), as PyTorch's cumulative moving average does.
    """
    bns = batchnorm_layers(model)
    if not bns or num_samples <= 0:
        return
    saved = [(bn, bn.momentum) for bn in bns]
    for bn in bns:
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, "float32"))
        bn.moving_variance.assign(np.ones(bn.moving_variance.shape, "float32"))
    try:
        batches = sample_batches(model, dataset, num_samples, batch_size, "BN adaptation")
        for k, x in enumerate(batches):
            for bn in bns:
                bn.momentum = k / (k + 1)
            model(x, training=True)
    finally:
        for bn, momentum in saved:
            bn.momentum = momentum
