"""Choosing which channels of each group to keep.

Given per-channel importance scores, a group keeps its ``n`` most important
channels (:func:`select`, the pruner's choice); given channels that must stay,
it keeps those (:func:`select_required`, the ONNX converter's choice). Either
way, equal-split constraints (grouped convolutions) are then met by keeping more
channels until every block keeps the same number in each of its rows. When that
cannot be done, the whole group is kept, and :class:`Selection` says why.

Example:
    >>> from filterprune.core.analysis import Group
    >>> group = Group(0, np.arange(4), ["conv"], blocks=[np.array([[0, 1], [2, 3]])])
    >>> chosen = select(group, np.array([4.0, 3.0, 2.0, 1.0]), 2)
    >>> chosen.keep.tolist(), chosen.added, chosen.reason
    ([True, False, True, False], {2: 'grouped convolution keeps equal groups'}, None)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .analysis import Group

__all__ = ["keep_count", "unit_multiple", "too_narrow", "select", "select_group", "select_required",
           "Selection", "MAX_GROUP_LEVEL", "AT_LEAST_ONE", "EQUAL_GROUPS",
           "UNBALANCED", "WHOLE_CELLS"]  # fmt: skip

MAX_GROUP_LEVEL = 0.9  # no group loses more than 90% of its filters
AT_LEAST_ONE = "every layer keeps at least one channel"
EQUAL_GROUPS = "grouped convolution keeps equal groups"
UNBALANCED = ("its grouped convolutions cannot keep equal groups with fewer channels, "
              "so the group is kept whole")  # fmt: skip
WHOLE_CELLS = ("its grouped convolutions and group norms split it into blocks that must "
               "each keep a share, and each block is one unit, so the group is kept whole")
_ROUNDS = 8  # growing one block can unbalance another; give up after this many passes


@dataclass(frozen=True)
class Selection:
    """The channels one group keeps, and why any beyond those asked for.

    Attributes:
        keep: Boolean over ``group.roots``.
        added: Position in ``group.roots`` -> why it is kept although not asked for.
        reason: Why the whole group is kept (its constraints could not be met with
            fewer channels); None otherwise.
    """

    keep: np.ndarray
    added: dict[int, str] = field(default_factory=dict)
    reason: str | None = None


def keep_count(size: int, level: float, multiple_of: int = 1) -> int:
    """Filters a group of ``size`` keeps at ``level``, rounded up to ``multiple_of``.

    Example:
        >>> keep_count(64, 0.5, 8), keep_count(20, 0.5, 8), keep_count(10, 0.95)
        (32, 16, 1)
    """
    remaining = math.ceil(round(size * (1.0 - level), 6) / multiple_of) * multiple_of
    return int(min(size, max(1, remaining)))


def unit_multiple(group: Group, multiple_of: int) -> int:
    """``multiple_of`` filters counted in ``group``'s channels, each of which stands for
    ``group.width`` filters: a GroupNorm group of 8 is already a multiple of 8."""
    return multiple_of // math.gcd(multiple_of, group.width)


def too_narrow(groups: list[Group], multiple_of: int) -> dict[int, str]:
    """Why each group that rounding to ``multiple_of`` filters keeps whole at every level
    is left whole: it has no more filters than one multiple."""
    return {g.id: _narrow(g, multiple_of) for g in groups
            if multiple_of > 1 and unit_multiple(g, multiple_of) >= g.size}


def _narrow(group: Group, multiple_of: int) -> str:
    if group.width == 1 or multiple_of % group.width == 0:
        return (f"{group.size * group.width} filters, no more than filters_multiple_of="
                f"{multiple_of}: rounding up keeps them all")  # fmt: skip
    # channels cut in units of several filters: one multiple of filters takes many units
    unit = unit_multiple(group, multiple_of)
    return (f"{group.size * group.width} filters, cut in units of {group.width}: a multiple "
            f"of filters_multiple_of={multiple_of} takes {unit} units ({unit * group.width} "
            "filters), so rounding up keeps them all")  # fmt: skip


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    keep = np.zeros(scores.size, dtype=bool)
    if n > 0:
        order = np.argsort(-scores, kind="stable")
        keep[order[:n]] = True
    return keep


def _cells(group: Group) -> list[np.ndarray] | None:
    """The cells of the blocks' common refinement (channels that share a block in every
    constraint), if each constraint cleanly partitions the channels it reads into equal
    rows (grouped convolutions in a row with 2 and 4 groups: 4 cells; with 3 and 2: cells
    of 4, 2, 2, 4 channels). Channels a constraint does not read are one more part of it
    (a grouped conv reading half of a concatenation). A channel may fill as many
    positions as every other (a channel shuffle after a grouped conv, before another)."""
    label = np.zeros(group.size, dtype=np.int64)
    for b in group.blocks:
        rows = [np.unique(r[r >= 0]) for r in b]
        if np.all(b >= 0) and all(np.array_equal(np.sort(r), np.sort(b[0])) for r in b[1:]):
            continue  # every row reads the same channels as often: any cut keeps them equal
        times = np.unique(b[b >= 0], return_counts=True)[1]
        if len({r.size for r in rows}) != 1 or len(set(times.tolist())) > 1:
            return None  # unequal rows, or channels filling unequal numbers of positions
        stacked = np.stack(rows)
        if np.unique(stacked).size != stacked.size:
            return None
        which = np.full(group.size, len(rows), dtype=np.int64)
        for i, row in enumerate(stacked):
            which[row] = i
        label = np.unique(label * (len(rows) + 1) + which, return_inverse=True)[1]
    return [np.flatnonzero(label == c) for c in range(int(label.max()) + 1)]


def _row_counts(block: np.ndarray, keep: np.ndarray) -> list[int]:
    # a position outside the group (-1) belongs to no producer: nothing removes it
    return [int(np.sum(keep[r[r >= 0]])) + int(np.sum(r < 0)) for r in block]


def _balanced(group: Group, keep: np.ndarray) -> bool:
    return all(len(set(_row_counts(b, keep))) == 1 for b in group.blocks)


def _grow(group: Group, keep: np.ndarray, priority: np.ndarray) -> bool:
    """Keep more channels (highest ``priority`` first) until every block keeps as many in
    each row; in place. False if the blocks are still uneven after ``_ROUNDS`` passes."""
    for _ in range(_ROUNDS):
        if _balanced(group, keep):
            return True
        for b in group.blocks:
            counts = _row_counts(b, keep)
            target = max(counts)
            for r, c in zip(b, counts, strict=True):
                # a channel may fill several positions of a row (a shuffle before a
                # grouped conv): count positions, not channels
                cand, times = np.unique(r[r >= 0], return_counts=True)
                cand, times = cand[~keep[cand]], times[~keep[cand]]
                for i in np.argsort(-priority[cand], kind="stable"):
                    if c >= target:
                        break
                    keep[cand[i]] = True
                    c += int(times[i])
    return _balanced(group, keep)


def _finish(group: Group, asked: np.ndarray, keep: np.ndarray, balanced: bool,
            added: dict[int, str]) -> Selection:  # fmt: skip
    """The selection: ``keep`` if ``balanced``, else the whole group, with reasons."""
    if not balanced:
        keep = np.ones(group.size, dtype=bool)
        added.update((int(p), UNBALANCED) for p in np.flatnonzero(~asked))
        return Selection(keep, added, UNBALANCED)
    added.update((int(p), EQUAL_GROUPS) for p in np.flatnonzero(keep & ~asked))
    return Selection(keep, added)


def select(group: Group, scores: np.ndarray, n_keep: int) -> Selection:
    """The ``n_keep`` highest-scoring channels of ``group``, balanced over its blocks.

    Blocks that partition the group cleanly (grouped convolutions) keep the same
    fraction of each cell of their common refinement, at least ``n_keep`` in all;
    otherwise the top ``n_keep`` grow until every block is even, or the whole group is
    kept (``reason`` says so).
    """
    top = _top(scores, n_keep)
    if not group.blocks:
        return Selection(top)
    cells = _cells(group)
    if cells is not None:
        # the same fraction of every cell: each block, a union of cells as large as the
        # other blocks of its constraint, then keeps as many as they do
        unit = math.gcd(*(c.size for c in cells))
        share = max(1, math.ceil(n_keep * unit / group.size))
        keep = np.zeros(group.size, dtype=bool)
        for cell in cells:
            keep[cell[_top(scores[cell], cell.size // unit * share)]] = True
        if keep.all() and n_keep < group.size:  # one unit a cell: none can go
            return Selection(keep, {int(p): WHOLE_CELLS for p in np.flatnonzero(~top)},
                             WHOLE_CELLS)  # fmt: skip
        return _finish(group, top, keep, True, {})
    keep = top.copy()
    balanced = _grow(group, keep, scores)  # keeping every channel is no cut: said so
    return _finish(group, top, keep, balanced and not (keep.all() and n_keep < group.size), {})


def select_group(group: Group, scores: np.ndarray, n_keep: int) -> np.ndarray:
    """Boolean mask over ``group.roots``: the channels :func:`select` keeps.

    Falls back to keeping everything if the group's constraints cannot be met;
    :func:`select` also says why.
    """
    return select(group, scores, n_keep).keep


def select_required(group: Group, required: np.ndarray) -> Selection:
    """Keep the ``required`` channels of ``group``, at least one, and what its blocks need.

    Channels added for the blocks are the earliest in ``group.roots`` order. The
    ONNX converter's choice: a channel is required while some layer may read it.

    Args:
        group: A prunable group.
        required: Boolean over ``group.roots``: channels that must stay.
    """
    keep = np.array(required, dtype=bool)
    added: dict[int, str] = {}
    if keep.size and not keep.any():
        keep[0] = True
        added[0] = AT_LEAST_ONE
    asked = keep.copy()
    balanced = _grow(group, keep, -np.arange(group.size, dtype=np.float64))
    return _finish(group, asked, keep, balanced, added)
