"""8-bit QAT in PyTorch, alone and after filter pruning: the reference workflow end to end."""

import copy
import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_helpers import SmallNet, checkpoint_and_resume, randomize_bn, train_steps, untraced

from filterprune import ConfigError, NNCFConfig
from filterprune.core.compression import CompressionStage
from filterprune.onnx import run_onnxruntime
from filterprune.torch import (
    create_compressed_model,
    register_default_init_args,
    resize_to_state_dict,
)
from filterprune.torch.fake_quant import FakeQuantize
from filterprune.torch.fold import fold_batchnorms
from filterprune.torch.masks import _m
from filterprune.torch.quantization import QuantizationController

SAMPLE = [1, 3, 32, 32]


class ResBlockNet(nn.Module):
    """conv -> bn -> relu -> [conv -> bn -> relu -> conv -> bn] + skip -> relu -> pool -> fc."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.act = nn.ReLU()
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.act(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        x = self.act(x + y)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _loader(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 32, 32, generator=g), torch.zeros(8)) for _ in range(n)]


def _config(quant=None, pruning=True, data=True):
    algos = []
    if pruning:
        algos.append({"algorithm": "filter_pruning", "pruning_init": 0.1,
                      "params": {"pruning_target": 0.6, "pruning_steps": 4,
                                 "prune_first_conv": True, "filters_multiple_of": 4}})  # fmt: skip
    algos.append({"algorithm": "quantization",
                  "initializer": {"range": {"num_init_samples": 16},
                                  "batchnorm_adaptation": {"num_bn_adaptation_samples": 16}},
                  **(quant or {})})  # fmt: skip
    config = NNCFConfig.from_dict({"input_info": {"sample_size": SAMPLE}, "compression": algos})
    return register_default_init_args(config, _loader()) if data else config


def _train(ctrl, model, opt, epochs, seed):
    model.train()
    train_steps(ctrl, model, opt, epochs, seed)


def _net(cls=SmallNet, seed=0):
    torch.manual_seed(seed)
    return randomize_bn(cls())


def _pruned_rows(model):
    """(layer, quantized weight, kept-row mask) of every conv/linear with pruned filters."""
    out = []
    for name, m in model.named_modules():
        mask = m._buffers.get("weight_mask")
        if mask is not None and "weight_quantizer" in m._modules:
            kept = mask.flatten(1).amax(1) > 0 if mask.shape[0] > 1 else None
            if kept is not None and not kept.all():
                out.append((name, _m(m, "weight").detach(), kept))
    return out


def test_reference_config_trains_with_both_algorithms():
    ctrl, model = create_compressed_model(_net(), _config())
    assert [c.name for c in ctrl.child_ctrls] == ["filter_pruning", "quantization"]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    _train(ctrl, model, opt, 2, seed=1)
    loss = ctrl.loss()
    assert isinstance(loss, torch.Tensor) and float(loss) == 0.0
    stats = ctrl.statistics()
    q = stats.quantization
    assert q.num_weight_quantizers == 9 and q.num_activation_quantizers == 9
    assert q.ranges_initialized and q.weight_bits == q.activation_bits == 8
    assert stats.filter_pruning.flops_kept < 1.0
    text = str(stats)
    assert "Filter pruning statistics" in text and "Quantization statistics" in text
    assert "weight:stem" in text and "activation:x" in text
    assert ctrl.compression_stage() == CompressionStage.PARTIALLY_COMPRESSED
    assert ctrl.child_ctrls[1].compression_stage() == CompressionStage.FULLY_COMPRESSED
    rows = _pruned_rows(model)
    assert rows, "the schedule pruned nothing"
    for name, w, kept in rows:  # pruned filters stay exactly zero after quantization
        assert torch.count_nonzero(w[~kept]) == 0, name
        assert torch.count_nonzero(w[kept]) > 0, name


def test_weights_per_channel_symmetric_and_gradients_straight_through():
    ctrl, model = create_compressed_model(_net(), _config())
    q = model.stem.weight_quantizer
    assert q.scale.shape == (model.stem.out_channels,) and (q.quant_min, q.quant_max) == (-128, 127)
    assert torch.count_nonzero(q.zero_point) == 0
    model.train()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    grad = model.stem.weight.grad
    kept = model.stem.weight_mask.flatten(1).amax(1) > 0
    assert grad[kept].abs().sum() > 0 and torch.count_nonzero(grad[~kept]) == 0
    assert isinstance(ctrl.get("quantization"), QuantizationController)


def _quantizer_states(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "quantizer" in k}


def test_resume_equals_uninterrupted_run(tmp_path):
    # the resumed model has no registered data: the state carries the ranges
    (ctrl, model), (ctrl2, model2, opt2) = checkpoint_and_resume(
        _net(), _config(), _config(data=False), tmp_path / "ckpt.pt", lr=0.05, momentum=0.9)
    _train(ctrl2, model2, opt2, 2, seed=2)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=k)
    s1, s2 = ctrl.get_compression_state(), ctrl2.get_compression_state()
    assert s1 == s2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), model2.eval()(x), rtol=1e-6, atol=1e-6)


def test_compression_state_alone_restores_quantizers():
    ctrl, model = create_compressed_model(_net(), _config(pruning=False))
    state = json.loads(json.dumps(ctrl.get_compression_state()))
    ctrl2, model2 = create_compressed_model(_net(), _config(pruning=False, data=False),
                                            compression_state=state)  # fmt: skip
    for key, q in ctrl.quantizers.items():
        q2 = ctrl2.quantizers[key]
        assert torch.equal(q.scale, q2.scale) and torch.equal(q.zero_point, q2.zero_point)
        assert (q.quant_min, q.quant_max, q.initialized) == (q2.quant_min, q2.quant_max, True)


def test_state_dict_carries_quantizer_ranges():
    ctrl, model = create_compressed_model(_net(), _config(pruning=False))
    ctrl2, model2 = create_compressed_model(
        _net(), _config(pruning=False, data=False,
                        quant={"initializer": {"range": {"num_init_samples": 0}}}))
    assert not ctrl2.statistics().ranges_initialized
    model2.load_state_dict(model.state_dict())
    relu = model2.a.input_quantizer
    assert relu.initialized and (relu.quant_min, relu.quant_max) == (0, 255)
    assert ctrl2.statistics().ranges_initialized


@pytest.mark.parametrize("shrink", [True, False])
@pytest.mark.parametrize("net", [SmallNet, ResBlockNet])
def test_strip_equals_compressed_model_in_eval(shrink, net):
    ctrl, model = create_compressed_model(_net(net), _config())
    _train(ctrl, model, torch.optim.SGD(model.parameters(), lr=0.02), 2, seed=3)
    model.eval()
    small = ctrl.strip(shrink=shrink).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), small(x)
    assert ref.abs().max() > 1e-2
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    quantizers = [m for m in small.modules() if isinstance(m, FakeQuantize)]
    assert quantizers and not any(m._buffers.get("weight_mask") is not None
                                  for m in small.modules())  # fmt: skip
    for m in small.modules():
        q = m._modules.get("weight_quantizer")
        if q is not None:
            assert q.frozen and type(m).__name__.startswith("Quantized")
            assert q.scale.shape == (m.weight.shape[0],)
    if shrink:
        assert small.stem.out_channels < model.stem.out_channels


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-5), (torch.bfloat16, 0),
                                            (torch.float16, 0)])  # fmt: skip
def test_a_model_moved_to_another_dtype_strips_alike(dtype, tol):
    """In half precision the strip's forward failed: fake quantization takes float32. Its
    weight scales were then rounded to the dtype, so the stripped (frozen) quantizers put
    the weights on another grid than the training ones, which follow the weight in float32:
    0.0084 relative off in bfloat16, 0.0068 in float16."""
    ctrl, model = create_compressed_model(_net(), _config())
    model.to(dtype).eval()
    small = ctrl.strip().eval()
    x = torch.randn(4, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        ref, out = model(x), small(x)
    assert out.dtype == dtype and ref.abs().max() > 1e-2
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol * float(ref.abs().max()))


@pytest.mark.parametrize("group", ["weights", "activations"])
def test_signed_false_over_negative_values_quantizes_signed(group, caplog):
    caplog.set_level("WARNING", logger="filterprune")  # a CLI test may raise it
    ctrl, model = create_compressed_model(_net(), _config({group: {"signed": False}}))
    model.eval()
    x = torch.randn(4, 3, 32, 32)  # the input quantizer sees negatives too
    with torch.no_grad():
        out = model(x)
        for q in model.modules():
            if isinstance(q, FakeQuantize):
                q.enabled = False
        ref = model(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 0.05  # 0.74 when clipped
    assert f"`{group}.signed` is false, but" in caplog.text


def test_a_precision_initializer_is_said_to_be_ignored(caplog):
    caplog.set_level("WARNING", logger="filterprune")  # a CLI test may raise it
    quant = {"initializer": {"range": {"num_init_samples": 16},
                             "precision": {"bitwidth_per_scope": [[4, "stem"]]}}}
    create_compressed_model(_net(), _config(quant))
    assert "`compression[1].initializer.precision` is accepted for NNCF" in caplog.text


def test_a_quantized_strip_state_dict_is_refused_by_resize_and_changes_nothing():
    ctrl, _ = create_compressed_model(_net(), _config())
    fresh = _net(seed=1)
    before = copy.deepcopy(fresh.state_dict())
    with pytest.raises(ValueError, match=r"^`state_dict` must be a plain model's: it holds "
                       r"quantizer state \(.*_quantizer\..*\).*The model is unchanged\.$"):
        resize_to_state_dict(fresh, ctrl.strip().state_dict())
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())


class GroupedUpNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.up = nn.ConvTranspose2d(16, 16, 4, 2, 1, groups=4)
        self.head = nn.Conv2d(16, 4, 3, stride=2, padding=1)

    def forward(self, x):
        return self.head(torch.relu(self.up(torch.relu(self.bn(self.stem(x))))))


def test_a_grouped_transposed_conv_gets_a_per_tensor_weight_quantizer_and_strips_equal():
    """Its weight's out axis holds out/groups entries, one per filter of each group: no
    axis holds every filter, so one scale serves the weight."""
    config = _config()
    config["compression"][0]["pruning_init"] = 0.5
    ctrl, model = create_compressed_model(_net(GroupedUpNet), config)
    assert ctrl.get("quantization").quantizers["weight:up"].scale.numel() == 1
    model.eval()
    small = ctrl.strip().eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-6)
    assert small.up.out_channels < 16 and small.up.groups == 4


class UntraceableNet(GroupedUpNet):
    """Reads a tensor's length, which torch.fx refuses: captured with torch.export."""

    def forward(self, x):
        y = untraced(torch.relu(self.bn(self.stem(x))))
        return self.head(torch.relu(self.up(y)))


