"""torchvision's DeformConv2d (DCNv1 and v2, as detection heads and backbones use it): a
conv whose input and filters are cut as any conv's; the offsets and mask it reads stay
whole. Under torch.fx it is traced as one call; under torch.export it is the
``torchvision::deform_conv2d`` op."""

import pytest
import torch
from torch import nn
from torch_helpers import assert_strip_equal, make_config, run_onnx, untraced

from filterprune.testing.zoo import nondegenerate
from filterprune.torch import create_compressed_model

DeformConv2d = pytest.importorskip("torchvision.ops").DeformConv2d


class Deformable(nn.Module):
    def __init__(self, modulated, export):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.offset = nn.Conv2d(16, 27 if modulated else 18, 3, padding=1)
        self.dcn, self.bn = DeformConv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.head, self.modulated, self.export = nn.Conv2d(32, 4, 1), modulated, export

    def forward(self, x):
        y = self.a(x)
        if self.export:  # torch.fx refuses a tensor's length: torch.export captures
            y = untraced(y)
        o = self.offset(y)
        if self.modulated:
            y = self.dcn(y, o[:, :18], torch.sigmoid(o[:, 18:]))
        else:
            y = self.dcn(y, o)
        return self.head(torch.relu(self.bn(y)))


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
def test_a_deformable_conv_is_cut_and_its_offsets_stay_whole(modulated, export, tmp_path):
    """It was held with everything it reads ("no channel rule for
    torchvision.deform_conv2d"); the model stayed uncompressed."""
    torch.manual_seed(0)
    model = nondegenerate(Deformable(modulated, export))
    ctrl, model = create_compressed_model(model, make_config(
        (1, 3, 12, 12), prune_first_conv=True, filters_multiple_of=1))  # fmt: skip
    assert ctrl.captured.extra["capture"] == ("torch.export" if export else "torch.fx")
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 12, 12), tol=1e-5)
    assert small.a[0].out_channels == small.dcn.in_channels == 8
    assert small.dcn.out_channels == 16 and small.offset.out_channels == (27 if modulated else 18)
    stats = ctrl.statistics()
    convs = 8 * 3 + (27 if modulated else 18) * 8 + 16 * 8  # the kept 3x3 weights / 9
    assert stats.current_flops == 2 * 144 * (9 * convs + 4 * 16)
    path = tmp_path / "m.onnx"
    ctrl.export_model(str(path))
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(run_onnx(path, x)[1][0]), model(x),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip


class OffsetGroups(nn.Module):
    """Two offset groups, each for a block of 8 input channels (its offsets from x)."""

    def __init__(self, export):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.offset = nn.Conv2d(3, 2 * 18, 3, padding=1)
        self.dcn, self.head = DeformConv2d(16, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.export = export

    def forward(self, x):
        y = self.a(x)
        if self.export:
            y = untraced(y)
        return self.head(self.dcn(y, self.offset(x) * 3))


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
def test_each_offset_group_keeps_as_many_input_channels(export):
    """Cut 5 and 7, a kept channel of the second block was sampled at the first group's
    offsets after strip: 0.31 relative off the masked model, nothing said."""
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(nondegenerate(OffsetGroups(export)), make_config(
        (1, 3, 12, 12), pruning_init=0.3, prune_first_conv=True, filters_multiple_of=1))
    kept = ctrl.keeps()["dcn"]["in"]
    assert kept[:8].sum() == kept[8:].sum() < 8
    assert_strip_equal(ctrl, model, torch.randn(2, 3, 12, 12), tol=1e-5)


class _Pack(nn.Module):
    """basicsr's DCNv2Pack: deform_conv2d called on the module's own weight (no channel
    rule: one opaque layer), with an offset conv of its own inside."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c, c, 3, 3) * 0.1)
        self.bias = nn.Parameter(torch.zeros(c))
        self.conv_offset = nn.Conv2d(c, 27, 3, padding=1)

    def forward(self, x, feat):
        from torchvision.ops import deform_conv2d

        o1, o2, mask = torch.chunk(self.conv_offset(feat), 3, dim=1)
        return deform_conv2d(x, torch.cat((o1, o2), 1), self.weight, self.bias,
                             padding=(1, 1), mask=torch.sigmoid(mask))  # fmt: skip


def test_a_layer_inside_an_opaque_one_counts_its_flops_once():
    """The offset conv's FLOPs counted twice: as its own layer and among the opaque
    module's matrices (5,824,512 FLOPs in all here, of 3,833,856)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.feat = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 3, padding=1)
            self.dcn, self.head = _Pack(16), nn.Conv2d(16, 3, 3, padding=1)

        def forward(self, x):
            return self.head(self.dcn(self.stem(x), self.feat(x)))

    ctrl, _ = create_compressed_model(Net(), make_config((1, 3, 16, 16)))
    positions = 16 * 16
    convs = 2 * positions * 9 * (16 * 3 + 16 * 3 + 27 * 16 + 3 * 16)
    assert ctrl.statistics().full_flops == convs + 2 * positions * 9 * 16 * 16
