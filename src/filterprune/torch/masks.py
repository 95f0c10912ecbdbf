"""Masked layers: pruned filters read as zero while the stored weights are kept.

Each pruned module's class is swapped for a subclass whose forward reads the weight
through a mask buffer (``weight_mask``: pruned entries read as exactly 0, even NaN ones,
as in the shrunk model), so ``state_dict`` keeps its keys
(plus the masks), any optimizer works, gradients of pruned entries are zero, and
``torch.compile`` sees plain tensor math. Masks cover both sides of a layer:
its own pruned filters (rows) and the pruned channels it reads (columns), which
makes the masked model compute exactly what the shrunk model computes.

A parameter may also carry a quantizer, a child module named ``<param>_quantizer``
(see :func:`add_weight_quantizer`): it applies after the mask, so pruned filters stay
exactly zero in the quantized weight.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.weights import weight_mask
from ..errors import ConfigError
from ._transformer import guard_fast_paths

try:  # torchvision is optional
    from torchvision.ops import DeformConv2d, deform_conv2d
except ImportError:
    DeformConv2d = deform_conv2d = None

__all__ = ["apply_masks", "remove_masks", "is_masked", "add_weight_quantizer", "masked_param",
           "quantized_class", "keeps_own_forward", "masks_channels", "pruned_statistics",
           "restore_pruned_statistics"]

_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV_T_FN = {nn.ConvTranspose1d: F.conv_transpose1d, nn.ConvTranspose2d: F.conv_transpose2d,
              nn.ConvTranspose3d: F.conv_transpose3d}  # fmt: skip


def live(mask: torch.Tensor) -> torch.Tensor:
    """The entries ``mask`` keeps: its ones, to within rounding. An EMA that averages every
    entry of a state_dict (timm's) makes a mask the model has just cleared 0.999...: that
    filter is pruned in the EMA at once, as it is in the model."""
    return mask > 1 - 4 * torch.finfo(mask.dtype).eps


def _keep(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``value`` where ``mask`` keeps it, else exactly 0: unlike ``value * mask``, a NaN or
    infinity in a pruned entry reads as 0, as it does once the entry is removed."""
    return torch.where(live(mask), value, torch.zeros((), dtype=value.dtype, device=value.device))


def masked_param(module: nn.Module, name: str) -> torch.Tensor | None:
    """Parameter ``name`` of ``module`` with its mask applied (before any quantizer)."""
    return _masked(module, name, getattr(module, name, None))


def _masked(module: nn.Module, name: str, p: torch.Tensor | None) -> torch.Tensor | None:
    mask = module._buffers.get(f"{name}_mask")
    return p if mask is None or p is None else _keep(p, mask)


def _quantized(module: nn.Module, name: str, p: torch.Tensor | None) -> torch.Tensor | None:
    quantizer = module._modules.get(f"{name}_quantizer")
    return p if quantizer is None or p is None else quantizer(p)


def _m(module: nn.Module, name: str) -> torch.Tensor | None:
    return _quantized(module, name, masked_param(module, name))


class _MaskState:
    """Loading a ``state_dict`` keeps the masks the controller put in place: averaged masks
    (an EMA or ``AveragedModel`` of the training model) are not 0/1 and would keep pruned
    filters running; other 0/1 masks mean another pruning level, which only the saved
    compression state can bring back."""

    def __reduce_ex__(self, protocol):
        # the swapped class is made at run time, so pickle cannot find it by name: rebuild
        # it from the layer's own class (torch.save of a whole model, multiprocessing)
        cls = type(self)
        return _unpickle_swapped, (cls._filterprune_base, cls._filterprune_prefix,
                                   cls._filterprune_channels), self.__getstate__()  # fmt: skip

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, mask in self._buffers.items():
            key = prefix + name
            if name.endswith("_mask") and mask is not None and key in state_dict:
                state_dict[key] = _loaded_mask(key, state_dict[key], mask)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _unpickle_swapped(base: type, prefix: str, channels: bool | None = None) -> nn.Module:
    """An empty instance of the swapped class of ``base`` (pickle then sets its state)."""
    module = base.__new__(base)
    module.__class__ = _masked_class(base, prefix, channels)
    return module


def _loaded_mask(key: str, loaded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    loaded = loaded.detach()
    if loaded.shape != mask.shape or torch.equal(loaded.to(mask), mask):
        return loaded  # a shape error is load_state_dict's own to report
    if not bool(((loaded == 0) | (loaded == 1)).all()):
        warnings.warn(  # said once: every masked layer of the state_dict would repeat it
            "The state_dict's pruning masks are not 0/1 (averaged, as by an EMA or "
            "AveragedModel): the model keeps its own masks; only the weights were loaded. "
            "(A state saved at another pruning level loads into a model made with "
            "create_compressed_model(..., compression_state=...).)", stacklevel=2)
        return mask.clone()
    raise ConfigError(
        f"`{key}` in the state_dict prunes other channels than this model does: it was saved "
        "at another pruning level. Create the model with create_compressed_model(model, "
        "config, compression_state=<the state saved with it>) before load_state_dict, or "
        "load only the weights: drop the keys ending in '_mask' and pass strict=False."
    )


class _MaskedConv(_MaskState):
    def forward(self, x):
        return self._conv_forward(x, _m(self, "weight"), _m(self, "bias"))


class _MaskedConvT(_MaskState):
    def forward(self, x, output_size=None):
        nk = self.weight.dim() - 2
        pad = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size,
                                   nk, self.dilation)  # fmt: skip
        fn = next(_CONV_T_FN[c] for c in type(self).__mro__ if c in _CONV_T_FN)
        return fn(x, _m(self, "weight"), _m(self, "bias"), self.stride, self.padding, pad,
                  self.groups, self.dilation)  # fmt: skip


class _MaskedLinear(_MaskState):
    def forward(self, x):
        return F.linear(x, _m(self, "weight"), _m(self, "bias"))


class _MaskedDeformConv(_MaskState):
    def forward(self, input, offset, mask=None):
        return deform_conv2d(input, offset, _m(self, "weight"), _m(self, "bias"),
                             stride=self.stride, padding=self.padding, dilation=self.dilation,
                             mask=mask)  # fmt: skip


_RUNNING = threading.local()  # per thread: id of each own-forward layer in its forward


def _running() -> dict[int, int]:
    if not hasattr(_RUNNING, "ids"):
        _RUNNING.ids = {}
    return _RUNNING.ids


class _MaskedOwnForward(_MaskState):
    """A conv or linear layer whose class runs its own forward around the torch one (a
    padding before ``F.conv2d``: efficientnet_pytorch's ``Conv2dStaticSamePadding``,
    timm's ``Conv2dSame``), or a module of the user's own that passes its own ``weight``
    and ``bias`` to ``F.conv2d`` or ``F.linear``: that forward runs, and while it does, in
    its thread, the class's ``weight`` and ``bias`` properties read masked (and
    quantized)."""

    def forward(self, *args, **kwargs):
        running, key = _running(), id(self)
        running[key] = running.get(key, 0) + 1
        try:
            return super().forward(*args, **kwargs)
        finally:
            running[key] -= 1
            if not running[key]:
                del running[key]


def _shadowing(name: str) -> property:
    """``name`` as the forward of a :class:`_MaskedOwnForward` layer reads it: masked and
    quantized inside that forward (in that thread only), as stored elsewhere. A value set
    as a plain attribute (a weight-norm hook's computed weight) lives in the instance's
    ``__dict__``, as it would without the property."""

    def get(self):
        raw = self.__dict__[name] if name in self.__dict__ else nn.Module.__getattr__(self, name)
        if id(self) not in _running():
            return raw
        return _quantized(self, name, _masked(self, name, raw))

    def put(self, value):
        self.__dict__[name] = value

    def drop(self):
        del self.__dict__[name]

    return property(get, put, drop)


class _MaskedChannels(_MaskState):
    """Per-channel layers (BatchNorm, PReLU): the output of a pruned channel is zero, and a
    BatchNorm keeps the running statistics a pruned channel had when it was pruned (its
    input is zero, which would drive them to 0 and 0, and a channel that comes back at a
    lower level, as in accuracy-aware training, would be divided by ``sqrt(eps)``)."""

    def forward(self, x, *args, **kwargs):
        mask = self._buffers.get("channel_mask")
        if mask is None:
            return super().forward(x, *args, **kwargs)
        saved = pruned_statistics(self) if self.training else {}
        out = super().forward(x, *args, **kwargs)
        restore_pruned_statistics(self, saved)
        return _keep(out, mask.view((1, -1) + (1,) * (out.dim() - 2)))


def pruned_statistics(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of a masked BatchNorm's running statistics (``{}`` for a layer without them or
    without a channel mask)."""
    saved: dict[str, torch.Tensor] = {}
    if module._buffers.get("channel_mask") is None:
        return saved
    for key in ("running_mean", "running_var"):  # a loop: torch.compile traces it whole
        buffer = module._buffers.get(key)
        if buffer is not None:
            saved[key] = buffer.clone()
    return saved


def restore_pruned_statistics(module: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put ``saved`` back in the pruned channels of ``module`` (the live ones keep theirs)."""
    if not saved:
        return
    kept = live(module._buffers["channel_mask"])
    with torch.no_grad():
        for key, old in saved.items():
            # through .data: training-mode BatchNorm saves the running statistics for its
            # backward without reading them, and a tracked write would fail that backward
            buffer = module._buffers[key].data
            buffer.copy_(torch.where(kept, buffer, old))


_SWAPPED: dict[tuple[type, str, bool], type] = {}
# torch layers that scale or normalise each channel on its own (their rule is "batchnorm")
_CHANNEL_LAYERS: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.PReLU, nn.GroupNorm)
if DeformConv2d is not None:
    from torchvision.ops import FrozenBatchNorm2d

    _CHANNEL_LAYERS += (FrozenBatchNorm2d,)


