"""Pads and pools on the axis holding channels. A constant pad there adds channels around
them (option-A shortcuts of CIFAR ResNets): the ones it adds stay whole, the others are
cut through. A pool or a pad of another kind there mixes channels: they stay whole.
Every parameter and statistic is redrawn before comparing."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_helpers import assert_strip_equal, make_config, untraced

from filterprune.testing.zoo import nondegenerate
from filterprune.torch import create_compressed_model


def prune(model, shape=(2, 3, 16, 16)):
    config = make_config((1, *shape[1:]), prune_first_conv=True, prune_downsample_convs=True,
                         filters_multiple_of=1)  # fmt: skip
    ctrl, model = create_compressed_model(nondegenerate(model), config)
    small = assert_strip_equal(ctrl, model, torch.randn(*shape), tol=1e-5)
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    return small, held


class Block(nn.Module):
    """A basic block whose shortcut, where the width doubles, subsamples and pads zero
    channels on both sides (``module``: as ``nn.ConstantPad3d``, which pads a 4-d
    tensor's last three axes)."""

    def __init__(self, cin, cout, module):
        super().__init__()
        self.stride = 1 if cin == cout else 2
        self.c1 = nn.Conv2d(cin, cout, 3, self.stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        p = (cout - cin) // 2
        self.pad = nn.ConstantPad3d((0, 0, 0, 0, p, p), 0.0) if module else None
        self.widths = (0, 0, 0, 0, p, p)

    def forward(self, x):
        out = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        if self.stride == 1:
            return torch.relu(out + x)
        x = x[:, :, ::2, ::2]
        return torch.relu(out + (self.pad(x) if self.pad else F.pad(x, self.widths)))


class OptionA(nn.Module):
    def __init__(self, module=False, export=False):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(*(Block(a, b, module) for a, b in ((8, 8), (8, 16), (16, 32))))
        self.fc, self.export = nn.Linear(32, 10), export

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        if self.export:  # torch.fx refuses a tensor's length: torch.export captures
            x = untraced(x)
        return self.fc(self.blocks(x).mean((2, 3)))


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("module", [False, True], ids=["function", "module"])
def test_option_a_shortcuts_cut_the_residual_stream(module, export):
    small, held = prune(OptionA(module, export))
    stem, b1, b2 = small.stem.out_channels, small.blocks[1], small.blocks[2]
    assert stem < 8 and "stem" not in held
    # each stage's stream: the one before it, and the channels its pad adds, kept whole
    assert b1.c2.out_channels == stem + 8 and b2.c2.out_channels == b1.c2.out_channels + 16
    assert "channels it adds" in held["blocks.1.c2"]


class ChannelsAsSpace(nn.Module):
    """``a`` -> ``fn`` -> ``b``: ``fn`` pools or pads where the channels are."""

    def __init__(self, fn):
        super().__init__()
        self.a, self.b, self.fn = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1), fn

    def forward(self, x):
        return self.b(self.fn(self.a(x)))


def _channels_last_pool(y):
    n, c, h, w = y.shape
    z = F.avg_pool1d(y.permute(0, 2, 3, 1).reshape(n, h * w, c), 3, 1, 1)
    return z.reshape(n, h, w, c).permute(0, 3, 1, 2)


class PoolLast(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool1d(3, 1, 1)

    def forward(self, y):
        return self.pool(y.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(y.shape)


MIXING = {
    "avg_pool1d over channels last": _channels_last_pool,
    "MaxPool1d over channels last": PoolLast(),
    "max_pool3d over the channels": lambda y: F.max_pool3d(
        y.unsqueeze(1), (3, 1, 1), 1, (1, 0, 0)).squeeze(1),
    "interpolate over channels last": lambda y: F.interpolate(
        y.transpose(1, 3), size=(16, 16), mode="bilinear").transpose(1, 3),
    "pad cropping channels": lambda y: F.pad(y, (0, 0, 0, 0, -2, 2)),
    "replicate pad of channels": lambda y: F.pad(y.unsqueeze(1), (0, 0, 0, 0, 1, 1),
                                                 mode="replicate")[:, 0, 1:-1] * 2,
}


@pytest.mark.parametrize("fn", MIXING.values(), ids=MIXING.keys())
def test_pools_and_pads_mixing_channels_keep_them_whole(fn):
    small, held = prune(ChannelsAsSpace(fn))
    assert "a" in held and small.a.out_channels == 16


class Recogniser(nn.Module):
    """A text recogniser's head: the width becomes the sequence, the height is pooled away
    with the channels on axis 2, which ``AdaptiveAvgPool2d((None, 1))`` keeps."""

    def __init__(self, how, branch=False):
        super().__init__()
        self.how, self.branch = how, branch
        self.a, self.pool = nn.Conv2d(3, 16, 3, padding=1), nn.AdaptiveAvgPool2d((None, 1))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        if self.branch and x.abs().mean() > 1e-3:  # torch.fx cannot trace it
            x = x * 1.0
        f = torch.relu(self.a(x)).permute(0, 3, 1, 2)  # (n, w, c, h)
        if self.how == "module":
            f = self.pool(f)
        elif self.how == "function":
            f = F.adaptive_max_pool2d(f, (None, 1))
        else:  # a number: the pool makes 16 bins whatever the channels
            f = F.adaptive_avg_pool2d(f, (16, 1))
        return self.fc(f.squeeze(3))


@pytest.mark.parametrize("branch", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("how", ["module", "function", "literal"])
def test_an_adaptive_pool_that_keeps_the_channel_axis_cuts_through(how, branch):
    """Held before: "AdaptiveAvgPool2d: acts across channels", as if it pooled axis 2. A
    literal size stays whole: cut, it would make 16 bins of 8 channels."""
    small, held = prune(Recogniser(how, branch), (2, 3, 8, 12))
    if how == "literal":
        assert "a" in held and small.a.out_channels == 16
    else:
        assert "a" not in held and small.a.out_channels == 8 and small.fc.in_features == 8


def test_a_pad_of_features_cuts_the_layer_before_it():
    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.pad, self.fc2 = nn.Linear(8, 16), nn.ZeroPad1d((2, 2)), nn.Linear(20, 4)

        def forward(self, x):
            return self.fc2(torch.relu(self.pad(self.fc1(x))))

    small, held = prune(Features(), shape=(2, 8))
    assert small.fc1.out_features == 8 and small.fc2.in_features == 12


class SegNetLike(nn.Module):
    """SegNet's decoder: each unpool places its input by the indices of the encoder pool
    of the same channels, so its input (``d2``'s filters) and the pooled ones (``e1``'s)
    are tied. ``functional``: written with ``F.max_pool2d`` / ``F.max_unpool2d``; the
    output size is the whole shape of the pooled tensor, of which an unpool reads the
    last two axes."""

    def __init__(self, functional=False, export=False):
        super().__init__()
        self.e1, self.e2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.b1, self.b2 = nn.BatchNorm2d(16), nn.BatchNorm2d(32)
        self.pool, self.unpool = nn.MaxPool2d(2, 2, return_indices=True), nn.MaxUnpool2d(2, 2)
        self.d2, self.d1 = nn.Conv2d(32, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 5, 1)
        self.functional, self.export = functional, export

    def forward(self, x):
        x = torch.relu(self.b1(self.e1(x)))
        size = x.size()
        if self.functional:
            x, i1 = F.max_pool2d(x, 2, 2, return_indices=True)
        else:
            x, i1 = self.pool(x)
        x, i2 = self.pool(torch.relu(self.b2(self.e2(x))))
        x = torch.relu(self.d2(self.unpool(x, i2)))
        if self.functional:
            x = F.max_unpool2d(x, i1, 2, 2, output_size=size)
        else:
            x = self.unpool(x, i1, output_size=size)
        if self.export:  # torch.fx refuses a tensor's length: torch.export captures
            x = untraced(x)
        return self.head(torch.relu(self.d1(x)))


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("functional", [False, True], ids=["module", "function"])
def test_an_unpool_ties_its_input_to_the_pool_that_wrote_its_indices(functional, export):
    small, held = prune(SegNetLike(functional, export))
    assert set(held) == {"head"}
    assert small.e1.out_channels == small.d2.out_channels < 16 and small.e2.out_channels < 32


def test_an_output_size_read_of_a_whole_shape_leaves_its_channels_free():
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.down = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, 2, 1)
            self.up, self.head = nn.ConvTranspose2d(32, 16, 3, 2, 1), nn.Conv2d(32, 4, 1)

        def forward(self, x):
            skip = torch.relu(self.a(x))
            y = self.up(torch.relu(self.down(skip)), output_size=skip.size())
            return self.head(torch.cat([y, skip], 1))

    small, held = prune(Up(), shape=(2, 3, 15, 15))
    assert "a" not in held and small.a.out_channels < 16 and small.up.out_channels < 16
