"""A per-channel Mul and Add after a quantized Conv (a Keras BatchNorm as tf2onnx writes
it) folded into the Conv: the same outputs, and ONNX Runtime's int8 kernel for it."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from filterprune.onnx import run_onnxruntime
from filterprune.onnx.fold_affine import fold_channel_affine
from filterprune.onnx.int8 import int8_layers

C, CIN = 6, 3


def _model(weight_form="float", mul=None, add=None, bias=False, shape=(C, 1, 1), layout=None,
           weights=None, scale=None, extra_reader=False):
    """x -> Q/DQ -> Conv(DQ(w)) [+ bias] -> Mul(mul) -> Add(add) -> Relu -> Q/DQ -> y."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(C, CIN, 3, 3)).astype(np.float32) if weights is None else weights
    if scale is None:
        scale = (np.abs(w).reshape(C, -1).max(1) / 127).astype(np.float32)
    inits = [numpy_helper.from_array(np.float32(0.05), "xs"),
             numpy_helper.from_array(np.uint8(128), "xz"),
             numpy_helper.from_array(np.float32(0.02), "ys"),
             numpy_helper.from_array(np.uint8(0), "yz"),
             numpy_helper.from_array(np.zeros(C, np.int8), "wz")]  # fmt: skip
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"])]  # fmt: skip
    axis, stored = 0, w
    if layout == "transpose":  # stored as (k, k, in, out), as a Keras kernel
        axis, stored = 3, np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    if weight_form == "float":
        inits += [numpy_helper.from_array(stored, "w"), numpy_helper.from_array(
            scale, "ws")]  # fmt: skip
        nodes.append(helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=axis))
    else:
        ints = np.clip(np.rint(stored / scale.reshape([-1 if i == axis else 1
                                                       for i in range(4)])), -128, 127)
        inits += [numpy_helper.from_array(ints.astype(np.int8), "wq"),
                  numpy_helper.from_array(scale, "ws")]  # fmt: skip
    nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=axis))
    kernel = "wd"
    if layout == "transpose":
        nodes.append(helper.make_node("Transpose", ["wd"], ["wt"], perm=[3, 2, 0, 1]))
        kernel = "wt"
    conv_in = ["xd", kernel]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=C).astype(np.float32), "b"))
        conv_in.append("b")
    nodes.append(helper.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1]))
    last = "c"
    if mul is not None:
        inits.append(numpy_helper.from_array(np.asarray(mul, np.float32).reshape(shape), "s"))
        nodes.append(helper.make_node("Mul", [last, "s"], ["m"]))
        last = "m"
    if add is not None:
        inits.append(numpy_helper.from_array(np.asarray(add, np.float32).reshape(shape), "t"))
        nodes.append(helper.make_node("Add", ["t", last], ["a"]))
        last = "a"
    nodes += [helper.make_node("Relu", [last], ["r"]),
              helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["rq"]),
              helper.make_node("DequantizeLinear", ["rq", "ys", "yz"], ["y"])]  # fmt: skip
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, C, 8, 8])]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, C, 8, 8]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, CIN, 8, 8])],
        outputs, inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _outputs(model, fused=False):
    """The QDQ arithmetic unfused, or as ONNX Runtime runs it (int8 kernels)."""
    x = np.random.default_rng(1).normal(size=(2, CIN, 8, 8)).astype(np.float32)
    if not fused:
        return run_onnxruntime(model, {"x": x})
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _fold(model):
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    return folded, fold_channel_affine(folded)


MUL = [1.5, -0.7, 0.0, 2.0, -1.2, 0.3]
ADD = [0.1, -0.2, 0.3, 0.0, 0.5, -0.4]


@pytest.mark.parametrize("case", [
    {}, {"weight_form": "int8"}, {"bias": True}, {"layout": "transpose"},
    {"shape": (1, C, 1, 1)}, {"add": None}, {"mul": None},
    {"mul": [-0.5], "add": None, "shape": (1,)}])  # fmt: skip
def test_folded_conv_computes_the_same_and_runs_as_int8(case):
    args = {"mul": MUL, "add": ADD, **case}
    model = _model(**args)
    folded, count = _fold(model)
    assert count == 1
    onnx.checker.check_model(folded, full_check=True)
    ops = [n.op_type for n in folded.graph.node]
    assert "Mul" not in ops and "Add" not in ops and "Transpose" not in ops
    before, after = _outputs(model)[0], _outputs(folded)[0]
    assert np.abs(before).max() > 0.5  # the shift and scale reach the output
    assert np.abs(before - after).max() <= 1e-5 * np.abs(before).max()
    assert int8_layers(model, ("onnxruntime",))["onnxruntime"] == {"int8": 0, "float": 1}
    assert int8_layers(folded, ("onnxruntime",))["onnxruntime"] == {"int8": 1, "float": 0}
    # the int8 kernel rounds once more (its requantization): one output step (0.02) apart
    assert np.abs(_outputs(folded, fused=True)[0] - before).max() <= 0.02 + 1e-6


def test_a_negative_scale_on_a_filter_holding_minus_128_is_left_unfolded():
    """-128 has no positive in int8: negating that filter's integers would saturate."""
    w = np.random.default_rng(0).normal(size=(C, CIN, 3, 3)).astype(np.float32)
    scale = (np.abs(w).reshape(C, -1).max(1) / 127).astype(np.float32)
    w[1, 0, 0, 0] = -scale[1] * 128  # MUL[1] is negative
    model = _model(weight_form="int8", mul=MUL, add=ADD, weights=w, scale=scale)
    assert _fold(model)[1] == 0
    w[1, 0, 0, 0] = 0  # without it the same filter folds
    assert _fold(_model(weight_form="int8", mul=MUL, add=ADD, weights=w, scale=scale))[1] == 1


@pytest.mark.parametrize("case", [{"mul": np.linspace(0.5, 1.5, 8), "add": None,
                                   "shape": (1, 1, 1, 8)},  # along the width: not a channel
                                  {"extra_reader": True},  # the Conv's output is read too
                                  {"shape": (C, 1, 1), "mul": [np.inf] + MUL[1:]},
                                  {"mul": [1e-7] + MUL[1:]}])  # a tiny BatchNorm gamma
def test_what_is_not_a_per_channel_scale_is_left_as_is(case):
    """A tiny scale: ONNX Runtime quantizes the fused Conv's bias to int32 at the input's
    scale times the weights', 2.5e9 steps here: the bias saturated, 0.45 off."""
    args = {"mul": MUL, "add": ADD, **case}
    model = _model(**args)
    folded, count = _fold(model)
    assert count == 0
    assert folded == model