def _masked_class(cls: type, prefix: str = "Masked", channels: bool | None = None) -> type:
    """The swapped class of ``cls``; ``prefix`` only names it (same forward). ``channels``:
    the layer scales or normalises each channel on its own (a BatchNorm, or a module of the
    user's own passing its parameters to ``F.batch_norm``); ``None``: as ``cls`` says."""
    if channels is None:
        channels = issubclass(cls, _CHANNEL_LAYERS)
    if (cls, prefix, channels) not in _SWAPPED:
        if channels:
            mixin = _MaskedChannels
        elif keeps_own_forward(cls) or not _torch_layer(cls):
            mixin = _MaskedOwnForward
        elif issubclass(cls, _CONV_T):
            mixin = _MaskedConvT
        elif issubclass(cls, nn.modules.conv._ConvNd):
            mixin = _MaskedConv
        elif issubclass(cls, nn.Linear):
            mixin = _MaskedLinear
        else:
            mixin = _MaskedDeformConv
        attrs = {"_filterprune_base": cls, "_filterprune_prefix": prefix,
                 "_filterprune_channels": channels}  # fmt: skip
        if mixin is _MaskedOwnForward:
            attrs.update({n: _shadowing(n) for n in ("weight", "bias")})
        _SWAPPED[cls, prefix, channels] = type(f"{prefix}{cls.__name__}", (mixin, cls), attrs)
    return _SWAPPED[cls, prefix, channels]


