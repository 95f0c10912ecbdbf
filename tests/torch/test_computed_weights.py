"""Layers whose weight is computed from other parameters: ``weight_norm`` and
``spectral_norm``, as forward pre-hooks and as parametrizations. They are pruned like
plain layers; the strip writes the computed weight in, so the stripped model computes
what the masked one does (with 8-bit weights too), and the ONNX export holds plain
weights that ``convert`` cuts."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch_helpers import assert_strip_equal, classify_steps

from filterprune import NNCFConfig
from filterprune.onnx import remove_zero_filters, run_onnxruntime
from filterprune.testing.zoo import nondegenerate
from filterprune.torch import create_compressed_model, register_default_init_args
from filterprune.torch.shrink_frozen import shrink_in_place

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm")

WRAPS = {
    "weight_norm": nn.utils.weight_norm,
    "spectral_norm": nn.utils.spectral_norm,
    "parametrized weight_norm": nn.utils.parametrizations.weight_norm,
    "parametrized spectral_norm": nn.utils.parametrizations.spectral_norm,
}


class Net(nn.Module):
    """A discriminator-like net: normed convs, a BatchNorm, a normed transposed conv and
    a normed linear head."""

    def __init__(self, wrap):
        super().__init__()
        self.a = wrap(nn.Conv2d(3, 16, 3, padding=1))
        self.bn = nn.BatchNorm2d(16)
        self.b = wrap(nn.Conv2d(16, 16, 3, stride=2, padding=1))
        self.up = wrap(nn.ConvTranspose2d(16, 16, 2, stride=2))
        self.c = wrap(nn.Conv2d(16, 16, 3, padding=1))
        self.head = wrap(nn.Linear(16, 10))

    def forward(self, x):
        y = nn.functional.leaky_relu(self.bn(self.a(x)), 0.2)
        y = nn.functional.leaky_relu(self.up(nn.functional.leaky_relu(self.b(y), 0.2)), 0.2)
        return self.head(nn.functional.leaky_relu(self.c(y) + y, 0.2).mean((2, 3)))


def net(kind, seed=0):
    torch.manual_seed(seed)
    model = nondegenerate(Net(WRAPS[kind]))
    model.eval()(torch.randn(2, 3, 16, 16))  # legacy hooks compute the weight once more
    return model


def config(quantize=False, **params):
    params = {"prune_first_conv": True, "prune_downsample_convs": True,
              "filters_multiple_of": 1, **params}  # fmt: skip
    algos = [{"algorithm": "filter_pruning", "pruning_init": 0.5, "params": params}]
    if quantize:
        algos.append({"algorithm": "quantization",
                      "initializer": {"range": {"num_init_samples": 8}}})  # fmt: skip
    loader = [(torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    return register_default_init_args(NNCFConfig.from_dict(
        {"input_info": {"sample_size": [1, 3, 16, 16]}, "compression": algos}), loader)


@pytest.mark.parametrize("quantize", [False, True], ids=["float", "int8"])
@pytest.mark.parametrize("kind", WRAPS)
def test_normed_layers_are_pruned_and_stripped_to_plain_layers(kind, quantize):
    ctrl, model = create_compressed_model(net(kind), config(quantize))
    held = {p for producers, _ in ctrl.statistics().unpruned for p in producers}
    assert not held & {"a", "b", "up", "c"}
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        before = model.eval()(x)
    small = assert_strip_equal(ctrl, model, x, tol=1e-5)
    assert small.a.out_channels == 8 and small.up.out_channels == 8
    assert type(small.a.weight) is nn.Parameter and not hasattr(small.a, "weight_g")
    with torch.no_grad():  # the strip works on a copy: the model is as it was
        torch.testing.assert_close(model(x), before)
        model.train()(x)


class Branchy(Net):
    """The same net with a data-dependent branch: torch.fx cannot trace it, torch.export
    records the weight's computation as ops."""

    def forward(self, x):
        if x.abs().mean() > 1e-3:  # true on the sample and on real inputs
            x = x * 1.0
        return super().forward(x)


