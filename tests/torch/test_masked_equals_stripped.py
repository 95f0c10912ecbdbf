"""The masked model, `strip()` and the ONNX export compute the same, even with tied
weights or NaN in pruned filters (issue 13, item 6)."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from filterprune import NNCFConfig
from filterprune.torch import create_compressed_model


class Tied(nn.Module):
    """``b`` uses ``a``'s weight: one parameter, two layers with their own masks."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.b.weight = self.a.weight
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.a(x))
        return self.head(torch.relu(self.b(x)))


def _create(net):
    config = NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, 3, 8, 8]},
        "compression": {"algorithm": "filter_pruning", "pruning_init": 0.5,
                        "params": {"prune_first_conv": True, "filters_multiple_of": 1}},
    })  # fmt: skip
    ctrl, model = create_compressed_model(net, config)
    return ctrl, model.eval()


def _rel(ref, out):
    return float((ref - out).abs().max() / ref.abs().max())


@pytest.mark.parametrize("shrink", [False, True])
def test_tied_weights_strip_equals_the_masked_model(shrink):
    torch.manual_seed(0)
    ctrl, model = _create(Tied())
    assert not torch.equal(model.a.weight_mask, model.b.weight_mask)  # different inputs cut
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
        stripped = ctrl.strip(shrink=shrink).eval()
        assert _rel(ref, stripped(x)) < 1e-5  # was 0.1 with shrink=False
    assert model.b.weight is model.a.weight  # the training model keeps its tie


def test_tied_weights_export_equals_the_masked_model(tmp_path):
    torch.manual_seed(0)
    ctrl, model = _create(Tied())
    ctrl.export_model(str(tmp_path / "m.onnx"))
    x = torch.randn(1, 3, 8, 8)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        assert _rel(model(x), out) < 1e-5


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = torch.relu(self.bn(self.c1(x)))
        return self.head(torch.relu(self.c2(x)))


@pytest.mark.parametrize("where", ["weight", "bias", "bn"])
def test_nan_in_pruned_filters_stays_out_of_the_masked_model(where):
    torch.manual_seed(0)
    net = Chain().eval()
    with torch.no_grad():
        net.c1.weight[3].mul_(1e-3)  # the weakest filter: pruned at level 0.5
    ctrl, model = _create(net)
    assert not ctrl.keeps()["c1"]["out"][3]
    with torch.no_grad():
        target = {"weight": model.c1.weight[3, 0, 0], "bias": model.c1.bias[3:4],
                  "bn": model.bn.running_var[3:4]}[where]  # fmt: skip
        target.fill_(float("nan"))
        x = torch.randn(2, 3, 8, 8)
        ref = model(x)
        assert torch.isfinite(ref).all()  # was NaN: 0 * NaN
        for shrink in (False, True):
            out = ctrl.strip(shrink=shrink).eval()(x)
            assert torch.isfinite(out).all() and _rel(ref, out) < 1e-5


def test_nan_in_a_kept_filter_shows_everywhere():
    torch.manual_seed(0)
    ctrl, model = _create(Chain().eval())
    kept = int(np.flatnonzero(ctrl.keeps()["c1"]["out"])[0])
    with torch.no_grad():
        model.c1.weight[kept, 0, 0, 0] = float("nan")
        x = torch.randn(2, 3, 8, 8)
        assert torch.isnan(model(x)).any()
        assert torch.isnan(ctrl.strip(shrink=False).eval()(x)).any()
