"""Shape inference and constant folding (``ModelFacts``), and layers built from them."""

import numpy as np
import pytest
from onnx import helper, numpy_helper

from filterprune.onnx._layers import Built, build_layer
from filterprune.onnx._ops import NodeView
from filterprune.onnx.facts import attrs_of, read_facts


def _model(nodes, inits, x_shape, opset=17):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", 1, x_shape)],
        [helper.make_tensor_value_info("y", 1, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _static_model():
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
             "m": rng.standard_normal((128, 5)).astype(np.float32)}  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Shape", ["a"], ["s"]),
             helper.make_node("Constant", [], ["c"], value_ints=[1, -1]),
             helper.make_node("Reshape", ["a", "c"], ["flat"]),
             helper.make_node("MatMul", ["flat", "m"], ["y"], name="fc")]  # fmt: skip
    return _model(nodes, inits, [1, 3, 4, 4])


def _dynamic_qdq_model():
    """A Conv whose weight is a per-channel DequantizeLinear, then a flatten whose target
    is computed from the dynamic batch size."""
    q = np.arange(8 * 3 * 3 * 3, dtype=np.int8).reshape(8, 3, 3, 3) % 7
    inits = {"wq": q, "ws": np.linspace(0.1, 0.8, 8, dtype=np.float32),
             "wz": np.full(8, 1, np.int8), "zero": np.array([0], np.int64),
             "rest": np.array([-1], np.int64)}  # fmt: skip
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["x", "wd"], ["a"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Shape", ["a"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Concat", ["n", "rest"], ["target"], axis=0),
             helper.make_node("Reshape", ["a", "target"], ["y"])]  # fmt: skip
    return _model(nodes, inits, ["N", 3, 4, 4])


def test_shapes_and_folded_constants():
    model = _static_model()
    facts = read_facts(model)
    assert facts.const("s").tolist() == [1, 8, 4, 4]  # Shape of a static tensor, folded
    assert facts.const("c").tolist() == [1, -1]  # a Constant node
    assert facts.folded(model.graph.node[1]) and not facts.folded(model.graph.node[0])
    assert facts.shape("a") == (1, 8, 4, 4) and facts.shape("flat") == (1, 128)
    assert facts.shape("w") == (8, 3, 3, 3) and facts.shape("nowhere") is None
    assert facts.const("a") is None and facts.value("w") is facts.const("w")
    assert facts.producer("a").op_type == "Conv" and facts.producer("x") is None
    assert facts.readers("a") == 2 and facts.readers("y") == 0
    assert facts.node(4).name == "fc" and facts.opset == 17
    assert facts.batch == 1 and facts.dynamic == () and not facts.symbolic("a")


def test_facts_are_read_only():
    facts = read_facts(_static_model())
    with pytest.raises(TypeError, match="does not support item assignment"):
        facts.consts["s"] = np.zeros(4)
    with pytest.raises(AttributeError):
        facts.opset = 13


def test_dynamic_batch_and_quantized_weight():
    model = _dynamic_qdq_model()
    facts = read_facts(model)
    assert facts.dynamic == ("x",) and facts.batch == 1
    assert facts.shape("x") == (1, 3, 4, 4) and facts.shape("a") == (1, 8, 4, 4)
    # read at batch 1 and 2: the batch entry copies the input (0), as -1 is taken
    assert facts.const("target").tolist() == [0, -1]
    assert facts.dq_node("wd") == 0 and facts.dq_node("wq") is None
    assert not facts.folded(model.graph.node[0])  # a quantized weight stays a node
    q, s = facts.const("wq").astype(float), facts.const("ws").astype(float)
    np.testing.assert_allclose(facts.value("wd"), (q - 1) * s[:, None, None, None])


def test_symbolic_dimension_past_the_batch():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], {}, ["N", 3, "H", 4])
    facts = read_facts(model)
    assert facts.symbolic("x") and facts.symbolic("y")
    assert facts.shape("y") == (1, 3, 1, 4)


def _build(model, index):
    facts = read_facts(model)
    node = model.graph.node[index]
    view = NodeView(node, attrs_of(node), [facts.shape(n) for n in node.input],
                    [facts.shape(o) for o in node.output], [facts.const(n) for n in node.input],
                    facts.opset)  # fmt: skip
    return build_layer(facts, index, node, view, {}, node.name)


def test_layer_builder_refs_point_at_the_quantized_weight():
    built = _build(_dynamic_qdq_model(), 1)
    assert isinstance(built, Built)
    assert built.refs == {"W": (0, 0), "W:scale": (0, 1), "W:zero_point": (0, 2)}
    assert built.info.params["W:scale"] == ((8,), ("out",))
    assert built.attrs["out_channels"] == 8 and built.attrs["positions"] == 16


def test_layer_builder_says_why_a_layer_stays_whole():
    nodes = [helper.make_node("Conv", ["x", "x"], ["y"], name="conv")]
    assert _build(_model(nodes, {}, [1, 3, 3, 3]), 0) == "weights are not constants"
