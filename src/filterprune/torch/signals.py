"""PyTorch signals for the ``taylor`` and ``bn_scale`` importances.

:class:`TaylorAccumulator` hooks each producer's weight: every backward pass adds
``(sum over a filter of gradient x weight)^2`` to a per-filter total (Molchanov et al.
2019). A producer that BatchNorms read (see
:func:`~filterprune.core.signals.taylor_batchnorms`) is scored on them instead: one hook
on each one's scale and shift adds ``(g_gamma * gamma + g_beta * beta)^2`` per channel;
one without trainable ones (``affine=False``, frozen) is hooked on its output instead.
Masked filters (and masked BatchNorm channels) get zero gradient, so once pruned they
stop gaining. Before any backward pass (the masks put in place at creation) the totals
are empty and the weight's L1 norm stands in, so ``pruning_init`` > 0 still picks
sensible filters. The totals travel in the compression state (:meth:`~TaylorAccumulator.state`,
:meth:`~TaylorAccumulator.load`), so a resumed run ranks as the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.graph import register_multi_grad_hook

from ..core.graph import LayerInfo
from ..core.signals import batchnorm_scales, taylor_batchnorms, taylor_scores
from .masks import masked_param

__all__ = ["TaylorAccumulator", "drop_taylor_hooks", "taylor_accumulator", "torch_signal"]


Target = list[nn.Parameter] | nn.Module  # a BatchNorm's scale and shift, or the BatchNorm
Consumer = tuple[str, int, int | None]  # (layer, offset of its filters, their count)


def _trainable(weight: Any) -> bool:
    return isinstance(weight, nn.Parameter) and weight.requires_grad


def _filter_axis(info: LayerInfo | None, module: nn.Module) -> int:
    if info is not None:  # a module of the user's own passing its weight to a conv
        return 1 if info.transposed else 0
    return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0


def _output_axis(info: LayerInfo | None, module: nn.Module) -> int:
    linear = info.kind == "linear" if info is not None else isinstance(module, nn.Linear)
    return -1 if linear else 1


class TaylorAccumulator:
    """Per-filter Taylor scores of each hooked layer, summed over backward passes.

    Args:
        modules: Layer name -> module whose ``weight`` is hooked: ``(sum g*w)^2``.
        batchnorms: Layer name -> the BatchNorms hooked in place of that layer's weight,
            with the offset and count of its filters among their channels: each one's
            parameters (scale, then shift), ``(sum over them of g*p)^2`` per channel; or
            the module itself, hooked on its output ``y``: ``(sum g * y)^2``. One hook per
            BatchNorm serves every layer it reads.
        infos: Layer name -> its facts (whether a conv is transposed); without them, the
            module's class tells.
    """

    def __init__(self, modules: dict[str, nn.Module],
                 batchnorms: dict[str, list[tuple[Target, int, int]]] | None = None,
                 infos: dict[str, LayerInfo] | None = None) -> None:  # fmt: skip
        self.infos = infos or {}
        self.grad_scaler: Any = None  # a torch.amp.GradScaler whose scale is divided out
        self.totals: dict[str, torch.Tensor] = {}
        self.passes: dict[str, int] = {}  # hook calls that reached each layer (one per
        # BatchNorm reading it, per backward pass)
        self._handles = []
        readers: dict[int, tuple[Target, list[Consumer]]] = {}  # one hook per BatchNorm
        for name, module in modules.items():
            found = (batchnorms or {}).get(name)
            if found:
                for target, offset, filters in found:
                    key = id(target) if isinstance(target, nn.Module) else id(target[0])
                    readers.setdefault(key, (target, []))[1].append((name, offset, filters))
                continue
            if _trainable(module._parameters.get("weight")) and (
                    self._axis(name, module) == 0 or self._groups(name, module) == 1):  # fmt: skip
                hook = module.weight.register_hook(self._weight_hook(name, module))
            else:  # computed in each forward (weight_norm), frozen, or out/groups per row
                # (a grouped transposed conv): read from the output
                hook = module.register_forward_hook(self._output_hook(name, module))
            self._handles.append(hook)
        for target, consumers in readers.values():
            if isinstance(target, nn.Module):  # its scale gets no gradient: read the output
                hook = target.register_forward_hook(self._batchnorm_hook(target, consumers))
            else:
                hook = register_multi_grad_hook(target, self._params_hook(target, consumers))
            self._handles.append(hook)

    def _add(self, name: str, per_filter: torch.Tensor) -> None:
        per_filter = per_filter.float()
        if self.grad_scaler is not None:  # its scale as a tensor: no wait for the GPU
            per_filter = per_filter / self.grad_scaler.scale(
                torch.ones((), device=per_filter.device))  # fmt: skip
        score = per_filter.pow(2)
        # a pass with an inf or NaN (a step a mixed-precision GradScaler skips) adds
        # nothing: it would leave the totals non-finite for good (no sync: a GPU runs on)
        score = torch.where(torch.isfinite(score).all(), score, torch.zeros_like(score))
        if name in self.totals:
            if self.totals[name].device != score.device:  # loaded from a state: on the CPU
                self.totals[name] = self.totals[name].to(score.device)
            self.totals[name] += score
        else:
            self.totals[name] = score.clone()
        self.passes[name] = self.passes.get(name, 0) + 1

    def _axis(self, name: str, module: nn.Module) -> int:
        return _filter_axis(self.infos.get(name), module)

    def _groups(self, name: str, module: nn.Module) -> int:
        info = self.infos.get(name)
        return info.groups if info is not None else getattr(module, "groups", 1)

    def _weight_hook(self, name: str, module: nn.Module):
        axis = self._axis(name, module)

        def add(grad: torch.Tensor) -> None:
            with torch.no_grad():
                self._add(name, (grad * module.weight).transpose(0, axis).flatten(1).sum(1))

        return add

    def _output_hook(self, name: str, module: nn.Module):
        """The same sum from the layer's output ``y = w * x + b``, linear in each filter's
        weight: ``sum over w of g_w * w`` is ``sum over y of g_y * (y - b)``."""
        axis = _output_axis(self.infos.get(name), module)

        def per_channel(layer: nn.Module, out: torch.Tensor) -> torch.Tensor:
            bias = masked_param(layer, "bias")
            shape = [1] * out.dim()
            shape[axis] = -1
            return out - (0 if bias is None else bias.detach().view(shape))

        return self._forward_hook(module, axis, per_channel, [(name, 0, None)])

    def _batchnorm_hook(self, module: nn.Module, consumers: list[Consumer]):
        """A BatchNorm's ``sum g_y * y`` over its output: its parameters' term
        ``g_gamma * gamma + g_beta * beta``, the loss's change when the channel goes."""
        return self._forward_hook(module, 1, lambda layer, out: out, consumers)

    def _forward_hook(self, module: nn.Module, axis: int, part: Any,
                      consumers: list[Consumer]):  # fmt: skip
        """A forward hook on ``module`` whose output's gradient adds ``sum g * part`` per
        channel (``axis``) to each consumer's slice of them."""

        def forward(layer: nn.Module, inputs: Any, out: torch.Tensor) -> None:
            if not out.requires_grad or layer is not module:  # a copy's (deepcopy keeps it)
                return
            values = part(layer, out.detach())

            def add(grad: torch.Tensor) -> None:
                with torch.no_grad():
                    self._share((grad * values).transpose(0, axis).flatten(1).sum(1), consumers)

            out.register_hook(add)

        forward.filterprune_taylor = True  # what drop_taylor_hooks takes off a copy
        return forward

    def _params_hook(self, params: list[nn.Parameter], consumers: list[Consumer]):
        def add(grads: Sequence[torch.Tensor | None]) -> None:
            with torch.no_grad():
                terms = [g * p for g, p in zip(grads, params, strict=True) if g is not None]
                if terms:  # a pass that reached neither parameter adds nothing
                    self._share(torch.stack(terms).sum(0), consumers)

        return add

    def _share(self, per_channel: torch.Tensor, consumers: list[Consumer]) -> None:
        """Add to each consumer ``(layer, offset, filters)`` its filters' channels."""
        for name, offset, filters in consumers:
            end = None if filters is None else offset + filters
            self._add(name, per_channel[offset:end])

    def scores(self, name: str) -> np.ndarray | None:
        """The totals of layer ``name`` as ``(filters, 1)``; None before any backward pass."""
        total = self.totals.get(name)
        return None if total is None else total.detach().cpu().double().numpy()[:, None]

    def state(self) -> dict[str, Any]:
        """The totals and passes so far, JSON-able (float32 values as exact floats)."""
        return {"totals": {n: t.detach().cpu().tolist() for n, t in self.totals.items()},
                "passes": {n: self.passes.get(n, 0) for n in self.totals}}  # fmt: skip

    def load(self, saved: dict[str, tuple[list[float], int]]) -> None:
        """Replace the totals with ``saved`` (layer -> ``(totals, passes)``); layers not in
        it start afresh, as before their first backward pass."""
        self.totals = {name: torch.tensor(values, dtype=torch.float32)
                       for name, (values, _) in saved.items()}  # fmt: skip
        self.passes = {name: passes for name, (_, passes) in saved.items()}

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def drop_taylor_hooks(model: nn.Module) -> None:
    """Take the Taylor forward hooks off ``model``'s modules: a copy of the masked model
    (what strip cuts) keeps them, and they would not pickle (``torch.save``)."""
    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "filterprune_taylor", False):
                del module._forward_hooks[key]


