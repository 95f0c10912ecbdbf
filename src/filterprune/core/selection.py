"""Choosing which channels of each group to keep.

Given per-channel importance scores, a group keeps its ``n`` most important
channels. Equal-split constraints (grouped convolutions, ``chunk``) are met by
choosing the same number of channels in every block.
"""

from __future__ import annotations

import math

import numpy as np

from .analysis import Group

__all__ = ["keep_count", "select_group", "MAX_GROUP_LEVEL"]

MAX_GROUP_LEVEL = 0.9  # no group loses more than 90% of its filters


def keep_count(size: int, level: float, multiple_of: int = 1) -> int:
    """Filters a group of ``size`` keeps at ``level``, rounded up to ``multiple_of``.

    Example:
        >>> keep_count(64, 0.5, 8), keep_count(20, 0.5, 8), keep_count(10, 0.95)
        (32, 16, 1)
    """
    remaining = math.ceil(round(size * (1.0 - level), 6) / multiple_of) * multiple_of
    return int(min(size, max(1, remaining)))


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    keep = np.zeros(scores.size, dtype=bool)
    if n > 0:
        order = np.argsort(-scores, kind="stable")
        keep[order[:n]] = True
    return keep


def _partition(group: Group) -> np.ndarray | None:
    """The blocks as a clean partition of the group's channels, if they form one."""
    first = None
    for b in group.blocks:
        rows = [np.unique(r[r >= 0]) for r in b]
        if len({r.size for r in rows}) != 1:
            return None
        stacked = np.stack(rows)
        if np.unique(stacked).size != stacked.size or stacked.size != group.size:
            return None
        if first is None:
            first = stacked
        elif not np.array_equal(np.sort(first, axis=1), np.sort(stacked, axis=1)):
            return None
    return first


def _balanced(group: Group, keep: np.ndarray) -> bool:
    for b in group.blocks:
        counts = [int(np.sum(keep[r[r >= 0]])) + int(np.sum(r < 0)) for r in b]
        if len(set(counts)) != 1:
            return False
    return True


def select_group(group: Group, scores: np.ndarray, n_keep: int) -> np.ndarray:
    """Boolean mask over ``group.roots``: the channels kept.

    Falls back to keeping everything if the group's constraints cannot be met.
    """
    if not group.blocks:
        return _top(scores, n_keep)
    parts = _partition(group)
    if parts is not None:
        per_block = max(1, math.ceil(n_keep / parts.shape[0]))
        keep = np.zeros(group.size, dtype=bool)
        for row in parts:
            keep[row[_top(scores[row], per_block)]] = True
        return keep
    keep = _top(scores, n_keep)
    for _ in range(8):  # repair: grow deficient blocks with their best pruned channels
        if _balanced(group, keep):
            return keep
        for b in group.blocks:
            counts = [int(np.sum(keep[r[r >= 0]])) + int(np.sum(r < 0)) for r in b]
            target = max(counts)
            for r, c in zip(b, counts, strict=True):
                cand = np.unique(r[r >= 0])
                cand = cand[~keep[cand]]
                need = target - c
                if need > 0 and cand.size:
                    keep[cand[np.argsort(-scores[cand], kind="stable")[:need]]] = True
    return keep if _balanced(group, keep) else np.ones(group.size, dtype=bool)
