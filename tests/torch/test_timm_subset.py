"""A fast subset of timm (the full sweep, one model per family, is benchmarks/timm_zoo.py).

timm's own small ``test_*`` architectures, each for what it exercises; checked like the
zoo: non-degenerate parameters, strip == masked, ONNX == stripped, output shape kept.
"""

import pytest

from filterprune.testing.zoo import check_timm

SUBSET = {  # name: (FLOPs kept at most, input side)
    "test_efficientnet": (0.40, 64),  # BatchNormAct2d (F.batch_norm on its parameters), SE
    "test_resnet": (0.30, 64),  # timm's ResNet blocks, zero-init last BN gamma
    "test_byobnet": (0.40, 64),  # bring-your-own-blocks: mixed block types
    "test_convnext": (0.70, 64),  # LayerNorm2d (F.layer_norm on its parameters), layer scale
    "test_vit": (0.80, 64),  # tests of its own size, answered on the sample; attention
}


@pytest.mark.parametrize("name", SUBSET)
def test_timm_model(name):
    bound, size = SUBSET[name]
    row = check_timm(name, size=size)
    assert row["ok"], row
    assert row["flops_kept"] < bound, row
    assert row["exporter"] == "dynamo"
    assert row["capture"] == "torch.fx"
