"""GroupNorm is cut by whole groups, and its group count lowered to match.

A group's statistics span its channels, so a cut inside a group would change them: the
channels of one group are tied and go together. Where the group count is written in the
forward's code (not read from the module), nothing there is cut. Every model is compared
masked against stripped with every parameter redrawn.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_helpers import assert_strip_equal, make_config

import filterprune.torch.capture as capture_module
from filterprune.testing.zoo import nondegenerate
from filterprune.torch import create_compressed_model


class ReadsCount(nn.GroupNorm):
    """timm's form: its own forward, reading ``self.num_groups``."""

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class FixedCount(nn.GroupNorm):
    """A forward that writes the group count in code: a cut could not lower it."""

    def forward(self, x):
        return F.group_norm(x, 4, self.weight, self.bias, self.eps)


class Net(nn.Module):
    """GroupNorms of 4, 8 and 32 groups (one channel each), across a residual add."""

    def __init__(self, norm=nn.GroupNorm, affine=True):
        super().__init__()
        self.c1, self.g1 = nn.Conv2d(3, 32, 3, padding=1), norm(4, 32, affine=affine)
        self.c2, self.g2 = nn.Conv2d(32, 32, 3, padding=1), norm(8, 32)
        self.c3, self.g3 = nn.Conv2d(32, 32, 3, padding=1), norm(32, 32)
        self.head = nn.Conv2d(32, 5, 1)

    def forward(self, x):
        x = F.silu(self.g1(self.c1(x)))
        y = F.relu(self.g2(self.c2(x))) + x
        return self.head(F.relu(self.g3(self.c3(y))))


class ConvNorm(nn.Module):
    """A conv, a GroupNorm of ``groups`` and a head. ``borrowed``: this module's code, not
    the norm's, calls ``F.group_norm`` with the norm's weights."""

    def __init__(self, groups=4, borrowed=False):
        super().__init__()
        self.c1, self.gn = nn.Conv2d(3, 32, 3, padding=1), nn.GroupNorm(groups, 32)
        self.head, self.borrowed = nn.Conv2d(32, 5, 1), borrowed

    def forward(self, x):
        x = self.c1(x)
        if self.borrowed:
            return self.head(F.group_norm(x, 4, self.gn.weight, self.gn.bias))
        return self.head(self.gn(x))


def prune(model, **params):
    nondegenerate(model)
    config = make_config((1, 3, 16, 16), prune_first_conv=True, **params)
    ctrl, model = create_compressed_model(model, config)
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16), tol=1e-5)
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    return small, held


@pytest.mark.parametrize("norm", [nn.GroupNorm, ReadsCount])
def test_whole_groups_are_cut_and_the_group_count_follows(norm):
    small, held = prune(Net(norm), filters_multiple_of=1)
    assert "c1" not in held and "c3" not in held
    # c1 and c2 are tied by the add; g1's groups of 8 channels are the coarsest
    assert small.c1.out_channels == small.c2.out_channels == 16
    assert (small.g1.num_groups, small.g1.num_channels) == (2, 16)
    assert (small.g2.num_groups, small.g2.num_channels) == (4, 16)
    assert (small.g3.num_groups, small.g3.num_channels) == (16, 16)


def test_a_group_of_eight_channels_counts_as_eight_filters_for_rounding():
    small, _ = prune(Net(), filters_multiple_of=8)  # the default rounding
    assert small.c1.out_channels == 16 and small.c3.out_channels == 16


def test_a_groupnorm_without_affine_is_cut_too():
    small, _ = prune(Net(affine=False), filters_multiple_of=1)
    assert (small.g1.num_groups, small.g1.num_channels) == (2, 16)


class OwnNorm(nn.Module):
    """A module of the user's own (no GroupNorm) passing its parameters and a count."""

    def __init__(self, groups, channels, affine=True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x):
        return F.group_norm(x, 4, self.weight, self.bias, 1e-5)


FIXED = "group_norm: group count is fixed in code (4); an nn.GroupNorm's count is lowered"


