"""Sizes read in forward: a channel count read at run time follows the cut.

Where it only sizes a reshape, the reshaped axis is tied to the axis it was read from and
both are cut alike; where it is used as a number (a scale, a new tensor's shape), the
channels stay whole. Every model is compared masked against stripped with every
parameter and BatchNorm statistic redrawn (no branch hidden by a zero or a 1e-6).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_helpers import assert_strip_equal, make_config, untraced

from filterprune.testing.zoo import nondegenerate
from filterprune.torch import create_compressed_model


def cbr(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())  # fmt: skip


class SELayer(nn.Module):
    """The common squeeze-excitation layer: sizes read from ``x`` reshape the gate."""

    def __init__(self, c):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c, c // 4, bias=False), nn.ReLU(),
                                nn.Linear(c // 4, c, bias=False), nn.Sigmoid())  # fmt: skip

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.pool(x).view(b, c)
        return x * self.fc(y).view(b, c, 1, 1).expand_as(x)


class Head(nn.Module):
    """``body`` between two conv blocks and a classifier."""

    def __init__(self, body, width=32):
        super().__init__()
        self.a, self.b, self.body = cbr(3, 16), cbr(16, width), body
        self.c, self.fc = cbr(width, 16), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.c(self.body(self.b(self.a(x)))).mean((2, 3)))


class TokenMix(nn.Module):
    """A Linear over tokens, reshaped back with the input's ``C``: another tensor's size."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(32, 32)

    def forward(self, x):
        n, c, h, w = x.shape
        return self.lin(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, c, h, w)


class ViewAsShape(nn.Module):
    """``y.view(x.shape)``: one whole shape read from another tensor sizes every axis."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        return self.conv(x).flatten(2).view(x.shape)


class GroupsReadToo(nn.Module):
    """A shuffle whose group count is computed from the width too: both axes would move."""

    def forward(self, x):
        b, c, h, w = x.shape
        g = c // 8
        return x.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)


class ScaleByWidth(nn.Module):
    def forward(self, x):
        return x * x.shape[1] ** -0.5


class LayerNormByShape(nn.Module):
    def forward(self, x):
        return F.layer_norm(x, x.shape[1:])


class Gate(nn.Module):
    """Comparisons and ``where`` are elementwise."""

    def forward(self, x):
        return torch.where(x > 0, x, 0.1 * x) * (x < 3).float()


class Resize(nn.Module):
    """Batch and spatial sizes read in forward: no channels there, nothing held."""

    def forward(self, x):
        y = F.interpolate(F.max_pool2d(x, 2), size=x.shape[2:])
        return y.view(y.size(0), -1).view_as(x)


class BuiltSizeSE(nn.Module):
    """A gate reshaped by a size list built in forward: ``[b, c] + [1] * (x.ndim - 2)``
    (MONAI's SE layers), or a slice of the shape plus a tuple."""

    def __init__(self, form):
        super().__init__()
        self.fc, self.form = nn.Linear(32, 32), form

    def forward(self, x):
        b, c = x.shape[:2]
        y = torch.sigmoid(self.fc(x.mean((2, 3))))
        if self.form == "list":
            return x * y.view([b, c] + [1] * (x.ndim - 2))
        if self.form == "shape_slice":
            return x * y.view(x.shape[:2] + (1, 1))
        if self.form == "one_axis_slice":  # a tuple of one size, then a -1
            return x * y.reshape(y.shape[:1] + (-1, 1, 1))
        return x * y.view([b] + [c] + (x.dim() - 2) * [1])


class BuiltSizeOther(nn.Module):
    """The same list, ``c`` read from another tensor than the one reshaped: the reshaped
    axis follows that tensor, so both are cut alike."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 32)

    def forward(self, x):
        y = torch.sigmoid(self.fc(x.mean((2, 3))))
        return x * y.view([x.shape[0], y.shape[1]] + [1] * (x.ndim - 2))


class SharedSize(nn.Module):
    """The size list built for the gate's view also sizes a new tensor: a number there."""

    def __init__(self):
        super().__init__()
        self.fc, self.u, self.proj = nn.Linear(32, 32), nn.Conv2d(32, 32, 1), nn.Conv2d(32, 32, 1)

    def forward(self, x):
        size = x.shape[:2] + (1, 1)
        y = torch.sigmoid(self.fc(x.mean((2, 3)))).view(size)
        return x * y + self.proj(self.u(x) + torch.ones(size))  # ones sized by x, added to u


def test_a_size_list_that_also_sizes_a_new_tensor_keeps_its_channels():
    """The list's builder was taken as the view's own: the group was cut, and the stripped
    model failed (ones of the old width added to the cut tensor)."""
    _, held = prune(Head(SharedSize()))  # strip == masked
    assert "b.0" in held


@pytest.mark.parametrize("form", ["list", "shape_slice", "one_axis_slice", "nested"])
def test_a_size_list_built_in_forward_is_read_item_by_item(form):
    assert_cut_with_b(BuiltSizeSE(form), "fc")


def test_a_size_list_read_from_another_tensor_ties_it():
    assert_cut_with_b(BuiltSizeOther(), "fc")


def prune(model, size=16):
    nondegenerate(model)
    config = make_config((1, 3, size, size), prune_first_conv=True, prune_downsample_convs=True)
    ctrl, model = create_compressed_model(model, config)
    assert_strip_equal(ctrl, model, torch.randn(2, 3, size, size), tol=1e-5)
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers
            if "filters_multiple_of" not in r}  # held by the analysis, not by rounding
    return ctrl, held