def test_a_model_captured_with_torch_export_is_quantized(tmp_path):
    """Quantizers go on the layers (a bare KeyError 'gm' before): the strip and the
    ONNX file compute what the model does."""
    config = _config()
    config["compression"][0]["pruning_init"] = 0.5
    with pytest.warns(UserWarning, match="captured with torch.export"):
        ctrl, model = create_compressed_model(_net(UntraceableNet), config)
    quantizers = ctrl.get("quantization").quantizers
    assert {"weight:stem", "weight:up", "weight:head"} <= set(quantizers)
    assert sum(k.startswith("activation:") for k in quantizers) >= 3
    model.eval()
    small = ctrl.strip().eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(small(x), ref, rtol=1e-5, atol=1e-6)
    ctrl.export_model(str(tmp_path / "m.onnx"))
    proto = onnx.load(str(tmp_path / "m.onnx"))
    out = run_onnxruntime(proto, {proto.graph.input[0].name: x.numpy()})[0]
    assert np.abs(out - ref.numpy()).max() <= 1e-4 * np.abs(ref.numpy()).max()


def test_export_before_ranges_are_set_is_refused(tmp_path):
    """With ranges from the first batch, an export before any batch wrote placeholder
    scales (0.09 relative off the model once it ran a batch)."""
    config = _config({"initializer": {"range": {"num_init_samples": 0}}}, data=False)
    ctrl, model = create_compressed_model(_net(), config)
    path = tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match="have no range yet .*Nothing was written"):
        ctrl.export_model(str(path))
    assert not path.exists()
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, *SAMPLE[1:]))
    ctrl.export_model(str(path))
    assert path.exists()