@pytest.mark.parametrize(("kind", "quantize"), [(k, False) for k in WRAPS] + [
    ("weight_norm", True), ("parametrized spectral_norm", True)])  # fmt: skip
def test_normed_layers_captured_by_torch_export_are_pruned_as_by_fx(kind, quantize):
    """Export reads the weight as computed in forward: every normed layer and its
    producers were held ("reads a weight computed in forward"), so nothing was cut."""
    torch.manual_seed(0)
    branchy = nondegenerate(Branchy(WRAPS[kind]))
    branchy.eval()(torch.randn(2, 3, 16, 16))
    ctrl, model = create_compressed_model(branchy, config(quantize))
    assert ctrl.captured.extra["capture"] == "torch.export"
    held = {p for producers, _ in ctrl.statistics().unpruned for p in producers}
    assert not held & {"a", "b", "up", "c"}, ctrl.statistics().unpruned
    assert not any("never" in note for note in ctrl.captured.graph.notes)
    reference, _ = create_compressed_model(net(kind), config(quantize))
    assert ctrl.statistics().flops_kept == pytest.approx(reference.statistics().flops_kept)
    small = assert_strip_equal(ctrl, model, torch.randn(4, 3, 16, 16), tol=1e-5)
    assert small.a.out_channels == 8 and type(small.a.weight) is nn.Parameter


@pytest.mark.parametrize("kind", WRAPS)
def test_statistics_count_a_computed_weight_once_as_the_stripped_model_does(kind):
    """The parameters a weight is computed from (``weight_orig``, ``weight_v``,
    ``parametrizations.weight.original``) were counted again as uncut layers: 0.63 of the
    parameters kept where the stripped model keeps 0.27."""
    plain = sum(p.numel() for p in Net(lambda m: m).parameters())
    ctrl, model = create_compressed_model(net(kind), config())
    stats = ctrl.statistics()
    small = ctrl.strip()
    assert stats.full_params == plain
    assert stats.current_params == sum(p.numel() for p in small.parameters())


@pytest.mark.parametrize("kind", ["weight_norm", "parametrized spectral_norm"])
def test_export_holds_plain_weights_that_convert_removes(kind, tmp_path):
    ctrl, model = create_compressed_model(net(kind), config())
    path = str(tmp_path / "m.onnx")
    ctrl.export_model(path)
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    name = onnx.load(path).graph.input[0].name
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_onnxruntime(path, {name: x})[0], ref, rtol=1e-4, atol=1e-5)
    new, report = remove_zero_filters(path)
    assert sum(layer.removed for layer in report.layers) >= 8 + 8 + 8 + 8


def test_taylor_scores_normed_layers_and_shrink_when_frozen_keeps_them_masked(caplog):
    """The cut would write the computed weight in and train on without the norm: the
    model stays masked, its norm and its optimizer as they were."""
    ctrl, model = create_compressed_model(
        net("parametrized weight_norm"),
        config(filter_importance="taylor", schedule="exponential", pruning_steps=1,
               pruning_target=0.5, shrink_when_frozen=True),
    )  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctrl.register_optimizer(optimizer)
    with caplog.at_level("WARNING", logger="filterprune"):
        for _ in range(3):
            ctrl.scheduler.epoch_step()
            classify_steps(model, ctrl, optimizer, size=(3, 16, 16))
    assert ctrl.frozen and not ctrl.shrunk and "compute their weights" in caplog.text
    assert ctrl.taylor.totals["b"].shape == (16,) and hasattr(model.b, "parametrizations")
    before = model.b.parametrizations.weight.original1.detach().clone()
    classify_steps(model, ctrl, optimizer, 1, size=(3, 16, 16))
    assert not torch.equal(model.b.parametrizations.weight.original1, before)  # trains on


