"""Data the algorithms need at creation: the loader for BatchNorm adaptation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._batches import adaptation_failed, batch_inputs, check_not_empty, nonempty_batches
from ..core.config import Config
from ..progress import progress

__all__ = ["InitArgs", "register_default_init_args", "adapt_batchnorm"]


@dataclass
class InitArgs:
    """Objects registered by :func:`register_default_init_args`."""

    data_loader: Any
    criterion: Any = None
    device: str | None = None


def register_default_init_args(config: Config, train_loader: Any, criterion: Any = None,
                               device: str | None = None, **_: Any) -> Config:  # fmt: skip
    """Attach ``train_loader`` to ``config`` for initialisation (BN adaptation).

    Batches may be tensors or ``(inputs, targets)`` pairs. Returns ``config``.

    Raises:
        ConfigError: If ``train_loader`` has length 0 (one without a length is checked
            when BatchNorm adaptation reads it, before any statistic changes).
    """
    check_not_empty(train_loader, "data_loader")
    config.register_extra_structs([InitArgs(train_loader, criterion, device)])
    return config


def adapt_batchnorm(model: nn.Module, loader: Any, num_samples: int) -> None:
    """Re-estimate BatchNorm running statistics on ``num_samples`` training samples.

    All or nothing: an empty loader is refused before any statistic changes, and when a
    batch fails midway every BatchNorm gets its statistics and momentum back.

    Raises:
        ConfigError: If ``loader`` yields no batch, or a batch fails in the model (the
            message names the batch and the cause).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or num_samples <= 0:
        return
    batches = nonempty_batches(loader, "data_loader")
    saved = [(m, m.momentum, {k: b.clone() for k, b in m._buffers.items() if b is not None})
             for m in bns]  # fmt: skip
    was_training = model.training
    device = next(model.parameters()).device
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    model.train()
    seen, done, size = 0, 0, None  # samples and batches run; the size of the batch running
    try:
        with torch.no_grad(), progress(total=num_samples, desc="BN adaptation") as bar:
            for batch in batches:
                x = batch_inputs(batch).to(device)
                size = int(x.shape[0]) if x.dim() else 1
                model(x)
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