def test_strip_when_quantization_comes_first():
    config = _config()
    config["compression"] = config["compression"][::-1]
    ctrl, model = create_compressed_model(_net(), config)
    assert [c.name for c in ctrl.child_ctrls] == ["quantization", "filter_pruning"]
    small = ctrl.strip().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model.eval()(x), rtol=1e-5, atol=1e-6)
    assert small.stem.weight_quantizer.scale.shape == (small.stem.out_channels,)


def _onnx_weight_quantizers(path):
    g = onnx.load(str(path)).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t)
              for n in g.node if n.op_type == "Constant"}  # fmt: skip
    values = {**inits, **consts}
    found = []
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in inits:
            axis = next((a.i for a in n.attribute if a.name == "axis"), None)
            found.append((inits[n.input[0]], values[n.input[1]], axis))
    return g, found


@pytest.mark.parametrize(("net", "shrink"), [(SmallNet, False), (ResBlockNet, False),
                                             (ResBlockNet, True)])  # fmt: skip
def test_export_writes_qdq_pairs_that_onnxruntime_runs(tmp_path, net, shrink):
    ctrl, model = create_compressed_model(_net(net), _config())
    _train(ctrl, model, torch.optim.SGD(model.parameters(), lr=0.02), 2, seed=3)
    path = tmp_path / "m.onnx"
    ctrl.export_model(str(path), shrink=shrink)
    graph, weights = _onnx_weight_quantizers(path)
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") >= 2 * len(weights)
    assert len(weights) == ctrl.statistics().quantization.num_weight_quantizers
    zeroed = 0
    for w, scale, axis in weights:  # per output channel; pruned filters are zero
        assert axis == 0 and scale.shape == (w.shape[0],) and (scale > 0).all()
        zeroed += int((np.abs(w.reshape(w.shape[0], -1)).max(1) == 0).sum())
    assert (zeroed == 0) if shrink else (zeroed > 0)
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    name = onnx.load(str(path)).graph.input[0].name  # run Q/DQ unfused: see run_onnxruntime
    out = np.concatenate([run_onnxruntime(str(path), {name: xi})[0]
                          for xi in np.split(x.numpy(), 16)])  # fmt: skip
    step = np.abs(ref).max() / 127  # about one quantization step of the output
    assert np.abs(out - ref).max() <= step
    assert (np.abs(out - ref) <= step / 10).mean() >= 0.9  # most match closely


def test_quantization_alone():
    ctrl, model = create_compressed_model(_net(ResBlockNet), _config(pruning=False))
    assert isinstance(ctrl, QuantizationController)
    stats = ctrl.statistics()
    # the add's operands: bn2's output (a hook on bn2) and the stem's relu (shared module:
    # quantized at conv1's input, which is the same quantizer)
    assert {q.key for q in stats.quantizers if q.key.startswith("activation")} == {
        "activation:x", "activation:act", "activation:relu", "activation:bn2",
        "activation:flatten"}  # fmt: skip
    assert isinstance(model.bn2.output_quantizer, FakeQuantize)
    assert ctrl.compression_stage() == CompressionStage.FULLY_COMPRESSED
    assert float(ctrl.loss()) == 0.0
    small = ctrl.strip().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model.eval()(x))


def test_ignored_scopes_are_respected():
    quant = {"ignored_scopes": ["fc2", "{re}se.*"]}
    ctrl, model = create_compressed_model(_net(), _config(quant, pruning=False))
    for name in ("fc2", "se1", "se2"):
        layer = model.get_submodule(name)
        assert "weight_quantizer" not in layer._modules and "input_quantizer" not in layer._modules
        assert type(layer) in (nn.Linear, nn.Conv2d)
    assert "weight_quantizer" in model.fc1._modules
    keys = {q.key for q in ctrl.statistics().quantizers}
    assert "weight:fc2" not in keys and "weight:fc1" in keys


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                 nn.Conv2d(8, 8, 3, padding=1))  # fmt: skip

    def forward(self, x):
        return x + self.seq(x)


class _Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(_Block(), _Block())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


SCOPE = r"{re}.*_Block\[1\].*"


def test_an_nncf_regex_naming_a_block_by_its_class_picks_that_block():
    """``{re}.*_Block\[1\].*`` was read as ``.*\[1\].*``: item 1 of every Sequential,
    ``blocks.0.seq.1`` too, left in float with nothing said."""
    ctrl, model = create_compressed_model(_net(_Blocks), _config({"ignored_scopes": [SCOPE]},
                                                                 pruning=False))  # fmt: skip
    floats = sorted(n for n, m in model.named_modules()
                    if type(m) is nn.Conv2d and "weight_quantizer" not in m._modules)  # fmt: skip
    assert floats == ["blocks.1.seq.1", "blocks.1.seq.2"]
    listed = dict(ctrl.statistics().left_in_float)  # they were listed nowhere
    assert listed["blocks.1.seq.1"] == f"in ignored_scopes ({SCOPE!r})"
    assert "blocks.1.seq.2" in listed and "blocks.0.seq.1" not in listed


