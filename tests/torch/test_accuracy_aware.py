"""Accuracy-aware training finds the largest level within the allowed accuracy drop."""

import copy
import json

import pytest
import torch
from torch import nn

from filterprune import NNCFConfig
from filterprune.errors import ConfigError
from filterprune.torch import (
    create_accuracy_aware_training_loop,
    create_compressed_model,
    register_default_init_args,
)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 8, 1), nn.Flatten(), nn.LazyLinear(4))  # fmt: skip


def config(aat, **params):
    params = {"schedule": "exponential", "pruning_target": 0.3, "pruning_steps": 2,
              "filters_multiple_of": 1, **params}  # fmt: skip
    return NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, 1, 12, 12]},
        "compression": {"algorithm": "filter_pruning", "pruning_init": 0.1,
                        "params": {k: v for k, v in params.items() if v is not None}},
        "accuracy_aware_training": {"mode": "adaptive_compression_level", "params": aat},
    })  # fmt: skip


class Harness:
    """Accuracy falls off a cliff above level 0.62; training perturbs the weights."""

    def __init__(self, ctrl, cliff=0.62):
        self.ctrl, self.cliff, self.epochs = ctrl, cliff, 0

    def train(self, ctrl, model, epoch, optimizer, lr_scheduler):
        assert optimizer is not None and epoch == self.epochs
        self.epochs += 1
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)

    def validate(self, model, epoch):
        return 0.9 if self.ctrl.pruning_level <= self.cliff else 0.5


def run(aat, cliff=0.62, **params):
    model = net()
    model(torch.zeros(1, 1, 12, 12))
    ctrl, model = create_compressed_model(model, config(aat, **params))
    loop = create_accuracy_aware_training_loop(config(aat, **params), ctrl)
    harness = Harness(ctrl, cliff)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model = loop.run(model, train_epoch_fn=harness.train, validate_fn=harness.validate,
                     configure_optimizers_fn=lambda: (optimizer, None))  # fmt: skip
    return loop, ctrl, model, harness


def test_finds_the_largest_level_within_the_bound():
    aat = {"maximal_absolute_accuracy_degradation": 0.05, "initial_training_phase_epochs": 2,
           "patience_epochs": 1, "maximal_total_epochs": 50}  # fmt: skip
    loop, ctrl, _, harness = run(aat)
    assert loop.uncompressed_accuracy == 0.9 and loop.minimal_accuracy == pytest.approx(0.85)
    assert 0.62 - 0.025 <= loop.best_level <= 0.62
    assert ctrl.pruning_level == pytest.approx(loop.best_level)
    assert harness.epochs <= 50
    levels = [level for _, level, _ in loop.history]
    assert max(levels) > 0.62  # it tried beyond the cliff and came back


def test_best_weights_are_restored():
    aat = {"maximal_relative_accuracy_degradation": 1.0, "initial_training_phase_epochs": 1,
           "patience_epochs": 2, "maximal_total_epochs": 30}  # fmt: skip
    loop, ctrl, model, harness = run(aat)
    # every failed level was fine-tuned twice more; the result is the best level's weights
    failed = sum(1 for _, _, acc in loop.history if acc < loop.minimal_accuracy)
    assert failed > 0
    first = next(model.parameters())
    shift = float((first - net()[0].weight).mean().detach())
    assert shift == pytest.approx(0.01 * round(shift / 0.01), abs=1e-5)
    assert shift < 0.01 * harness.epochs - 1e-6  # not every epoch's change survived


def test_budget_is_respected():
    aat = {"maximal_absolute_accuracy_degradation": 0.05, "initial_training_phase_epochs": 3,
           "patience_epochs": 3, "maximal_total_epochs": 6}  # fmt: skip
    _, _, _, harness = run(aat)
    assert harness.epochs <= 6


