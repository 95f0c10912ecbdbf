"""``coupled_L2``: a channel scored by its filters, its BatchNorm and its readers' columns."""

import numpy as np
import pytest
import torch
from torch import nn
from torch_helpers import assert_strip_equal, make_config, randomize_bn

from filterprune.core.workflow import Frontend, dry_run
from filterprune.errors import ConfigError
from filterprune.onnx.dry_run import OnnxFrontend
from filterprune.testing.cifar_nets import ResNet20
from filterprune.torch import analyze_model, create_compressed_model
from filterprune.torch.frontend import TorchFrontend

SILENT = [0, 3, 5, 6]


class Bare(TorchFrontend):
    """A frontend that reads weights but not every parameter (the contract's default)."""

    name = "bare"
    read_params = Frontend.read_params


def chain(seed=0):
    """stem -> conv1 (8 filters, no bias) -> BN -> ReLU -> conv2 -> BN -> ReLU -> pool -> fc."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 3, bias=False), nn.BatchNorm2d(8),
                        nn.ReLU(), nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))  # fmt: skip
    return randomize_bn(net, seed)


def config(importance, init=0.0):
    return make_config((1, 3, 14, 14), filter_importance=importance, schedule="baseline",
                       pruning_init=init, filters_multiple_of=1)  # fmt: skip


def group_of(ctrl, layer):
    return next(g for g in ctrl.analysis.prunable_groups if layer in g.producers)


def test_scores_are_the_mean_over_every_tensor_of_the_channel():
    net = chain()
    ctrl, _ = create_compressed_model(net, config("coupled_L2"))
    conv1, bn, conv2 = (m.detach().numpy() for m in (net[1].weight, net[2].weight, net[4].weight))
    beta = net[2].bias.detach().numpy()
    members = [np.square(conv1).sum(axis=(1, 2, 3)), bn**2, beta**2,
               np.square(conv2).sum(axis=(0, 2, 3))]  # fmt: skip
    by_hand = sum(m / m.mean() for m in members) / 4
    np.testing.assert_allclose(ctrl._scores()[group_of(ctrl, "1").id], by_hand, rtol=1e-6)


def test_a_channel_its_readers_ignore_goes_first_though_its_filter_is_large():
    """L2 keeps the largest filters; coupled_L2 sees that conv2 reads them with zero
    weights and the BatchNorm shrinks them, and prunes them."""
    net = chain()
    with torch.no_grad():
        net[1].weight[SILENT] *= 10.0
        net[2].weight[SILENT] = 0.01
        net[2].bias[SILENT] = 0.0
        net[4].weight[:, SILENT] = 0.0
    coupled, model = create_compressed_model(net, config("coupled_L2", init=0.5))
    pruned = np.flatnonzero(~coupled.keeps()["1"]["out"]).tolist()
    assert pruned == SILENT
    l2, _ = create_compressed_model(chain(), config("L2", init=0.5))
    assert np.flatnonzero(~l2.keeps()["1"]["out"]).tolist() != SILENT
    assert_strip_equal(coupled, model, torch.randn(2, 3, 14, 14))


def test_resnet_masked_equals_stripped_under_a_flops_target():
    torch.manual_seed(0)
    model = randomize_bn(ResNet20())
    cfg = make_config((1, 1, 28, 28), filter_importance="coupled_L2", schedule="baseline",
                      pruning_init=0.0, pruning_flops_target=0.5, filters_multiple_of=1,
                      prune_first_conv=True, prune_downsample_convs=True)  # fmt: skip
    ctrl, model = create_compressed_model(model, cfg)
    ctrl.scheduler.epoch_step()
    assert 0.5 <= 1 - ctrl.statistics().flops_kept <= 0.52
    # the residual stream's groups (four producers) are ranked against the inner ones
    kept = {g.id: int(ctrl.plan.kept[g.id].sum()) for g in ctrl.analysis.prunable_groups}
    assert len(set(kept.values())) > 1
    assert_strip_equal(ctrl, model, torch.randn(2, 1, 28, 28))


def test_a_dry_run_plans_what_the_real_run_installs():
    dry = analyze_model(chain(), config("coupled_L2", init=0.5))
    ctrl, _ = create_compressed_model(chain(), config("coupled_L2", init=0.5))
    assert dry.plan.to_dict(dry.analysis) == ctrl.plan.to_dict(ctrl.analysis)


def test_an_exported_onnx_file_is_scored_alike(tmp_path):
    """The ONNX dry run reads the same tensors from the file and keeps the same channels."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3),
                        nn.ReLU(), nn.Conv2d(6, 5, 1))  # fmt: skip
    torch.manual_seed(0)
    for p in net.parameters():
        p.data.normal_()
    path = tmp_path / "chain.onnx"
    torch.onnx.export(net.eval(), (torch.randn(1, 3, 14, 14),), str(path))
    onnx_ctrl = dry_run(OnnxFrontend(), str(path), config("coupled_L2", init=0.5))
    torch_ctrl = analyze_model(net, config("coupled_L2", init=0.5))
    kept = [sorted(np.flatnonzero(k).tolist() for k in c.plan.kept.values())
            for c in (onnx_ctrl, torch_ctrl)]  # fmt: skip
    assert kept[0] == kept[1] and len(kept[0]) == 2


def test_a_frontend_that_cannot_read_parameters_refuses_it():
    with pytest.raises(ConfigError, match=r"'coupled_L2' needs every parameter that holds the "
                       r"pruned channels, which the bare frontend does not provide"):
        dry_run(Bare(), chain(), config("coupled_L2", init=0.5))


def test_a_flattened_reader_counts_once_per_channel():
    """A Linear reading the flattened 8x4x4 map: each channel's 16 columns add up first, so
    that reader weighs as much as the other members, not 16 times as much."""
    torch.manual_seed(0)
    net = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 3, bias=False),
                                     nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(8 * 4 * 4, 5)))  # fmt: skip
    cfg = make_config((1, 3, 8, 8), filter_importance="coupled_L2", schedule="baseline",
                      pruning_init=0.0)  # fmt: skip
    ctrl, _ = create_compressed_model(net, cfg)
    conv, gamma, beta, fc = (t.detach().numpy() for t in (net[1].weight, net[2].weight,
                                                          net[2].bias, net[5].weight))  # fmt: skip
    members = [np.square(conv).sum(axis=(1, 2, 3)), gamma**2, beta**2,
               np.square(fc.reshape(5, 8, 16)).sum(axis=(0, 2))]  # fmt: skip
    by_hand = sum(m / m.mean() for m in members) / 4
    np.testing.assert_allclose(ctrl._scores()[group_of(ctrl, "1").id], by_hand, rtol=1e-6)
