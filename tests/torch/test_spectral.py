"""A Fourier unit (LaMa's fast Fourier convolution): rfftn over the spatial axes keeps
channels apart, its real and imaginary parts go to the channels of a 1x1 conv and back.
The convs around it are cut; an FFT over every axis keeps its channels whole. Complex
views and maths per channel (``view_as_real``, ``polar``, ``fftshift``) and a weight read
as complex pairs (GFNet's filter) are cut through."""

import warnings

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


class ComplexOps(nn.Module):
    """Complex features made of two convs' outputs and back to channels, each form
    elementwise per channel (``shift`` centres each channel's spectrum)."""

    def __init__(self, form):
        super().__init__()
        self.form = form
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Conv2d(32 if form == "view_as_real" else 16, 4, 1)

    def forward(self, x):
        z = torch.complex(self.a(x), self.b(x))
        if self.form == "view_as_real":  # real and imaginary parts of each channel in turn
            r = torch.view_as_real(z).permute(0, 1, 4, 2, 3).flatten(1, 2)
        elif self.form == "polar":  # modReLU
            r = torch.polar(F.relu(z.abs() - 0.1), z.angle()).real
        elif self.form == "conj":
            r = torch.imag(torch.conj(z).resolve_conj()) + torch.real(z)
        else:
            r = torch.fft.fftshift(torch.fft.fft2(z), dim=(-2, -1)).abs()
        return self.head(r)


@pytest.mark.parametrize("form", ["view_as_real", "polar", "conj", "shift"])
def test_complex_views_and_maths_per_channel_are_cut(form):
    """Each held both convs: "no channel rule for view_as_real" (angle, fft_fftshift...)."""
    torch.manual_seed(0)
    config = make_config((2, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(nondegenerate(ComplexOps(form)), config)
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16), tol=1e-5)
    assert small.a.out_channels == small.b.out_channels == 8


def test_an_fft_shift_over_every_axis_keeps_its_channels_whole():
    class Shifted(ComplexOps):
        def forward(self, x):
            return self.head(torch.fft.fftshift(self.a(x) + self.b(x)))

    torch.manual_seed(0)
    config = make_config((2, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(nondegenerate(Shifted("shift")), config)
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert "acts across channels" in held["a"], held
    assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16), tol=1e-5)


class GlobalFilter(nn.Module):
    """GFNet's global filter on channels-last tokens, its complex weight stored as
    ``(h, w, dim, 2)`` real pairs and read with ``view_as_complex``; or, with ``empty``,
    none, and LaMa's FFC form of a branch without inputs: ``nn.Identity()`` on the int 0."""

    def __init__(self, empty=False):
        super().__init__()
        self.empty, self.none = empty, nn.Identity()
        self.stem, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)
        self.complex_weight = nn.Parameter(torch.randn(16, 9, 16, 2) * 0.5)

    def forward(self, x):
        h = F.relu(self.stem(x)) + (self.none(0) if self.empty else 0)
        t = h.permute(0, 2, 3, 1)
        f = torch.fft.rfft2(t, dim=(1, 2), norm="ortho")
        f = f * (1 if self.empty else torch.view_as_complex(self.complex_weight))
        t = torch.fft.irfft2(f, s=t.shape[1:3], dim=(1, 2), norm="ortho")
        return self.head(F.relu(t.permute(0, 3, 1, 2)))


@pytest.mark.parametrize("empty", [False, True], ids=["filter", "identity of 0"])
def test_a_weight_read_as_complex_pairs_and_a_layer_on_a_constant_are_cut_through(empty):
    """The filter held the stem ("weight complex_weight is read by view_as_complex"); the
    Identity called on 0 held what it was added to ("no channel rule for module
    Identity")."""
    torch.manual_seed(0)
    config = make_config((2, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(nondegenerate(GlobalFilter(empty)), config)
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16), tol=1e-5)
    assert small.stem.out_channels == 8
    assert tuple(small.complex_weight.shape) == (16, 9, 16 if empty else 8, 2)


def test_a_complex_weight_is_cut_and_read_without_a_casting_warning():
    """The check for a forward that writes its parameters cast them to float64, which
    warned "Casting complex values to real discards the imaginary part"."""
    class Complex(GlobalFilter):
        def __init__(self):
            super().__init__()
            self.complex_weight = nn.Parameter(torch.randn(16, 9, 16, dtype=torch.cfloat))

        def forward(self, x):
            t = F.relu(self.stem(x)).permute(0, 2, 3, 1)
            f = torch.fft.rfft2(t, dim=(1, 2)) * self.complex_weight
            t = torch.fft.irfft2(f, s=t.shape[1:3], dim=(1, 2))
            return self.head(F.relu(t.permute(0, 3, 1, 2)))

    torch.manual_seed(0)
    config = make_config((2, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        ctrl, model = create_compressed_model(nondegenerate(Complex()), config)
    assert not [w for w in said if "imaginary part" in str(w.message)]
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16), tol=1e-5)
    assert tuple(small.complex_weight.shape) == (16, 9, 8)

