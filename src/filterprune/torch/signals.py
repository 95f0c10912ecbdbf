"""PyTorch signals for the ``taylor`` and ``bn_scale`` importances.

:class:`TaylorAccumulator` hooks each producer's weight: every backward pass adds
``(sum over a filter of gradient x weight)^2`` to a per-filter total (Molchanov et al.
2019). Masked filters get zero gradient, so once pruned they stop gaining. Before any
backward pass (the masks put in place at creation) the totals are empty and the
weight's L1 norm stands in, so ``pruning_init`` > 0 still picks sensible filters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.signals import batchnorm_scales, taylor_scores

__all__ = ["TaylorAccumulator", "torch_signal"]


def _filter_axis(module: nn.Module) -> int:
    return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0


class TaylorAccumulator:
    """Per-filter ``(sum g*w)^2`` of each hooked layer, summed over backward passes.

    Args:
        modules: Layer name -> module whose ``weight`` is hooked.
    """

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.totals: dict[str, torch.Tensor] = {}
        self._handles = [m.weight.register_hook(self._hook(name, m)) for name, m in modules.items()]

    def _hook(self, name: str, module: nn.Module):
        axis = _filter_axis(module)

        def add(grad: torch.Tensor) -> None:
            with torch.no_grad():
                per_filter = (grad * module.weight).transpose(0, axis).flatten(1).sum(1)
                score = per_filter.float().pow(2)
                if name in self.totals:
                    self.totals[name] += score
                else:
                    self.totals[name] = score.clone()

        return add

    def scores(self, name: str) -> np.ndarray | None:
        """The totals of layer ``name`` as ``(filters, 1)``; None before any backward pass."""
        total = self.totals.get(name)
        return None if total is None else total.detach().cpu().double().numpy()[:, None]

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _taylor(ctrl: Any, layers: list[str]) -> dict[str, np.ndarray]:
    refs = ctrl.captured.refs
    acc = getattr(ctrl, "taylor", None)
    if acc is None:
        acc = ctrl.taylor = TaylorAccumulator({name: refs[name] for name in layers})
    return taylor_scores({name: acc.scores(name) for name in layers}, ctrl._weights)


def torch_signal(ctrl: Any, source: str) -> dict[str, np.ndarray]:
    """Per producer layer of ``ctrl``, the ``(filters, 1)`` signal ``source`` names."""
    layers = [name for g in ctrl.analysis.prunable_groups for name in g.producers]
    if source == "gradient":
        return _taylor(ctrl, layers)
    refs = ctrl.captured.refs
    return batchnorm_scales(ctrl.analysis.graph, layers,
                            lambda bn, p: getattr(refs[bn], p).detach().float().cpu().numpy())
