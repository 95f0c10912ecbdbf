"""Turn a pruning level (or a FLOPs target) into kept channels per group.

Frontends supply each producer's weight (filters along axis 0) as numpy; this
module scores channels, picks the kept ones per group or globally, and reports
the resulting FLOPs and parameter counts. Nothing here touches a framework.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .allocation import EPS, PAST_FLOOR, TOLERANCE, Coeffs, allocate_for_filters, allocate_for_flops
from .analysis import Analysis, Group
from .flops import count_flops, count_params
from .importance import filter_importance, normalize
from .selection import MAX_GROUP_LEVEL, keep_count, select, unit_multiple

__all__ = ["Pruner", "Plan"]

log = logging.getLogger("filterprune")

Keeps = dict[str, dict[str, np.ndarray]]


@dataclass
class Plan:
    """Kept channels per prunable group (boolean over ``group.roots``)."""

    level: float
    kept: dict[int, np.ndarray]
    reasons: dict[int, str] = field(default_factory=dict)  # groups kept whole by selection

    def to_dict(self, analysis: Analysis) -> dict:
        """JSON-able form: per group, its producers and the kept channel indices."""
        return {
            "version": 1,
            "level": self.level,
            "groups": [
                {
                    "producers": analysis.groups[gid].producers,
                    "size": int(keep.size),
                    "kept": np.flatnonzero(keep).tolist(),
                }
                for gid, keep in sorted(self.kept.items())
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping, analysis: Analysis) -> Plan:
        by_producers = {tuple(g.producers): g for g in analysis.groups}
        kept: dict[int, np.ndarray] = {}
        for entry in data.get("groups", []):
            group = by_producers.get(tuple(entry["producers"]))
            if group is None or group.size != entry["size"]:
                raise ConfigError(
                    f"The saved pruning state names group {entry['producers']} of size "
                    f"{entry['size']}, which this model does not have. Was the state saved "
                    "for another model or config?"
                )
            keep = np.zeros(group.size, dtype=bool)
            keep[np.asarray(entry["kept"], dtype=np.int64)] = True
            kept[group.id] = keep
        return cls(float(data.get("level", 0.0)), kept)


class Pruner:
    """Scores channels and builds :class:`Plan` objects for one analysed model.

    Args:
        analysis: Result of :func:`~filterprune.core.analysis.analyze`.
        importance: ``L1``, ``L2`` or ``geometric_median``.
        global_ranking: Rank all groups together (the config's ``all_weights``).
        multiple_of: Round kept counts up to this (per-group mode only).
    """

    def __init__(self, analysis: Analysis, *, importance: str = "L2",
                 global_ranking: bool = False, multiple_of: int = 8) -> None:  # fmt: skip
        self.analysis = analysis
        self.importance = importance
        self.global_ranking = global_ranking
        self.multiple_of = 1 if global_ranking else multiple_of
        self._said: set[int] = set()  # groups warned of non-finite filters
        self.full_flops = count_flops(analysis.graph)
        self.full_params = count_params(analysis.graph)

    # -- scores ----------------------------------------------------------------------------
    def scores(self, weights: Mapping[str, np.ndarray]) -> dict[int, np.ndarray]:
        """Importance of each channel of each prunable group (sum over its producers)."""
        uf = self.analysis.state.uf
        out: dict[int, np.ndarray] = {}
        for group in self.analysis.prunable_groups:
            total, bad = np.zeros(group.size), np.zeros(group.size, dtype=bool)
            lookup = {int(r): i for i, r in enumerate(group.roots)}
            for layer in group.producers:
                weight = np.asarray(weights[layer], dtype=np.float64)
                finite = np.isfinite(weight.reshape(len(weight), -1)).all(axis=1)
                if not finite.all():  # scored as zero rows: one NaN would spoil every
                    weight = np.where(np.isfinite(weight), weight, 0.0)  # median distance
                s = filter_importance(weight, self.importance)
                if self.global_ranking:
                    s = normalize(s)
                roots = uf.roots(self.analysis.state.uses[layer]["out"].ids)
                idx = np.array([lookup.get(int(r), -1) for r in roots])
                np.add.at(total, idx[idx >= 0], s[idx >= 0])
                bad[idx[(idx >= 0) & ~finite]] = True
            # ranked across groups per filter: a channel standing for several (a GroupNorm
            # group) is not worth more for it
            out[group.id] = total / group.width if self.global_ranking else total
            self.nonfinite_last(group, out[group.id], bad)
        return out

    def nonfinite_last(self, group: Group, scores: np.ndarray,
                       bad: np.ndarray | None = None) -> None:  # fmt: skip
        """Rank ``group``'s channels whose filters hold NaN or inf (``bad``) or whose
        scores are not finite below every other, in place: such a filter poisons every
        output it reaches, so it goes first. Warned once per group."""
        bad = ~np.isfinite(scores) if bad is None else bad | ~np.isfinite(scores)
        if not bad.any():
            return
        scores[bad] = np.min(scores[~bad], initial=0.0) - 1.0
        if group.id not in self._said:
            self._said.add(group.id)
            log.warning(
                "filter_pruning: %d filter(s) of %s hold NaN or inf (training diverged, or "
                "the weights were loaded so?): they rank below the others, the first of "
                "their layer to go.",
                int(bad.sum()), ", ".join(group.producers[:3]))

    # -- plans -----------------------------------------------------------------------------
    def plan(self, level: float, scores: dict[int, np.ndarray],
             coeffs: Coeffs | None = None) -> Plan:  # fmt: skip
        """Keep channels so that each group (or all together) loses ``level`` of them.

        With LeGR ``coeffs`` (``(alpha, kappa)`` per group id), ``level`` of all prunable
        filters go instead, the lowest transformed scores first across groups.
        """
        if coeffs is not None:
            return Plan(level, *allocate_for_filters(self, level, scores, coeffs))
        groups = self.analysis.prunable_groups
        if self.global_ranking:
            counts = self._global_counts(level, groups, scores)
        else:
            counts = {g.id: keep_count(g.size, level, unit_multiple(g, self.multiple_of))
                      for g in groups}  # fmt: skip
        chosen = {g.id: select(g, scores[g.id], counts[g.id]) for g in groups}
        reasons = {gid: c.reason for gid, c in chosen.items() if c.reason}
        return Plan(level, {gid: c.keep for gid, c in chosen.items()}, reasons)

    def _global_counts(self, level, groups: list[Group], scores) -> dict[int, int]:
        if not groups:
            return {}
        gid = np.concatenate([np.full(g.size, g.id) for g in groups])
        vals = np.concatenate([scores[g.id] for g in groups])
        width = {g.id: g.width for g in groups}  # filters per channel: the level counts filters
        floor = {g.id: max(1, int(np.ceil(g.size * (1 - MAX_GROUP_LEVEL)))) for g in groups}
        counts = {g.id: g.size for g in groups}
        budget = int(level * sum(g.size * g.width for g in groups))
        for i in np.argsort(vals, kind="stable"):
            if budget <= 0:
                break
            g = int(gid[i])
            if counts[g] > floor[g]:
                counts[g] -= 1
                budget -= width[g]
        return counts

    def keeps(self, plan: Plan) -> Keeps:
        return self.analysis.keeps(plan.kept)

    def flops(self, plan: Plan) -> int:
        return count_flops(self.analysis.graph, self.keeps(plan))

    def analysis_flops(self, kept: dict[int, np.ndarray]) -> int:
        """FLOPs with ``kept`` channels per group id (groups not named stay whole)."""
        return count_flops(self.analysis.graph, self.analysis.keeps(kept))

    def flops_removed(self, kept: dict[int, np.ndarray]) -> float:
        """Share of the FLOPs that ``kept`` channels per group id remove."""
        return 1.0 - self.analysis_flops(kept) / max(self.full_flops, 1)

    def params(self, plan: Plan) -> int:
        return count_params(self.analysis.graph, self.keeps(plan))

    def reachable_flops(self, scores: dict[int, np.ndarray]) -> float:
        """The largest FLOPs fraction a plan can remove (each group at its largest level)."""
        best = self.plan(MAX_GROUP_LEVEL, scores)
        return 1.0 - self.flops(best) / max(self.full_flops, 1)

    def plan_for_flops(self, removed: float, scores: dict[int, np.ndarray],
                       coeffs: Coeffs | None = None,
                       final: float | None = None) -> Plan:  # fmt: skip
        """A plan removing at least ``removed`` of the FLOPs.

        - Per group with ``multiple_of`` > 1, or with LeGR ``coeffs`` (``(alpha, kappa)``
          per group id), groups take their own levels: blocks of ``multiple_of`` filters
          go from every group whole, the least important first across groups
          (:mod:`~filterprune.core.allocation`), until the result lands in
          ``[removed, removed + 0.02]`` where the blocks allow. Without ``coeffs``, a
          block that takes a group below the uniform level that removes ``final`` (the
          schedule's last target; ``removed`` when none) counts :data:`PAST_FLOOR`
          times its score, the first of those weights that lands in the window.
        - Otherwise (global ranking, or no rounding): the smallest uniform level that
          removes at least ``removed``; where that level overshoots the window, the level
          just short of it with the least important channels across groups removed on
          top until the target is met.
        """
        if removed <= 0 or not self.analysis.prunable_groups:
            # nothing prunable: the controller logged why at creation and lets every
            # level keep all the FLOPs (``_check_flops_target``); do not fail mid-run
            return self.plan(0.0, scores, coeffs)
        reachable = self.reachable_flops(scores)
        if reachable + EPS < removed:
            raise ConfigError(
                f"A FLOPs level of {removed} (`pruning_flops_target`, or a level the schedule "
                f"passes on the way) cannot be reached: removing at most {MAX_GROUP_LEVEL:.0%} "
                f"of each prunable group removes {reachable:.4f} of the FLOPs. Set "
                f"pruning_flops_target <= {reachable:.4f}."
            )
        if coeffs is not None:
            return Plan(removed, *allocate_for_flops(self, removed, scores, coeffs=coeffs))
        if self.multiple_of > 1 and not self.global_ranking:
            return self._blocks_for_flops(removed, scores, max(removed, final or 0.0))
        short, plan = self._uniform_for_flops(removed, scores)
        if self.flops_removed(plan.kept) <= removed + TOLERANCE:
            return plan
        # One level steps past the window (every group of a width moves at once; globally, a
        # group that keeps equal counts per block moves by a block): from the level just
        # short of it, single channels go, the least important first.
        start = {gid: int(keep.sum()) for gid, keep in short.kept.items()}
        return Plan(removed, *allocate_for_flops(self, removed, scores, start=start))

    def _uniform_for_flops(self, removed: float, scores) -> tuple[Plan, Plan]:
        """The uniform plans just short of ``removed`` and the smallest reaching it."""
        lo, hi = 0.0, MAX_GROUP_LEVEL
        for _ in range(20):
            mid = (lo + hi) / 2
            if self.flops_removed(self.plan(mid, scores).kept) >= removed - EPS:
                hi = mid
            else:
                lo = mid
        plan = self.plan(hi, scores)
        plan.level = removed
        return self.plan(lo, scores), plan

    def _blocks_for_flops(self, removed: float, scores, final: float) -> Plan:
        """Blocks across groups (see :meth:`plan_for_flops`). A block moves a group far:
        as they score, a group whose scores all sit a little below the others' loses
        most of its filters. A Keras demo run cut its head to 16 of 128 (scores divided
        by their largest then) and kept 0.42 accuracy after the cut, against 0.59 with
        the head at the uniform level."""
        floor = {gid: int(keep.sum())
                 for gid, keep in self._uniform_for_flops(final, scores)[1].kept.items()}
        tries = []
        for weight in PAST_FLOOR:  # the first weight whose blocks land in the window
            kept, reasons = allocate_for_flops(self, removed, scores, floor=floor,
                                               past_floor=weight)  # fmt: skip
            share = self.flops_removed(kept)
            if removed - EPS <= share <= removed + TOLERANCE:
                return Plan(removed, kept, reasons)
            tries.append((share < removed - EPS, abs(share - removed), kept, reasons))
        _, _, kept, reasons = min(tries, key=lambda t: t[:2])
        return Plan(removed, kept, reasons)
