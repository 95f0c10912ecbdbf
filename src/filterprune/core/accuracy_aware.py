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
with the best weights and masks found. Levels are the pruning algorithm's: fractions of
FLOPs under ``pruning_flops_target``, else of filters per group.

The frontends' ``create_accuracy_aware_training_loop(config, ctrl)`` supply how to copy
and restore the model's weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
    maximal_relative_accuracy_degradation: float | None = setting(
        "params.maximal_relative_accuracy_degradation", _NONNEG)
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
        """One kind of bound only."""
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
class AdaptiveCompressionLevelLoop:
    """Finds the largest pruning level within the allowed accuracy drop (see the module).

    Args:
        params: The resolved section.
        ctrl: The controller of ``create_compressed_model`` (composite or pruning).
        snapshot: ``model -> copy of its weights``; ``restore``: ``(model, copy) -> None``.

    Attributes:
        history: ``(epoch, level, accuracy)`` of every validation.
        uncompressed_accuracy, minimal_accuracy: The baseline and the bound.
        best_level, best_accuracy: The result, after :meth:`run`.
    """

    params: AccuracyAwareParams
    ctrl: Any
    snapshot: Callable[[Any], Any]
    restore: Callable[[Any, Any], None]
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

    # -- the loop --------------------------------------------------------------------------
    def run(self, model: Any, train_epoch_fn: Callable, validate_fn: Callable,
            configure_optimizers_fn: Callable | None = None) -> Any:  # fmt: skip
        """Train and search; return ``model`` with the best weights and masks found.

        Args:
            train_epoch_fn: ``(ctrl, model, epoch=, optimizer=, lr_scheduler=)``: one epoch.
            validate_fn: ``(model, epoch=) -> accuracy`` (higher is better).
            configure_optimizers_fn: ``() -> (optimizer, lr_scheduler)``, called at the
                start and after every level change (the weights may have been restored).
        """
        self._train_fn, self._validate_fn = train_epoch_fn, validate_fn
        self._configure = configure_optimizers_fn or (lambda: (None, None))
        self._optimizers = self._configure()
        self.uncompressed_accuracy = self._uncompressed(model)
        self.minimal_accuracy = self.params.minimal_accuracy(self.uncompressed_accuracy)
        log.info("accuracy-aware: uncompressed %.4f, minimal %.4f", self.uncompressed_accuracy,
                 self.minimal_accuracy)  # fmt: skip
        for _ in range(self.params.initial_training_phase_epochs):
            self.ctrl.scheduler.epoch_step()
            self._train_one(model)
        best = self._search(model)
        self.ctrl.load_state(best.state)
        self.restore(model, best.weights)
        self.best_level, self.best_accuracy = best.level, best.accuracy
        return model

    def _uncompressed(self, model: Any) -> float:
        if self.params.uncompressed_model_accuracy is not None:
            return self.params.uncompressed_model_accuracy
        state = self.ctrl.get_compression_state()
        self.pruning.set_pruning_level(0.0)
        accuracy = float(self._validate_fn(model, epoch=self.epoch))
        self.ctrl.load_state(state)
        return accuracy

    def _train_one(self, model: Any) -> None:
        optimizer, lr_scheduler = self._optimizers
        self._train_fn(self.ctrl, model, epoch=self.epoch, optimizer=optimizer,
                       lr_scheduler=lr_scheduler)  # fmt: skip
        self.epoch += 1

    def _passes(self, model: Any, level: float) -> tuple[bool, float]:
        """Validate, fine-tuning up to ``patience_epochs`` while below the bound."""
        for attempt in range(self.params.patience_epochs + 1):
            accuracy = float(self._validate_fn(model, epoch=self.epoch))
            self.history.append((self.epoch, level, accuracy))
            if accuracy >= self.minimal_accuracy:
                return True, accuracy
            if attempt == self.params.patience_epochs or self._out_of_epochs():
                break
            self._train_one(model)
        return False, accuracy

    def _out_of_epochs(self) -> bool:
        return self.epoch >= self.params.maximal_total_epochs

    def _search(self, model: Any) -> _Best:
        best = _Best()
        good, bad = None, None
        step, level = self.params.initial_compression_rate_step, self.pruning.pruning_level
        while True:
            ok, accuracy = self._passes(model, level)
            if ok and level > best.level:
                best = _Best(level, accuracy, self.snapshot(model),
                             self.ctrl.get_compression_state())  # fmt: skip
            good, bad = (level, bad) if ok else (good, level)
            if good is not None and bad is not None:
                step = (bad - good) / 2
            nxt = level + step if bad is None else (level - step if good is None else good + step)
            nxt = min(max(nxt, 0.0), 0.99)
            # with a tolerance: (0.45 - 0.4) / 2 is 0.02499..., and 0.025 is still a step
            below_minimal = step < self.params.minimal_compression_rate_step - 1e-9
            if below_minimal or self._out_of_epochs() or nxt == level:
                return best if best.weights is not None else self._fallback(model)
            if self._move_to(model, nxt, best):
                level = nxt
            else:  # unreachable (a FLOPs target): as bad as a level that failed
                bad = nxt

    def _move_to(self, model: Any, level: float, best: _Best) -> bool:
        """Put ``level`` in place, from the best weights so far when going down."""
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
        accuracy = float(self._validate_fn(model, epoch=self.epoch))
        return _Best(0.0, accuracy, self.snapshot(model), self.ctrl.get_compression_state())
