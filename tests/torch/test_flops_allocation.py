"""A FLOPs target removes between the target and the target + 0.02 of the FLOPs, with
the multiple-of-8 rounding on, by letting groups take different levels."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch_helpers import assert_strip_equal, make_config, randomize_bn

from filterprune.core.allocation import keep_steps
from filterprune.testing.cifar_nets import MobileNetV2Small, ResNet20
from filterprune.testing.zoo import nondegenerate
from filterprune.torch import create_compressed_model


def compressed(model, level, **params):
    torch.manual_seed(0)
    randomize_bn(model)
    params = {"pruning_flops_target": level, "schedule": "baseline", "prune_first_conv": True,
              "prune_downsample_convs": True, **params}
    return create_compressed_model(model, make_config((1, 1, 28, 28), pruning_init=level, **params))


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_resnet20_flops_target_lands_in_window(target):
    ctrl, model = compressed(ResNet20(), target)
    removed = 1 - ctrl.statistics().flops_kept
    assert target <= removed <= target + 0.02
    kept = [s.kept for s in ctrl.statistics().layers if s.kept < s.filters]
    assert all(k % 8 == 0 for k in kept)
    assert_strip_equal(ctrl, model, torch.randn(2, 1, 28, 28))


def test_resnet20_targets_give_different_models():
    """The old uniform level jumped from 0.67 to 0.25 kept: 0.5 and 0.7 gave one model."""
    kept = [compressed(ResNet20(), t)[0].statistics().flops_kept for t in (0.5, 0.7)]
    assert kept[0] - kept[1] > 0.15


def test_groups_take_different_levels():
    ctrl, _ = compressed(ResNet20(), 0.5)
    levels = {round(s.level, 3) for s in ctrl.statistics().layers if s.kept < s.filters}
    assert len(levels) > 1


def test_least_important_blocks_go_first():
    """A group with 24 tiny filters of 32 loses them before the others lose any block
    (scores are normalised per group, so only relative importance counts)."""
    model = ResNet20()
    with torch.no_grad():
        model.layers[4].conv1.weight[:24].mul_(1e-3)
    ctrl, _ = compressed(model, 0.3, filter_importance="L2")
    by_name = {s.name: s for s in ctrl.statistics().layers}
    weak = by_name["layers.4.conv1"]
    assert weak.kept == 8  # down to its floor: 32 * 0.1 rounded up to 8
    others = [by_name[f"layers.{i}.conv1"] for i in (3, 5)]
    assert all(o.kept > weak.kept for o in others)


@pytest.mark.parametrize("outlier", [1.3, 2.5])
def test_one_strong_filter_does_not_strip_its_group(outlier):
    """One filter 1.3x or 2.5x the rest (ordinary in a trained net): normalised by the
    group's largest score, the rest sat below every other group's, and the group went
    down to its 8 of 32 at any target. By the mean, and with blocks past the uniform
    level counting double, it keeps at least that level's 16."""
    model = ResNet20()
    with torch.no_grad():
        model.layers[4].conv1.weight[0].mul_(outlier)
    ctrl, _ = compressed(model, 0.5, filter_importance="L2")
    assert 0.5 <= 1 - ctrl.statistics().flops_kept <= 0.52
    by_name = {s.name: s for s in ctrl.statistics().layers}
    assert by_name["layers.4.conv1"].kept >= 16


