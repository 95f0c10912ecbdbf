"""Physically remove pruned channels: smaller weights, updated layer attributes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.flops import cut_signature
from ..core.graph import BARE_KINDS, LayerInfo
from ..core.weights import groups_left, slice_weight
from ..errors import AnalysisError
from ._ops import unflatten_free
from .masks import is_deform_conv

__all__ = ["shrink_model", "resize_to_state_dict"]

# layer kinds whose tensors lose channels
_CUT = ("conv", "linear", "batchnorm", "recurrent", *BARE_KINDS)


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in module._parameters:
        old = module._parameters[name]
        module._parameters[name] = nn.Parameter(_laid_out(value, old), old.requires_grad)
    else:
        module._buffers[name] = _laid_out(value, module._buffers[name])


def _share(model: nn.Module, old: torch.Tensor, new: torch.Tensor) -> None:
    """Put ``new`` wherever ``model`` still holds ``old`` (a tensor registered in several
    modules), so they keep sharing one tensor."""
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for key, value in table.items():
                if value is old:
                    table[key] = new


def _laid_out(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` contiguous in ``like``'s memory format (a channels-last model stays so)."""
    for layout, dims in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if like.dim() == dims and not like.is_contiguous() \
                and like.is_contiguous(memory_format=layout):  # fmt: skip
            return value.contiguous(memory_format=layout)
    return value.contiguous()


def _cut(tensor: torch.Tensor, roles, keep: dict[str, np.ndarray], groups: int) -> torch.Tensor:
    """``tensor`` cut as :func:`~filterprune.core.weights.slice_weight` cuts it.

    The core slices arrays of positions, so what stays is decided once for every
    frontend; the tensor is only gathered here, on its device and in its dtype (numpy
    has no bfloat16). Axes are probed one at a time, except a grouped weight's, where the
    columns a filter keeps depend on its group; other axes are size 1 in the probe, so it
    stays small even for a large Linear.
    """
    roles = tuple(roles) + (None,) * (tensor.dim() - len(roles))
    cut = [axis for axis, role in enumerate(roles) if role in keep]
    for axes in [cut] if groups > 1 else [[axis] for axis in cut]:
        probe = [n if axis in axes else 1 for axis, n in enumerate(tensor.shape)]
        kept = slice_weight(np.arange(math.prod(probe)).reshape(probe), roles, keep, groups)
        if kept.shape != tuple(probe):
            tensor = _gather(tensor, axes, kept)
    return tensor


def _gather(tensor: torch.Tensor, axes: list[int], kept: np.ndarray) -> torch.Tensor:
    """The entries of ``tensor`` at probe positions ``kept`` (flat indices over ``axes``)."""
    front = tuple(range(len(axes)))
    moved = tensor.movedim(axes, front)
    rest = moved.shape[len(axes):]
    index = torch.as_tensor(kept.reshape(-1), dtype=torch.long, device=tensor.device)
    picked = moved.reshape(-1, *rest)[index]
    return picked.reshape(*[kept.shape[axis] for axis in axes], *rest).movedim(front, axes)


def _tensors(model: nn.Module, name: str, info: LayerInfo, keep: dict[str, np.ndarray]):
    """``(owner, attribute, roles)`` for every tensor of layer ``name`` that may lose entries.

    Parameters take their roles from ``info``; a buffer shaped as the weight takes the
    weight's, and a 1-D buffer as long as the ``"channel"`` keep vector (BatchNorm's
    running statistics) is cut along it too.
    """
    if info.kind in BARE_KINDS:  # a bare tensor: ``name`` is its own dotted name
        owner_name, _, attr = name.rpartition(".")
        yield model.get_submodule(owner_name), attr, info.params[""][1]
        return
    module = model.get_submodule(name)
    for pname, (_, roles) in info.params.items():
        yield module, pname, roles
    if info.kind in ("conv", "linear") and info.weight in info.params:
        # a buffer shaped as the weight (PixelCNN's mask) is cut alike; the shape before
        # the cut, as the weight is replaced while this runs
        shape, roles = info.params[info.weight]
        for bname, buf in list(module._buffers.items()):
            if buf is not None and buf.dim() > 1 and tuple(buf.shape) == tuple(shape):
                yield module, bname, roles
    channels = keep.get("channel")
    if channels is None:
        return
    for bname, buf in module._buffers.items():
        if buf is not None and buf.dim() == 1 and buf.numel() == channels.size:
            yield module, bname, ("channel",)