def masks_channels(cls: type) -> bool:
    """Whether the masks of a ``cls`` layer zero axis 1 of its output (a BatchNorm,
    PReLU or GroupNorm, whatever its own forward computes around the torch one)."""
    return issubclass(cls, _CHANNEL_LAYERS)


def _torch_layer(cls: type) -> bool:
    """A conv, linear or deformable conv class (a module of the user's own is not)."""
    return issubclass(cls, (nn.modules.conv._ConvNd, nn.Linear)) or is_deform_conv(cls)


def is_deform_conv(cls: type) -> bool:
    """torchvision's DeformConv2d (torchvision is optional)."""
    return DeformConv2d is not None and issubclass(cls, DeformConv2d)


def keeps_own_forward(cls: type) -> bool:
    """Whether masks run the forward of a conv or linear class ``cls`` that is not its
    torch class's own (else they run the torch class's forward). Not where a
    parametrization computes the weight: a class property the masked value cannot
    shadow."""
    if not issubclass(cls, (nn.modules.conv._ConvNd, nn.Linear)):
        return False
    return overrides_forward(cls) and not any(
        isinstance(getattr(cls, n, None), property) for n in ("weight", "bias"))


def overrides_forward(cls: type) -> bool:
    """Whether a subclass of a torch layer runs a forward of its own."""
    base = next(c for c in cls.__mro__ if c.__module__.startswith("torch.nn.modules"))
    return cls.forward is not base.forward