def assert_cut_with_b(body, name):
    """``body``'s layer ``name`` and the conv before it are cut, to the same width."""
    ctrl, held = prune(Head(body))
    assert "b.0" not in held and f"body.{name}" not in held
    small = ctrl.strip()
    layer = small.get_submodule(f"body.{name}")
    width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    assert small.b[0].out_channels == width < 32


def test_squeeze_excitation_with_sizes_read_from_its_input_is_cut():
    _, held = prune(Head(SELayer(32)))
    assert "b.0" not in held and "body.fc.0" not in held and "body.fc.2" not in held


def test_a_reshape_sized_by_another_tensor_ties_both_groups():
    assert_cut_with_b(TokenMix(), "lin")


def test_a_view_to_another_tensors_whole_shape_ties_every_axis():
    assert_cut_with_b(ViewAsShape(), "conv")


def test_a_reshape_with_two_computed_channel_axes_keeps_them_whole():
    _, held = prune(Head(GroupsReadToo()))  # strip == masked, and the widths stay
    assert "b.0" in held


class Merged(nn.Module):
    """Channels and height merged with a ``-1`` beside (doctr's CRNN: ``c, h, w =
    x.shape[1:]; reshape(x, (-1, h * c, w))``), or per-channel rows (``-1`` = batch times
    channels), each read back to the map's shape."""

    def __init__(self, form):
        super().__init__()
        self.form = form

    def forward(self, x):
        c, h, w = x.shape[1:]
        if self.form == "crnn":
            return torch.reshape(x, (-1, h * c, w)).view_as(x)
        if self.form == "flat":
            return x.reshape(-1, c * h * w).view_as(x) * 2
        return torch.softmax(x.reshape(-1, h * w), -1).view_as(x)  # per-channel rows


@pytest.mark.parametrize("form", ["crnn", "flat", "rows"])
def test_a_merge_of_the_tensors_own_sizes_beside_a_minus_one_is_cut(form):
    """Held before ("reshape fixes the channel count in code"): the -1 could take the
    cut as well as the merged axis. It is the one axis the others leave, the batch."""
    _, held = prune(Head(Merged(form)))
    assert "b.0" not in held


def test_a_size_read_from_the_input_does_not_make_a_first_convolution():
    """``F.interpolate(y, size=x.shape[2:])`` reads the input's size, not its values: the
    conv after it was held as a "first convolution" (Uformer-style nets stayed whole)."""

    class Upsampled(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 16, 3, 2, 1), nn.Conv2d(16, 16, 3, padding=1)
            self.c3, self.head = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 1, 1)

        def forward(self, x):
            y = torch.relu(self.c2(torch.relu(self.c1(x))))
            y = F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)
            return self.head(torch.relu(self.c3(y)))

    model = nondegenerate(Upsampled())
    ctrl, model = create_compressed_model(model, make_config((1, 3, 16, 16), filters_multiple_of=1))
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert "c3" not in held and held["c1"] == "first convolution (prune_first_conv is off)"
    assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16), tol=1e-5)


