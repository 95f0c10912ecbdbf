"""Data the algorithms need at creation: the loader for BatchNorm adaptation, and the
validation data and functions of a LeGR search."""

from __future__ import annotations

import contextlib
import inspect
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._batches import (
    adaptation_failed,
    batch_inputs,
    check_callable,
    check_not_empty,
    nonempty_batches,  # fmt: skip
)
from ..core.config import Config
from ..core.workflow import check_nncf_keywords, nncf_config_argument
from ..progress import progress
from .masks import pruned_statistics, restore_pruned_statistics

__all__ = ["InitArgs", "register_default_init_args", "adapt_batchnorm", "model_inputs",
           "random_state_kept"]


# NNCF's other arguments: name -> why they are not used
_NNCF_KEYWORDS = {
    "criterion_fn": "the loss is the training loop's own",
    "autoq_eval_fn": "there is no mixed-precision search",
    "model_eval_fn": "there is no accuracy-driven quantization search",
    "distributed_callbacks": "distributed() takes the process group",
    "execution_parameters": "initialisation runs on the model's device",
}  # fmt: skip


@dataclass
class InitArgs:
    """Objects registered by :func:`register_default_init_args`."""

    data_loader: Any
    criterion: Any = None
    device: str | None = None
    val_loader: Any = None
    validate_fn: Any = None
    train_steps_fn: Any = None
    legr_train_optimizer: Any = None


def register_default_init_args(config: Config | None = None, train_loader: Any = None,
                               criterion: Any = None,
                               device: str | None = None, *, val_loader: Any = None,
                               validate_fn: Any = None, train_steps_fn: Any = None,
                               legr_train_optimizer: Any = None, **nncf_keywords: Any,
                               ) -> Config:  # fmt: skip
    """Attach ``train_loader`` (and LeGR's search inputs) to ``config`` for initialisation.

    Args:
        config: The config (returned, with the arguments registered); a plain dict is
            read into a new :class:`~filterprune.Config`, so use the one returned.
        train_loader: Batches for BatchNorm adaptation and quantizer ranges, and the data
            ``train_steps_fn`` trains on; tensors or ``(inputs, targets)`` pairs, with
            ``inputs`` a tuple for a model of several inputs (``((image, depth), y)``).
        criterion: Kept for the old signature.
        device: Kept for the old signature.
        val_loader: Validation data of the LeGR search (``learned_ranking``).
        validate_fn: ``validate_fn(model, val_loader)`` -> a score, higher is better (or a
            tuple whose first item is the score): each LeGR candidate's reward.
        train_steps_fn: ``train_steps_fn(train_loader, model, optimizer, compression_ctrl,
            train_steps)``: fine-tunes a LeGR candidate for ``legr_params.train_steps`` steps
            before it is validated; without it candidates are validated as pruned.
        legr_train_optimizer: The optimizer ``train_steps_fn`` gets; default: SGD with
            learning rate 1e-3 and momentum 0.9 over the model's parameters. Its state is
            put back after each candidate.

    Raises:
        ConfigError: If ``train_loader`` or ``val_loader`` has length 0 (one without a length
            is checked when it is read).
        TypeError: If ``validate_fn`` or ``train_steps_fn`` is given but not callable, or
            for a keyword NNCF's function did not take either.
    """
    config = nncf_config_argument(config, nncf_keywords)
    check_nncf_keywords(nncf_keywords, _NNCF_KEYWORDS, "register_default_init_args",
                        ("criterion", "device", "val_loader", "validate_fn", "train_steps_fn",
                         "legr_train_optimizer"))  # fmt: skip
    check_not_empty(train_loader, "data_loader")
    if val_loader is not None:
        check_not_empty(val_loader, "val_loader", "the LeGR search")
    check_callable(validate_fn=validate_fn, train_steps_fn=train_steps_fn)
    config = config if isinstance(config, Config) else Config.from_dict(config)
    config.register_extra_structs([InitArgs(train_loader, criterion, device, val_loader,
                                            validate_fn, train_steps_fn, legr_train_optimizer)])
    return config


