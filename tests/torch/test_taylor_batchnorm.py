"""PyTorch: ``taylor`` scores a conv followed by a BatchNorm on the BatchNorm's scale and
shift, ``(g_gamma * gamma + g_beta * beta)^2`` per channel, summed over steps; a conv
without one keeps ``(sum over a filter of g * w)^2``."""

import numpy as np
import pytest
import torch
from torch import nn
from torch_helpers import make_config, randomize_bn

from filterprune.torch import create_compressed_model

SILENT = [0, 3, 5, 6, 9, 10, 12, 15]
LIVE = sorted(set(range(16)) - set(SILENT))


class Net(nn.Module):
    """stem conv -> mid conv (16 filters) -> BatchNorm ``bn`` -> ReLU -> head conv -> mean."""

    def __init__(self, bn: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16) if bn else nn.Identity()
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.mid(self.stem(x))))).mean(dim=(2, 3))


def net(seed=0, bn=True):
    torch.manual_seed(seed)
    model = Net(bn)
    if bn:
        with torch.no_grad():
            model.bn.weight.uniform_(0.5, 1.5)
            model.bn.bias.normal_(0.0, 0.3)
    return model


def batches(steps=2):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 12, 12, generator=g), torch.randn(8, 4, generator=g))
            for _ in range(steps)]  # fmt: skip


def loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


def config(importance, init):
    return make_config((1, 3, 12, 12), filter_importance=importance, schedule="baseline",
                       pruning_init=init)  # fmt: skip


def train_mode(model, frozen_bn):
    model.train()
    if frozen_bn:  # inference-mode BatchNorm with fixed parameters: an affine map
        model.bn.eval().requires_grad_(False)


def taylor(model, frozen_bn=False):
    """A controller whose Taylor totals saw two training-mode MSE steps."""
    ctrl, model = create_compressed_model(model, config("taylor", 0.0))
    train_mode(model, frozen_bn)
    for x, y in batches():
        model.zero_grad()
        (loss(model, x, y) + ctrl.loss()).backward()
    return ctrl


def by_hand(model, on_batchnorm=True, frozen_bn=False):
    """The Taylor totals of ``mid`` from plain autograd, in float64."""
    train_mode(model, frozen_bn)
    conv, bn = model.mid, model.bn
    total = np.zeros(16)
    for x, y in batches():
        model.zero_grad()
        loss(model, x, y).backward()
        if on_batchnorm:
            per_filter = bn.weight.grad * bn.weight + bn.bias.grad * bn.bias
        else:
            per_filter = (conv.weight.grad * conv.weight).sum(dim=(1, 2, 3))
        total += per_filter.detach().double().numpy() ** 2
    return total


def kept(ctrl):
    return np.flatnonzero(ctrl.keeps()["mid"]["out"]).tolist()


def test_scores_are_the_batchnorm_terms_by_hand():
    expected = by_hand(net())
    ctrl = taylor(net())
    np.testing.assert_allclose(ctrl.taylor.scores("mid")[:, 0], expected, rtol=1e-4,
                               atol=1e-6 * expected.max())  # fmt: skip
    ctrl.set_pruning_level(0.5)
    assert kept(ctrl) == np.sort(np.argsort(-expected)[:8]).tolist()


def test_scaling_a_filter_changes_nothing():
    """A training-mode BatchNorm undoes a filter's scale: its score (and the ranking) stay,
    where the weight's ``sum g*w`` is rounding noise that scaling reshuffles."""
    scaled = net()
    with torch.no_grad():
        scaled.mid.weight[[2, 7, 11]] *= 10.0
    plain, big = taylor(net()), taylor(scaled)
    np.testing.assert_allclose(big.taylor.scores("mid"), plain.taylor.scores("mid"), rtol=1e-3)
    plain.set_pruning_level(0.5)
    big.set_pruning_level(0.5)
    assert kept(big) == kept(plain)


def test_channels_silenced_after_the_batchnorm_go_first():
    """Zero scale and shift: the channel's output is 0 whatever the conv does, so it
    scores 0 although its filter is the largest (which L1 keeps)."""
    model = net()
    with torch.no_grad():
        model.mid.weight[SILENT] *= 10.0
        model.bn.weight[SILENT] = 0.0
        model.bn.bias[SILENT] = 0.0
    l1, _ = create_compressed_model(net(), config("L1", 0.5))
    ctrl = taylor(model)
    totals = ctrl.taylor.scores("mid")[:, 0]
    assert np.all(totals[SILENT] == 0) and totals[LIVE].min() > 0
    ctrl.set_pruning_level(0.5)
    assert kept(ctrl) == LIVE and kept(l1) != LIVE