def test_a_width_used_as_a_number_keeps_its_channels_whole():
    _, held = prune(Head(ScaleByWidth()))
    assert "read in forward and used as a number" in held["b.0"]
    assert "a.0" not in held and "c.0" not in held


def test_layer_norm_over_a_shape_read_in_forward_keeps_its_channels_whole():
    _, held = prune(Head(LayerNormByShape()))
    assert held["b.0"] == "layer_norm: layer_norm over a shape computed in forward"
    assert "a.0" not in held


def test_comparisons_and_where_are_elementwise():
    _, held = prune(Head(Gate()))
    assert "b.0" not in held


def test_batch_and_spatial_sizes_hold_nothing():
    _, held = prune(Head(Resize()))
    assert "b.0" not in held


class TiedAutoencoder(nn.Module):
    """The decoder runs ``conv_transpose2d`` on the encoder convs' own weights."""

    def __init__(self):
        super().__init__()
        self.enc1, self.enc2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Sequential(cbr(3, 8), nn.Conv2d(8, 4, 1))

    def forward(self, x):
        h = F.relu(self.enc2(F.relu(self.enc1(x))))
        d = F.relu(F.conv_transpose2d(h, self.enc2.weight, padding=1))
        return self.head(F.conv_transpose2d(d, self.enc1.weight, padding=1))


class TiedWithOwnBias(nn.Module):
    """The decoder reads the encoder's weight and a bias of the model's own."""

    def __init__(self):
        super().__init__()
        self.enc, self.mid = nn.Conv2d(3, 16, 3, stride=2, padding=1), cbr(16, 16)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        h = self.mid(F.relu(self.enc(x)))
        return F.conv_transpose2d(h, self.enc.weight, self.bias, stride=2, padding=1,
                                  output_padding=1)  # fmt: skip


def test_a_weight_read_by_an_op_without_a_rule_keeps_every_group_it_cuts_whole():
    # enc2's weight is cut along enc2's filters and along enc1's: both must stay
    ctrl, held = prune(TiedAutoencoder())
    assert "reads parameters of Conv2d enc2" in held["enc2"]
    assert "reads parameters of Conv2d enc" in held["enc1"]
    assert "head.0.0" not in held


def test_a_weight_read_with_another_modules_bias_keeps_its_layer_whole():
    """One call reads enc's weight and the model's own bias: enc stays whole too."""
    _, held = prune(TiedWithOwnBias())  # the stripped decoder would read 16 rows of 8
    assert "reads parameters that are not one layer's (enc.weight, bias)" in held["enc"]


class _TiedUntraced(TiedWithOwnBias):
    def forward(self, x):
        return super().forward(untraced(x))


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
def test_a_transposed_conv_on_another_layers_weight_counts_its_input_positions(export):
    """Counted at its output positions, stride 2 gave 4 times its FLOPs."""
    net = (_TiedUntraced if export else TiedWithOwnBias)()
    ctrl, _ = prune(net)
    assert ctrl.captured.extra["capture"] == ("torch.export" if export else "torch.fx")
    stats = ctrl.statistics()
    enc = net.enc.weight.numel() * 8 * 8  # at 8 x 8: enc's outputs, the decoder's inputs
    mid = net.mid[0].weight.numel() * 8 * 8
    assert stats.full_flops == 2 * (enc + mid + enc)


def test_a_weight_normed_conv_is_cut_and_stripped_to_a_plain_conv():
    net = Head(nn.utils.weight_norm(nn.Conv2d(32, 32, 3, padding=1)))
    ctrl, held = prune(net)  # stripped equals masked
    assert not held.keys() & {"a.0", "b.0", "body", "c.0"}
    body = ctrl.strip().body
    assert body.out_channels < 32 and not hasattr(body, "weight_g")


@pytest.mark.parametrize("norm", [nn.utils.weight_norm, nn.utils.spectral_norm])
def test_a_weight_normed_model_strips_after_a_training_step(norm):
    """The hook-computed weight is a non-leaf tensor after a step, which deepcopy refuses."""
    net = Head(norm(nn.Conv2d(32, 32, 3, padding=1)))
    ctrl, _ = prune(net)
    net.train()
    net(torch.randn(2, 3, 16, 16)).sum().backward()
    x = torch.randn(2, 3, 16, 16)
    small = ctrl.strip().eval()
    with torch.no_grad():
        assert torch.allclose(small(x), net.eval()(x), rtol=1e-4, atol=1e-5)
