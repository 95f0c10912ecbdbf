"""``params.shrink_when_frozen``: fine-tuning goes on in the physically smaller model."""

import copy
import functools

import pytest
import torch
from torch_helpers import SmallNet, classify_steps, make_config, randomize_bn

from filterprune.errors import ConfigError
from filterprune.testing.cifar_nets import ResNet20
from filterprune.torch import create_compressed_model
from filterprune.torch.shrink_frozen import shrink_in_place


def config(**params):
    params = {"schedule": "exponential", "pruning_steps": 2, "pruning_target": 0.5, **params}
    return make_config((1, 1, 28, 28), pruning_init=0.1, **params)


def net():
    torch.manual_seed(0)
    return randomize_bn(ResNet20())


def test_shrink_in_place_keeps_outputs_and_cuts_optimizer_state():
    ctrl, model = create_compressed_model(net(), config())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    classify_steps(model, ctrl, optimizer)
    model.eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
    shrink_in_place(model, ctrl.keeps(), ctrl.analysis.graph.layers, [optimizer])
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)
    params = list(model.parameters())
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in params]
    for p in params:
        assert optimizer.state[p]["momentum_buffer"].shape == p.shape


def cut_and_trained():
    ctrl, model = create_compressed_model(net(), config(shrink_when_frozen=True))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctrl.register_optimizer(optimizer)
    dense_params = sum(p.numel() for p in model.parameters())
    for _ in range(4):
        ctrl.scheduler.epoch_step()
        classify_steps(model, ctrl, optimizer)
    assert ctrl.shrunk and ctrl.frozen
    kept = sum(p.numel() for p in model.parameters())
    assert kept < 0.8 * dense_params  # inner convs only: about 0.64 kept
    assert model.layers[8].conv1.weight.shape[0] < 64
    before = copy.deepcopy(model.state_dict())
    classify_steps(model, ctrl, optimizer, 1)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("conv1.weight") for k in changed)  # the new parameters train
    small = ctrl.strip().eval()
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))
    return ctrl, model


def test_training_continues_on_the_cut_model():
    cut_and_trained()


def test_resume_cuts_the_new_model_so_a_shrunk_state_dict_loads():
    ctrl, model = cut_and_trained()
    state, weights = ctrl.get_compression_state(), model.state_dict()
    assert state["shrunk"] is True
    resumed, fresh = create_compressed_model(net(), config(shrink_when_frozen=True), state)
    assert resumed.shrunk
    fresh.load_state_dict(weights)
    x = torch.randn(2, 1, 28, 28)
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


def test_level_cannot_change_after_the_cut():
    ctrl, _ = cut_and_trained()
    with pytest.raises(ConfigError, match=r"^`level` cannot change once the model is cut \(by "
                       r"shrink_when_frozen, or strip\(do_copy=False\)\): the pruned channels "
                       r"are gone\. Received: level=0\.3\.$"):
        ctrl.set_pruning_level(0.3)
    ctrl.set_pruning_level(ctrl.pruning_level)  # the level it was cut at: nothing to do


def test_the_schedule_stops_at_a_strip_in_place():
    ctrl, model = create_compressed_model(
        randomize_bn(SmallNet()), make_config(pruning_init=0.2, pruning_target=0.5,
                                              pruning_steps=3, prune_first_conv=True))
    ctrl.scheduler.epoch_step()
    small = ctrl.strip(do_copy=False)
    assert small is model and ctrl.get_compression_state()["shrunk"]
    before = ctrl.scheduler.get_state()
    with pytest.raises(ConfigError, match="cannot change once the model is cut"):
        ctrl.scheduler.epoch_step()
    # the refused step moves nothing: it went to epoch 1 at 0.368, the model staying at 0.2
    assert ctrl.scheduler.get_state() == before
    assert ctrl.get_compression_state()["scheduler"]["current_level"] == ctrl.pruning_level


