"""Pruning schedules against hand-computed values, freezing and state round-trips."""

import json
import math

import pytest
from core_fixtures import registries  # noqa: F401 - fixture

from filterprune.core.config import FilterPruningParams
from filterprune.core.schedule import (
    BaselineSchedule,
    ExponentialSchedule,
    ExponentialWithBiasSchedule,
    LevelSchedule,
    Scheduler,
    exponential_level,
    exponential_with_bias_coefficients,
    get_schedule,
    list_schedules,
    register_schedule,
)
from filterprune.errors import ConfigError


class Recorder:
    """Collects the callbacks a scheduler makes, as (epoch, event) pairs."""

    def __init__(self):
        self.events = []
        self.scheduler = None

    def apply(self, level):
        self.events.append((self.scheduler.current_epoch, "apply", level))

    def freeze(self):
        self.events.append((self.scheduler.current_epoch, "freeze", None))

    def settle(self):
        self.events.append((self.scheduler.current_epoch, "settle", None))


def make(**kwargs):
    rec = Recorder()
    rec.scheduler = Scheduler(FilterPruningParams(**kwargs), rec.apply, rec.freeze)
    return rec.scheduler, rec


def run_levels(scheduler, epochs):
    levels = []
    for _ in range(epochs):
        scheduler.epoch_step()
        levels.append(scheduler.current_level)
    return levels


# --- level functions ---------------------------------------------------------------


def test_exponential_hand_computed():
    # init 0.1 (density 0.9), target 0.4 (density 0.6), T = 4: d(e) = 0.9 * (2/3) ** (e/4)
    for e in range(5):
        expected = 1.0 - 0.9 * (0.6 / 0.9) ** (e / 4)
        assert exponential_level(e, 0.1, 0.4, 5) == pytest.approx(expected, abs=1e-12)
    assert exponential_level(0, 0.1, 0.4, 5) == pytest.approx(0.1)
    assert exponential_level(2, 0.1, 0.4, 5) == pytest.approx(1 - 0.9 * math.sqrt(2 / 3))
    assert exponential_level(4, 0.1, 0.4, 5) == pytest.approx(0.4)
    assert exponential_level(9, 0.1, 0.4, 5) == 0.4  # capped at the target


def test_exponential_single_step_is_target_at_once():
    assert exponential_level(0, 0.0, 0.5, 1) == 0.5
    assert ExponentialSchedule(0.0, 0.5, 1).level(0) == 0.5


def test_exponential_init_above_target_is_capped():
    assert ExponentialSchedule(0.6, 0.3, 10).level(0) == 0.3


@pytest.mark.parametrize(("init", "target", "steps"),
                         [(0.0, 0.5, 100), (0.1, 0.4, 15), (0.0, 0.9, 2), (0.3, 0.5, 9)])
def test_exponential_with_bias_hits_its_three_points(init, target, steps):
    schedule = ExponentialWithBiasSchedule(init, target, steps)
    last = steps - 1
    assert schedule.level(0) == pytest.approx(init, abs=1e-9)
    assert schedule.level(last / 8) == pytest.approx(0.75 * target, abs=1e-9)
    assert schedule.level(last) == pytest.approx(target, abs=1e-9)
    assert schedule.level(last + 5) == target
    levels = [schedule.level(e) for e in range(steps)]
    assert levels == sorted(levels)  # non-decreasing


def test_exponential_with_bias_coefficients_by_hand():
    # init 0, target 0.5, T = 8: y = exp(-8k) and s = exp(-k) solve 1 + s + ... + s^7 = 4/3.
    a, b, k = exponential_with_bias_coefficients(0.0, 0.5, 8)
    s = math.exp(-k)
    assert sum(s**j for j in range(8)) == pytest.approx(4 / 3, abs=1e-12)
    assert a + b == pytest.approx(0.0, abs=1e-12)
    assert a * math.exp(-8 * k) + b == pytest.approx(0.5)
    assert a * math.exp(-k) + b == pytest.approx(0.375)


