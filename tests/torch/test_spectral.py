"""A Fourier unit (LaMa's fast Fourier convolution): rfftn over the spatial axes keeps
channels apart, its real and imaginary parts go to the channels of a 1x1 conv and back.
The convs around it are cut; an FFT over every axis keeps its channels whole."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_helpers import assert_strip_equal, make_config, run_onnx

from filterprune.testing.zoo import nondegenerate
from filterprune.torch import create_compressed_model


class FourierUnit(nn.Module):
    def __init__(self, c, every_axis=False):
        super().__init__()
        self.every_axis = every_axis
        self.conv, self.bn = nn.Conv2d(2 * c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c)

    def forward(self, x):
        b = x.shape[0]
        ff = torch.fft.rfftn(x, norm="ortho") if self.every_axis else \
            torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")  # fmt: skip
        ff = torch.stack((ff.real, ff.imag), dim=-1).permute(0, 1, 4, 2, 3).contiguous()
        ff = F.relu(self.bn(self.conv(ff.view((b, -1) + ff.size()[3:]))))
        ff = ff.view((b, -1, 2) + ff.size()[2:]).permute(0, 1, 3, 4, 2).contiguous()
        ff = torch.complex(ff[..., 0], ff[..., 1])
        if self.every_axis:
            return torch.fft.irfftn(ff, s=x.shape[1:], norm="ortho")
        return torch.fft.irfftn(ff, s=x.shape[-2:], dim=(-2, -1), norm="ortho")


class Spectral(nn.Module):
    def __init__(self, every_axis=False, branch=False):
        super().__init__()
        self.branch = branch
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.conv1 = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16),
                                   nn.ReLU())  # fmt: skip
        self.fu, self.conv2 = FourierUnit(16, every_axis), nn.Conv2d(16, 16, 1, bias=False)
        self.head = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        if self.branch and x.abs().mean() > 1e-3:  # torch.fx cannot trace it
            x = x * 1.0
        y = self.conv1(self.stem(x))
        return self.head(F.relu(self.conv2(y + self.fu(y))))


@pytest.mark.parametrize("branch", [False, True], ids=["fx", "export"])
def test_a_fourier_unit_over_the_spatial_axes_is_cut(branch, tmp_path):
    """Held before: "no channel rule for fft_rfftn" and "complex"."""
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(nondegenerate(Spectral(branch=branch)), make_config(
        (1, 3, 16, 16), filters_multiple_of=1))  # fmt: skip
    kept = {s.name: s.kept for s in ctrl.statistics().layers}
    assert kept["conv1.0"] == 8 and kept["fu.conv"] == 16
    x = torch.randn(2, 3, 16, 16)
    small = assert_strip_equal(ctrl, model, x, tol=1e-5)
    if branch:  # the exporter refuses the branch on data, not the transform
        return
    path = tmp_path / "m.onnx"
    ctrl.export_model(str(path))
    with torch.no_grad():
        ref = small(x).numpy()
    out = run_onnx(path, x)[1][0]
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_an_fft_over_every_axis_keeps_its_channels_whole():
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(nondegenerate(Spectral(every_axis=True)),
                                          make_config((1, 3, 16, 16), filters_multiple_of=1))
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert "an FFT over every axis, channels included" in held["conv1.0"]
    assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16), tol=1e-5)