def test_config_errors():
    model = net()
    model(torch.zeros(1, 1, 12, 12))
    ctrl, _ = create_compressed_model(model, config({}))
    with pytest.raises(ConfigError, match=r"must not both be set; choose one"):
        create_accuracy_aware_training_loop(config({
            "maximal_absolute_accuracy_degradation": 1, "maximal_relative_accuracy_degradation": 1
        }), ctrl)  # fmt: skip
    with pytest.raises(ConfigError, match=r"^`accuracy_aware_training\.params\.patience_epochs` "
                       r"must be an integer >= 1\. Received: patience_epochs=0\.$"):
        create_accuracy_aware_training_loop(config({"patience_epochs": 0}), ctrl)
    with pytest.raises(ConfigError, match=r"^`accuracy_aware_training` must be an object"):
        create_accuracy_aware_training_loop({"input_info": {}}, ctrl)
    with pytest.raises(ConfigError, match=r"^`params\.shrink_when_frozen` must be false with "
                       r"accuracy-aware training"):
        model = net()
        model(torch.zeros(1, 1, 12, 12))
        shrinking, _ = create_compressed_model(model, config({}, shrink_when_frozen=True))
        create_accuracy_aware_training_loop(config({}), shrinking)
    refit = config({}, reconstruction_after_mask_change=True)
    data = [(torch.randn(4, 1, 12, 12), None)]
    refitting, _ = create_compressed_model(net(), register_default_init_args(refit, data))
    with pytest.raises(ConfigError, match=r"^`params\.reconstruction_after_mask_change` must be "
                       r"false with accuracy-aware training: when the search lowers the level, "
                       r"channels come back beside layers refit to do without them\. "
                       r"Received: reconstruction_after_mask_change=True\.$"):
        create_accuracy_aware_training_loop(refit, refitting)


def test_budgets_that_cannot_be_met_and_bad_accuracies_are_errors():
    """Three initial epochs ran under a budget of one; a NaN accuracy ended the search at
    level 0 and a tuple gave a bare TypeError."""
    model = net()
    model(torch.zeros(1, 1, 12, 12))
    ctrl, model = create_compressed_model(model, config({}))
    with pytest.raises(ConfigError, match=r"initial_training_phase_epochs` must not exceed "
                       r"`accuracy_aware_training\.params\.maximal_total_epochs"):
        create_accuracy_aware_training_loop(config({"initial_training_phase_epochs": 3,
                                                    "maximal_total_epochs": 1}), ctrl)  # fmt: skip
    with pytest.raises(ConfigError, match=r"minimal_compression_rate_step` must not exceed"):
        create_accuracy_aware_training_loop(config({"minimal_compression_rate_step": 0.5,
                                                    "initial_compression_rate_step": 0.1}), ctrl)
    short = config({"maximal_total_epochs": 2, "initial_training_phase_epochs": 0})
    for bad in (float("nan"), None, "high"):
        loop = create_accuracy_aware_training_loop(short, ctrl)
        with pytest.raises(ValueError, match="`validate_fn` must return the accuracy as a finite"):
            loop.run(model, train_epoch_fn=lambda *a: None,
                     validate_fn=lambda m, epoch, bad=bad: bad)  # fmt: skip
    harness = Harness(ctrl)
    loop = create_accuracy_aware_training_loop(short, ctrl)
    loop.run(model, train_epoch_fn=harness.train, validate_fn=lambda m, epoch: (0.9, "top-5"),
             configure_optimizers_fn=lambda: (torch.optim.SGD(model.parameters(), 0.1), None))
    assert loop.best_accuracy == 0.9


def test_a_step_equal_to_the_minimal_one_is_still_taken():
    """0.3, 0.4 hold, 0.5 and 0.45 do not: (0.45 - 0.4) / 2 is 0.02499... in floating
    point, which is the minimal step 0.025, so 0.425 is tried (and holds)."""
    aat = {"maximal_absolute_accuracy_degradation": 0.05, "initial_training_phase_epochs": 2,
           "patience_epochs": 1, "maximal_total_epochs": 50}  # fmt: skip
    loop, *_ = run(aat, cliff=0.43)
    tried = [round(level, 4) for _, level, _ in loop.history]
    assert list(dict.fromkeys(tried)) == [0.3, 0.4, 0.5, 0.45, 0.425]
    assert loop.best_level == pytest.approx(0.425)


class Trainer(Harness):
    """Training that depends on the weights and the level, and a validation that depends
    on the weights: a resume that restored any of them wrongly ends elsewhere."""

    def __init__(self, ctrl, start=0):
        super().__init__(ctrl)
        self.epochs = start

    def train(self, ctrl, model, epoch, optimizer, lr_scheduler):
        super().train(ctrl, model, epoch, optimizer, lr_scheduler)
        torch.manual_seed(epoch)
        x = torch.randn(8, 1, 12, 12)
        loss = model(x).square().mean() + ctrl.pruning_level
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def validate(self, model, epoch):
        torch.manual_seed(100)
        with torch.no_grad():
            wiggle = float(model(torch.randn(4, 1, 12, 12)).mean()) % 0.01
        return super().validate(model, epoch) + wiggle


