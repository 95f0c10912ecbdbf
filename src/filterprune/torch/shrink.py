"""Physically remove pruned channels: smaller weights, updated layer attributes."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import AnalysisError

__all__ = ["shrink_model", "resize_to_state_dict"]


def _index(vec: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(np.flatnonzero(vec), dtype=torch.long, device=device)


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in module._parameters:
        old = module._parameters[name]
        module._parameters[name] = nn.Parameter(value.contiguous(), old.requires_grad)
    else:
        module._buffers[name] = value.contiguous()


def _shrink_conv(module: nn.Module, name: str, keep: dict[str, np.ndarray]) -> None:
    w = module.weight.data
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    out_axis, in_axis = (1, 0) if transposed else (0, 1)
    cin, cout, groups = module.in_channels, module.out_channels, module.groups
    k_out = keep.get("out", np.ones(cout, bool))
    k_in = keep.get("in", np.ones(cin, bool))
    if groups == 1:
        w = w.index_select(out_axis, _index(k_out, w.device))
        w = w.index_select(in_axis, _index(k_in, w.device))
        new_groups = 1
    else:
        block = np.arange(cout) // (cout // groups)
        per_block = k_in.reshape(groups, -1)
        cols = [np.flatnonzero(per_block[b]) for b in block[k_out]]
        if len({c.size for c in cols}) > 1:
            raise AnalysisError(f"{name}: pruned channels are uneven across its groups")
        rows = _index(k_out, w.device)
        col_idx = torch.as_tensor(np.stack(cols), dtype=torch.long, device=w.device)
        w = w[rows[:, None], col_idx]
        depthwise = groups == cin
        new_groups = int(k_in.sum()) if depthwise else groups
    _replace(module, "weight", w)
    if module.bias is not None:
        _replace(module, "bias", module.bias.data[_index(k_out, w.device)])
    module.in_channels, module.out_channels = int(k_in.sum()), int(k_out.sum())
    module.groups = new_groups


def _shrink_linear(module: nn.Linear, name: str, keep: dict[str, np.ndarray]) -> None:
    w = module.weight.data
    k_out = keep.get("out", np.ones(module.out_features, bool))
    k_in = keep.get("in", np.ones(module.in_features, bool))
    w = w.index_select(0, _index(k_out, w.device)).index_select(1, _index(k_in, w.device))
    _replace(module, "weight", w)
    if module.bias is not None:
        _replace(module, "bias", module.bias.data[_index(k_out, w.device)])
    module.in_features, module.out_features = int(k_in.sum()), int(k_out.sum())


def _shrink_channels(module: nn.Module, name: str, keep: dict[str, np.ndarray]) -> None:
    vec = keep.get("channel")
    if vec is None:
        return
    for pname, t in list(module._parameters.items()) + list(module._buffers.items()):
        if t is not None and t.dim() == 1 and t.numel() == vec.size:
            _replace(module, pname, t.data[_index(vec, t.device)])
    for attr in ("num_features", "num_parameters"):
        if hasattr(module, attr):
            setattr(module, attr, int(vec.sum()))


def _shrink_param(model: nn.Module, name: str, keep: dict[str, np.ndarray]) -> None:
    owner_name, _, pname = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    t = getattr(owner, pname).data
    for role, vec in keep.items():
        axis = int(role[4:])
        if vec.size == t.shape[axis] and not vec.all():
            t = t.index_select(axis, _index(vec, t.device))
    _replace(owner, pname, t)


def _cut_quantizers(module: nn.Module, keep: dict[str, np.ndarray]) -> None:
    """Per-channel quantizers attached to a layer keep the scales of its kept channels."""
    for child in module.children():
        role = getattr(child, "channel_role", None)
        if role in keep:
            child.select_channels(np.flatnonzero(keep[role]))


def shrink_model(model: nn.Module, layer_keeps: dict, layer_infos: dict) -> nn.Module:
    """Cut every layer of ``model`` (in place) down to its kept channels."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, keep in layer_keeps.items():
            if all(v.all() for v in keep.values()):
                continue
            info = layer_infos.get(name)
            kind = info.kind if info else None
            if kind == "conv":
                _shrink_conv(modules[name], name, keep)
            elif kind == "linear":
                _shrink_linear(modules[name], name, keep)
            if kind in ("conv", "linear"):
                _cut_quantizers(modules[name], keep)
            elif kind == "batchnorm":
                _shrink_channels(modules[name], name, keep)
            elif kind == "param":
                _shrink_param(model, name, keep)
    return model


def resize_to_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Reshape ``model``'s layers to the shapes saved in a shrunk ``state_dict``.

    Lets a user rebuild a pruned model from its architecture and saved weights:

    Example:
        >>> model = torchvision.models.resnet18()  # doctest: +SKIP
        >>> resize_to_state_dict(model, torch.load("pruned.pt"))  # doctest: +SKIP
    """
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, value in state_dict.items():
            owner_name, _, pname = key.rpartition(".")
            owner = modules.get(owner_name)
            current = getattr(owner, pname, None) if owner is not None else None
            if isinstance(current, torch.Tensor) and current.shape != value.shape:
                _replace(owner, pname, torch.empty_like(value, device=current.device))
        for module in modules.values():
            _sync_attributes(module)
    model.load_state_dict(state_dict)
    return model


def _sync_attributes(module: nn.Module) -> None:
    if isinstance(module, nn.modules.conv._ConvNd):
        w = module.weight
        transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
        out_c = w.shape[1] * module.groups if transposed else w.shape[0]
        per_group_in = w.shape[0] if transposed else w.shape[1]
        if module.groups > 1 and module.groups == module.in_channels and per_group_in == 1:
            mult = module.out_channels // module.in_channels
            module.groups = out_c // mult  # depthwise: one group per remaining channel
        module.out_channels = out_c
        module.in_channels = per_group_in * module.groups if not transposed else w.shape[0]
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        ref = module.weight if module.weight is not None else module.running_mean
        if ref is not None:
            module.num_features = ref.shape[0]
    elif isinstance(module, nn.PReLU):
        module.num_parameters = module.weight.numel()
