"""Shrinking cuts every tensor through ``core.weights.slice_weight``: grouped convs too."""

import numpy as np
import pytest
import torch
from torch import nn
from torch_helpers import assert_strip_equal, make_config, randomize_bn

from filterprune import AnalysisError
from filterprune.core.graph import LayerInfo
from filterprune.torch import create_compressed_model
from filterprune.torch.shrink import shrink_model

# Per group of four stem channels two are weak, at different offsets in each group.
WEAK = [0, 1, 6, 7, 8, 11, 13, 14]
KEPT = [2, 3, 4, 5, 9, 10, 12, 15]


class GroupedNet(nn.Module):
    """A grouped conv (groups=4, in == out) sharing the stem's channels, then a
    depthwise conv with channel multiplier 2."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.bn1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 32, 1)
        self.bn2 = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 64, 3, padding=1, groups=32)
        self.bn3 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.bn1(self.g(x)))
        x = torch.relu(self.bn2(self.c2(x)))
        x = torch.relu(self.bn3(self.dw(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def grouped_net():
    torch.manual_seed(0)
    net = randomize_bn(GroupedNet(), seed=1).eval()
    with torch.no_grad():
        net.stem.weight[WEAK] *= 0.01
    return net


def test_grouped_conv_with_uneven_offsets_shrinks_to_the_masked_model(grouped_net):
    original = {k: v.clone() for k, v in grouped_net.state_dict().items()}
    config = make_config(pruning_init=0.5, prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(grouped_net, config)
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 32, 32))

    assert torch.equal(small.stem.weight, original["stem.weight"][KEPT])
    g = small.g
    assert (g.in_channels, g.out_channels, g.groups) == (8, 8, 4)
    # a kept filter of group b reads the kept channels of block b, at their offsets there
    cols = [[k % 4 for k in KEPT if k // 4 == o // 4] for o in KEPT]
    expected = torch.stack([original["g.weight"][o, c] for o, c in zip(KEPT, cols, strict=True)])
    assert torch.equal(g.weight, expected)
    assert torch.equal(g.bias, original["g.bias"][KEPT])
    for key in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(small.bn1, key), original[f"bn1.{key}"][KEPT]), key
    assert small.bn1.num_features == 8

    dw = small.dw
    assert dw.groups == dw.in_channels == small.c2.out_channels < 32
    assert dw.out_channels == 2 * dw.in_channels == small.bn3.num_features
    assert small.fc.in_features == dw.out_channels


def _grouped_layer(dtype):
    conv = nn.Conv2d(8, 8, 1, groups=2, bias=False).to(dtype)
    info = LayerInfo("0", "conv", {"weight": ((8, 4, 1, 1), ("out", "in", None, None))},
                     groups=2, weight="weight")  # fmt: skip
    return nn.Sequential(conv), {"0": info}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_shrink_keeps_dtype_and_picks_the_core_slice(dtype):
    model, infos = _grouped_layer(dtype)
    weight = model[0].weight.detach().clone()
    keep = np.array([1, 0, 0, 1, 0, 1, 1, 0], bool)  # two per group, different offsets
    shrink_model(model, {"0": {"out": keep, "in": keep}}, infos)
    w = model[0].weight
    assert w.dtype == dtype and w.shape == (4, 2, 1, 1)
    assert (model[0].in_channels, model[0].out_channels, model[0].groups) == (4, 4, 2)
    expected = weight[[0, 3, 5, 6]][:, [0, 3]]  # block 0 keeps offsets 0, 3; block 1: 1, 2
    expected[2:] = weight[[5, 6]][:, [1, 2]]
    assert torch.equal(w.detach(), expected)


def test_uneven_counts_per_group_are_an_analysis_error():
    model, infos = _grouped_layer(torch.float32)
    keep_in = np.array([1, 1, 1, 0, 1, 0, 0, 0], bool)  # block 0 keeps 3, block 1 keeps 1
    keep_out = np.ones(8, bool)
    with pytest.raises(AnalysisError, match=r"^0: cannot cut 'weight': .*same number of channels"):
        shrink_model(model, {"0": {"out": keep_out, "in": keep_in}}, infos)


class _PixelMaskedConv(nn.Conv2d):
    """PixelCNN's masked conv as CompressAI writes it: a buffer shaped as the weight,
    multiplied into the weight in place at each forward."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", torch.ones_like(self.weight.data))
        h, w = self.mask.shape[2:]
        self.mask[:, :, h // 2, w // 2:] = 0
        self.mask[:, :, h // 2 + 1:] = 0

    def forward(self, x):
        self.weight.data *= self.mask
        return super().forward(x)


class _ContextModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.ga, self.ctx = nn.Conv2d(3, 16, 3, padding=1), _PixelMaskedConv(16, 32, 5, padding=2)
        self.ep = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        return self.ep(torch.nn.functional.leaky_relu(self.ctx(torch.round(self.ga(x)))))


def test_a_buffer_shaped_as_the_weight_is_cut_with_it():
    """The strip cut the masked conv's weight but not its mask: the stripped model failed
    (8 against 16)."""
    torch.manual_seed(0)
    config = make_config((2, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(_ContextModel(), config)
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16) * 3, tol=1e-5)
    assert small.ctx.mask.shape == small.ctx.weight.shape == (16, 8, 5, 5)


class TiedConvs(nn.Module):
    """One weight held by two convs: in a row (cut along other channels at each) or side
    by side on one input into one sum (cut alike)."""

    def __init__(self, side_by_side: bool):
        super().__init__()
        self.side_by_side = side_by_side
        self.stem, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)
        self.c1, self.c2 = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.c2.weight = self.c1.weight

    def forward(self, x):
        y = torch.relu(self.stem(x))
        if self.side_by_side:
            return self.head(torch.relu(self.c1(y) + self.c2(y)))
        return self.head(torch.relu(self.c2(torch.relu(self.c1(y)))))


@pytest.mark.parametrize("side_by_side", [False, True])
def test_a_weight_two_convs_hold_is_counted_once_and_stays_tied_where_cut_alike(side_by_side):
    """It was counted once per conv (the dense model's count too), and the strip untied it
    even where both cut it alike."""
    torch.manual_seed(0)
    dense = randomize_bn(TiedConvs(side_by_side))
    own = sum(p.numel() for p in dense.parameters())
    config = make_config((1, 3, 8, 8), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(dense, config)
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 8, 8))
    stats = ctrl.statistics()
    assert stats.full_params == own
    assert stats.current_params == sum(p.numel() for p in small.parameters())
    assert (small.c1.weight is small.c2.weight) == side_by_side
    assert small.c1.out_channels == 8


