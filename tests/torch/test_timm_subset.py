"""A fast subset of timm (the full sweep, one model per family, is benchmarks/timm_zoo.py).

timm's own small ``test_*`` architectures, each for what it exercises; checked like the
zoo: non-degenerate parameters, strip == masked, ONNX == stripped, output shape kept.
"""

import pytest

from filterprune.testing.zoo import check_timm

SUBSET = {
    "test_efficientnet": 0.40,  # BatchNormAct2d (F.batch_norm on its parameters), depthwise, SE
    "test_resnet": 0.30,  # timm's ResNet blocks, zero-init last BN gamma
    "test_byobnet": 0.40,  # bring-your-own-blocks: mixed block types
    "test_convnext": 0.70,  # LayerNorm2d (F.layer_norm on its parameters), layer scale
    "test_vit": 0.80,  # fx cannot trace it at this size: the torch.export capture; attention
}


@pytest.mark.parametrize("name", SUBSET)
def test_timm_model(name):
    row = check_timm(name)
    assert row["ok"], row
    assert row["flops_kept"] < SUBSET[name], row
    assert row["exporter"] == "dynamo"
    assert row["capture"] == ("torch.export" if name == "test_vit" else "torch.fx")
