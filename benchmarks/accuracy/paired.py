"""Seed-paired comparisons: is a difference between two contenders larger than the seeds'?

Every contender run with seed ``s`` sees the same data order and augmentation, so the
difference of two contenders' accuracies on one seed cancels what the seed alone moves.
The mean of those per-seed differences, with a 95% Student-t interval, says whether one
is ahead (the whole interval above zero), behind (below zero), or within seed noise.

    >>> mean, half = interval([0.0003, 0.0015, 0.0009, 0.0006])
    >>> f"{mean:+.4f} ± {half:.4f}", verdict(mean, half)
    ('+0.0008 ± 0.0008', 'ahead')
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

__all__ = ["t975", "interval", "verdict", "paired_table"]

# 97.5% quantiles of Student's t for 1..10 degrees of freedom (public table values).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t975(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom.

    Past the table, the Cornish-Fisher expansion around the normal quantile (within
    1e-3 of the exact value from df 11 on).
    """
    if df < 1:
        raise ValueError(f"`df` must be at least 1. Received: df={df}.")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def interval(diffs: list[float]) -> tuple[float, float]:
    """``(mean, half_width)`` of a 95% t-interval on the mean of ``diffs``
    (``half_width`` is ``nan`` with one value: one seed gives no spread)."""
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, math.nan
    return mean, t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))


def verdict(mean: float, half: float) -> str:
    if math.isnan(half):
        return "one seed: no interval"
    if mean - half > 0:
        return "ahead"
    if mean + half < 0:
        return "behind"
    return "within seed noise"


def paired_table(rows: list[dict], ours: str, others: list[str]) -> list[str]:
    """Markdown rows: ``ours`` against each of ``others`` at the same budget and model, on
    the seeds both ran (accuracy differences in points), at the same target, and at
    another target where both kept the same FLOPs (a peer that moves in steps, run by
    ours at its step)."""
    by = defaultdict(dict)  # (budget, model, target, contender) -> seed -> row
    for r in rows:
        by[(r["budget"], r["model"], r["target"], r["contender"])][r["seed"]] = r
    lines = ["| budget | model | FLOPs removed (target) | against | seeds | per seed "
             "(points) | mean ± 95% | verdict |", "|---" * 8 + "|"]  # fmt: skip
    for (budget, model, target, contender), mine in sorted(by.items()):
        if contender != ours:
            continue
        for other in others:
            for (b, m, their_target, c), theirs in sorted(by.items()):
                if (b, m, c) != (budget, model, other) or not (
                        their_target == target or _same_flops(mine, theirs)):
                    continue
                seeds = sorted(set(mine) & set(theirs))
                if not seeds:
                    continue
                label = other if their_target == target else \
                    f"{other} at {their_target} (same FLOPs kept)"
                diffs = [100 * (mine[s]["test"] - theirs[s]["test"]) for s in seeds]
                mean, half = interval(diffs)
                spread = "" if math.isnan(half) else f" ± {half:.2f}"
                lines.append(
                    f"| {budget} | {model} | {target} | {label} | {len(seeds)} "
                    f"| {', '.join(f'{d:+.2f}' for d in diffs)} | {mean:+.2f}{spread} "
                    f"| {verdict(mean, half)} |")  # fmt: skip
    return lines


def _same_flops(a: dict, b: dict, tol: float = 1e-3) -> bool:
    """Whether two contenders' rows (by seed) kept the same FLOPs fraction."""
    kept = [r.get("flops_kept") for r in (*a.values(), *b.values())]
    return None not in kept and max(kept) - min(kept) <= tol
