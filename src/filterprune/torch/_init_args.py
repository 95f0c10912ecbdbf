"""Data the algorithms need at creation: the loader for BatchNorm adaptation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._batches import batch_inputs
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
    """
    config.register_extra_structs([InitArgs(train_loader, criterion, device)])
    return config


def adapt_batchnorm(model: nn.Module, loader: Any, num_samples: int) -> None:
    """Re-estimate BatchNorm running statistics on ``num_samples`` training samples."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or num_samples <= 0:
        return
    saved = [(m, m.momentum) for m in bns]
    was_training = model.training
    device = next(model.parameters()).device
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    model.train()
    seen = 0
    try:
        with torch.no_grad(), progress(total=num_samples, desc="BN adaptation") as bar:
            for batch in loader:
                x = batch_inputs(batch).to(device)
                model(x)
                seen += int(x.shape[0])
                bar.update(int(x.shape[0]))
                if seen >= num_samples:
                    break
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
