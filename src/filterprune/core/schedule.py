"""Pruning-level schedules and the epoch scheduler (NNCF 2.x semantics).

A *level* is the fraction of filters pruned in each prunable group, or, with a FLOPs
target, the fraction of FLOPs removed; the scheduler does not care which.

Epoch ``e`` below counts from the end of the warm-up: ``e = epoch - num_init_steps``;
``T = pruning_steps - 1`` is the first epoch at the target.

* ``baseline``: the target at ``e = 0``; masks freeze at that epoch.
* ``exponential``: density ``d = 1 - level`` decays as
  ``d(e) = d_init * (d_target / d_init) ** (e / T)``; masks freeze at ``e = pruning_steps``.
* ``exponential_with_bias``: ``level(e) = a * exp(-k * e) + b`` with ``level(0) = init``,
  ``level(T) = target`` and ``level(T / 8) = 0.75 * target``; freezes like ``exponential``.

Levels are capped at the target. During the warm-up the level is 0.

A schedule that cannot run with some settings says so in :meth:`LevelSchedule.check`
(``exponential_with_bias`` does); the resolved settings call it when they are built.

Example:
    >>> from types import SimpleNamespace
    >>> params = SimpleNamespace(
    ...     schedule="exponential", pruning_init=0.0, target_level=0.5, prune_flops=False,
    ...     num_init_steps=0, pruning_steps=3)
    >>> levels = []
    >>> s = Scheduler(params, apply_level=levels.append, freeze=lambda: None)
    >>> for _ in range(3):
    ...     s.epoch_step()
    >>> [round(x, 4) for x in levels]
    [0.0, 0.2929, 0.5]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import ConfigError
from ._validation import one_of

__all__ = [
    "LevelSchedule",
    "BaselineSchedule",
    "ExponentialSchedule",
    "ExponentialWithBiasSchedule",
    "Scheduler",
    "SchedulerParams",
    "register_schedule",
    "get_schedule",
    "list_schedules",
    "exponential_level",
    "exponential_with_bias_coefficients",
    "exponential_with_bias_feasible",
]

_SCHEDULES: dict[str, type[LevelSchedule]] = {}
_BIAS_FACTOR = 0.125  # the 0.75 * target point sits at T / 8
_STATE_KEYS = ("current_epoch", "current_step", "current_level", "frozen")


def register_schedule(name: str) -> Callable[[type[LevelSchedule]], type[LevelSchedule]]:
    """Class decorator adding a :class:`LevelSchedule` subclass under ``name``.

    Raises:
        ValueError: If ``name`` is already registered.
    """

    def decorator(cls: type[LevelSchedule]) -> type[LevelSchedule]:
        if name in _SCHEDULES:
            raise ValueError(f"Schedule {name!r} is already registered ({_SCHEDULES[name]}).")
        _SCHEDULES[name] = cls
        return cls

    return decorator


def get_schedule(name: str) -> type[LevelSchedule]:
    """The schedule class registered under ``name``.

    Raises:
        ConfigError: If unknown; the message lists the known schedules.
    """
    if name not in _SCHEDULES:
        raise one_of("schedule", name, _SCHEDULES)
    return _SCHEDULES[name]


def list_schedules() -> list[str]:
    """Names of the registered schedules, in registration order."""
    return list(_SCHEDULES)


def exponential_level(e: float, init: float, target: float, steps: int) -> float:
    """Level ``e`` epochs after the warm-up for the ``exponential`` schedule.

    Example:
        >>> round(exponential_level(1, 0.0, 0.5, 3), 6)  # 1 - 0.5 ** 0.5
        0.292893
    """
    if steps <= 1:
        return target
    d_init, d_target = 1.0 - init, 1.0 - target
    density = d_init * (d_target / d_init) ** (e / (steps - 1))
    return min(1.0 - density, target)


def exponential_with_bias_feasible(init: float, target: float, steps: int) -> bool:
    """Whether ``exponential_with_bias`` has a curve through its three points.

    An increasing exponential reaches ``0.75 * target`` at ``T / 8`` only if
    ``init < 5/7 * target``. With ``init >= target`` or ``steps == 1`` the level is
    simply the target (capped), which is always feasible.
    """
    return steps <= 1 or init >= target or 7.0 * init < 5.0 * target


def _solve_s(c: float) -> float:
    """Root in (0, 1) of ``1 + s + ... + s**7 = 1 / c`` by bisection (``s = exp(-k T / 8)``)."""
    goal = 1.0 / c
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if sum(mid**j for j in range(8)) < goal:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-16:
            break
    return 0.5 * (lo + hi)


def exponential_with_bias_coefficients(
    init: float, target: float, last_epoch: int
) -> tuple[float, float, float]:
    """``(a, b, k)`` of ``level(e) = a * exp(-k * e) + b`` through the three points.

    Args:
        init: Level at ``e = 0``.
        target: Level at ``e = last_epoch``; ``0.75 * target`` at ``e = last_epoch / 8``.
        last_epoch: ``T = pruning_steps - 1``, at least 1.

    Raises:
        ConfigError: If ``init < target`` but ``init >= 5/7 * target`` (no such curve).

    Example:
        >>> a, b, k = exponential_with_bias_coefficients(0.0, 0.5, 8)
        >>> round(a * math.exp(-k) + b, 6)
        0.375
    """
    ExponentialWithBiasSchedule.check(init, target, last_epoch + 1)
    if last_epoch <= 0 or init >= target:
        return 0.0, target, 0.0
    # With y = exp(-k T): (y**(1/8) - 1) = c (y - 1), c = (0.75 target - init) / (target - init).
    c = (0.75 * target - init) / (target - init)
    s = _solve_s(c)
    k = -8.0 * math.log(s) / last_epoch
    a = (target - init) / (s**8 - 1.0)
    return a, init - a, k


class LevelSchedule:
    """Level as a function of the epoch counted from the end of the warm-up.

    Args:
        init: Level at the start (``pruning_init``).
        target: Final level.
        steps: ``pruning_steps``, at least 1.
    """

    def __init__(self, init: float, target: float, steps: int) -> None:
        self.check(init, target, steps)
        self.init = float(init)
        self.target = float(target)
        self.steps = int(steps)

    @classmethod
    def check(
        cls,
        init: float,
        target: float,
        steps: int,
        init_key: str = "pruning_init",
        target_key: str = "pruning_target",
    ) -> None:
        """Raise if this schedule cannot run with these settings (default: it always can).

        Args:
            init: ``pruning_init``.
            target: The target level.
            steps: ``pruning_steps``.
            init_key: Key path of ``init`` in the config, for the message.
            target_key: Key path of ``target`` in the config, for the message.

        Raises:
            ConfigError: Naming both keys, what is expected and what was received.
        """

    def level(self, e: float) -> float:
        """Level ``e`` epochs after the warm-up (capped at the target)."""
        raise NotImplementedError

    @property
    def freeze_offset(self) -> int:
        """Epochs after the warm-up at which masks freeze."""
        return self.steps


@register_schedule("exponential")
class ExponentialSchedule(LevelSchedule):
    """Exponential decay of density from ``1 - init`` to ``1 - target`` over ``steps - 1``."""

    def level(self, e: float) -> float:
        return exponential_level(e, self.init, self.target, self.steps)


@register_schedule("exponential_with_bias")
class ExponentialWithBiasSchedule(LevelSchedule):
    """``a * exp(-k * e) + b`` through ``init``, ``0.75 * target`` at ``T / 8``, ``target``."""

    def __init__(self, init: float, target: float, steps: int) -> None:
        super().__init__(init, target, steps)
        if self.steps > 1:
            self.a, self.b, self.k = exponential_with_bias_coefficients(
                self.init, self.target, self.steps - 1
            )
        else:
            self.a, self.b, self.k = 0.0, self.target, 0.0

    @classmethod
    def check(
        cls,
        init: float,
        target: float,
        steps: int,
        init_key: str = "pruning_init",
        target_key: str = "pruning_target",
    ) -> None:
        """The curve exists only for ``init < 5/7 * target`` (see
        :func:`exponential_with_bias_feasible`)."""
        if not exponential_with_bias_feasible(init, target, steps):
            init_name, target_name = (k.rsplit(".", 1)[-1] for k in (init_key, target_key))
            raise ConfigError(
                f"`{init_key}` must be below 5/7 of `{target_key}` for schedule "
                f"'exponential_with_bias'. Received: {init_name}={init}, {target_name}={target}."
            )

    def level(self, e: float) -> float:
        return min(self.a * math.exp(-self.k * e) + self.b, self.target)


@register_schedule("baseline")
class BaselineSchedule(LevelSchedule):
    """The target right after the warm-up, then frozen."""

    def level(self, e: float) -> float:
        return self.target

    @property
    def freeze_offset(self) -> int:
        return 0


class SchedulerParams(Protocol):
    """What :class:`Scheduler` reads (``FilterPruningParams`` provides it)."""

    schedule: str
    pruning_init: float
    target_level: float
    prune_flops: bool
    num_init_steps: int
    pruning_steps: int


class Scheduler:
    """Epoch-driven pruning scheduler with NNCF's ``epoch_step``/``step`` protocol.

    Call :meth:`epoch_step` at the beginning of every epoch and :meth:`step` at the
    beginning of every iteration. The scheduler calls ``apply_level(level)`` to recompute
    masks (every epoch after the warm-up until frozen, since importances change with
    training; during the warm-up only once, to clear a ``pruning_init`` level), and
    ``freeze()`` at every epoch from ``freeze_epoch`` on (after applying that epoch's level),
    so ``freeze`` must be idempotent.

    Args:
        params: Resolved settings (``FilterPruningParams``): the schedule, its start
            (``pruning_init``), its end (``target_level``) and its timing.
        apply_level: Callback that sets masks for a level.
        freeze: Callback that freezes masks.
        settle: Optional callback run at the end of every :meth:`epoch_step` (after
            ``apply_level`` and ``freeze``), for work that should see the frozen model.

    Raises:
        ConfigError: For an unknown schedule, or settings the schedule cannot run with.
    """

    def __init__(
        self,
        params: SchedulerParams,
        apply_level: Callable[[float], None],
        freeze: Callable[[], None],
        settle: Callable[[], None] | None = None,
    ) -> None:
        self.prune_flops = bool(params.prune_flops)
        self.initial_level = float(params.pruning_init)
        self.target_level = float(params.target_level)
        self.num_init_steps = int(params.num_init_steps)
        self.pruning_steps = int(params.pruning_steps)
        self.schedule = get_schedule(params.schedule)(
            self.initial_level, self.target_level, self.pruning_steps
        )
        self.freeze_epoch = self.num_init_steps + self.schedule.freeze_offset
        self._apply_level = apply_level
        self._freeze = freeze
        self._settle = settle
        self.current_epoch = -1
        self.current_step = -1
        self.current_level = self.initial_level
        self.frozen = False
        self.held = False  # set by a loop that sets the level itself (accuracy-aware)
        self.ended_epoch = -1  # the last epoch a Keras fit ended (end_epoch)
        self.batches_ended = -1  # the last epoch whose batches all ran (end_batches)
        self.loaded = False  # the epoch's state came from load_state (a new process)

    def level_at(self, epoch: int) -> float:
        """The scheduled level for ``epoch`` (0 during the warm-up)."""
        if epoch < self.num_init_steps:
            return 0.0
        return self.schedule.level(epoch - self.num_init_steps)

    def short_of_target(self, epochs: int) -> str | None:
        """What to say when ``epochs`` epochs (0 to ``epochs - 1``) end before the
        schedule reaches its target; ``None`` when they do not."""
        last = self.level_at(epochs - 1)
        if last >= self.target_level - 1e-9:
            return None
        reached = next((e for e in range(epochs, self.freeze_epoch + 1)
                        if self.level_at(e) >= self.target_level - 1e-9), self.freeze_epoch)
        what = "FLOPs level" if self.prune_flops else "level"
        return (f"the pruning schedule reaches its target {what} {self.target_level:g} at epoch "
                f"{reached + 1}, but the run has {epochs}: its last epoch prunes at "
                f"{last:.3g}. Give at least {reached + 1} epochs, or fewer `pruning_steps` / "
                "`num_init_steps`.")

    def epoch_step(self, next_epoch: int | None = None) -> None:
        """Advance to ``next_epoch`` (default: the next one) and update the masks;
        nothing while :attr:`held` (the training loop's callbacks step it too)."""
        if next_epoch is not None and not (
                isinstance(next_epoch, numbers.Real) and not isinstance(next_epoch, bool)
                and float(next_epoch).is_integer() and next_epoch >= 0):  # fmt: skip
            raise ValueError(f"`next_epoch` must be an integer >= 0 (or None for the next "
                             f"epoch). Received: next_epoch={next_epoch!r}.")
        self.batches_ended, self.loaded = -1, False
        if self.held:
            return
        before = self.current_epoch, self.current_level
        self.current_epoch = self.current_epoch + 1 if next_epoch is None else int(next_epoch)
        if not self.frozen:
            level = self.level_at(self.current_epoch)
            warm_up = self.current_epoch < self.num_init_steps
            if not (warm_up and level == self.current_level):
                self.current_level = level
                try:
                    self._apply_level(level)
                except BaseException:  # a refused level (a model cut in place) moves nothing
                    self.current_epoch, self.current_level = before
                    raise
        if self.current_epoch >= self.freeze_epoch:
            self._freeze()
            self.frozen = True
        if self._settle is not None:
            self._settle()

    def end_epoch(self) -> None:
        """Mark the current epoch done, so a state saved before the mark is known to be
        from inside it (a resumed Keras fit runs that epoch again: :attr:`in_progress`)."""
        self.ended_epoch = self.current_epoch

    def end_batches(self) -> None:
        """Mark the current epoch's batches all run (its end is :meth:`end_epoch`)."""
        self.batches_ended = self.current_epoch

    @property
    def in_progress(self) -> bool:
        """Whether the current epoch began and did not end (see :meth:`end_epoch`)."""
        return self.ended_epoch < self.current_epoch

    def step(self, next_step: int | None = None) -> None:
        """Advance the iteration counter; pruning does nothing per iteration."""
        self.current_step = self.current_step + 1 if next_step is None else int(next_step)

    def get_state(self) -> dict[str, Any]:
        """Plain JSON-able state: epoch, step, level, frozen."""
        return {
            "current_epoch": self.current_epoch,
            "current_step": self.current_step,
            "current_level": self.current_level,
            "frozen": self.frozen,
            "ended_epoch": self.ended_epoch,
            "batches_ended": self.batches_ended,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state` output; callbacks are not called (masks are the
        caller's state).

        Raises:
            ConfigError: If a key is missing.
        """
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ConfigError(
                f"`scheduler state` must contain {', '.join(_STATE_KEYS)}. "
                f"Received: state keys={sorted(state)}."
            )
        self.current_epoch = int(state["current_epoch"])
        self.current_step = int(state["current_step"])
        self.current_level = float(state["current_level"])
        self.frozen = bool(state["frozen"])
        self.ended_epoch = int(state.get("ended_epoch", self.current_epoch))  # older states
        self.batches_ended = int(state.get("batches_ended", -1))
        self.loaded = True

