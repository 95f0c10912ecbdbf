"""Quantized (QDQ) models: zero filters removed with their per-channel scales and zero
points, outputs unchanged, still int8 in ONNX Runtime and OpenVINO.

Producers: the PyTorch frontend (filter pruning + quantization, float weights ->
QuantizeLinear -> DequantizeLinear), ONNX Runtime's ``quantize_static`` (int8 weights ->
DequantizeLinear, int32 biases), and hand-made graphs for the zero-point rules.
"""

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from onnx_helpers import (
    TinyNet,
    layer,
    make_config,
    randomize_bn,
    run,
    save_graph,
    seed_torch,  # noqa: F401 - autouse fixture
)
from torch import nn

from filterprune import NNCFConfig
from filterprune.cli import main
from filterprune.errors import ConversionError
from filterprune.onnx import (
    max_rel_diff,
    remove_zero_filters,
    run_onnxruntime,
    store_int8_weights,
    weight_integers,
)
from filterprune.onnx.convert import _output_steps, _verify, default_tolerance
from filterprune.onnx.int8 import ORT_INT8, int8_layers, onnxruntime_ops
from filterprune.onnx.report import ConversionReport
from filterprune.torch import create_compressed_model, register_default_init_args

QDQ = ("QuantizeLinear", "DequantizeLinear")


class QNet(nn.Module):
    """Stem, residual block, depthwise + pointwise convs, linear head (all with BN)."""

    def __init__(self):
        super().__init__()

        def cbr(cin, cout, k=3, groups=1, relu=True):
            layers = [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                      nn.BatchNorm2d(cout)]  # fmt: skip
            return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)

        self.stem = cbr(3, 16)
        self.a1, self.a2 = cbr(16, 16), cbr(16, 16, relu=False)
        self.dw, self.pw = cbr(16, 16, groups=16), cbr(16, 24, k=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.a2(self.a1(x)))
        x = self.pw(self.dw(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _qat_config(activations=None, overflow_fix=None):
    """Prune + quantize QNet; ``overflow_fix`` as given (the default, disable, when None)."""
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 16, 16, generator=g), torch.zeros(4)) for _ in range(2)]
    prune = {"algorithm": "filter_pruning", "pruning_init": 0.5,
             "params": {"schedule": "baseline", "prune_first_conv": True,
                        "prune_downsample_convs": True}}  # fmt: skip
    quant = {"algorithm": "quantization",
             "initializer": {"range": {"num_init_samples": 8},
                             "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}  # fmt: skip
    if activations:
        quant["activations"] = activations
    if overflow_fix:
        quant["overflow_fix"] = overflow_fix
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 3, 16, 16]},
                                   "compression": [prune, quant]})  # fmt: skip
    return register_default_init_args(config, batches)


@pytest.fixture(scope="module")
def qat(tmp_path_factory):
    """A pruned + quantized QNet exported by the PyTorch frontend, and its conversion."""
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(randomize_bn(QNet()), _qat_config(overflow_fix="enable"))
    path = str(tmp_path_factory.mktemp("qat") / "m.onnx")
    ctrl.export_model(path)
    new, report = remove_zero_filters(path)
    return path, new, report


class TokenMLP(nn.Module):
    """Linears on token tensors: PyTorch exports each weight as Q -> DQ -> Transpose."""

    def __init__(self):
        super().__init__()
        self.stem, self.ln = nn.Conv2d(3, 8, 4, stride=4), nn.LayerNorm(8)
        self.fc1, self.fc2, self.head = nn.Linear(8, 16), nn.Linear(16, 8), nn.Linear(8, 3)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)
        t = t + self.fc2(nn.functional.gelu(self.fc1(self.ln(t))))
        return self.head(t.mean(1))


class SharedConv(nn.Module):
    """One conv called on two tensors: one quantized weight read by two Conv nodes."""

    def __init__(self):
        super().__init__()
        self.s1, self.s2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.c, self.o = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.c(torch.relu(self.s1(x))) + self.c(torch.sigmoid(self.s2(x)) * 4 - 2)
        return self.o(torch.relu(y))


@pytest.mark.parametrize(("net", "removed"), [(TokenMLP, 8), (SharedConv, 4 + 4 + 8)])
def test_weights_laid_out_after_dq_or_read_twice_are_cut_like_float_ones(net, removed, tmp_path):
    """As many filters go from the int8 export as from the float one, and the int8 file
    computes what the export did."""
    got = []
    for quantized in (False, True):
        torch.manual_seed(0)
        model = net()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.5)
        config = _qat_config(overflow_fix="enable")
        config["compression"][0]["params"]["filters_multiple_of"] = 1
        if not quantized:
            config["compression"] = config["compression"][:1]
        ctrl, _ = create_compressed_model(model, config)
        path = str(tmp_path / f"{quantized}.onnx")
        ctrl.export_model(path)
        new, report = remove_zero_filters(path)  # checks outputs equal in onnxruntime
        got.append(report.removed)
    assert got == [removed, removed]


