"""Channel rules on hand-built graphs, checked against plain index arithmetic."""

import numpy as np
import pytest

from filterprune.core.analysis import AnalysisOptions, analyze
from filterprune.core.graph import Graph, LayerInfo, Node
from filterprune.core.pruner import Plan, Pruner

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