def test_without_batchnorm_the_weight_scores():
    model = net(bn=False)
    expected = by_hand(net(bn=False), on_batchnorm=False)
    np.testing.assert_allclose(taylor(model).taylor.scores("mid")[:, 0], expected, rtol=1e-4,
                               atol=1e-6 * expected.max())  # fmt: skip


def on_output(model, frozen_bn):
    """The totals of ``mid`` as ``sum g_y * y`` over the BatchNorm's output, in float64."""
    train_mode(model, frozen_bn)
    total = np.zeros(16)
    for x, y in batches():
        out = model.bn(model.mid(model.stem(x)))
        out.retain_grad()
        ((model.head(torch.relu(out)).mean(dim=(2, 3)) - y) ** 2).mean().backward()
        total += (out.grad * out).sum(dim=(0, 2, 3)).detach().double().numpy() ** 2
    return total


@pytest.mark.parametrize("mode", ["frozen, inference mode", "frozen, training mode",
                                  "affine off"])  # fmt: skip
def test_a_batchnorm_without_gradients_scores_on_its_output(mode):
    """No gradient reaches the BatchNorm's parameters: the weight's ``sum g*w`` scored,
    which a training-mode BatchNorm makes rounding noise (about 1e-14 against 1e-4 for
    the other layers; the ranking changed with the batch order). Its output's
    ``sum g*y`` scores now, the same term its parameters give when they train."""

    def model():
        built = net()
        if mode == "affine off":
            built.bn = nn.BatchNorm2d(16, affine=False)
        built.bn.requires_grad_(False)  # before the controller looks
        return built

    frozen = mode == "frozen, inference mode"
    expected = on_output(model(), frozen)
    scores = taylor(model(), frozen_bn=frozen).taylor.scores("mid")[:, 0]
    assert expected.min() > 1e-6 * expected.max()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6 * expected.max())
    if mode == "frozen, training mode":  # what the trainable BatchNorm's parameters give
        np.testing.assert_allclose(scores, by_hand(net()), rtol=1e-4)