def _batchnorm_params(ctrl: Any, layers: list[str]) -> dict[str, list[tuple[Target, int, int]]]:
    """Per producer scored on its BatchNorms, each one's scale and shift with the offset
    and count of the producer's filters among its channels; the module where they are not
    all trainable (``affine=False``, frozen): in training mode it makes the producer's
    filters scale-invariant, so their ``sum g*w`` is rounding noise."""
    out: dict[str, list[tuple[Target, int, int]]] = {}
    for name in layers:
        filters = int(ctrl.analysis.state.uses[name]["out"].ids.size)
        for bn, names, offset in taylor_batchnorms(ctrl.analysis.graph, name) or ():
            module = ctrl.captured.refs[bn]
            params = [getattr(module, p, None) for p in names]
            trainable = params and all(isinstance(p, nn.Parameter) and p.requires_grad
                                       for p in params)  # fmt: skip
            out.setdefault(name, []).append((params if trainable else module, offset, filters))
    return out


def ranked_layers(ctrl: Any) -> list[str]:
    """The producer layers whose filters ``ctrl`` ranks."""
    return [name for g in ctrl.analysis.prunable_groups for name in g.producers]


def taylor_accumulator(ctrl: Any) -> TaylorAccumulator:
    """``ctrl.taylor``, made (hooks on) at its first use."""
    acc = getattr(ctrl, "taylor", None)
    if acc is None:
        refs, layers = ctrl.captured.refs, ranked_layers(ctrl)
        infos = ctrl.analysis.graph.layers
        acc = ctrl.taylor = TaylorAccumulator({name: refs[name] for name in layers},
                                              _batchnorm_params(ctrl, layers),
                                              {name: infos[name] for name in layers})  # fmt: skip
    return acc