@pytest.mark.parametrize("build, why", [
    (lambda: Net(FixedCount), FIXED), (lambda: ConvNorm(borrowed=True), FIXED),
    (lambda: ConvNorm(1), "statistics span channels"), (lambda: Net(OwnNorm), FIXED),
    (lambda: Net(OwnNorm, affine=False), FIXED)])
def test_a_group_count_fixed_in_code_or_one_group_keeps_the_channels(build, why, monkeypatch):
    """A count written in code was read as one group ("statistics span channels") where a
    module of the user's own passed it; either capture says what it is."""
    small, held = prune(build())
    assert why in held["c1"] and small.c1.out_channels == 32
    monkeypatch.setattr(capture_module, "capture_fx", _refuse_fx)
    with pytest.warns(UserWarning, match="captured with torch.export"):
        small, held = prune(build())
    assert why in held["c1"] and small.c1.out_channels == 32


def _refuse_fx(*args, **kwargs):
    raise capture_module._TraceError("torch.fx refused")


def test_the_torch_export_capture_cuts_groups_alike(monkeypatch):
    monkeypatch.setattr(capture_module, "capture_fx", _refuse_fx)
    small, _ = prune(Net(), filters_multiple_of=1)
    assert (small.g1.num_groups, small.g1.num_channels) == (2, 16)


def test_an_instance_norm_without_parameters_is_given_its_new_width(monkeypatch):
    """torch.export records its call without the module's parameters: the stripped module
    kept num_features=16, and torch warned at every forward."""

    class Instance(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.n1 = nn.Conv2d(3, 16, 3, padding=1), nn.InstanceNorm2d(16)
            self.head = nn.Conv2d(16, 5, 1)

        def forward(self, x):
            return self.head(F.relu(self.n1(self.c1(x))))

    monkeypatch.setattr(capture_module, "capture_fx", _refuse_fx)
    small, _ = prune(Instance(), filters_multiple_of=1)
    assert small.c1.out_channels == small.n1.num_features == 8


class DropsAfter(nn.GroupNorm):
    """A fixed count and dropout: two training-mode runs would differ anyway."""

    def forward(self, x):
        return F.dropout(F.group_norm(x, 4, self.weight, self.bias, self.eps), 0.5, self.training)


def test_a_random_forward_does_not_pass_for_reading_the_count():
    model = Net()
    model.g2 = DropsAfter(8, 32)
    small, held = prune(model.train())
    assert "count is fixed in code" in held["c2"] and small.g2.num_groups == 8


def test_the_torch_export_capture_cuts_a_groupnorm_without_affine(monkeypatch):
    def refuse(*args, **kwargs):
        raise capture_module._TraceError("torch.fx refused")

    monkeypatch.setattr(capture_module, "capture_fx", refuse)
    small, _ = prune(Net(affine=False), filters_multiple_of=1)
    assert (small.g1.num_groups, small.g1.num_channels) == (2, 16)


def test_global_ranking_counts_the_filters_a_group_stands_for():
    small, _ = prune(Net(), all_weights=True, filters_multiple_of=1)
    kept = small.c1.out_channels + small.c3.out_channels  # of 64 filters, 32 go
    assert small.c1.out_channels < 32 and 32 - 8 < kept <= 32  # a group of 8 may overshoot


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_convert_cuts_the_groups_of_an_export_below_opset_21(exporter, affine):
    """Both exporters write GroupNorm as Reshape / InstanceNormalization / Reshape / Mul /
    Add below opset 21: read node by node, every channel was kept. Without affine the
    TorchScript exporter multiplies by a scalar 1: the channel count comes from the conv."""
    from filterprune.testing.convert import check_convert

    row = check_convert(Net(affine=affine), 16, exporter=exporter)
    assert row["exporter"] == exporter
    assert row["same_weights"] and row["kept_zero"] == 0, row
    assert row["rel_diff"] < 1e-5, row
    assert row["flops_kept"] == pytest.approx(row["strip_flops_kept"], rel=1e-6), row
    assert row["flops_kept"] < 0.8, row
