"""ONNX export: the current exporter by default, the TorchScript one as fallback."""

import errno
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch_helpers import SmallNet, make_config, randomize_bn, run_onnx

from filterprune import NNCFConfig
from filterprune.onnx import remove_zero_filters, save_model
from filterprune.testing.zoo import nondegenerate
from filterprune.torch import create_compressed_model, onnx_export
from filterprune.torch.onnx_export import export_onnx


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def _pool_net():
    """AdaptiveAvgPool2d(4) on a 7x7 map: the TorchScript exporter refuses it."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(4)).eval()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_the_free_batch_axis_is_named_batch(tmp_path, exporter):
    """The current exporter wrote its own symbol (``s77``), which readers of the file show."""
    path = str(tmp_path / "m.onnx")
    export_onnx(SmallNet().eval(), (torch.randn(1, 3, 32, 32),), path, exporter=exporter)
    graph = onnx.load(path).graph
    for v in (*graph.input, *graph.output):
        assert v.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_current_exporter_is_the_default_and_exports_what_torchscript_refuses(tmp_path, caplog):
    net, x = _pool_net(), torch.randn(1, 3, 7, 7)
    with caplog.at_level(logging.INFO, logger="filterprune"):
        used = export_onnx(net, (x,), str(tmp_path / "m.onnx"))
    assert used == "dynamo"
    assert "with the dynamo ONNX exporter" in caplog.text
    with torch.no_grad():
        np.testing.assert_allclose(_run(tmp_path / "m.onnx", x), net(x), atol=1e-5)
    with pytest.raises(Exception, match="adaptive_avg_pool2d"):
        export_onnx(net, (x,), str(tmp_path / "t.onnx"), exporter="torchscript")
    assert not (tmp_path / "t.onnx").exists()


def test_falls_back_to_torchscript_with_a_message(tmp_path, caplog, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no translation for my_op")

    monkeypatch.setattr(onnx_export, "_dynamo", broken)
    net = SmallNet().eval()
    x = torch.randn(1, 3, 32, 32)
    with caplog.at_level(logging.INFO, logger="filterprune"):
        used = export_onnx(net, (x,), str(tmp_path / "m.onnx"))
    assert used == "torchscript"
    assert "(dynamo=True) failed (RuntimeError: no translation for my_op)" in caplog.text
    assert "with the torchscript ONNX exporter" in caplog.text
    with torch.no_grad():
        np.testing.assert_allclose(_run(tmp_path / "m.onnx", x), net(x), atol=1e-4)
    with pytest.raises(RuntimeError, match="no translation for my_op"):
        export_onnx(net, (x,), str(tmp_path / "d.onnx"), exporter="dynamo")


def test_unknown_exporter_is_refused(tmp_path):
    expected = r"\['auto', 'dynamo', 'torchscript'\]. Received: exporter='onnx'."
    with pytest.raises(ValueError, match=rf"`exporter` must be one of {expected}"):
        export_onnx(SmallNet(), (torch.zeros(1, 3, 32, 32),), str(tmp_path / "m.onnx"),
                    exporter="onnx")  # fmt: skip


def test_fake_quantized_model_exports_with_its_quantize_dequantize_pairs(tmp_path):
    """Quantization-aware models (fake-quant ops) export with the current exporter, which
    writes them as QuantizeLinear/DequantizeLinear pairs (weights included)."""
    import onnx

    class FakeQuant(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(16, 32, 3)

        def forward(self, x):
            scale, zero = torch.full((32,), 0.02), torch.zeros(32, dtype=torch.int32)
            w = torch.fake_quantize_per_channel_affine(self.conv.weight, scale, zero, 0, -128, 127)
            x = torch.fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127)
            return nn.functional.conv2d(x, w, self.conv.bias)

    net, x = FakeQuant().eval(), torch.randn(1, 16, 8, 8)
    assert export_onnx(net, (x,), str(tmp_path / "q.onnx")) == "dynamo"
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 2, ops
    x = torch.randn(4, 16, 8, 8)  # the batch axis stays free with fake-quant ops too
    with torch.no_grad():
        np.testing.assert_allclose(_run(tmp_path / "q.onnx", x), net(x), atol=1e-4)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_converter_reads_both_exporters(tmp_path, exporter):
    """Masked export (pruned filters zero) -> zero-filter removal finds every cut filter."""
    torch.manual_seed(0)
    ctrl, _ = create_compressed_model(randomize_bn(SmallNet()), make_config())
    path = str(tmp_path / "masked.onnx")
    assert export_onnx(ctrl.strip(shrink=False).eval(), ctrl.captured.sample, path,
                       exporter=exporter) == exporter  # fmt: skip
    small, report = remove_zero_filters(path)
    save_model(small, str(tmp_path / "small.onnx"))
    assert report.flops_kept == pytest.approx(ctrl.statistics().flops_kept, rel=1e-6)
    x = torch.randn(3, 3, 32, 32)  # exported with batch 1: the batch axis stays free
    with torch.no_grad():
        ref = ctrl.strip().eval()(x).numpy()
    np.testing.assert_allclose(_run(tmp_path / "small.onnx", x), ref, atol=1e-4 * np.abs(ref).max())


def test_an_invalid_optimised_graph_is_exported_again_unoptimised(tmp_path, caplog, monkeypatch):
    import onnx

    checked = []
    real = onnx.checker.check_model

    def first_fails(path, **kwargs):
        checked.append(path)
        if len(checked) == 1:
            raise onnx.checker.ValidationError("input 'mul_2_min_1' is not output of any node")
        return real(path, **kwargs)

    monkeypatch.setattr(onnx.checker, "check_model", first_fails)
    net, x = SmallNet().eval(), torch.randn(1, 3, 32, 32)
    with caplog.at_level(logging.INFO, logger="filterprune"):
        assert export_onnx(net, (x,), str(tmp_path / "m.onnx")) == "dynamo"
    assert len(checked) == 2
    assert "optimised ONNX graph is invalid (ValidationError: input 'mul_2_min_1'" in caplog.text
    with torch.no_grad():
        np.testing.assert_allclose(_run(tmp_path / "m.onnx", x), net(x), atol=1e-4)


class Ratio(nn.Module):
    """kornia's LiteMLA ratio ``a / (b + eps)``, with ``b`` exactly 0 on some channels (a
    pruned filter): the current exporter's optimiser drops ``+ 1e-15`` and the file
    computes inf where the model is finite."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.b.weight[:2] = 0
            self.b.bias[:2] = -1.0

    def forward(self, x):
        return self.a(x) / (torch.relu(self.b(x)) + 1e-15) * 1e-15


