"""torchvision's FrozenBatchNorm2d (the norm of its pretrained detection backbones) is a
per-channel layer: cut with its buffers, where the conv before it was held before."""

import pytest
import torch
from torch import nn
from torch_helpers import assert_strip_equal, make_config
from torchvision.ops import FrozenBatchNorm2d

from filterprune.torch import create_compressed_model


def _frozen(n: int, g: torch.Generator) -> FrozenBatchNorm2d:
    bn = FrozenBatchNorm2d(n)
    bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
    bn.bias.copy_(torch.randn(n, generator=g) * 0.1)
    bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
    bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return bn


def test_frozen_batchnorm_is_cut_with_its_conv():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _frozen(16, g), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), _frozen(16, g), nn.ReLU(),
                          nn.Conv2d(16, 4, 1))  # fmt: skip
    config = make_config((1, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(model, config)
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16), tol=1e-5)
    assert not ctrl.statistics().unpruned[:-1]  # only the head, which feeds the output
    assert small[0].out_channels == 8 and small[1].running_var.shape == (8,)
    assert small[1].weight.shape == small[1].bias.shape == small[1].running_mean.shape == (8,)


class BufferFrozenBN(nn.Module):
    """DETR's and detectron2's FrozenBatchNorm2d: four buffers, the maths in forward."""

    def __init__(self, n: int, g: torch.Generator, combine_first: bool):
        super().__init__()
        self.combine_first = combine_first
        self.register_buffer("weight", torch.rand(n, generator=g) + 0.5)
        self.register_buffer("bias", torch.randn(n, generator=g) * 0.1)
        self.register_buffer("running_mean", torch.randn(n, generator=g) * 0.1)
        self.register_buffer("running_var", torch.rand(n, generator=g) + 0.5)

    def forward(self, x):
        if self.combine_first:  # detectron2: combined, then viewed
            scale = self.weight * (self.running_var + 1e-5).rsqrt()
            shift = self.bias - self.running_mean * scale
            return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
        w, b = self.weight.reshape(1, -1, 1, 1), self.bias.reshape(1, -1, 1, 1)  # DETR
        rv, rm = self.running_var.reshape(1, -1, 1, 1), self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + 1e-5).rsqrt()
        return x * scale + (b - rm * scale)


@pytest.mark.parametrize("combine_first", [False, True], ids=["detr", "detectron2"])
def test_a_frozen_batchnorm_of_buffers_is_cut_with_its_buffers(combine_first):
    """torch.fx computed the buffers' maths at trace time: a constant ("mul reads
    _tensor_constant0, which cannot be cut") held the conv before it."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), BufferFrozenBN(16, g, combine_first),
                          nn.ReLU(), nn.Conv2d(16, 4, 1))  # fmt: skip
    config = make_config((1, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(model, config)
    assert ctrl.statistics().unpruned == [(["3"], "feeds a model output")]
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16), tol=1e-5)
    assert small[0].out_channels == 8 and small[1].running_var.shape == (8,)


class MatrixGain(nn.Module):
    """A per-channel gain reduced from a matrix buffer and a vector: held, as the matrix is
    read across its rows."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("m", torch.rand(n, n))
        self.register_buffer("g", torch.rand(n) + 0.5)

    def forward(self, x):
        return x * (self.m * self.g.view(1, -1)).sum(1).view(1, -1, 1, 1)


def test_weights_of_other_shapes_combined_say_so():
    """The reason read "mul: no tensor operand" where the mul has two. The vector
    broadcast over the matrix is combined with it; the sum across the matrix holds."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), MatrixGain(16), nn.ReLU(),
                          nn.Conv2d(16, 4, 1))  # fmt: skip
    config = make_config((1, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(model, config)
    reasons = dict((p[0], r) for p, r in ctrl.statistics().unpruned)
    assert reasons["0"] == "buffer 1.m is read by sum"
