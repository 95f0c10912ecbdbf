"""Data the algorithms need at creation: the dataset for BatchNorm adaptation, and the
validation data and functions of a LeGR search."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .._batches import (
    adaptation_failed,
    batch_inputs,
    check_callable,
    check_not_empty,
    nonempty_batches,
)
from ..core.config import Config
from ..core.workflow import check_nncf_keywords, nncf_config_argument
from ..progress import progress
from .masks import pruned_channels

__all__ = ["TFInitArgs", "register_default_init_args", "adapt_batchnorm", "sample_batches"]


@dataclass
class TFInitArgs:
    """Objects registered by :func:`register_default_init_args`."""

    dataset: Any
    batch_size: int | None = None
    val_dataset: Any = None
    validate_fn: Any = None
    train_steps_fn: Any = None
    legr_train_optimizer: Any = None


def _check_not_empty(dataset: Any, key: str, *purpose: str) -> None:
    if not isinstance(dataset, tf.data.Dataset):  # a Dataset of unknown size has no len()
        check_not_empty(dataset, key, *purpose)
    elif int(dataset.cardinality()) == 0:
        check_not_empty([], key, *purpose)


def register_default_init_args(config: Config | None = None, dataset: Any = None,
                               batch_size: int | None = None, *,
                               val_dataset: Any = None, validate_fn: Any = None,
                               train_steps_fn: Any = None, legr_train_optimizer: Any = None,
                               **nncf_keywords: Any) -> Config:  # fmt: skip
    """Attach ``dataset`` (and LeGR's search inputs) to ``config`` for initialisation.

    Args:
        config: The config (returned, with the arguments registered); a plain dict is
            read into a new :class:`~filterprune.Config`, so use the one returned.
        dataset: A ``tf.data.Dataset`` (or any iterable) of inputs or ``(inputs, targets)``
            pairs, batched or not, in the model's own layout: BatchNorm adaptation reads it,
            and ``train_steps_fn`` trains on it.
        batch_size: Batch size used when ``dataset`` yields single samples.
        val_dataset: Validation data of the LeGR search (``learned_ranking``).
        validate_fn: ``validate_fn(model, val_dataset)`` -> a score, higher is better (or a
            tuple or list whose first item is the score, as ``model.evaluate`` returns
            with a metric first): each LeGR candidate's reward.
        train_steps_fn: ``train_steps_fn(dataset, model, optimizer, compression_ctrl,
            train_steps)``: fine-tunes a LeGR candidate for ``legr_params.train_steps``
            steps before it is validated; without it candidates are validated as pruned.
        legr_train_optimizer: The optimizer ``train_steps_fn`` gets; default: the
            model's compiled optimizer, else SGD with learning rate 1e-3 and momentum 0.9.
            Its variables are put back after each candidate.

    Returns:
        ``config``.

    Raises:
        ConfigError: If ``dataset`` or ``val_dataset`` has length 0 (a dataset of unknown
            length is checked when it is read, before any statistic changes).
        TypeError: If ``validate_fn`` or ``train_steps_fn`` is given but not callable, or
            for a keyword NNCF's function did not take either.
    """
    config = nncf_config_argument(config, nncf_keywords)
    if dataset is None:  # NNCF's name of it
        dataset = nncf_keywords.pop("data_loader", None)
    check_nncf_keywords(nncf_keywords, {"device": "Keras places the model itself"},
                        "register_default_init_args",
                        ("batch_size", "val_dataset", "validate_fn", "train_steps_fn",
                         "legr_train_optimizer"))  # fmt: skip
    _check_not_empty(dataset, "dataset")
    if val_dataset is not None:
        _check_not_empty(val_dataset, "val_dataset", "the LeGR search")
    check_callable(validate_fn=validate_fn, train_steps_fn=train_steps_fn)
    config = config if isinstance(config, Config) else Config.from_dict(config)
    config.register_extra_structs([TFInitArgs(dataset, batch_size, val_dataset, validate_fn,
                                              train_steps_fn, legr_train_optimizer)])
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
    """The input batches of ``dataset`` until ``num_samples`` samples were yielded.

    Raises:
        ConfigError: On the first ``next()``, if ``dataset`` yields no batch.
    """
    seen = 0
    batches = nonempty_batches(_batches(dataset, len(model.inputs[0].shape), batch_size),
                               "dataset")  # fmt: skip
    names = [t._keras_history.operation.name for t in model.inputs
             if hasattr(t, "_keras_history")]  # fmt: skip
    with progress(total=num_samples, desc=desc) as bar:
        for batch in batches:
            x = _inputs_of(batch, names)
            yield x
            n = _size(x)
            seen += n
            bar.update(n)
            if seen >= num_samples:
                break


def _inputs_of(batch: Any, names: list[str]) -> Any:
    """The model's inputs in ``batch``: a dict keyed by its input names (alone, or first
    of ``(inputs, targets)``) is the inputs, all of them; else :func:`batch_inputs`."""
    for part in (batch, batch[0] if isinstance(batch, (list, tuple)) and batch else None):
        if isinstance(part, dict) and names and set(names) <= set(part):
            return {name: part[name] for name in names}
    return batch_inputs(batch)


def _size(x: Any) -> int:
    return int(keras.ops.shape(keras.tree.flatten(x)[0])[0])


def adapt_batchnorm(model: Any, dataset: Any, num_samples: int, batch_size: int | None) -> None:
    """Re-estimate BatchNorm moving statistics on ``num_samples`` training samples.

    The statistics are reset and averaged over the batches seen (momentum
    ``k / (k + 1)`` at batch ``k``), as PyTorch's cumulative moving average does. All or
    nothing: an empty dataset is refused before any statistic changes, and when a batch
    fails midway every BatchNorm gets its statistics and momentum back.

    Raises:
        ConfigError: If ``dataset`` yields no batch, or a batch fails in the model (the
            message names the batch and the cause).
    """
    bns = batchnorm_layers(model)
    if not bns or num_samples <= 0:
        return
    batches = sample_batches(model, dataset, num_samples, batch_size, "BN adaptation")
    first = next(batches)  # an empty dataset is refused here, while nothing has changed
    saved = [(bn, bn.momentum, bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in bns]
    for bn in bns:
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, "float32"))
        bn.moving_variance.assign(np.ones(bn.moving_variance.shape, "float32"))
    done, size = 0, None  # batches run; the size of the batch running
    try:
        for x in itertools.chain([first], batches):
            for bn in bns:
                bn.momentum = done / (done + 1)
            size = _size(x)
            model(x, training=True)
            done, size = done + 1, None
    except BaseException as err:
        for bn, _, mean, variance in saved:
            bn.moving_mean.assign(mean)
            bn.moving_variance.assign(variance)
        if isinstance(err, Exception):
            raise adaptation_failed(err, "dataset", done, size) from err
        raise
    finally:
        batches.close()
        for bn, momentum, _, _ in saved:
            bn.momentum = momentum
    for bn, _, mean, variance in saved:  # pruned channels keep theirs, as in training
        pruned = pruned_channels(bn)
        if pruned is not None:
            bn.moving_mean.assign(np.where(pruned, mean, bn.moving_mean.numpy()))
            bn.moving_variance.assign(np.where(pruned, variance, bn.moving_variance.numpy()))