class ThreeHolders(nn.Module):
    """One weight held by three convs: two side by side (cut alike), one after them; a
    bias, zero at first, held by two convs that cut it differently; the head's weight also
    held by a module that is no layer."""

    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)
        self.c1, self.c2, self.c3 = (nn.Conv2d(16, 16, 3, padding=1) for _ in range(3))
        self.c2.weight = self.c3.weight = self.c1.weight
        self.a, self.b = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 1)
        self.b.bias = self.a.bias
        nn.init.zeros_(self.a.bias)
        self.extra = nn.Module()  # no layer: a regularizer keeping the weights it decays
        self.extra.w = self.head.weight

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = torch.relu(self.c1(torch.relu(self.c2(y) + self.c3(y))))
        return self.head(torch.relu(self.b(torch.relu(self.a(y)))))


def test_a_weight_three_convs_hold_stays_tied_where_cut_alike_and_counts_as_held():
    """The strip tied all holders or none (by value: a zero bias cut differently was tied),
    while the count took one tensor per distinct cut."""
    torch.manual_seed(0)
    config = make_config((1, 3, 8, 8), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(randomize_bn(ThreeHolders()), config)
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 8, 8))
    assert small.c2.weight is small.c3.weight and small.c1.weight is not small.c2.weight
    assert small.a.bias is not small.b.bias
    assert small.extra.w is small.head.weight  # it kept the whole weight
    assert ctrl.statistics().current_params == sum(p.numel() for p in small.parameters())