@pytest.mark.parametrize("quantized", [False, True])
def test_a_float16_export_is_cut_and_checked_at_float16_rounding(quantized, tmp_path):
    """Its quantized weights reach each conv through a Cast to float16: no layer was found
    ("no zero filters found"); a float one was refused, 3.5e-4 off at 1e-4 by float16's
    rounding of sums in another order."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 8, 3, padding=1))  # fmt: skip
    compression = [{"algorithm": "filter_pruning", "pruning_init": 0.5,
                    "params": {"filters_multiple_of": 1, "prune_first_conv": True}}]
    if quantized:
        compression.append({"algorithm": "quantization",
                            "initializer": {"range": {"num_init_samples": 0}}})
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [2, 3, 16, 16], "type": "half"},
                                   "compression": compression})  # fmt: skip
    ctrl, model = create_compressed_model(model.half().eval(), config)
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16).half())  # the ranges' first batch
    ctrl.export_model(str(tmp_path / "m.onnx"))
    new, report = remove_zero_filters(str(tmp_path / "m.onnx"))  # checks outputs agree
    assert report.removed == 24 and report.flops_kept < 0.4
    if not quantized:  # a tolerance given is kept (a quantized one may differ by a step)
        with pytest.raises(ConversionError, match="more than tolerance=1e-05"):
            remove_zero_filters(str(tmp_path / "m.onnx"), tolerance=1e-5)


def _cast_graph(two_readers=False, side_cast=False):
    """x -> Conv(w1: int8 -> DequantizeLinear -> Cast to float16, 3 zero filters) -> Relu
    -> Conv(w2) -> out; ``two_readers``: a second Conv reads the Cast too; ``side_cast``:
    all float32, with a value rounded through float16 beside the convs."""
    rng = np.random.default_rng(0)
    half = not side_cast
    kind = onnx.TensorProto.FLOAT16 if half else onnx.TensorProto.FLOAT
    w1 = rng.integers(-100, 100, (8, 3, 3, 3)).astype(np.int8)
    w1[[1, 4, 6]] = 0
    w2 = rng.integers(-100, 100, (4, 8, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(w1, "w1_q"), numpy_helper.from_array(w2, "w2_q"),
             numpy_helper.from_array(np.array(0.01, np.float32), "s")]  # fmt: skip
    nodes = [helper.make_node("DequantizeLinear", ["w1_q", "s"], ["w1_dq"]),
             helper.make_node("DequantizeLinear", ["w2_q", "s"], ["w2_dq"])]  # fmt: skip
    if half:
        nodes += [helper.make_node("Cast", [f"{w}_dq"], [f"{w}_c"], to=kind) for w in ("w1", "w2")]
    else:
        nodes += [helper.make_node("Identity", [f"{w}_dq"], [f"{w}_c"]) for w in ("w1", "w2")]
    nodes += [helper.make_node("Conv", ["x", "w1_c"], ["y1"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["y1"], ["r1"]),
              helper.make_node("Conv", ["r1", "w2_c"], ["out"], pads=[1, 1, 1, 1])]  # fmt: skip
    outs = [helper.make_tensor_value_info("out", kind, [2, 4, 8, 8])]
    if two_readers:
        nodes.append(helper.make_node("Conv", ["x", "w1_c"], ["out2"], pads=[1, 1, 1, 1]))
        outs.append(helper.make_tensor_value_info("out2", kind, [2, 8, 8, 8]))
    if side_cast:
        nodes += [helper.make_node("Cast", ["x"], ["xh"], to=onnx.TensorProto.FLOAT16),
                  helper.make_node("Cast", ["xh"], ["xf"], to=onnx.TensorProto.FLOAT),
                  helper.make_node("ReduceMean", ["xf"], ["side"], keepdims=0)]  # fmt: skip
        outs.append(helper.make_tensor_value_info("side", kind, []))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", kind, [2, 3, 8, 8])],
                              outs, inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_cast_weight_two_convs_read_stays_whole():
    """Read as one layer's view, the first conv's cut broke the second: the rewritten
    model failed onnx.checker ((5) vs (8))."""
    assert remove_zero_filters(_cast_graph())[1].removed == 3
    _, report = remove_zero_filters(_cast_graph(two_readers=True))  # checks outputs equal
    assert report.removed == 0


def test_the_default_tolerance_follows_what_the_layers_sum_in():
    """A float32 model that rounds one value through float16 beside its convs was checked
    at float16's 1e-2."""
    assert default_tolerance(_cast_graph()) == 1e-2
    assert default_tolerance(_cast_graph(side_cast=True)) == 1e-4


def _inits(model):
    """Initializers by name, and what Identity nodes pass on of them (shared zero points)."""
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Identity" and n.input[0] in values:
            values[n.output[0]] = values[n.input[0]]
    return values


def _weight_quantizers(model):
    """(op, weight, scale, zero point, axis) of each Q/DQ node whose tensor is a weight."""
    values = _inits(model)
    made_by = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type not in QDQ or n.input[0] not in values and n.input[0] not in made_by:
            continue
        source = n.input[0]
        if n.op_type == "DequantizeLinear" and source in made_by:
            q = made_by[source]
            if q.op_type != "QuantizeLinear" or q.input[0] not in values:
                continue
            source = q.input[0]
        if source not in values:
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        zp = values[n.input[2]] if len(n.input) > 2 else None
        out.append((n.op_type, values[source], values[n.input[1]], zp, axis))
    return out


def _compare(a_path, b_model, shape, seed=1):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    ref, out = run(a_path, x)[0], run(b_model, x)[0]
    return float(np.abs(ref - out).max() / np.abs(ref).max())


