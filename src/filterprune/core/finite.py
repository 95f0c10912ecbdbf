"""Groups whose cut would make the masked model's output non-finite.

A pruned channel reads as exactly zero in the masked model. A forward that divides by
it, takes its log or its reciprocal square root turns that zero into an infinity or a
NaN, which the next layer's zeroed weights do not cancel (``0 * inf`` is NaN): the
masked model then computes NaN where the shrunk model, which has no such channel, is
finite, and training on it fails. A ReLU after the log hides the forward's ``-inf`` but
not the gradient's NaN behind it. The structure alone cannot tell (``x / (n + eps)`` is
safe, ``x / n`` is not), so frontends run the model forward and backward on one random
input with the cut in place, and the groups that make either non-finite are kept whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .analysis import Analysis, Group
from .selection import select

__all__ = ["NONFINITE", "SKIPPED", "UNSTRIPPED", "Probe", "probe_cut", "nonfinite_groups",
           "hold_nonfinite", "hold_unstripped", "verdict"]

Probe = Callable[[Sequence[Group]], bool]  # finite(groups): the output stays finite with them cut

SKIPPED = ("filter_pruning: no check for cuts that make the model non-finite: its output is "
           "not finite (or its forward fails) on random inputs of the example input's shapes")
NONFINITE = ("cutting it makes the forward or its gradients non-finite (a division by, or "
             "log of, a channel the mask zeroes)")  # fmt: skip
UNSTRIPPED = ("cut and stripped, the model computes other than the masked model (or fails): "
              "a size read in forward that the capture could not see, such as a channel "
              "count used as a number or in a view")  # fmt: skip


def probe_cut(groups: Sequence[Group], n_keep: Callable[[Group], int] | None = None,
              last: bool = False) -> dict[int, np.ndarray]:  # fmt: skip
    """Kept channels per group for a probe: each group cut to its first channel, as deep
    as any level cuts (every group keeps at least one), or to its first ``n_keep(group)``,
    and as many more as its grouped convolutions need to keep equal groups (a cut a strip
    can make). ``last``: its last channels instead, so that every kept channel moves in a
    strip (a kept prefix sits where it sat, and a cut that misplaces channels passes)."""
    order = np.arange if last else (lambda n, dtype: -np.arange(n, dtype=dtype))
    return {g.id: select(g, order(g.size, dtype=float), n_keep(g) if n_keep else 1).keep
            for g in groups}  # fmt: skip


def hold_nonfinite(analysis: Analysis, finite: Probe | None) -> None:
    """Keep whole (with :data:`NONFINITE` as the reason) the prunable groups of
    ``analysis`` whose cut makes the model non-finite; ``finite`` is a frontend's probe
    (``None``: it could not run the model, nothing is held)."""
    if finite is None:
        return
    for group in nonfinite_groups(analysis.prunable_groups, finite):
        group.reason = NONFINITE


def hold_unstripped(analysis: Analysis, same: Probe | None) -> None:
    """Keep whole (with :data:`UNSTRIPPED` as the reason) the prunable groups whose cut,
    stripped, does not compute what the masked model computes; ``same`` is a frontend's
    probe for captures that cannot see sizes read in forward (``None``: no check)."""
    if same is None:
        return
    for group in nonfinite_groups(analysis.prunable_groups, same):
        group.reason = UNSTRIPPED


def verdict(uncut: tuple[bool, bool] | None, cut: tuple[bool, bool] | None) -> bool:
    """Whether a cut passes: ``(forward finite, gradients finite)`` of the model with it
    against without it. Gradients count only where the uncut model's are all finite; a
    cut whose forward fails (``None``) cannot be judged and passes."""
    if cut is None:
        return True
    return cut[0] and (cut[1] or uncut is None or not uncut[1])


def nonfinite_groups(groups: Sequence[Group], finite: Probe) -> list[Group]:
    """The groups to keep whole so that the rest, cut together, leave the output finite.

    ``finite(groups)`` runs the model with those groups cut (:func:`probe_cut`). The
    common case costs one call; each culprit, found by halving, about
    ``2 log2(len(groups))`` more, and one more call checks the rest. Where groups are
    non-finite only together, one of them is held (the last of the shortest non-finite
    run of groups) and the rest checked again.
    """
    held: list[Group] = []
    rest = list(groups)
    while found := _halve(rest, finite):
        held += found
        rest = [g for g in rest if all(g is not h for h in found)]
    return held


def _halve(groups: list[Group], finite: Probe) -> list[Group]:
    if not groups or finite(groups):
        return []
    if len(groups) == 1:
        return groups
    mid = len(groups) // 2
    return _halve(groups[:mid], finite) + _halve(groups[mid:], finite) or [
        _last_needed(groups, finite)]  # fmt: skip


def _last_needed(groups: list[Group], finite: Probe) -> Group:
    """The last group of the shortest non-finite prefix of ``groups`` (which is all of
    them, non-finite): without it, that prefix is finite."""
    lo, hi = 1, len(groups)
    while lo < hi:
        mid = (lo + hi) // 2
        if finite(groups[:mid]):
            lo = mid + 1
        else:
            hi = mid
    return groups[lo - 1]