def test_scopes_that_leave_out_every_layer_are_logged(caplog):
    with caplog.at_level("WARNING", logger="filterprune"):
        create_compressed_model(_net(), _config({"ignored_scopes": ["{re}.*"]}, pruning=False))
    assert "no quantizer placed" in caplog.text and "stays in float" in caplog.text


def test_asymmetric_activations():
    quant = {"activations": {"mode": "asymmetric"}}
    ctrl, model = create_compressed_model(_net(), _config(quant, pruning=False))
    inp = model.stem.input_quantizer  # the signed network input
    assert (inp.quant_min, inp.quant_max) == (-128, 127) and int(inp.zero_point) != 0
    stats = ctrl.statistics()
    assert {q.mode for q in stats.quantizers if q.key.startswith("activation")} == {"asymmetric"}
    assert {q.mode for q in stats.quantizers if q.key.startswith("weight")} == {"symmetric"}


def test_missing_data_is_a_clear_error_and_zero_samples_fall_back():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ConfigError, match="register_default_init_args.*num_init_samples=16"):
        create_compressed_model(net, _config(data=False))
    after = net.state_dict()  # refused before anything was put on the model
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    quant = {"initializer": {"range": {"num_init_samples": 0}}}
    ctrl, model = create_compressed_model(_net(), _config(quant, pruning=False, data=False))
    assert ctrl.compression_stage() == CompressionStage.PARTIALLY_COMPRESSED  # weights only
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = model.eval()(x)  # ranges from this batch, used on it already
        torch.testing.assert_close(first, model(x))
    assert ctrl.statistics().ranges_initialized
    assert float(model.stem.input_quantizer.scale) == pytest.approx(float(x.abs().max()) / 127)


def test_percentile_ranges_are_narrower_than_min_max():
    ranges = {}
    for kind in ("min_max", "percentile"):
        quant = {"initializer": {"range": {"num_init_samples": 32, "type": kind}}}
        ctrl, _ = create_compressed_model(_net(), _config(quant, pruning=False))
        ranges[kind] = {q.key: q.high for q in ctrl.statistics().quantizers}
    key = "activation:x"
    assert ranges["percentile"][key] < ranges["min_max"][key]


def test_export_of_fewer_bits_is_refused(tmp_path, caplog):
    """Refused before any exporter runs: the first one failed with a warning of its own,
    and the message named no key."""
    caplog.set_level("WARNING", logger="filterprune")
    quant = {"weights": {"bits": 4}}
    ctrl, _ = create_compressed_model(_net(), _config(quant, pruning=False))
    with pytest.raises(ConfigError, match=r"`weights\.bits` of the `quantization` entry must "
                       r"be 8 to export.*bits=4"):  # fmt: skip
        ctrl.export_model(str(tmp_path / "m.onnx"))
    assert "exporter" not in caplog.text and not (tmp_path / "m.onnx").exists()


def test_batchnorm_folding_keeps_outputs_and_lets_onnxruntime_run_int8(tmp_path):
    ctrl, model = create_compressed_model(_net(ResBlockNet), _config())
    _train(ctrl, model, torch.optim.SGD(model.parameters(), lr=0.02), 2, seed=3)
    small = ctrl.strip().eval()
    folded = fold_batchnorms(copy.deepcopy(small), ctrl.captured.graph)
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.bn2, nn.Identity)
    assert isinstance(folded.bn2.output_quantizer, FakeQuantize)  # the add's operand
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref, out = small(x), folded(x)
    step = float(ref.abs().max()) / 127
    assert (out - ref).abs().max() <= step
    assert ((out - ref).abs() <= 1e-5 * float(ref.abs().max())).float().mean() >= 0.9
    path, opt_path = tmp_path / "m.onnx", tmp_path / "opt.onnx"
    ctrl.export_model(str(path))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(opt_path)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(opt_path)).graph.node]
    assert "BatchNormalization" not in ops
    assert ops.count("QLinearConv") == 2  # conv1, conv2; the stem's ReLU also feeds the add


@pytest.mark.parametrize("hook", ["pre-hook", "hook"])
def test_a_batchnorm_with_a_hook_of_the_users_is_not_folded(hook):
    """A hook registered after the capture moved to the Identity the fold puts in the
    BatchNorm's place: a pre-hook's clamp then ran on the folded output (ONNX 0.61
    relative off the model), and a hook reading ``running_mean`` failed the export."""
    ctrl, model = create_compressed_model(_net(ResBlockNet), _config())
    _train(ctrl, model, torch.optim.SGD(model.parameters(), lr=0.02), 1, seed=3)
    if hook == "pre-hook":
        model.bn2.register_forward_pre_hook(lambda m, args: (args[0].clamp(-0.5, 0.5),))
    else:
        model.bn2.register_forward_hook(lambda m, args, out: out - m.running_mean.view(
            1, -1, 1, 1))  # fmt: skip
    small = ctrl.strip().eval()
    folded = fold_batchnorms(copy.deepcopy(small), ctrl.captured.graph)
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.bn2, nn.BatchNorm2d)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), small(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("norm", ["weight_norm", "spectral_norm", "old weight_norm"])
def test_a_conv_whose_weight_is_computed_is_not_folded(norm, tmp_path):
    """weight_norm or spectral_norm computes the conv's weight in forward: the fold had no
    parameter to scale and the export failed (an attribute 'weight' already exists)."""
    wrap = {"weight_norm": nn.utils.parametrizations.weight_norm,
            "spectral_norm": nn.utils.parametrizations.spectral_norm,
            "old weight_norm": nn.utils.weight_norm}[norm]  # fmt: skip

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = wrap(nn.Conv2d(3, 16, 3, padding=1)), nn.BatchNorm2d(16)
            self.head = nn.Conv2d(16, 8, 3, padding=1)

        def forward(self, x):
            return self.head(torch.relu(self.bn(self.conv(x)))).mean((2, 3))

    ctrl, model = create_compressed_model(_net(Net), _config(pruning=False))
    small = ctrl.strip().eval()
    folded = fold_batchnorms(copy.deepcopy(small), ctrl.captured.graph)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    x = torch.randn(4, 3, 32, 32)
    ctrl.export_model(str(tmp_path / "m.onnx"))
    with torch.no_grad():
        ref = small(x)
    out = run_onnxruntime(str(tmp_path / "m.onnx"), {"x": x.numpy()})[0]
    step = float(ref.abs().max()) / 127  # at most a rounding tie's step apart
    assert np.abs(out - ref.numpy()).max() <= step


class _NoBiasConv(nn.Conv2d):
    """Its own forward leaves out the bias: one the fold adds would be lost."""

    def forward(self, x):
        return F.conv2d(x, self.weight, None, self.stride, self.padding)


class _ConvBN(nn.Module):
    def __init__(self, conv=nn.Conv2d):
        super().__init__()
        self.conv, self.bn = conv(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x)))).mean((2, 3))


