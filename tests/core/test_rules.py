"""Channel rules on hand-built graphs, checked against plain index arithmetic."""

import numpy as np
import pytest

from filterprune.core import selection
from filterprune.core.analysis import AnalysisOptions, Group, analyze
from filterprune.core.graph import Graph, LayerInfo, Node
from filterprune.core.pruner import Plan, Pruner
from filterprune.core.selection import (
    AT_LEAST_ONE,
    EQUAL_GROUPS,
    UNBALANCED,
    WHOLE_CELLS,
    select,
    select_group,
    select_required,
)
from filterprune.core.unionfind import UnionFind

OPEN = AnalysisOptions(prune_first_conv=True, prune_downsample_convs=True)


class G:
    """A tiny graph builder: NCHW tensors of 4x4 pixels."""

    def __init__(self):
        self.g = Graph()
        self.g.add(Node("x", "input", shape=(1, 3, 4, 4)))

    def conv(self, name, src, cout, groups=1, hw=4):
        cin = self.g[src].shape[1]
        roles = ("out", "in", None, None)
        params = {"weight": ((cout, cin // groups, 3, 3), roles)}
        self.g.layers[name] = LayerInfo(name, "conv", params, groups=groups, weight="weight")
        attrs = {"in_channels": cin, "out_channels": cout, "groups": groups, "positions": hw * hw}
        return self.add(Node(name, "conv", [src], (1, cout, hw, hw), layer=name, attrs=attrs))

    def add(self, node):
        self.g.add(node)
        return node.name

    def op(self, name, kind, srcs, shape, **attrs):
        return self.add(Node(name, kind, list(srcs), shape, attrs=attrs, label=kind))

    def analyze(self, out):
        self.g.outputs = [out]
        return analyze(self.g, OPEN)


def _plan(a, keep_by_producer):
    kept = {}
    for grp in a.groups:
        if grp.prunable and grp.producers[0] in keep_by_producer:
            kept[grp.id] = np.asarray(keep_by_producer[grp.producers[0]], bool)
    return a.keeps(Plan(0.5, kept).kept)


def test_residual_add_ties_both_producers():
    b = G()
    b.conv("c1", "x", 8)
    b.conv("c2", "c1", 8)
    b.op("sum", "elementwise", ["c1", "c2"], (1, 8, 4, 4))
    b.conv("head", "sum", 4)
    a = b.analyze("head")
    grp = next(g for g in a.groups if "c1" in g.producers)
    assert grp.producers == ["c1", "c2"] and grp.prunable
    keep = [1, 0, 1, 0, 1, 1, 0, 0]
    k = _plan(a, {"c1": keep})
    for layer, role in [("c1", "out"), ("c2", "out"), ("c2", "in"), ("head", "in")]:
        np.testing.assert_array_equal(k[layer][role], np.array(keep, bool))


def test_concat_of_the_same_tensor_twice_repeats_the_mask():
    b = G()
    b.conv("c1", "x", 8)
    b.op("cat", "concat", ["c1", "c1"], (1, 16, 4, 4), axis=1)
    b.conv("head", "cat", 4)
    a = b.analyze("head")
    keep = np.array([1, 1, 0, 0, 1, 0, 1, 0], bool)
    k = _plan(a, {"c1": keep})
    np.testing.assert_array_equal(k["head"]["in"], np.concatenate([keep, keep]))


def test_depthwise_with_multiplier_follows_its_input():
    b = G()
    b.conv("c1", "x", 8)
    b.conv("dw", "c1", 16, groups=8)
    b.conv("head", "dw", 4)
    a = b.analyze("head")
    assert [g.producers for g in a.groups if g.prunable] == [["c1"]]
    keep = np.array([1, 0, 1, 0, 1, 0, 1, 1], bool)
    k = _plan(a, {"c1": keep})
    np.testing.assert_array_equal(k["dw"]["out"], np.repeat(keep, 2))
    np.testing.assert_array_equal(k["head"]["in"], np.repeat(keep, 2))


def test_channel_shuffle_ties_the_halves_column_by_column():
    b = G()
    b.conv("c1", "x", 4)
    b.conv("c2", "x", 4)
    b.op("cat", "concat", ["c1", "c2"], (1, 8, 4, 4), axis=1)
    b.op("v1", "reshape", ["cat"], (1, 2, 4, 4, 4), fixed_dims=[1])
    b.op("t", "permute", ["v1"], (1, 4, 2, 4, 4), perm=[0, 2, 1, 3, 4])
    b.op("v2", "reshape", ["t"], (1, 8, 4, 4))
    b.conv("head", "v2", 4)
    a = b.analyze("head")
    grp = next(g for g in a.groups if g.prunable)
    assert grp.producers == ["c1", "c2"] and grp.size == 4
    k = _plan(a, {"c1": [1, 0, 0, 1]})
    np.testing.assert_array_equal(k["c2"]["out"], [1, 0, 0, 1])
    # output position 2j + r holds column j of row r: j = 0 and j = 3 survive
    np.testing.assert_array_equal(k["head"]["in"], [1, 1, 0, 0, 0, 0, 1, 1])


def test_reshape_fixing_the_channel_count_blocks_it():
    b = G()
    b.conv("c1", "x", 8)
    b.op("flat", "reshape", ["c1"], (1, 128), fixed_dims=[1])
    a = b.analyze("flat")
    grp = next(g for g in a.groups if g.producers == ["c1"])
    assert grp.reason == "reshape: reshape fixes the channel count in code"


def test_flatten_then_linear_repeats_each_channel_over_pixels():
    b = G()
    b.conv("c1", "x", 8)
    b.op("flat", "reshape", ["c1"], (1, 128))
    b.g.layers["fc"] = LayerInfo("fc", "linear", {"weight": ((10, 128), ("out", "in"))},
                                 weight="weight")  # fmt: skip
    b.add(Node("fc", "linear", ["flat"], (1, 10), layer="fc",
               attrs={"in_features": 128, "out_features": 10}))  # fmt: skip
    a = b.analyze("fc")
    keep = np.array([1, 0, 0, 1, 1, 0, 1, 0], bool)
    k = _plan(a, {"c1": keep})
    np.testing.assert_array_equal(k["fc"]["in"], np.repeat(keep, 16))
    assert next(g for g in a.groups if g.producers == ["fc"]).reason == "feeds a model output"


@pytest.mark.parametrize(
    ("kind", "attrs", "reason"),
    [
        ("layernorm", {"normalized_ndim": 3}, "normalises over these channels"),
        ("reduce", {"dims": [1], "keepdim": True}, "reduces over channels"),
        ("along", {"dims": [1]}, "acts across channels"),
        ("mystery", {}, "unsupported op mystery"),
    ],
)
def test_ops_that_mix_channels_block_them(kind, attrs, reason):
    b = G()
    b.conv("c1", "x", 8)
    shape = (1, 1, 4, 4) if kind == "reduce" else (1, 8, 4, 4)
    b.op("mix", kind, ["c1"], shape, **attrs)
    b.conv("head", "mix", 4)
    a = b.analyze("head")
    grp = next(g for g in a.groups if g.producers == ["c1"])
    assert reason in grp.reason


def test_grouped_conv_keeps_the_same_count_in_every_group():
    b = G()
    b.conv("c1", "x", 16)
    b.conv("g", "c1", 16, groups=4)
    b.conv("head", "g", 4)
    a = b.analyze("head")
    grp = next(g for g in a.groups if g.prunable)
    pruner = Pruner(a, multiple_of=1)
    scores = {grp.id: np.arange(16, dtype=float)}  # blocks 0-3, 4-7, ...: top 2 of each
    kept = pruner.plan(0.5, scores).kept[grp.id]
    assert kept.reshape(4, 4).sum(axis=1).tolist() == [2, 2, 2, 2]
    assert np.flatnonzero(kept).tolist() == [2, 3, 6, 7, 10, 11, 14, 15]


def test_kept_lookup_agrees_with_keeps_and_keeps_unknown_ids():
    b = G()
    b.conv("c1", "x", 8)
    b.conv("head", "c1", 4)
    a = b.analyze("head")
    grp = next(g for g in a.groups if g.producers == ["c1"])
    kept = {grp.id: np.array([1, 0, 1, 0, 1, 1, 0, 0], bool)}
    lookup = a.kept_lookup(kept)
    ids = a.state.uses["head"]["in"].ids
    np.testing.assert_array_equal(lookup(ids), a.keeps(kept)["head"]["in"])
    np.testing.assert_array_equal(lookup(ids), a.kept_ids(ids, kept))
    assert lookup(a.state.uses["c1"]["in"].ids).all()  # the input's channels: no group
    assert a.kept_lookup({})(ids).all()  # a group the plan does not name stays


def _chain(n):
    """Blocks of one-channel rows, each tying channel k to k + 1, listed last link first:
    every pass over them carries a kept channel one link further."""
    blocks = [np.array([[k + 1], [k]]) for k in reversed(range(n - 1))]
    return Group(0, np.arange(100, 100 + n), ["c"], blocks=blocks)


def test_select_keeps_a_group_whole_with_a_reason_when_blocks_stay_uneven(monkeypatch):
    scores = -np.arange(10, dtype=float)  # channel 0 first
    chosen = select(_chain(10), scores, 1)  # one-channel cells: each keeps its one
    assert chosen.keep.all() and chosen.reason == WHOLE_CELLS
    monkeypatch.setattr(selection, "_cells", lambda group: None)  # the greedy balancing
    chosen = select(_chain(10), scores, 1)  # 9 links need 9 passes; 8 are allowed
    assert chosen.reason == UNBALANCED
    assert chosen.keep.all() and chosen.added == {k: UNBALANCED for k in range(1, 10)}
    assert select_group(_chain(10), scores, 1).all()
    short = select(_chain(9), -np.arange(9, dtype=float), 1)  # 8 links: balanced in time,
    assert short.reason == UNBALANCED and short.keep.all()  # but every channel kept: said


def test_a_grouped_conv_reading_part_of_a_group_balances_by_cells():
    """A grouped conv (2 groups) reads channels 0-3 of a group of 8 (half of a concat):
    channels 4-7 are a part of their own; keeping half keeps one in each row of it. The
    greedy balancing kept all 8 here, with no reason given."""
    grp = Group(0, np.arange(8), ["c"], blocks=[np.array([[0, 1], [2, 3]]),
                                               np.array([[4, 5, 6, 7], [0, 1, 2, 3]])])
    chosen = select(grp, np.array([8, 7, 6, 5, 4, 3, 2, 1], dtype=float), 4)
    assert chosen.reason is None and chosen.keep.tolist() == [1, 0, 1, 0, 1, 1, 0, 0]


def test_select_says_which_channels_the_blocks_added():
    b = G()
    b.conv("c1", "x", 16)
    b.conv("g", "c1", 16, groups=4)
    b.conv("head", "g", 4)
    grp = next(g for g in b.analyze("head").groups if g.prunable)
    scores = np.arange(16, dtype=float)[::-1].copy()  # top 8 all in blocks 0 and 1
    chosen = select(grp, scores, 8)
    assert chosen.reason is None
    assert np.flatnonzero(chosen.keep).tolist() == [0, 1, 4, 5, 8, 9, 12, 13]
    assert chosen.added == {8: EQUAL_GROUPS, 9: EQUAL_GROUPS, 12: EQUAL_GROUPS,
                            13: EQUAL_GROUPS}  # fmt: skip
    np.testing.assert_array_equal(select_group(grp, scores, 8), chosen.keep)


@pytest.mark.parametrize("first", [2, 4])
def test_two_grouped_convs_in_a_row_keep_as_many_in_each_cell_of_both(first):
    b = G()
    b.conv("c1", "x", 8)
    b.conv("g1", "c1", 8, groups=first)
    b.conv("g2", "g1", 8, groups=6 - first)
    b.conv("head", "g2", 4)
    grp = next(g for g in b.analyze("head").groups if g.prunable)
    chosen = select(grp, np.array([8, 7, 6, 5, 4, 3, 2, 1], dtype=float), 4)
    assert chosen.reason is None
    assert np.flatnonzero(chosen.keep).tolist() == [0, 2, 4, 6]  # one per pair


def test_grouped_convs_with_unequal_cells_keep_the_same_fraction_of_each():
    """3 then 2 groups over 12 channels: cells of 4, 2, 2 and 4 channels."""
    b = G()
    b.conv("c1", "x", 12)
    b.conv("g1", "c1", 12, groups=3)
    b.conv("g2", "g1", 12, groups=2)
    b.conv("head", "g2", 4)
    grp = next(g for g in b.analyze("head").groups if g.prunable)
    chosen = select(grp, np.arange(12, dtype=float)[::-1].copy(), 6)
    kept = chosen.keep.reshape(-1)
    assert chosen.reason is None and kept.sum() == 6
    assert kept.reshape(3, 4).sum(1).tolist() == [2, 2, 2]
    assert kept.reshape(2, 6).sum(1).tolist() == [3, 3]


def test_blocks_of_one_channel_each_keep_the_group_whole_and_say_why():
    """GroupNorm(3, 12) cut by whole groups before a conv in 3 groups: three channel units,
    each its own block. The group was kept with no reason given."""
    grp = Group(0, np.arange(3), ["c1"], blocks=[np.arange(3).reshape(3, 1)])
    chosen = select(grp, np.array([3.0, 1.0, 2.0]), 1)
    assert chosen.keep.all() and chosen.reason == WHOLE_CELLS
    assert chosen.added == {1: WHOLE_CELLS, 2: WHOLE_CELLS}


def test_select_grows_blocks_by_positions_when_a_channel_fills_several():
    # a shuffle before a grouped conv: each channel fills 4 positions of its row
    shuffled = np.repeat(np.arange(8), 4).reshape(4, 8)  # row r: channels 2r, 2r + 1
    halves = np.arange(8).reshape(2, 4)
    grp = Group(0, np.arange(8), ["g"], blocks=[shuffled, halves])
    chosen = select(grp, np.array([8, 1, 7, 2, 6, 3, 5, 4], dtype=float), 3)
    assert chosen.reason is None
    assert np.flatnonzero(chosen.keep).tolist() == [0, 2, 4, 6]  # one more, not all


def test_select_required_keeps_one_channel_and_earliest_for_equal_groups():
    grp = Group(0, np.arange(8), ["c"], blocks=[np.arange(8).reshape(2, 4)])
    none = select_required(grp, np.zeros(8, bool))
    assert np.flatnonzero(none.keep).tolist() == [0, 4]
    assert none.added == {0: AT_LEAST_ONE, 4: EQUAL_GROUPS} and none.reason is None
    some = select_required(grp, np.isin(np.arange(8), [3, 5, 6, 7]))
    assert np.flatnonzero(some.keep).tolist() == [0, 1, 3, 5, 6, 7]  # 3 in each half
    assert some.added == {0: EQUAL_GROUPS, 1: EQUAL_GROUPS}


def test_select_required_counts_channels_outside_the_group_as_kept():
    """-1: a channel no producer makes (a model input's), which nothing removes."""
    grp = Group(0, np.arange(4), ["c"], blocks=[np.array([[0, -1], [1, 2]]),
                                               np.array([[3], [-1]])])  # fmt: skip
    chosen = select_required(grp, np.array([1, 0, 0, 0], bool))
    assert chosen.keep.tolist() == [True, True, True, True] and chosen.reason is None


def test_select_required_keeps_a_group_whole_with_a_reason(monkeypatch):
    monkeypatch.setattr(selection, "_ROUNDS", 0)  # no pass allowed: uneven blocks stay so
    grp = Group(0, np.arange(4), ["c"], blocks=[np.arange(4).reshape(2, 2)])
    chosen = select_required(grp, np.array([1, 1, 1, 0], bool))
    assert chosen.keep.all() and chosen.reason == UNBALANCED and chosen.added == {3: UNBALANCED}
    assert select_required(grp, np.array([1, 0, 1, 0], bool)).reason is None  # already even


def test_a_group_kept_whole_by_selection_is_listed_with_its_reason(monkeypatch):
    import filterprune.core.pruner as pruner_module
    from filterprune.core.selection import Selection
    from filterprune.core.stats import collect_statistics

    b = G()
    b.conv("c1", "x", 8)
    b.conv("head", "c1", 4)
    a = b.analyze("head")
    whole = lambda g, s, n: Selection(np.ones(g.size, bool), reason=UNBALANCED)  # noqa: E731
    monkeypatch.setattr(pruner_module, "select", whole)
    plan = Pruner(a).plan(0.5, {g.id: np.ones(g.size) for g in a.prunable_groups})
    assert plan.reasons == {g.id: UNBALANCED for g in a.prunable_groups}
    stats = collect_statistics(a, a.keeps(plan.kept), full_flops=1, full_params=1,
                               current_params=1, current_level=0.5, target_level=0.5,
                               reasons=plan.reasons)  # fmt: skip
    assert (["c1"], UNBALANCED) in stats.unpruned


def test_stacked_paths_summed_over_the_stack_axis_are_tied_like_an_add():
    """Selective kernels: torch.stack(paths, 1).sum(1) adds the paths position by position."""
    b = G()
    b.conv("p0", "x", 8)
    b.conv("p1", "x", 8)
    b.op("st", "stack", ["p0", "p1"], (1, 2, 8, 4, 4), axis=1)
    b.op("sum", "reduce", ["st"], (1, 8, 4, 4), dims=[1], keepdim=False)
    a = b.analyze(b.conv("head", "sum", 4))
    groups = {tuple(g.producers): (g.size, g.reason) for g in a.groups}
    assert groups[("p0", "p1")] == (8, None)
    keep = [True, False] * 4
    keeps = _plan(a, {"p0": keep})
    for layer in ("p0", "p1"):
        assert keeps[layer]["out"].tolist() == keep
    assert keeps["head"]["in"].tolist() == keep


def test_a_reduction_over_the_only_channel_axis_still_blocks():
    b = G()
    b.conv("c", "x", 8)
    b.op("m", "reduce", ["c"], (1, 1, 4, 4), dims=[1], keepdim=True)
    a = b.analyze(b.conv("head", "m", 4))
    assert {tuple(g.producers): g.reason for g in a.groups}[("c",)] == (
        "reduce: reduces over channels")


def _group_norm(b, rewritable):
    b.conv("c1", "x", 16)
    b.g.layers["gn"] = LayerInfo("gn", "batchnorm", {"weight": ((16,), ("channel",))})
    b.add(Node("gn", "groupnorm", ["c1"], (1, 16, 4, 4), layer="gn",
               attrs={"groups": 4, "channel_axis": 1, "rewritable": rewritable}))  # fmt: skip
    b.conv("head", "gn", 4)
    return b.analyze("head")


def test_group_norm_ties_each_group_and_rounds_in_filters():
    a = _group_norm(G(), rewritable=True)
    grp = next(g for g in a.groups if g.prunable)
    assert grp.size == 4 and grp.width == 4  # four groups of four filters
    # multiples of 8 filters are multiples of 2 groups: half of 16 filters is 2 groups
    assert selection.unit_multiple(grp, 8) == 2
    plan = Pruner(a).plan(0.5, {grp.id: np.arange(4.0)})
    k = a.keeps(plan.kept)
    np.testing.assert_array_equal(k["c1"]["out"], np.repeat([0, 0, 1, 1], 4).astype(bool))
    np.testing.assert_array_equal(k["gn"]["channel"], k["c1"]["out"])


def test_group_norm_with_a_fixed_count_keeps_its_channels():
    a = _group_norm(G(), rewritable=False)
    grp = next(g for g in a.groups if "c1" in g.producers)
    assert not grp.prunable and "group count is fixed in code" in grp.reason


def _half_through(kind, filters, shape, **attrs):
    """``c1`` (``filters``) -> one ``kind`` op of output ``shape`` -> ``head``, c1's group
    cut to its last half: the group and the keep vectors."""
    b = G()
    b.conv("c1", "x", filters)
    b.add(Node("op", kind, ["c1"], shape, attrs=attrs))
    b.conv("head", "op", 4)
    a = b.analyze("head")
    grp = next(g for g in a.groups if "c1" in g.producers)
    plan = Pruner(a, multiple_of=1).plan(0.5, {grp.id: np.arange(float(grp.size))})
    return grp, a.keeps(plan.kept)


HALF = np.array([0, 0, 1, 1], bool)  # the last two of four channels kept


@pytest.mark.parametrize("strided", [False, True])
def test_depth_to_space_ties_the_channels_of_each_output_channel(strided):
    grp, k = _half_through("pixel_shuffle", 16, (1, 4, 8, 8), factor=2, strided=strided)
    assert grp.size == 4 and grp.width == 4
    np.testing.assert_array_equal(k["head"]["in"], HALF)  # output channels 2 and 3
    spread = np.tile(HALF, 4) if strided else np.repeat(HALF, 4)
    np.testing.assert_array_equal(k["c1"]["out"], spread)


@pytest.mark.parametrize("strided", [False, True])
def test_space_to_depth_reads_each_channel_as_its_copies(strided):
    grp, k = _half_through("pixel_shuffle", 4, (1, 16, 2, 2), factor=2, inverse=True,
                           strided=strided)  # fmt: skip
    np.testing.assert_array_equal(k["c1"]["out"], HALF)
    spread = np.tile(HALF, 4) if strided else np.repeat(HALF, 4)
    np.testing.assert_array_equal(k["head"]["in"], spread)


def test_channel_shuffle_ties_one_column_of_every_row():
    grp, k = _half_through("channel_shuffle", 8, (1, 8, 4, 4), groups=2)
    assert grp.size == 4  # channel j of both rows of 4 go together
    np.testing.assert_array_equal(k["c1"]["out"], np.tile(HALF, 2))
    np.testing.assert_array_equal(k["head"]["in"], np.repeat(HALF, 2))


def test_glu_ties_the_two_halves_of_its_axis():
    grp, k = _half_through("glu", 8, (1, 4, 4, 4), axis=1)
    assert grp.size == 4 and grp.width == 2
    np.testing.assert_array_equal(k["c1"]["out"], np.tile(HALF, 2))
    np.testing.assert_array_equal(k["head"]["in"], HALF)


def test_a_group_no_wider_than_the_multiple_says_why_it_stays_whole():
    b = G()
    b.conv("c1", "x", 8)
    b.conv("c2", "c1", 16)
    b.conv("head", "c2", 4)
    a = b.analyze("head")
    narrow = selection.too_narrow(a.prunable_groups, 8)
    assert [a.groups[gid].producers for gid in narrow] == [["c1"]]
    assert "filters_multiple_of=8" in next(iter(narrow.values()))
    assert selection.too_narrow(a.prunable_groups, 1) == {}


def test_a_group_cut_in_units_of_several_filters_says_what_a_multiple_takes():
    """5 units of 3 filters (a grouped conv's): a multiple of 8 filters takes 8 units, 24
    filters; "15 filters, no more than filters_multiple_of=8" read as a contradiction."""
    grp = Group(0, np.arange(5), ["c"])
    grp.width = 3
    assert selection.too_narrow([grp], 8) == {0: (
        "15 filters, cut in units of 3: a multiple of filters_multiple_of=8 takes 8 units "
        "(24 filters), so rounding up keeps them all")}  # fmt: skip
    grp = Group(0, np.arange(4), ["c"])
    grp.width = 2  # 4 units of 2 make one multiple of 8
    assert selection.too_narrow([grp], 8) == {0: (
        "8 filters, no more than filters_multiple_of=8: rounding up keeps them all")}


def test_a_channel_filling_two_positions_of_a_partial_row_is_balanced_by_positions():
    """A grouped conv reads channels 0-5, 2 and 5 twice each: cells would count channels,
    not positions, and left rows of 2 and 1."""
    grp = Group(0, np.arange(12), ["c"], blocks=[np.array([[0, 1, 2, 2], [3, 4, 5, 5]])])
    scores = np.array([0, 0, 9, 9, 0, 0, 9, 9, 9, 9, 9, 9], dtype=float)
    chosen = select(grp, scores, 4)
    assert chosen.reason is None and selection._balanced(grp, chosen.keep)


def test_a_weak_reason_gives_way_to_a_strong_one_where_sets_meet():
    uf = UnionFind()
    a, b, c, d, e, f = (int(i) for i in uf.new(6))
    uf.block(np.array([a]), "weight read whole", weak=True)
    uf.block(np.array([b]), "indexes into channels")
    uf.union(a, b)  # the older root keeps its place, not its weak reason
    assert uf.reason(b) == "indexes into channels"
    uf.block(np.array([c]), "broadcast", weak=True)
    uf.union_arrays(np.array([c]), np.array([a]))
    assert uf.reason(c) == "indexes into channels"
    uf.block(np.array([d]), "first", weak=True)
    uf.block(np.array([e]), "second", weak=True)
    uf.union_arrays(np.array([e]), np.array([d]))
    assert uf.reason(e) == "first"  # among weak ones, the first given
    uf.block(np.array([d]), "strong")
    assert uf.reason(e) == "strong"
    uf.block(np.array([f]), "kept")
    uf.block(np.array([f]), "later")
    assert uf.reason(f) == "kept"
