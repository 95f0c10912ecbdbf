"""A zero Pad between a conv and the next conv's QuantizeLinear gets a Q/DQ pair before it
(:func:`filterprune.onnx.quantize_pad.quantize_before_pad`), changing no number."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx_helpers import run

from filterprune.onnx.int8 import int8_layers
from filterprune.onnx.quantize_pad import quantize_before_pad


def _model(mode="constant", value=0.0, second=None):
    """Q/DQ -> conv a -> Relu -> Pad -> Q/DQ -> conv b; ``second``: the scale's name of a
    second conv reading the padded tensor (``s`` the same, ``s2`` another scale)."""
    rng = np.random.default_rng(0)
    w = {"wa": rng.integers(-127, 128, size=(8, 3, 3, 3), dtype=np.int8),
         "wb": rng.integers(-127, 128, size=(4, 8, 3, 3), dtype=np.int8),
         "sw": np.array(0.01, np.float32), "zw": np.array(0, np.int8),
         "s": np.array(0.05, np.float32), "s2": np.array(0.07, np.float32),
         "z": np.array(0, np.uint8),  # 0: the Relu before a Q goes into its saturation
         "pads": np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64),
         "v": np.array(value, np.float32)}  # fmt: skip
    nodes = [helper.make_node("DequantizeLinear", [k, "sw", "zw"], [f"{k}d"]) for k in "ab"]
    nodes[0].input[0], nodes[1].input[0] = "wa", "wb"
    nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "ad"], ["a"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Pad", ["r", "pads", "v"], ["p"], mode=mode)]  # fmt: skip
    for i, s in enumerate(["s"] if second is None else ["s", second]):
        nodes += [helper.make_node("QuantizeLinear", ["p", s, "z"], [f"pq{i}"]),
                  helper.make_node("DequantizeLinear", [f"pq{i}", s, "z"], [f"pd{i}"]),
                  helper.make_node("Conv", [f"pd{i}", "bd"], [f"c{i}"], strides=[2, 2]),
                  helper.make_node("QuantizeLinear", [f"c{i}", "s", "z"], [f"cq{i}"]),
                  helper.make_node("DequantizeLinear", [f"cq{i}", "s", "z"], [f"y{i}"])]
    nodes.append(helper.make_node("Sum", ["y0"] if second is None else ["y0", "y1"], ["y"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", 1, [1, 4, 4, 4])],
        [numpy_helper.from_array(v, k) for k, v in w.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("second", [None, "s"])
def test_a_zero_pad_gets_a_pair_before_it_and_its_conv_runs_as_int8(second):
    """Before: ONNX Runtime ran conv ``a`` in float (no QuantizeLinear after it)."""
    model, before = _model(second=second), _model(second=second)
    convs = 2 if second is None else 3
    assert int8_layers(before, ("onnxruntime",))["onnxruntime"]["int8"] == convs - 1
    assert quantize_before_pad(model) == 1
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(model, x)[0], run(before, x)[0])  # no number moves
    assert int8_layers(model, ("onnxruntime",))["onnxruntime"] == {"int8": convs, "float": 0}


@pytest.mark.parametrize("kwargs", [{"mode": "reflect"}, {"value": 1.0}, {"second": "s2"}],
                         ids=["reflect", "value 1", "two scales"])
def test_other_pads_and_readers_are_left_alone(kwargs):
    """A pad of another value leaves the grid; one pair serves one scale."""
    model = _model(**kwargs)
    assert quantize_before_pad(model) == 0
    assert model == _model(**kwargs)
