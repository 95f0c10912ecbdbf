"""Functions and tensor methods that act on each channel alone are cut through; along
the channel axis they keep the channels whole. Pixel and channel shuffles are cut through
with the channels they move together tied. Each case sits between two conv-BN stages;
every parameter and statistic is redrawn before comparing."""

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_helpers import assert_strip_equal, make_config, untraced

from filterprune.testing.zoo import nondegenerate
from filterprune.torch import create_compressed_model, resize_to_state_dict


def _reversed(y):
    return torch.arange(y.shape[2] * y.shape[3] - 1, -1, -1)


class Between(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.a, self.bna = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.b, self.bnb = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.head, self.fn = nn.Linear(16, 5), fn

    def forward(self, x):
        y = self.fn(self.bna(self.a(x)))
        return self.head(torch.relu(self.bnb(self.b(y))).mean((2, 3)))


APART = {
    "log1p, erf, square": lambda y: torch.log1p(y.square()) + torch.erf(y),
    "rsqrt of a variance": lambda y: y * torch.rsqrt(y.var((2, 3), keepdim=True) + 1e-5),
    "std (unbiased given)": lambda y: y / (y.std((2, 3), True, True) + 1e-5),
    "flip": lambda y: y.flip(2, 3) + torch.flip(y, [3]),
    "movedim": lambda y: torch.movedim(y, 1, -1).relu().movedim(-1, 1),
    "swapaxes": lambda y: y.swapaxes(1, 3).sigmoid().swapaxes(1, 3),
    "narrow (spatial)": lambda y: F.pad(y.narrow(2, 1, 14), (0, 0, 1, 1)),
    # held as "select: no channel rule for select"
    "select (spatial), from the end too": lambda y: y + y.select(2, 0)[:, :, None]
    + torch.select(y, -1, -1)[..., None],
    "tile": lambda y: y.tile((1, 1, 2, 1))[:, :, :16],
    # in place where nothing else reads the tensor (SKNet's reference code)
    "unsqueeze_": lambda y: torch.relu(y).unsqueeze_(1).sum(1) + y,
    "transpose_ twice": lambda y: torch.sigmoid(y).transpose_(1, 3).transpose_(1, 3),
    # numpy's names, which torch's functions and tensor methods take too
    "mean with axis, keepdims": lambda y: y * torch.mean(y, axis=(2, 3), keepdims=True),
    # positions picked by index tensors (PointNet++, DGCNN): the channels pass through
    "index tensor on a spatial axis": lambda y: y.flatten(2)[:, :, _reversed(y)].view_as(y),
    "index_select on a spatial axis": lambda y: y.index_select(3, torch.arange(15, -1, -1)),
    "points picked, channels last": lambda y: y.flatten(2).transpose(1, 2)[
        torch.arange(y.shape[0])[:, None], _reversed(y)[None]].transpose(1, 2).view_as(y),
    "points picked around the channels": lambda y: y.flatten(2)[
        torch.arange(y.shape[0])[:, None], :, _reversed(y)[None]].transpose(1, 2).view_as(y),
    # torch.gather with the index expanded to the width read in forward (point clouds)
    "torch.gather, expanded to the width read": lambda y: torch.gather(
        y.flatten(2), 2, _reversed(y)[None, None].expand(y.shape[0], y.size(1), -1)).view_as(y),
    "take_along_dim, broadcast": lambda y: torch.take_along_dim(
        y.flatten(2), _reversed(y)[None, None], dim=2).view_as(y),
    # AdaIN's and instance norm's statistics, computed in one call
    "var_mean, std_mean": lambda y: (y - torch.var_mean(y, (2, 3), keepdim=True)[1]) / (
        torch.std_mean(y, dim=(2, 3), keepdim=True)[0] + 1e-3),
    "amin, logsumexp": lambda y: y - y.amin((2, 3), keepdim=True) + y.logsumexp(3, keepdim=True),
    "prod": lambda y: y * y.abs().add(1).log().prod(2, keepdim=True),
    "cumsum": lambda y: y.sigmoid().cumsum(3),
    "addcmul, lerp": lambda y: torch.addcmul(y, y, y.sigmoid(), value=0.5) + torch.lerp(
        y, y.relu(), 0.3),
    "masked_fill, atan2": lambda y: y.masked_fill(y > 1, 1.0) + torch.atan2(y, y.abs() + 1),
    "activations": lambda y: F.selu(y) + F.celu(y) + F.softsign(y) + F.logsigmoid(y)
    + F.hardshrink(y) + F.tanhshrink(y) + F.threshold(y, 0.1, 0.0),
    "normalize over the height": lambda y: F.normalize(y.sigmoid(), dim=2),
    "crop at bounds computed in forward": lambda y: F.pad(
        y[:, :, : y.size(2) - 1, ..., : y.shape[-1] - 2], (1, 1, 0, 1)),
    "pad to a skip's size (U-Net)": lambda y: y + _pad_to(
        F.interpolate(F.max_pool2d(y, 2), scale_factor=2.0)[:, :, :-1, :-1], y),
    "casts to bool and integers": lambda y: y * (y > 0).bool().float() + y.long().float()
    + y.int().double().float(),
    "zeros_like, full_like": lambda y: torch.where(y > 0, y, torch.zeros_like(y))
    + torch.full_like(y, 0.5) * y + torch.ones_like(y),
    "split in halves of the width read": lambda y: _gated(torch.split(y, y.shape[1] // 2, 1)),
    # bounds that fall on the same of k equal parts at any width: pieces of a chunk(k)
    "slice at half the width read": lambda y: torch.cat(
        [y[:, : y.shape[1] // 2], y[:, y.shape[1] // 2 :] * 2], 1),
    # FasterNet's partial conv: sizes computed from the width, on its quarters
    "split at a quarter of the width read": lambda y: _swapped(
        torch.split(y, [y.shape[1] // 4, y.shape[1] - y.shape[1] // 4], 1)),
    "tensor_split at a quarter of the width read": lambda y: _swapped(
        torch.tensor_split(y, [y.shape[1] // 4], 1)),
    "slice at quarters of a width read once": lambda y: (lambda c: torch.cat(
        [y[:, c // 4 : c // 2], y[:, -(c // 4) :], y[:, : c // 4] * 2, y[:, c // 2 : -(c // 4)]],
        1))(y.size(1)),
    "rounding": lambda y: torch.floor(y * 4) / 4 + y.round() + y.sign() + y.clip(-1, 1)
    + y.clamp_min(0) + torch.reciprocal(y.abs() + 1),
    "einsum: a product": lambda y: torch.einsum("bchw,bchw->bchw", y, y.sigmoid()),
    "einsum: a gate per channel": lambda y: torch.einsum("bchw,bc->bchw", y, y.mean((2, 3))),
    "einsum: a spatial sum": lambda y: y * torch.einsum("bchw->bc", y)[:, :, None, None],
    "einsum: ellipsis": lambda y: torch.einsum("b...hw->bhw...", y).relu().permute(0, 3, 1, 2),
    "einsum: implicit output": lambda y: torch.einsum("hcbw", y.permute(2, 1, 0, 3).sigmoid()),
    # values (and indices) over a spatial axis: PointNet's max over its points
    "max over the height": lambda y: y + torch.max(y, 2, keepdim=True)[0] + y.min(3).values[
        ..., None] + y.max(dim=2, keepdim=True).indices.float(),
    "median, kthvalue, argmax": lambda y: y - y.median(3, keepdim=True)[0] + y.kthvalue(
        2, 2, keepdim=True)[0] * y.argmax(3, keepdim=True).float(),
    "sort, topk, cummax": lambda y: y.sort(2)[0] + F.pad(y.topk(3, dim=3)[0], (0, 13))
    + y.cummax(3)[0] - torch.max(y, y.flip(3)),
    # attentive statistics pooling: a mean repeated along time by a length read in forward
    "repeat by a size read in forward": lambda y: y + y.mean(2, keepdim=True).repeat(
        1, 1, y.shape[2], 1) * y.tile((1, 1, 1, y.size(3) // 16)),
    # a time stretch (WaveRNN's Stretch2d): held before, as a call without a rule
    "repeat_interleave along the width": lambda y: y.repeat_interleave(2, dim=-1)
    + y.repeat_interleave(1, 2).repeat(1, 1, 1, 2),
    # statistics over the height and width: held before, its weight counted as a matrix
    "RMSNorm over space": nn.RMSNorm([16, 16]),
    "rms_norm over space": lambda y: F.rms_norm(y, (16, 16)),
    "activation modules": nn.Sequential(
        nn.RReLU(), nn.Hardshrink(0.1), nn.Softshrink(0.1), nn.Tanhshrink(), nn.Softsign(),
        nn.LogSigmoid(), nn.Threshold(0.1, 0.0), nn.FeatureAlphaDropout(), nn.Softmin(2)),
    "expand to sizes read in forward": lambda y: y + y.mean((2, 3), keepdim=True).expand(
        y.size(0), y.size(1), y.size(2), -1) * y.expand(-1, -1, y.shape[2], -1),
    # each had no rule: other names, a tensor method as a function, a 3-d pool
    "divide, multiply, subtract, rsub, detach": lambda y: torch.rsub(torch.subtract(
        torch.multiply(torch.divide(y, 2.0), y), 1.0), 0.5) + torch.detach(y),
    "torch.max_pool2d, lp_pool3d": lambda y: torch.max_pool2d(y, 3, 1, 1) + F.lp_pool3d(
        y.unsqueeze(2).repeat(1, 1, 2, 1, 1), 2, (2, 1, 1)).squeeze(2),
    # each had no rule
    "diff, rot90, logcumsumexp, nanmean, count_nonzero, vector_norm, mT": lambda y: F.pad(
        torch.diff(y, dim=2), (0, 0, 0, 1)) + torch.rot90(y, 1, (2, 3)) + y.logcumsumexp(3)
    + y.nanmean((2, 3), keepdim=True) + torch.count_nonzero(y > 0, (2, 3))[..., None, None]
    + torch.linalg.vector_norm(y, 2, (2, 3), True) + y.mT @ y + y.tril() + torch.triu(y, 1),
    "copy_ into a tensor of the same shape": lambda y: torch.empty_like(y).copy_(y * 2) + y,
    "quantile, renorm, matrix_norm, linalg.norm, trapezoid": lambda y: y * torch.quantile(
        y.flatten(2), 0.7, 2)[..., None, None] + torch.renorm(y, 2, 1, 1.0)
    + torch.linalg.matrix_norm(y, keepdim=True) + torch.linalg.norm(y, dim=(2, 3))[..., None, None]
    + torch.trapezoid(y, dim=3)[..., None] + torch.trapz(y, dim=2)[..., None, :]
    + F.pad(torch.cumulative_trapezoid(y, dx=0.5, dim=2), (0, 0, 0, 1)),
    # the pieces passed whole, not as a list: "cat: expects a tensor input"
    "cat of a split, stack of an unbind": lambda y: torch.cat(y.split(4, 2), 2) + torch.stack(
        y.unbind(3), 3) + torch.cat(y.chunk(2, 1), 1),
    # under torch.export: no rule for var_mean.dim or movedim.intlist; narrow from the end
    # read as an empty slice
    "var_mean, movedim of lists, narrow from the end, under torch.export": lambda y: (
        untraced(y) - torch.var_mean(y, (2, 3), keepdim=True)[1]
        + torch.movedim(y, [1, 2], [3, 1]).movedim([3, 1], [1, 2])
        + F.pad(torch.narrow(y, 2, -4, 4), (0, 0, 0, 12))),
    # "getitem: expects a tensor input" for a slice of the tuple
    "slices of a chunk's tuple": lambda y: torch.cat(y.chunk(4, 1)[::-1], 1) + torch.cat(
        [*y.chunk(4, 1)[1:], y.chunk(4, 1)[0] * 2], 1),
}
ACROSS = {
    "flip (channels)": lambda y: y.flip(1),
    # the stripped model failed: "expanded size (16) must match the existing size (8)"
    "expand with the channel count written in code": lambda y: y.expand(-1, 16, -1, -1),
    "expand by keyword": lambda y: y.expand(size=(-1, 16, -1, -1)),
    "index tensor on the channels": lambda y: y[:, torch.arange(15, -1, -1)],
    "gather along the channels": lambda y: torch.gather(y, 1, y.argsort(1)),
    "torch.gather, as wide as the channels in code": lambda y: torch.gather(
        y.flatten(2), 2, _reversed(y)[None, None].expand(y.shape[0], 16, -1)).view_as(y),
    "var_mean (channels)": lambda y: y * torch.var_mean(y, 1, keepdim=True)[0],
    "cumsum (channels)": lambda y: y.cumsum(1),
    "softmin (channels)": lambda y: F.softmin(y, dim=1) * y,
    "narrow (channels)": lambda y: torch.cat([y.narrow(1, 0, 8), y.narrow(1, 8, 8) * 2], 1),
    "select (channels)": lambda y: y * y.select(1, 3)[:, None],
    # its exact length failed on the stripped model ("start (0) + length (16) exceeds")
    "narrow over all the channels": lambda y: torch.narrow(y, 1, 0, 16) + torch.narrow(
        y, -3, -16, 16),
    # the masked model's pruned channels are 0.5 there, and would count in the norm
    "normalize over the channels": lambda y: F.normalize(y.sigmoid(), dim=1),
    "split at a width read less a number": lambda y: torch.cat(
        y.split(y.size(1) - 4, 1)[::-1], 1),
    "split at sizes computed off the equal parts": lambda y: _swapped(torch.split(
        y, [y.shape[1] // 2 + 1, y.shape[1] // 2 - 1], 1)),
    "slice channels at the width read less a number": lambda y: torch.cat(
        [y[:, : y.shape[1] - 4], y[:, y.shape[1] - 4 :] * 2], 1),
    "slice at half the width read, used as a number too": lambda y: torch.cat(
        [y[:, : y.shape[1] // 2] * (y.shape[1] // 2), y[:, y.shape[1] // 2 :]], 1),
    "einsum over the channels": lambda y: y * torch.einsum("bchw,bchw->bhw", y, y)[:, None],
    "einsum mixing the channels": lambda y: torch.einsum("bchw,bdhw->bchw", y, y.sigmoid()),
    "max over the channels": lambda y: y * torch.max(y, 1, keepdim=True)[0],
    "sort over the channels": lambda y: y.sort(1).values,
    "topk over the channels": lambda y: torch.cat([y.topk(8, 1)[0], y[:, 8:]], 1),
    "Softmin module over the channels": nn.Softmin(1),
    "softmax with axis": lambda y: y.softmax(axis=1) * y,
    "sort with axis": lambda y: torch.sort(y, axis=1)[0],
    "cumprod with axis": lambda y: torch.cumprod(torch.sigmoid(y), axis=1),
    # each channel divided by a sum over its neighbours: a cut changes the ones kept
    "LocalResponseNorm": nn.LocalResponseNorm(3),
    "CrossMapLRN2d": nn.CrossMapLRN2d(3),
    "local_response_norm": lambda y: F.local_response_norm(y, 5, k=0.5),
    "RMSNorm over the channels": lambda y: _channels_last(y, nn.RMSNorm(16)),
    "repeat_interleave over the channels": lambda y: y.repeat_interleave(2, dim=1)[:, 1::2],
    # torch's implicit dim of a 4-d tensor is 1 (it was read as the last)
    "Softmax module without a dim": nn.Softmax(),
    "LogSoftmax module without a dim": nn.LogSoftmax(),
    "quantile over the channels": lambda y: y * y.quantile(0.5, 1, keepdim=True),
    "renorm of each sample": lambda y: torch.renorm(y, 2, 0, 1.0),
    "repeat channels by a size read in forward": lambda y: y[:, :8].repeat(
        1, y.shape[1] // 8, 1, 1),
}


def _channels_last(y, fn):
    return fn(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _swapped(pieces):
    return torch.cat([pieces[1], pieces[0] * 2], 1)


def _gated(halves):
    return torch.cat([halves[0] * torch.sigmoid(halves[1]), halves[1]], 1)


def _pad_to(z, like):
    """Pad ``z`` to ``like``'s height and width with amounts read in forward."""
    dy, dx = like.size()[2] - z.size()[2], like.size()[3] - z.size()[3]
    return F.pad(z, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])


def prune(fn, model=None):
    model = nondegenerate(model or Between(fn))
    config = make_config((1, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(model, config)
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16), tol=1e-5)
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    return small, held


@pytest.mark.parametrize("fn", APART.values(), ids=APART.keys())
def test_ops_that_keep_each_channel_apart_are_cut_through(fn):
    small, held = prune(fn)
    assert "a" not in held and small.a.out_channels == 8


@pytest.mark.parametrize("fn", ACROSS.values(), ids=ACROSS.keys())
def test_ops_across_the_channels_keep_them_whole(fn):
    small, held = prune(fn)
    assert "a" in held and small.a.out_channels == 16 and small.b.out_channels == 8


@pytest.mark.parametrize("fn, name", [
    (nn.LocalResponseNorm(3), "LocalResponseNorm"), (nn.CrossMapLRN2d(3), "CrossMapLRN2d"),
    (lambda y: F.local_response_norm(y, 3), "local_response_norm")])
def test_a_local_response_norm_says_it_acts_across_channels(fn, name):
    """It was held as an op without a rule (the function: as torch.export's reshapes)."""
    _, held = prune(fn)
    assert held["a"] == f"{name}: acts across channels"


class CatAxis(nn.Module):
    """Two convs joined by ``torch.cat(..., axis=1)``: read as the default ``dim`` (0),
    the analysis failed in numpy ("shape mismatch")."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 32, 3, padding=1)
        self.c, self.head = nn.Conv2d(48, 32, 3, padding=1), nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(torch.cat([self.a(x), self.b(x)], axis=1))
        return self.head(F.relu(self.c(h)).mean((2, 3)))


def test_a_cat_along_axis_1_cuts_both_inputs():
    small, held = prune(None, CatAxis())
    assert small.a.out_channels == 8 and small.b.out_channels == 16 and not {"a", "b"} & held.keys()


class Routed(nn.Module):
    """Each sample to one of two experts by the sign of its mean (index_select, then
    index_add back): on the sample input of zeros one expert gets no sample."""

    def __init__(self):
        super().__init__()
        self.stem, self.router = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 2)
        self.experts = nn.ModuleList(cbr(16, 16) for _ in range(2))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        gate = self.router(h.mean((2, 3))).softmax(1).max(1)[0]
        pick = (x.mean((1, 2, 3)) > 0).long()
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            idx = (pick == e).nonzero(as_tuple=True)[0]
            weight = gate.index_select(0, idx).view(-1, 1, 1, 1)
            out = out.index_add(0, idx, expert(h.index_select(0, idx)) * weight)
        return self.head((h + out).mean((2, 3)))


def test_an_expert_no_sample_reaches_is_cut_like_the_others():
    """Its empty batch carried no channels (once it was cut alone, and the stripped model
    failed once a sample reached it); both experts were held, index_add having no rule."""
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(nondegenerate(Routed()), make_config(
        (1, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1))  # fmt: skip
    x = torch.randn(4, 3, 16, 16) + torch.tensor([-1.0, -1, 1, 1]).view(-1, 1, 1, 1)
    small = assert_strip_equal(ctrl, model, x, tol=1e-5)  # two samples to each expert
    assert [e[0].out_channels for e in small.experts] == [8, 8] and small.stem.out_channels == 8


class GroupedShuffled(nn.Module):
    """A grouped 1x1 conv, a channel shuffle, a grouped 3x3 conv (ShuffleNet v1's unit):
    each channel of the first conv's cut units fills one position in each of its groups."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.g1 = nn.Sequential(nn.Conv2d(16, 32, 1, groups=4, bias=False), nn.BatchNorm2d(32))
        self.g2 = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1, groups=4, bias=False),
                                nn.BatchNorm2d(16))  # fmt: skip
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.g1(torch.relu(self.stem(x))))
        b, c, h, w = y.shape
        y = y.view(b, 4, c // 4, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.head(torch.relu(self.g2(y)).mean((2, 3)))


@pytest.mark.parametrize("seed", range(4))
def test_grouped_convs_around_a_shuffle_are_cut_whatever_the_weights(seed):
    """The first conv's groups read every unit alike and the second's read each unit at
    four positions: no equal cut was found, and the group was cut or held as the top
    scores fell (two seeds of six), held as "cannot keep equal groups"."""
    torch.manual_seed(seed)
    small, held = prune(None, GroupedShuffled())
    assert small.g1[0].out_channels == 16 and "g1.0" not in held


class PaddedShortcut(nn.Module):
    """PyramidNet's shortcut: zero channels padded to the block's width, read in forward."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = cbr(3, 8), cbr(8, 16), nn.Linear(16, 5)

    def forward(self, x):
        h = self.a(x)
        out = self.b(h)
        out = out + F.pad(h, (0, 0, 0, 0, 0, out.size(1) - h.size(1)))
        return self.head(out.mean((2, 3)))


def test_a_shortcut_padded_by_a_width_read_in_forward_says_how_to_cut_it():
    small, held = prune(None, PaddedShortcut())
    assert held["a.0"] == ("pad: pads channels by widths computed in forward (a width written "
                           "as a number lets the channels it pads be cut)")  # fmt: skip


class RepeatedGrouped(nn.Module):
    """A tensor repeated three times, read by a conv of 2 groups: each group reads every
    channel, some twice (its rows hold the same channels, not as often)."""

    def __init__(self):
        super().__init__()
        self.a, self.g = cbr(3, 16), nn.Conv2d(48, 8, 3, padding=1, groups=2)
        self.bn, self.head = nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.g(self.a(x).repeat(1, 3, 1, 1)))))


@pytest.mark.parametrize("seed", range(3))
def test_a_grouped_conv_reading_channels_unequally_often_keeps_equal_groups(seed):
    """Read as a block that constrains nothing (its rows hold the same channels), the cut
    left the groups unequal and the strip failed ("kept per row [11, 13]")."""
    torch.manual_seed(seed)
    prune(None, RepeatedGrouped())


def test_a_grouped_conv_on_the_model_input_says_why_it_stays_whole():
    """Its filters follow the input's channels, one per group: it was listed nowhere."""
    model = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1, groups=3), nn.ReLU(),
                          nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 5))  # fmt: skip
    _, held = prune(None, model)
    assert held["0"].startswith("its filters follow channels no layer makes (the model input")


class FixedSplit(nn.Module):
    """InceptionNeXt's mixer: a split at sizes fixed in ``__init__``, depthwise convs on
    the parts."""

    def __init__(self):
        super().__init__()
        self.stem, self.dw = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        a, b = torch.split(self.stem(x), (12, 4), dim=1)
        return self.head(torch.cat([a, self.dw(b)], 1))


def test_a_depthwise_conv_after_a_split_fixed_in_code_names_the_split():
    """It was said to follow "the model input"."""
    _, held = prune(None, FixedSplit())
    assert held["stem"] == "split: split sizes are fixed in code"
    assert held["dw"].endswith("which stay whole: split: split sizes are fixed in code")


class FlippedGroups(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.g = nn.Conv2d(16, 16, 1, groups=4)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.g(self.stem(x).flip(1))))


def test_a_grouped_conv_after_held_channels_names_what_holds_them():
    """It was said to have one input channel per group (it has 4) and to follow channels
    the BatchNorm held (the flip does)."""
    _, held = prune(None, FlippedGroups())
    assert held["g"] == ("its filters follow its input's channels (a depthwise conv, or a "
                         "grouped conv as wide as its input), which stay whole: flip: acts "
                         "across channels")  # fmt: skip


class InputBeside(nn.Module):
    """A depthwise conv over the input concatenated with a conv of it: cut where the conv's
    channels are."""

    def __init__(self):
        super().__init__()
        self.c, self.dw = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(11, 11, 3, padding=1, groups=11)
        self.head = nn.Linear(11, 5)

    def forward(self, x):
        return self.head(torch.relu(self.dw(torch.cat([x, self.c(x)], 1))).mean((2, 3)))


def test_a_depthwise_conv_partly_over_the_input_is_not_said_to_stay_whole():
    """Its input channels marked it whole in the statistics, though it was cut 11 to 7."""
    small, held = prune(None, InputBeside())
    assert small.dw.out_channels == 7 and "dw" not in held


def cbr(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())  # fmt: skip


class Rearranged(nn.Module):
    """``a`` -> ``up`` -> a channel rearrangement -> ``b``. ``kind``: ``shuffle``
    (depth to space by 2), ``unshuffle`` (space to depth by 2) or ``channels`` (channel
    shuffle in 4 groups); ``module``: as its ``nn`` module, else as a function;
    ``export``: read a tensor's length, which torch.fx refuses (torch.export captures)."""

    def __init__(self, kind, module, export=False):
        super().__init__()
        c = {"shuffle": 32, "unshuffle": 8, "channels": 16}[kind]
        self.a, self.up = cbr(3, 8), nn.Conv2d(8, c, 3, padding=1)
        self.b = cbr({"shuffle": 8, "unshuffle": 32, "channels": 16}[kind], 16)
        self.head, self.kind, self.export = nn.Linear(16, 5), kind, export
        mods = {"shuffle": nn.PixelShuffle(2), "unshuffle": nn.PixelUnshuffle(2),
                "channels": nn.ChannelShuffle(4)}  # fmt: skip
        self.op = mods[kind] if module else None

    def forward(self, x):
        y = self.up(self.a(x))
        if self.export:
            y = untraced(y)
        if self.op is not None:
            y = self.op(y)
        elif self.kind == "shuffle":
            y = F.pixel_shuffle(y, 2)
        elif self.kind == "unshuffle":
            y = F.pixel_unshuffle(y, 2)
        else:
            y = F.channel_shuffle(y, 4)
        return self.head(self.b(y).mean((2, 3)))


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("module", [True, False], ids=["module", "function"])
@pytest.mark.parametrize("kind", ["shuffle", "unshuffle", "channels"])
def test_pixel_and_channel_shuffles_are_cut_through(kind, module, export):
    small, held = prune(lambda y: y, Rearranged(kind, module, export))
    assert not held.keys() & {"up", "b.0"}
    per = {"shuffle": 4, "unshuffle": 1, "channels": 1}[kind]
    rows = {"shuffle": 1, "unshuffle": 4, "channels": 1}[kind]
    assert small.up.out_channels < {"shuffle": 32, "unshuffle": 8, "channels": 16}[kind]
    assert small.up.out_channels * rows == small.b[0].in_channels * per


class Unfolded(nn.Module):
    """``a`` -> ``unfold`` (each channel as its 9 kernel positions) -> ``fold`` back, or an
    involution (a kernel per position, from a conv, weighting each channel's positions)
    -> ``b``; ``module``: ``nn.Unfold`` / ``nn.Fold``, else the functions."""

    def __init__(self, fold, module, export=False):
        super().__init__()
        self.a, self.k, self.b = cbr(3, 16), nn.Conv2d(16, 9, 1), cbr(16, 16)
        self.unfold, self.fold = nn.Unfold(3, padding=1), nn.Fold((16, 16), 3, padding=1)
        self.head, self.folds, self.module, self.export = nn.Linear(16, 5), fold, module, export

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        u = self.unfold(y) if self.module else F.unfold(y, 3, padding=1)
        if self.folds:
            y = self.fold(u) if self.module else F.fold(u, (h, w), 3, padding=1)
        else:
            y = (u.view(n, c, 9, h, w) * self.k(y).unsqueeze(1)).sum(2)
        if self.export:
            y = untraced(y)
        return self.head(self.b(y).mean((2, 3)))


@pytest.mark.parametrize(("fold", "export"), [(True, False), (True, True), (False, False)],
                         ids=["fold-fx", "fold-export", "involution-fx"])  # fmt: skip
@pytest.mark.parametrize("module", [True, False], ids=["module", "function"])
def test_unfold_and_fold_are_cut_through(fold, module, export):
    """Held before ("no channel rule for unfold")."""
    small, held = prune(lambda y: y, Unfolded(fold, module, export))
    assert not held.keys() & {"a.0", "b.0"} and small.a[0].out_channels < 16


ODD_FORMS = {
    "tile (varargs)": lambda y: y.tile(1, 1, 2, 1)[:, :, :16],
    "swapaxes (keywords)": lambda y: torch.swapaxes(y, axis0=1, axis1=3).relu().swapaxes(1, 3),
    "std (keywords)": lambda y: y / (torch.std(y, dim=(2, 3), correction=0, keepdim=True) + 1),
}


@pytest.mark.parametrize("fn", ODD_FORMS.values(), ids=ODD_FORMS.keys())
def test_other_call_forms_are_read(fn):
    small, held = prune(fn)
    assert "a" not in held and small.a.out_channels == 8


def test_a_call_form_a_rule_cannot_read_keeps_the_channels_whole():
    small, held = prune(lambda y: F.softmin(y) * y)  # no dim: torch picks one by rank
    assert "a" in held and small.a.out_channels == 16


class Gated(nn.Module):
    """A conv of 32 filters gated to 16 channels by a GLU along ``dim`` (1: channels,
    -1: width, whose halves are then the two halves of the image)."""

    def __init__(self, dim, module):
        super().__init__()
        self.a, self.up = cbr(3, 8), nn.Conv2d(8, 32 if dim == 1 else 16, 3, padding=1)
        self.glu = nn.GLU(dim) if module else (lambda y: F.glu(y, dim))
        self.b, self.head = cbr(16, 16), nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.b(self.glu(self.up(self.a(x)))).mean((2, 3)))


@pytest.mark.parametrize("module", [True, False], ids=["module", "function"])
@pytest.mark.parametrize("dim", [1, -1], ids=["channels", "width"])
def test_a_glu_ties_its_halves(dim, module):
    small, held = prune(lambda y: y, Gated(dim, module))
    assert "up" not in held and "a.0" not in held
    if dim == 1:  # channel c gates with channel c + 16: the conv keeps both halves alike
        assert small.up.out_channels == 2 * small.b[0].in_channels < 32
    else:
        assert small.up.out_channels == small.b[0].in_channels < 16


class TwoBranch(nn.Module):
    """Convs ``a`` and ``b`` combined by ``fn(a, b)``, then ``c``; ``export``: iterate a
    chunk first, so torch.export captures."""

    def __init__(self, fn, export=False):
        super().__init__()
        self.a, self.b = cbr(3, 16), cbr(3, 16)
        self.c, self.head, self.fn, self.export = cbr(16, 16), nn.Linear(16, 5), fn, export

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        if self.export:
            a = untraced(a)
        return self.head(self.c(self.fn(a, b)).mean((2, 3)))


OPERANDS = {
    "clamp (tensor min)": lambda a, b: torch.clamp(a, min=b),
    "clip (tensor max)": lambda a, b: a.clip(max=b + 1),
    "clamp_min (tensor)": lambda a, b: a.clamp_min(b),
    "masked_fill (mask of b)": lambda a, b: a.masked_fill(b > 0.5, 0.0),
    "expand_as": lambda a, b: torch.sigmoid(a[:, :1]).expand_as(b),
    "where (zeros_like)": lambda a, b: torch.where(b > 0, a, torch.zeros_like(a)),
}


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("fn", OPERANDS.values(), ids=OPERANDS.keys())
def test_a_second_tensor_operand_is_tied_to_the_first(fn, export):
    """A tensor bound or mask is an operand: its channels go with the input's."""
    prune(None, TwoBranch(fn, export))  # stripped equals masked


class SpatialGate(nn.Module):
    """Spatial attention: a one-channel map gates every channel (and is added to them)."""

    def __init__(self):
        super().__init__()
        self.sp = nn.Conv2d(16, 1, 7, padding=3)

    def forward(self, y):
        gate = torch.sigmoid(self.sp(y))
        return y * gate + gate


def test_a_one_channel_gate_over_the_channels_leaves_them_free():
    """Every channel reads the gate's one channel alike: they are not tied to it."""
    small, held = prune(SpatialGate())
    assert "a" not in held and small.a.out_channels == 8
    assert held["fn.sp"] == "mul: broadcast over another operand's channels"


class Warp(nn.Module):
    """Features sampled at the positions a two-channel conv gives (a flow warp)."""

    def __init__(self):
        super().__init__()
        self.flow = nn.Conv2d(16, 2, 3, padding=1)

    def forward(self, y):
        grid = torch.tanh(self.flow(y)).permute(0, 2, 3, 1)  # positions in [-1, 1]
        return F.grid_sample(y, grid, align_corners=False)


def test_grid_sample_passes_the_channels_and_keeps_the_coordinates_whole():
    small, held = prune(Warp())
    assert "a" not in held and small.a.out_channels == 8
    assert held["fn.flow"] == "grid_sample: sampling coordinates"
    assert small.fn.flow.out_channels == 2


class Transformer(nn.Module):
    """A spatial transformer: a localisation net gives the affine map, the features are
    sampled on its grid, sized by their whole shape (of which it reads no channel)."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Linear(16, 6)

    def forward(self, y):
        theta = self.loc(y.mean((2, 3))).view(-1, 2, 3)
        return F.grid_sample(y, F.affine_grid(theta, y.size(), align_corners=False),
                             align_corners=False)  # fmt: skip


def test_affine_grid_reads_no_channel_of_the_size_it_is_given():
    """Under torch.fx the features were held: "relu's size along axis 0, 1, 2, 3 is read
    in forward and used as a number (affine_grid)"."""
    small, held = prune(Transformer())
    assert "a" not in held and small.a.out_channels == 8


class EinsumWeights(nn.Module):
    """A scale per channel, then a channel mix, both written as ``einsum``."""

    def __init__(self):
        super().__init__()
        self.gamma, self.mix = nn.Parameter(torch.rand(16) + 0.5), nn.Parameter(torch.randn(16, 16))

    def forward(self, y):
        y = torch.einsum("bchw,c->bchw", y, self.gamma)
        return y + torch.einsum("bchw,dc->bdhw", y.sigmoid(), self.mix)


def test_einsum_cuts_a_weight_it_keeps_and_holds_one_it_sums_over():
    small, held = prune(EinsumWeights())
    assert held["a"] == "einsum: sums over these channels"
    assert small.fn.gamma.shape == (16,) and small.b.out_channels == 8
    small, held = prune(EinsumWeights(), _Scaled())  # the scale alone: cut with its channels
    assert "a" not in held and small.fn.gamma.shape == (8,)


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bna = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fn = EinsumWeights()
        self.b, self.bnb = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.einsum("bchw,c->bchw", self.bna(self.a(x)), self.fn.gamma)
        return self.head(torch.relu(self.bnb(self.b(y))).mean((2, 3)))


class TokenMixing(nn.Module):
    """MLP-Mixer's token mixing: Linears along the tokens, the channels on another axis."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Sequential(nn.Linear(256, 32), nn.GELU(), nn.Linear(32, 256))

    def forward(self, y):
        t = y.flatten(2)  # channels, then tokens
        return y + self.tok(t).view_as(y)


def test_a_linear_along_the_tokens_is_cut_and_keeps_the_channels_whole():
    small, held = prune(TokenMixing())
    assert small.fn.tok[0].out_features == 16 and small.fn.tok[2].in_features == 16
    assert held["a"] == "Linear: applied along another axis than these channels"


def test_a_conv_after_a_linear_along_the_width_is_still_cut():
    """The conv reads the Linear's outputs as positions: they stay, its filters go."""
    small, held = prune(nn.Linear(16, 16))  # along the width of (N, C, H, 16)
    assert held["fn"] == "Conv2d: applied along another axis than these channels"
    assert small.b.out_channels == 8


@pytest.mark.parametrize(("cin", "cout", "groups"), [(16, 32, 4), (16, 8, 4), (16, 24, 2)])
def test_grouped_convs_that_widen_or_narrow_cut_each_side_by_group(cin, cout, groups):
    """The inputs of each group are cut alike, and so are the outputs, each on its own."""
    grouped = nn.Sequential(nn.Conv2d(16, cin, 1), nn.ReLU(),
                            nn.Conv2d(cin, cout, 3, padding=1, groups=groups), nn.ReLU(),
                            nn.Conv2d(cout, 16, 1))  # fmt: skip
    small, held = prune(grouped)
    assert "a" not in held and small.a.out_channels == 8
    assert (small.fn[2].in_channels, small.fn[2].out_channels) == (cin // 2, cout // 2)
    assert small.fn[2].groups == groups


def test_grouped_convs_in_a_row_with_other_group_counts_are_cut():
    grouped = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=2), nn.ReLU(),
                            nn.Conv2d(16, 16, 1, groups=4))  # fmt: skip
    small, held = prune(grouped)
    assert "a" not in held and small.a.out_channels == 8 and small.fn[2].groups == 4


class GroupedUp(nn.Module):
    def __init__(self, cout, groups):
        super().__init__()
        self.up = nn.ConvTranspose2d(16, cout, 4, 2, 1, groups=groups)
        self.down = nn.Conv2d(cout, 16, 3, stride=2, padding=1)

    def forward(self, y):
        return self.down(torch.relu(self.up(y)))


@pytest.mark.parametrize(("cout", "groups", "cut"), [(16, 4, 8), (16, 16, 8), (32, 16, 16),
                                                     (32, 4, 16)])  # fmt: skip
def test_grouped_and_depthwise_transposed_convs_are_cut(cout, groups, cut):
    """Weight (in, out/groups, k, k): each group keeps as many inputs as outputs (with
    in == out), a depthwise one loses whole channels; 32 from 16 in 4 groups cuts its
    inputs and its outputs, each side by group."""
    small, held = prune(GroupedUp(cout, groups))
    assert small.fn.up.out_channels == cut and small.fn.down.in_channels == cut
    assert small.a.out_channels == 8 and small.fn.up.groups == min(groups, 8)


def test_a_strided_transposed_conv_upsamples_and_is_pruned_by_default():
    """Not a downsampling conv: ``prune_downsample_convs`` (off here) does not hold it."""
    up = nn.Sequential(nn.ConvTranspose2d(16, 16, 2, stride=2), nn.ReLU(), nn.MaxPool2d(2))
    small, held = prune(up)
    assert "fn.0" not in held and small.fn[0].out_channels == 8


class ConvLSTM(nn.Module):
    """An OCR-style head: conv columns read by an LSTM, which returns ``out, (h, c)``."""

    def __init__(self):
        super().__init__()
        self.a, self.bna = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.rnn, self.head = nn.LSTM(16, 8), nn.Linear(8, 5)

    def forward(self, x):
        columns = self.bna(self.a(x)).mean(2).permute(2, 0, 1)  # width, batch, channels
        out, (h, c) = self.rnn(columns)
        return self.head(out[-1] + h[-1])


def test_an_lstm_returning_a_nested_value_is_cut_at_its_input_columns():
    """It was held ("no channel rule for module LSTM"); its outputs ``out, (h, c)`` stay
    whole, and its input features are cut with its input weights' columns."""
    small, held = prune(None, ConvLSTM())  # strip == masked
    assert "a" not in held and small.a.out_channels == 8 and small.rnn.input_size == 8


def test_a_softmax_over_stacked_branches_is_cut_through():
    """SKNet's selection: branches stacked, weighted by a softmax over the branch axis and
    summed. The stacked branches are tied, so the softmax acts within each channel."""
    small, held = prune(None, TwoBranch(lambda a, b: _select(torch.stack([a, b], 1))))
    assert "a.0" not in held and small.a[0].out_channels < 16


def _select(u):
    return (u * u.mean((3, 4), keepdim=True).softmax(1)).sum(1)


def _roll(module, args, out):
    return torch.roll(out, 1, 1)


def _scale(module, args):
    return (args[0] * torch.linspace(0.5, 2.0, 16).view(1, -1, 1, 1),)


def _branch(module, args, out):
    return out * 2 if float(out.mean()) > 0 else out


def _double(module, args):
    return (args[0] * 2,)


UNSEEN = "Conv2d fn has a forward hook, which the trace does not see"
HOOKS = {  # (pre-hooks, hooks) -> (layer held, its reason)
    "rolls the output": ([], [_roll], "fn", "roll: acts across channels"),
    "scales the input by channel": (
        [_scale], [], "a", "mul reads _tensor_constant0, a tensor made in forward from no "
        "parameter or buffer (a constant, or a plain tensor attribute), which cannot be cut"),
    "branches on a value": ([], [_branch], "fn", UNSEEN),
    "doubles, then branches on a value": ([_double], [_branch], "fn", UNSEEN),
}


@pytest.mark.parametrize(("pre", "post", "layer", "reason"), HOOKS.values(), ids=HOOKS)
def test_the_hooks_of_a_layer_are_traced_around_its_call(pre, post, layer, reason):
    """torch.fx records a layer's call without its hooks: a hook rolling the channels was
    cut through (0.27 relative off); a pre-hook scaling 16 channels crashed the stripped
    model. Held whole then, they are now read as ops around the call; a hook that cannot
    run on the trace's values keeps the layer whole."""
    conv = nn.Conv2d(16, 16, 3, padding=1)
    for hook in pre:
        conv.register_forward_pre_hook(hook)
    for hook in post:
        conv.register_forward_hook(hook)
    small, held = prune(conv)
    assert held[layer] == reason


KEPT = []  # what a hook keeps, named as a global


class _Keeper:
    def __init__(self):
        self.kept = []

    def __call__(self, module, args, out):
        self.kept.append(out)


def _keepers():
    kept = []
    keeper = _Keeper()
    return {"in a closure": (lambda m, args, out: kept.append(out), kept),
            "in a global": (lambda m, args, out: KEPT.append(out), KEPT),
            "in the hook object": (keeper, keeper.kept)}  # fmt: skip


@pytest.mark.parametrize("where", _keepers())
def test_a_hook_that_keeps_the_output_leaves_the_layer_free(where):
    """timm's feature hooks, a distillation tap: the layer was held ("has a forward hook,
    which the trace does not see"). What the hook keeps is as it was before the capture
    (the trace's proxies and the probes' maps are not left in it)."""
    hook, kept = _keepers()[where]
    KEPT.clear()
    conv = nn.Conv2d(16, 16, 3, padding=1)
    conv.register_forward_hook(hook)
    model = nondegenerate(Between(conv))
    ctrl, model = create_compressed_model(model, make_config(
        (1, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1))  # fmt: skip
    assert kept == []
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16), tol=1e-5)
    assert small.fn.out_channels == small.a.out_channels == 8


def test_a_hook_that_pools_is_traced_once():
    """The trace wrote the hook around the call and its run applied the hook again, so the
    trace's outputs were not the model's: a needless fall-back to torch.export."""
    conv = nn.Conv2d(16, 16, 3, padding=1)
    conv.register_forward_hook(lambda m, args, out: F.avg_pool2d(out, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "captured with torch.export"
        small, held = prune(conv)
    assert "fn" not in held and small.fn.out_channels == 8


def test_a_hook_from_a_module_named_like_the_package_is_the_users():
    """A hook defined in ``filterprune_tools`` was taken for one of the package's own:
    the conv was cut under its flip of the channels (0.128 relative off)."""

    def hook(module, args, out):
        return out.flip(1)

    hook.__module__ = "filterprune_tools"
    conv = nn.Conv2d(16, 16, 3, padding=1)
    conv.register_forward_hook(hook)
    small, held = prune(conv)
    assert held["fn"] == "flip: acts across channels"


def _conv_roll(module, args, out):
    return torch.roll(out, 1, 1) if isinstance(module, nn.Conv2d) else None


GLOBAL_KEPT = []
_UNSEEN_GLOBAL = "runs a global forward hook (register_module_forward_hook), which the trace " \
    "does not see"  # fmt: skip
GLOBAL = {  # a global hook -> the layers held, with their reason
    "rolls every conv's output": (_conv_roll, {"a": "roll: acts across channels",
                                               "fn": "roll: acts across channels"}),
    "keeps every output": (lambda m, args, out: GLOBAL_KEPT.append(out), {}),
    "branches on a value": (_branch, {k: f"Conv2d {k} {_UNSEEN_GLOBAL}" for k in ("a", "fn")}),
}


@pytest.mark.parametrize(("hook", "held"), GLOBAL.values(), ids=GLOBAL)
def test_global_hooks_are_traced_around_every_call(hook, held):
    """torch.fx records a layer's call without the hooks every module runs: a global
    hook rolling the convs' channels was cut through (0.84 relative off)."""
    GLOBAL_KEPT.clear()
    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        small, found = prune(nn.Conv2d(16, 16, 3, padding=1))
    finally:
        handle.remove()
    assert {k: found[k] for k in ("a", "fn") if k in found} == held
    assert all(not isinstance(t, torch.fx.Proxy) for t in GLOBAL_KEPT)
    assert (small.fn.out_channels == 16) == ("fn" in held)


def _by_exact_class(module, args, out):
    return out * 1.5 if type(module) is nn.BatchNorm2d else None


@pytest.mark.parametrize(("hook", "said"), [
    (_by_exact_class, "on the masked model, whose layers take classes of their own"),
    (None, "on a copy of the model, as strip() and export_model make")])  # fmt: skip
def test_a_global_hook_that_tells_layers_apart_otherwise_than_by_isinstance_is_said(hook, said):
    """A hook keyed on ``type(m) is nn.BatchNorm2d`` stopped firing once masking swapped the
    class (dense vs masked 0.54, masked vs stripped 1.15), and one keyed on ``m is net.b``
    fires on no copy: with no word."""
    model = nondegenerate(Between(nn.Identity()))
    if hook is None:
        def hook(module, args, out):
            return out * 1.5 if module is model.bnb else None
    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        with pytest.warns(UserWarning, match="A global module hook .* computes otherwise "
                          + re.escape(said)):  # fmt: skip
            create_compressed_model(model, make_config((1, 3, 16, 16)))
    finally:
        handle.remove()


class _ReadsABias(Between):
    def forward(self, x):
        y = self.bna(self.a(x))
        return self.head(torch.relu(self.b(y) + self.bna.bias.view(1, -1, 1, 1)).mean((2, 3)))


def test_a_layers_parameter_read_as_a_value_keeps_its_layer_whole():
    """The add was held, but the BatchNorm whose bias it reads was cut with its conv: the
    stripped model failed (16 against 8)."""
    small, held = prune(None, _ReadsABias(nn.Identity()))
    assert held["a"] == held["b"] == "add reads bna.bias, which cannot be cut"
    assert small.bna.num_features == 16


class Gamma(nn.Module):
    """A scale applied by a hook."""

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(1, 16, 1, 1) + 0.5)

    def forward(self, x):
        return x


def _gamma_hooks(gamma):
    param = gamma.gamma
    return {"its module's, read through the call": (lambda m, args, out: out * m.gamma, False),
            "in its closure": (lambda m, args, out: out * param, True),
            "its module's, in its closure": (lambda m, args, out: out * gamma.gamma, True)}


@pytest.mark.parametrize("where", _gamma_hooks(Gamma()))
def test_a_tensor_a_hook_holds_in_its_closure_is_not_cut(where):
    """A copy of the model shares the hook's function, so the stripped model's hook read
    the masked model's parameter: cut with the channels, it crashed the stripped model."""
    gamma = Gamma()
    hook, held = _gamma_hooks(gamma)[where]
    gamma.register_forward_hook(hook)
    small, found = prune(gamma)
    assert ("a" in found) == held and small.fn.gamma.shape[1] == (16 if held else 8)
    if held:
        assert found["a"] == "mul reads fn.gamma (held by a hook's closure), which cannot be cut"


class Noise(nn.Module):
    """StyleGAN's noise injection: one map per sample scaled per channel; the map made in
    forward (seeded: masked and stripped models draw the same), or computed."""

    def __init__(self, made=True):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 16, 1, 1))
        self.g = None if made else nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, y):
        if self.g is not None:
            return y + self.weight * torch.sigmoid(self.g(y))
        seed = torch.Generator().manual_seed(0)
        return y + self.weight * torch.randn(y.shape[0], 1, y.shape[2], y.shape[3], generator=seed)


class _Opaque(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        return y.roll(1, 1)


@pytest.mark.parametrize("made", [True, False])
def test_a_weight_per_channel_over_a_one_channel_map_is_cut(made):
    """The map's one id was tied to every channel it met: "its channels are all tied
    together (one channel class)" held the conv before it (FLOPs kept 1.0)."""
    small, held = prune(Noise(made))
    assert "a" not in held and small.fn.weight.shape[1] == small.a.out_channels == 8


def test_a_weight_per_channel_over_an_opaque_ops_channels_stays_whole():
    class Scaled(Noise):
        def forward(self, y):
            return y + self.weight * _Opaque.apply(y)

    small, held = prune(Scaled())
    assert "a" in held and small.fn.weight.shape[1] == 16


class _Exported(Between):
    """A test of the input's value, which torch.fx cannot trace: torch.export reads it."""

    def forward(self, x):
        if x.abs().mean() > 1e-3:
            x = x * 1.0
        return super().forward(x)


GATHERS = [k for k in APART if "index" in k or "picked" in k]


@pytest.mark.parametrize("name", GATHERS)
def test_positions_picked_by_index_tensors_are_cut_under_torch_export(name):
    """``index.Tensor`` and ``index_select`` had no rule: PointNet++ held its convs."""
    with pytest.warns(UserWarning, match="captured with torch.export"):
        small, held = prune(None, _Exported(APART[name]))
    assert "a" not in held and small.a.out_channels == 8


class IndexedScale(nn.Module):
    """A scale per channel broadcast by indexing, and one indexed into (held)."""

    def __init__(self, pick=False):
        super().__init__()
        self.b, self.pick = nn.Parameter(torch.rand(16) + 0.5), pick

    def forward(self, y):
        if self.pick:
            return y * torch.cat([self.b[:8], self.b[8:] * 2])[:, None, None]
        return y * self.b[None, :, None, None] + self.b[..., None, None]


def test_a_weight_broadcast_by_indexing_is_cut_like_a_view_of_it():
    small, held = prune(IndexedScale())
    assert "a" not in held and small.fn.b.shape == (8,)
    small, held = prune(IndexedScale(pick=True))
    assert "a" in held and small.fn.b.shape == (16,)


class Picked(nn.Module):
    """``a`` (16 filters) -> channels picked by ``pick`` -> ``b`` reading ``width`` of them."""

    def __init__(self, pick, width):
        super().__init__()
        self.a, self.b, self.pick = cbr(3, 16), cbr(width, 16), pick
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.b(self.pick(self.a(x))).mean((2, 3)))


PICKS = {  # pick, width read by b, whether a is cut
    "every other channel": (lambda y: torch.cat([y[:, ::2] * 2, y[:, 1::2]], 1), 16, True),
    "every fourth, from the second, Ellipsis": (lambda y: y[..., 1::4, :, :], 4, True),
    "every other, stop past the last block": (lambda y: y[:, 1:99:2], 8, True),
    "tensor_split in equal sections": (lambda y: _gated(torch.tensor_split(y, 2, dim=1)), 16,
                                       True),
    "every other but the last block": (lambda y: y[:, :13:2], 7, False),
    "every third (16 is no multiple of 3)": (lambda y: y[:, ::3], 6, False),
    "a step of 2 from the third channel": (lambda y: y[:, 2::2], 7, False),
    # counted from the end: channel 1 of 16, channel 0 of 8 once cut
    "every other from the fifteenth last": (lambda y: y[:, -15::2], 8, False),
    "tensor_split at given indices": (lambda y: torch.cat(torch.tensor_split(y, [4], 1), 1),
                                      16, False),
}


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize(("pick", "width", "cut"), PICKS.values(), ids=PICKS.keys())
def test_strided_channel_slices_cut_whole_blocks_and_other_picks_hold(pick, width, cut, export):
    fn = (lambda y: pick(untraced(y))) if export else pick
    small, held = prune(None, Picked(fn, width))
    assert ("a.0" not in held) == cut
    assert small.a[0].out_channels == (8 if cut else 16)
    if cut:  # b reads what the slices leave of a, in blocks of the step
        assert small.b[0].in_channels == width // 2


@pytest.mark.parametrize("sizes", [(16, 1), (1, 16, 1)], ids=["(16, 1)", "(1, 16, 1)"])
def test_an_unflatten_module_is_cut_through_and_its_size_follows(sizes):
    small, held = prune(nn.Sequential(nn.Unflatten(1, sizes), nn.Flatten(1, len(sizes))))
    assert "a" not in held and small.a.out_channels == 8
    assert -1 in small.fn[0].unflattened_size


class Generator(nn.Module):
    """A DCGAN-style generator: a Linear to 32 maps of 4x4, unflattened by a module."""

    def __init__(self, dim=1):
        super().__init__()
        self.fc, self.bn = nn.Linear(16, 32 * 16), nn.BatchNorm2d(32)
        self.unflatten = nn.Unflatten(dim, (32, 4, 4))
        self.up = nn.ConvTranspose2d(32, 3, 4, 2, 1)

    def forward(self, z):
        return self.up(torch.relu(self.bn(self.unflatten(self.fc(z)))))


def test_a_generator_unflattening_a_linear_cuts_it_by_whole_maps():
    model = nondegenerate(Generator())
    config = make_config((2, 16), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(model, config)
    small = assert_strip_equal(ctrl, model, torch.randn(3, 16), tol=1e-5)
    assert small.fc.out_features == 16 * 16 and small.bn.num_features == 16
    assert small.unflatten.unflattened_size == (-1, 4, 4)
    fresh = nondegenerate(Generator())
    resize_to_state_dict(fresh, small.state_dict())
    torch.testing.assert_close(fresh.eval()(torch.ones(2, 16)), small(torch.ones(2, 16)))


class PaddedConv(nn.Conv2d):
    """A conv that pads its input in its own forward before ``F.conv2d`` ("same" padding
    fixed for one input size, as EfficientNet ports write it)."""

    def __init__(self, cin, cout):
        super().__init__(cin, cout, 3, stride=2)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))

    def forward(self, x):
        return F.conv2d(self.pad(x), self.weight, self.bias, self.stride)


def test_a_conv_that_prepares_its_input_in_its_own_forward_is_cut_and_keeps_that_forward():
    """Masks run the conv's own forward on its masked weight (they ran nn.Conv2d's, so
    it was held: efficientnet_pytorch pruned nothing). Fed its padded input, the conv
    agreed with nn.Conv2d's forward, so an early check let masks drop its padding: 15x15
    maps where the model makes 16x16."""
    model = nondegenerate(nn.Sequential(cbr(3, 16), PaddedConv(16, 16), nn.ReLU(),
                                        nn.Conv2d(16, 4, 1)))  # fmt: skip
    x = torch.randn(2, 3, 32, 32)
    ref = model.eval()(x)
    config = make_config((1, 3, 32, 32), prune_first_conv=True, filters_multiple_of=1,
                         prune_downsample_convs=True)
    ctrl, model = create_compressed_model(model, config)
    assert isinstance(model[1], PaddedConv) and model[1].weight_mask.sum() < model[1].weight.numel()
    held = {p for producers, _ in ctrl.statistics().unpruned for p in producers}
    assert "1" not in held and "0.0" not in held
    small = assert_strip_equal(ctrl, model, x, tol=1e-5)
    assert type(small[1]) is PaddedConv and small[1].out_channels == 8
    assert small(x).shape == ref.shape


class DroppedOut(nn.Module):
    """conv -> an in-place or feature dropout -> conv, iterated so that torch.export captures."""

    def __init__(self, drop):
        super().__init__()
        self.a, self.drop, self.b = cbr(3, 16), drop, cbr(16, 16)

    def forward(self, x):
        y = untraced(self.a(x)).clone()  # not a view: dropped out in place
        return self.b(self.drop(y))


@pytest.mark.parametrize("drop", [nn.Dropout2d(inplace=True), nn.FeatureAlphaDropout(),
                                  nn.FeatureAlphaDropout(inplace=True),
                                  nn.Dropout3d(inplace=True)],
                         ids=["Dropout2d_", "FeatureAlphaDropout", "FeatureAlphaDropout_",
                              "Dropout3d_"])  # fmt: skip
def test_dropouts_in_an_exported_graph_are_cut_through(drop):
    small, held = prune(None, DroppedOut(drop))
    assert "a.0" not in held and small.a[0].out_channels == 8


class Exported(nn.Module):
    """conv -> ``fn`` -> conv, iterated so that torch.export captures it."""

    def __init__(self, fn):
        super().__init__()
        self.a, self.fn, self.b = cbr(3, 16), fn, cbr(16, 16)

    def forward(self, x):
        return self.b(self.fn(untraced(self.a(x)).clone()))


IN_PLACE = {
    "relu6_": lambda y: y * F.relu6(y + 3, inplace=True) / 6,  # a hard swish
    "selu_": lambda y: F.selu(y, inplace=True), "celu_": lambda y: F.celu(y, inplace=True),
    "threshold_": lambda y: F.threshold(y, 0.1, 0.0, inplace=True),
    "rrelu_": lambda y: F.rrelu(y, training=False, inplace=True),
    "abs_": lambda y: y.abs_(), "exp_": lambda y: y.mul(0.1).exp_(),
    "addcmul_": lambda y: y.addcmul_(y, y, value=0.5), "lerp_": lambda y: y.lerp_(-y, 0.3),
}


@pytest.mark.parametrize("fn", IN_PLACE.values(), ids=IN_PLACE.keys())
def test_in_place_forms_in_an_exported_graph_are_cut_through(fn):
    small, held = prune(None, Exported(fn))
    assert "a.0" not in held and small.a[0].out_channels == 8


def test_an_equal_split_into_pieces_the_width_does_not_divide_says_so():
    small, held = prune(None, Picked(lambda y: torch.cat(torch.tensor_split(y, 3, 1), 1), 16))
    assert "splits 16 channels into unequal pieces (6/5/5)" in held["a.0"]


def test_a_split_at_sizes_computed_off_the_equal_parts_says_so():
    """It said "split sizes are fixed in code", which they are not."""
    _, held = prune(ACROSS["split at sizes computed off the equal parts"])
    assert held["a"].endswith("split sizes computed in forward, which would not follow a cut")


def test_reductions_within_each_channel_are_cut_on_the_export_path_too():
    fn = APART["quantile, renorm, matrix_norm, linalg.norm, trapezoid"]
    small, held = prune(lambda y: fn(untraced(y)))
    assert "a" not in held and small.a.out_channels == 8


class JoinedTwice(nn.Module):
    """One tensor joined twice: ``cat([y, z, y])`` or ``stack([y, y])`` flattened."""

    def __init__(self, stacked):
        super().__init__()
        self.stacked = stacked
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.c, self.head = nn.Conv2d(32 if stacked else 40, 16, 3, padding=1), nn.Linear(16, 5)

    def forward(self, x):
        y, z = F.relu(self.a(x)), F.relu(self.b(x))
        h = torch.stack([y, y], 2).flatten(1, 2) if self.stacked else torch.cat([y, z, y], 1)
        return self.head(F.relu(self.c(h)).mean((2, 3)))


@pytest.mark.parametrize("stacked", [False, True])
def test_a_tensor_joined_twice_is_cut_in_both_places(stacked):
    """The capture names each input once: the join saw one 16-channel part where it
    writes 32 or 40, and held ``a`` with "channel layout does not match its output"."""
    from filterprune.core.analysis import AnalysisOptions, analyze
    from filterprune.torch.export_capture import capture_export

    small, held = prune(None, JoinedTwice(stacked))
    assert "a" not in held and small.a.out_channels == 8
    assert small.c.in_channels == (16 if stacked else 20)
    cap = capture_export(JoinedTwice(stacked).eval(), (torch.zeros(1, 3, 16, 16),))
    options = AnalysisOptions(prune_first_conv=True)
    groups = {tuple(g.producers): g for g in analyze(cap.graph, options).groups}
    assert groups[("a",)].reason is None and groups[("a",)].size == 16



class _AddOut(Between):
    def __init__(self):
        super().__init__(None)
        self.c, self.bnc = nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16)

    def forward(self, x):
        y = self.bna(self.a(x))
        torch.add(y, self.bnc(self.c(y)), out=y)  # later reads of y read the sum
        return self.head(torch.relu(self.bnb(self.b(y))).mean((2, 3)))


def test_an_out_argument_is_read_as_the_tensor_it_writes():
    """``torch.add(y, z, out=y)``: reads of y after it read y unwritten, so z's conv
    "reaches no output of the captured forward" and was held, and y's with it."""
    with torch.no_grad():
        small, held = prune(None, _AddOut())
    assert "a" not in held and "c" not in held, held
    assert small.c.out_channels == 8


class _ViewWrite(_AddOut):
    def forward(self, x):
        y = self.bna(self.a(x))
        y.transpose(1, 2).add_(self.bnc(self.c(y)).transpose(1, 2))  # changes y
        return self.head(torch.relu(self.bnb(self.b(y))).mean((2, 3)))


def test_an_op_in_place_on_a_view_says_so():
    """The write changes y through the view, which the trace does not follow: c's conv
    was held as reaching no output of the forward."""
    with torch.no_grad():
        _, held = prune(None, _ViewWrite())
    assert held["a"] == held["c"] == ("view_written_in_place: an op in place on a view of "
                                      "these channels, which the analysis does not follow")
