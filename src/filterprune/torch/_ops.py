"""The PyTorch op table: which core rule each module type, function and method uses.

Adding support for an op is one entry here. A module type maps to a builder that
returns the rule kind, its attributes and the layer facts; functions and tensor
methods map to a builder that reads their call arguments.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.experimental.proxy_tensor import make_fx

from ..core.graph import LayerInfo
from ._copy import computed_weights
from ._sizes import UNPOOL_FUNCS, UNPOOL_MODULES, reshape_sizes
from ._writes import SHAPED_AS

__all__ = ["MODULE_RULES", "CALL_RULES", "call_rule", "IDENTITY_MODULES", "LEAF_MODULES",
           "FUNCTIONAL", "Functional", "module_rule", "probe_forwards"]

Spec = tuple[str, dict[str, Any]]

IDENTITY_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, nn.RReLU, nn.Hardshrink, nn.Softshrink, nn.Tanhshrink, nn.Softsign,
    nn.LogSigmoid, nn.Threshold,
)  # fmt: skip
# ops over the last 1, 2 or 3 axes (``None``: every axis after the channels)
SPATIAL_MODULES: dict[type[nn.Module], int | None] = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
    nn.AvgPool3d: 3, nn.LPPool1d: 1, nn.LPPool2d: 2, nn.LPPool3d: 3, nn.AdaptiveAvgPool1d: 1,
    nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3, nn.AdaptiveMaxPool1d: 1,
    nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.Upsample: None,
}  # fmt: skip
_ADAPTIVE_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                     nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_PAD = {nn.ZeroPad1d: "constant", nn.ZeroPad2d: "constant", nn.ZeroPad3d: "constant",
        nn.ConstantPad1d: "constant", nn.ConstantPad2d: "constant", nn.ConstantPad3d: "constant",
        nn.ReflectionPad1d: "reflect", nn.ReflectionPad2d: "reflect",
        nn.ReflectionPad3d: "reflect", nn.ReplicationPad1d: "replicate",
        nn.ReplicationPad2d: "replicate", nn.ReplicationPad3d: "replicate",
        nn.CircularPad1d: "circular", nn.CircularPad2d: "circular",
        nn.CircularPad3d: "circular"}  # fmt: skip

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_IN = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _params(m: nn.Module, roles: dict[str, tuple[str | None, ...]],
            only: set[str] | None = None) -> dict:  # fmt: skip
    """Parameter name -> (shape, roles). A weight computed from other parameters
    (``weight_norm``, ``spectral_norm``, a parametrization) is listed as the weight, and
    the parameters it is computed from are not: a strip writes it in (:mod:`._copy`).
    ``only``: list only these (the ones a call passes; the module's others are its own)."""
    computed = computed_weights(m)
    sources = {n for names in computed.values() for n in names}
    out = {}
    for name, p in m.named_parameters(recurse=False):
        if name not in sources:
            out[name] = (tuple(p.shape), roles.get(name, (None,) * p.dim()))
    for name in computed:
        value = getattr(m, name)
        out[name] = (tuple(value.shape), roles.get(name, (None,) * value.dim()))
    if only is not None:
        out = {n: v for n, v in out.items() if n in only}
    ordered = {n: out[n] for n in roles if n in out}  # the weight first, as declared
    return {**ordered, **{n: v for n, v in out.items() if n not in ordered}}


def _conv(m: nn.Module, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    return conv_layer(m, name, in_shape, out_shape, channels=(m.in_channels, m.out_channels),
                      groups=m.groups, stride=max(m.stride), transposed=isinstance(m, _CONV_T))


def conv_layer(m: nn.Module, name: str, in_shape, out_shape, channels: tuple[int, int],
               groups: int, stride: int, transposed: bool,
               only: set[str] | None = None) -> tuple[Spec, LayerInfo]:  # fmt: skip
    """A convolution by ``m``'s ``weight`` and ``bias``: a torch conv, or a module that
    passes them to ``F.conv2d`` in its own forward (``only``: the parameters it passes).
    ``channels``: (in, out)."""
    nk = m.weight.dim() - 2
    w_roles = ("in", "out") if transposed else ("out", "in")
    params = _params(m, {"weight": w_roles + (None,) * nk, "bias": ("out",)}, only)
    spatial = in_shape[2:] if transposed else out_shape[2:]
    attrs = {
        "in_channels": channels[0], "out_channels": channels[1], "groups": groups,
        "channel_axis": 1, "positions": math.prod(spatial),
    }  # fmt: skip
    stride = 1 if transposed else stride  # a transposed conv's stride upsamples
    info = LayerInfo(name, "conv", params, groups=groups, stride=stride, weight="weight",
                     transposed=transposed)  # fmt: skip
    return ("conv", attrs), info


_OFFSETS = "the sampling offsets and mask of a deformable conv"


def _deform_conv(m: nn.Module, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    return deform_layer(m, name, out_shape, (m.in_channels, m.out_channels), m.groups,
                        max(m.stride))  # fmt: skip


def deform_layer(m: nn.Module, name: str, out_shape, channels: tuple[int, int], groups: int,
                 stride: int, only: set[str] | None = None) -> tuple[Spec, LayerInfo]:  # fmt: skip
    """torchvision's DeformConv2d, or a module passing its own ``weight`` to
    ``deform_conv2d``: a conv that reads its input at offset positions; the
    offsets and mask it is given stay whole (core attribute ``held``). Its offsets come in
    groups of ``offset_block`` channels, one per block of consecutive input channels."""
    params = _params(m, {"weight": ("out", "in", None, None), "bias": ("out",)}, only)
    attrs = {"in_channels": channels[0], "out_channels": channels[1], "groups": groups,
             "channel_axis": 1, "positions": math.prod(out_shape[2:]), "held": _OFFSETS,
             "offset_block": 2 * math.prod(m.weight.shape[2:])}  # fmt: skip
    info = LayerInfo(name, "conv", params, groups=groups, stride=stride, weight="weight")
    return ("conv", attrs), info


def _linear(m: nn.Linear, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    return linear_layer(m, name, out_shape, (m.in_features, m.out_features))


def linear_layer(m: nn.Module, name: str, out_shape, features: tuple[int, int],
                 only: set[str] | None = None) -> tuple[Spec, LayerInfo]:  # fmt: skip
    """A linear layer by ``m``'s ``weight`` and ``bias`` (see :func:`conv_layer`);
    ``features``: (in, out)."""
    params = _params(m, {"weight": ("out", "in"), "bias": ("out",)}, only)
    attrs = {
        "in_features": features[0], "out_features": features[1],
        "positions": math.prod(out_shape[1:-1]),
    }  # fmt: skip
    return ("linear", attrs), LayerInfo(name, "linear", params, weight="weight")


def _batchnorm(m: nn.Module, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    return channels_layer(m, name, m.num_features)


def scalar_layer(m: nn.Module, name: str,
                 only: set[str] | None = None) -> tuple[Spec, LayerInfo]:  # fmt: skip
    """An activation with one learned number for every channel (a PReLU of one slope)."""
    return ("identity", {}), LayerInfo(name, "activation", _params(m, {}, only))


def channels_layer(m: nn.Module, name: str, count: int,
                   only: set[str] | None = None) -> tuple[Spec, LayerInfo]:  # fmt: skip
    """A layer that scales or normalises each of ``count`` channels on its own by ``m``'s
    ``weight`` and ``bias`` (BatchNorm, a module passing its own to ``F.batch_norm``)."""
    params = _params(m, {"weight": ("channel",), "bias": ("channel",)}, only)
    attrs = {"num_features": count, "channel_axis": 1}
    return ("batchnorm", attrs), LayerInfo(name, "batchnorm", params)


def _frozen_batchnorm(m: nn.Module, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    """torchvision's FrozenBatchNorm2d (detection backbones): statistics and affine terms
    are buffers, cut along the channels with the layer (see :func:`.shrink._tensors`)."""
    attrs = {"num_features": m.running_mean.numel(), "channel_axis": 1}
    return ("batchnorm", attrs), LayerInfo(name, "batchnorm", {})


def _prelu(m: nn.PReLU, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    if m.num_parameters == 1:
        return scalar_layer(m, name)
    params = _params(m, {"weight": ("channel",)})
    spec = ("batchnorm", {"num_features": m.num_parameters, "channel_axis": 1})
    return spec, LayerInfo(name, "batchnorm", params)


def _pixel_shuffle(m: nn.Module, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    inverse = isinstance(m, nn.PixelUnshuffle)
    factor = m.downscale_factor if inverse else m.upscale_factor
    spec = ("pixel_shuffle", {"factor": factor, "inverse": inverse})
    return spec, LayerInfo(name, "activation", {})


def unfold_spec(inverse: bool, kernel_size: Any, ndim: int) -> Spec:
    """``unfold`` (im2col): each channel becomes its ``k * k`` kernel positions,
    consecutive rows; ``fold`` (``inverse`` False here): those rows summed back into it."""
    per = math.prod(kernel_size) if isinstance(kernel_size, (tuple, list)) else kernel_size ** 2
    axis = 1 if ndim == (4 if inverse else 3) else 0  # batched, or not
    return "pixel_shuffle", {"factor": 1, "per": int(per), "inverse": inverse,
                             "channel_axis": axis}  # fmt: skip


def _unfold_module(m: nn.Module, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    spec = unfold_spec(isinstance(m, nn.Unfold), m.kernel_size, len(in_shape))
    return spec, LayerInfo(name, "activation", {})


def _channel_shuffle(m: nn.ChannelShuffle, name: str, in_shape,
                     out_shape) -> tuple[Spec, LayerInfo]:  # fmt: skip
    return ("channel_shuffle", {"groups": m.groups}), LayerInfo(name, "activation", {})


def _glu_module(m: nn.GLU, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    return ("glu", {"axis": m.dim}), LayerInfo(name, "activation", {})


def _layernorm(m: nn.Module, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    """LayerNorm, RMSNorm: statistics over the last ``len(normalized_shape)`` axes."""
    spec = ("layernorm", {"normalized_ndim": len(m.normalized_shape)})
    return spec, LayerInfo(name, "layernorm", _params(m, {}))


Forward = Callable[[nn.Module, torch.Tensor], Any]


def probe_forwards(module: nn.Module, in_shape: Any, *forwards: Forward) -> list[Any] | None:
    """Each of ``forwards(module, x)`` on one random input of ``in_shape``, in eval mode,
    without gradients and each from the same seed (a dropout draws alike), leaving the
    caller's random state and training flag as they were; ``None`` where one fails."""
    if not isinstance(in_shape, tuple):
        return None
    ref = next(module.parameters(), None)
    x = torch.randn(in_shape, generator=torch.Generator().manual_seed(0))
    if ref is not None:
        x = x.to(ref)
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    training = module.training
    module.eval()
    outs = []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            for forward in forwards:
                torch.manual_seed(0)
                outs.append(forward(module, x))
    except Exception:  # noqa: BLE001 - a forward that fails on a plain tensor: not known
        return None
    finally:
        module.train(training)
    return outs


def _groupnorm(m: nn.GroupNorm, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    """Whole groups may go where the forward reads ``num_groups`` from the module, so the
    cut lowers it (a count written in the forward's code stays whole)."""
    params = _params(m, {"weight": ("channel",), "bias": ("channel",)})
    attrs = {"groups": m.num_groups, "channel_axis": 1,
             "rewritable": _reads_num_groups(m, in_shape)}  # fmt: skip
    return ("groupnorm", attrs), LayerInfo(name, "batchnorm", params)


def _reads_num_groups(m: nn.GroupNorm, in_shape) -> bool:
    """Whether ``m``'s forward uses its ``num_groups``: it gives the same output twice and
    another when the attribute says one group (``nn.GroupNorm`` and timm's do)."""
    if type(m).forward is nn.GroupNorm.forward:
        return True
    if m.num_groups <= 1:
        return False
    groups = m.num_groups

    def at(count: int) -> Forward:
        def run(module: nn.Module, x: torch.Tensor) -> Any:
            module.num_groups = count
            return type(module).forward(module, x)

        return run

    try:
        outs = probe_forwards(m, in_shape, at(groups), at(groups), at(1))
    finally:
        m.num_groups = groups
    if outs is None or not all(isinstance(t, torch.Tensor) for t in outs):
        return False
    own, again, one = outs
    return torch.equal(own, again) and not torch.allclose(own, one)


def _simple(kind: str, **attrs: Any) -> Callable[..., tuple[Spec, LayerInfo]]:
    def build(m: nn.Module, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
        return (kind, dict(attrs)), LayerInfo(name, kind, _params(m, {}))

    return build


def _softmax(m: nn.Module, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    dim = m.dim
    if dim is None:  # torch's implicit choice (_get_softmax_dim): 0 for 0-, 1- and 3-D, else 1
        dim = 0 if len(in_shape) in (0, 1, 3) else 1
    return ("along", {"dims": [dim]}), LayerInfo(name, "activation")


def spatial_spec(axes: int | None, ndim: int) -> Spec:
    """A pooling or resizing op over its last ``axes`` axes (``None``: all after the
    channels at 1): it mixes positions there, so channels there stay whole."""
    return "along", {"dims": list(range(-(ndim - 2 if axes is None else axes), 0))}


def adaptive_spec(axes: int, ndim: int, kept: list[bool]) -> Spec:
    """An adaptive pool over its last ``axes`` axes, less those whose size it keeps
    (``kept``, one per pooled axis): each position there is a bin of its own
    (``AdaptiveAvgPool2d((None, 1))`` in text recognisers, after a permute that puts the
    channels on axis 2). Only a size the pool takes from its input keeps an axis: a
    literal equal to it today would be another count once the channels are cut."""
    kind, attrs = spatial_spec(axes, ndim)
    dims = [d for d, keep in zip(attrs["dims"], kept, strict=False) if not keep]
    return (kind, {"dims": dims}) if dims else ("identity", {})


def free_sizes(output_size: Any, axes: int) -> list[bool]:
    """Which of the ``axes`` pooled axes an adaptive pool's ``output_size`` leaves at the
    input's size (``None``)."""
    sizes = list(output_size) if isinstance(output_size, (tuple, list)) else [output_size] * axes
    return [size is None for size in sizes[-axes:]]


def _spatial_module(m: nn.Module, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    axes = next(SPATIAL_MODULES[c] for c in type(m).__mro__ if c in SPATIAL_MODULES)
    if isinstance(m, _ADAPTIVE_MODULES):
        kept = free_sizes(m.output_size, axes)
        return adaptive_spec(axes, len(in_shape), kept), LayerInfo(name, "activation")
    return spatial_spec(axes, len(in_shape)), LayerInfo(name, "activation")


def unpool_spec(axes: int) -> Spec:
    """A max unpool over its last ``axes`` axes: its input and indices (written by a pool
    of the same channels; the input at position 1) are tied channel by channel."""
    return "along", {"dims": list(range(-axes, 0)), "tied": [1]}


def _unpool_module(m: nn.Module, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    return unpool_spec(UNPOOL_MODULES[type(m)]), LayerInfo(name, "activation")


def _pad_module(m: nn.Module, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    mode = next(_PAD[c] for c in type(m).__mro__ if c in _PAD)
    return pad_spec(list(m.padding), len(out_shape), mode), LayerInfo(name, "activation")


def _flatten(m: nn.Flatten, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    return ("reshape", {}), LayerInfo(name, "reshape")


def unflatten_free(m: nn.Unflatten) -> int | None:
    """The entry of ``m.unflattened_size`` a strip writes as -1 (the first above one, where
    a channel count sits, ``(256, 7, 7)`` after a Linear); ``None`` with a -1 already."""
    sizes = list(m.unflattened_size)
    if -1 in sizes:
        return None
    return next((i for i, n in enumerate(sizes) if n > 1), None)


def _unflatten(m: nn.Unflatten, name: str, in_shape, out_shape) -> tuple[Spec, LayerInfo]:
    """Sizes held by the module, not written in code: the strip rewrites one of them, so
    channels may lie there; the other literal axes stay (their entries go together)."""
    dim, free = m.dim % len(in_shape), unflatten_free(m)
    fixed = [dim + i for i, n in enumerate(m.unflattened_size) if n != -1 and i != free]
    return ("reshape", {"fixed_dims": fixed}), LayerInfo(name, "unflatten")


MODULE_RULES: dict[type[nn.Module], Callable[..., tuple[Spec, LayerInfo]]] = {
    **{t: _conv for t in _CONV + _CONV_T},
    nn.Linear: _linear,
    **{t: _batchnorm for t in _BN + _IN},
    nn.PReLU: _prelu,
    nn.LayerNorm: _layernorm,
    nn.RMSNorm: _layernorm,
    nn.GroupNorm: _groupnorm,
    nn.LocalResponseNorm: _simple("along", dims=[1]),  # each channel over its neighbours
    nn.CrossMapLRN2d: _simple("along", dims=[1]),
    nn.Softmax: _softmax,
    nn.Softmin: _softmax,
    nn.LogSoftmax: _softmax,
    nn.Flatten: _flatten,
    nn.Unflatten: _unflatten,
    nn.PixelShuffle: _pixel_shuffle,
    nn.PixelUnshuffle: _pixel_shuffle,
    nn.Unfold: _unfold_module,
    nn.Fold: _unfold_module,
    nn.ChannelShuffle: _channel_shuffle,
    nn.GLU: _glu_module,
    **{t: _simple("identity") for t in IDENTITY_MODULES},
    **{t: _pad_module for t in _PAD},
    **{t: _spatial_module for t in SPATIAL_MODULES},
    **{t: _unpool_module for t in UNPOOL_MODULES},
}
LEAF_MODULES: tuple[type[nn.Module], ...] = ()  # traced as one call, outside torch.nn

try:  # torchvision is optional
    from torchvision.ops import DeformConv2d, FrozenBatchNorm2d

    MODULE_RULES[FrozenBatchNorm2d] = _frozen_batchnorm
    MODULE_RULES[DeformConv2d] = _deform_conv
    LEAF_MODULES += (FrozenBatchNorm2d, DeformConv2d)
except ImportError:
    DeformConv2d = None

EXPORT_READS: set[Callable] = set()
"""Functions torch.fx reads as one call (marked ``torch.fx.wrap``) whose channels
torch.export follows through their ops: a model calling one on its features is captured
by torch.export (torchvision's multi-scale RoI pooler, whose levels' channels pass)."""
try:
    from torchvision.ops import poolers as _poolers

    EXPORT_READS |= {_poolers._filter_input, _poolers._multiscale_roi_align}
except (ImportError, AttributeError):
    pass


def module_rule(module: nn.Module) -> tuple[type[nn.Module], Callable] | None:
    """The torch layer class ``module`` derives from and its builder (a subclass such as
    timm's ``BatchNormAct2d`` is built as its ``nn.BatchNorm2d``), or ``None``."""
    for cls in type(module).__mro__:
        if cls in MODULE_RULES:
            return cls, MODULE_RULES[cls]
    return None


# -- functions that compute a layer from parameters passed in ---------------------------------
@dataclass(frozen=True)
class Functional:
    """Where a function's input and parameters sit, and the layers whose forward it is.

    Attributes:
        forms: Module classes whose forward is this function (``F.conv2d``: the convs).
        data: ``(position, keyword)`` of the activation argument.
        params: Parameter attribute of the layer -> ``(position, keyword)`` of the argument
            that passes it (``"weight": (1, "weight")``).
        per_channel: The layer only scales or normalises channels (BatchNorm, PReLU), so
            masks may wrap any forward of it; a conv or linear layer needs its own forward.
        held: ``(position, keyword)`` of other tensors it reads, which stay whole (a
            deformable conv's offsets and mask).
        options: ``(position, keyword)`` of a convolution's ``stride`` and ``groups``,
            which a module passing its own parameters sets in the call.
    """

    forms: tuple[type[nn.Module], ...]
    data: tuple[int, str] = (0, "input")
    params: dict[str, tuple[int, str]] = field(default_factory=dict)
    per_channel: bool = False
    held: tuple[tuple[int, str], ...] = ()
    options: dict[str, tuple[int, str]] = field(default_factory=dict)


def layer_form(forms: tuple[type[nn.Module], ...]) -> str | None:
    """What the layers ``forms`` compute, read for a module that passes its own
    parameters to their function: ``conv``, ``transposed``, ``linear``, ``channels`` (each
    channel on its own: BatchNorm, InstanceNorm, PReLU) or ``None`` (a norm whose
    statistics span channels, an embedding)."""
    if forms == _CONV:
        return "conv"
    if forms == _CONV_T:
        return "transposed"
    if forms == (nn.Linear,):
        return "linear"
    if forms in (_BN, _IN, (nn.PReLU,)):
        return "channels"
    if DeformConv2d is not None and forms == (DeformConv2d,):
        return "deform"
    return None


_WB = {"weight": (1, "weight"), "bias": (2, "bias")}
_CONV_OPTIONS = {"stride": (3, "stride"), "groups": (6, "groups")}  # the same in convT
_NORM_WB = {"weight": (2, "weight"), "bias": (3, "bias")}
_STATS_FIRST = {"running_mean": (1, "running_mean"), "running_var": (2, "running_var"),
                "weight": (3, "weight"), "bias": (4, "bias")}  # fmt: skip
_WEIGHTS_FIRST = {"weight": (1, "weight"), "bias": (2, "bias"), "running_mean": (3, "running_mean"),
                  "running_var": (4, "running_var")}  # fmt: skip
_aten = torch.ops.aten

FUNCTIONAL: dict[Any, Functional] = {
    **{f: Functional(_CONV, params=_WB, options=_CONV_OPTIONS)
       for f in (F.conv1d, F.conv2d, F.conv3d)},
    **{f: Functional(_CONV_T, params=_WB, options=_CONV_OPTIONS)
       for f in (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)},
    F.linear: Functional((nn.Linear,), params=_WB),
    F.batch_norm: Functional(_BN, params=_STATS_FIRST, per_channel=True),
    F.instance_norm: Functional(_IN, params=_STATS_FIRST, per_channel=True),
    F.layer_norm: Functional((nn.LayerNorm,), params=_NORM_WB, per_channel=True),
    F.rms_norm: Functional((nn.RMSNorm,), params={"weight": (2, "weight")}, per_channel=True),
    F.group_norm: Functional((nn.GroupNorm,), params=_NORM_WB, per_channel=True),
    F.prelu: Functional((nn.PReLU,), params={"weight": (1, "weight")}, per_channel=True),
    F.embedding: Functional((nn.Embedding,), params={"weight": (1, "weight")}),
    # the same layers as torch.export records them (ATen overloads, their argument order)
    **{op: Functional(_CONV, params=_WB, options=_CONV_OPTIONS) for op in (
        _aten.conv1d.default, _aten.conv2d.default, _aten.conv3d.default,
        _aten.conv1d.padding, _aten.conv2d.padding, _aten.conv3d.padding)},
    **{op: Functional(_CONV_T, params=_WB, options=_CONV_OPTIONS) for op in (
        _aten.conv_transpose1d.default, _aten.conv_transpose2d.input,
        _aten.conv_transpose3d.input)},
    _aten.linear.default: Functional((nn.Linear,), params=_WB),
    _aten.batch_norm.default: Functional(_BN, params=_WEIGHTS_FIRST, per_channel=True),
    _aten.instance_norm.default: Functional(_IN, params=_WEIGHTS_FIRST, per_channel=True),
    _aten.layer_norm.default: Functional((nn.LayerNorm,), params=_NORM_WB, per_channel=True),
    _aten.rms_norm.default: Functional((nn.RMSNorm,), params={"weight": (2, "weight")},
                                       per_channel=True),
    _aten.group_norm.default: Functional((nn.GroupNorm,), params=_NORM_WB, per_channel=True),
    _aten.prelu.default: Functional((nn.PReLU,), params={"weight": (1, "weight")},
                                    per_channel=True),
    _aten.embedding.default: Functional((nn.Embedding,), data=(1, "indices"),
                                        params={"weight": (0, "weight")}),
}  # fmt: skip
if DeformConv2d is not None and hasattr(torch.ops.torchvision, "deform_conv2d"):
    FUNCTIONAL[torch.ops.torchvision.deform_conv2d.default] = Functional(
        (DeformConv2d,), params={"weight": (1, "weight"), "bias": (4, "bias")},
        held=((2, "offset"), (3, "mask")),
        options={"stride": (5, "stride_h"), "stride_w": (6, "stride_w"),
                 "groups": (11, "n_weight_grps")})  # fmt: skip

# -- functions and tensor methods ------------------------------------------------------------
Call = Callable[[fx.Node, Any], Spec]


def _arg(node: fx.Node, i: int, key: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def _identity(node: fx.Node, shapes) -> Spec:
    return "identity", {}


def _elementwise(node: fx.Node, shapes) -> Spec:
    return "elementwise", {}


def _clamp(node: fx.Node, shapes) -> Spec:
    """``clamp(x, min, max)``: channel-wise with number bounds; a tensor bound is an
    operand, tied position by position as an elementwise op's."""
    bounds = [*node.args[1:], *node.kwargs.values()]
    return ("elementwise" if any(isinstance(b, fx.Node) for b in bounds) else "identity"), {}


def _reshape(node: fx.Node, shapes) -> Spec:
    """Literal sizes are ``fixed_dims``; so is a size computed in forward, unless the
    capture ties it to the axis it was read from (:mod:`._sizes`)."""
    args = reshape_sizes(node)
    fixed = [i for i, a in enumerate(args)
             if isinstance(a, int) and a != -1 or isinstance(a, fx.Node)]  # fmt: skip
    meta = node.meta.get("tensor_meta")
    if len(args) == 1 and isinstance(args[0], fx.Node) and meta is not None:
        fixed = list(range(len(meta.shape)))  # one computed shape (``x.shape``): every axis
    if node.target in ("view", "reshape", torch.reshape):
        computed = [i for i, a in enumerate(args) if isinstance(a, fx.Node)]
        return "reshape", {"fixed_dims": fixed, **({"computed_dims": computed} if computed
                                                   and len(args) > 1 else {})}  # fmt: skip
    if node.target in ("unflatten", torch.unflatten):
        return "reshape", {"fixed_dims": _unflatten_fixed(node, len(shapes))}
    return "reshape", {}


def _unflatten_fixed(node: fx.Node, ndim: int) -> list[int]:
    """Output axes of ``unflatten(dim, sizes)`` whose size is a literal in code."""
    dim, sizes = int(_arg(node, 1, "dim")) % max(ndim, 1), _arg(node, 2, "sizes")
    return [dim + i for i, a in enumerate(sizes) if isinstance(a, int) and a != -1]


def reshape_as_spec(node: fx.Node, shapes: Any = None) -> Spec:
    """``x.view_as(y)``; ``x.view_as(x)`` (a gradient-reversal layer's forward, for a
    new tensor autograd tells apart) is ``x`` itself."""
    other = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    return ("identity", {}) if other is node.args[0] else ("reshape_as", {})


def _permute(node: fx.Node, shapes) -> Spec:
    dims = node.args[1:]
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    if "dims" in node.kwargs:
        dims = node.kwargs["dims"]
    ndim = len(shapes)
    return "permute", {"perm": [int(d) % ndim for d in dims]}


def _transpose(node: fx.Node, shapes) -> Spec:
    ndim = len(shapes)
    a = _arg(node, 1, "dim0", node.kwargs.get("axis0"))  # swapaxes names them axis0, axis1
    b = _arg(node, 2, "dim1", node.kwargs.get("axis1"))
    a, b = int(a) % ndim, int(b) % ndim
    perm = list(range(ndim))
    perm[a], perm[b] = perm[b], perm[a]
    return "permute", {"perm": perm}


def _cat(node: fx.Node, shapes) -> Spec:
    return "concat", {"axis": int(_arg(node, 1, "dim", 0)),
                      **joined_parts(_arg(node, 0, "tensors"))}  # fmt: skip


def _stack(node: fx.Node, shapes) -> Spec:
    return "stack", {"axis": int(_arg(node, 1, "dim", 0)),
                     **joined_parts(_arg(node, 0, "tensors"))}  # fmt: skip


def joined_parts(tensors: Any) -> dict[str, list[str]]:
    """``parts``: the tensors a cat or stack joins, by name, where one comes twice
    (``torch.cat([y, y])``): the node's inputs name each tensor once."""
    names = [t.name for t in tensors] if isinstance(tensors, (list, tuple)) and all(
        isinstance(t, fx.Node) for t in tensors) else []  # fmt: skip
    return {"parts": names} if len(set(names)) < len(names) else {}


_COMPUTED_SIZES = "split sizes computed in forward, which would not follow a cut"


def _split(node: fx.Node, shapes) -> Spec:
    dim = int(_arg(node, 2, "dim", 0))
    return "split", {"axis": dim, "equal": False, **_computed_sizes(_arg(node, 1, ""))}


def _computed_sizes(sizes: Any) -> dict[str, str]:
    """The reason a split whose sizes are computed in forward (not on equal parts) holds."""
    values = sizes if isinstance(sizes, (list, tuple)) else [sizes]
    return {"reason": _COMPUTED_SIZES} if any(isinstance(v, fx.Node) for v in values) else {}


def _chunk(node: fx.Node, shapes) -> Spec:
    return "split", {"axis": int(_arg(node, 2, "dim", 0)), "equal": True}


def _tensor_split(node: fx.Node, shapes) -> Spec:
    """``tensor_split(n)`` cuts like ``chunk(n)`` (equal pieces where the size divides);
    split points given as indices are fixed in code."""
    sections = _arg(node, 1, "sections", _arg(node, 1, "indices"))
    return "split", {"axis": int(_arg(node, 2, "dim", 0)), "equal": isinstance(sections, int),
                     **_computed_sizes(sections)}  # fmt: skip


def _unbind(node: fx.Node, shapes) -> Spec:
    return "split", {"axis": int(_arg(node, 1, "dim", 0)), "equal": False, "squeeze": True}


def _reduce_at(dim_at: int, keepdim_at: int, default: tuple[int, ...] | None = None) -> Call:
    """A reduction over ``dim`` (``default``, or every axis, without one) whose ``dim`` and
    ``keepdim`` are positional arguments ``dim_at`` and ``keepdim_at``."""

    def build(node: fx.Node, shapes) -> Spec:
        dims = _arg(node, dim_at, "dim", default)
        if dims is None:
            dims = list(range(len(shapes)))
        dims = [dims] if isinstance(dims, int) else list(dims)
        return "reduce", {"dims": dims, "keepdim": bool(_arg(node, keepdim_at, "keepdim", False))}

    return build


def _max_min(node: fx.Node, shapes) -> Spec:
    """``torch.max(x, dim)``: values and indices of a reduction over ``dim``;
    ``torch.max(x, y)``: elementwise; ``torch.max(x)``: over every axis."""
    other = _arg(node, 1, "dim", node.kwargs.get("other"))
    if isinstance(other, fx.Node):
        return "elementwise", {}
    return _reduce(node, shapes)


def _along_at(dim_at: int) -> Call:
    """An op along ``dim`` (default -1, the last axis), positional argument ``dim_at``:
    ``sort``, ``topk``, ``cummax``; fine where that axis holds no channels."""

    def build(node: fx.Node, shapes) -> Spec:
        return "along", {"dims": [int(_arg(node, dim_at, "dim", -1))]}

    return build


def _index_select(node: fx.Node, shapes) -> Spec:
    """``x.index_select(dim, idx)``: entries picked along ``dim``, the other axes pass."""
    return "gather", {"picked": [int(_arg(node, 1, "dim"))]}


def _index_add(node: fx.Node, shapes) -> Spec:
    """``x.index_add(dim, index, source)``, ``index_copy``, ``index_reduce``: rows of
    ``source`` land in ``x`` at ``index`` along ``dim`` (a mixture of experts adds each
    expert's rows of the batch back); the other axes line up (core rule ``put``)."""
    source = _arg(node, 3, "source")
    if not isinstance(source, fx.Node):
        raise TypeError("a source the trace did not record")
    return "put", {"self": node.args[0].name, "values": source.name,
                   "axis": int(_arg(node, 1, "dim"))}  # fmt: skip


def _take_along(dim_at: int) -> Call:
    """``torch.gather(x, dim, index)`` (``dim`` second), ``take_along_dim(x, index, dim)``
    (third): entries read along ``dim`` at the index's positions."""

    def build(node: fx.Node, shapes) -> Spec:
        return "take_along", {"axis": int(_arg(node, dim_at, "dim"))}

    return build


def _kthvalue(node: fx.Node, shapes) -> Spec:
    dim = int(_arg(node, 2, "dim", -1))  # over the last axis by default, not every axis
    return "reduce", {"dims": [dim], "keepdim": bool(_arg(node, 3, "keepdim", False))}


_reduce = _reduce_at(1, 2)  # ``x.mean(dim, keepdim)``
_norm = _reduce_at(2, 3)  # ``x.norm(p, dim, keepdim)``
_var_std = _reduce_at(1, 3)  # ``x.var(dim, unbiased, keepdim)``


def _quantile(node: fx.Node, shapes) -> Spec:
    """``torch.quantile(x, q, dim, keepdim)``: one level reduces over ``dim``; a tensor of
    levels adds an axis in front, which no rule places."""
    if isinstance(_arg(node, 1, "q"), fx.Node):
        return "stop", {"reason": "quantiles at a tensor of levels"}
    return _reduce_at(2, 3)(node, shapes)


def _renorm(node: fx.Node, shapes) -> Spec:
    """``torch.renorm(x, p, dim, maxnorm)``: each slice along ``dim`` scaled by its own
    norm, taken over every other axis."""
    dim = int(_arg(node, 2, "dim")) % len(shapes)
    return "along", {"dims": [a for a in range(len(shapes)) if a != dim]}


def _trapezoid(node: fx.Node, shapes) -> Spec:
    """``torch.trapezoid(y, x, dim=...)``: a weighted sum along ``dim``; sample points
    given as a tensor are a second operand no rule ties."""
    if isinstance(_arg(node, 1, "x"), fx.Node):
        return "stop", {"reason": "trapezoid over sample points given as a tensor"}
    kind = "along" if "cumulative" in getattr(node.target, "__name__", "") else "reduce"
    return kind, {"dims": [int(node.kwargs.get("dim", -1))], "keepdim": False}


def _flip(node: fx.Node, shapes) -> Spec:
    dims = _arg(node, 1, "dims")
    if len(node.args) > 2:  # ``x.flip(2, 3)``
        dims = list(node.args[1:])
    return "along", {"dims": [dims] if isinstance(dims, int) else list(dims)}


def movedim_spec(src: Any, dst: Any, ndim: int) -> Spec:
    """``movedim(x, source, destination)`` (ints or lists) as a permutation."""
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src, dst = [int(d) % ndim for d in src], [int(d) % ndim for d in dst]
    rest = iter(d for d in range(ndim) if d not in src)
    moved = dict(zip(dst, src, strict=True))
    return "permute", {"perm": [moved[i] if i in moved else next(rest) for i in range(ndim)]}


def _movedim(node: fx.Node, shapes) -> Spec:
    return movedim_spec(_arg(node, 1, "source"), _arg(node, 2, "destination"), len(shapes))


def _t(node: fx.Node, shapes) -> Spec:
    return "permute", {"perm": list(range(len(shapes)))[::-1]}


def _narrow(node: fx.Node, shapes) -> Spec:
    dim = int(_arg(node, 1, "dim")) % len(shapes)
    start, length = int(_arg(node, 2, "start")), int(_arg(node, 3, "length"))
    if start < 0:
        start += shapes[dim]
    # its length is exact (a slice's end is clamped): over all the channels it fails on
    # fewer, so channels there stay whole
    return "index", {"index": (slice(None),) * dim + (slice(start, start + length),),
                     "computed_axes": [dim], "computed_reason": "narrow takes a length "
                     "written in code"}  # fmt: skip


def _select(node: fx.Node, shapes) -> Spec:
    """``x.select(dim, i)``: ``x[:, ..., i]`` with ``i`` at ``dim``, which drops that axis."""
    dim, index = int(_arg(node, 1, "dim")) % len(shapes), _arg(node, 2, "index")
    if type(index) is not int:
        return "stop", {"reason": "select at an index computed in forward"}
    return "index", {"index": (slice(None),) * dim + (index % shapes[dim],)}


def _tile(node: fx.Node, shapes) -> Spec:
    reps = _arg(node, 1, "dims")
    if len(node.args) > 2 or isinstance(reps, int):  # ``x.tile(1, 2)``
        reps = list(node.args[1:])
    return "tile", {"reps": [r if isinstance(r, int) else None for r in reps]}


def _pixel_shuffle_call(node: fx.Node, shapes) -> Spec:
    inverse = node.target in (F.pixel_unshuffle, torch.pixel_unshuffle)
    factor = _arg(node, 1, "downscale_factor" if inverse else "upscale_factor")
    return "pixel_shuffle", {"factor": int(factor), "inverse": inverse}


def _unfold_call(node: fx.Node, shapes) -> Spec:
    inverse = node.target is F.unfold
    ndim = len(shapes[0] if isinstance(shapes, list) else shapes)
    return unfold_spec(inverse, _arg(node, 1 if inverse else 2, "kernel_size"), ndim)


def _glu(node: fx.Node, shapes) -> Spec:
    return "glu", {"axis": int(_arg(node, 1, "dim", -1))}


def _channel_shuffle_call(node: fx.Node, shapes) -> Spec:
    return "channel_shuffle", {"groups": int(_arg(node, 1, "groups"))}


def _diff(node: fx.Node, shapes) -> Spec:
    """``torch.diff(x, n, dim)``: neighbours along ``dim`` (default the last) subtracted."""
    if _arg(node, 3, "prepend") is not None or _arg(node, 4, "append") is not None:
        return "stop", {"reason": "diff with a tensor prepended or appended"}
    return "along", {"dims": [int(_arg(node, 2, "dim", -1))]}


def _rot90(node: fx.Node, shapes) -> Spec:
    return "along", {"dims": [int(d) for d in _arg(node, 2, "dims", (0, 1))]}


def _along_dim(node: fx.Node, shapes) -> Spec:
    dim = _arg(node, 1, "dim", -1)
    if dim is None:  # softmax without dim: torch picks one by rank
        return "stop", {"reason": "softmax without a dim"}
    return "along", {"dims": [int(dim)]}


def _repeat_interleave(node: fx.Node, shapes) -> Spec:
    """Each entry repeated ``repeats`` times along ``dim``: channels stay apart along any
    other axis; once each (``repeats`` 1, WaveRNN's Stretch2d) it is the identity."""
    repeats, dim = _arg(node, 1, "repeats"), _arg(node, 2, "dim")
    if not isinstance(repeats, int) or dim is None:
        return "stop", {"reason": "repeat_interleave by a tensor or of the flattened tensor"}
    return ("identity", {}) if repeats == 1 else ("along", {"dims": [int(dim)]})


def _normalize(node: fx.Node, shapes) -> Spec:
    """The p-norm along ``dim`` spans it: a pruned channel there need not reach it as zero
    (a sigmoid or an added constant on the way), and the stripped model's norm omits it."""
    return "along", {"dims": [int(_arg(node, 2, "dim", 1))]}


def _roll(node: fx.Node, shapes) -> Spec:
    dims = _arg(node, 2, "dims")
    if dims is None:
        return "stop", {"reason": "roll over a flattened tensor"}
    return "along", {"dims": [dims] if isinstance(dims, int) else list(dims)}


def _pad(node: fx.Node, shapes) -> Spec:
    return pad_spec(_arg(node, 1, "pad"), len(shapes), _arg(node, 2, "mode", "constant"))


def pad_spec(pad: Any, ndim: int, mode: str) -> Spec:
    """The ``pad`` rule for torch's widths (pairs from the last axis back); a width
    computed in forward is ``None``."""
    pad = [w if isinstance(w, int) else None for w in pad]
    widths = [(0, 0)] * ndim
    for i in range(len(pad) // 2):
        widths[ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    return "pad", {"widths": widths, "mode": mode}


def _grid_sample(node: fx.Node, shapes) -> Spec:
    return "sample", {}


def _einsum(node: fx.Node, shapes) -> Spec:
    operands = node.args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = operands[0]
    if not isinstance(node.args[0], str) or not all(isinstance(o, fx.Node) for o in operands):
        raise ValueError("einsum in a form this rule does not read")
    return "einsum", {"equation": node.args[0], "operands": [o.name for o in operands]}


def _complex_view(node: fx.Node, shapes) -> Spec:
    """``view_as_complex``: the last axis (real and imaginary parts) becomes the dtype, as
    a reduction over it would drop it; channels on other axes pass, and a weight so read
    (GFNet's filter stored as ``(h, w, dim, 2)``) stays that weight."""
    return "reduce", {"dims": [-1], "keepdim": False, "pairs": True}


def _real_view(node: fx.Node, shapes) -> Spec:
    """``view_as_real``: a new last axis of the real and imaginary parts, as stacking the
    two would give; channels on other axes pass."""
    return "stack", {"axis": -1}


def _fft_shift(node: fx.Node, shapes) -> Spec:
    """``fftshift``/``ifftshift``: a roll by half along ``dim``, every axis by default."""
    dim = _arg(node, 1, "dim")
    dims = range(len(shapes)) if dim is None else [dim] if isinstance(dim, int) else dim
    return "along", {"dims": list(dims)}


def _fft(dim_pos: int, default: Any) -> Call:
    """``torch.fft.*``: each channel transformed alone unless the channel axis is among the
    transformed ones (``fftn``/``rfftn`` without ``dim`` transform every axis)."""
    def rule(node: fx.Node, shapes) -> Spec:
        dim = _arg(node, dim_pos, "dim", default)
        if dim is None:
            return "stop", {"reason": "an FFT over every axis, channels included"}
        return "along", {"dims": [dim] if isinstance(dim, int) else list(dim)}

    return rule


def _matmul(node: fx.Node, shapes) -> Spec:
    """``a @ b``, ``torch.matmul``, ``torch.bmm``: the einsum ``...ij,...jk->...ik``
    (batch axes broadcast); a vector operand is not read."""
    a, b = node.args[:2]
    ranks = [len(getattr(n.meta.get("tensor_meta"), "shape", ())) if isinstance(n, fx.Node)
             else 0 for n in (a, b)]  # fmt: skip
    if min(ranks) < 2:
        return "stop", {"reason": "a product with a vector: its channels stay whole"}
    return "einsum", {"equation": "...ij,...jk->...ik", "operands": [a.name, b.name]}


def _layer_norm(node: fx.Node, shapes) -> Spec:
    normalized = _arg(node, 1, "normalized_shape")
    if isinstance(normalized, int):
        normalized = [normalized]
    if not isinstance(normalized, (list, tuple)):  # a shape read in forward: its length unknown
        return "stop", {"reason": "layer_norm over a shape computed in forward"}
    return "layernorm", {"normalized_ndim": len(normalized)}


def _group_norm(node: fx.Node, shapes) -> Spec:
    groups = _arg(node, 1, "num_groups")
    return "groupnorm", {"groups": groups} if isinstance(groups, int) else {}


def _expand(node: fx.Node, shapes) -> Spec:
    """``x.expand(*sizes)``: a size written in code (not -1) or computed in forward is in
    ``fixed_dims``, unless the capture ties it to the axis it was read from."""
    given = node.kwargs.get("size")  # ``x.expand(size=(-1, 16, -1, -1))``
    if given is None:
        sizes = reshape_sizes(node)
    elif isinstance(given, (list, tuple)):
        sizes = list(given)
    else:  # one shape computed in forward: every axis, unless tied to where it was read
        sizes = [given] * len(getattr(node.meta.get("tensor_meta"), "shape", ()))
    return "expand", {"fixed_dims": [i for i, a in enumerate(sizes) if isinstance(
        a, int) and a != -1 or isinstance(a, fx.Node)]}  # fmt: skip


def _repeat(node: fx.Node, shapes) -> Spec:
    reps = node.args[1:]
    if len(reps) == 1 and isinstance(reps[0], (list, tuple)):
        reps = reps[0]
    return "tile", {"reps": [r if isinstance(r, int) else None for r in reps]}


_ACT_FUNCS = [
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.mish,
    F.sigmoid, F.tanh, F.hardtanh, F.hardtanh_, F.softplus, F.dropout, F.dropout2d,
    torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.abs, torch.neg,
    operator.neg, F.relu_, torch.relu_, torch.nn.functional.gelu,
    F.selu, F.celu, F.softsign, F.logsigmoid, F.hardshrink, F.softshrink, F.tanhshrink,
    F.threshold, F.rrelu, F.dropout1d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    torch.sqrt, torch.rsqrt, torch.log,
    torch.log1p, torch.log2, torch.expm1, torch.square, torch.reciprocal, torch.sign,
    torch.sin, torch.cos, torch.erf, torch.floor, torch.ceil, torch.round,
    torch.nan_to_num, torch.logit, torch.atan, operator.abs, torch.detach,
    # a new tensor of the input's shape: its channels are the input's
    *SHAPED_AS,
]
_ACT_METHODS = [
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "exp", "abs", "neg",
    "contiguous", "clone", "float", "half", "to", "type", "type_as", "detach", "hardswish",
    "sqrt",
    "sqrt_", "rsqrt", "log", "log1p", "log2", "expm1", "exp_", "tanh_", "abs_", "neg_",
    "square", "reciprocal", "sign", "sin", "cos", "erf", "floor", "ceil", "round",
    "nan_to_num", "logit", "double", "bfloat16", "bool", "long", "int", "short", "byte",
    "char", "cpu",
    "cuda", "requires_grad_",
]  # fmt: skip
_SPATIAL_FUNCS = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2,
    F.avg_pool3d: 3, F.lp_pool1d: 1, F.lp_pool2d: 2, F.lp_pool3d: 3, F.adaptive_avg_pool1d: 1,
    F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3, F.adaptive_max_pool1d: 1,
    F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3, F.interpolate: None,
    F.max_pool1d_with_indices: 1, F.max_pool2d_with_indices: 2, F.max_pool3d_with_indices: 3,
    F.adaptive_max_pool1d_with_indices: 1, F.adaptive_max_pool2d_with_indices: 2,
    F.adaptive_max_pool3d_with_indices: 3,
    torch.max_pool1d: 1, torch.max_pool2d: 2, torch.max_pool3d: 3, torch.avg_pool1d: 1,
    torch.adaptive_avg_pool1d: 1,
}  # fmt: skip


def _spatial(axes: int | None) -> Call:
    def spec(node: fx.Node, shapes) -> Spec:
        return spatial_spec(axes, len(shapes[0] if isinstance(shapes, list) else shapes))

    return spec


def _adaptive(axes: int) -> Call:
    def spec(node: fx.Node, shapes) -> Spec:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        ndim = len(shapes[0] if isinstance(shapes, list) else shapes)
        return adaptive_spec(axes, ndim, free_sizes(size, axes))

    return spec


def _unpool(axes: int) -> Call:
    return lambda node, shapes: unpool_spec(axes)


_EW = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
    operator.isub, torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum,
    operator.pow, torch.pow, operator.gt, operator.ge, operator.lt, operator.le, operator.eq,
    operator.ne, torch.gt, torch.ge, torch.lt, torch.le, torch.eq, torch.ne, torch.where,
    torch.true_divide, torch.floor_divide, operator.floordiv, torch.remainder, operator.mod,
    torch.fmod, torch.atan2, torch.hypot, torch.fmax, torch.fmin, torch.lerp, torch.addcmul,
    torch.addcdiv, torch.logical_and, torch.logical_or, torch.logical_xor, operator.and_,
    operator.or_, torch.logaddexp, torch.copysign, torch.masked_fill, torch.rsub,
]
_EW_METHODS = ["add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum",
               "pow", "gt", "ge", "lt", "le", "eq", "ne", "where", "true_divide", "floor_divide",
               "remainder", "fmod", "atan2", "hypot", "fmax", "fmin", "lerp", "addcmul",
               "addcdiv", "masked_fill", "masked_fill_", "logical_and", "logical_or",
               "copysign"]  # fmt: skip

try:  # torchvision wraps stochastic depth as one traced call: channel-wise in any mode
    from torchvision.ops import stochastic_depth as _stochastic_depth

    _ACT_FUNCS.append(_stochastic_depth)
except ImportError:  # torchvision is optional
    pass


def view_written_in_place(base: Any, write: Any) -> Any:
    """``base`` after ``write``, an op in place on a view of it (``x.transpose(1, 2)
    .add_(y)``): the capture's marker where later code reads ``base`` (the write is in
    it already)."""
    return base


VIEW_WRITE = "an op in place on a view of these channels, which the analysis does not follow"

CALL_RULES: dict[Any, Call] = {
    view_written_in_place: lambda node, shapes: ("stop", {"reason": VIEW_WRITE}),
    **{f: _identity for f in _ACT_FUNCS},
    **{f: _spatial(axes) for f, axes in _SPATIAL_FUNCS.items()},
    **{f: _adaptive(axes) for f, axes in _SPATIAL_FUNCS.items()
       if f.__name__.startswith("adaptive")},
    **{f: _unpool(axes) for f, axes in UNPOOL_FUNCS.items()},
    **{m: _identity for m in _ACT_METHODS},
    **{f: _elementwise for f in _EW},
    **{m: _elementwise for m in _EW_METHODS},
    "view": _reshape, "reshape": _reshape, torch.reshape: _reshape,
    "view_as": reshape_as_spec, "reshape_as": reshape_as_spec,
    "flatten": _reshape, torch.flatten: _reshape, "unflatten": _reshape, torch.unflatten: _reshape,
    "squeeze": _reshape, torch.squeeze: _reshape, "unsqueeze": _reshape, torch.unsqueeze: _reshape,
    "permute": _permute, torch.permute: _permute,
    "transpose": _transpose, torch.transpose: _transpose,
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat, torch.stack: _stack,
    "split": _split, torch.split: _split, "chunk": _chunk, torch.chunk: _chunk,
    "tensor_split": _tensor_split, torch.tensor_split: _tensor_split,
    "unbind": _unbind, torch.unbind: _unbind,
    "mean": _reduce, torch.mean: _reduce, "sum": _reduce, torch.sum: _reduce,
    "amax": _reduce, torch.amax: _reduce, "norm": _norm, torch.norm: _norm,
    "max": _max_min, torch.max: _max_min, "min": _max_min, torch.min: _max_min,
    "median": _reduce, torch.median: _reduce, "nanmedian": _reduce, torch.nanmedian: _reduce,
    "argmax": _reduce, torch.argmax: _reduce, "argmin": _reduce, torch.argmin: _reduce,
    "kthvalue": _kthvalue, torch.kthvalue: _kthvalue,
    "sort": _along_at(1), torch.sort: _along_at(1), "argsort": _along_at(1),
    torch.argsort: _along_at(1), "topk": _along_at(2), torch.topk: _along_at(2),
    "cummax": _along_at(1), torch.cummax: _along_at(1), "cummin": _along_at(1),
    torch.cummin: _along_at(1),
    F.normalize: _normalize,
    F.softmax: _along_dim, "softmax": _along_dim, F.log_softmax: _along_dim,
    "log_softmax": _along_dim, torch.softmax: _along_dim, torch.cumsum: _along_dim,
    torch.log_softmax: _along_dim, torch.special.softmax: _along_dim,
    torch.special.log_softmax: _along_dim, torch.special.logsumexp: _reduce,
    torch.roll: _roll, F.pad: _pad, F.layer_norm: _layer_norm, F.rms_norm: _layer_norm,
    F.group_norm: _group_norm,
    F.local_response_norm: lambda node, shapes: ("along", {"dims": [1]}),  # over neighbours
    "expand": _expand, "expand_as": _elementwise, "repeat": _repeat,
    "copy_": _elementwise,  # ``x.copy_(y)``: y's entries, broadcast to x's positions
    torch.gather: _take_along(1), "gather": _take_along(1),
    torch.take_along_dim: _take_along(2), "take_along_dim": _take_along(2),
    "amin": _reduce, torch.amin: _reduce, "prod": _reduce, torch.prod: _reduce,
    "logsumexp": _reduce, torch.logsumexp: _reduce, "var": _var_std, torch.var: _var_std,
    "std": _var_std, torch.std: _var_std, torch.var_mean: _var_std, torch.std_mean: _var_std,
    "flip": _flip, torch.flip: _flip, "index_select": _index_select,
    **dict.fromkeys(("nanmean", torch.nanmean, "nansum", torch.nansum), _reduce),
    "count_nonzero": _reduce_at(1, 2), torch.count_nonzero: _reduce_at(1, 2),  # no keepdim
    torch.linalg.vector_norm: _norm, "logcumsumexp": _along_dim,
    **dict.fromkeys((torch.quantile, "quantile", torch.nanquantile, "nanquantile"), _quantile),
    torch.linalg.norm: _norm, torch.linalg.matrix_norm: _reduce_at(2, 3, (-2, -1)),
    **dict.fromkeys((torch.renorm, "renorm"), _renorm),
    **dict.fromkeys((torch.trapezoid, torch.trapz, torch.cumulative_trapezoid), _trapezoid),
    "diff": _diff, torch.diff: _diff, "rot90": _rot90, torch.rot90: _rot90,
    **dict.fromkeys(("tril", "triu", torch.tril, torch.triu),  # over the last two axes
                    lambda node, shapes: ("along", {"dims": [-2, -1]})),
    **dict.fromkeys(("index_add", "index_add_", torch.index_add, "index_copy", "index_copy_",
                     torch.index_copy, "index_reduce", "index_reduce_", torch.index_reduce),
                    _index_add),
    torch.index_select: _index_select,
    "cumsum": _along_dim, "cumprod": _along_dim, torch.cumprod: _along_dim,
    torch.logcumsumexp: _along_dim, F.softmin: _along_dim, "roll": _roll,
    "movedim": _movedim, torch.movedim: _movedim, "moveaxis": _movedim, torch.moveaxis: _movedim,
    "swapaxes": _transpose, torch.swapaxes: _transpose, "swapdims": _transpose,
    torch.swapdims: _transpose, "t": _t, torch.t: _t, "narrow": _narrow, torch.narrow: _narrow,
    "select": _select, torch.select: _select,
    "tile": _tile, torch.tile: _tile,
    "repeat_interleave": _repeat_interleave, torch.repeat_interleave: _repeat_interleave,
    **{f: _clamp for f in (torch.clamp, torch.clip, torch.clamp_min, torch.clamp_max, "clamp",
                           "clamp_", "clip", "clip_", "clamp_min", "clamp_max", torch.clamp_,
                           torch.clip_)},
    F.pixel_shuffle: _pixel_shuffle_call, torch.pixel_shuffle: _pixel_shuffle_call,
    F.pixel_unshuffle: _pixel_shuffle_call, torch.pixel_unshuffle: _pixel_shuffle_call,
    F.unfold: _unfold_call, F.fold: _unfold_call,
    F.channel_shuffle: _channel_shuffle_call, torch.channel_shuffle: _channel_shuffle_call,
    F.glu: _glu, F.grid_sample: _grid_sample, torch.einsum: _einsum,
    **{f: _matmul for f in (operator.matmul, torch.matmul, "matmul", torch.bmm, "bmm")},
    torch.view_as_complex: _complex_view, torch.complex: _elementwise,
    torch.view_as_real: _real_view, "view_as_real": _real_view, torch.polar: _elementwise,
    **{f: _identity for f in (torch.angle, "angle", torch.conj, "conj", torch.resolve_conj,
                              "resolve_conj", torch.real, torch.imag)},
    torch.fft.fftshift: _fft_shift, torch.fft.ifftshift: _fft_shift,
    **{f: _fft(2, (-2, -1)) for f in (torch.fft.hfft2, torch.fft.ihfft2)},
    **{f: _fft(2, None) for f in (torch.fft.hfftn, torch.fft.ihfftn)},
    **{f: _fft(2, -1) for f in (torch.fft.fft, torch.fft.ifft, torch.fft.rfft, torch.fft.irfft,
                                torch.fft.hfft, torch.fft.ihfft)},
    **{f: _fft(2, (-2, -1)) for f in (torch.fft.fft2, torch.fft.ifft2, torch.fft.rfft2,
                                      torch.fft.irfft2)},
    **{f: _fft(2, None) for f in (torch.fft.fftn, torch.fft.ifftn, torch.fft.rfftn,
                                  torch.fft.irfftn)},
}  # fmt: skip



def call_rule(target: Any) -> Call | None:
    """The rule of a torch function or Tensor method: its :data:`CALL_RULES` entry, else
    the elementwise rule where every ATen overload of its name is one torch tags
    pointwise and returns one tensor (``torch.fmod``, ``x.xlogy(y)``, ``torch.special.
    erfcx``: each output entry reads the same entry of each broadcast input)."""
    found = CALL_RULES.get(target)
    if found is not None:
        return found
    if isinstance(target, str) and target.endswith("_") and not target.endswith("__"):
        found = call_rule(target[:-1])  # ``x.copysign_(y)`` as ``x.copysign(y)``
        return found if found in (_identity, _elementwise) else None
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    torch_own = getattr(torch, name, None) is target or getattr(
        torch.special, name.removeprefix("special_"), None) is target  # ``special_erfcx``
    return _elementwise if (isinstance(target, str) or torch_own) and _all_pointwise(name) \
        else None  # fmt: skip


@functools.cache
def _all_pointwise(name: str) -> bool:
    """Every ATen overload of ``name`` that takes a tensor is pointwise and returns one
    tensor (``erfc.Scalar`` takes a Python number and returns one)."""
    packet = getattr(torch.ops.aten, name, None)
    overloads = [getattr(packet, o) for o in getattr(packet, "overloads", list)()]
    overloads = [op for op in overloads if "out" not in op._overloadname and any(
        str(a.type).startswith("Tensor") for a in op._schema.arguments)]
    return bool(overloads) and all(
        len(op._schema.returns) == 1 and str(op._schema.returns[0].type) == "Tensor"
        and (torch.Tag.pointwise in op.tags or decomposes_pointwise(op))
        for op in overloads)  # fmt: skip


@functools.cache
def decomposes_pointwise(op: Any) -> bool:
    """An untagged composite (``special_ndtr``, ``special_expit``) is pointwise when every
    op it runs on a small tensor is tagged pointwise; a softmax or a sum is not."""
    composite = isinstance(op, torch._ops.OpOverload) and \
        torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd")
    if not composite:
        return False  # a kernel of its own: only its tag tells
    samples = {"int": 1, "SymInt": 1, "float": 0.5, "number": 1, "bool": False}
    args, kwargs = [], {}
    for a in op._schema.arguments:
        kind = str(a.type)
        if a.has_default_value():
            continue
        if kind.startswith("Optional"):  # given as None (``rounding_mode``)
            kwargs[a.name] = None
        elif kind != "Tensor" and kind not in samples:
            return False
        elif a.kwarg_only:
            kwargs[a.name] = samples.get(kind)
        else:
            args.append(torch.rand(3) + 0.5 if kind == "Tensor" else samples[kind])
    try:
        graph = make_fx(lambda *xs: op(*xs, **kwargs))(*args).graph
    except Exception:  # noqa: BLE001 - any failure reads as not pointwise (safe: held)
        return False
    ran = [n.target for n in graph.nodes if n.op == "call_function"]
    return bool(ran) and all(torch.Tag.pointwise in getattr(t, "tags", ()) for t in ran)
