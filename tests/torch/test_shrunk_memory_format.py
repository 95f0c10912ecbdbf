"""``params.shrunk_memory_format``: the layout of the model cut by ``shrink_when_frozen``."""

import copy
import logging

import pytest
import torch
from torch import nn
from torch_helpers import classify_steps, make_config, randomize_bn

from filterprune import NNCFConfig
from filterprune.errors import ConfigError
from filterprune.testing.cifar_nets import ResNet20
from filterprune.torch import create_compressed_model

CL = torch.channels_last


def config(**params):
    params = {"schedule": "exponential", "pruning_steps": 2, "pruning_target": 0.5,
              "shrink_when_frozen": True, **params}  # fmt: skip
    return make_config((1, 1, 28, 28), pruning_init=0.1, **params)


def net():
    torch.manual_seed(0)
    return randomize_bn(ResNet20())


def channels_last(model):
    """Whether every 4-D weight whose two layouts differ (more than one input channel and a
    spatial kernel) is channels last."""
    weights = [p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 < p[0, 0].numel()]
    assert weights
    return all(p.is_contiguous(memory_format=CL) and not p.is_contiguous() for p in weights)


def run(model, cfg, epochs=4):
    """Cut and trained on the same seeded batches: the controller, model and optimizer."""
    ctrl, model = create_compressed_model(model, cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctrl.register_optimizer(optimizer)
    torch.manual_seed(0)
    for _ in range(epochs):
        ctrl.scheduler.epoch_step()
        classify_steps(model, ctrl, optimizer)
    assert ctrl.shrunk
    return ctrl, model, optimizer


def outputs(*models):
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return [m.eval()(x) for m in models]


def test_channels_last_lays_out_the_cut_model_and_training_matches_the_contiguous_run():
    ctrl, model, optimizer = run(net(), config(shrunk_memory_format="channels_last"))
    assert channels_last(model)
    for p in model.parameters():  # momentum follows the new layout, no copies every step
        if p.dim() == 4:
            assert optimizer.state[p]["momentum_buffer"].is_contiguous(memory_format=CL)
    _, plain, _ = run(net(), config())
    assert not channels_last(plain)
    contiguous = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    out, ref, same = outputs(model, plain, contiguous)
    torch.testing.assert_close(same, out, rtol=1e-4, atol=1e-5)  # the layout: rounding only
    torch.testing.assert_close(out, ref, rtol=1e-2, atol=1e-2)  # trained alike
    torch.testing.assert_close(*outputs(ctrl.strip(), model))


def test_resume_lays_the_cut_model_out_channels_last_again():
    cfg = config(shrunk_memory_format="channels_last")
    ctrl, model, _ = run(net(), cfg)
    resumed, fresh = create_compressed_model(net(), cfg, ctrl.get_compression_state())
    assert resumed.shrunk and channels_last(fresh)
    fresh.load_state_dict(model.state_dict())
    assert channels_last(fresh)
    torch.testing.assert_close(*outputs(fresh, model))


def test_preserve_keeps_a_channels_last_model_so_through_the_cut():
    _, model, optimizer = run(net().to(memory_format=CL), config())
    _, plain, _ = run(net(), config())
    assert channels_last(model)
    for p in model.parameters():  # the cut momentum follows its parameter's layout
        if p.dim() == 4:
            assert optimizer.state[p]["momentum_buffer"].is_contiguous(memory_format=CL)
    # training steps in two layouts round apart, more so on one thread: a loose bound
    torch.testing.assert_close(*outputs(model, plain), rtol=5e-2, atol=5e-2)


class FlattensByView(nn.Module):
    """A net whose forward views a 4-D activation as contiguous (fails channels last)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.view(x.size(0), -1))


def test_a_forward_that_cannot_run_channels_last_keeps_its_layout_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="filterprune"):
        _, model, _ = run(randomize_bn(FlattensByView()),
                          config(shrunk_memory_format="channels_last"))
    assert "channels_last" in caplog.text and "view" in caplog.text
    assert all(p.is_contiguous() for p in model.parameters())
    assert model.training  # the probe's eval() is undone
    _, plain, _ = run(randomize_bn(FlattensByView()), config())
    torch.testing.assert_close(*outputs(model, plain))
    assert model.conv2.weight.shape[0] < 16


def test_channels_last_needs_shrink_when_frozen():
    with pytest.raises(ConfigError, match=r"params\.shrink_when_frozen.*preserve"):
        config(shrunk_memory_format="channels_last", shrink_when_frozen=False)
    with pytest.raises(ConfigError, match="shrunk_memory_format"):
        config(shrunk_memory_format="nhwc")


def test_the_layout_probe_leaves_lazy_quantizer_ranges_to_the_first_training_batch():
    pruning = {"algorithm": "filter_pruning", "pruning_init": 0.0,
               "params": {"schedule": "baseline", "pruning_target": 0.5,
                          "shrink_when_frozen": True, "shrunk_memory_format": "channels_last"}}
    quantization = {"algorithm": "quantization",
                    "initializer": {"range": {"num_init_samples": 0}}}  # ranges: first batch
    cfg = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 28, 28]},
                                "compression": [pruning, quantization]})  # fmt: skip
    ctrl, model = create_compressed_model(net(), cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ctrl.get("filter_pruning").register_optimizer(optimizer)
    ctrl.scheduler.epoch_step()  # the masks freeze and the model is cut at once
    assert ctrl.get("filter_pruning").shrunk and channels_last(model)
    quantizers = [q for k, q in ctrl.get("quantization").quantizers.items()
                  if k.startswith("activation")]  # fmt: skip
    assert len(quantizers) > 3 and not any(q.initialized for q in quantizers)
    classify_steps(model, ctrl, optimizer, 1)
    assert ctrl.get("quantization").statistics().ranges_initialized