# -- the PyTorch frontend's QAT export ---------------------------------------------------------
def test_qat_export_converts_with_cut_scales(qat):
    path, new, report = qat
    onnx.checker.check_model(new, full_check=True)
    assert report.removed > 0 and report.flops_kept < 0.6
    assert not [s for s in report.layers if s.kept_zero]
    before, after = _weight_quantizers(onnx.load(path)), _weight_quantizers(new)
    assert {op for op, *_ in before} == set(QDQ)  # exported: float weight -> Q -> DQ
    assert len(after) == len(before) // 2 >= 6  # converted: int8 weight -> DQ
    for op, w, scale, zp, axis in after:
        assert op == "DequantizeLinear" and w.dtype == np.int8 and axis == 0
        assert scale.shape == zp.shape == (w.shape[0],)
    kept = {s.name: s.filters - s.removed for s in report.layers}
    values, made_by = _inits(new), {o: n for n in new.graph.node for o in n.output}
    convs = [n for n in new.graph.node if n.op_type == "Conv" and n.name in kept]
    assert len(convs) == 4  # stem, a1, a2, pw (the depthwise conv follows its input)
    for conv in convs:
        dq = made_by[conv.input[1]]
        rows = kept[conv.name]
        assert values[dq.input[0]].shape[0] == rows < 24
        assert values[dq.input[1]].shape == values[dq.input[2]].shape == (rows,)


def test_int8_weights_are_what_the_runtime_computes(qat, tmp_path):
    """QuantizeLinear of constants computed here gives ONNX Runtime's own numbers, in a
    quarter of the bytes."""
    path, new, report = qat
    assert "quantized weights stored as 8-bit integers" in " ".join(report.notes)
    assert "VNNI" not in " ".join(report.notes)  # the overflow fix kept every weight within
    folded, count = store_int8_weights(onnx.load(path))
    assert count >= 6 and not [n for n in folded.graph.node if n.op_type == "QuantizeLinear"
                               and n.input[0] in _inits(folded)]  # fmt: skip
    onnx.checker.check_model(folded, full_check=True)
    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(run(path, x)[0], run(folded, x)[0])
    small = tmp_path / "folded.onnx"
    onnx.save(folded, str(small))
    weights = sum(numpy_helper.to_array(t).nbytes for t in onnx.load(path).graph.initializer)
    saved = Path(path).stat().st_size - small.stat().st_size
    assert saved > 0.6 * weights  # float32 -> 8 bits: three quarters of the weights' bytes


def test_int8_weights_leave_other_quantizers_alone():
    """Q of a run-time tensor, or of a weight without a zero point, stays a node."""
    w = numpy_helper.from_array(np.array([[0.3, -1.26], [2.0, 0.049]], np.float32), "w")
    s = numpy_helper.from_array(np.array([0.01, 0.1], np.float32), "s")
    z = numpy_helper.from_array(np.array([0, 0], np.int8), "z")
    nodes = [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=0),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], axis=0),
             helper.make_node("QuantizeLinear", ["x", "s1"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s1"], ["xd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]  # fmt: skip
    s1 = numpy_helper.from_array(np.array(0.05, np.float32), "s1")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 2])],
                              [helper.make_tensor_value_info("y", 1, [1, 2])], [w, s, z, s1])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    folded, count = store_int8_weights(model)
    assert count == 1
    assert [n.op_type for n in folded.graph.node] == [*QDQ[1:], *QDQ, "MatMul"]
    wq = numpy_helper.to_array(next(t for t in folded.graph.initializer if t.name == "wq"))
    np.testing.assert_array_equal(wq, [[30, -126], [20, 0]])  # per row, rounded half to even
    assert "w" not in {t.name for t in folded.graph.initializer}


@pytest.mark.parametrize("op, zero_point", [("ConvTranspose", 3), ("ConvTranspose", 0),
                                             ("Conv", 3)])
def test_int8_weights_of_a_transposed_conv_with_zero_points_stay_float(op, zero_point):
    """OpenVINO runs a ConvTranspose of stored int8 weights with non-zero zero points
    wrongly (0.4 relative off), and the QuantizeLinear of float weights right."""
    w = numpy_helper.from_array(np.full((2, 2, 1, 1), 0.5, np.float32), "w")
    s = numpy_helper.from_array(np.array([0.01, 0.1], np.float32), "s")
    z = numpy_helper.from_array(np.array([zero_point, 0], np.int8), "z")
    axis = 1 if op == "ConvTranspose" else 0  # the filters' axis
    nodes = [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=axis),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], axis=axis),
             helper.make_node(op, ["x", "wd"], ["y"])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 2, 2, 2])],
                              [helper.make_tensor_value_info("y", 1, [1, 2, 2, 2])], [w, s, z])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    _, count = store_int8_weights(model)
    assert count == (0 if op == "ConvTranspose" and zero_point else 1)


def test_qat_export_equal_outputs_and_int8_in_onnxruntime(qat):
    path, new, report = qat
    assert report.max_rel_diff is not None and report.max_rel_diff <= 1e-5
    assert _compare(path, new, (1, 3, 16, 16)) <= 1e-5
    old_ops, new_ops = onnxruntime_ops(path), onnxruntime_ops(new)
    assert new_ops["QLinearConv"] >= 4
    assert {k: new_ops[k] for k in ORT_INT8} == {k: old_ops[k] for k in ORT_INT8}


