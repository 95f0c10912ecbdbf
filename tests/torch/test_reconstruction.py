"""``params.reconstruction_after_mask_change``: kept weights refit by least squares."""

import contextlib
import copy
import logging

import numpy as np
import pytest
import torch
from torch import nn
from torch_helpers import assert_strip_equal, make_config, randomize_bn

import filterprune.torch.reconstruct as reconstruct_module
from filterprune.core.controller import _only_removes
from filterprune.errors import ConfigError
from filterprune.testing.cifar_nets import ResNet20
from filterprune.torch import create_compressed_model, register_default_init_args
from filterprune.torch.reconstruct import _patches, reconstruct, record


class HalfCopies(nn.Module):
    """conv1's filters 4-7 are half of filters 0-3 (bias too), so after the ReLU their
    channels are half of channels 0-3: L2 prunes them and conv2 can take them over exactly."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)
        with torch.no_grad():
            self.conv1.weight[4:] = self.conv1.weight[:4] * 0.5
            self.conv1.bias[4:] = self.conv1.bias[:4] * 0.5

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def loader(n=64, shape=(3, 8, 8), batch=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(torch.randn(n, *shape, generator=g), torch.zeros(n))
    return torch.utils.data.DataLoader(data, batch_size=batch)


def prune(model, sample, data, init=0.5, **params):
    params = {"schedule": "baseline", "filters_multiple_of": 1, "prune_first_conv": True,
              "prune_downsample_convs": True, "reconstruction_after_mask_change": True,
              "num_reconstruction_samples": 48, **params}  # fmt: skip
    config = make_config(sample, pruning_init=init, **params)
    return create_compressed_model(model, register_default_init_args(config, data))


def relative_error(model, dense, x):
    model.eval(), dense.eval()
    with torch.no_grad():
        ref = dense(x)
        return float((model(x) - ref).norm() / ref.norm())


def test_a_removed_channel_that_others_carry_is_taken_over_exactly():
    dense = HalfCopies()
    x = next(iter(loader(seed=7)))[0]
    only_conv1 = {"extra": {"ignored_scopes": ["{re}.*conv2.*"]}}
    ctrl, model = prune(copy.deepcopy(dense), (1, 3, 8, 8), loader(), pruning_target=0.5,
                        **only_conv1)  # fmt: skip
    assert ctrl.keeps()["conv1"]["out"].tolist() == [True] * 4 + [False] * 4
    plain, _ = create_compressed_model(copy.deepcopy(dense), make_config(
        (1, 3, 8, 8), pruning_init=0.5, schedule="baseline", pruning_target=0.5,
        filters_multiple_of=1, prune_first_conv=True, **only_conv1))  # fmt: skip
    assert relative_error(plain.model, dense, x) > 0.05  # the halves mattered
    assert relative_error(model, dense, x) < 1e-3  # conv2 took them over
    assert_strip_equal(ctrl, model, x, tol=1e-5)


def test_refit_then_cut_equals_refit_alone():
    """``shrink_when_frozen``: the refit runs before the cut of the same epoch step, and the
    cut model computes what the refit masked one does."""
    dense = randomize_bn(ResNet20())
    x = next(iter(loader(shape=(1, 28, 28), seed=7)))[0]
    runs = {}
    for shrink in (False, True):
        ctrl, model = prune(copy.deepcopy(dense), (1, 1, 28, 28), loader(shape=(1, 28, 28)),
                            init=0.0, pruning_flops_target=0.5,
                            shrink_when_frozen=shrink)  # fmt: skip
        ctrl.register_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
        before = relative_error(model, dense, x)
        ctrl.scheduler.epoch_step()
        runs[shrink] = (ctrl, model)
        assert before == 0.0 and ctrl.pruning_level == 0.5
    masked, cut = runs[False][1], runs[True][1]
    assert cut.layers[8].conv1.in_channels < 64  # cut
    with torch.no_grad():
        masked.eval(), cut.eval()
        assert torch.allclose(masked(x), cut(x), rtol=1e-4, atol=1e-4 * masked(x).abs().max())


def test_reconstruct_solves_cut_layers_as_masked_ones():
    dense = randomize_bn(ResNet20())
    x = next(iter(loader(shape=(1, 28, 28), seed=7)))[0]
    data = loader(shape=(1, 28, 28))
    recording = record(dense, data, 48)
    ctrl, masked = prune(copy.deepcopy(dense), (1, 1, 28, 28), data, init=0.0,
                         pruning_flops_target=0.5,
                         reconstruction_after_mask_change=False)  # fmt: skip
    ctrl.set_pruning_level(0.5)
    cut = ctrl.strip()
    assert cut.layers[8].conv1.in_channels < 64
    for model in (masked, cut):
        reconstruct(model, recording, ctrl.keeps())
    with torch.no_grad():
        masked.eval(), cut.eval()
        assert torch.allclose(masked(x), cut(x), rtol=1e-4, atol=1e-4 * masked(x).abs().max())


@pytest.mark.parametrize("shrink", [False, True])
def test_a_failed_scheduled_refit_puts_weights_and_masks_back(monkeypatch, shrink):
    """The epoch step's refit (before a ``shrink_when_frozen`` cut) fails: the model is as
    it was, nothing is cut, and no BatchNorm pass follows."""
    import filterprune.torch.controller as torch_controller

    dense = randomize_bn(ResNet20())
    ctrl, model = prune(copy.deepcopy(dense), (1, 1, 28, 28), loader(shape=(1, 28, 28)),
                        init=0.0, pruning_flops_target=0.5, shrink_when_frozen=shrink,
                        bn_adaptation_after_mask_change=True)  # fmt: skip
    before = copy.deepcopy(model.state_dict())

    def fail(*_):
        raise ConfigError("refused")

    monkeypatch.setattr(torch_controller, "reconstruct", fail)
    with pytest.raises(ConfigError, match="^refused$"):
        ctrl.scheduler.epoch_step()
    assert ctrl.pruning_level == 0.0 and not ctrl.shrunk
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)  # masks, weights, BN stats


def test_refit_brings_a_resnet_closer_to_the_dense_model():
    torch.manual_seed(0)  # random nets: the refit removed 27-50% of the error on seeds 0-4
    dense = randomize_bn(ResNet20())
    for p in dense.parameters():  # no zero-init or tiny branch hides a wrong refit
        assert p.abs().max() > 1e-3
    x = next(iter(loader(shape=(1, 28, 28), seed=7)))[0]
    errors = {}
    for on in (False, True):
        ctrl, model = prune(copy.deepcopy(dense), (1, 1, 28, 28), loader(shape=(1, 28, 28)),
                            pruning_flops_target=0.5,
                            reconstruction_after_mask_change=on)  # fmt: skip
        errors[on] = relative_error(model, dense, x)
        assert_strip_equal(ctrl, model, x)
    assert errors[True] < 0.8 * errors[False]


def test_nothing_is_refit_when_nothing_is_pruned_or_channels_come_back():
    new = {0: np.array([True, False, True]), 1: np.ones(2, bool)}
    assert _only_removes({}, new)
    assert not _only_removes({}, {0: np.ones(3, bool)})
    assert not _only_removes(new, new)
    assert not _only_removes(new, {0: np.array([False, True, True]), 1: np.ones(2, bool)})
    assert _only_removes(new, {0: np.array([True, False, False]), 1: np.ones(2, bool)})


class Mixed(nn.Module):
    """A depthwise conv and a conv the forward calls twice: left as they are."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.twice = nn.Conv2d(8, 8, 1)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.conv1(x))))
        return self.conv2(torch.relu(self.twice(torch.relu(self.twice(x)))))


