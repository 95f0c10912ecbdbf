"""Checkpoint/resume equals an uninterrupted run; exported ONNX equals the model."""


import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch_helpers import SmallNet, checkpoint_and_resume, make_config, randomize_bn
from torch_helpers import train_steps as _train

from filterprune.torch import create_compressed_model


def _config():
    return make_config(pruning_init=0.1, pruning_target=0.6, pruning_steps=4,
                       prune_first_conv=True)  # fmt: skip


def _masks(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith("_mask")}


def test_resume_equals_uninterrupted_run(tmp_path):
    torch.manual_seed(0)
    base = randomize_bn(SmallNet())
    # uninterrupted: 4 epochs; resumed from the checkpoint after epoch 2
    (ctrl, model), (ctrl2, model2, opt2) = checkpoint_and_resume(
        base, _config(), _config(), tmp_path / "ckpt.pt", lr=0.05)
    assert ctrl2.scheduler.current_epoch == 1
    _train(ctrl2, model2, opt2, 2, seed=2)
    assert ctrl2.pruning_level == pytest.approx(ctrl.pruning_level)
    assert ctrl2.scheduler.current_epoch == ctrl.scheduler.current_epoch == 3
    m1, m2 = _masks(model), _masks(model2)
    assert m1.keys() == m2.keys()
    for k in m1:
        assert torch.equal(m1[k], m2[k]), k
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_compression_state_restores_masks_before_weights_load():
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(SmallNet(), make_config(prune_first_conv=True))
    state = ctrl.get_compression_state()
    ctrl2, model2 = create_compressed_model(SmallNet(), make_config(prune_first_conv=True),
                                            compression_state=state)  # fmt: skip
    for k, v in _masks(model).items():
        assert torch.equal(v, _masks(model2)[k])
    assert ctrl2.pruning_level == ctrl.pruning_level


def test_state_from_another_model_is_rejected():
    from filterprune import ConfigError

    ctrl, _ = create_compressed_model(SmallNet(), make_config(prune_first_conv=True))
    state = ctrl.get_compression_state()
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3))
    with pytest.raises(ConfigError, match="does not have"):
        create_compressed_model(other, make_config(prune_first_conv=True), compression_state=state)


@pytest.mark.parametrize("shrink", [False, True])
def test_exported_onnx_matches_the_model(small_net, tmp_path, shrink):
    ctrl, model = create_compressed_model(small_net, make_config(prune_first_conv=True))
    path = tmp_path / "model.onnx"
    ctrl.export_model(str(path), shrink=shrink)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
    assert not list(tmp_path.glob("*.tmp*")) and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("name", ["model.pt", "model.xml", "model"])
def test_export_refuses_a_path_that_is_not_onnx(small_net, tmp_path, name):
    ctrl, _ = create_compressed_model(small_net, make_config(prune_first_conv=True))
    with pytest.raises(ValueError, match=r"writes ONNX.*ending in \.onnx"):
        ctrl.export_model(str(tmp_path / name))
    assert not list(tmp_path.iterdir())