def test_qat_export_to_openvino_runs_int8(qat, tmp_path):
    pytest.importorskip("openvino")
    from filterprune.onnx.openvino import ov_flops, read_openvino, run_openvino

    path, _, _ = qat
    xml = tmp_path / "small.xml"
    assert main(["convert", path, "--to", "openvino", "-o", str(xml)]) == 0
    layers = int8_layers(str(xml), runtimes=("openvino",))["openvino"]
    assert layers["int8"] >= 5 and layers["float"] == 0
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    new = qat[1]
    # the cut computes what the masked model did (onnxruntime, Q/DQ unfused), and with the
    # overflow fix OpenVINO's int8 kernels give both the same on any x86 CPU (without it,
    # 0.13 to 0.35 apart on an AVX2 CPU without VNNI)
    assert max_rel_diff(run_onnxruntime(path, {"x": x}), run_onnxruntime(new, {"x": x})) <= 1e-5
    assert max_rel_diff(run_openvino(new, {"x": x}), run_openvino(str(xml), {"x": x})) <= 1e-5
    assert max_rel_diff(run_openvino(path, {"x": x}), run_openvino(str(xml), {"x": x})) <= 1e-5
    assert ov_flops(read_openvino(str(xml))) < 0.6 * ov_flops(read_openvino(path))


def test_qat_export_with_per_channel_activations(qat, tmp_path):
    torch.manual_seed(0)
    config = _qat_config(activations={"per_channel": True})
    ctrl, _ = create_compressed_model(randomize_bn(QNet()), config)
    path = str(tmp_path / "m.onnx")
    ctrl.export_model(path)
    new, report = remove_zero_filters(path)
    onnx.checker.check_model(new, full_check=True)
    assert report.removed == qat[2].removed and report.max_rel_diff <= 1e-5
    values = _inits(new)
    made_by = {o: n for n in new.graph.node for o in n.output}
    cins = []
    for conv in (n for n in new.graph.node if n.op_type == "Conv"):
        dq = made_by[conv.input[0]]  # the activation's DequantizeLinear, axis 1
        if dq.op_type != "DequantizeLinear" or values[dq.input[1]].size == 1:
            continue
        q = made_by[dq.input[0]]
        w = values[made_by[conv.input[1]].input[0]]  # int8 weight -> DequantizeLinear
        cin = w.shape[1] * next(a.i for a in conv.attribute if a.name == "group")
        for node in (q, dq):
            assert values[node.input[1]].shape == values[node.input[2]].shape == (cin,)
        cins.append(cin)
    assert len(cins) >= 3 and any(3 < c < 16 for c in cins)  # cut along with the filters


def _peaks_by_layer(model):
    """The largest weight integer magnitude of each quantized layer, in graph order."""
    levels = weight_integers(model)
    order = [o for n in model.graph.node for o in levels if o in n.input]
    return [int(np.abs(levels[o]).max()) for o in dict.fromkeys(order)]


@pytest.mark.parametrize("fix", ["enable", "first_layer_only", "disable", None])
def test_overflow_fix_keeps_weight_integers_in_half_the_range(fix, tmp_path):
    torch.manual_seed(0)
    ctrl, _ = create_compressed_model(randomize_bn(QNet()), _qat_config(overflow_fix=fix))
    path = str(tmp_path / "m.onnx")
    ctrl.export_model(path)
    half = {"enable": 6, "first_layer_only": 1, "disable": 0, None: 0}[fix]
    # each range is set by its weight, so the largest weight lands on the range's end
    assert _peaks_by_layer(onnx.load(path)) == [63] * half + [127] * (6 - half)


def test_int8_kernels_give_the_cut_what_the_masked_model_gave(qat):
    """With the overflow fix no u8 x s8 pair sum saturates, so ONNX Runtime's
    fused int8 kernels compute the masked and the cut model alike on any x86 CPU (without
    it, 0.03 relative apart on an AVX2 CPU without VNNI)."""
    path, new, _ = qat
    assert max(_peaks_by_layer(new)) <= 64
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    fused = [run_onnxruntime(m, {"x": x}, fused=True) for m in (path, new)]
    assert max_rel_diff(*fused) <= 1e-5


@pytest.mark.parametrize("fix", ["enable", "disable"])
def test_openvino_check_runs_the_masked_model_when_its_weights_fit(fix, tmp_path):
    """Within +-64 OpenVINO's int8 kernels compute the model's arithmetic, so the IR is
    checked against onnxruntime's run of the masked file; wider weights are checked
    against OpenVINO's run of the converted file (and onnxruntime's is a warning)."""
    pytest.importorskip("openvino")
    from filterprune.onnx.openvino import check_openvino, read_openvino

    torch.manual_seed(0)
    ctrl, _ = create_compressed_model(randomize_bn(QNet()), _qat_config(overflow_fix=fix))
    path = str(tmp_path / "m.onnx")
    ctrl.export_model(path)
    new, _ = remove_zero_filters(path)
    note, warning = check_openvino(path, read_openvino(new), 1e-4, new)
    if fix == "disable":
        assert note.startswith("OpenVINO outputs vs the input model converted, in OpenVINO "
                               "(int8 weights"), note  # fmt: skip
        return
    # the masked file itself: in onnxruntime, or where OpenVINO's int8 arithmetic drifts a
    # little from it (a quantized Add), in OpenVINO with a warning
    assert note.startswith("OpenVINO outputs vs the input model in "), note
    assert (warning is None) == ("in onnxruntime:" in note), (note, warning)
    assert warning is None or "moves activations by a quantization step" in warning