def test_resume_after_any_epoch_equals_the_uninterrupted_search():
    aat = {"maximal_absolute_accuracy_degradation": 0.05, "initial_training_phase_epochs": 2,
           "patience_epochs": 2, "maximal_total_epochs": 12}  # fmt: skip
    cfg = config(aat)

    def start(state=None):
        model = net()
        model(torch.zeros(1, 1, 12, 12))
        ctrl, model = create_compressed_model(model, cfg, compression_state=state)
        return ctrl, model

    def optimizers(model, saved=None):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if saved is not None:
            opt.load_state_dict(saved)
        return opt

    ctrl, model = start()
    opts, saved = [], []

    def configure():
        opts.append(optimizers(model))
        return opts[-1], None

    def save(loop):
        saved.append({"loop": copy.deepcopy(loop.get_state()), "model": _copy(model),
                      "ctrl": copy.deepcopy(ctrl.get_compression_state()),
                      "opt": copy.deepcopy(opts[-1].state_dict())})  # fmt: skip

    loop = create_accuracy_aware_training_loop(cfg, ctrl)
    trainer = Trainer(ctrl)
    loop.run(model, trainer.train, trainer.validate, configure, epoch_end_fn=save)
    assert len(saved) == trainer.epochs and loop.history[-1][0] == trainer.epochs
    levels = {round(level, 4) for _, level, _ in loop.history}
    assert len(levels) >= 4  # several moves, up and down, to resume across
    whole = _copy(model)
    for k in range(len(saved)):
        ck = saved[k]
        ctrl2, model2 = start(ck["ctrl"])
        model2.load_state_dict(ck["model"])
        pending = [ck["opt"]]

        def configure2(model2=model2, pending=pending):
            return optimizers(model2, pending.pop() if pending else None), None

        loop2 = create_accuracy_aware_training_loop(cfg, ctrl2)
        state = dict(ck["loop"])
        weights = state.pop("best_weights")
        loop2.load_state({**json.loads(json.dumps(state)), "best_weights": weights})  # JSON-able
        trainer2 = Trainer(ctrl2, start=k + 1)
        loop2.run(model2, trainer2.train, trainer2.validate, configure2)
        assert loop2.history == loop.history, k
        assert (loop2.best_level, loop2.best_accuracy) == (loop.best_level, loop.best_accuracy)
        assert ctrl2.pruning_level == ctrl.pruning_level
        got = model2.state_dict()
        for name, value in whole.items():
            assert torch.equal(got[name], value), (k, name)


def _copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_train_epoch_that_steps_the_schedule_does_not_move_the_level():
    model = net()
    model(torch.zeros(1, 1, 12, 12))
    aat = {"maximal_absolute_accuracy_degradation": 0.05, "initial_training_phase_epochs": 2,
           "patience_epochs": 1, "maximal_total_epochs": 8}
    ctrl, model = create_compressed_model(model, config(aat))
    loop = create_accuracy_aware_training_loop(config(aat), ctrl)
    seen = []

    def train(ctrl, model, epoch, optimizer, lr_scheduler):
        before = ctrl.pruning_level
        ctrl.scheduler.epoch_step()  # as Keras's compression callbacks do in fit
        seen.append((before, ctrl.pruning_level))

    model = loop.run(model, train_epoch_fn=train,
                     validate_fn=lambda m, epoch: 0.9 if ctrl.pruning_level <= 0.45 else 0.5)
    assert all(a == b for a, b in seen)
    assert loop.best_level == pytest.approx(ctrl.pruning_level)
    assert 0.4 < loop.best_level <= 0.45
    # training on with the schedule's steps keeps the level found (it went to the target)
    for _ in range(3):
        ctrl.scheduler.epoch_step()
    assert ctrl.pruning_level == pytest.approx(loop.best_level)


