"""Accuracy-aware training: the largest pruning level whose accuracy stays within a bound.

Config (top level, beside ``compression``; NNCF's layout)::

    "accuracy_aware_training": {
        "mode": "adaptive_compression_level",
        "params": {"maximal_relative_accuracy_degradation": 1.0,   # percent of the baseline
                   "initial_training_phase_epochs": 5, "patience_epochs": 3,
                   "maximal_total_epochs": 100}}

or ``maximal_absolute_accuracy_degradation`` (in the units ``validate_fn`` returns). The
loop (:class:`AdaptiveCompressionLevelLoop`) first measures the uncompressed accuracy
(masks at level 0, unless ``uncompressed_model_accuracy`` is given), trains
``initial_training_phase_epochs`` epochs with the configured schedule, then searches the
level: a level that reaches the bound within ``patience_epochs`` of fine-tuning is kept
and the next try goes higher; one that does not is dropped and the next goes lower,
starting from the best weights so far. The step starts at ``initial_compression_rate_step``
and halves once a good and a bad level are known, until it is below
``minimal_compression_rate_step`` or ``maximal_total_epochs`` are spent. The model ends
with the best weights and masks found, held at that level: a schedule step after the loop
leaves it (``ctrl.scheduler.held = False`` lets the schedule move it again). Levels are the
pruning algorithm's: fractions of FLOPs under ``pruning_flops_target``, else of filters per
group.

The frontends' ``create_accuracy_aware_training_loop(config, ctrl)`` supply how to copy
and restore the model's weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError
from ._validation import enum, integer, section_schema, setting, validate
from .params import Settings

__all__ = ["AccuracyAwareParams", "AdaptiveCompressionLevelLoop", "check_config"]

log = logging.getLogger("filterprune")

_NONNEG = {"type": "number", "minimum": 0}
_STEP = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}


@dataclass(frozen=True, kw_only=True)
class AccuracyAwareParams(Settings):
    """The ``accuracy_aware_training`` section, resolved with its defaults (1% relative)."""

    WHERE = "accuracy_aware_training"

    mode: str = setting("mode", enum(["adaptive_compression_level"]),
                        "adaptive_compression_level")  # fmt: skip
    maximal_relative_accuracy_degradation: float | None = setting(  # percent: over 100
        "params.maximal_relative_accuracy_degradation", {**_NONNEG, "maximum": 100})  # no bound
    maximal_absolute_accuracy_degradation: float | None = setting(
        "params.maximal_absolute_accuracy_degradation", _NONNEG)
    initial_training_phase_epochs: int = setting(
        "params.initial_training_phase_epochs", integer(0), 5)
    patience_epochs: int = setting("params.patience_epochs", integer(1), 3)
    maximal_total_epochs: int = setting("params.maximal_total_epochs", integer(1), 100)
    initial_compression_rate_step: float = setting(
        "params.initial_compression_rate_step", _STEP, 0.1)
    minimal_compression_rate_step: float = setting(
        "params.minimal_compression_rate_step", _STEP, 0.025)
    uncompressed_model_accuracy: float | None = setting(
        "params.uncompressed_model_accuracy", {"type": "number"})  # fmt: skip

    def _resolve(self) -> None:
        if (self.maximal_relative_accuracy_degradation is None
                and self.maximal_absolute_accuracy_degradation is None):  # fmt: skip
            object.__setattr__(self, "maximal_relative_accuracy_degradation", 1.0)

    def check(self, where: str = "") -> None:
        """One kind of bound only; epochs and steps that can be met."""
        pairs = (("initial_training_phase_epochs", "maximal_total_epochs"),
                 ("minimal_compression_rate_step", "initial_compression_rate_step"))  # fmt: skip
        for low, high in pairs:
            if getattr(self, low) > getattr(self, high):
                raise ConfigError(
                    f"`{self.key(low, where)}` must not exceed `{self.key(high, where)}`. "
                    f"Received: {low}={getattr(self, low)}, {high}={getattr(self, high)}."
                )
        rel, absolute = (self.maximal_relative_accuracy_degradation,
                         self.maximal_absolute_accuracy_degradation)  # fmt: skip
        if rel is not None and absolute is not None:
            raise ConfigError(
                f"`{self.key('maximal_relative_accuracy_degradation', where)}` and "
                f"`{self.key('maximal_absolute_accuracy_degradation', where)}` must not both "
                f"be set; choose one. Received: maximal_relative_accuracy_degradation={rel}, "
                f"maximal_absolute_accuracy_degradation={absolute}."
            )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AccuracyAwareParams:
        """Validate and resolve ``config["accuracy_aware_training"]``.

        Raises:
            ConfigError: If the section is missing or invalid.
        """
        section = config.get("accuracy_aware_training")
        if not isinstance(section, Mapping):
            raise ConfigError(
                "`accuracy_aware_training` must be an object such as "
                '{"mode": "adaptive_compression_level", "params": {...}}. '
                f"Received: accuracy_aware_training={section!r}."
            )
        validate(dict(section), section_schema(cls()), cls.WHERE)
        params = cls(**cls._read(section, {}))
        params.check(cls.WHERE)
        return params

    def minimal_accuracy(self, uncompressed: float) -> float:
        """The lowest accuracy allowed given the uncompressed model's."""
        if self.maximal_absolute_accuracy_degradation is not None:
            return uncompressed - self.maximal_absolute_accuracy_degradation
        return uncompressed * (1.0 - self.maximal_relative_accuracy_degradation / 100.0)