def test_openvino_drifting_a_little_on_int8_arithmetic_writes_the_ir_with_a_warning(
        qat, monkeypatch):  # fmt: skip
    """OpenVINO's int8 Add moved QNet's outputs 0.9% off onnxruntime's arithmetic, over
    one output step: convert refused the IR as if OpenVINO ran an op wrongly."""
    pytest.importorskip("openvino")
    import filterprune.onnx.openvino as fov

    path, new, _ = qat
    run = fov.run_openvino
    monkeypatch.setattr(fov, "run_openvino", lambda m, feeds, **k: [
        y + 0.02 * np.abs(y).max() for y in run(m, feeds)])  # fmt: skip
    note, warning = fov.check_openvino(path, fov.read_openvino(new), 1e-4, new)
    assert note == "OpenVINO outputs vs the input model in OpenVINO: 0.00e+00"
    assert re.search(r"OpenVINO runs the input model itself 0\.0\d+ \(relative\)", warning)
    assert "The IR is written" in warning


def test_openvino_drifting_only_on_other_inputs_writes_the_ir_with_a_warning(qat, monkeypatch):
    """OpenVINO's int8 steps fall on some inputs only: where it ran the input model exactly
    on the check's inputs but the IR a step off, convert refused a right cut ("please
    report this model"; a U-Net, 0.0102 off, its input model 0.0093 off on other inputs).
    The IR must stay within that drift on the other inputs too."""
    pytest.importorskip("openvino")
    import filterprune.onnx.openvino as fov
    from filterprune.onnx.convert import reference_run

    path, new, _ = qat
    check = next(iter(reference_run(onnx.load(path))[0].values()))
    ir = fov.read_openvino(new)

    def drifting(m, feeds, **k):  # onnxruntime's numbers, moved on the IR always and on
        exact = m is not ir and np.array_equal(next(iter(feeds.values())), check)  # the
        outs = run_onnxruntime(new if m is ir else path, feeds)  # input model elsewhere
        return [y if exact else y + 0.02 * np.abs(y).max() for y in outs]

    monkeypatch.setattr(fov, "run_openvino", drifting)
    note, warning = fov.check_openvino(path, ir, 1e-4, new)
    assert re.fullmatch(r"OpenVINO outputs vs the input model in onnxruntime: 2\.\d+e-02", note)
    assert re.match(r"OpenVINO runs the input model itself 0\.0\d+ \(relative\) off onnxruntime, "
                    r"before any cut, on other random inputs", warning)  # fmt: skip
    assert warning.endswith("The IR is written.")
    monkeypatch.setattr(fov, "run_openvino", lambda m, feeds, **k: [  # off on the IR alone
        y + 0.02 * np.abs(y).max() * (m is ir) for y in run_onnxruntime(path, feeds)])
    with pytest.raises(ConversionError, match="please report this model"):
        fov.check_openvino(path, ir, 1e-4, new)

    def far_elsewhere(m, feeds, **k):  # the IR 0.2 off on the other inputs: not drift
        outs = drifting(m, feeds)
        if m is ir and not np.array_equal(next(iter(feeds.values())), check):
            outs = [y + 0.18 * np.abs(y).max() for y in outs]
        return outs

    monkeypatch.setattr(fov, "run_openvino", far_elsewhere)
    with pytest.raises(ConversionError, match="please report this model"):
        fov.check_openvino(path, ir, 1e-4, new)


def test_openvino_running_the_input_model_itself_off_is_blamed_on_openvino(qat, monkeypatch):
    """OpenVINO 2026.4 runs onnxruntime's per-channel MatMul QDQ files 0.97 off, cut or not;
    the error blamed the conversion ("please report this model")."""
    pytest.importorskip("openvino")
    import filterprune.onnx.openvino as fov
    from filterprune.errors import ConversionError

    path, new, _ = qat
    run = fov.run_openvino
    monkeypatch.setattr(fov, "run_openvino", lambda m, feeds, **k: [2 * y for y in run(m, feeds)])
    with pytest.raises(ConversionError, match=r"OpenVINO runs the input model itself [01][.\d]* "
                       r"\(relative\) off onnxruntime, before any cut"):  # fmt: skip
        fov.check_openvino(path, fov.read_openvino(new), 1e-4, new)

# -- ONNX Runtime's quantize_static as the producer ------------------------------------------
def test_onnxruntime_quantize_static_per_channel(tmp_path):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, name):
            rng = np.random.default_rng(0)
            self.items = iter([{name: rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}
                               for _ in range(4)])  # fmt: skip

        def get_next(self):
            return next(self.items, None)

    ctrl, _ = create_compressed_model(randomize_bn(TinyNet()), make_config())
    masked, qdq = tmp_path / "masked.onnx", tmp_path / "qdq.onnx"
    ctrl.export_model(str(masked))
    name = onnx.load(str(masked)).graph.input[0].name
    quantize_static(str(masked), str(qdq), Reader(name), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8)  # fmt: skip
    new, report = remove_zero_filters(str(qdq))
    onnx.checker.check_model(new, full_check=True)
    assert report.flops_kept == pytest.approx(ctrl.statistics().flops_kept, rel=1e-6)
    wide = [n for n in report.notes if "without VNNI may saturate" in n]  # full-range weights
    assert len(wide) == 1 and wide[0].startswith(f"{len(_peaks_by_layer(new))} int8 weights")
    # the stem is the first Conv (node names differ between the two torch exporters)
    stem = next(n.name for n in onnx.load(str(qdq)).graph.node if n.op_type == "Conv")
    assert layer(report, stem).removed == 8 and not [s for s in report.layers if s.kept_zero]
    values = _inits(new)
    for n in new.graph.node:  # int8 weights and int32 biases: scales cut to the rows left
        if n.op_type == "DequantizeLinear" and values.get(n.input[0]) is not None:
            q, scale = values[n.input[0]], values[n.input[1]]
            if scale.size > 1:
                assert q.dtype in (np.int8, np.int32) and scale.shape == (q.shape[0],)
    assert report.max_rel_diff == 0.0  # integer kernels: nothing else changes
    assert _compare(str(qdq), new, (1, 3, 32, 32)) == 0.0
    old_ops, new_ops = onnxruntime_ops(str(qdq)), onnxruntime_ops(new)
    assert new_ops["QLinearConv"] == old_ops["QLinearConv"] >= 6 and new_ops["QGemm"] == 2


