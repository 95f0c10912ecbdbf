"""BatchNorm adaptation is all or nothing (issue 13, item 3)."""

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch_helpers import SmallNet, make_config, randomize_bn

from filterprune.errors import ConfigError
from filterprune.torch import create_compressed_model, register_default_init_args
from filterprune.torch._init_args import adapt_batchnorm


def _bn_state(model):
    stats = ("running_mean", "running_var", "num_batches_tracked")
    return {name: (tuple(getattr(m, k).clone() for k in stats), m.momentum)
            for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)}  # fmt: skip


def _same(a, b):
    return a.keys() == b.keys() and all(
        a[k][1] == b[k][1] and all(torch.equal(x, y) for x, y in zip(a[k][0], b[k][0], strict=True))
        for k in a
    )


def _net():
    torch.manual_seed(0)
    net = randomize_bn(SmallNet())
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.num_batches_tracked.fill_(123)
            m.momentum = 0.3
    return net


def _batches(*sizes):
    return [(torch.randn(n, 3, 32, 32), torch.zeros(n)) for n in sizes]


@pytest.mark.parametrize("loader", [[], iter([]), torch.utils.data.DataLoader([])],
                         ids=["empty list", "exhausted iterator", "empty DataLoader"])
def test_an_empty_loader_is_refused_before_any_statistic_changes(loader):
    net = _net()
    before = _bn_state(net)
    with pytest.raises(ConfigError, match=r"^`data_loader` must yield at least one batch for "
                       r"initialisation \(BatchNorm adaptation, quantizer ranges\)\. "
                       r"Received: an empty or already exhausted loader\. "
                       r"Nothing was changed"):
        adapt_batchnorm(net, loader, 100)
    assert _same(before, _bn_state(net))


def test_an_exhausted_generator_is_refused_in_create_compressed_model():
    gen = (b for b in _batches(4, 4))
    list(gen)  # used up by an earlier epoch
    config = register_default_init_args(make_config(), gen)
    net = _net()
    before = _bn_state(net)
    with pytest.raises(ConfigError, match="empty or already exhausted"):
        create_compressed_model(net, config)
    assert _same(before, _bn_state(net))


def test_a_loader_of_length_zero_is_refused_at_registration():
    with pytest.raises(ConfigError, match=r"^`data_loader` must hold at least one batch.*"
                       r"Received: list of length 0\."):
        register_default_init_args(make_config(), [])


def test_nncfs_keyword_names_are_taken():
    """NNCF's samples pass nncf_config=: it failed with a missing positional argument."""
    loader = [torch.randn(2, 3, 32, 32)]
    config = register_default_init_args(nncf_config=make_config(), train_loader=loader)
    assert config._extra_structs  # registered
    with pytest.raises(TypeError, match="needs the config"):
        register_default_init_args(train_loader=loader)


def test_no_loader_is_refused_at_registration():
    with pytest.raises(ConfigError, match=r"^`data_loader` must hold the batches for .* "
                       r"Received: None\."):
        register_default_init_args(make_config(), None)


def test_a_misspelt_keyword_is_refused_and_nncfs_own_are_said_unused(caplog):
    """``train_step_fn=`` was taken and dropped: LeGR's candidates went untrained."""
    caplog.set_level("WARNING", logger="filterprune")
    loader = [torch.randn(2, 3, 32, 32)]
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'train_step_fn'\. Did "
                       r"you mean `train_steps_fn`\?"):
        register_default_init_args(make_config(), loader, train_step_fn=lambda *a: None)
    register_default_init_args(make_config(), loader, criterion_fn=lambda *a: 0)
    assert "register_default_init_args: `criterion_fn` is not used" in caplog.text


class WithHead(nn.Module):
    """SmallNet's BatchNorms, then a BatchNorm1d over features: one sample is one value."""

    def __init__(self):
        super().__init__()
        self.body = _net()
        self.bn = nn.BatchNorm1d(10)

    def forward(self, x):
        return self.bn(self.body(x))


