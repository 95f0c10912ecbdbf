"""torchvision's FrozenBatchNorm2d (the norm of its pretrained detection backbones) is a
per-channel layer: cut with its buffers, where the conv before it was held before."""

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
