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


def config(pruning_init=0.1, **params):
    params = {"schedule": "exponential", "pruning_steps": 2, "pruning_target": 0.5,
              "extra": {"initializer": {"batchnorm_adaptation":
                                        {"num_bn_adaptation_samples": 16}}}, **params}  # fmt: skip
    return make_config((1, 1, 28, 28), pruning_init=pruning_init, **params)


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


def test_statistics_are_reestimated_on_the_cut_model(monkeypatch):
    """With ``shrink_when_frozen`` the re-estimation waits for the cut: the statistics are
    those of the masked model (kept channels) at the pruned model's cost."""
    widths = []
    real = torch_frontend.adapt_batchnorm
    monkeypatch.setattr(torch_frontend, "adapt_batchnorm",
                        lambda *a: (widths.append(a[0].layers[8].conv1.weight.shape[0]),
                                    real(*a)))  # fmt: skip

    def cut_at_once(shrink):
        torch.manual_seed(0)
        cfg = config(schedule="baseline", pruning_init=0.0, shrink_when_frozen=shrink,
                     bn_adaptation_after_mask_change=True)  # fmt: skip
        ctrl, model = create_compressed_model(randomize_bn(ResNet20()),
                                              register_default_init_args(cfg, loader()))
        ctrl.register_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
        ctrl.scheduler.epoch_step()
        return ctrl, model

    masked_ctrl, _ = cut_at_once(False)
    assert widths == [64]  # the masked model, at the mask change
    cut_ctrl, cut = cut_at_once(True)
    assert cut_ctrl.shrunk and widths[1:] == [cut.layers[8].conv1.weight.shape[0]]
    assert widths[1] < 64
    stripped = masked_ctrl.strip().state_dict()
    stats = {k: v for k, v in cut.state_dict().items()
             if k.endswith(("running_mean", "running_var"))}  # fmt: skip
    assert len(stats) == 42  # 21 BatchNorms
    for key, value in stats.items():
        torch.testing.assert_close(value, stripped[key], rtol=1e-4, atol=1e-5)