def test_an_optimised_graph_that_computes_other_values_is_exported_unoptimised(tmp_path,
                                                                               caplog):
    """The file returned inf on every input with a warning blaming the model's forward."""
    torch.manual_seed(0)
    net, x = Ratio().eval(), torch.randn(1, 3, 4, 4)
    with caplog.at_level(logging.INFO, logger="filterprune"):
        assert export_onnx(net, (x,), str(tmp_path / "m.onnx")) == "dynamo"
    assert "optimised ONNX graph computes other values than the model" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    x = torch.randn(2, 3, 4, 4)
    got = _run(tmp_path / "m.onnx", x)
    assert np.isfinite(got).all()
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x), rtol=1e-5, atol=1e-5)


def test_the_torchscript_file_is_kept_where_only_it_computes_what_the_model_does(
        tmp_path, caplog, monkeypatch):  # fmt: skip
    def wrong(model, args, tmp, names):
        onnx_export._legacy_any_batch(model, args, tmp, names)
        return "computes other values than the model on a new input (max relative difference 1)"

    monkeypatch.setattr(onnx_export, "_dynamo", wrong)
    net, x = SmallNet().eval(), torch.randn(1, 3, 32, 32)
    with caplog.at_level(logging.INFO, logger="filterprune"):
        assert export_onnx(net, (x,), str(tmp_path / "m.onnx")) == "torchscript"
    assert "the TorchScript exporter's computes what the model does" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not list(tmp_path.glob("*.torchscript.onnx"))  # its temporary file is gone
    monkeypatch.setattr(onnx_export, "_legacy_any_batch", lambda *a: "computes other values")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="filterprune"):
        assert export_onnx(net, (x,), str(tmp_path / "m.onnx")) == "dynamo"  # both wrong
    assert "do not deploy the file unchecked" in caplog.text


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_exported_file_runs_at_any_batch_size(tmp_path, exporter):
    """A file exported from a 1-sample example runs at batch 5 (flatten -> linear)."""
    torch.manual_seed(0)
    net, path = randomize_bn(SmallNet()).eval(), tmp_path / "m.onnx"
    export_onnx(net, (torch.zeros(1, 3, 32, 32),), str(path), exporter=exporter)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert not isinstance(sess.get_inputs()[0].shape[0], int)
    assert not isinstance(sess.get_outputs()[0].shape[0], int)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        ref = net(x).numpy()
    np.testing.assert_allclose(_run(path, x), ref, atol=1e-4 * np.abs(ref).max())


class FixedBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        return self.fc(self.conv(x).reshape(1, -1))  # the batch size is fixed in code


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_a_model_that_fixes_its_batch_exports_with_the_example_batch(tmp_path, exporter, caplog):
    """The TorchScript exporter wrote a free batch axis here that ran only at batch 1."""
    net, x = FixedBatch().eval(), torch.randn(1, 3, 8, 8)
    with caplog.at_level(logging.INFO, logger="filterprune"):
        export_onnx(net, (x,), str(tmp_path / "m.onnx"), exporter=exporter)
    with torch.no_grad():
        np.testing.assert_allclose(_run(tmp_path / "m.onnx", x), net(x), atol=1e-5)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == 1
    assert "batch axis cannot be left free" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


class ReadsValues(nn.Module):
    """A forward whose Python code reads its input's values (a pose decoder's refinement)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        heat = self.conv(x)
        scores, where = heat.flatten(2).max(2)
        out = scores.clone()
        for b in range(heat.shape[0]):
            for k in range(heat.shape[1]):
                i = int(where[b, k])  # traced as a constant
                out[b, k] = out[b, k] + heat[b, k].flatten()[(i + 1) % heat[b, k].numel()]
        return out


def test_a_file_traced_for_the_examples_values_only_is_said(tmp_path, caplog):
    torch.manual_seed(0)
    caplog.set_level("WARNING", logger="filterprune")
    net, x = ReadsValues().eval(), torch.zeros(1, 3, 8, 8)
    export_onnx(net, (x,), str(tmp_path / "m.onnx"), exporter="torchscript")
    assert "computes other values than the model on a new input" in caplog.text
    assert "traced it for the example input only: Converting a tensor to a Python integer" \
        in caplog.text  # fmt: skip
    caplog.clear()  # the current exporter writes the reads as graph ops: the same values
    export_onnx(net, (x,), str(tmp_path / "d.onnx"))
    assert not caplog.records
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(_run(tmp_path / "d.onnx", x), net(x), atol=1e-5)


class FreeBatch(FixedBatch):
    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_a_file_that_fails_at_another_batch_is_said(tmp_path, caplog, monkeypatch):
    """An exporter that writes a graph running at batch 1 only under a free batch axis
    (here FixedBatch's, for a model that runs at any batch): the warning says how the
    file fails."""
    caplog.set_level("WARNING", logger="filterprune")
    real, fixed = onnx_export._legacy, FixedBatch().eval()

    def free_axis_always(model, args, tmp, names, axes=None):
        real(fixed, args, tmp, {"input_names": ["x"], "output_names": ["y"]},
             {"x": {0: "batch"}, "y": {0: "batch"}})  # fmt: skip

    monkeypatch.setattr(onnx_export, "_legacy", free_axis_always)
    net = FreeBatch().eval()
    net.load_state_dict(fixed.state_dict())
    export_onnx(net, (torch.randn(1, 3, 8, 8),), str(tmp_path / "m.onnx"),
                exporter="torchscript")  # fmt: skip
    assert "fails in ONNX Runtime on an input of shape [2, 3, 8, 8]" in caplog.text


def test_a_quantized_model_whose_roundings_flip_exports_without_a_warning(tmp_path, caplog):
    """Activations near a rounding boundary round the other way in the file's order of
    sums: compared with the activations in float, it is the model."""
    import torchvision

    from filterprune.testing.zoo import nondegenerate

    torch.manual_seed(0)
    caplog.set_level("INFO", logger="filterprune")
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 3, 64, 64]},
                                   "compression": [
        {"algorithm": "filter_pruning", "pruning_init": 0.5},
        {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0}}}]})
    ctrl, model = create_compressed_model(nondegenerate(torchvision.models.resnet18(
        num_classes=10)), config)  # fmt: skip
    model.eval()(torch.rand(2, 3, 64, 64))
    ctrl.export_model(str(tmp_path / "q.onnx"))
    assert "batch axis cannot be left free" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


class _DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.cls, self.box = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.stem(x).relu()
        return {"scores": self.cls(y), "aux": {"boxes": self.box(y)}}


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_dict_outputs_are_named_by_their_keys(tmp_path, exporter):
    torch.manual_seed(0)
    model, x = _DictOut().eval(), torch.randn(1, 3, 16, 16)
    export_onnx(model, (x,), str(tmp_path / "m.onnx"), exporter=exporter)
    names, (scores, boxes) = run_onnx(tmp_path / "m.onnx", x)
    assert names == ["scores", "aux/boxes"]
    with torch.no_grad():
        ref = model(x)
    np.testing.assert_allclose(scores, ref["scores"].numpy(), atol=1e-5)
    np.testing.assert_allclose(boxes, ref["aux"]["boxes"].numpy(), atol=1e-5)



class _SameNames(_DictOut):
    def forward(self, sample):  # diffusers' UNets: forward(sample) returns .sample
        return {"sample": self.cls(self.stem(sample).relu())}


def test_an_output_key_that_names_an_input_is_written_under_output(tmp_path, caplog):
    """The current exporter refused the file ("'sample' has been used as output names
    multiple times"), and the TorchScript fallback fails on some models (UNet1D)."""
    caplog.set_level("WARNING", logger="filterprune")
    torch.manual_seed(0)
    model, x = _SameNames().eval(), torch.randn(1, 3, 16, 16)
    assert export_onnx(model, (x,), str(tmp_path / "m.onnx")) == "dynamo"
    assert not caplog.records
    names, (sample,) = run_onnx(tmp_path / "m.onnx", x)
    assert names == ["output/sample"]
    with torch.no_grad():
        np.testing.assert_allclose(sample, model(x)["sample"].numpy(), atol=1e-5)


def test_a_full_disk_is_said_with_the_file_and_no_other_exporter_is_tried(tmp_path, monkeypatch):
    """The TorchScript exporter was tried after the current one met a full disk, and the
    error named no file."""

    def full(model, args, tmp, names):
        raise OSError(errno.ENOSPC, "No space left on device")

    def other(*args):
        raise AssertionError("the TorchScript exporter was tried")

    monkeypatch.setattr(onnx_export, "_dynamo", full)
    monkeypatch.setattr(onnx_export, "_legacy_any_batch", other)
    path = tmp_path / "m.onnx"
    with pytest.raises(OSError, match=f"Cannot write {path}: No space left on device"):
        export_onnx(_DictOut().eval(), (torch.randn(1, 3, 16, 16),), str(path))
    assert not path.exists()


class _StarArgs(_DictOut):
    def forward(self, *args):  # the current exporter names the inputs args_0, args_1
        return {"args_1": self.cls(self.stem(args[0] + args[1]).relu())}


def test_an_output_key_that_names_a_star_argument_is_written_under_output(tmp_path, caplog):
    """``args_1`` clashed with the current exporter's name of the second input: it failed
    and the TorchScript exporter wrote the file instead."""
    caplog.set_level("WARNING", logger="filterprune")
    torch.manual_seed(0)
    model, x = _StarArgs().eval(), torch.randn(1, 3, 16, 16)
    assert export_onnx(model, (x, x), str(tmp_path / "m.onnx")) == "dynamo"
    assert not caplog.records
    assert [o.name for o in onnx.load(tmp_path / "m.onnx").graph.output] == ["output/args_1"]


def test_star_arguments_keep_a_free_batch_axis(tmp_path):
    """``forward(self, *views)``: torch.export wants the batch axes of the views nested
    under ``*views``, and refused them flat, so the file took batch 1 for good and ONNX
    Runtime refused batch 2."""
    torch.manual_seed(0)
    model, x = _StarArgs().eval(), torch.randn(2, 3, 16, 16)
    assert export_onnx(model, (x[:1], x[:1]), str(tmp_path / "m.onnx")) == "dynamo"
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {i.name: x.numpy() for i in sess.get_inputs()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x, x)["args_1"].numpy(), atol=1e-5)


class _WithCount(_DictOut):
    def forward(self, x):
        return {**super().forward(x), "count": 3, "kind": "boxes"}


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_outputs_other_than_tensors_are_left_out_with_a_warning(tmp_path, exporter, caplog):
    """An int or string returned beside the tensors made both exporters fail."""
    caplog.set_level("WARNING", logger="filterprune")
    torch.manual_seed(0)
    model, x = _WithCount().eval(), torch.randn(2, 3, 16, 16)
    export_onnx(model, (x[:1],), str(tmp_path / "m.onnx"), exporter=exporter)
    assert "returns values that are not tensors (output['count'], output['kind'])" in caplog.text
    names, (scores, boxes) = run_onnx(tmp_path / "m.onnx", x)  # batch 2: free
    assert names == ["scores", "aux/boxes"]
    with torch.no_grad():
        ref = model(x)
    np.testing.assert_allclose(scores, ref["scores"].numpy(), atol=1e-5)
    np.testing.assert_allclose(boxes, ref["aux"]["boxes"].numpy(), atol=1e-5)
    assert model(x)["count"] == 3  # the hook is gone


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 16, 1)
        self.out = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        h = self.b(torch.relu(self.a(x)))
        return self.out(h * torch.sigmoid(self.fc(self.pool(h))))


