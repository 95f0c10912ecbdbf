"""Finding the groups whose cut makes a model non-finite, by halving."""

import numpy as np

from filterprune.core.analysis import Group
from filterprune.core.finite import nonfinite_groups, probe_cut


def groups(n):
    return [Group(i, np.arange(4) + 10 * i, [f"conv{i}"]) for i in range(n)]


def probe(bad_alone=(), bad_together=()):
    calls = []

    def finite(cut):
        ids = {g.id for g in cut}
        calls.append(ids)
        return not (ids & set(bad_alone) or set(bad_together) and set(bad_together) <= ids)

    return finite, calls


def test_nothing_held_costs_one_run():
    finite, calls = probe()
    assert nonfinite_groups(groups(40), finite) == [] and len(calls) == 1


def test_each_culprit_is_found_alone():
    finite, calls = probe(bad_alone=(3, 17, 31))
    held = nonfinite_groups(groups(40), finite)
    assert sorted(g.id for g in held) == [3, 17, 31]
    assert len(calls) < 40  # halving, not one run per group
    assert calls[-1] == set(range(40)) - {3, 17, 31}  # the rest checked together last


def test_of_groups_non_finite_only_together_one_is_held():
    finite, calls = probe(bad_together=(1, 6))
    held = {g.id for g in nonfinite_groups(groups(8), finite)}
    assert held in ({1}, {6})
    assert finite([g for g in groups(8) if g.id not in held])


def test_the_probe_keeps_one_channel_per_group():
    kept = probe_cut(groups(3))
    assert all(k.sum() == 1 and k[0] for k in kept.values()) and sorted(kept) == [0, 1, 2]