def _shrink_layer(model: nn.Module, name: str, info: LayerInfo, keep: dict) -> None:
    for owner, attr, roles in _tensors(model, name, info, keep):
        tensor = getattr(owner, attr)
        if tensor is None:
            continue
        try:
            cut = _cut(tensor.data, roles, keep, info.groups)
        except ValueError as err:
            raise AnalysisError(f"{name}: cannot cut {attr!r}: {err}") from err
        if cut.shape != tensor.shape:
            _replace(owner, attr, cut)
            if info.kind in BARE_KINDS:  # one tensor under several names: all of them
                _share(model, tensor, getattr(owner, attr))
    if info.kind in BARE_KINDS:
        return
    module = model.get_submodule(name)
    channels = keep.get("channel")
    for size in ("num_features", "num_parameters"):  # norms without tensors keep no shape
        if channels is not None and hasattr(module, size):
            setattr(module, size, int(channels.sum()))
    if channels is not None and isinstance(module, nn.GroupNorm) and module.weight is None:
        _regroup(module, int(channels.sum()))
    _sync_attributes(module)


def _cut_quantizers(module: nn.Module, keep: dict[str, np.ndarray]) -> None:
    """Per-channel quantizers of a layer's weight and input keep the scales of its kept
    channels (its output's: :func:`cut_output_quantizers`)."""
    for name, child in module.named_children():
        role = getattr(child, "channel_role", None)
        if role in keep and name != "output_quantizer":
            child.select_channels(np.flatnonzero(keep[role]))


def cut_output_quantizers(model: nn.Module, kept_channels: Any) -> None:
    """Per-channel quantizers of a module's output (an add's operand) keep the scales of
    the channels the plan keeps of that tensor (``kept_channels(node, axis)``)."""
    for module in model.modules():
        q = module._modules.get("output_quantizer")
        if getattr(q, "axis", None) is None:
            continue
        keep = kept_channels(q.spec.target, q.axis)
        if keep is not None and not keep.all() and len(keep) == q.scale.shape[0]:
            q.select_channels(np.flatnonzero(keep))


def shrink_model(model: nn.Module, layer_keeps: dict, layer_infos: dict) -> nn.Module:
    """Cut every layer of ``model`` (in place) down to its kept channels. A parameter
    several modules hold stays one tensor among those that keep the same entries of it."""
    tied = _tied(model, layer_keeps, layer_infos)
    with torch.no_grad():
        for name, keep in layer_keeps.items():
            info = layer_infos.get(name)
            if info is None or info.kind not in _CUT or all(v.all() for v in keep.values()):
                continue
            _shrink_layer(model, name, info, keep)
            if info.kind in ("conv", "linear"):
                _cut_quantizers(model.get_submodule(name), keep)
    for module in model.modules():
        if isinstance(module, nn.Unflatten):
            _sync_attributes(module)
    for holders in tied:  # each list: holders of one tensor that cut it alike
        first = holders[0][0]._parameters[holders[0][1]]
        for module, key in holders[1:]:
            module._parameters[key] = first
    return model


def _tied(model: nn.Module, keeps: dict, infos: dict) -> list[list[tuple[nn.Module, str]]]:
    """``(module, name)`` of the holders of each parameter held under several names, one
    list per tensor and cut of it (:func:`~filterprune.core.flops.cut_signature`), the
    layer holders first. A module that is no layer (one keeping a list of weights) holds
    what the layers cut, where they all cut it alike."""
    modules = dict(model.named_modules())
    layers = {id(modules[n]): n for n, info in infos.items()
              if n in modules and info.kind not in BARE_KINDS}  # fmt: skip
    tensors: dict[int, dict[Any, list[tuple[nn.Module, str]]]] = {}
    for module in model.modules():
        for key, value in module._parameters.items():
            if value is None:
                continue
            name = layers.get(id(module))
            cut = "free" if name is None else cut_signature(
                infos[name].params.get(key, ((), ()))[1], keeps.get(name, {}), infos[name].groups)
            tensors.setdefault(id(value), {}).setdefault(cut, []).append((module, key))
    out = []
    for cuts in tensors.values():
        free = cuts.pop("free", [])
        if cuts and len(cuts) == 1:
            next(iter(cuts.values())).extend(free)
        else:
            cuts["free"] = free
        out += [h for h in cuts.values() if len(h) > 1]
    return out


