"""Per-channel QDQ models, and whole models pruned and exported by the PyTorch frontend."""

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from onnx_helpers import (
    TinyNet,
    convert,
    export,
    layer,
    make_config,
    randomize_bn,
    run,
    seed_torch,  # noqa: F401 - autouse fixture
    zero,
)
from torch import nn

from filterprune.torch import create_compressed_model


def _quantize(path: str, out: str) -> None:
    """Weights of every Conv behind a per-channel DequantizeLinear; the first Conv's output
    through a per-channel QuantizeLinear/DequantizeLinear pair (axis 1)."""
    m = onnx.load(path)
    inits = {i.name: i for i in m.graph.initializer}
    nodes = []
    for n in m.graph.node:
        if n.op_type == "Conv":
            w = numpy_helper.to_array(inits[n.input[1]])
            amax = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
            scale = np.where(amax > 0, amax / 127, 1.0).astype(np.float32)
            q = np.round(w / scale[:, None, None, None]).astype(np.int8)
            base = n.input[1]
            m.graph.initializer.extend([numpy_helper.from_array(q, base + "_q"),
                                        numpy_helper.from_array(scale, base + "_s"),
                                        numpy_helper.from_array(np.zeros_like(q[:, 0, 0, 0]),
                                                                base + "_zp")])  # fmt: skip
            names = [base + "_q", base + "_s", base + "_zp"]
            nodes.append(helper.make_node("DequantizeLinear", names, [base + "_dq"], axis=0))
            n.input[1] = base + "_dq"
            m.graph.initializer.remove(inits[base])
        nodes.append(n)
    first = next(n for n in nodes if n.op_type == "Conv")
    c = numpy_helper.to_array(inits[first.input[1][: -len("_dq")]]).shape[0]
    act = first.output[0]
    scale = numpy_helper.from_array(np.full(c, 0.05, np.float32), "act_s")
    m.graph.initializer.extend([scale, numpy_helper.from_array(np.zeros(c, np.int8), "act_zp")])
    for n in nodes:
        n.input[:] = [act + "_dq" if i == act else i for i in n.input]
    at = nodes.index(first) + 1
    qp = ["act_s", "act_zp"]
    q = helper.make_node("QuantizeLinear", [act, *qp], [act + "_q"], axis=1)
    dq = helper.make_node("DequantizeLinear", [act + "_q", *qp], [act + "_dq"], axis=1)
    nodes[at:at] = [q, dq]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, out)


def test_qdq_per_channel(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x):
            return self.conv2(torch.relu(self.conv1(x)))

    m = Net()
    zero(m.conv1, [2, 3, 7])
    x = torch.randn(1, 3, 8, 8)
    _quantize(export(m, x, tmp_path / "f.onnx"), str(tmp_path / "q.onnx"))
    new, report = convert(str(tmp_path / "q.onnx"), x)
    assert layer(report, "conv1").removed == 3
    inits = {i.name: i for i in new.graph.initializer}
    shapes = [tuple(inits[n.input[i]].dims)
              for n in new.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
              for i in (0, 1) if n.input[i] in inits]  # fmt: skip
    assert (5, 3, 3, 3) in shapes and (4, 5, 3, 3) in shapes
    assert shapes.count((5,)) == 3  # conv1's weight scales, the activation Q and DQ scales


def test_torch_frontend_masked_export(tmp_path):
    """The real flow: prune with the PyTorch frontend, export with zeros, convert."""
    model = randomize_bn(TinyNet())
    ctrl, model = create_compressed_model(model, make_config())
    path = str(tmp_path / "masked.onnx")
    ctrl.export_model(path)
    new, report = convert(path, torch.zeros(1, 3, 32, 32))
    assert report.flops_kept == pytest.approx(ctrl.statistics().flops_kept, rel=1e-6)
    small = ctrl.strip().eval()
    ref = small(torch.ones(1, 3, 32, 32)).detach().numpy()
    out = run(new, np.ones((1, 3, 32, 32), np.float32))[0]
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    assert not [s for s in report.layers if s.kept_zero]


def test_mobilenet_v2_masked_export(tmp_path):
    import torchvision

    model = randomize_bn(torchvision.models.mobilenet_v2(num_classes=10))
    config = make_config(sample=(1, 3, 32, 32))
    ctrl, model = create_compressed_model(model, config)
    path = str(tmp_path / "mnv2.onnx")
    ctrl.export_model(path)
    new, report = convert(path, torch.zeros(1, 3, 32, 32))
    assert report.flops_kept == pytest.approx(ctrl.statistics().flops_kept, rel=1e-6)
    assert report.flops_kept < 0.5


class _CondConv(nn.Module):
    """Kernels mixed per sample, then one conv over the batch folded into its groups."""

    def __init__(self, channels=16, kernels=4):
        super().__init__()
        self.route = nn.Linear(channels, kernels)
        self.bank = nn.Parameter(torch.randn(kernels, channels * channels * 9) * 0.06)

    def forward(self, x):
        b, c, h, w = x.shape
        weight = (torch.sigmoid(self.route(x.mean((2, 3)))) @ self.bank).view(b * c, c, 3, 3)
        return nn.functional.conv2d(x.reshape(1, b * c, h, w), weight, padding=1,
                                    groups=b).view(b, c, h, w)  # fmt: skip


class _CondNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.cc, self.c3 = nn.Conv2d(3, 16, 3, padding=1), _CondConv(), nn.Conv2d(
            16, 16, 3, padding=1)  # fmt: skip
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.cc(torch.relu(self.c1(x))))
        return self.head(torch.relu(self.c3(x)).mean((2, 3)))


def test_a_conv_whose_weight_is_computed_counts_its_flops_as_in_pytorch(tmp_path):
    """convert left it out of both totals (0.54 kept against PyTorch's 0.76); its weight
    holds the whole batch's kernels, counted once per sample."""
    model = randomize_bn(_CondNet())
    ctrl, model = create_compressed_model(model, make_config(sample=(2, 3, 16, 16)))
    ctrl.export_model(str(tmp_path / "m.onnx"))
    _, report = convert(str(tmp_path / "m.onnx"), torch.zeros(2, 3, 16, 16))
    assert report.flops_kept == pytest.approx(ctrl.statistics().flops_kept, rel=1e-6)
    assert report.flops_before == ctrl.statistics().full_flops