def test_a_refused_composite_state_leaves_the_cut_model_as_it_was():
    """A composite rolls back the children before the one that refuses; a cut pruning
    child takes its own state back without masking its narrow layers again."""
    from filterprune import NNCFConfig
    from filterprune.torch import register_default_init_args

    torch.manual_seed(0)
    model = randomize_bn(ResNet20())
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 28, 28]}, "compression": [
        {"algorithm": "filter_pruning", "pruning_init": 0.0,
         "params": {"schedule": "baseline", "pruning_flops_target": 0.5,
                    "filters_multiple_of": 1, "shrink_when_frozen": True}},
        {"algorithm": "quantization"}]})  # fmt: skip
    data = [(torch.randn(8, 1, 28, 28), None)]
    ctrl, model = create_compressed_model(model, register_default_init_args(config, data))
    ctrl.scheduler.epoch_step()  # the cut
    assert ctrl.child_ctrls[0].shrunk
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        before = model(x)
    state = ctrl.get_compression_state()
    bad = copy.deepcopy(state)
    bad["children"][1] = {k: v for k, v in bad["children"][1].items()
                          if k in ("algorithm", "version")}  # fmt: skip
    with pytest.raises(ConfigError):
        ctrl.load_state(bad)
    ctrl.load_state(copy.deepcopy(state))  # its own state: taken
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert ctrl.get_compression_state() == state
    other = copy.deepcopy(state)
    other["children"][0]["shrunk"] = False
    with pytest.raises(ConfigError, match=r"must hold the masks this model was cut to"):
        ctrl.load_state(other)
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_a_computed_weight_keeps_the_model_masked(caplog):
    caplog.set_level("WARNING", logger="filterprune")  # a CLI test may raise it
    torch.manual_seed(0)
    model = randomize_bn(SmallNet())
    torch.nn.utils.parametrizations.spectral_norm(model.b)
    config = make_config(pruning_init=0.2, pruning_target=0.5, pruning_steps=1,
                         prune_first_conv=True, shrink_when_frozen=True)  # fmt: skip
    ctrl, model = create_compressed_model(model, config)
    for _ in range(3):
        ctrl.scheduler.epoch_step()
    assert ctrl.frozen and not ctrl.shrunk
    assert torch.nn.utils.parametrize.is_parametrized(model.b)  # trains on with its norm
    assert "b computes its weight (spectral_norm" in caplog.text


def test_a_composite_controller_hands_the_optimizer_on():
    torch.manual_seed(0)
    pruning = {"algorithm": "filter_pruning", "pruning_init": 0.2, "params": {
        "pruning_target": 0.5, "pruning_steps": 1, "prune_first_conv": True,
        "shrink_when_frozen": True}}
    quantization = {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0}}}
    config = {"input_info": {"sample_size": [1, 3, 32, 32]},
              "compression": [pruning, quantization]}
    ctrl, model = create_compressed_model(randomize_bn(SmallNet()), config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctrl.register_optimizer(optimizer)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    for _ in range(3):
        ctrl.scheduler.epoch_step()
    assert ctrl.get("filter_pruning").shrunk
    params = {id(p) for p in model.parameters()}
    assert all(id(p) in params for g in optimizer.param_groups for p in g["params"])


class _Wrapping(torch.optim.Optimizer):
    """Lookahead's or SAM's form: it shares its base optimizer's groups and steps it; the
    base keeps the per-parameter state."""

    def __init__(self, base):
        self.base = base
        super().__init__(base.param_groups, base.defaults)
        self.param_groups = base.param_groups

    def step(self, closure=None):
        return self.base.step(closure)


def test_a_wrapped_optimizers_state_is_cut_with_the_model():
    """Only the registered optimizer's own state was cut: its base's Adam moments of
    every cut parameter were lost (steps restarted at 0) and the uncut ones kept alive."""
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(randomize_bn(SmallNet()), _frozen_config())
    optimizer = _Wrapping(torch.optim.Adam(model.parameters(), lr=1e-3))
    ctrl.register_optimizer(optimizer)
    for _ in range(3):
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        optimizer.step()
        ctrl.scheduler.epoch_step()
    assert ctrl.shrunk
    params = list(model.parameters())
    assert len(optimizer.base.state) == len(params)
    assert all(optimizer.base.state[p]["exp_avg"].shape == p.shape and
               int(optimizer.base.state[p]["step"]) == 3 for p in params)  # fmt: skip


def _frozen_config():
    return make_config(pruning_init=0.2, pruning_target=0.5, pruning_steps=1,
                       prune_first_conv=True, shrink_when_frozen=True)  # fmt: skip


def test_an_optimizer_of_the_uncut_model_is_refused_once_it_is_cut():
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(randomize_bn(SmallNet()), _frozen_config())
    for _ in range(3):
        ctrl.scheduler.epoch_step()
    state = ctrl.get_compression_state()
    fresh = randomize_bn(SmallNet())
    before = torch.optim.SGD(fresh.parameters(), lr=0.1)  # made before the resumed cut
    ctrl2, model2 = create_compressed_model(fresh, _frozen_config(), compression_state=state)
    assert ctrl2.shrunk
    with pytest.raises(ConfigError, match="would train nothing"):
        ctrl2.register_optimizer(before)
    ctrl2.register_optimizer(torch.optim.SGD(model2.parameters(), lr=0.1))  # made after: fine
    extra = torch.nn.Parameter(torch.ones(1))  # a learnable loss weight, not the model's
    ctrl2.register_optimizer(torch.optim.SGD([*model2.parameters(), extra], lr=0.1))


def test_a_factored_optimizer_state_keeps_the_model_masked(caplog):
    caplog.set_level("WARNING", logger="filterprune")  # a CLI test may raise it
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(randomize_bn(SmallNet()), _frozen_config())
    optimizer = torch.optim.Adafactor(model.parameters(), lr=0.01)
    ctrl.register_optimizer(optimizer)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    for _ in range(3):
        ctrl.scheduler.epoch_step()
    assert ctrl.frozen and not ctrl.shrunk
    assert "Adafactor's state 'row_var'" in caplog.text
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # trains on, masked


def test_gradients_waiting_for_a_step_are_cut_with_their_parameters():
    """Accumulating across the epoch's end: the cut came between backward and the step,
    and the new parameters had no gradient, so that step skipped them (0.26 relative)."""
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    outs = []
    for shrink in (False, True):
        ctrl, model = create_compressed_model(net(), config(shrink_when_frozen=shrink))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        ctrl.register_optimizer(optimizer)
        ctrl.scheduler.epoch_step()
        model.train()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        ctrl.scheduler.epoch_step()
        ctrl.scheduler.epoch_step()  # masks freeze: the cut, when shrinking
        assert model.layers[0].conv1.weight.grad is not None
        optimizer.step()
        with torch.no_grad():
            outs.append(model.eval()(x))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)