def _score(value: Any) -> float:
    """``validate_fn``'s accuracy: a number, or the first item of a tuple (as for LeGR)."""
    first = value[0] if isinstance(value, (tuple, list)) and value else value
    try:
        score = float(first)
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score):
        raise ValueError(
            "`validate_fn` must return the accuracy as a finite number (or a tuple whose "
            f"first item is). Received: {value!r}."
        )
    return score


def check_config(config: Any) -> AccuracyAwareParams:
    """The ``accuracy_aware_training`` section of ``config`` (a :class:`Config`), checked
    with its ``compression`` list before anything trains.

    Raises:
        ConfigError: If the section is invalid, no ``filter_pruning`` is configured, or it
            sets ``shrink_when_frozen`` or ``reconstruction_after_mask_change``.
    """
    params = AccuracyAwareParams.from_config(config)
    algos = config.algorithms()
    pruning = [a for a in algos if a.get("algorithm") == "filter_pruning"]
    _check_pruning([a.get("algorithm") for a in algos],
                   pruning[0].get("params", {}) if pruning else {})  # fmt: skip
    return params


# keys the search cannot work with, and why
_NOT_WITH_SEARCH = {
    "shrink_when_frozen": "the search changes the level after the masks freeze",
    "reconstruction_after_mask_change": "when the search lowers the level, channels come "
                                        "back beside layers refit to do without them",
}


def _check_pruning(algorithms: list[str], params: Any) -> None:
    """``params``: the ``filter_pruning`` params (a dict or resolved settings)."""
    if "filter_pruning" not in algorithms:
        raise ConfigError(
            "`compression` must contain 'filter_pruning' for accuracy-aware training. "
            f"Received: algorithms={algorithms}."
        )
    for key, why in _NOT_WITH_SEARCH.items():
        on = params.get(key) if isinstance(params, dict) else getattr(params, key)
        if on:
            raise ConfigError(f"`params.{key}` must be false with accuracy-aware training: "
                              f"{why}. Received: {key}=True.")  # fmt: skip


@dataclass
class _Best:
    level: float = -1.0
    accuracy: float = float("nan")
    weights: Any = None
    state: Any = None


@dataclass
class _Position:
    """Where the search stands: the level in place, the best passing (``good``) and the
    lowest failing (``bad``) level so far, the step, and the next validation's number
    at this level (0 before the first)."""

    level: float = 0.0
    good: float | None = None
    bad: float | None = None
    step: float = 0.0
    attempt: int = 0