def model_inputs(batch: Any, device: Any, model: nn.Module | None = None) -> tuple[Any, ...]:
    """``forward``'s positional inputs in ``batch``, on ``device``: the inputs of an
    ``(inputs, targets)`` batch (:func:`batch_inputs`), several when they are a tuple
    or list (``((image, depth), target)`` for a model with two inputs), or the entries of
    a dict batch that name ``model.forward``'s arguments (:func:`_named`)."""
    x = _named(batch, model) if isinstance(batch, dict) and model is not None else None
    if x is None:
        x = batch_inputs(batch)
    return tuple(t.to(device) if torch.is_tensor(t) else t
                 for t in (x if isinstance(x, (list, tuple)) else (x,)))  # fmt: skip


def _named(batch: dict, model: nn.Module) -> tuple[Any, ...] | None:
    """The arguments of ``model.forward`` a dict batch names, in order up to the last one
    named, defaults between (``{"rgb", "depth", "label"}`` for ``forward(rgb, depth=None)``
    gives ``(rgb, depth)``); None where it does not name the first, or skips one without a
    default."""
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]  # fmt: skip
    except (TypeError, ValueError):
        return None
    named = [i for i, p in enumerate(params) if p.name in batch]
    if not params or not named or named[0] != 0:
        return None
    out = []
    for p in params[: named[-1] + 1]:
        if p.name not in batch and p.default is p.empty:
            return None
        out.append(batch[p.name] if p.name in batch else p.default)
    return tuple(out)


@contextlib.contextmanager
def own_arithmetic():
    """Turn off an autocast block the caller holds: statistics, ranges and exported files
    come from the model's own dtype, as it is deployed."""
    with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
        yield


@contextlib.contextmanager
def random_state_kept(model: nn.Module) -> Iterator[None]:
    """Put back the caller's random state (torch's, on the CPU and the model's GPUs, Python's
    and NumPy's) after a pass over their data: its sampler, workers' seeds and transforms
    draw from it, and a run should go on as one resumed from a checkpoint does."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    kept = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(kept[0])
        np.random.set_state(kept[1])


def adapt_batchnorm(model: nn.Module, loader: Any, num_samples: int) -> None:
    """Re-estimate BatchNorm running statistics on ``num_samples`` training samples.

    All or nothing: an empty loader is refused before any statistic changes, and when a
    batch fails midway every BatchNorm gets its statistics and momentum back.

    Raises:
        ConfigError: If ``loader`` yields no batch, or a batch fails in the model (the
            message names the batch and the cause).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns and num_samples > 0:
        with random_state_kept(model):
            _adapt(model, bns, loader, num_samples)


def _adapt(model: nn.Module, bns: list[nn.Module], loader: Any, num_samples: int) -> None:
    batches = nonempty_batches(loader, "data_loader")
    saved = [(m, m.momentum, {k: b.clone() for k, b in m._buffers.items() if b is not None})
             for m in bns]  # fmt: skip
    pruned = [(m, pruned_statistics(m)) for m in bns]  # before the reset
    was_training = model.training
    device = next(model.parameters()).device
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    model.train()
    seen, done, size = 0, 0, None  # samples and batches run; the size of the batch running
    try:
        with torch.no_grad(), own_arithmetic(), progress(total=num_samples,
                                                         desc="BN adaptation") as bar:
            for batch in batches:
                inputs = model_inputs(batch, device, model)
                size = int(inputs[0].shape[0]) if inputs[0].dim() else 1
                model(*inputs)
                bar.update(size)
                seen, done, size = seen + size, done + 1, None
                if seen >= num_samples:
                    break
    except BaseException as err:
        with torch.no_grad():
            for m, _, buffers in saved:
                for key, value in buffers.items():
                    m._buffers[key].copy_(value)
        if isinstance(err, Exception):
            raise adaptation_failed(err, "data_loader", done, size) from err
        raise
    finally:
        for m, momentum, _ in saved:
            m.momentum = momentum
        model.train(was_training)
    for m, statistics in pruned:  # pruned channels keep theirs, as in training
        restore_pruned_statistics(m, statistics)