def _taylor(ctrl: Any, layers: list[str]) -> dict[str, np.ndarray]:
    acc = taylor_accumulator(ctrl)
    scores = {name: acc.scores(name) for name in layers}
    if ctrl._ddp():  # every rank's gradients count (each saw its own data before all-reduce)
        device = next(ctrl.model.parameters()).device  # NCCL reduces on the GPU only
        sizes = {n: int(ctrl.analysis.state.uses[n]["out"].ids.size) for n in layers}
        scores = _summed_over_ranks(scores, sizes, device)
    return taylor_scores(scores, ctrl._weights)


def _summed_over_ranks(scores: dict[str, np.ndarray | None], sizes: dict[str, int],
                       device: torch.device) -> dict[str, np.ndarray | None]:  # fmt: skip
    """``scores`` (``sizes``: each layer's filters) summed over the data-parallel ranks, in
    one collective (a layer without totals on some rank counts zeros there; without
    totals on every rank it stays None)."""
    dist = torch.distributed
    flat = torch.zeros(sum(sizes.values()) + len(sizes), dtype=torch.float64)
    at = 0
    for name, size in sizes.items():
        if scores[name] is not None:
            flat[at:at + size] = torch.from_numpy(scores[name][:, 0])
            flat[at + size] = 1.0  # this rank has totals
        at += size + 1
    flat = flat.to(device)
    dist.all_reduce(flat)
    flat = flat.cpu()
    out, at = {}, 0
    for name, size in sizes.items():
        out[name] = flat[at:at + size].numpy()[:, None] if flat[at + size] > 0 else None
        at += size + 1
    return {**scores, **out}


def torch_signal(ctrl: Any, source: str) -> dict[str, np.ndarray]:
    """Per producer layer of ``ctrl``, the ``(filters, 1)`` signal ``source`` names."""
    layers = ranked_layers(ctrl)
    if source == "gradient":
        return _taylor(ctrl, layers)
    refs = ctrl.captured.refs
    return batchnorm_scales(ctrl.analysis.graph, layers,
                            lambda bn, p: getattr(refs[bn], p).detach().float().cpu().numpy())