def test_exponential_with_bias_edge_cases():
    assert ExponentialWithBiasSchedule(0.2, 0.5, 1).level(0) == 0.5  # one step
    assert ExponentialWithBiasSchedule(0.5, 0.5, 10).level(3) == 0.5  # already there
    assert ExponentialWithBiasSchedule(0.6, 0.5, 10).level(0) == 0.5  # capped
    with pytest.raises(ConfigError, match=r"^`pruning_init` must be below 5/7 of `pruning_target` "
                       r"for schedule 'exponential_with_bias'\. Received: pruning_init=0\.4, "
                       r"pruning_target=0\.5\.$"):
        ExponentialWithBiasSchedule(0.4, 0.5, 10)


def test_baseline_is_target_and_freezes_after_warm_up():
    schedule = BaselineSchedule(0.1, 0.4, 50)
    assert schedule.level(0) == 0.4 and schedule.freeze_offset == 0


# --- registry ----------------------------------------------------------------------


def test_registry():
    assert list_schedules()[:3] == ["exponential", "exponential_with_bias", "baseline"]
    assert get_schedule("baseline") is BaselineSchedule
    with pytest.raises(ConfigError, match=r"`schedule` must be one of 'exponential', "
                       r"'exponential_with_bias', 'baseline'.*Received: schedule='linear'\."):
        get_schedule("linear")
    with pytest.raises(ValueError, match="'exponential' is already registered"):
        register_schedule("exponential")(ExponentialSchedule)


def test_register_custom_schedule(registries):
    name = "test_linear_schedule"

    @register_schedule(name)
    class Linear(LevelSchedule):
        def level(self, e):
            return min(self.init + (self.target - self.init) * e / (self.steps - 1), self.target)

    assert get_schedule(name) is Linear and name in list_schedules()


# --- scheduler ---------------------------------------------------------------------


def test_scheduler_initial_state():
    scheduler, rec = make(pruning_init=0.1, pruning_target=0.4, pruning_steps=5)
    assert (scheduler.current_epoch, scheduler.current_step) == (-1, -1)
    assert scheduler.current_level == 0.1
    assert scheduler.target_level == 0.4
    assert scheduler.freeze_epoch == 5
    assert not scheduler.frozen and rec.events == []


def test_scheduler_exponential_levels_and_freeze():
    scheduler, rec = make(pruning_init=0.1, pruning_target=0.4, pruning_steps=5)
    levels = run_levels(scheduler, 8)
    expected = [exponential_level(e, 0.1, 0.4, 5) for e in range(6)]
    assert levels[:6] == pytest.approx(expected)
    assert levels[4:] == [0.4, 0.4, 0.4, 0.4]
    applied = [(e, lvl) for e, kind, lvl in rec.events if kind == "apply"]
    assert [e for e, _ in applied] == [0, 1, 2, 3, 4, 5]  # every epoch until frozen
    assert [e for e, kind, _ in rec.events if kind == "freeze"] == [5, 6, 7]
    assert rec.events.index((5, "apply", 0.4)) < rec.events.index((5, "freeze", None))
    assert scheduler.frozen


def test_scheduler_warm_up_is_level_zero_then_schedule():
    scheduler, rec = make(pruning_init=0.2, pruning_target=0.5, num_init_steps=2,
                          pruning_steps=3)
    levels = run_levels(scheduler, 7)
    assert levels[:2] == [0.0, 0.0]
    assert levels[2:5] == pytest.approx([exponential_level(e, 0.2, 0.5, 3) for e in range(3)])
    assert levels[2] == pytest.approx(0.2)
    applies = [(e, lvl) for e, kind, lvl in rec.events if kind == "apply"]
    assert applies[0] == (0, 0.0)  # clears the pruning_init masks once
    assert [e for e, _ in applies] == [0, 2, 3, 4, 5]
    assert [e for e, kind, _ in rec.events if kind == "freeze"] == [5, 6]


def test_scheduler_warm_up_without_init_applies_nothing():
    scheduler, rec = make(pruning_target=0.5, num_init_steps=3, pruning_steps=2)
    run_levels(scheduler, 3)
    assert rec.events == []
    scheduler.epoch_step()
    assert rec.events == [(3, "apply", 0.0)]


def test_scheduler_baseline():
    scheduler, rec = make(schedule="baseline", pruning_init=0.1, pruning_target=0.4,
                          num_init_steps=2)
    assert scheduler.freeze_epoch == 2
    levels = run_levels(scheduler, 4)
    assert levels == [0.0, 0.0, 0.4, 0.4]
    assert [ev for ev in rec.events if ev[0] >= 2] == [
        (2, "apply", 0.4), (2, "freeze", None), (3, "freeze", None)]