def test_a_one_sample_batch_midway_restores_every_statistic():
    net = WithHead().eval()
    before = _bn_state(net)
    with pytest.raises(ConfigError, match=(
        r"^`data_loader` must yield batches the model runs on in training mode\. Received: "
        r"batch 3 \(1 sample\) failed in BatchNorm adaptation: ValueError: Expected more than "
        r"1 value per channel.*Every BatchNorm's statistics and momentum were restored\. A "
        r"BatchNorm cannot estimate statistics from one sample")) as info:
        adapt_batchnorm(net, _batches(4, 4, 1, 4), 100)
    assert isinstance(info.value.__cause__, ValueError)
    assert _same(before, _bn_state(net))
    assert not net.training  # the mode is restored too


def test_a_failing_loader_midway_restores_every_statistic():
    def flaky():
        yield from _batches(4, 4)
        raise OSError("disk read error")

    net = _net()
    before = _bn_state(net)
    with pytest.raises(ConfigError, match=r"batch 3 failed in BatchNorm adaptation: OSError: "
                       r"disk read error"):
        adapt_batchnorm(net, flaky(), 100)
    assert _same(before, _bn_state(net))


def test_an_interrupt_midway_restores_and_is_not_wrapped():
    class Stop(nn.Module):
        def forward(self, x):
            raise KeyboardInterrupt

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), Stop())
    before = _bn_state(net)
    with pytest.raises(KeyboardInterrupt):
        adapt_batchnorm(net, _batches(4), 100)
    assert _same(before, _bn_state(net))


def test_a_good_loader_still_adapts():
    net = _net()
    before = _bn_state(net)
    adapt_batchnorm(net, _batches(4, 4, 4), 8)
    after = _bn_state(net)
    assert not torch.equal(before["bna"][0][0], after["bna"][0][0])
    assert int(net.bna.num_batches_tracked) == 2 and net.bna.momentum == 0.3


def test_a_failure_inside_create_compressed_model_leaves_the_model_as_given():
    """Masks, quantizers, hooks and statistics put on before the failure are taken off."""

    def flaky():
        yield from _batches(4, 4)
        raise OSError("disk read error")

    net = _net().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
    classes = [type(m) for m in net.modules()]
    keys = list(net.state_dict())
    before = _bn_state(net)
    config = make_config(pruning_init=0.5)
    config["compression"] = [config["compression"], {"algorithm": "quantization"}]
    config = register_default_init_args(config, flaky())
    with pytest.raises(ConfigError, match="disk read error"):
        create_compressed_model(net, config)
    assert [type(m) for m in net.modules()] == classes
    assert list(net.state_dict()) == keys
    assert _same(before, _bn_state(net))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    with torch.no_grad():
        assert torch.equal(net(x), ref)


def test_pruned_channels_keep_their_statistics_so_a_lower_level_is_sound():
    """BN adaptation and training leave a pruned channel's running statistics as they were
    (its input is zero: they would go to 0 and 0); at level 0 again the model computes what
    the dense model computes with the adapted statistics of the live channels."""
    net = _net()
    dense = copy.deepcopy(net).eval()
    before = _bn_state(net)
    config = register_default_init_args(make_config(pruning_init=0.5, filters_multiple_of=1,
                                                    prune_first_conv=True),
                                        _batches(16, 16))  # fmt: skip
    ctrl, model = create_compressed_model(net, config)
    bns = {n: m for n, m in model.named_modules()
           if isinstance(m, nn.BatchNorm2d) and (m.channel_mask == 0).any()}  # fmt: skip
    assert len(bns) >= 2

    def check(changed_live):
        for name, m in bns.items():
            pruned = m.channel_mask == 0
            for i, key in enumerate(("running_mean", "running_var")):
                now, old = getattr(m, key), before[name][0][i]
                assert torch.equal(now[pruned], old[pruned]), (name, key)
                assert not torch.equal(now[~pruned], old[~pruned]) or not changed_live

    check(changed_live=True)  # adapted at creation on the two batches
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for x, _ in _batches(8, 8):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    check(changed_live=True)
    was_pruned = {name: m.channel_mask == 0 for name, m in bns.items()}
    ctrl.set_pruning_level(0.0)
    for name, m in bns.items():  # live again with their variances, not sqrt(eps)
        assert (m.channel_mask != 0).all() and m.running_var[was_pruned[name]].min() >= 0.5
    # the dense model given the same statistics computes the same at level 0
    for name, m in dense.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            src = model.get_submodule(name)
            m.running_mean.copy_(src.running_mean)
            m.running_var.copy_(src.running_var)
    dense.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.endswith("_mask")})  # fmt: skip
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), dense(x))


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(1, 8, 3, padding=1)
        self.bn, self.head = nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1)

    def forward(self, image, depth):
        return self.head(torch.relu(self.bn(self.a(image) + self.b(depth))))