@dataclass
class AdaptiveCompressionLevelLoop:
    """Finds the largest pruning level within the allowed accuracy drop (see the module).

    A run can be continued after any trained epoch: ``run``'s ``epoch_end_fn(loop)`` is
    the place to save :meth:`get_state` beside the model's weights, the controller's
    compression state and the optimizer's; to continue, restore those three, call
    :meth:`load_state` and ``run`` again (``configure_optimizers_fn`` is called once at
    the start, where the saved optimizer state can be loaded into what it makes).

    Args:
        params: The resolved section.
        ctrl: The controller of ``create_compressed_model`` (composite or pruning).
        snapshot: ``model -> copy of its weights``; ``restore``: ``(model, copy) -> None``.
        agree: ``(pruning controller, accuracy) -> the accuracy every process goes by``
            (under DDP: rank 0's, so the ranks search alike whatever each one's
            ``validate_fn`` returns).

    Attributes:
        history: ``(epoch, level, accuracy)`` of every validation.
        uncompressed_accuracy, minimal_accuracy: The baseline and the bound.
        best_level, best_accuracy: The result, after :meth:`run`.
        epoch: Epochs trained so far.
    """

    params: AccuracyAwareParams
    ctrl: Any
    snapshot: Callable[[Any], Any]
    restore: Callable[[Any, Any], None]
    agree: Callable[[Any, float], float] = lambda pruning, accuracy: accuracy
    history: list[tuple[int, float, float]] = field(default_factory=list)
    uncompressed_accuracy: float = float("nan")
    minimal_accuracy: float = float("nan")
    best_level: float = float("nan")
    best_accuracy: float = float("nan")

    def __post_init__(self) -> None:
        children = getattr(self.ctrl, "child_ctrls", [self.ctrl])
        pruning = [c for c in children if c.name == "filter_pruning"]
        _check_pruning([c.name for c in children], pruning[0].params if pruning else {})
        self.pruning = pruning[0]
        self.epoch = 0
        self._best = _Best()
        self._at: _Position | None = None  # set when the search starts
        self._continued = False  # load_state() was called
        self._epoch_end: Callable[[Any], None] = lambda _loop: None

    def _validate(self, model: Any) -> float:
        return self.agree(self.pruning, _score(self._validate_fn(model, epoch=self.epoch)))

    # -- the loop --------------------------------------------------------------------------
    def run(self, model: Any, train_epoch_fn: Callable, validate_fn: Callable,
            configure_optimizers_fn: Callable | None = None,
            epoch_end_fn: Callable[[Any], None] | None = None) -> Any:  # fmt: skip
        """Train and search; return ``model`` with the best weights and masks found.

        Args:
            train_epoch_fn: ``(ctrl, model, epoch=, optimizer=, lr_scheduler=)``: one epoch.
            validate_fn: ``(model, epoch=) -> accuracy`` (higher is better).
            configure_optimizers_fn: ``() -> (optimizer, lr_scheduler)``, called at the
                start and after every level change (the weights may have been restored).
            epoch_end_fn: ``(loop) -> None`` after every trained epoch: where to save a
                checkpoint (see the class).
        """
        self._train_fn, self._validate_fn = train_epoch_fn, validate_fn
        self._configure = configure_optimizers_fn or (lambda: (None, None))
        self._epoch_end = epoch_end_fn or (lambda _loop: None)
        self._optimizers = self._configure()
        if not self._continued:  # a new search
            self._at, self._best = None, _Best()
            self.uncompressed_accuracy = self._uncompressed(model)
            self.minimal_accuracy = self.params.minimal_accuracy(self.uncompressed_accuracy)
        log.info("accuracy-aware: uncompressed %.4f, minimal %.4f", self.uncompressed_accuracy,
                 self.minimal_accuracy)  # fmt: skip
        # the loop sets the level: a train_epoch_fn that steps the schedule (Keras's
        # compression callbacks in fit) must not move it
        self.pruning.scheduler.held = True
        try:
            for _ in range(self.epoch, self.params.initial_training_phase_epochs):
                self._schedule_epoch()
                self._train_one(model)
            if self._at is None:  # the search starts at the level the schedule reached
                self._at = _Position(level=self.pruning.pruning_level,
                                     step=self.params.initial_compression_rate_step)
            best = self._search(model)
        finally:
            self.pruning.scheduler.held = False
        self.ctrl.load_state(best.state)
        self.restore(model, best.weights)
        self.best_level, self.best_accuracy = best.level, best.accuracy
        # the level found stays: training on with the schedule's steps (Keras's compression
        # callbacks in fit) moved it to the schedule's target, past the bound
        self.pruning.scheduler.held = True
        if best.level <= 0:
            log.warning(
                "accuracy-aware: no pruning level above 0 kept the accuracy at the minimal "
                "%.4f within %d epochs; the model is returned uncompressed (accuracy %.4f). "
                "Allow a larger drop (`maximal_relative_accuracy_degradation` or "
                "`maximal_absolute_accuracy_degradation`), or more `patience_epochs` or "
                "`maximal_total_epochs`.", self.minimal_accuracy, self.epoch, best.accuracy)
        self._continued = False
        return model

    # -- continuing ------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """The search's state after the last trained epoch. ``best_weights`` is the
        frontend's copy of the best weights so far (``None`` before a level passed); the
        rest is JSON-able."""
        best = self._best
        return {"epoch": self.epoch, "history": [list(h) for h in self.history],
                "uncompressed_accuracy": self.uncompressed_accuracy,
                "minimal_accuracy": self.minimal_accuracy,
                "position": asdict(self._at) if self._at is not None else None,
                "best": {"level": best.level, "accuracy": best.accuracy,
                         "compression_state": best.state},
                "best_weights": best.weights}  # fmt: skip

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (:meth:`get_state`) at the next ``run``."""
        self._continued = True
        self.epoch = int(state["epoch"])
        self.history = [(int(e), float(lv), float(a)) for e, lv, a in state["history"]]
        self.uncompressed_accuracy = float(state["uncompressed_accuracy"])
        # the bound is the config's: a resumed search may have been given another one
        self.minimal_accuracy = self.params.minimal_accuracy(self.uncompressed_accuracy)
        if abs(self.minimal_accuracy - float(state["minimal_accuracy"])) > 1e-12:
            log.warning("accuracy-aware: the saved search used the bound %.4f; this config "
                        "gives %.4f, which the search now follows.",
                        float(state["minimal_accuracy"]), self.minimal_accuracy)
        at = state["position"]
        self._at = _Position(**at) if at is not None else None
        best = state["best"]
        self._best = _Best(best["level"], best["accuracy"], state["best_weights"],
                           best["compression_state"])  # fmt: skip
        if self._best.weights is not None and not self._best.accuracy >= self.minimal_accuracy:
            self._best = _Best()  # its level no longer holds the bound
            if self._at is not None:
                self._at.good = None

    # -- steps -----------------------------------------------------------------------------
    def _uncompressed(self, model: Any) -> float:
        if self.params.uncompressed_model_accuracy is not None:
            return self.params.uncompressed_model_accuracy
        state, weights = self.ctrl.get_compression_state(), self.snapshot(model)
        self.pruning.set_pruning_level(0.0)
        accuracy = self._validate(model)
        self.ctrl.load_state(state)
        self.restore(model, weights)  # the BatchNorm statistics of these masks, not level 0's
        return accuracy

    def _schedule_epoch(self) -> None:
        """The schedule's next epoch, stepped by the loop alone."""
        self.pruning.scheduler.held = False
        try:
            self.ctrl.scheduler.epoch_step()
        finally:
            self.pruning.scheduler.held = True

    def _train_one(self, model: Any) -> None:
        optimizer, lr_scheduler = self._optimizers
        self._train_fn(self.ctrl, model, epoch=self.epoch, optimizer=optimizer,
                       lr_scheduler=lr_scheduler)  # fmt: skip
        self.epoch += 1
        self._epoch_end(self)

    def _passes(self, model: Any) -> tuple[bool, float]:
        """Validate, fine-tuning up to ``patience_epochs`` while below the bound."""
        at = self._at
        while True:
            accuracy = self._validate(model)
            self.history.append((self.epoch, at.level, accuracy))
            if accuracy >= self.minimal_accuracy:
                return True, accuracy
            if at.attempt >= self.params.patience_epochs or self._out_of_epochs():
                return False, accuracy
            at.attempt += 1  # before training: a checkpoint after it resumes here
            self._train_one(model)

    def _out_of_epochs(self) -> bool:
        return self.epoch >= self.params.maximal_total_epochs

    def _search(self, model: Any) -> _Best:
        at = self._at
        while True:
            ok, accuracy = self._passes(model)
            at.attempt = 0  # the next validation is a level's first
            if ok and at.level > self._best.level:
                self._best = _Best(at.level, accuracy, self.snapshot(model),
                                   self.ctrl.get_compression_state())  # fmt: skip
            at.good, at.bad = (at.level, at.bad) if ok else (at.good, at.level)
            while True:  # to the next level that can be put in place
                if at.good is not None and at.bad is not None:
                    at.step = (at.bad - at.good) / 2
                if at.bad is None:
                    nxt = at.level + at.step
                else:
                    nxt = at.level - at.step if at.good is None else at.good + at.step
                nxt = min(max(nxt, 0.0), 0.99)
                # with a tolerance: (0.45 - 0.4) / 2 is 0.02499..., and 0.025 is still a step
                below_minimal = at.step < self.params.minimal_compression_rate_step - 1e-9
                if below_minimal or self._out_of_epochs() or nxt == at.level:
                    best = self._best
                    return best if best.weights is not None else self._fallback(model)
                if self._move_to(model, nxt):
                    at.level = nxt
                    break
                at.bad = nxt  # unreachable (a FLOPs target): as bad as a level that failed

    def _move_to(self, model: Any, level: float) -> bool:
        """Put ``level`` in place, from the best weights so far when going down."""
        best = self._best
        if best.weights is not None and level < self.pruning.pruning_level:
            self.ctrl.load_state(best.state)
            self.restore(model, best.weights)
        try:
            self.pruning.set_pruning_level(level)
        except ConfigError as err:
            log.info("accuracy-aware: level %.4f skipped: %s", level, err)
            return False
        self._optimizers = self._configure()
        return True

    def _fallback(self, model: Any) -> _Best:
        """No level met the bound within the budget: the uncompressed masks."""
        self.pruning.set_pruning_level(0.0)
        accuracy = self._validate(model)
        return _Best(0.0, accuracy, self.snapshot(model), self.ctrl.get_compression_state())