@pytest.mark.parametrize("case", ["own forward", "called by reference"])
def test_a_conv_or_batchnorm_the_fold_cannot_see_called_is_not_folded(case, tmp_path):
    """A conv subclass whose forward drops the bias (the file was 0.28 off the model), and a
    forward set on the instance that calls the BatchNorm it holds (the fold's Identity did
    not stop it: the BatchNorm ran twice, 0.08 off)."""
    model = _net(lambda: _ConvBN(_NoBiasConv if case == "own forward" else nn.Conv2d))
    if case == "called by reference":
        conv, bn, head = model.conv, model.bn, model.head
        model.forward = lambda x: head(torch.relu(bn(conv(x)))).mean((2, 3))
    ctrl, model = create_compressed_model(model, _config(pruning=False))
    small = ctrl.strip().eval()
    assert isinstance(fold_batchnorms(ctrl.strip().eval(), ctrl.captured.graph).bn,
                      nn.BatchNorm2d)  # fmt: skip
    ctrl.export_model(str(tmp_path / "m.onnx"))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = small(x)
    out = run_onnxruntime(str(tmp_path / "m.onnx"), {"x": x.numpy()})[0]
    assert np.abs(out - ref.numpy()).max() <= float(ref.abs().max()) / 127


@pytest.mark.parametrize("decay", [0.9999, 0.997])
def test_an_ema_averaging_every_buffer_keeps_the_quantizers(decay):
    """timm's ModelEmaV2 averages every state_dict entry, integers too: copied into int32
    buffers, a zero point of -116 became -115 and quant_max 127 became 126 (0.02 off,
    also in the model after loading the EMA's state_dict)."""
    quant = {"activations": {"mode": "asymmetric"}}
    ctrl, model = create_compressed_model(_net(), _config(quant))
    model.eval()
    ema = copy.deepcopy(model)
    x = torch.rand(8, 3, 32, 32) * 3 - 0.2
    for _ in range(3):  # timm's update, the model unchanged
        with torch.no_grad():
            for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
                e.copy_(e * decay + (1 - decay) * m)
    step = lambda ref: float(ref.abs().max()) / 127  # noqa: E731 - a scale 1 ulp off may tie
    with torch.no_grad():
        ref = model(x)
        assert float((ema(x) - ref).abs().max()) <= step(ref)
        model.load_state_dict(ema.state_dict())
        assert float((model(x) - ref).abs().max()) <= step(ref)
    pairs = [(a, b) for a, b in zip(ema.modules(), model.modules(), strict=True)
             if isinstance(a, FakeQuantize)]  # fmt: skip
    assert pairs and all(np.array_equal(a.state().zero_point, b.state().zero_point) and
                         (a.quant_min, a.quant_max) == (b.quant_min, b.quant_max) in
                         ((-128, 127), (0, 255)) for a, b in pairs)  # fmt: skip


def test_a_quantizer_pickled_with_integer_zero_points_runs_alike():
    """Saved by torch.save(model) before zero points were kept as floats."""
    quant = {"activations": {"mode": "asymmetric"}}
    ctrl, model = create_compressed_model(_net(), _config(quant))
    x = torch.rand(4, 3, 32, 32) * 3 - 0.2
    with torch.no_grad():
        ref = model.eval()(x)
        for q in model.modules():
            if isinstance(q, FakeQuantize):
                q.zero_point, q.meta = q.zero_point.int(), q.meta.int()
        torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
        model.train()(x)  # weight quantizers follow their weights into integer buffers


def test_mixed_preset_makes_activations_asymmetric(monkeypatch):
    from filterprune.core.params import QuantizationParams

    resolve = QuantizationParams.from_config

    def with_preset(config):  # `preset` and an unset `mode` until those config keys land
        params = resolve(config)
        object.__setattr__(params, "preset", "mixed")
        object.__setattr__(params.activations, "mode", None)
        return params

    monkeypatch.setattr(QuantizationParams, "from_config", staticmethod(with_preset))
    ctrl, model = create_compressed_model(_net(), _config(pruning=False))
    modes = {q.key.split(":")[0]: q.mode for q in ctrl.statistics().quantizers}
    assert modes == {"weight": "symmetric", "activation": "asymmetric"}
    assert int(model.stem.input_quantizer.zero_point) != 0