def resize_to_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Reshape ``model``'s layers to the shapes saved in a shrunk ``state_dict``.

    Lets a user rebuild a pruned model from its architecture and saved weights. A layer
    that saves no tensor (a ``GroupNorm`` without affine parameters) keeps its sizes: save
    the whole module, or set them by hand.

    Example:
        >>> model = torchvision.models.resnet18()  # doctest: +SKIP
        >>> resize_to_state_dict(model, torch.load("pruned.pt"))  # doctest: +SKIP
    """
    _check_keys(model, state_dict)
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


def _check_keys(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse a ``state_dict`` whose keys are not ``model``'s before anything is resized."""
    own = set(model.state_dict())
    unexpected = [k for k in state_dict if k not in own]
    missing = [k for k in own if k not in state_dict]
    if not unexpected and not missing:
        return
    if any("_quantizer." in k for k in unexpected):
        raise ValueError(
            "`state_dict` must be a plain model's: it holds quantizer state "
            f"({next(k for k in unexpected if '_quantizer.' in k)}), so it was saved from a "
            "quantized strip, which a plain architecture cannot load. Save the training "
            "checkpoint (state_dict and compression_state) and rebuild with "
            "create_compressed_model(model, config, compression_state=...), or deploy the "
            "ONNX export. The model is unchanged."
        )
    computed = [k for k in missing if ".parametrizations." in k or k.endswith(
        ("weight_orig", "weight_g", "weight_v", "weight_u"))]  # fmt: skip
    hint = (" MODEL computes weights (spectral_norm, weight_norm or a parametrization, e.g. "
            f"{computed[0]}), which strip() writes in as plain weights: remove them from "
            "MODEL first (torch.nn.utils.parametrize.remove_parametrizations, "
            "remove_weight_norm, remove_spectral_norm).") if computed else ""
    raise ValueError(
        f"`state_dict` must have the keys of {type(model).__name__}'s state_dict. Received: "
        f"{len(unexpected)} unexpected ({', '.join(unexpected[:3]) or 'none'}) and "
        f"{len(missing)} missing ({', '.join(missing[:3]) or 'none'}).{hint} The model is "
        "unchanged."
    )


def _sync_attributes(module: nn.Module) -> None:
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # weight (in, out/groups, ...)
        w = module.weight
        if module.groups > 1 and module.groups == module.in_channels:
            module.groups = w.shape[0]  # depthwise: one group per remaining channel
        module.in_channels, module.out_channels = w.shape[0], w.shape[1] * module.groups
    elif isinstance(module, nn.modules.conv._ConvNd) or is_deform_conv(type(module)):
        w = module.weight
        if module.groups > 1 and module.groups == module.in_channels and w.shape[1] == 1:
            mult = module.out_channels // module.in_channels
            module.groups = w.shape[0] // mult  # depthwise: one group per remaining channel
        module.out_channels = w.shape[0]
        module.in_channels = w.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.RNNCellBase):
        module.input_size = module.weight_ih.shape[1]
    elif isinstance(module, nn.RNNBase):
        module.input_size = module.weight_ih_l0.shape[1]
        module._init_flat_weights()  # it runs on a list of its tensors: the new ones
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        ref = module.weight if module.weight is not None else module.running_mean
        if ref is not None:
            module.num_features = ref.shape[0]
    elif isinstance(module, nn.PReLU):
        module.num_parameters = module.weight.numel()
    elif isinstance(module, nn.GroupNorm) and module.weight is not None:
        _regroup(module, module.weight.shape[0])
    elif isinstance(module, nn.Unflatten) and unflatten_free(module) is not None:
        # its channel count follows the cut input (the analysis keeps the other sizes)
        sizes = list(module.unflattened_size)
        sizes[unflatten_free(module)] = -1
        module.unflattened_size = tuple(sizes)


def _regroup(module: nn.GroupNorm, channels: int) -> None:
    """A GroupNorm cut by whole groups: as many groups as are left, each as wide."""
    groups = groups_left("GroupNorm", channels, module.num_channels, module.num_groups)
    module.num_channels, module.num_groups = channels, groups