def test_a_model_of_two_inputs_takes_them_from_the_batch_s_inputs():
    """``((image, depth), y)`` batches: BN adaptation and quantizer ranges called
    ``.to()`` on the tuple before."""
    from filterprune import NNCFConfig

    g = torch.Generator().manual_seed(0)
    data = [((torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)),
             torch.zeros(4)) for _ in range(2)]  # fmt: skip
    prune = {"algorithm": "filter_pruning", "pruning_init": 0.5,
             "params": {"prune_first_conv": True},
             "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 8}}}
    quant = {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 8}}}
    config = NNCFConfig.from_dict({"input_info": [{"sample_size": [1, 3, 8, 8]},
                                                  {"sample_size": [1, 1, 8, 8]}],
                                   "compression": [prune, quant]})  # fmt: skip
    model = _TwoInputs()
    before = model.bn.running_mean.clone()
    ctrl, model = create_compressed_model(model, register_default_init_args(config, data))
    assert not torch.equal(model.bn.running_mean, before)
    assert ctrl.statistics().quantization.ranges_initialized


def test_an_outer_autocast_block_does_not_change_statistics_or_ranges():
    """Created inside the user's bfloat16 autocast, BatchNorm statistics and quantizer
    ranges came from bfloat16 convs (1e-3 off the model's own float32)."""
    torch.manual_seed(1)
    batches = _batches(4, 4)
    buffers = []
    for outer in (False, True):
        config = make_config(pruning_init=0.3)
        config["compression"] = [config["compression"], {"algorithm": "quantization"}]
        config = register_default_init_args(config, batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=outer):
            _, model = create_compressed_model(_net(), config)
        buffers.append(dict(model.named_buffers()))
    assert any("quantizer" in k for k in buffers[0])
    for key, value in buffers[0].items():
        assert torch.equal(buffers[1][key], value), key


class _Drawing(torch.utils.data.Dataset):
    """A dataset whose transform draws from Python's, NumPy's and torch's random state."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        scale = random.random() + np.random.rand() + float(torch.rand(()))
        return torch.randn(3, 32, 32) * scale, 0


def _random_states():
    return random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone()


def test_creation_and_mask_changes_keep_the_callers_random_state():
    """BatchNorm adaptation and quantizer ranges iterate the user's shuffled loader: its
    sampler and transforms drew from the global random states, so the training after a
    fresh start saw other batches than after a resume (which reads no data)."""
    config = make_config(pruning_init=0.2, pruning_target=0.5, pruning_steps=2,
                         bn_adaptation_after_mask_change=True)
    config["compression"] = [config["compression"], {"algorithm": "quantization"}]
    loader = torch.utils.data.DataLoader(_Drawing(), batch_size=4, shuffle=True)
    config, net = register_default_init_args(config, loader), _net()
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    before = _random_states()
    ctrl, _ = create_compressed_model(net, config)
    for _ in range(3):  # masks change, BatchNorm statistics re-estimated
        ctrl.scheduler.epoch_step()
    after = _random_states()
    assert before[0] == after[0]
    assert np.array_equal(before[1], after[1]) and torch.equal(before[2], after[2])
