"""Copying a model whose weights are computed by forward pre-hooks.

``nn.utils.weight_norm`` and ``spectral_norm`` set ``module.weight`` in a hook before each
forward; after a forward with gradients it is a non-leaf tensor, which ``copy.deepcopy``
refuses. Recomputing it without gradients first (eval mode, so spectral norm's power
iteration does not step) gives the same values as a plain tensor.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

__all__ = ["detach_computed_weights", "copy_model"]


def detach_computed_weights(model: nn.Module) -> None:
    """Recompute every hook-computed weight of ``model`` without gradients."""
    for module in model.modules():
        hooks = [h for h in module._forward_pre_hooks.values()
                 if isinstance(h, (WeightNorm, SpectralNorm))]  # fmt: skip
        if not hooks:
            continue
        training = module.training
        module.eval()
        try:
            with torch.no_grad():
                for hook in hooks:
                    hook(module, ())
        finally:
            module.train(training)


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also after a training step of a weight-normed model."""
    detach_computed_weights(model)
    return copy.deepcopy(model)