def test_settle_ends_every_epoch_step_after_the_freeze():
    rec = Recorder()
    rec.scheduler = Scheduler(FilterPruningParams(schedule="baseline", pruning_target=0.4),
                              rec.apply, rec.freeze, settle=rec.settle)  # fmt: skip
    run_levels(rec.scheduler, 2)
    assert rec.events == [(0, "apply", 0.4), (0, "freeze", None), (0, "settle", None),
                          (1, "freeze", None), (1, "settle", None)]  # fmt: skip


def test_scheduler_exponential_with_bias():
    scheduler, rec = make(schedule="exponential_with_bias", pruning_target=0.5,
                          num_init_steps=1, pruning_steps=9)
    levels = run_levels(scheduler, 11)
    assert levels[0] == 0.0 and levels[1] == pytest.approx(0.0, abs=1e-12)
    a, b, k = exponential_with_bias_coefficients(0.0, 0.5, 8)
    assert levels[2] == pytest.approx(a * math.exp(-k) + b) == pytest.approx(0.375)
    assert levels[9] == pytest.approx(0.5) and levels[10] == 0.5
    assert scheduler.freeze_epoch == 10 and scheduler.frozen


def test_scheduler_flops_target_is_the_level_target():
    scheduler, _ = make(pruning_flops_target=0.3, pruning_steps=3)
    assert scheduler.prune_flops and scheduler.target_level == 0.3
    assert run_levels(scheduler, 3)[-1] == pytest.approx(0.3)


def test_step_counts_iterations_only():
    scheduler, rec = make()
    for _ in range(5):
        scheduler.step()
    assert scheduler.current_step == 4
    scheduler.step(100)
    assert scheduler.current_step == 100
    assert rec.events == [] and scheduler.current_epoch == -1


def test_epoch_step_with_explicit_epoch():
    scheduler, rec = make(pruning_target=0.4, pruning_steps=5)
    scheduler.epoch_step(3)
    assert scheduler.current_epoch == 3
    assert scheduler.current_level == pytest.approx(exponential_level(3, 0.0, 0.4, 5))
    scheduler.epoch_step(9)
    assert scheduler.frozen and rec.events[-1] == (9, "freeze", None)


def test_state_round_trip():
    scheduler, _ = make(pruning_init=0.1, pruning_target=0.4, pruning_steps=5)
    run_levels(scheduler, 3)
    for _ in range(7):
        scheduler.step()
    state = json.loads(json.dumps(scheduler.get_state()))
    assert state == {"current_epoch": 2, "current_step": 6,
                     "current_level": scheduler.current_level, "frozen": False,
                     "ended_epoch": -1, "batches_ended": -1}
    restored, rec = make(pruning_init=0.1, pruning_target=0.4, pruning_steps=5)
    restored.load_state(state)
    assert rec.events == []  # loading does not touch masks
    assert restored.get_state() == state
    restored.epoch_step()
    scheduler.epoch_step()
    assert restored.get_state() == scheduler.get_state()


def test_state_round_trip_frozen():
    scheduler, _ = make(schedule="baseline", pruning_target=0.4)
    scheduler.epoch_step()
    restored, rec = make(schedule="baseline", pruning_target=0.4)
    restored.load_state(scheduler.get_state())
    restored.epoch_step()
    assert rec.events == [(1, "freeze", None)]  # frozen: no new level, freeze re-asserted


def test_load_state_missing_keys():
    scheduler, _ = make()
    with pytest.raises(ConfigError, match=r"`scheduler state` must contain current_epoch, "
                       r"current_step, current_level, frozen\. Received: state keys="
                       r"\['current_epoch'\]\."):
        scheduler.load_state({"current_epoch": 3})


@pytest.mark.parametrize("bad", [-5, 2.7, True, "3"])
def test_a_next_epoch_that_is_not_an_epoch_is_refused(bad):
    scheduler, rec = make(pruning_init=0.1, pruning_target=0.4, pruning_steps=5)
    with pytest.raises(ValueError, match="`next_epoch` must be an integer >= 0"):
        scheduler.epoch_step(bad)
    assert rec.events == [] and scheduler.current_epoch == -1
    scheduler.epoch_step(3.0)  # a float holding an integer is an epoch
    assert scheduler.current_epoch == 3