def test_per_channel_activation_scales_are_cut_with_the_layer_that_reads_them():
    ctrl, model = create_compressed_model(_net(), _config({"activations": {"per_channel": True}}))
    _train(ctrl, model, torch.optim.SGD(model.parameters(), lr=0.02), 2, seed=3)
    q = model.fc1.input_quantizer
    assert q.axis == 1 and q.scale.shape == (512,)
    model.eval()
    small = ctrl.strip().eval()
    for m in small.modules():
        q = m._modules.get("input_quantizer")
        if q is not None and q.axis is not None:
            width = m.in_features if isinstance(m, nn.Linear) else m.in_channels
            assert q.scale.shape == (width,)
    assert small.a.in_channels < model.a.in_channels  # the stem lost filters
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(small(x), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_per_channel_activations_quantize_both_operands_of_an_add(tmp_path):
    """A per-channel spec sat only on readers' inputs: the add's operand ``bn2`` (read by
    no module) was left in float, with an INFO line alone (per tensor it is quantized)."""
    counts = {}
    for per_channel in (False, True):
        ctrl, model = create_compressed_model(_net(ResBlockNet), _config(
            {"activations": {"per_channel": per_channel}}))  # fmt: skip
        counts[per_channel] = ctrl.statistics().quantization.num_activation_quantizers
    q = model.bn2.output_quantizer
    assert counts[True] == counts[False] and q.axis == 1 and q.scale.shape == (16,)
    _train(ctrl, model, torch.optim.SGD(model.parameters(), lr=0.02), 2, seed=3)
    model.eval()
    small = ctrl.strip().eval()
    assert small.bn2.output_quantizer.scale.shape == (small.bn2.num_features,) != (16,)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(small(x), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    path = tmp_path / "m.onnx"
    ctrl.export_model(str(path))
    out = run_onnxruntime(str(path), {onnx.load(str(path)).graph.input[0].name: x[:1].numpy()})
    assert np.abs(out[0] - ref[:1].numpy()).max() <= float(ref.abs().max()) / 127


def test_per_channel_output_quantizers_are_cut_when_the_model_shrinks_in_place():
    config = _config({"activations": {"per_channel": True}})
    config["compression"][0]["params"].update(pruning_steps=1, shrink_when_frozen=True)
    ctrl, model = create_compressed_model(_net(ResBlockNet), config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    ctrl.register_optimizer(optimizer)
    _train(ctrl, model, optimizer, 1, seed=3)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model.eval()(x)
        ctrl.scheduler.epoch_step()  # the cut
        assert ctrl.get("filter_pruning").shrunk
        out = model(x)
    assert model.bn2.output_quantizer.scale.shape == (model.bn2.num_features,) != (16,)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


class FunctionalAdd(nn.Module):
    """An add of two operands that functional ops alone make and read."""

    def __init__(self):
        super().__init__()
        self.c1, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 2)

    def forward(self, x):
        h = self.c1(x)
        return self.fc((F.relu(h) + torch.sigmoid(h).mul(2)).mean((2, 3)))


def test_tensors_no_module_makes_or_reads_are_listed_as_float():
    """They were said in an INFO line alone: statistics() listed every quantizer placed."""
    config = NNCFConfig.from_dict({"input_info": {"sample_size": SAMPLE},
                                   "compression": [{"algorithm": "quantization"}]})  # fmt: skip
    ctrl, _ = create_compressed_model(FunctionalAdd(), register_default_init_args(
        config, _loader()))  # fmt: skip
    floats = dict(ctrl.statistics().left_in_float)
    assert floats.keys() == {"activation:relu", "activation:mul"}
    assert "no module makes or reads it" in str(ctrl.statistics())


class SharedConvNet(nn.Module):
    """One conv applied to two different tensors."""

    def __init__(self):
        super().__init__()
        self.s1 = nn.Conv2d(3, 8, 3, padding=1)
        self.s2 = nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.c(torch.relu(self.s1(x))) + self.c(torch.sigmoid(self.s2(x)) * 4 - 2)


def test_a_layer_reading_two_tensors_shares_one_input_range():
    ctrl, model = create_compressed_model(_net(SharedConvNet), _config(pruning=False))
    keys = {q.key for q in ctrl.statistics().quantizers}
    assert {"activation:relu", "activation:sub"} <= keys and "weight:c" in keys
    q = model.c.input_quantizer
    assert ctrl.quantizers["activation:relu"] is ctrl.quantizers["activation:sub"] is q
    assert len(model.c._forward_pre_hooks) == 1
    assert q.quant_min == -128  # the range covers the signed second input too
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ctrl.strip().eval()(x), model.eval()(x))


def test_nncf_keys_without_effect_and_a_near_miss_are_said(caplog):
    """Accepted, changed nothing, and said nothing: ``target_device``, ``hw_config_type``,
    ``log_dir``, LeGR
    keys under unweighted ranking, a quantization ``initializer.range`` in the pruning
    entry; a top-level ``ignored_scope`` was silently unread."""
    caplog.set_level("WARNING", logger="filterprune")
    config = _config({})
    config.update(target_device="VPU", log_dir="runs", ignored_scope=["stem"],
                  hw_config_type="cpu", compression_lr_multiplier=10)
    config["compression"][0]["params"]["save_ranking_coeffs_path"] = "coeffs.json"
    config["compression"][0]["initializer"] = {"range": {"num_init_samples": 8}}
    create_compressed_model(_net(), config)
    for said in ("`target_device` is accepted for NNCF configs but not applied",
                 "`compression[0].initializer.range` is not read by `filter_pruning`: move it "
                 "to the `quantization` entry",
                 "`log_dir` is accepted", "`hw_config_type` is accepted",
                 "`compression_lr_multiplier` is accepted for NNCF configs but not applied",
                 "`ignored_scope` is not read. Did you mean "
                 "`ignored_scopes`?", "`compression[0].params.save_ranking_coeffs_path` is "
                 "not applied: it needs `params.interlayer_ranking_type` 'learned_ranking'"):
        assert said in caplog.text  # fmt: skip


def test_ranges_without_data_name_the_entrys_key():
    with pytest.raises(ConfigError, match=r"^`compression\[1\]\.initializer\.range\."
                       r"num_init_samples` asks for \d+ samples and no data is registered.*"
                       r"set num_init_samples to 0"):
        create_compressed_model(_net(), _config(data=False))


class _Dead(nn.Module):
    """``gate`` feeds a ReLU that is never positive."""

    def __init__(self):
        super().__init__()
        self.c1, self.gate = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.c2, self.c3 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(4, 8, 1)
        with torch.no_grad():
            self.gate.bias.fill_(-100.0)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        return self.c2(x) + self.c3(torch.relu(self.gate(x)))


def test_a_dead_activation_gets_the_smallest_range(tmp_path, caplog):
    """A tensor of zeros left its quantizer without a range for good: export_model
    refused, speaking of num_init_samples 0."""
    caplog.set_level("WARNING", logger="filterprune")
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 3, 16, 16]}, "compression": [
        {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 4}}}]})
    data = [(torch.randn(2, 3, 16, 16), torch.zeros(2)) for _ in range(2)]
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(_Dead(), register_default_init_args(config, data))
    assert ctrl.quantizers["activation:relu_1"].initialized
    assert "activation:relu_1 saw only zeros in the init data" in caplog.text
    ctrl.export_model(str(tmp_path / "m.onnx"))
    x = torch.randn(2, 3, 16, 16)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(out - ref).max() <= np.abs(ref).max() / 100  # a step of the 8-bit output