def test_layers_it_cannot_express_are_left_with_a_reason(caplog):
    torch.manual_seed(0)
    dense = Mixed()
    model = copy.deepcopy(dense)
    with torch.no_grad():  # as if conv1 lost channels 5-7
        model.conv1.weight[5:] = 0
        model.conv1.bias[5:] = 0
    keep = np.array([True] * 5 + [False] * 3)
    keeps = {"conv1": {"out": keep}, "dw": {"in": keep, "out": keep},
             "twice": {"in": np.ones(8, bool), "out": np.ones(8, bool)}}  # fmt: skip
    before = {n: p.clone() for n, p in model.named_parameters()}
    with caplog.at_level(logging.INFO, logger="filterprune.torch.reconstruct"):
        errors = reconstruct(model, record(dense, loader(), 32), keeps)
    text = caplog.text
    assert "leaves dw as it is: a grouped conv" in text
    assert "leaves twice as it is: the forward calls it 2 times" in text
    assert set(errors) == {"conv1", "conv2"}
    for name in ("dw.weight", "twice.weight"):
        assert torch.equal(before[name], dict(model.named_parameters())[name])
    assert errors["conv2"][1] < errors["conv2"][0]


class Branchy(nn.Module):
    """``extra`` runs only on batches with a positive mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.extra = nn.Conv2d(8, 8, 1)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        if x.mean() > 0.3:
            x = self.extra(x)
        return self.conv2(x)


def test_a_layer_not_run_on_every_batch_is_left(caplog):
    torch.manual_seed(0)
    dense = Branchy()
    batches = [torch.randn(4, 3, 8, 8) + 3, torch.randn(4, 3, 8, 8) - 3]
    outputs = [torch.relu(dense.conv1(b)).mean() > 0.3 for b in batches]
    assert outputs[0] != outputs[1]  # extra runs on one batch only
    with caplog.at_level(logging.INFO, logger="filterprune.torch.reconstruct"):
        recording = record(dense, batches, 8)
    assert "leaves extra as it is: it does not run on every batch" in caplog.text
    assert list(recording.targets) == ["conv1", "conv2"]


def test_a_failing_batch_changes_nothing(monkeypatch):
    torch.manual_seed(0)
    dense = HalfCopies()
    model = copy.deepcopy(dense)
    with torch.no_grad():
        model.conv1.weight[4:] = 0
    bad = [torch.randn(16, 3, 8, 8), torch.randn(16, 5, 8, 8)]  # the second has 5 channels
    with pytest.raises(ConfigError, match=r"^`data_loader` must yield batches the model runs "
                       r"on\. Received: a batch failed in weight reconstruction: RuntimeError: "
                       r".*Nothing was changed\.$"):
        record(model, bad, 32)
    # fc fails after conv2 was refit (it lost inputs): conv2 gets its weights back
    before = copy.deepcopy(model.state_dict())
    keeps = {"conv1": {"out": np.array([True] * 4 + [False] * 4)},
             "conv2": {"in": np.array([True] * 4 + [False] * 4)}}  # fmt: skip

    def cannot_run(_m, _args):
        raise RuntimeError("fc cannot run")

    model.fc.register_forward_pre_hook(cannot_run)  # before the refit's own hooks
    refit = reconstruct_module._refit
    done = []
    monkeypatch.setattr(reconstruct_module, "_refit",
                        lambda *a: done.append(a[0]) or refit(*a))  # fmt: skip
    with pytest.raises(ConfigError, match=r"^`data_loader` must yield batches the model runs "
                       r"on\. Received: a batch failed in weight reconstruction: RuntimeError: "
                       r"fc cannot run\. Every layer's weights were restored\.$"):
        reconstruct(model, record(dense, bad[:1], 16), keeps)
    # the joined pass fails at fc, then so does the pass layer by layer
    assert done == ["conv1", "conv2", "conv1", "conv2", "fc"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def _refit_resnet(monkeypatch, one_pass_bytes, fixed_batch=None):
    torch.manual_seed(0)
    dense = randomize_bn(ResNet20())
    model = copy.deepcopy(dense)
    if fixed_batch:  # a model that runs only batches of one size
        model.register_forward_pre_hook(
            lambda _m, args: None if len(args[0]) == fixed_batch else 1 / 0)
    data = [torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(i))
            for i in range(3)]  # fmt: skip
    recording = record(dense, data, 48)
    ctrl, _ = create_compressed_model(model, make_config(
        (1, 1, 28, 28), pruning_init=0.5, schedule="baseline", filters_multiple_of=1,
        prune_first_conv=True, prune_downsample_convs=True))  # fmt: skip
    monkeypatch.setattr(reconstruct_module, "ONE_PASS_BYTES", one_pass_bytes)
    errors = reconstruct(model, recording, ctrl.keeps())
    return errors, {k: v.clone() for k, v in model.state_dict().items()}


def test_one_joined_pass_refits_as_layer_by_layer_passes(monkeypatch, caplog):
    """All batches joined, each layer solved in its forward pre-hook, equals one pass per
    layer; a model that refuses the joined batch is refit layer by layer."""
    layered, by_layer = _refit_resnet(monkeypatch, 0)
    joined, in_one = _refit_resnet(monkeypatch, 2**30)
    with caplog.at_level(logging.INFO, logger="filterprune.torch.reconstruct"):
        fallback, refused = _refit_resnet(monkeypatch, 2**30, fixed_batch=16)
    assert "fails on all 48 samples in one batch (ZeroDivisionError" in caplog.text
    assert list(joined) == list(layered) == list(fallback) and len(joined) == 22
    for name in joined:
        np.testing.assert_allclose(joined[name], layered[name], rtol=1e-4, atol=1e-7)
    for key, value in by_layer.items():
        torch.testing.assert_close(in_one[key], value, rtol=1e-3, atol=1e-5)
        assert torch.equal(refused[key], value), key


class Chunked(nn.Module):
    """Runs its layers on chunks of 16 samples: joined batches reach them in pieces."""

    def __init__(self) -> None:
        super().__init__()
        self.net = HalfCopies()

    def forward(self, x):
        return torch.cat([self.net(part) for part in x.split(16)])


def test_a_model_that_splits_the_joined_batch_is_refit_layer_by_layer(monkeypatch, caplog):
    dense = Chunked()
    keeps = {"net.conv1": {"out": np.array([True] * 4 + [False] * 4)},
             "net.conv2": {"in": np.array([True] * 4 + [False] * 4)}}  # fmt: skip
    weights = {}
    for one_pass in (2**30, 0):
        model = copy.deepcopy(dense)
        monkeypatch.setattr(reconstruct_module, "ONE_PASS_BYTES", one_pass)
        with caplog.at_level(logging.INFO, logger="filterprune.torch.reconstruct"):
            errors = reconstruct(model, record(dense, loader(n=48), 48), keeps)
        assert errors["net.conv2"][1] < 1e-3 < errors["net.conv2"][0]
        weights[one_pass] = model.state_dict()
    assert "net.conv1 is not called once on the whole batch" in caplog.text
    for key, value in weights[0].items():
        assert torch.equal(weights[2**30][key], value), key


def test_a_removed_constant_channel_moves_into_the_bias():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        dense[0].weight[5], dense[0].bias[5] = 0.0, 3.0  # channel 5 is always 3
    model = copy.deepcopy(dense)
    with torch.no_grad():
        model[0].bias[5] = 0.0  # pruned
    kept = np.array([True] * 5 + [False])
    keeps = {"0": {"out": kept}, "2": {"in": kept}}
    x = torch.randn(64, 4)
    assert relative_error(model, dense, x) > 0.1
    reconstruct(model, record(dense, [x[:32], x[32:]], 64), keeps)
    assert relative_error(model, dense, x) < 5e-3  # the ridge keeps it from 0


def test_needs_registered_data():
    config = make_config((1, 1, 28, 28), schedule="baseline",
                         reconstruction_after_mask_change=True)  # fmt: skip
    with pytest.raises(ConfigError, match=r"^`params\.reconstruction_after_mask_change` needs "
                       r"training data: register it with "
                       r"register_default_init_args\(config, data\) first\. "
                       r"Received: no registered data\.$"):
        create_compressed_model(ResNet20(), config)


@pytest.mark.parametrize("kernel, stride, dilation, padding", [
    (3, 1, 1, 1), (3, 2, 1, 1), (1, 2, 1, 0), (3, 1, 2, 2), ((3, 1), (2, 1), 1, (1, 0))])
def test_patches_at_sampled_positions_equal_an_unfold(kernel, stride, dilation, padding):
    conv = nn.Conv2d(5, 4, kernel, stride, padding, dilation)
    x = torch.randn(3, 5, 9, 7)
    cols = torch.nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding,
                                      conv.stride)  # fmt: skip
    width = conv(x).shape[3]
    take = torch.randint(0, cols.shape[2], (3, 6), generator=torch.Generator().manual_seed(0))
    want = torch.gather(cols, 2, take[:, None].expand(3, cols.shape[1], 6))
    got = _patches(conv, x, take, width)
    assert torch.equal(got, want.transpose(1, 2).reshape(-1, cols.shape[1]))


def test_a_failed_refit_leaves_the_masks_as_they_were(monkeypatch):
    import filterprune.torch.controller as torch_controller

    dense = HalfCopies()
    x = next(iter(loader(seed=7)))[0]
    ctrl, model = prune(copy.deepcopy(dense), (1, 3, 8, 8), loader(), init=0.0,
                        pruning_target=0.5)  # fmt: skip

    def fail(*_):
        raise ConfigError("refused")

    monkeypatch.setattr(torch_controller, "reconstruct", fail)
    with pytest.raises(ConfigError, match="^refused$"):
        ctrl.set_pruning_level(0.5)
    assert ctrl.pruning_level == 0.0
    assert all(v.all() for roles in ctrl.keeps().values() for v in roles.values())
    assert relative_error(model, dense, x) == 0.0


def test_tied_and_underdetermined_layers_are_left(caplog):
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(),
                          nn.Linear(4, 40), nn.ReLU(), nn.Linear(40, 3))  # fmt: skip
    dense[2].weight = dense[0].weight  # tied
    model = copy.deepcopy(dense)
    keeps = {"4": {"out": np.array([True] * 30 + [False] * 10)},
             "6": {"in": np.array([True] * 30 + [False] * 10)}}  # fmt: skip
    with caplog.at_level(logging.INFO, logger="filterprune.torch.reconstruct"):
        recording = record(dense, [torch.randn(20, 4)], 20)
        errors = reconstruct(model, recording, keeps)
    assert "leaves 0 as it is: its weights are shared with another layer" in caplog.text
    assert "leaves 2 as it is: its weights are shared with another layer" in caplog.text
    assert ("leaves 6 as it is: 20 samples for 31 weights per output; raise "
            "num_reconstruction_samples") in caplog.text
    assert list(recording.targets) == ["4", "6"] and list(errors) == ["4"]


def test_a_wide_conv_gets_enough_positions_from_few_images(caplog):
    """conv2 has 289 kept weights per output; 16 images at 16 positions each (the floor)
    would give 256 rows and leave it. Positions per image grow with the fan-in, up to
    every one of the 64 there are."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(64, 8, 3, padding=1))  # fmt: skip
    model = copy.deepcopy(dense)
    half = np.arange(64) % 2 == 0
    keeps = {"0": {"out": half}, "2": {"in": half}}
    with caplog.at_level(logging.INFO, logger="filterprune.torch.reconstruct"):
        recording = record(dense, [torch.randn(16, 3, 8, 8)], 16)
        with torch.no_grad():
            model[0].weight[~torch.as_tensor(half)] = 0.0
            model[0].bias[~torch.as_tensor(half)] = 0.0
        errors = reconstruct(model, recording, keeps)
    assert recording.targets["2"][0][0].shape == (16, 64)
    assert "leaves 2" not in caplog.text
    before, after = errors["2"]
    assert after < 0.5 * before