def test_shrink_in_place_keeps_outputs_of_a_weight_normed_model():
    ctrl, model = create_compressed_model(net("weight_norm"), config())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model.eval()(x)
    shrink_in_place(model, ctrl.keeps(), ctrl.analysis.graph.layers, [optimizer])
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == \
        [id(p) for p in model.parameters()]  # fmt: skip


class ReadsNormedWeight(nn.Module):
    """A parametrized weight read outside its layer's forward (a weight penalty in the
    output): torch.fx records the read as a call of the parametrization module."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.utils.parametrizations.weight_norm(nn.Conv2d(8, 16, 3, padding=1))
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        z = torch.relu(self.mid(torch.relu(self.a(x))))
        return self.head(z) * self.mid.weight.abs().mean()


def test_a_normed_weight_read_outside_its_layer_keeps_the_layer_whole():
    """The layer was cut under the read (stripped model 0.488 relative off, no warning),
    and the parametrization was counted as another layer (FLOPs 1,630,208 for 733,184)."""
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(nondegenerate(ReadsNormedWeight()), config())
    stats = ctrl.statistics()
    assert ["mid"] in [p for p, _ in stats.unpruned]
    assert stats.full_flops == 2 * 256 * (8 * 27 + 16 * 72 + 4 * 16)
    assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16), tol=1e-6)


class OwnConv(nn.Module):
    """A conv of the user's own: its weight passed to ``F.conv2d`` in its forward."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 16, 3, 3))
        self.bias = nn.Parameter(torch.randn(16))

    def forward(self, x):
        return nn.functional.conv2d(x, self.weight, self.bias, padding=1)


@pytest.mark.parametrize("kind", ["weight_norm", "parametrized weight_norm"])
def test_a_normed_own_conv_counts_the_flops_of_its_conv_only(kind):
    """The norm's maths on the weight counted as a conv of the weight (41,472 FLOPs
    more per sample), and its gain ``g`` as a matrix (8,192 more)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), WRAPS[kind](OwnConv()),
                          nn.ReLU(), nn.Conv2d(16, 4, 1))  # fmt: skip
    ctrl, _ = create_compressed_model(nondegenerate(model), config())
    assert ctrl.statistics().full_flops == 2 * 256 * (16 * 27 + 16 * 144 + 4 * 16)


def _plain_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


@pytest.mark.parametrize("form", ["torch prune", "weight buffer"])
def test_a_layer_whose_weight_is_no_parameter_counts_its_conv_flops(form):
    """Held, such a conv counted its parameters once per row of its output (C*H rows,
    2.80M FLOPs for the net's 5.60M), or nothing (a weight buffer). A weight that
    torch.nn.utils.prune computes stays whole, as its mask buffer is named as the filter
    masks' own, and the reason says what to do."""
    torch.manual_seed(0)
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [2, 3, 32, 32]}, "compression": {
        "algorithm": "filter_pruning", "pruning_init": 0.5,
        "params": {"filters_multiple_of": 1, "prune_first_conv": True}}})  # fmt: skip
    plain, net = _plain_net(), _plain_net()
    for layer in (net[0], net[2]):
        if form == "torch prune":
            torch_prune.l1_unstructured(layer, "weight", amount=0.3)
        else:
            weight = layer.weight.detach().clone()
            del layer.weight
            layer.register_buffer("weight", weight)
    full = create_compressed_model(plain, config)[0].statistics().full_flops
    ctrl, model = create_compressed_model(net, config)
    stats = ctrl.statistics()
    assert stats.full_flops == full == 2 * 1024 * (3 * 16 * 9 + 16 * 16 * 9) + 2 * 16 * 4
    held = {name: r for names, r in stats.unpruned for name in names}
    words = "torch.nn.utils.prune.remove" if form == "torch prune" else "has no weight parameter"
    assert words in held["0"], held
    assert_strip_equal(ctrl, model, torch.randn(2, 3, 32, 32))