def test_activation_ranges_come_from_the_float_model():
    """Weights were fake-quantized while activation ranges were collected, so they were
    the rounded model's (0.2% off here; Keras and NNCF take the float model's)."""
    net = _net()
    seen = {}
    hook = net.dw.register_forward_pre_hook(
        lambda m, args: seen.setdefault("max", []).append(float(args[0].abs().max())))
    net.eval()
    with torch.no_grad():
        for x, _ in _loader():
            net(x)
    hook.remove()
    quant = {"activations": {"mode": "symmetric"}, "initializer": {"range": {
        "num_init_samples": 32, "type": "min_max"}, "batchnorm_adaptation": {
        "num_bn_adaptation_samples": 0}}}  # fmt: skip
    ctrl, model = create_compressed_model(net, _config(quant, pruning=False))
    state = ctrl.quantizer_states()["activation:cat"]  # what dw reads
    expected = max(seen["max"]) / 127  # symmetric min_max: the largest magnitude seen
    assert float(state.scale) == pytest.approx(expected, rel=1e-6)


class _RGBD(nn.Module):
    """Two streams, the second optional."""

    def __init__(self):
        super().__init__()
        self.rgb = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.depth = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, rgb, depth=None):
        f = self.rgb(rgb)
        return self.head(f if depth is None else f + self.depth(depth))


def test_dict_batches_give_the_model_every_input_they_name():
    """Only a dict batch's first value reached the model: the depth stream's quantizers
    kept scale 1.0 and BatchNorm adaptation never saw it (0.80 relative off the same model
    set up with tuple batches, once given depth)."""
    g = torch.Generator().manual_seed(1)
    pairs = [(torch.randn(4, 3, 8, 8, generator=g), 5 * torch.randn(4, 1, 8, 8, generator=g))
             for _ in range(4)]  # fmt: skip
    outputs = []
    x = (torch.randn(2, 3, 8, 8), 5 * torch.randn(2, 1, 8, 8))
    for data in ([{"rgb": r, "depth": d, "label": 0} for r, d in pairs],
                 [((r, d), 0) for r, d in pairs]):  # fmt: skip
        torch.manual_seed(0)
        config = NNCFConfig.from_dict({
            "input_info": [{"sample_size": [1, 3, 8, 8]}, {"sample_size": [1, 1, 8, 8]}],
            "compression": [{"algorithm": "filter_pruning", "pruning_init": 0.5},
                            {"algorithm": "quantization"}]})  # fmt: skip
        ctrl, model = create_compressed_model(
            randomize_bn(_RGBD()), register_default_init_args(config, data))  # fmt: skip
        with torch.no_grad():
            outputs.append(model.eval()(*x))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


