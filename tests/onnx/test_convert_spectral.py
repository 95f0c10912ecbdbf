"""Frequency-domain and complex-valued nets in ONNX files from the current exporter: a
``DFT`` over the spatial axes keeps channels apart, and the real or imaginary part of
channel pairs viewed as complex (a ``Gather`` of one entry of the last axis) is cut by
whole pairs."""

import warnings

import torch
from onnx_helpers import convert, seed_torch, zero  # noqa: F401 - fixture
from torch import nn


class Filtered(nn.Module):
    """GFNet's global filter: each channel's spectrum times its own complex weights."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.weight = nn.Parameter(torch.randn(8, 8, 5, dtype=torch.cfloat))

    def forward(self, x):
        h = torch.fft.rfft2(torch.relu(self.conv1(x))) * self.weight
        return self.conv2(torch.fft.irfft2(h, s=(8, 8)))


class Paired(nn.Module):
    """Channels taken in pairs as complex numbers, their real and imaginary parts apart."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        b, c, height, width = h.shape
        z = torch.view_as_complex(h.view(b, c // 2, 2, height, width).permute(0, 1, 3, 4, 2)
                                  .contiguous())  # fmt: skip
        return self.conv2(torch.cat([z.real, z.imag * 2], 1))


def _export(model, x, path):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), dynamo=True, verbose=False)
    return str(path)


def _first_conv(report):
    """The first conv's row (the current exporter names it ``node_conv2d``)."""
    return next(s for s in report.layers if s.name == "node_conv2d")


def test_zero_filters_before_a_spectral_filter_are_removed(tmp_path):
    """They were kept: "DFT: no channel rule"."""
    model, x = Filtered(), torch.randn(2, 3, 8, 8)
    zero(model.conv1, [1, 5])
    new, report = convert(_export(model, x, tmp_path / "m.onnx"), x)
    assert _first_conv(report).removed == 2


def test_zero_filters_taken_as_complex_pairs_go_by_whole_pairs(tmp_path):
    """They were kept: "Gather: indexes into channels"; half a pair stays."""
    model, x = Paired(), torch.randn(2, 3, 8, 8)
    zero(model.conv1, [2, 3, 4])
    _, report = convert(_export(model, x, tmp_path / "m.onnx"), x)
    conv1 = _first_conv(report)
    assert (conv1.removed, conv1.kept_zero) == (2, 1), conv1
