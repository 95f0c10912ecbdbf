"""Masked layers: pruned filters read as zero while the stored weights are kept.

Each pruned module's class is swapped for a subclass whose forward multiplies
the weight by a mask buffer (``weight_mask``), so ``state_dict`` keeps its keys
(plus the masks), any optimizer works, gradients of pruned entries are zero, and
``torch.compile`` sees plain tensor math. Masks cover both sides of a layer:
its own pruned filters (rows) and the pruned channels it reads (columns), which
makes the masked model compute exactly what the shrunk model computes.

A parameter may also carry a quantizer, a child module named ``<param>_quantizer``
(see :func:`add_weight_quantizer`): it applies after the mask, so pruned filters stay
exactly zero in the quantized weight.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.weights import weight_mask

__all__ = ["apply_masks", "remove_masks", "is_masked", "add_weight_quantizer", "masked_param",
           "quantized_class"]

_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV_T_FN = {nn.ConvTranspose1d: F.conv_transpose1d, nn.ConvTranspose2d: F.conv_transpose2d,
              nn.ConvTranspose3d: F.conv_transpose3d}  # fmt: skip


def masked_param(module: nn.Module, name: str) -> torch.Tensor | None:
    """Parameter ``name`` of ``module`` with its mask applied (before any quantizer)."""
    p = getattr(module, name, None)
    if p is None:
        return None
    mask = module._buffers.get(f"{name}_mask")
    return p if mask is None else p * mask


def _m(module: nn.Module, name: str) -> torch.Tensor | None:
    p = masked_param(module, name)
    quantizer = module._modules.get(f"{name}_quantizer")
    return p if quantizer is None or p is None else quantizer(p)


class _MaskedConv:
    def forward(self, x):
        return self._conv_forward(x, _m(self, "weight"), _m(self, "bias"))


class _MaskedConvT:
    def forward(self, x, output_size=None):
        nk = self.weight.dim() - 2
        pad = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size,
                                   nk, self.dilation)  # fmt: skip
        fn = _CONV_T_FN[type(self).__mro__[2]]
        return fn(x, _m(self, "weight"), _m(self, "bias"), self.stride, self.padding, pad,
                  self.groups, self.dilation)  # fmt: skip


class _MaskedLinear:
    def forward(self, x):
        return F.linear(x, _m(self, "weight"), _m(self, "bias"))


class _MaskedChannels:
    """Per-channel layers (BatchNorm, PReLU): the output of a pruned channel is zero."""

    def forward(self, x):
        out = super().forward(x)
        mask = self._buffers.get("channel_mask")
        if mask is None:
            return out
        return out * mask.view((1, -1) + (1,) * (out.dim() - 2))


_SWAPPED: dict[tuple[type, str], type] = {}


def _masked_class(cls: type, prefix: str = "Masked") -> type:
    """The swapped class of ``cls``; ``prefix`` only names it (same forward)."""
    if (cls, prefix) not in _SWAPPED:
        if issubclass(cls, _CONV_T):
            mixin = _MaskedConvT
        elif issubclass(cls, nn.modules.conv._ConvNd):
            mixin = _MaskedConv
        elif issubclass(cls, nn.Linear):
            mixin = _MaskedLinear
        else:
            mixin = _MaskedChannels
        _SWAPPED[cls, prefix] = type(f"{prefix}{cls.__name__}", (mixin, cls),
                                     {"_filterprune_base": cls})  # fmt: skip
    return _SWAPPED[cls, prefix]


def quantized_class(module: nn.Module) -> type:
    """The class a layer with a weight quantizer (and maybe masks) runs as."""
    return _masked_class(getattr(type(module), "_filterprune_base", type(module)), "Quantized")


def add_weight_quantizer(module: nn.Module, quantizer: nn.Module) -> None:
    """Quantize ``module``'s weight after its mask with ``quantizer`` (a child module
    ``weight_quantizer``, so ``state_dict`` keeps the layer's keys and adds its own)."""
    module.add_module("weight_quantizer", quantizer)
    if not is_masked(module):
        module.__class__ = quantized_class(module)


def _has_quantizer(module: nn.Module) -> bool:
    return any(f"{name}_quantizer" in module._modules for name in module._parameters)


def is_masked(module: nn.Module) -> bool:
    return hasattr(type(module), "_filterprune_base")


def apply_masks(model: nn.Module, layer_keeps: dict, layer_infos: dict, bn: bool = True) -> None:
    """Install or update masks on ``model`` for every layer that loses something."""
    modules = dict(model.named_modules())
    for name, keep in layer_keeps.items():
        module = modules.get(name)
        info = layer_infos.get(name)
        if module is None or info is None or info.kind not in ("conv", "linear", "batchnorm"):
            continue
        if info.kind == "batchnorm" and not bn:
            keep = {}
        if not is_masked(module):
            module.__class__ = _masked_class(type(module))
        if info.kind == "batchnorm":
            vec = keep.get("channel")
            _set_buffer(module, "channel_mask", None if vec is None else vec.astype(np.float32))
            continue
        for pname, (shape, roles) in info.params.items():
            mask = weight_mask(shape, roles, keep, info.groups)
            _set_buffer(module, f"{pname}_mask", mask)


def _set_buffer(module: nn.Module, name: str, value: np.ndarray | None) -> None:
    ref = next(iter(module.parameters()), None)
    if value is None:
        value = np.ones(1, np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(value))
    if ref is not None:
        tensor = tensor.to(device=ref.device, dtype=ref.dtype)
    old = module._buffers.get(name)
    if old is not None and old.shape == tensor.shape:
        old.copy_(tensor)
    else:
        module.register_buffer(name, tensor)


def remove_masks(model: nn.Module, bake: bool) -> None:
    """Restore plain module classes; with ``bake`` the masked weights are written in."""
    for module in model.modules():
        if not is_masked(module):
            continue
        with torch.no_grad():
            for key in [k for k in module._buffers if k.endswith("_mask")]:
                mask = module._buffers.pop(key)
                pname = key[: -len("_mask")]
                if bake and pname != "channel":
                    getattr(module, pname).mul_(mask)
                elif bake:
                    for p in ("weight", "bias"):
                        if getattr(module, p, None) is not None:
                            getattr(module, p).mul_(mask)
        # a layer whose weight is quantized keeps the forward that applies the quantizer
        base = type(module)._filterprune_base
        module.__class__ = quantized_class(module) if _has_quantizer(module) else base