class _Unrolled(nn.Module):
    """A layer called at each of four time steps on a growing input (a loop of an
    unrolled or spiking net): nothing reaches ``c2`` above zero at the first step."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        out = 0
        for t in range(4):
            h = torch.relu(self.c2(torch.relu(self.c1(x)) * t * 4))
            out = out + self.head(h.mean((2, 3)))
        return out


def test_a_range_from_the_first_batch_covers_every_call_of_that_pass(caplog):
    """It was the first call's alone: c2's input got the smallest range (zeros, with a
    warning) and every later step was clipped to it."""
    config = _config({"initializer": {"range": {"num_init_samples": 0}}}, pruning=False,
                     data=False)  # fmt: skip
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(_Unrolled().eval(), config)
    x = torch.rand(2, *SAMPLE[1:])
    with caplog.at_level(logging.WARNING, logger="filterprune"), torch.no_grad():
        model(x)
        model(x * 4)  # a later batch's wider input is clipped, as ranges set from data are
    top = float((torch.relu(model.c1(x)) * 12).max())
    quantizer = model.c2.input_quantizer
    assert float(quantizer.scale) * quantizer.quant_max == pytest.approx(top, rel=0.01)
    assert "saw only zeros" not in caplog.text
    assert not model._forward_hooks and not model._forward_pre_hooks  # all set: none watch


def test_a_range_set_outside_a_pass_of_the_model_stays_as_its_first_call_set_it():
    """A model used through another method never ended its first pass: the range widened
    with every batch (0.032, 0.064, 0.097 ...), and an input gave other outputs after a
    wider one."""
    config = _config({"initializer": {"range": {"num_init_samples": 0}}}, pruning=False,
                     data=False)  # fmt: skip
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(_Unrolled().eval(), config)
    x = torch.rand(2, *SAMPLE[1:])
    with torch.no_grad():
        model.c2(torch.relu(model.c1(x)))  # another entry point than forward
        scale = float(model.c2.input_quantizer.scale)
        model.c2(torch.relu(model.c1(x * 4)))
    assert float(model.c2.input_quantizer.scale) == scale


@pytest.mark.parametrize("quant", [{}, {"weights": {"per_channel": False}}])
def test_compiled_quantized_model_runs_any_batch_as_eager(quant):
    """The per-tensor fake-quant op with tensor scales has no kernel for symbolic shapes:
    torch.compile(fullgraph=True) failed at a second batch size. Compiled, the quantizers
    use the ops' arithmetic in plain ops: outputs and gradients equal eager's."""
    ctrl, model = create_compressed_model(_net(ResBlockNet), _config(quant))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    try:
        for batch in (8, 3):
            x = torch.randn(batch, 3, 32, 32) * 3  # some values beyond the ranges
            for run in (model, compiled):
                model.zero_grad()
                out = run(x)
                out.square().sum().backward()
                if run is model:
                    ref, grads = out, [p.grad.clone() for p in model.parameters()]
            assert torch.equal(out, ref)
            for p, g in zip(model.parameters(), grads, strict=True):
                torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)
    finally:
        torch._dynamo.reset()


def test_torch_export_of_a_quantized_model_keeps_the_fake_quant_ops():
    """Under torch.export the plain-op form for torch.compile is not used: tools lowering
    the program look for the quantizers' ops."""
    ctrl, model = create_compressed_model(_net(ResBlockNet), _config())
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(model.eval(), (x,))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert sum("fake_quantize_per_tensor" in t for t in targets) == 5  # the activations
    assert sum("fake_quantize_per_channel" in t for t in targets) == 4  # the weights
    assert torch.equal(program.module()(x), model(x))


@pytest.mark.parametrize("per_channel", [True, False])
def test_the_training_model_exports_with_torch_onnx_export(tmp_path, per_channel):
    """``torch.onnx.export(model, ...)`` (the current exporter) on the model in training,
    whose weight quantizers take their range from the weight at every forward."""
    quant = {"weights": {"per_channel": per_channel}}
    ctrl, model = create_compressed_model(_net(ResBlockNet), _config(quant))
    ctrl.scheduler.epoch_step(3)  # filters cut: dead channels in the ranges
    assert _pruned_rows(model)
    path = str(tmp_path / "live.onnx")
    torch.onnx.export(model.eval(), (torch.randn(1, 3, 32, 32),), path, dynamo=True)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count("QuantizeLinear") == 9, ops
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        got = run_onnxruntime(path, {"x": x.numpy()})[0]
        np.testing.assert_allclose(got, model(x), atol=1e-5)


def _unsigned_weights():
    """A conv whose weights are all >= 0 at creation, quantized with ``signed: false``."""
    net = _net(_ConvBN)
    with torch.no_grad():
        net.conv.weight.abs_()
        net.bn.weight.copy_(torch.linspace(0.5, 1.5, 16) * torch.tensor([1.0, -1.0] * 8))
    return create_compressed_model(net, _config({"weights": {"signed": False}}, pruning=False))


def test_unsigned_weights_turned_negative_are_quantized_signed(caplog):
    """The sign was decided once: weights a step drove below 0 were all rounded to 0
    (0.099 off), with no word; the core falls back to signed, as Keras does."""
    ctrl, model = _unsigned_weights()
    q = model.conv.weight_quantizer
    assert q.quant_min == 0
    with torch.no_grad():
        model.conv.weight.sub_(0.1)
    w = model.conv.weight.detach()
    assert (w < 0).sum() > 20
    with caplog.at_level(logging.WARNING, logger="filterprune"):
        got = _m(model.conv, "weight")  # the weight the conv runs with
    assert q.quant_min == -128
    assert (got - w).abs().max() <= q.scale.max() / 2 + 1e-7
    assert "`weights.signed` is false, but weight:conv has negative values" in caplog.text
    state = (ctrl.get_compression_state(), model.state_dict())
    with torch.no_grad():
        model.conv.weight.abs_()  # all >= 0 again: the uninterrupted run stays signed
    _m(model.conv, "weight")
    config = _config({"weights": {"signed": False}}, pruning=False)
    _, resumed = create_compressed_model(_net(_ConvBN), config, state[0])
    resumed.load_state_dict(state[1])
    with torch.no_grad():
        resumed.conv.weight.abs_()
    _m(resumed.conv, "weight")
    assert resumed.conv.weight_quantizer.quant_min == q.quant_min == -128


def test_unsigned_weights_export_and_compile_whole():
    """The sign check, read off the weight's values at every range, failed torch.export
    and torch.compile(fullgraph=True) ("data-dependent expression"): a traced graph keeps
    the sign decided so far."""
    ctrl, model = _unsigned_weights()
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(torch.export.export(model, (x,)).module()(x), ref)
        try:
            torch.testing.assert_close(torch.compile(model, backend="eager", fullgraph=True)(x),
                                       ref)  # fmt: skip
        finally:
            torch._dynamo.reset()
    assert model.conv.weight_quantizer.quant_min == 0


def test_a_negative_gamma_is_not_folded_into_unsigned_weights(tmp_path):
    """The fold turned a channel negative on an unsigned grid: the exported file was 0.60
    off the model, and the export's own check compared it with the folded model."""
    ctrl, model = _unsigned_weights()
    path = str(tmp_path / "u.onnx")
    ctrl.export_model(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = ctrl.strip().eval()(x).numpy()
    np.testing.assert_allclose(run_onnxruntime(path, {"x": x.numpy()})[0], ref, atol=1e-5)