@pytest.mark.parametrize("guarded", [True, False])
def test_lazy_quantizer_ranges_are_left_to_the_first_training_batch(monkeypatch, guarded):
    from filterprune import NNCFConfig

    if not guarded:  # the check below fails without the guard
        monkeypatch.setattr(reconstruct_module, "lazy_ranges_paused",
                            lambda m: contextlib.nullcontext())  # fmt: skip
    pruning = {"algorithm": "filter_pruning", "pruning_init": 0.0,
               "params": {"schedule": "baseline", "pruning_flops_target": 0.5,
                          "filters_multiple_of": 1, "reconstruction_after_mask_change": True,
                          "num_reconstruction_samples": 16},
               "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}
    quantization = {"algorithm": "quantization",  # ranges: the first batch; no BN pass
                    "initializer": {"range": {"num_init_samples": 0},
                                    "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}
    cfg = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 28, 28]},
                                "compression": [pruning, quantization]})  # fmt: skip
    data = [(torch.randn(16, 1, 28, 28), None)]
    ctrl, model = create_compressed_model(randomize_bn(ResNet20()),
                                          register_default_init_args(cfg, data))  # fmt: skip
    ctrl.scheduler.epoch_step()  # the cut and the refit
    quantizers = [q for k, q in ctrl.get("quantization").quantizers.items()
                  if k.startswith("activation")]  # fmt: skip
    assert len(quantizers) > 3
    assert any(q.initialized for q in quantizers) != guarded
    assert all(q.enabled for q in quantizers)
