"""``coupled_L2`` importance: a channel scored by every tensor slice that goes with it.

Cutting a channel removes more than its producers' filters: the scale and shift of the
norm layers on it and the input columns of every layer that reads it go too. Behind a
BatchNorm a filter's own norm says little (the norm undoes its scale); the scale and
the readers' columns say how much the channel contributes. So each parameter that holds
a group's channels along one of its axes (a "member") gives each channel the sum of
squares of its slice, divided by the mean of those sums over the member's slices, and a
channel's score is the mean over the group's members (a group-level magnitude, as in
Fang et al., DepGraph, CVPR 2023). Dividing makes each member's share scale-free: a
filter bank that a BatchNorm rescales anyway cannot outweigh the BatchNorm and the
readers. Every group's scores then average about 1, so groups with many members (a
residual stream) stay comparable with small ones when channels are ranked across groups.

An axis whose length is not the number of channel ids on it (a grouped convolution's
input axis, which holds one group's channels) is not a member; the channels it reads
are scored by their other members.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .analysis import Analysis

__all__ = ["coupled_scores", "coupled_layers"]


def coupled_layers(analysis: Analysis) -> list[str]:
    """The layers whose parameters :func:`coupled_scores` reads."""
    return [layer for layer in analysis.state.uses if layer in analysis.graph.layers]


Params = Mapping[str, Mapping[str, np.ndarray]]


def coupled_scores(analysis: Analysis, params: Params) -> dict[int, np.ndarray]:
    """Per prunable group id, each channel's score: over the group's members, the mean of
    its slice's sum of squares relative to the member's mean.

    Args:
        analysis: The model's channel analysis.
        params: Per layer, its parameters by the names in ``graph.layers[layer].params``,
            as stored (the axes those roles describe).
    """
    uf, where = analysis.state.uf, analysis.root_group
    totals = {g.id: np.zeros(g.size) for g in analysis.prunable_groups}
    members = dict.fromkeys(totals, 0)
    for layer in coupled_layers(analysis):
        uses, arrays = analysis.state.uses[layer], params.get(layer, {})
        for pname, (_, roles) in analysis.graph.layers[layer].params.items():
            array = arrays.get(pname)
            for axis, role in enumerate(roles):
                use = uses.get(role) if role is not None else None
                if array is None or use is None or use.ids.size != array.shape[axis]:
                    continue
                share = _member_share(array, axis, uf.roots(use.ids).tolist(), where, totals)
                for gid, values in share.items():
                    totals[gid] += values
                    members[gid] += 1
    return {gid: total / max(members[gid], 1) for gid, total in totals.items()}


def _member_share(array: np.ndarray, axis: int, roots: list[int], where: dict,
                  totals: dict[int, np.ndarray]) -> dict[int, np.ndarray]:  # fmt: skip
    """Per group the member touches, each channel's sum of squares along ``axis`` over the
    mean of those sums (positions of one channel, as a flattened feature map's, add up
    first)."""
    rows = np.moveaxis(np.asarray(array, dtype=np.float64), axis, 0)
    squares = np.square(rows.reshape(rows.shape[0], -1)).sum(axis=1)
    share: dict[int, np.ndarray] = {}
    seen: dict[int, np.ndarray] = {}
    for root, value in zip(roots, squares, strict=True):
        gid, index = where.get(root, (-1, -1))
        if gid in totals:
            share.setdefault(gid, np.zeros_like(totals[gid]))[index] += value
            seen.setdefault(gid, np.zeros(totals[gid].shape, dtype=bool))[index] = True
    touched = np.concatenate([share[g][seen[g]] for g in share]) if share else np.zeros(0)
    touched = touched[np.isfinite(touched)]  # a NaN slice scores NaN, not all the others
    mean = touched.mean() if touched.size else 0.0
    return {g: v / mean if mean > 0 else np.zeros_like(v) for g, v in share.items()}