def test_zero_filters_of_a_float_batchnorm_in_a_qdq_file_are_reported(tmp_path):
    """ONNX Runtime leaves an unfolded BatchNormalization in float between Q/DQ pairs: its
    zeroed filters were removed, but reported as none (0 zero, 0 kept for 3 zeroed)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.items = iter([{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
                               for _ in range(4)])  # fmt: skip

        def get_next(self):
            return next(self.items, None)

    torch.manual_seed(0)
    net = randomize_bn(nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 8, 1), nn.Flatten(), nn.Linear(8 * 16 * 16, 4))).eval()  # fmt: skip
    for bn, rows in ((net[1], [0, 3, 7]), (net[4], [0, 3])):  # channel 7 reaches a live shift
        bn.weight.data[rows], bn.bias.data[rows] = 0, 0
    path, qdq = tmp_path / "f32.onnx", tmp_path / "qdq.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False,
                      do_constant_folding=False, input_names=["x"])  # fmt: skip
    quantize_static(str(path), str(qdq), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    for file in (path, qdq):
        _, report = remove_zero_filters(str(file))
        stem = report.layers[0]
        assert (stem.zero_filters, stem.removed, stem.kept_zero) == (3, 2, 1), file.name
        assert "reads it with nonzero weights" in stem.reason


# -- zero points: a pruned channel is zero only where Q and DQ agree -------------------------
def _qdq_graph(tmp_path, q_zp, dq_zp, act_zps=(0, 0), per_channel_act=False):
    """x -> conv1 (float W -> Q -> DQ, filters 1 and 2 zero) -> Relu -> Q -> DQ -> conv2."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w1[[1, 2]] = 0
    w2 = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    c = 4 if per_channel_act else 1
    act, shape = ({"axis": 1}, (4,)) if per_channel_act else ({}, ())
    weights = {
        "w1": w1, "s1": np.full(4, 0.02, np.float32), "w2": w2,
        "qz1": np.array(q_zp, np.int8), "dz1": np.array(dq_zp, np.int8),
        "as": np.full(c, 0.05, np.float32).reshape(shape),
        "aqz": np.full(c, act_zps[0], np.uint8).reshape(shape),
        "adz": np.full(c, act_zps[1], np.uint8).reshape(shape),
    }  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", ["w1", "s1", "qz1"], ["w1q"], axis=0),
        helper.make_node("DequantizeLinear", ["w1q", "s1", "dz1"], ["w1d"], axis=0),
        helper.make_node("Conv", ["x", "w1d"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("QuantizeLinear", ["r1", "as", "aqz"], ["r1q"], **act),
        helper.make_node("DequantizeLinear", ["r1q", "as", "adz"], ["r1d"], **act),
        helper.make_node("Conv", ["r1d", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", 1, [1, 2, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = str(tmp_path / "z.onnx")
    onnx.save(model, path)
    return path


def _removed(path):
    new, report = remove_zero_filters(path)
    onnx.checker.check_model(new, full_check=True)
    assert _compare(path, new, (1, 3, 8, 8)) <= 1e-6
    return layer(report, "c1").removed, new


def test_weight_zero_needs_the_same_zero_point_in_q_and_dq(tmp_path):
    same = [0, 5, -3, 0]
    removed, new = _removed(_qdq_graph(tmp_path, same, same))
    assert removed == 2  # Q(0) = z, DQ(z) = 0: both zero filters go
    cut = [(op, w) for op, w, *_ in _weight_quantizers(new)]  # Q is computed: int8 -> DQ
    assert [(op, w.shape, w.dtype) for op, w in cut] == [("DequantizeLinear", (2, 3, 3, 3),
                                                          np.int8)]  # fmt: skip
    zps = [zp.tolist() for *_, zp, _ in _weight_quantizers(new)]
    assert zps == [[0, 0]]  # the kept filters' zero points
    # filter 1 quantizes to 5 but dequantizes with 4: (5 - 4) * s is not zero
    removed, _ = _removed(_qdq_graph(tmp_path, same, [0, 4, -3, 0]))
    assert removed == 1


def test_int8_weight_zero_is_where_it_equals_the_zero_point(tmp_path):
    path = _qdq_graph(tmp_path, [0, 0, 0, 0], [0, 0, 0, 0])
    model = onnx.load(path)
    q = np.random.default_rng(0).integers(-50, 50, (4, 3, 3, 3)).astype(np.int8)
    zp = np.array([0, 7, 0, 0], np.int8)
    q[1], q[2] = 7, 0  # filter 1: all at its zero point (zero); filter 2: zero codes, zp 0
    zp[2] = 3  # ... but dequantized with zero point 3: (0 - 3) * s, not zero
    drop = [i for i in model.graph.initializer if i.name in ("w1", "qz1", "dz1")]
    for i in drop:
        model.graph.initializer.remove(i)
    model.graph.initializer.extend([numpy_helper.from_array(q, "w1q"),
                                    numpy_helper.from_array(zp, "dz1")])  # fmt: skip
    model.graph.node.remove(model.graph.node[0])
    onnx.save(model, path)
    removed, new = _removed(path)
    assert removed == 1
    dq = next(n for n in new.graph.node if n.op_type == "DequantizeLinear")
    assert _inits(new)[dq.input[2]].tolist() == [0, 3, 0]


@pytest.mark.parametrize("per_channel", [False, True])
def test_activation_zero_needs_matching_zero_points(tmp_path, per_channel):
    same = [0, 0, 0, 0]
    path = _qdq_graph(tmp_path, same, same, (3, 3), per_channel)
    assert _removed(path)[0] == 2  # Q(0) = 3, DQ(3) = 0
    path = _qdq_graph(tmp_path, same, same, (3, 0), per_channel)
    assert _removed(path)[0] == 0  # DQ(3) with zero point 0 is 3 * s: conv2 reads it
    if per_channel:
        model = onnx.load(path)
        zps = {"aqz": [3, 3, 3, 3], "adz": [3, 0, 3, 3]}  # only channel 1 mismatches
        for init in model.graph.initializer:
            if init.name in zps:
                init.CopyFrom(numpy_helper.from_array(np.array(zps[init.name], np.uint8),
                                                      init.name))  # fmt: skip
        onnx.save(model, path)
        removed, new = _removed(path)
        assert removed == 1
        act = [n for n in new.graph.node if n.op_type in QDQ and n.input[0].startswith("r1")]
        assert [_inits(new)[n.input[1]].shape for n in act] == [(3,), (3,)]


# -- the check: one output quantization step at most -----------------------------------------
def _shifted(shift):
    """x (+ shift) -> Q -> DQ (scale 0.1) -> y."""
    nodes = [helper.make_node("Add", ["x", "shift"], ["xs"]),
             helper.make_node("QuantizeLinear", ["xs", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]  # fmt: skip
    inits = [numpy_helper.from_array(np.array(shift, np.float32), "shift"),
             numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [4, 64])],
                              [helper.make_tensor_value_info("y", 1, [4, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_check_allows_one_output_step_in_quantized_models():
    old = _shifted(0.0)
    assert _output_steps(old, [np.ones((4, 64))]) == [pytest.approx(0.1)]
    report = ConversionReport(0, 0, 0, 0)
    _verify(old, _shifted(0.04), 1e-4, report)  # some values round up
    assert report.max_rel_diff > 1e-4 and "one quantization step" in report.notes[0]
    with pytest.raises(ConversionError, match="differ from the input model's by .*tolerance"):
        _verify(old, _shifted(0.25), 1e-4, ConversionReport(0, 0, 0, 0))


def test_float_models_get_no_step(tmp_path):
    path = _qdq_graph(tmp_path, [0] * 4, [0] * 4)
    model = onnx.load(path)
    assert _output_steps(model, [np.full((1, 2, 8, 8), 254.0)]) == [pytest.approx(2.0)]
    fp32 = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", 1, [2])], [helper.make_tensor_value_info("y", 1, [2])]))
    assert _output_steps(fp32, [np.ones(2)]) is None


def test_a_quantized_model_without_zero_filters_still_gets_int8_weights(tmp_path):
    torch.manual_seed(0)
    config = _qat_config()
    config["compression"] = config["compression"][1:]  # quantization alone: nothing to cut
    ctrl, _ = create_compressed_model(randomize_bn(QNet()), config)
    path = str(tmp_path / "dense_int8.onnx")
    ctrl.export_model(path)
    new, report = remove_zero_filters(path)
    assert not report.changed and report.max_rel_diff is not None
    assert report.notes[-1].endswith("quantized weights stored as 8-bit integers")
    assert {w.dtype for op, w, *_ in _weight_quantizers(new)} == {np.dtype("int8")}
    assert _compare(path, new, (2, 3, 16, 16)) == 0.0


def test_a_quantized_file_counts_the_parameters_of_its_float_model(qat):
    """Per-channel scales and zero points of the weights (on Q and DQ) were counted as
    parameters: a quantized export read more than its float model."""
    path, _, report = qat
    model = onnx.load(path)
    values, made_by = _inits(model), {o: n for n in model.graph.node for o in n.output}
    expected = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            weight = node.input[1]
            while weight in made_by:  # DQ <- Q <- the float weight
                weight = made_by[weight].input[0]
            bias = node.input[2] if len(node.input) > 2 else ""
            expected += values[weight].size + (values[bias].size if bias else 0)
    assert report.params_before == expected


@pytest.mark.parametrize("per_axis", [False, True])
@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_a_quantized_constant_an_elementwise_op_reads_is_cut(op, per_axis, tmp_path):
    """quantize_static quantizes a Mul or Add operand (a layer scale, an unfolded
    BatchNorm) too: it read as "a quantized constant read by a non-weighted op" and every
    zero filter of the conv before it was kept; the float file lost them."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    w[[1, 6]] = 0
    k = rng.integers(-100, 100, size=(8, 1, 1)).astype(np.int8)
    if op == "Add":
        k[[1, 6]] = 0  # an Add keeps a zero channel zero only where it adds zero
    scale = (rng.uniform(0.01, 0.02, size=8) if per_axis else np.array(0.02)).astype(np.float32)
    dq = helper.make_node("DequantizeLinear", ["k", "k_scale"], ["kf"], axis=0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="a", pads=[1, 1, 1, 1]), dq,
             helper.make_node(op, ["a", "kf"], ["m"]),
             helper.make_node("Conv", ["m", "w2"], ["y"], name="b")]
    inits = [numpy_helper.from_array(v, n) for n, v in (
        ("w", w), ("k", k), ("k_scale", scale),
        ("w2", rng.normal(size=(4, 8, 1, 1)).astype(np.float32)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", 1, [1, 4, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    new, report = remove_zero_filters(model)
    assert report.removed == 2 and report.max_rel_diff < 1e-6
    ints = {i.name: numpy_helper.to_array(i) for i in new.graph.initializer}
    dq_new = next(n for n in new.graph.node if n.op_type == "DequantizeLinear")
    assert ints[dq_new.input[0]].shape == (6, 1, 1) and ints[dq_new.input[0]].dtype == np.int8
    assert ints[dq_new.input[1]].shape == ((6,) if per_axis else ())


def test_bench_labels_a_qdq_file_by_what_the_runtime_runs_in_int8(qat):
    """Any file with quantize/dequantize pairs was labelled int8, though ONNX Runtime ran
    every layer of a Keras export in float (0 of 10 fused)."""
    from filterprune.onnx.bench import benchmark, format_table

    path, new, _ = qat
    counts = int8_layers(path, runtimes=("onnxruntime",))["onnxruntime"]
    low, total = counts["int8"], counts["int8"] + counts["float"]
    rows = benchmark({"qdq": path}, seconds=0, min_runs=1, warmup=0, turn_seconds=0)
    assert rows[0].int8_layers == f"{low}/{total}" and 0 < low
    assert rows[0].precision == ("int8" if low == total else "mixed")
    note = f"onnxruntime runs {total - low} of its {total} conv/linear layers in float"
    assert (note in format_table(rows)) == (low < total)


def test_bench_labels_pairs_around_no_layer_f32(tmp_path):
    """A Q/DQ pair after a float conv: the runtime runs no layer in int8."""
    from filterprune.onnx.bench import benchmark, format_table

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "s"], ["q"]),  # uint8, zero point 0
             helper.make_node("DequantizeLinear", ["q", "s"], ["y"])]  # fmt: skip
    weights = {"w": np.ones((4, 3, 3, 3)), "s": np.array(0.1)}
    path = save_graph(tmp_path, nodes, weights, ["N", 3, 8, 8], ["N", 4, 8, 8])
    rows = benchmark({"m": path}, seconds=0, min_runs=1, warmup=0, turn_seconds=0)
    assert (rows[0].precision, rows[0].int8_layers) == ("f32", "0/1")
    assert "onnxruntime runs 1 of its 1 conv/linear layers in float" in format_table(rows)


def test_int8_weights_laid_out_after_their_dq_are_laid_out_as_integers():
    """tf2onnx writes a Keras depthwise kernel as DQ -> Reshape -> Transpose -> Conv (in
    context, OpenVINO ran such convs in float32 once their weights were stored as integers:
    tests/tensorflow). The integers are laid out instead, the DequantizeLinear's axis
    following the filters, and the file computes the same."""
    c, rng = 8, np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 1, c)).astype(np.float32)  # (kh, kw, in, multiplier)
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array((np.abs(w).max((0, 1, 2)) / 127).astype(np.float32), "s"),
             numpy_helper.from_array(np.zeros(c, np.int8), "z"),
             numpy_helper.from_array(np.array([3, 3, c, 1], np.int64), "shape"),
             numpy_helper.from_array(np.float32(0.05), "xs"),
             numpy_helper.from_array(np.uint8(128), "xz"),
             numpy_helper.from_array(np.float32(0.03), "ys"),
             numpy_helper.from_array(np.uint8(0), "yz")]  # fmt: skip
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=3),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], axis=3),
             helper.make_node("Reshape", ["wd", "shape"], ["wr"]),
             helper.make_node("Transpose", ["wr"], ["wt"], perm=[2, 3, 0, 1]),
             helper.make_node("Conv", ["xd", "wt"], ["c"], group=c, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "ys", "yz"], ["y"])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, c, 8, 8])],
                              [helper.make_tensor_value_info("y", 1, [1, c, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    stored, count = store_int8_weights(model)
    assert count == 1
    onnx.checker.check_model(stored, full_check=True)
    made = {o: n for n in stored.graph.node for o in n.output}
    conv = next(n for n in stored.graph.node if n.op_type == "Conv")
    assert made[conv.input[1]].op_type == "DequantizeLinear"
    assert not {"Reshape", "Transpose"} & {n.op_type for n in stored.graph.node}
    x = rng.normal(size=(1, c, 8, 8)).astype(np.float32)
    before, after = run_onnxruntime(model, {"x": x})[0], run_onnxruntime(stored, {"x": x})[0]
    assert np.abs(before).max() > 0.5
    np.testing.assert_array_equal(before, after)
