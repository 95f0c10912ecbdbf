"""``params.bn_adaptation_after_mask_change``: BatchNorm statistics follow every new mask."""

import pytest
import torch
from torch_helpers import make_config, randomize_bn

import filterprune.torch.frontend as torch_frontend
from filterprune.errors import ConfigError
from filterprune.testing.cifar_nets import ResNet20
from filterprune.torch import create_compressed_model, register_default_init_args


def loader():
    data = torch.utils.data.TensorDataset(torch.randn(32, 1, 28, 28), torch.zeros(32))
    return torch.utils.data.DataLoader(data, batch_size=16)


def config(**params):
    params = {"schedule": "exponential", "pruning_steps": 2, "pruning_target": 0.5,
              "extra": {"initializer": {"batchnorm_adaptation":
                                        {"num_bn_adaptation_samples": 16}}}, **params}  # fmt: skip
    return make_config((1, 1, 28, 28), pruning_init=0.1, **params)


@pytest.mark.parametrize("on", [True, False])
def test_statistics_are_reestimated_after_each_mask_change(monkeypatch, on):
    calls = []
    real = torch_frontend.adapt_batchnorm
    monkeypatch.setattr(torch_frontend, "adapt_batchnorm",
                        lambda *a: (calls.append(a[2]), real(*a)))  # fmt: skip
    torch.manual_seed(0)
    model = randomize_bn(ResNet20())
    ctrl, model = create_compressed_model(
        model, register_default_init_args(config(bn_adaptation_after_mask_change=on), loader()))
    assert calls == [16]  # creation: the workflow's adaptation only
    bn = model.layers[8].bn2  # downstream of every mask
    changes = 0
    for _ in range(4):
        before, kept = bn.running_var.clone(), ctrl.plan.kept
        ctrl.scheduler.epoch_step()
        changed = any(not torch.equal(torch.as_tensor(kept[g]), torch.as_tensor(v))
                      for g, v in ctrl.plan.kept.items())  # fmt: skip
        changes += changed
        assert (not torch.equal(before, bn.running_var)) == (on and changed)
    assert changes >= 1 and ctrl.pruning_level == 0.5
    assert len(calls) == 1 + (changes if on else 0)


def test_needs_registered_data():
    with pytest.raises(ConfigError, match=r"^`params\.bn_adaptation_after_mask_change` needs "
                       r"training data: register it with "
                       r"register_default_init_args\(config, data\) first\. "
                       r"Received: no registered data\.$"):
        create_compressed_model(ResNet20(), config(bn_adaptation_after_mask_change=True))