def test_an_exactly_reachable_target_is_met_exactly():
    """Keeping 32 of 40 filters removes 0.19999999999999996 in floats: a 0.2 target was
    passed by the next step (0.4 of the FLOPs removed with blocks of 8, 0.225 without)."""
    model = nn.Sequential(nn.Conv2d(1, 40, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(40, 10, 1, bias=False))  # fmt: skip
    for multiple in (1, 8):
        ctrl, _ = compressed(copy.deepcopy(model), 0.2, filters_multiple_of=multiple,
                             filter_importance="L2")  # fmt: skip
        assert abs((1 - ctrl.statistics().flops_kept) - 0.2) < 1e-9


def test_mobilenet_flops_target_lands_in_window():
    ctrl, model = compressed(MobileNetV2Small(), 0.5)
    assert 0.5 <= 1 - ctrl.statistics().flops_kept <= 0.52
    assert_strip_equal(ctrl, model, torch.randn(2, 1, 28, 28))


def test_pruning_target_stays_uniform():
    torch.manual_seed(0)
    ctrl, _ = create_compressed_model(ResNet20(), make_config((1, 1, 28, 28), pruning_init=0.5,
                                                              schedule="baseline"))  # fmt: skip
    ratios = {s.kept / s.filters for s in ctrl.statistics().layers if s.kept < s.filters}
    assert ratios == {0.5}


def test_keep_steps():
    assert keep_steps(64, 8) == [64, 56, 48, 40, 32, 24, 16, 8]
    assert keep_steps(16, 8) == [16, 8]
    assert keep_steps(10, 1)[-1] == 1 and len(keep_steps(10, 1)) == 10
    assert np.all(np.diff(keep_steps(100, 8)) < 0)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_no_rounding_lands_in_window(target):
    """Without rounding, one uniform level moves every group of a width at once (0.5 on
    ResNet-20 removed 0.527); the level just short of the target is topped up channel by
    channel, least important first, so the target holds."""
    ctrl, model = compressed(ResNet20(), target, filters_multiple_of=1)
    removed = 1 - ctrl.statistics().flops_kept
    assert target <= removed <= target + 0.02
    assert_strip_equal(ctrl, model, torch.randn(2, 1, 28, 28))


class _OneGroup(torch.nn.Module):
    """One prunable group of 32 filters: in blocks of 8 the FLOPs removed jump from 0.494
    (16 kept) to 0.741 (8 kept), so a target of 0.5 cannot land in its window."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.b = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.c = torch.nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.c(torch.softmax(self.b(self.a(x)), 1))  # b's group is held


def test_a_target_the_blocks_pass_is_said_once(caplog):
    caplog.set_level("WARNING", logger="filterprune")  # a CLI test may raise it
    torch.manual_seed(0)
    params = {"pruning_flops_target": 0.5, "prune_first_conv": True, "pruning_steps": 2}
    ctrl, _ = create_compressed_model(_OneGroup(), make_config(pruning_init=0.0, **params))
    for _ in range(4):
        ctrl.scheduler.epoch_step()
    assert 1 - ctrl.statistics().flops_kept == pytest.approx(0.741, abs=1e-3)
    assert caplog.text.count("`pruning_flops_target` 0.5 is passed: 0.741") == 1


class _Grouped(torch.nn.Module):
    """Grouped convs keep equal counts per group: their channels go in blocks."""

    def __init__(self):
        super().__init__()
        conv, bn = torch.nn.Conv2d, torch.nn.BatchNorm2d
        self.stem, self.bs = conv(1, 32, 3, padding=1), bn(32)
        self.g1, self.b1 = conv(32, 64, 3, padding=1, groups=4), bn(64)
        self.g2, self.b2 = conv(64, 64, 3, padding=1, groups=8), bn(64)
        self.pw, self.b3 = conv(64, 96, 1), bn(96)
        self.fc = torch.nn.Linear(96, 10)

    def forward(self, x):
        for conv, bn in ((self.stem, self.bs), (self.g1, self.b1), (self.g2, self.b2),
                         (self.pw, self.b3)):  # fmt: skip
            x = torch.relu(bn(conv(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("target", [0.3, 0.5])
def test_global_ranking_lands_in_window(target):
    """One global level stepped past the window by a grouped conv's block (0.417 removed
    at a target of 0.3); it is topped up channel by channel as without rounding."""
    ctrl, model = compressed(_Grouped(), target, all_weights=True)
    removed = 1 - ctrl.statistics().flops_kept
    assert target <= removed <= target + 0.02
    assert_strip_equal(ctrl, model, torch.randn(2, 1, 28, 28))


class _GroupedReader(_OneGroup):
    """``a``'s channels are read by a conv in 4 groups: they go 4 at a time."""

    def __init__(self):
        super().__init__()
        self.b = torch.nn.Conv2d(32, 64, 3, padding=1, groups=4)
        self.c = torch.nn.Conv2d(64, 4, 1)


def test_a_target_the_steps_pass_names_their_cause(caplog):
    caplog.set_level("WARNING", logger="filterprune")
    torch.manual_seed(0)
    params = {"pruning_flops_target": 0.5, "prune_first_conv": True, "filters_multiple_of": 1}
    create_compressed_model(_GroupedReader(), make_config(pruning_init=0.5, **params))
    assert "0.597 of the FLOPs are removed" in caplog.text
    assert "grouped convolution" in caplog.text and "filters_multiple_of" not in caplog.text


def _transposed_net():
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.ConvTranspose2d(64, 48, 4, stride=2, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
        nn.ConvTranspose2d(48, 32, 3, stride=2, padding=1, output_padding=1, groups=4),
        nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 5, 1))  # fmt: skip


def _grouped_net():
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, groups=4), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, groups=8), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 48, 1), nn.BatchNorm2d(48), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10))  # fmt: skip


@pytest.mark.parametrize(("net", "target", "every_conv"), [
    (_transposed_net, 0.5, False), (_transposed_net, 0.6, False),
    (_grouped_net, 0.5, True), (_grouped_net, 0.7, True)])  # fmt: skip
def test_a_few_coarse_groups_land_in_window(net, target, every_conv):
    """With two or three groups the blocks taken first overshot: 0.5417, 0.6420, 0.5219
    and 0.7676 removed, where other counts of the same blocks land in the window (0.5007,
    0.6003, 0.5024, 0.7098). Blocks are now given back while the target stays met."""
    torch.manual_seed(0)
    model = nondegenerate(net())
    ctrl, model = create_compressed_model(model, make_config(
        (1, 3, 32, 32), pruning_init=target, pruning_flops_target=target, schedule="baseline",
        prune_first_conv=every_conv, prune_downsample_convs=every_conv))  # fmt: skip
    assert target <= 1 - ctrl.statistics().flops_kept <= target + 0.02
    assert_strip_equal(ctrl, model, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("init", [0.0, 0.2])
def test_a_flops_target_on_a_model_with_nothing_to_prune_keeps_it_whole(init):
    """Before: "cannot be reached ... Set pruning_flops_target <= 0.0000" at creation, or
    at the first epoch whose level passed 0; creation says nothing can be pruned."""
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    torch.manual_seed(0)
    ctrl, _ = create_compressed_model(model, make_config(
        (1, 1, 28, 28), pruning_init=init, pruning_flops_target=0.5, pruning_steps=3))  # fmt: skip
    for _ in range(3):
        ctrl.scheduler.epoch_step()
        assert ctrl.statistics().flops_kept == 1.0
