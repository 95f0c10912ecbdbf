"""The ``taylor`` and ``bn_scale`` importances on PyTorch models, set from the config."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch_helpers import classify_steps, make_config, randomize_bn

from filterprune.errors import ConfigError
from filterprune.testing.cifar_nets import ResNet20
from filterprune.torch import analyze_model, create_compressed_model
from filterprune.torch.signals import TaylorAccumulator


def resnet(seed=0):
    torch.manual_seed(seed)
    return randomize_bn(ResNet20())


def kept_out(ctrl, layer):
    return np.flatnonzero(ctrl.keeps()[layer]["out"])


def config(importance, **params):
    return make_config((1, 1, 28, 28), filter_importance=importance, schedule="baseline",
                       **params)  # fmt: skip


def test_bn_scale_keeps_the_largest_gammas():
    model = resnet()
    order = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    gamma = torch.linspace(0.1, 1.6, 16)[order]
    with torch.no_grad():
        model.layers[0].bn1.weight.copy_(gamma)
    ctrl, _ = create_compressed_model(model, config("bn_scale", pruning_init=0.5))
    expected = np.sort(np.argsort(-gamma.numpy())[:8])
    assert kept_out(ctrl, "layers.0.conv1").tolist() == expected.tolist()
    # L2 chooses by the weight and keeps other filters
    l2, _ = create_compressed_model(resnet(), config("L2", pruning_init=0.5))
    assert kept_out(l2, "layers.0.conv1").tolist() != expected.tolist()


def test_bn_scale_without_batchnorm_is_refused():
    net = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
                        nn.Conv2d(16, 4, 1))  # fmt: skip
    with pytest.raises(ConfigError, match=r"^`filter_importance`='bn_scale' needs a BatchNorm .*"
                       r"1 have none \(2\)\..*Received: filter_importance='bn_scale'\.$"):
        create_compressed_model(net, config("bn_scale", pruning_init=0.5))


def test_bn_scale_after_a_frozen_batchnorm_says_it_has_no_scale_to_read():
    """torchvision's FrozenBatchNorm2d (detection backbones) holds its scale as a buffer:
    the refusal said the layers had no BatchNorm."""
    from torchvision.ops import FrozenBatchNorm2d

    net = nn.Sequential(nn.Conv2d(1, 16, 3), FrozenBatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 4, 1))  # fmt: skip
    with pytest.raises(ConfigError, match=r"1 have none \(0\); the BatchNorm after 1 of them has "
                       r"no scale parameter \(a FrozenBatchNorm2d holds it as a fixed buffer"):
        create_compressed_model(net, config("bn_scale", pruning_init=0.5, prune_first_conv=True))


def gradients_only(model, ctrl, steps=3):
    """Training steps at learning rate 0: gradients flow, weights stay."""
    classify_steps(model, ctrl, torch.optim.SGD(model.parameters(), lr=0.0), steps)


def test_taylor_prunes_filters_without_gradient_first():
    """Channels silenced by a zero BN scale and shift score zero: Taylor drops them
    although their weights are the largest (which L1 would keep)."""
    model = resnet()
    silent = [0, 3, 5, 6, 9, 10, 12, 15]
    with torch.no_grad():
        model.layers[1].conv1.weight[silent] *= 10.0
        model.layers[1].bn1.weight[silent] = 0.0
        model.layers[1].bn1.bias[silent] = 0.0
    ctrl, model = create_compressed_model(model, config("taylor", pruning_init=0.0))
    model.train()
    gradients_only(model, ctrl)
    ctrl.set_pruning_level(0.5)
    assert sorted(set(range(16)) - set(kept_out(ctrl, "layers.1.conv1").tolist())) == silent
    totals = ctrl.taylor.totals["layers.1.conv1"]
    assert torch.all(totals[silent] == 0) and torch.all(totals[[1, 2, 4]] > 0)


def test_taylor_before_any_step_uses_l1():
    model = resnet()
    ctrl, _ = create_compressed_model(model, config("taylor", pruning_init=0.5))
    l1, _ = create_compressed_model(resnet(), config("L1", pruning_init=0.5))
    assert kept_out(ctrl, "layers.1.conv1").tolist() == kept_out(l1, "layers.1.conv1").tolist()


def test_taylor_scores_accumulate_and_strip_drops_hooks():
    ctrl, model = create_compressed_model(resnet(), config("taylor", pruning_init=0.0))
    model.train()
    gradients_only(model, ctrl, 1)
    once = ctrl.taylor.totals["layers.0.conv1"].clone()
    gradients_only(model, ctrl, 2)
    assert torch.all(ctrl.taylor.totals["layers.0.conv1"] >= once)
    assert not torch.equal(ctrl.taylor.totals["layers.0.conv1"], once)
    small = ctrl.strip()
    small(torch.randn(2, 1, 28, 28)).sum().backward()  # the copy carries no hooks


def test_a_non_finite_backward_adds_nothing_to_the_taylor_totals():
    ctrl, model = create_compressed_model(resnet(), config("taylor", pruning_init=0.0))
    model.train()
    gradients_only(model, ctrl, 1)
    before = {k: v.clone() for k, v in ctrl.taylor.totals.items()}
    # what a mixed-precision step that overflows (and its GradScaler skips) sends back
    (model(torch.randn(2, 1, 28, 28)).sum() * float("inf")).backward()
    for name, total in ctrl.taylor.totals.items():
        assert torch.equal(total, before[name]), name


@pytest.mark.parametrize("importance", ["taylor", "bn_scale"])
def test_dry_run_refuses_signal_importances(importance):
    message = (r"^`filter_importance` must be one a dry run \(analyze\) can compute; "
               rf"'{importance}' needs .*Use 'L1', 'L2' or 'geometric_median'\. "
               rf"Received: filter_importance='{importance}'\.$")
    with pytest.raises(ConfigError, match=message):
        analyze_model(resnet(), config(importance))


@pytest.mark.parametrize("layer", [nn.Conv2d(3, 6, 3), nn.ConvTranspose2d(3, 6, 3),
                                   nn.Linear(5, 6)],
                         ids=["conv", "conv_transpose", "linear"])  # fmt: skip
def test_taylor_of_a_computed_weight_equals_that_of_the_plain_weight(layer):
    """A weight-normed layer's weight is computed in each forward: its score is read from
    the output, and equals the score of the plain layer with the same weight."""
    torch.manual_seed(0)
    layer.reset_parameters()  # made at collection: its draw depended on the tests before
    with torch.no_grad():
        layer.bias.normal_()
    normed = nn.utils.parametrizations.weight_norm(copy.deepcopy(layer))
    x = torch.randn(4, 3, 7, 7) if not isinstance(layer, nn.Linear) else torch.randn(4, 2, 5)
    scores = []
    for module in (layer, normed):
        acc = TaylorAccumulator({"l": module})
        for _ in range(2):
            (module(x).sin() * torch.linspace(0.5, 1.5, module(x).shape[-1])).sum().backward()
        scores.append(acc.scores("l"))
        acc.remove()
    # a score is a square of a sum: one that nearly cancels keeps only float32's absolute error
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-4, atol=1e-6 * scores[0].max())
    assert scores[0].shape == (6, 1) and scores[0].min() > 0


def test_taylor_of_a_grouped_transposed_conv_scores_each_of_its_filters():
    """Weight (in, out/groups, k, k): filter f is column f % (out/groups) of its group's
    rows; its score is read from the output and equals the one from the weight's grad."""
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(4, 6, 3, groups=2)
    acc = TaylorAccumulator({"l": layer})
    x = torch.randn(3, 4, 5, 5)
    (layer(x).sin() * torch.linspace(0.5, 1.5, 7)).sum().backward()
    rows, cols = layer.weight.shape[0] // 2, layer.weight.shape[1]
    g_w = (layer.weight.grad * layer.weight).sum((2, 3))  # (in, out/groups)
    by_weight = [g_w[f // cols * rows:(f // cols + 1) * rows, f % cols].sum() ** 2
                 for f in range(6)]  # fmt: skip
    bias_part = layer.bias.grad * layer.bias  # y - b leaves the bias out
    assert bias_part.abs().max() > 0
    np.testing.assert_allclose(acc.scores("l")[:, 0], torch.stack(by_weight).detach().numpy(),
                               rtol=1e-4)  # fmt: skip


def test_taylor_scores_a_frozen_layer_from_its_output(caplog):
    """A frozen conv (transfer learning) failed to build: its weight takes no gradient
    hook. Its output's gradient gives the same sum. A layer no gradient reaches (here
    every layer while the stem's input takes none) says so."""
    caplog.set_level("WARNING", logger="filterprune")
    model = resnet()
    model.layers[1].conv1.requires_grad_(False)
    model.layers[1].bn1.requires_grad_(False)  # scored on the BatchNorm's output
    ctrl, model = create_compressed_model(model, config("taylor", pruning_init=0.0))
    model.train()
    gradients_only(model, ctrl)
    totals = ctrl.taylor.totals["layers.1.conv1"]
    assert totals.shape == (16,) and torch.all(totals > 0)
    assert "no gradient has reached" not in caplog.text
    ctrl.taylor.totals.pop("layers.2.conv1")  # as if no backward pass reached it
    ctrl.set_pruning_level(0.5)
    assert "no gradient has reached layers.2.conv1, so every layer" in caplog.text


def test_taylor_with_gradients_all_zero_ranks_by_l1_and_says_so(caplog):
    """A loss scaled by 0 left every total 0: every filter tied and the first ones were
    kept in every layer, without a word."""
    caplog.set_level("WARNING", logger="filterprune")
    ctrl, model = create_compressed_model(resnet(), config("taylor", pruning_init=0.0))
    model.train()
    for _ in range(2):
        model.zero_grad()
        (model(torch.randn(4, 1, 28, 28)).sum() * 0.0).backward()
    assert ctrl.taylor.passes["layers.1.conv1"] == 2
    ctrl.set_pruning_level(0.5)
    l1, _ = create_compressed_model(resnet(), config("L1", pruning_init=0.5))
    layer = "layers.1.conv1"
    assert kept_out(ctrl, layer).tolist() == kept_out(l1, layer).tolist() != list(range(8))
    assert "every gradient that reached" in caplog.text and "was zero or not finite" in caplog.text