@pytest.mark.parametrize("with_quantization", [False, True])
def test_a_grad_scaler_handed_over_does_not_weigh_the_steps(with_quantization):
    """The hooks saw gradients of the scaled loss: each step counted by its scale squared,
    and a scale that grows weighed the later steps more (the masks changed)."""

    def totals(scaler):
        cfg = config("taylor", 0.0)
        if with_quantization:
            cfg["compression"] = [cfg["compression"], {
                "algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0}}}]
        ctrl, model = create_compressed_model(net(), cfg)
        if scaler is not None:
            ctrl.set_grad_scaler(scaler)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        for x, y in batches(3):
            optimizer.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            if scaler is None:
                loss.backward()
                continue
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        pruning = ctrl.get("filter_pruning") if with_quantization else ctrl
        return pruning.taylor.scores("mid")[:, 0]

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    np.testing.assert_allclose(totals(scaler), totals(None), rtol=1e-4)
    assert scaler.get_scale() > 1024.0  # it grew


@pytest.mark.parametrize("mode", ["affine off", "frozen conv, no BatchNorm"])
def test_the_stripped_model_and_copies_carry_no_taylor_hook(mode):
    """The output hook went with the stripped copy: its first backward pass added 8
    channels to the 16 of the totals ("The size of tensor a (16) must match the size of
    tensor b (8)"), and torch.save could not pickle it. A deep copy of the masked model
    added its steps to the controller's totals."""
    import copy
    import io

    model = net(bn=mode == "affine off")
    if mode == "affine off":
        model.bn = nn.BatchNorm2d(16, affine=False)
    else:
        model.mid.requires_grad_(False)  # scored from its output
    ctrl, model = create_compressed_model(model, config("taylor", 0.5))
    model.train()
    x, y = batches(1)[0]
    loss(model, x, y).backward()
    before = ctrl.taylor.scores("mid").copy()
    twin = copy.deepcopy(model)
    loss(twin, x, y).backward()
    np.testing.assert_array_equal(ctrl.taylor.scores("mid"), before)
    small = ctrl.strip()
    loss(small.train(), x, y).backward()
    torch.save(small, io.BytesIO())


class ReluFirst(Net):
    """mid conv -> ReLU -> BatchNorm: the BatchNorm still makes the filters' scale moot."""

    def forward(self, x):
        return self.head(self.bn(torch.relu(self.mid(self.stem(x))))).mean(dim=(2, 3))


def test_a_batchnorm_after_a_relu_scores_the_conv():
    """The conv was scored on its weight's ``sum g*w``, near zero (4e-7 against 1e-2)."""

    def model():
        built = net()
        built.__class__ = ReluFirst
        return built

    expected = by_hand(model())
    np.testing.assert_allclose(taylor(model()).taylor.scores("mid")[:, 0], expected, rtol=1e-4,
                               atol=1e-6 * expected.max())  # fmt: skip


class Dense(nn.Module):
    """A DenseNet block: ``c1`` is read by ``bn1`` and ``bn2``, each inside a concatenation,
    ``c2`` by ``bn2``."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.bn1 = nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(12)
        self.c2, self.bn2 = nn.Conv2d(12, 4, 3, padding=1), nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x0 = torch.relu(self.bn0(self.stem(x)))
        y1 = self.c1(x0)
        y2 = self.c2(torch.relu(self.bn1(torch.cat([x0, y1], 1))))
        out = torch.relu(self.bn2(torch.cat([x0, y1, y2], 1)))
        return self.head(out).mean(dim=(2, 3))


def test_batchnorms_reading_a_layer_inside_concatenations_score_it():
    """The convs of a DenseNet block were scored on their weights' ``sum g*w``, which
    the BatchNorms after them make about 1e-14 against 1e-3."""

    def model():
        torch.manual_seed(0)
        return randomize_bn(Dense())

    cfg = make_config((1, 3, 12, 12), filter_importance="taylor", schedule="baseline",
                      pruning_init=0.0, prune_first_conv=True)  # fmt: skip
    ctrl, compressed = create_compressed_model(model(), cfg)
    compressed.train()
    dense = model().train()
    expected = {"c1": np.zeros(4), "c2": np.zeros(4)}
    for x, y in batches():
        for m in (compressed, dense):
            m.zero_grad()
            loss(m, x, y).backward()
        terms = {bn: (bn.weight.grad * bn.weight + bn.bias.grad * bn.bias).detach().double().numpy()
                 for bn in (dense.bn1, dense.bn2)}  # fmt: skip
        expected["c1"] += terms[dense.bn1][8:12] ** 2 + terms[dense.bn2][8:12] ** 2
        expected["c2"] += terms[dense.bn2][12:16] ** 2
    for name, want in expected.items():
        np.testing.assert_allclose(ctrl.taylor.scores(name)[:, 0], want, rtol=1e-4,
                                   atol=1e-6 * want.max())  # fmt: skip


class SumFirst(nn.Module):
    """``bn(a(x) + b(x))``, as in a pre-activation ResNet's next block."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(8, 6, 1)
        self.bn, self.head = nn.BatchNorm2d(6), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.head(torch.relu(self.bn(self.a(x) + self.b(x)))).mean(dim=(2, 3))


def test_layers_added_before_a_batchnorm_take_its_term():
    """Both convs were scored on their weights' ``sum g*w``, which cancel between them
    (the BatchNorm undoes the sum's scale): each now takes the BatchNorm's term."""

    def model():
        torch.manual_seed(0)
        return randomize_bn(SumFirst())

    ctrl, compressed = create_compressed_model(model(), config("taylor", 0.0))
    compressed.train()
    dense = model().train()
    expected, cancel = np.zeros(6), 0.0
    for x, y in batches():
        for m in (compressed, dense):
            m.zero_grad()
            loss(m, x, y).backward()
        bn = dense.bn
        term = bn.weight.grad * bn.weight + bn.bias.grad * bn.bias
        expected += term.detach().double().numpy() ** 2
        cancel += sum((c.weight.grad * c.weight).sum(dim=(1, 2, 3)) + c.bias.grad * c.bias
                      for c in (dense.a, dense.b)).abs().max().item()  # fmt: skip
    assert cancel < 1e-3 * expected.max() ** 0.5  # float32 rounding
    for name in ("a", "b"):
        np.testing.assert_allclose(ctrl.taylor.scores(name)[:, 0], expected, rtol=1e-4,
                                   atol=1e-6 * expected.max())  # fmt: skip
