"""Fold BatchNorm into the quantized conv before it, for export.

ONNX Runtime runs a QDQ conv as int8 only when a QuantizeLinear follows it; a
BatchNormalization in between keeps it in float, and ONNX Runtime cannot fold that
BatchNorm itself once the conv's weight comes out of a DequantizeLinear. Folding in torch
first is exact in eval mode for per-channel weights: ``Q(w * f)`` with the scale times
``|f|`` is ``f * Q(w)`` (on a signed grid; an unsigned one is folded only where no ``f`` is
negative).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.graph import Graph
from ._copy import computed_weights, user_hooks
from ._forwards import reached_modules
from .fake_quant import FakeQuantize
from .masks import overrides_forward

__all__ = ["fold_batchnorms"]


def _pairs(graph: Graph) -> list[tuple[str, str]]:
    """``(conv layer, batchnorm layer)`` where the conv's only reader is the BatchNorm and
    each layer is called once."""
    readers: dict[str, list[str]] = {}
    calls: dict[str | None, int] = {}
    for node in graph:
        calls[node.layer] = calls.get(node.layer, 0) + 1
        for name in node.inputs:
            readers.setdefault(name, []).append(node.name)
    out = []
    for node in graph:
        info = graph.layers.get(node.layer) if node.layer else None
        if info is None or info.kind != "conv" or node.name in graph.outputs:
            continue
        after = readers.get(node.name, [])
        if len(after) != 1 or graph[after[0]].op != "batchnorm":
            continue
        bn = graph[after[0]].layer
        if bn is not None and calls[node.layer] == 1 and calls[bn] == 1:
            out.append((node.layer, bn))
    return out


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    q = conv._modules.get("weight_quantizer")
    return (
        isinstance(q, FakeQuantize) and q.axis is not None and q.frozen
        and isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_var is not None
        # a torch conv running torch's forward (under the masked and quantized class): a
        # module or subclass of the user's own may not pass a bias the fold adds
        and isinstance(conv, nn.modules.conv._ConvNd)
        and not isinstance(conv, nn.modules.conv._ConvTransposeNd)
        and not overrides_forward(getattr(type(conv), "_filterprune_base", type(conv)))
        and "input_quantizer" not in bn._modules and not conv._forward_hooks
        # a hook of the user's on the BatchNorm (registered after the capture) would run
        # on the folded conv's output, or read attributes the Identity has not
        and not user_hooks(bn)
        and not any(k.endswith("_mask") for k in [*conv._buffers, *bn._buffers])
        # a weight computed in forward (weight_norm, spectral_norm) has no parameter to scale
        and "weight" not in computed_weights(conv)
        # an unsigned grid holds no negative weight: a negative gamma would turn its
        # channel signed, at half the resolution the model was trained with
        and (q.quant_min < 0 or not (_factor(bn) < 0).any())
    )  # fmt: skip


def _factor(bn: nn.Module) -> torch.Tensor:
    """What the BatchNorm multiplies each channel by."""
    f = bn.running_var.add(bn.eps).rsqrt()
    return f * bn.weight if bn.weight is not None else f


def _fold(conv: nn.Module, bn: nn.Module) -> None:
    f = _factor(bn)
    shift = -bn.running_mean * f + (bn.bias if bn.bias is not None else 0.0)
    if conv.bias is not None:
        shift = shift + conv.bias * f
    view = (-1,) + (1,) * (conv.weight.dim() - 1)
    conv.weight = nn.Parameter(conv.weight * f.view(view))
    conv.bias = nn.Parameter(shift)
    conv.weight_quantizer.freeze(conv.weight)


def _replace_with_identity(model: nn.Module, name: str, bn: nn.Module) -> None:
    """An ``nn.Identity`` in the BatchNorm's place, keeping its hooks and quantizers."""
    ident = nn.Identity()
    ident._forward_hooks.update(bn._forward_hooks)
    ident._forward_pre_hooks.update(bn._forward_pre_hooks)
    for child, module in bn.named_children():
        ident.add_module(child, module)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, ident)


def fold_batchnorms(model: nn.Module, graph: Graph) -> nn.Module:
    """Fold each eval-mode BatchNorm into the per-channel quantized conv that alone feeds
    it (``model`` in place, stripped: frozen quantizers, no masks)."""
    modules = dict(model.named_modules())
    # a forward set on an instance may call either by reference, not by attribute: the
    # Identity put in the BatchNorm's place would not stop it
    called = set().union(*(reached_modules(vars(m)["forward"]) for m in modules.values()
                           if "forward" in vars(m)))  # fmt: skip
    with torch.no_grad():
        for conv_name, bn_name in _pairs(graph):
            conv, bn = modules.get(conv_name), modules.get(bn_name)
            if conv is None or bn is None or not _foldable(conv, bn) or \
                    {id(conv), id(bn)} & called:  # fmt: skip
                continue
            _fold(conv, bn)
            _replace_with_identity(model, bn_name, bn)
    return model
