"""Importances that read more than the weight: what each needs from a frontend.

``L1``, ``L2`` and ``geometric_median`` score filters from the weight alone. Three
criteria need a signal the model holds elsewhere:

* ``taylor`` (first-order Taylor, Molchanov et al. 2019): a per-filter score summed
  over training steps; the frontend hooks the gradients and hands the totals over as a
  ``(filters, 1)`` matrix. Each step adds ``(sum over a filter of gradient x weight)^2``,
  except where a BatchNorm is the only reader of the layer's output
  (:func:`taylor_batchnorms`): there it adds ``(g_gamma * gamma + g_beta * beta)^2``
  per channel (the BatchNorm's scale and shift with their gradients), as the paper
  does. Why: in training mode a BatchNorm makes its input's scale irrelevant, so the
  layer's ``sum g*w`` is zero up to rounding and would rank noise; the BatchNorm's
  term is the first-order change of the loss when the channel's output is zeroed
  (``sum dL/dz * z`` over the batch). Where the BatchNorm's scale and shift get no
  gradient (affine off, frozen, Keras's ``scale=False``), the frontend reads that sum
  from its output ``z``.
* ``bn_scale`` (network slimming, Liu et al. 2017): ``|gamma|`` of the BatchNorm right
  after the layer; the frontend hands ``gamma`` over as ``(filters, 1)``.
* ``coupled_L2`` (group magnitude, Fang et al. 2023): every parameter that holds the
  group's channels (producers' filters, norm scales and shifts, readers' input columns),
  scored per group by :func:`~filterprune.core.coupled.coupled_scores`; the frontend
  hands the parameters over as stored.

A frontend that cannot provide a signal refuses with :func:`unsupported`.

Example:
    >>> importance_source("L2"), importance_source("taylor"), importance_source("coupled_L2")
    ('weight', 'gradient', 'params')
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ConfigError
from ._validation import listed
from .graph import Graph

log = logging.getLogger("filterprune")

__all__ = ["SOURCES", "importance_source", "following_batchnorm", "batchnorm_scales",
           "taylor_batchnorms", "taylor_scores", "unsupported", "missing_batchnorm"]  # fmt: skip

SOURCES = {"taylor": "gradient", "bn_scale": "bn_scale", "coupled_L2": "params"}
"""Importance name -> the signal it scores (criteria not listed score the weight)."""

_NEEDS = {"gradient": "gradients accumulated over training steps",
          "bn_scale": "the BatchNorm scale after each pruned layer",
          "params": "every parameter that holds the pruned channels"}  # fmt: skip


def importance_source(name: str) -> str:
    """``"weight"``, ``"gradient"`` or ``"bn_scale"``: what importance ``name`` scores."""
    return SOURCES.get(name, "weight")


_SCALES = ("weight", "gamma")  # the scale parameter's name: PyTorch, Keras
_SHIFTS = ("bias", "beta")  # the shift parameter's name: PyTorch, Keras


def _calls(graph: Graph, layer: str) -> set[str]:
    """The graph nodes where ``layer`` runs as a conv or linear."""
    return {n.name for n in graph if n.layer == layer and n.op in ("conv", "linear")}


def following_batchnorm(graph: Graph, layer: str) -> tuple[str, str] | None:
    """``(batchnorm layer, scale parameter)`` of the BatchNorm reading ``layer``'s output
    directly, if there is one with a scale."""
    calls = _calls(graph, layer)
    for node in graph:
        if node.op != "batchnorm" or not node.inputs or node.inputs[0] not in calls:
            continue
        info = graph.layers.get(node.layer or "")
        scale = next((p for p in _SCALES if info and p in info.params), None)
        if info is not None and info.kind == "batchnorm" and scale is not None:
            return info.name, scale
    return None


def taylor_batchnorms(graph: Graph, layer: str) -> list[tuple[str, list[str], int]] | None:
    """The BatchNorms that give ``layer``'s ``taylor`` score.

    Returns:
        ``(batchnorm layer, [scale, shift], offset)`` for each BatchNorm that reads
        ``layer``'s output, its filter ``i`` as channel ``offset + i``: right after it,
        after channel-wise ops (a ReLU, a pooling), sums and products of one shape (a
        residual add before the BatchNorm: the layers added are cut together, so each
        takes the BatchNorm's term, where their ``sum g*w`` cancel) or inside
        concatenations along the channels (a DenseNet's layers each read those before),
        where nothing else reads it. No shift where the BatchNorm has none, neither where
        it has no scale (a shift's term alone is not the channel's). Else ``None``, and
        the weight's ``sum g*w`` scores the filters (where the output also goes
        elsewhere, the filters' scale matters there). Where the parameters listed are not
        all trainable, or none is, the frontend sums ``g * y`` over the BatchNorm's output
        ``y``: the same term, ``g_gamma * gamma + g_beta * beta``. Each BatchNorm's term
        is squared on its own. A BatchNorm called more than once gives ``None``: its hook
        sees every call.
    """
    readers: dict[str, list] = {}
    calls: dict[str, int] = {}  # per BatchNorm layer: its calls
    for node in graph:
        for name in dict.fromkeys(node.inputs):
            readers.setdefault(name, []).append(node)
        if node.op == "batchnorm":
            calls[node.layer] = calls.get(node.layer, 0) + 1
    # (tensor, offset of the filters in it, axes that must be the channels', axes that
    # must not: a concatenation's, a pooling's)
    todo = [(call, 0, (), ()) for call in _calls(graph, layer)]
    seen, found = set(), []
    while todo:
        name, offset, axes, mixed = todo.pop()
        if name in graph.outputs or not readers.get(name):
            return None  # a model output, or read by nothing: not every path is normed
        if (name, offset) in seen:
            continue
        seen.add((name, offset))
        for node in readers[name]:
            if node.op == "identity" and len(node.inputs) == 1:
                todo.append((node.name, offset, axes, mixed))
            elif node.op == "along" and len(node.inputs) == 1 and isinstance(node.shape, tuple) \
                    and len(node.shape) == len(graph[name].shape or ()):  # fmt: skip
                dims = tuple(d % len(node.shape) for d in node.attrs.get("dims", ()))
                todo.append((node.name, offset, axes, (*mixed, *dims)))  # a pooling
            elif node.op == "elementwise" and node.shape is not None \
                    and node.shape == graph[name].shape:  # fmt: skip
                # a sum or product of the group's channels (a residual add before the
                # BatchNorm, a gate): the cut removes the BatchNorm's channel all the same
                todo.append((node.name, offset, axes, mixed))
            elif node.op == "concat" and isinstance(node.shape, tuple):
                axis = node.attrs["axis"] % len(node.shape)
                sizes = [graph[i].shape for i in node.inputs]
                if not all(isinstance(size, tuple) for size in sizes):
                    return None
                for k, i in enumerate(node.inputs):
                    if i == name:
                        before = sum(size[axis] for size in sizes[:k])
                        todo.append((node.name, offset + before, (*axes, axis), mixed))
            elif node.op == "batchnorm" and node.inputs[0] == name:
                info = graph.layers.get(node.layer or "")
                channel = node.attrs.get("channel_axis", 1) % max(len(node.shape or ()), 1)
                if info is None or info.kind != "batchnorm" or channel in mixed \
                        or any(a != channel for a in axes) or calls[node.layer] > 1:  # fmt: skip
                    return None  # (a BatchNorm called twice: its hook sees both calls)
                scale = [p for p in _SCALES if p in info.params]
                shift = [p for p in _SHIFTS if p in info.params] if scale else []
                found.append((info.name, [*scale[:1], *shift[:1]], offset))
            else:
                return None
    return found or None


def batchnorm_scales(graph: Graph, layers: list[str],
                     read: Callable[[str, str], np.ndarray]) -> dict[str, np.ndarray]:  # fmt: skip
    """Per layer, the following BatchNorm's scale as ``(filters, 1)``.

    Args:
        read: ``(batchnorm layer, parameter name) -> values`` from the frontend's model.

    Raises:
        ConfigError: If some layer has no BatchNorm with a scale right after it.
    """
    found = {name: following_batchnorm(graph, name) for name in layers}
    missing = [name for name, bn in found.items() if bn is None]
    if missing:
        unscaled = [name for name in missing if any(
            n.op == "batchnorm" and n.inputs and n.inputs[0] in _calls(graph, name)
            for n in graph)]  # fmt: skip
        raise missing_batchnorm(missing, unscaled)
    return {name: np.asarray(read(*bn), dtype=np.float64).reshape(-1, 1)
            for name, bn in found.items()}  # fmt: skip


_SAID: set[tuple[str, ...]] = set()


def taylor_scores(
    totals: dict[str, np.ndarray | None], weights: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The accumulated Taylor totals, or the weights' L1 norms while some layer has none
    (or only zeros: every gradient that reached it was zero).

    Before the first backward pass (the masks put in place at creation) there are no
    gradients yet; the L1 norm stands in for every layer, so ``pruning_init`` > 0 still
    picks sensible filters.

    Args:
        totals: Layer -> its ``(filters, 1)`` totals, or ``None`` before any backward pass.
        weights: Reads each producer's weight, filters on axis 0 (called only when needed).
    """
    missing = tuple(name for name, t in totals.items() if t is None)
    # zero totals after backward passes: a loss that does not depend on the layer (or
    # scaled by 0) ranks every filter alike, which would keep the first ones
    zero = tuple(name for name, t in totals.items() if t is not None and not np.any(t))
    if not missing and not zero:
        return totals
    if len(missing) == len(totals):
        log.info("taylor importance: no gradients yet, the weights' L1 norm stands in")
    elif missing and missing not in _SAID:  # said once: the ranking runs at every level change
        _SAID.add(missing)
        log.warning(
            "taylor importance: no gradient has reached %s, so every layer is ranked by the "
            "L1 norm of its weights. Each prunable layer must take part in the loss with its "
            "weight trainable, or be left out (`ignored_scopes`).", listed(missing))
    elif zero and ("zero", *zero) not in _SAID:
        _SAID.add(("zero", *zero))
        log.warning(
            "taylor importance: every gradient that reached %s so far was zero or not "
            "finite, so every layer is ranked by the L1 norm of its weights. Check that the "
            "loss the backward pass runs on is finite and depends on the model's output.",
            listed(zero))
    read = weights()
    return {name: np.abs(read[name]).reshape(read[name].shape[0], -1).sum(1)[:, None]
            for name in totals}  # fmt: skip


def unsupported(importance: str, where: str) -> ConfigError:
    """The error for an importance whose signal ``where`` (a frontend) cannot provide."""
    need = _NEEDS[importance_source(importance)]
    return ConfigError(
        f"`filter_importance` must be one {where} can compute; {importance!r} needs {need}, "
        f"which {where} does not provide. Use 'L1', 'L2' or 'geometric_median'. "
        f"Received: filter_importance={importance!r}."
    )


def missing_batchnorm(layers: list[str], unscaled: Sequence[str] = ()) -> ConfigError:
    """The error for ``bn_scale`` on producers with no BatchNorm right after them, or whose
    BatchNorm has no scale parameter (``unscaled``, among ``layers``)."""
    shown = ", ".join(layers[:5]) + (", ..." if len(layers) > 5 else "")
    why = f"{len(layers)} have none ({shown})"
    if unscaled:
        why += (f"; the BatchNorm after {len(unscaled)} of them has no scale parameter (a "
                "FrozenBatchNorm2d holds it as a fixed buffer, Keras's scale=False has none), "
                "so network slimming has nothing to read")
    return ConfigError(
        "`filter_importance`='bn_scale' needs a BatchNorm with a scale right after every "
        f"pruned layer; {why}. Exclude them with `ignored_scopes` or use another importance "
        "(L2, taylor). Received: filter_importance='bn_scale'."
    )