def test_a_channels_last_model_exports_as_a_contiguous_one(tmp_path):
    """channels_last exports global pooling as strided gathers, which convert cannot cut
    through (8 of 24 zero filters removed before)."""
    removed = []
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        config = make_config((1, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
        ctrl, _ = create_compressed_model(_Attention().to(memory_format=layout), config)
        path = str(tmp_path / f"{layout}.onnx")
        ctrl.export_model(path)
        removed.append(remove_zero_filters(path)[1].removed)
    assert removed[0] == removed[1] > 0


def test_an_export_inside_autocast_writes_the_models_arithmetic(tmp_path):
    """Under torch.autocast the file got bfloat16 casts into its convs: ONNX Runtime
    refused it (INVALID_GRAPH)."""
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(randomize_bn(SmallNet()), make_config())
    path = tmp_path / "m.onnx"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ctrl.export_model(str(path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.eval()(x)
    _, (out,) = run_onnx(path, x)
    assert abs(out - ref.numpy()).max() <= 1e-4 * float(ref.abs().max())


def test_values_that_differ_keep_the_free_batch(tmp_path, caplog, monkeypatch):
    """Only a file that fails or changes shape at another batch is exported again with the
    example's batch: differing values (a quantized weight's rounding after folding) would
    not change, and a QAT MobileNetV2 lost its free batch to 1.8e-4 of them."""
    caplog.set_level("INFO", logger="filterprune")
    monkeypatch.setattr(onnx_export, "compare_file", lambda *args: "computes other values "
                        "than the model on a new input (max relative difference 0.02)")
    export_onnx(SmallNet().eval(), (torch.zeros(1, 3, 32, 32),), str(tmp_path / "m.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert not isinstance(sess.get_inputs()[0].shape[0], int)
    assert "batch axis cannot be left free" not in caplog.text
    assert "computes other values than the model on a new input" in caplog.text


class _MaskedLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y.masked_fill(y < 0, float("-inf"))


class _Bf16Inside(nn.Module):
    """Computes in bfloat16, which ONNX Runtime's CPU convolution does not run."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1).bfloat16()

    def forward(self, x):
        return self.conv(x.bfloat16()).float()


def test_the_file_check_follows_the_models_arithmetic(tmp_path, caplog):
    """Half precision rounds at 1e-3 and -inf minus -inf is NaN: both warned, wrongly. A
    file the runtime refuses at any batch keeps its free batch (a fixed one fails alike)."""
    caplog.set_level("WARNING", logger="filterprune")
    torch.manual_seed(0)
    export_onnx(randomize_bn(SmallNet()).eval().half(), (torch.rand(1, 3, 32, 32).half(),),
                str(tmp_path / "h.onnx"))  # fmt: skip
    export_onnx(_MaskedLogits().eval(), (torch.randn(1, 3, 8, 8),), str(tmp_path / "i.onnx"))
    assert not caplog.records
    export_onnx(_Bf16Inside().eval(), (torch.randn(1, 3, 8, 8),), str(tmp_path / "b.onnx"))
    assert "fails in ONNX Runtime" in caplog.text
    dim = onnx.load(str(tmp_path / "b.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value


def _cast_after_creation(dtype):
    torch.manual_seed(0)
    net = nondegenerate(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16),
                                      nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1)))  # fmt: skip
    ctrl, model = create_compressed_model(net, make_config((2, 3, 16, 16), prune_first_conv=True,
                                                           filters_multiple_of=1))  # fmt: skip
    return ctrl, model.eval().to(dtype)


def test_a_model_cast_after_creation_exports_in_its_type(tmp_path, caplog):
    """The export fed input_info's float32 sample to a model the user made float16 (torch's
    "Input type (float) and bias type (c10::Half)"); a float64 one's file, which ONNX
    Runtime cannot run, was blamed on a forward reading its input's values."""
    caplog.set_level("WARNING", logger="filterprune")
    ctrl, model = _cast_after_creation(torch.float16)
    ctrl.export_model(str(tmp_path / "h.onnx"))
    x = torch.randn(2, 3, 16, 16).half()
    with torch.no_grad():
        ref = model(x).float()
    out = torch.from_numpy(run_onnx(tmp_path / "h.onnx", x)[1][0]).float()
    assert float((out - ref).abs().max()) <= 1e-2 * float(ref.abs().max())
    assert not caplog.records
    ctrl, model = _cast_after_creation(torch.float64)
    ctrl.export_model(str(tmp_path / "d.onnx"))
    assert "ONNX Runtime has no kernel for an op of the file in its type" in caplog.text
    assert "depends on the input's values" not in caplog.text


class _Float64In(nn.Module):
    """Takes float64 on purpose: normalises large values before its float32 convs."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        x = ((x - x.mean()) / x.std()).float()
        return self.c2(torch.relu(self.c1(x)))


def test_an_input_of_another_type_than_the_model_is_exported_as_given(tmp_path):
    """Cast to the model's float32 (a fix for models cast after creation), it lost what
    float64 kept: 0.24 off on inputs of 1e7."""
    config = make_config((2, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    config["input_info"]["type"] = "double"
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(nondegenerate(_Float64In()), config)
    ctrl.export_model(str(tmp_path / "m.onnx"))
    graph_input = onnx.load(str(tmp_path / "m.onnx")).graph.input[0]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE


def test_a_bfloat16_model_is_refused_before_export(tmp_path):
    """Its file failed the ONNX checker and ONNX Runtime, with a note of the exporters'
    fallback only."""
    ctrl, model = _cast_after_creation(torch.bfloat16)
    with pytest.raises(ValueError, match=r"parameters are bfloat16 \(0.weight, 0.bias, 1.weight, "
                       r"\.\.\.\).*model.float\(\) before export_model"):
        ctrl.export_model(str(tmp_path / "b.onnx"))
    assert not (tmp_path / "b.onnx").exists()


class Saturated(nn.Module):
    """A sigmoid far below zero: outputs about 1e-23, rounded in full by either runtime."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.b(torch.relu(self.a(x))) - 57.0)


def test_outputs_too_small_to_compare_raise_no_alarm(tmp_path, caplog):
    """The check said the file "computes other values" (relative difference 1) and not to
    deploy it: 1e-23 against 2e-23."""
    caplog.set_level("WARNING", logger="filterprune")
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(nondegenerate(Saturated().eval()), make_config(
        (1, 3, 16, 16), prune_first_conv=True))  # fmt: skip
    ctrl.export_model(str(tmp_path / "m.onnx"))
    assert "computes other values" not in caplog.text
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert float(model.eval()(x).abs().max()) < 1e-20


class _ComplexMix(nn.Module):
    """FNO's spectral conv: an einsum of complex values, which neither exporter writes."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4, 3, 3, dtype=torch.cfloat))

    def forward(self, x):
        spectrum = torch.fft.rfft2(x)[:, :, :3, :3]
        return torch.fft.irfft2(torch.einsum("bixy,ioxy->boxy", spectrum, self.w), s=(8, 8))


def test_where_both_exporters_fail_each_cause_is_said_in_one_line(tmp_path):
    """The current exporter's cause (under its "Exception summary") was cut at its first
    line, "Failed to convert ... Next steps:", and the TorchScript exporter's error, which
    named the FFT the current exporter writes, came with a dump of the whole graph."""
    path = tmp_path / "m.onnx"
    with pytest.raises(RuntimeError, match="Neither ONNX exporter could write") as info:
        export_onnx(_ComplexMix().eval(), (torch.randn(1, 4, 8, 8),), str(path))
    said = str(info.value)
    assert "No ONNX function found for <OpOverload(op='aten.einsum'" in said, said
    assert "the TorchScript exporter with" in said and len(said) < 1000, said
    assert not path.exists()


class _Streaming(nn.Module):
    """A causal conv keeping its last frame across calls (streaming audio), made on the
    first call: a fresh stream pads with ones."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv1d(4, 16, 2), nn.Conv1d(16, 16, 1)
        self.head, self.cache = nn.Conv1d(16, 3, 1), None

    def forward(self, x):
        past = torch.ones_like(x[..., :1]) if self.cache is None else self.cache
        self.cache = x[..., -1:]
        return self.head(torch.relu(self.b(torch.relu(self.a(torch.cat([past, x], -1))))))


def test_an_export_starts_from_the_state_the_model_has(tmp_path):
    """The export's own runs of the model left a stream's state in it, which the file then
    held as constants: 0.14 off a fresh stream."""
    torch.manual_seed(0)
    config = make_config((2, 4, 16), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(nondegenerate(_Streaming()).eval(), config)
    path = str(tmp_path / "stream.onnx")
    ctrl.export_model(path, shrink=True)
    assert model.cache is None
    x = torch.randn(2, 4, 16)
    with torch.no_grad():
        expected = model(x)
    got = run_onnx(path, x)[1][0]
    assert np.abs(got - expected.numpy()).max() <= 1e-5 * np.abs(expected.numpy()).max()
