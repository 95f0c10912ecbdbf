"""The PyTorch side of the finite-cut probe and of the strip probe
(:mod:`filterprune.core.finite`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..core.analysis import Analysis, Group
from ..core.finite import SKIPPED, Probe, probe_cut, verdict
from ..core.params import FilterPruningParams
from ..core.selection import MAX_GROUP_LEVEL, keep_count, unit_multiple
from ._copy import bake_weights, copy_model, detach_computed_weights
from ._snapshot import attributes_kept, restore, snapshot
from .fake_quant import lazy_ranges_paused
from .masks import apply_masks
from .shrink import shrink_model

__all__ = ["cut_probe", "strip_probe"]

log = logging.getLogger("filterprune")
Checked = tuple[bool, bool] | None  # (forward finite, gradients finite); None: it failed


@contextlib.contextmanager
def cut_probe(model: nn.Module, sample: Any, analysis: Analysis,
              params: FilterPruningParams) -> Iterator[Probe | None]:  # fmt: skip
    """``finite(groups)`` on ``model``: the probe's cut of ``groups`` masked, the float
    outputs and the parameters' gradients checked (:func:`~filterprune.core.finite.verdict`)
    on the first of a few seeded inputs of ``sample``'s shapes on which the uncut model is
    finite. Afterwards the model is as it was (classes, buffers, hooks)."""
    before = snapshot(model)
    try:
        # the first training batch still sets their ranges; the probe's inputs, no flag
        with lazy_ranges_paused(model), attributes_kept(model):
            inputs, uncut = _finite_inputs(model, sample)
            if inputs is None:
                log.info(SKIPPED)
                yield None
                return
            layers, bn = analysis.graph.layers, params.prune_batch_norms

            def finite(groups: Sequence[Group]) -> bool:
                apply_masks(model, analysis.keeps(probe_cut(groups)), layers, bn=bn)
                return verdict(uncut, _finite(model, inputs))

            yield finite
    finally:
        restore(before)
        detach_computed_weights(model)  # left with gradients by the probe's backward


@contextlib.contextmanager
def strip_probe(model: nn.Module, sample: Any, analysis: Analysis,
                params: FilterPruningParams) -> Iterator[Probe | None]:  # fmt: skip
    """:func:`_strip_probe`, which leaves no trace on ``model``: a copy's hook that closes
    over an object of the model's (a collector of features) writes into it."""
    with attributes_kept(model), _strip_probe(model, sample, analysis, params) as same:
        yield same


# the deepest cut, and half: a test of sizes that answers otherwise at one width alone
# (``if out.shape[1] != x.shape[1]`` of 32 against 16) flips at a cut by half
_PROBED_LEVELS = (MAX_GROUP_LEVEL, 0.5)


@contextlib.contextmanager
def _strip_probe(model: nn.Module, sample: Any, analysis: Analysis,
                 params: FilterPruningParams) -> Iterator[Probe | None]:  # fmt: skip
    """``same(groups)``: copies of ``model`` with the deepest cut of ``groups`` a plan can
    make, and with half of each cut, one masked and one stripped, compute the same on a
    seeded input of ``sample``'s shapes (float outputs within 1e-4 of their largest
    magnitude, or 1e-7 in float64).
    A capture that fixes sizes read in forward (torch.export) misses a channel count used
    as a number (``x.shape[1] ** -0.5``) or in a view: only the stripped copy computes
    with it cut. The copies' weights are redrawn
    (:func:`~filterprune.testing.zoo.nondegenerate`), so a zero-initialised gamma or a
    1e-6 layer scale hides no branch; ``model`` itself is not touched."""
    from ..testing.zoo import nondegenerate

    try:
        base = copy_model(model)
    except Exception as err:  # noqa: BLE001 - a model deepcopy refuses: no check
        log.info("filter_pruning: no check that the strip cuts as the masks do: the model "
                 "cannot be copied (%s)", _first_line(err))  # fmt: skip
        yield None
        return
    inputs, _ = _finite_inputs(base, sample)
    if inputs is None:
        yield None
        return
    redrawn = nondegenerate(copy_model(base))
    if _finite_outputs(redrawn, inputs):
        base = redrawn  # else weights that only make sense as trained: kept as they are
    layers, bn = analysis.graph.layers, params.prune_batch_norms

    def same(groups: Sequence[Group]) -> bool:
        return all(same_at(groups, level) for level in _PROBED_LEVELS)

    def same_at(groups: Sequence[Group], level: float) -> bool:
        # counted in each group's units, as a plan counts them (a GroupNorm group's 4 units
        # of 8 filters are not "no more than one multiple of 8")
        keeps = analysis.keeps(probe_cut(groups, lambda g: keep_count(
            g.size, level, unit_multiple(g, params.filters_multiple_of)), last=True))
        masked = copy_model(base)
        apply_masks(masked, keeps, layers, bn=bn)
        try:
            ref = _outputs(masked, inputs)
        except Exception:  # noqa: BLE001 - the masked model fails too: not the strip's doing
            return True
        try:
            small = copy_model(base)
            bake_weights(small.modules())  # as strip() does: weight_norm written in
            small = shrink_model(small, keeps, layers)
            got = _outputs(small, inputs)
        except Exception:  # noqa: BLE001 - a strip or stripped forward that fails
            return False
        return _close(ref, got, 1e-4) or _close_in_float64(masked, small, inputs, ref, got)

    yield same


