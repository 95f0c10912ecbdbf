"""Per-group levels under a FLOPs target: the least important blocks of filters go first.

With ``filters_multiple_of`` rounding, one uniform level can only keep multiples of the
block size in every group at once, so the FLOPs removed jump (a 16/32/64-wide net goes
from 0.67 to 0.25 of its FLOPs with nothing between). Here each group keeps its own
count instead: blocks of ``multiple_of`` channels (a group's lowest-scoring channels
first) are removed across all groups in order of their mean importance, normalised per
group by the group's mean (one strong filter does not lower the rest of its group) so
groups of different scale compare, until the target is met. A group whose
next block would overshoot the target by more than ``tolerance`` stops there while the
others go on; when no group can land inside the window, the block that overshoots least
is taken. Past the window, blocks are given back while the target stays met, and with a
few coarse groups other counts of the same blocks are searched (:func:`_settle`).

Under :meth:`~filterprune.core.pruner.Pruner.plan_for_flops`, a block that takes a group
below the uniform level that reaches the schedule's target counts twice its score
(``floor``, ``past_floor``): a group goes further than the others for filters clearly
less important than the ones it would spare elsewhere, not for small differences of
normalised scores. Where that cannot land in the window, lower weights are tried, down
to 1 (the blocks as they score).

With LeGR coefficients (:mod:`~filterprune.core.legr_coeffs`), a group's normalised
scores become ``alpha * score + kappa`` before blocks are compared across groups, and
:func:`allocate_for_filters` does the same for a share of all prunable filters (the
``pruning_target`` levels under ``learned_ranking``).

Example (see ``tests/torch/test_flops_allocation.py`` for a ResNet-20)::

    plan = allocate_for_flops(pruner, 0.5, scores)   # 0.50 <= removed <= 0.52 when possible
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .analysis import Group
from .importance import normalize
from .selection import MAX_GROUP_LEVEL, Selection, keep_count, select, unit_multiple

__all__ = ["allocate_for_flops", "allocate_for_filters", "keep_steps", "EPS", "PAST_FLOOR",
           "TOLERANCE"]

TOLERANCE = 0.02  # a FLOPs target is met within [target, target + TOLERANCE] when possible
EPS = 1e-9  # float slack in share comparisons: keeping 32 of 40 removes 0.19999999999999996
# Weights of a block's score below a group's floor, tried in turn until the blocks land in
# the window: under 2, a block there goes first only if it scores under half the others.
PAST_FLOOR = (2.0, 1.5, 1.25, 1.0)
Coeffs = dict[int, tuple[float, float]]  # group id -> (alpha, kappa) of a learned ranking
Kept = dict[int, np.ndarray]


def keep_steps(size: int, multiple_of: int) -> list[int]:
    """Kept counts a group of ``size`` may take, largest first: whole, then multiples of
    ``multiple_of`` down to the count at the largest level allowed.

    Example:
        >>> keep_steps(16, 8), keep_steps(20, 8), keep_steps(4, 8)
        ([16, 8], [20, 16, 8], [4])
    """
    floor = keep_count(size, MAX_GROUP_LEVEL, multiple_of)
    steps = [size]
    count = (size - 1) // multiple_of * multiple_of
    while count >= floor and count > 0:
        steps.append(count)
        count -= multiple_of
    return steps


@dataclass
class _GroupSteps:
    group: Group
    scores: np.ndarray
    steps: list[int]
    block_scores: list[float]  # mean normalised score of the channels step k+1 removes
    at: int = 0  # index into steps of the count in place

    @classmethod
    def build(cls, group: Group, scores: np.ndarray, multiple_of: int,
              coeff: tuple[float, float] = (1.0, 0.0)) -> _GroupSteps:  # fmt: skip
        steps = keep_steps(group.size, unit_multiple(group, multiple_of))
        alpha, kappa = coeff  # by the mean: one strong filter does not lower its group
        ascending = np.sort(alpha * normalize(scores, by="mean") + kappa)  # alpha > 0: same order
        blocks = [float(ascending[group.size - a : group.size - b].mean())
                  for a, b in zip(steps, steps[1:], strict=False)]  # fmt: skip
        return cls(group, scores, steps, blocks)

    def next_score(self) -> float | None:
        return self.block_scores[self.at] if self.at < len(self.block_scores) else None


class _Allocation:
    """Kept counts per group and the share removed (``measure``) by the resulting selections."""

    def __init__(self, pruner, scores: dict[int, np.ndarray], measure: Callable[[Kept], float],
                 coeffs: Coeffs | None, start: dict[int, int] | None = None,
                 floor: dict[int, int] | None = None, past_floor: float = 1.0) -> None:  # fmt: skip
        self.measure = measure
        coeffs = coeffs or {}
        self.groups = {g.id: _GroupSteps.build(g, scores[g.id], pruner.multiple_of,
                                               coeffs.get(g.id, (1.0, 0.0)))
                       for g in pruner.analysis.prunable_groups}  # fmt: skip
        for gid, count in (start or {}).items():  # the largest step keeping at least count
            steps = self.groups[gid].steps
            self.groups[gid].at = max(i for i, c in enumerate(steps) if c >= count or i == 0)
        for gid, count in (floor or {}).items():  # blocks below count score more
            gs = self.groups[gid]
            gs.block_scores = [b + abs(b) * (past_floor - 1) if gs.steps[k + 1] < count else b
                               for k, b in enumerate(gs.block_scores)]  # fmt: skip
        self.chosen: dict[int, Selection] = {gid: self._select(gid) for gid in self.groups}

    def _select(self, gid: int, at: int | None = None) -> Selection:
        gs = self.groups[gid]
        return select(gs.group, gs.scores, gs.steps[gs.at if at is None else at])

    def removed_if(self, gid: int) -> tuple[float, Selection]:
        """Share removed if group ``gid`` takes its next step, and its selection."""
        gs = self.groups[gid]
        trial = self._select(gid, gs.at + 1)
        kept = {g: c.keep for g, c in self.chosen.items()}
        kept[gid] = trial.keep
        return self.measure(kept), trial

    def take(self, gid: int, selection: Selection) -> None:
        self.groups[gid].at += 1
        self.chosen[gid] = selection


def allocate_for_flops(pruner, removed: float, scores: dict[int, np.ndarray],
                       tolerance: float = TOLERANCE, coeffs: Coeffs | None = None,
                       start: dict[int, int] | None = None,
                       floor: dict[int, int] | None = None,
                       past_floor: float = PAST_FLOOR[0]):  # fmt: skip
    """Kept channels per group removing at least ``removed`` of the FLOPs.

    Args:
        pruner: A :class:`~filterprune.core.pruner.Pruner` (its analysis, FLOPs and
            ``multiple_of``).
        removed: Fraction of FLOPs to remove.
        scores: Channel importance per group id.
        tolerance: How far above ``removed`` the result may land before other groups'
            blocks are tried instead of the least important one.
        coeffs: LeGR ``(alpha, kappa)`` per group id applied to the normalised scores
            when blocks of different groups are compared; none: the identity.
        start: Kept count per group id to start from (a uniform level just short of
            the target, say); none: every group whole.
        floor: Kept count per group id below which a block's score counts
            ``past_floor`` times (the uniform level that reaches the target, say);
            none: every block as it scores.
        past_floor: That weight.

    Returns:
        ``(kept, reasons)``: boolean keep vector and selection reason per group id.
    """

    alloc = _Allocation(pruner, scores, pruner.flops_removed, coeffs, start, floor, past_floor)
    return _allocate(alloc, removed, tolerance)


def allocate_for_filters(pruner, removed: float, scores: dict[int, np.ndarray],
                         coeffs: Coeffs | None = None, tolerance: float = TOLERANCE):  # fmt: skip
    """Kept channels per group removing at least ``removed`` of all prunable filters,
    blocks of the least important (transformed) scores first across groups.

    Args and returns as :func:`allocate_for_flops`, with ``removed`` a share of the
    prunable groups' channels.
    """
    total = sum(g.size for g in pruner.analysis.prunable_groups)

    def filters_removed(kept: Kept) -> float:
        return 1.0 - sum(int(k.sum()) for k in kept.values()) / max(total, 1)

    return _allocate(_Allocation(pruner, scores, filters_removed, coeffs), removed, tolerance)


def _allocate(alloc: _Allocation, removed: float, tolerance: float):
    """Take blocks, lowest block score first, until ``alloc.measure`` reaches ``removed``."""
    heap = [(gs.next_score(), gid) for gid, gs in alloc.groups.items()
            if gs.next_score() is not None]  # fmt: skip
    heapq.heapify(heap)
    too_coarse: list[int] = []  # groups whose next block overshoots the window
    reached = removed <= 0
    while heap and not reached:
        _, gid = heapq.heappop(heap)
        frac, trial = alloc.removed_if(gid)
        if frac > removed + tolerance + EPS:
            too_coarse.append(gid)  # removing more elsewhere only makes it overshoot more
            continue
        alloc.take(gid, trial)
        reached = frac >= removed - EPS
        score = alloc.groups[gid].next_score()
        if score is not None:
            heapq.heappush(heap, (score, gid))
    if not reached and too_coarse:
        # nothing lands inside the window: the block that overshoots least
        trials = [(*alloc.removed_if(gid), gid) for gid in too_coarse]
        _, trial, gid = min(trials, key=lambda t: t[0])
        alloc.take(gid, trial)
    _settle(alloc, removed, tolerance)
    kept = {gid: c.keep for gid, c in alloc.chosen.items()}
    reasons = {gid: c.reason for gid, c in alloc.chosen.items() if c.reason}
    return kept, reasons


def _measure(alloc: _Allocation) -> float:
    return alloc.measure({g: c.keep for g, c in alloc.chosen.items()})


def _give_back(alloc: _Allocation, removed: float, tolerance: float) -> None:
    """Past the window, put blocks back while the target stays met, the most important
    block first. (:func:`_allocate` only takes blocks, so a group cut early may hold a
    share that a later, larger block of another group made unnecessary.) A block that
    cannot go back now never can (each one given back lowers the share), so each group's
    last block is tried once: about one FLOPs count per block."""
    if _measure(alloc) <= removed + tolerance + EPS:
        return
    heap = [(-gs.block_scores[gs.at - 1], gid) for gid, gs in alloc.groups.items() if gs.at]
    heapq.heapify(heap)
    while heap:
        _, gid = heapq.heappop(heap)
        gs = alloc.groups[gid]
        back = alloc._select(gid, gs.at - 1)
        kept = {g: c.keep for g, c in alloc.chosen.items()}
        kept[gid] = back.keep
        share = alloc.measure(kept)
        if share < removed - EPS:
            continue
        gs.at -= 1
        alloc.chosen[gid] = back
        if share <= removed + tolerance + EPS:
            return
        if gs.at:
            heapq.heappush(heap, (-gs.block_scores[gs.at - 1], gid))


class _Budget(Exception):
    """The FLOPs counts :func:`_settle` may spend are spent."""


def _settle(alloc: _Allocation, removed: float, tolerance: float) -> None:
    """Land in the window where the blocks taken overshot it: blocks given back
    (:func:`_give_back`), then, while still past it, one more block of some group and
    blocks given back, where that lands closer to the target (never under it). The
    search stops after about four times the FLOPs counts the blocks took (a handful of
    coarse groups need few; with many groups the blocks are fine and land in the window)."""
    measure, calls = alloc.measure, 0
    budget = max(200, 4 * sum(len(gs.steps) for gs in alloc.groups.values()))

    def counted(kept: Kept) -> float:
        nonlocal calls
        calls += 1
        if calls > budget:
            raise _Budget
        return measure(kept)

    alloc.measure = counted
    best: tuple[float, dict] | None = None
    try:
        _give_back(alloc, removed, tolerance)
        while True:
            now = _measure(alloc)
            if now <= removed + tolerance + EPS:
                return
            saved = {g: (gs.at, alloc.chosen[g]) for g, gs in alloc.groups.items()}
            best = None
            for gid, gs in alloc.groups.items():
                if gs.next_score() is None:
                    continue
                alloc.take(gid, alloc._select(gid, gs.at + 1))
                try:
                    _give_back(alloc, removed, tolerance)
                    share = _measure(alloc)
                    if removed - EPS <= share < now - EPS and (best is None or share < best[0]):
                        best = (share, {g: (s.at, alloc.chosen[g])
                                        for g, s in alloc.groups.items()})  # fmt: skip
                finally:
                    for g, (at, chosen) in saved.items():
                        alloc.groups[g].at, alloc.chosen[g] = at, chosen
            if best is None:
                return
            for g, (at, chosen) in best[1].items():
                alloc.groups[g].at, alloc.chosen[g] = at, chosen
            best = None
    except _Budget:  # the best found so far stands, if it lands closer
        if best is not None:
            for g, (at, chosen) in best[1].items():
                alloc.groups[g].at, alloc.chosen[g] = at, chosen
    finally:
        alloc.measure = measure