def quantized_class(module: nn.Module) -> type:
    """The class a layer with a weight quantizer (and maybe masks) runs as."""
    cls = type(module)
    return _masked_class(getattr(cls, "_filterprune_base", cls), "Quantized",
                         getattr(cls, "_filterprune_channels", None))  # fmt: skip


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
            module.__class__ = _masked_class(type(module), channels=info.kind == "batchnorm")
        if info.kind == "batchnorm":
            vec = keep.get("channel")
            _set_buffer(module, "channel_mask", None if vec is None else vec.astype(np.float32))
            continue
        for pname, (shape, roles) in info.params.items():
            mask = weight_mask(shape, roles, keep, info.groups)
            _set_buffer(module, f"{pname}_mask", mask)
    guard_fast_paths(model, is_masked)


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
    """Restore plain module classes; with ``bake`` the masked weights are written in.

    Baking gives every layer what its masked forward read: a pruned entry becomes exactly
    0 (NaN included), a pruned BatchNorm channel gets statistics 0 and 1, and a parameter
    shared by several layers (tied weights) is untied, each layer getting its own masked
    copy, since one tensor cannot hold two layers' masks.
    """
    shared = _shared_parameters(model)
    for module in model.modules():
        if not is_masked(module):
            continue
        with torch.no_grad():
            for key in [k for k in module._buffers if k.endswith("_mask")]:
                mask = module._buffers.pop(key)
                if bake:
                    _bake(module, key[: -len("_mask")], mask, shared)
        # a layer whose weight is quantized keeps the forward that applies the quantizer
        base = type(module)._filterprune_base
        module.__class__ = quantized_class(module) if _has_quantizer(module) else base
    guard_fast_paths(model, is_masked)


def _shared_parameters(model: nn.Module) -> set[int]:
    """Ids of the parameters that more than one (layer, name) uses."""
    users: dict[int, int] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                users[id(p)] = users.get(id(p), 0) + 1
    return {pid for pid, count in users.items() if count > 1}


def _bake(module: nn.Module, name: str, mask: torch.Tensor, shared: set[int]) -> None:
    names = ("weight", "bias") if name == "channel" else (name,)
    for pname in names:
        p = getattr(module, pname, None)
        if p is None:
            continue
        if id(p) in shared:
            setattr(module, pname, nn.Parameter(_keep(p, mask), requires_grad=p.requires_grad))
        else:
            p.copy_(_keep(p, mask))
    if name == "channel" and getattr(module, "running_var", None) is not None:
        module.running_mean.copy_(_keep(module.running_mean, mask))
        module.running_var.copy_(torch.where(live(mask), module.running_var, 1.0))