def _close_in_float64(masked: nn.Module, small: nn.Module, inputs: Any,
                      ref: list[torch.Tensor], got: list[torch.Tensor]) -> bool:  # fmt: skip
    """Whether two outputs apart by more than float32 rounding meet in float64 (a deep
    model's rounding alone can exceed 1e-4); where float64 does not run, within 1e-3."""
    wide = pytree.tree_map(lambda t: t.double() if torch.is_tensor(t) and t.is_floating_point()
                           else t, inputs)  # fmt: skip
    try:
        return _close(_outputs(masked.double(), wide), _outputs(small.double(), wide), 1e-7)
    except Exception:  # noqa: BLE001 - an op without float64
        return _close(ref, got, 1e-3)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _finite_outputs(model: nn.Module, inputs: Any) -> bool:
    try:
        return all(bool(torch.isfinite(t).all()) for t in _outputs(model, inputs))
    except Exception:  # noqa: BLE001 - a forward that fails on redrawn weights
        return False


def _outputs(model: nn.Module, inputs: Any, grad: bool = False) -> list[torch.Tensor]:
    """The float outputs of ``model(*inputs)`` in eval mode, seeded, the caller's random
    state and training flag kept; ``grad``: recorded for a backward."""
    training = model.training
    devices = [p.device.index or 0 for p in list(model.parameters())[:1] if p.device.type == "cuda"]
    model.eval()
    try:
        with torch.set_grad_enabled(grad), torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            return [t for t in pytree.tree_leaves(model(*inputs))
                    if isinstance(t, torch.Tensor) and t.is_floating_point()]  # fmt: skip
    finally:
        model.train(training)


def _close(ref: list[torch.Tensor], got: list[torch.Tensor], tol: float) -> bool:
    if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got, strict=True)):
        return False
    for a, b in zip(ref, got, strict=True):
        scale = float(a.abs().max()) if a.numel() else 0.0
        if a.numel() and float((a - b).abs().max()) > tol * max(scale, 1e-6):
            return False
    return True


def _finite_inputs(model: nn.Module, sample: Any) -> tuple[Any, Checked]:
    """The first input on which the uncut model's output is finite, and its check: float
    tensors drawn normal, then uniform in [0, 1), then the example input itself (integer
    tensors drawn 0 or 1 first: an all-zero token input can leave a channel dead)."""
    generator = torch.Generator().manual_seed(0)

    def normal(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or t.dtype == torch.bool:
            return t
        if t.is_floating_point():
            return torch.randn(t.shape, generator=generator).to(t)
        return torch.randint(0, 2, t.shape, generator=generator).to(t)

    def uniform(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return torch.rand(t.shape, generator=generator).to(t)
        return t

    for inputs in (pytree.tree_map(normal, sample), pytree.tree_map(uniform, sample), sample):
        checked = _finite(model, inputs)
        if checked is not None and checked[0]:
            return inputs, checked
    return None, None


def _finite(model: nn.Module, inputs: Any) -> Checked:
    """Whether the float outputs of ``model(*inputs)`` and the gradients of their sum are
    finite, in eval mode and with the caller's random state kept (``.grad`` is not
    written); ``None`` where the forward fails."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        leaves = _outputs(model, inputs, grad=True)
        forward = all(bool(torch.isfinite(t).all()) for t in leaves)
        total = sum((t.sum() for t in leaves if t.requires_grad), torch.zeros(()))
        found = torch.autograd.grad(total.float(), params, allow_unused=True) if (
            forward and total.requires_grad) else []  # fmt: skip
    except Exception:  # noqa: BLE001 - a model that needs more than its example input
        return None
    return forward, all(bool(torch.isfinite(g).all()) for g in found if g is not None)
