"""Which BatchNorms score a layer under ``taylor`` (:func:`taylor_batchnorms`)."""

import pytest

from filterprune.core.graph import Graph, LayerInfo, Node
from filterprune.core.signals import taylor_batchnorms

PARAMS = ("weight", "bias")


def add_conv(g, name, source, cin, cout, side=8):
    """A 3x3 conv ``name`` of ``cin`` to ``cout`` channels reading ``source``."""
    roles = ("out", "in", None, None)
    g.layers[name] = LayerInfo(name, "conv", {"weight": ((cout, cin, 3, 3), roles)},
                               weight="weight")  # fmt: skip
    g.add(Node(name, "conv", [source], (1, cout, side, side), layer=name,
               attrs={"groups": 1, "in_channels": cin, "out_channels": cout}))  # fmt: skip


def add_batchnorm(g, name, source, width, params=PARAMS, side=8, layer=None):
    """A BatchNorm of ``width`` channels reading ``source`` (a call of ``layer``'s)."""
    layer = layer or name
    if layer not in g.layers:
        g.layers[layer] = LayerInfo(layer, "batchnorm", {p: ((width,), ("channel",))
                                                         for p in params})  # fmt: skip
    g.add(Node(name, "batchnorm", [source], (1, width, side, side), layer=layer,
               attrs={"channel_axis": 1}))  # fmt: skip


def graph(bn_params=PARAMS, also=None, bn_input="conv"):
    """x -> conv -> bn -> relu (the output); ``also`` adds a second reader of conv's
    output: ``"add"`` (conv + bn) or ``"output"`` (conv is a model output too)."""
    g = Graph()
    g.add(Node("x", "input", shape=(1, 3, 8, 8)))
    add_conv(g, "conv", "x", 3, 4)
    add_batchnorm(g, "bn", bn_input, 4, bn_params)
    g.add(Node("relu", "elementwise", ["bn"], (1, 4, 8, 8)))
    g.outputs = ["relu"]
    if also == "add":
        g.add(Node("sum", "add", ["conv", "relu"], (1, 4, 8, 8)))
        g.outputs = ["sum"]
    elif also == "output":
        g.outputs.append("conv")
    return g


@pytest.mark.parametrize(("params", "expected"), [
    (("weight", "bias"), ["weight", "bias"]),  # PyTorch names
    (("gamma", "beta"), ["gamma", "beta"]),  # Keras names
    (("gamma",), ["gamma"]),  # Keras, center=False: no shift
    # no scale: the frontend reads the term from the BatchNorm's output
    (("beta",), []),  # Keras, scale=False
    ((), []),  # PyTorch, affine=False
])  # fmt: skip
def test_batchnorm_right_after_scores(params, expected):
    assert taylor_batchnorms(graph(params), "conv") == [("bn", expected, 0)]


@pytest.mark.parametrize("also", ["add", "output"])
def test_other_readers_leave_the_weight_scoring(also):
    """The output also goes elsewhere, where the filter's scale matters."""
    assert taylor_batchnorms(graph(also=also), "conv") is None


def test_no_batchnorm_leaves_the_weight_scoring():
    assert taylor_batchnorms(graph(bn_input="x"), "conv") is None  # the BatchNorm reads x


def test_a_batchnorm_after_channel_wise_ops_scores():
    """conv -> ReLU -> BatchNorm: in training mode the BatchNorm makes the conv's filters
    scale-invariant all the same (the weight's ``sum g*w`` was near zero, 4e-7 against
    1e-2 for the BatchNorm's term)."""
    g = Graph()
    g.add(Node("x", "input", shape=(1, 3, 8, 8)))
    add_conv(g, "conv", "x", 3, 4)
    g.add(Node("relu", "identity", ["conv"], (1, 4, 8, 8)))
    g.add(Node("pool", "identity", ["relu"], (1, 4, 4, 4)))
    add_batchnorm(g, "bn", "pool", 4, side=4)
    g.outputs = ["bn"]
    assert taylor_batchnorms(g, "conv") == [("bn", ["weight", "bias"], 0)]
    g.add(Node("twice", "elementwise", ["relu", "relu"], (1, 4, 8, 8)))  # another reader
    g.outputs.append("twice")
    assert taylor_batchnorms(g, "conv") is None


def test_batchnorms_reading_a_layer_through_concatenations_score_it():
    """A DenseNet's layer is read by the BatchNorm of each layer after it, inside a
    concatenation; the weight's ``sum g*w`` was near zero there (2e-12 against 1e-3)."""
    g = Graph()
    g.add(Node("x", "input", shape=(1, 8, 8, 8)))
    for name in ("a", "b"):
        add_conv(g, name, "x", 8, 4)
    g.add(Node("ab", "concat", ["a", "b"], (1, 8, 8, 8), attrs={"axis": 1}))
    g.add(Node("xba", "concat", ["x", "b", "a"], (1, 16, 8, 8), attrs={"axis": -3}))
    add_batchnorm(g, "bn1", "ab", 8)
    add_batchnorm(g, "bn2", "xba", 16)
    g.outputs = ["bn1", "bn2"]
    assert sorted(taylor_batchnorms(g, "b")) == [("bn1", list(PARAMS), 4),
                                                 ("bn2", list(PARAMS), 8)]  # fmt: skip
    assert sorted(taylor_batchnorms(g, "a")) == [("bn1", list(PARAMS), 0),
                                                 ("bn2", list(PARAMS), 12)]  # fmt: skip
    add_batchnorm(g, "bn1_again", "xba", 8, layer="bn1")
    assert taylor_batchnorms(g, "b") is None  # bn1 called twice: its hook sees both calls
    g.nodes.pop("bn1_again")
    g.outputs.append("ab")  # the concatenation is an output too: not every path is normed
    assert taylor_batchnorms(g, "a") is None


def test_layers_summed_before_a_batchnorm_each_take_its_term():
    """``bn(a(x) + b(x))``: the add ties both convs' filters, cut together, and the
    BatchNorm's term is the channel's (their weights' ``sum g*w`` cancel out)."""
    g = Graph()
    g.add(Node("x", "input", shape=(1, 8, 8, 8)))
    for name in ("a", "b"):
        add_conv(g, name, "x", 8, 4)
    g.add(Node("sum", "elementwise", ["a", "b"], (1, 4, 8, 8)))
    g.add(Node("x_gate", "input", shape=(1, 1, 8, 8)))
    g.add(Node("gated", "elementwise", ["sum", "x_gate"], (1, 4, 8, 8)))
    add_batchnorm(g, "bn", "gated", 4)
    g.outputs = ["bn"]
    for name in ("a", "b"):
        assert taylor_batchnorms(g, name) == [("bn", list(PARAMS), 0)]
    g.add(Node("wide", "elementwise", ["a", "x"], (1, 8, 8, 8)))  # a broadcast over x
    add_batchnorm(g, "bn_wide", "wide", 8)
    g.outputs.append("bn_wide")
    assert taylor_batchnorms(g, "a") is None and taylor_batchnorms(g, "b") is not None
