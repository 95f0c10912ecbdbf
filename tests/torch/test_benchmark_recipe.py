"""The committed benchmark recipe runs unchanged through the public API."""

import json
from pathlib import Path

import torch
from torch import nn

from filterprune import NNCFConfig
from filterprune.testing.cifar_nets import ResNet20
from filterprune.torch import create_compressed_model, register_default_init_args

RECIPE = Path(__file__).parents[2] / "benchmarks" / "accuracy" / "fmnist_recipe.json"


def test_recipe_runs_through_create_compressed_model():
    entries = json.loads(RECIPE.read_text())
    assert entries[0]["algorithm"] == "filter_pruning"
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    train = torch.utils.data.DataLoader(data, batch_size=16)
    config = register_default_init_args(NNCFConfig.from_dict(
        {"input_info": {"sample_size": [1, 1, 28, 28]}, "compression": entries}), train)
    ctrl, model = create_compressed_model(ResNet20(), config)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    # one entry gives the pruning controller itself, several a composite
    pruning = ctrl.get("filter_pruning") if len(entries) > 1 else ctrl
    pruning.register_optimizer(opt)
    for _ in range(3):
        ctrl.scheduler.epoch_step()
        model.train()
        for x, y in train:
            loss = nn.functional.cross_entropy(model(x), y) + ctrl.loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
            ctrl.scheduler.step()
    assert pruning.shrunk
    removed = 1 - pruning.statistics().flops_kept
    assert 0.5 <= removed <= 0.52
    small = ctrl.strip().eval()
    assert sum(p.numel() for p in small.parameters()) < sum(
        p.numel() for p in ResNet20().parameters())
