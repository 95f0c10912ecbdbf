"""A fast subset of the torchvision zoo, one model per family (the full zoo is a benchmark).

With resnet18, mobilenet_v2 and densenet121 in test_torchvision.py, 16 models in all.
"""

import pytest

from filterprune.testing.zoo import check_model

SUBSET = [
    "alexnet",  # flatten -> linear classifier
    "squeezenet1_1",  # concat of expand branches
    "googlenet",  # four-way concat
    "inception_v3",  # concat, asymmetric kernels
    "mobilenet_v3_small",  # depthwise, squeeze-excite, hardswish
    "efficientnet_b0",  # depthwise, SE, stochastic depth
    "mnasnet0_5",  # depthwise, residual
    "shufflenet_v2_x0_5",  # chunk + channel shuffle
    "regnet_y_400mf",  # grouped convs + SE
    "resnext50_32x4d",  # 32 groups
    "convnext_tiny",  # channels-last permutes, LayerNorm, layer scale
    "swin_t",  # windowed attention, permutes, MLP
    "vit_b_16",  # attention blocks, class token
]


@pytest.mark.parametrize("name", SUBSET)
def test_zoo_model(name):
    row = check_model(name)
    assert row["ok"], row
    assert row["flops_kept"] < 0.8, row