def test_the_search_keeps_the_batchnorm_statistics_of_its_masks():
    """Measuring the uncompressed accuracy re-estimates BatchNorm at level 0; the masks
    were put back but not the statistics, so the search's first level (and the model
    returned, were it the best) ran with level 0's."""
    data = [(torch.randn(8, 1, 12, 12, generator=torch.Generator().manual_seed(i)) * 2 + 1,
             torch.zeros(8, dtype=torch.long)) for i in range(4)]  # fmt: skip
    aat = {"maximal_absolute_accuracy_degradation": 0.05, "initial_training_phase_epochs": 0,
           "patience_epochs": 1, "maximal_total_epochs": 4}  # fmt: skip
    cfg = register_default_init_args(config(aat, bn_adaptation_after_mask_change=True), data)
    model = net()
    model(torch.zeros(1, 1, 12, 12))
    ctrl, model = create_compressed_model(model, cfg)
    at_creation = model[4].running_mean.clone()  # adapted to the masks at level 0.1
    seen = []

    def validate(m, epoch):
        seen.append(model[4].running_mean.clone())
        return 0.9 if ctrl.pruning_level <= 0.1 else 0.5

    loop = create_accuracy_aware_training_loop(cfg, ctrl)
    model = loop.run(model, train_epoch_fn=lambda *a, **k: None, validate_fn=validate)
    assert not torch.equal(seen[0], at_creation)  # level 0's own statistics
    torch.testing.assert_close(seen[1], at_creation)
    assert loop.best_level == pytest.approx(0.1)
    torch.testing.assert_close(model[4].running_mean, at_creation)


def test_an_unreachable_level_is_not_validated_again_and_no_level_is_said(caplog):
    """Under a FLOPs target every unreachable next level re-ran the last validation."""
    caplog.set_level("WARNING", logger="filterprune")
    aat = {"maximal_absolute_accuracy_degradation": 0.05, "initial_training_phase_epochs": 0,
           "patience_epochs": 1, "maximal_total_epochs": 50}  # fmt: skip
    loop, *_ = run(aat, cliff=1.0, pruning_flops_target=0.3, pruning_target=None)
    levels = [level for _, level, _ in loop.history]
    assert len(levels) == len(set(levels)) and loop.best_level == max(levels)
    loop, *_ = run(aat, cliff=0.0)  # no level above 0 holds
    assert loop.best_level == 0.0
    assert "no pruning level above 0 kept the accuracy" in caplog.text


def test_a_resumed_search_follows_the_bound_of_its_config(caplog):
    """The saved bound won: a search resumed with a tighter one returned a level past
    the cliff, below the new bound, without a word."""
    caplog.set_level("WARNING", logger="filterprune")
    loose = {"maximal_absolute_accuracy_degradation": 0.45, "initial_training_phase_epochs": 1,
             "patience_epochs": 1, "maximal_total_epochs": 5}  # fmt: skip
    model = net()
    model(torch.zeros(1, 1, 12, 12))
    ctrl, model = create_compressed_model(model, config(loose))
    loop = create_accuracy_aware_training_loop(config(loose), ctrl)
    harness = Harness(ctrl)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saved = []

    def save(lp):
        saved.append((copy.deepcopy(lp.get_state()), copy.deepcopy(ctrl.get_compression_state()),
                      _copy(model)))  # fmt: skip

    loop.run(model, harness.train, harness.validate, lambda: (optimizer, None), epoch_end_fn=save)
    assert loop.best_level > harness.cliff  # the loose bound takes a level past the cliff
    state, ctrl_state, weights = saved[-1]
    tight = {**loose, "maximal_absolute_accuracy_degradation": 0.05, "maximal_total_epochs": 12}
    model2 = net()
    model2(torch.zeros(1, 1, 12, 12))
    ctrl2, model2 = create_compressed_model(model2, config(tight), compression_state=ctrl_state)
    model2.load_state_dict(weights)
    loop2 = create_accuracy_aware_training_loop(config(tight), ctrl2)
    loop2.load_state(state)
    assert "the saved search used the bound 0.4500; this config gives 0.8500" in caplog.text
    harness2 = Harness(ctrl2)
    harness2.epochs = len(saved)
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    loop2.run(model2, harness2.train, harness2.validate, lambda: (optimizer2, None))
    assert loop2.best_level <= harness.cliff and loop2.best_accuracy >= 0.85
