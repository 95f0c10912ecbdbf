"""Torchvision classifiers (random init): prune, strip, export, compare."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from conftest import assert_strip_equal, make_config, randomize_bn

from filterprune.torch import create_compressed_model
from filterprune.torch.controller import export_onnx

MODELS = ["resnet18", "mobilenet_v2", "densenet121"]


@pytest.mark.parametrize("name", MODELS)
def test_torchvision_model_prunes_strips_and_exports(name, tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.get_model(name, weights=None, num_classes=10)).eval()
    config = make_config((1, 3, 64, 64), schedule="baseline",
                         prune_first_conv=True, prune_downsample_convs=True)  # fmt: skip
    ctrl, model = create_compressed_model(model, config)
    stats = ctrl.statistics()
    assert stats.flops_kept < 0.4, str(stats)
    x = torch.randn(2, 3, 64, 64)
    small = assert_strip_equal(ctrl, model, x)
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small == stats.current_params
    path = tmp_path / f"{name}.onnx"
    export_onnx(small, (x[:1],), str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x[:1].numpy()})[0]
    with torch.no_grad():
        ref = small(x[:1]).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