def _epochs(ctrl, model, optimizer, x, y, update_ema, epochs=4):
    """One training step per epoch on ``(x, y)``, the EMA updated after each."""
    for _ in range(epochs):
        ctrl.scheduler.epoch_step()
        model.train()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        update_ema()


def test_a_registered_ema_copy_is_cut_with_the_model():
    """An EMA made after compression kept the old shapes, and its next update failed at
    the cut (16 vs 7). Registered, it is cut alike and averages what the masked run does."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    outs = []
    for shrink in (False, True):
        ctrl, model = create_compressed_model(net(), config(shrink_when_frozen=shrink))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        ctrl.register_optimizer(optimizer)
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5))
        with pytest.raises(ConfigError, match=r"ctrl.register_copy\(ema.module\)"):
            ctrl.register_copy(ema)
        with pytest.raises(ConfigError, match="not the model itself"):
            ctrl.register_copy(model)
        ctrl.register_copy(ema.module)
        _epochs(ctrl, model, optimizer, x, y, functools.partial(ema.update_parameters, model))
        assert ctrl.shrunk == shrink
        if shrink:
            assert ema.module.layers[8].conv1.weight.shape == model.layers[8].conv1.weight.shape
        with torch.no_grad():
            outs.append(ema.module.eval()(x))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)


def _average_every_entry(ema, model, decay):
    """An EMA update as timm's ModelEmaV2 makes it: every state_dict entry, masks too."""
    with torch.no_grad():
        for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
            e.copy_(e * decay + (1 - decay) * m)


def _train_with_ema(register):
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    ctrl, model = create_compressed_model(net(), config())
    ema = copy.deepcopy(model)
    if register:
        ctrl.register_copy(ema)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    update = functools.partial(_average_every_entry, ema, model, 0.999)
    _epochs(ctrl, model, optimizer, x, y, update)
    return ctrl, model, ema.eval(), x


def test_an_ema_averaging_the_masks_drops_the_filters_they_clear():
    """A mask the model cleared read 0.999... in the EMA, whose forward kept it: the EMA
    ran those filters (20 more than the model; 0.74 relative off its weights stripped)."""
    _, _, ema, x = _train_with_ema(register=False)
    masks = {n: b for n, b in ema.named_buffers() if n.endswith("_mask")}
    assert any(bool(((m > 0) & (m < 0.9999)).any()) for m in masks.values())
    with torch.no_grad():
        out = ema(x)
        for m in masks.values():
            m.copy_((m > 0.9999).float())
        torch.testing.assert_close(out, ema(x), rtol=0, atol=0)


def test_a_registered_ema_takes_the_masks_of_the_model():
    """Without: a filter the schedule brings back stays cleared in an averaged EMA."""
    ctrl, model, ema, x = _train_with_ema(register=True)
    with torch.no_grad():
        ref = ema(x)
        weights = {k: v for k, v in ema.state_dict().items() if not k.endswith("_mask")}
        model.load_state_dict(weights, strict=False)
        torch.testing.assert_close(ctrl.strip().eval()(x), ref, rtol=1e-4, atol=1e-5)
