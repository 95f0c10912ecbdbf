"""LeGR (Chin et al., CVPR 2020): learn how filters of different groups compare.

Each prunable group gets an affine transform of its normalised filter importance,
``alpha * score + kappa`` (:mod:`~filterprune.core.legr_coeffs`); filters are then ranked
across groups by the transformed scores. The coefficients come from regularised
evolution: a pool of at most ``population_size`` candidates is filled with the identity
(``alpha`` 1, ``kappa`` 0) and random candidates; after that each generation samples
``num_samples`` of the pool, mutates the best of them in a ``mutate_percent`` share of the
groups (``alpha`` times ``exp`` of Gaussian noise, ``kappa`` plus Gaussian noise, both of
scale ``scale_sigma``), evaluates it, adds it to the pool and drops the oldest. Every
generation evaluates one candidate, so the search costs ``generations`` evaluations; the
best candidate seen wins (the earliest on a tie, the identity first of all). Everything
random comes from ``random_seed``.

What an evaluation is belongs to the caller (a frontend prunes at ``max_pruning`` with
the candidate's ranking, fine-tunes, validates and restores the model); here it is a
callback returning the reward, higher is better.

Example:
    >>> from filterprune.core.params import LegrParams
    >>> legr = LegrParams(generations=6, population_size=3, num_samples=2)
    >>> best = search_coeffs([0, 1], lambda c: c[0][0] - c[1][0], legr)
    >>> best[0][0] > best[1][0]  # alpha of group 0 above group 1's: the reward asked so
    True
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from .legr_coeffs import load_coeffs, save_coeffs

__all__ = ["search_coeffs", "reward_of", "learn_ranking", "search_inputs", "run_candidate"]

log = logging.getLogger("filterprune")

Candidate = dict[Any, tuple[float, float]]


@dataclass
class _Scored:
    alpha: np.ndarray
    kappa: np.ndarray
    reward: float


def reward_of(value: Any, source: str = "validate_fn") -> float:
    """The score in what a validation function returned: a number, or a tuple or list
    whose first item is the number. A NaN counts as the worst score.

    Raises:
        TypeError: For anything else (the message names ``source``).
    """
    first = value[0] if isinstance(value, tuple | list) and value else value
    try:
        number = None if isinstance(first, bool | str | bytes) else float(first)
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise TypeError(
            f"`{source}` must return a number (or a tuple whose first item is the score). "
            f"Received: {type(value).__name__} {value!r:.80}."
        )
    return -math.inf if math.isnan(number) else number


def search_inputs(args: Any, val_key: str, register: str) -> Any:
    """The registered validation data, after checking that a LeGR search has what it needs.

    Args:
        args: What the frontend's ``register_default_init_args`` registered (``None`` if
            nothing), with ``validate_fn``, ``train_steps_fn`` and ``val_key``.
        val_key: The name of the validation data argument (``val_loader``, ...).
        register: How the frontend's ``register_default_init_args`` call looks.

    Raises:
        ConfigError: Naming each argument that is missing and how to register it.
    """
    inputs = {"validate_fn": getattr(args, "validate_fn", None),
              val_key: getattr(args, val_key, None)}  # fmt: skip
    missing = [name for name, value in inputs.items() if value is None]
    if missing:
        got = ", ".join(f"{name}=None" for name in missing)
        raise ConfigError(
            f"`validate_fn` and `{val_key}` must be registered for "
            "`interlayer_ranking_type`='learned_ranking' (LeGR scores each candidate ranking "
            f"on the validation data): call {register}, or set "
            f"`params.load_ranking_coeffs_path`. Received: {got}."
        )
    if args.train_steps_fn is None:
        log.info("LeGR: no train_steps_fn registered: candidates are validated as pruned, "
                 "without fine-tuning steps.")  # fmt: skip
    return inputs[val_key]


def run_candidate(ctrl: Any, plan: Any, args: Any, optimizer: Any, train_data: Any,
                  val_data: Any) -> float:  # fmt: skip
    """Put ``plan``'s masks on the model, fine-tune it with ``args.train_steps_fn`` (if any)
    and return ``args.validate_fn``'s score. The controller's schedule, frozen flag and plan
    are put back here; the model and optimizer are the caller's part (framework state)."""
    schedule = (ctrl.scheduler.get_state(), ctrl.frozen, ctrl.plan)
    try:
        ctrl._install(plan)
        if args.train_steps_fn is not None:
            args.train_steps_fn(train_data, ctrl.model, optimizer, ctrl,
                                ctrl.params.legr.train_steps)  # fmt: skip
        return reward_of(args.validate_fn(ctrl.model, val_data))
    finally:
        ctrl.scheduler.load_state(schedule[0])
        ctrl.frozen, ctrl.plan = schedule[1], schedule[2]


def _as_candidate(keys: Sequence[Hashable], alpha: np.ndarray, kappa: np.ndarray) -> Candidate:
    return {k: (float(a), float(b)) for k, a, b in zip(keys, alpha, kappa, strict=True)}


def search_coeffs(keys: Sequence[Hashable], evaluate: Callable[[Candidate], float],
                  legr: Any, log_every: int | None = None) -> Candidate:  # fmt: skip
    """The best ``(alpha, kappa)`` per key found by regularised evolution.

    Args:
        keys: One per prunable group (group ids).
        evaluate: Reward of a candidate ``{key: (alpha, kappa)}``; higher is better.
        legr: The ``legr_params`` settings (:class:`~filterprune.core.params.LegrParams`).
        log_every: Log one line every this many generations (default: about 20 lines).

    Returns:
        The best candidate evaluated.
    """
    n, sigma = len(keys), float(legr.scale_sigma)
    rng = np.random.default_rng(legr.random_seed)
    pool: deque[_Scored] = deque()
    best: _Scored | None = None
    every = log_every or max(1, legr.generations // 20)
    started = time.monotonic()
    log.info("LeGR: searching ranking coefficients of %d groups: %d generations, population "
             "%d, seed %d", n, legr.generations, legr.population_size,
             legr.random_seed)  # fmt: skip
    for generation in range(1, legr.generations + 1):
        if generation == 1:
            alpha, kappa = np.ones(n), np.zeros(n)
        elif len(pool) < legr.population_size:
            alpha, kappa = np.exp(rng.normal(0.0, sigma, n)), rng.normal(0.0, sigma, n)
        else:
            alpha, kappa = _mutate(_parent(pool, legr.num_samples, rng), legr, rng)
        scored = _Scored(alpha, kappa, float(evaluate(_as_candidate(keys, alpha, kappa))))
        pool.append(scored)
        if len(pool) > legr.population_size:
            pool.popleft()  # regularised evolution: the oldest goes, however good
        if best is None or scored.reward > best.reward:
            best = scored
        if generation % every == 0 or generation == legr.generations:
            log.info("LeGR generation %d/%d: reward %.4f, best %.4f (%.1fs)", generation,
                     legr.generations, scored.reward, best.reward,
                     time.monotonic() - started)  # fmt: skip
    if best is None:  # generations >= 1 by the schema; an empty search keeps the identity
        return _as_candidate(keys, np.ones(n), np.zeros(n))
    return _as_candidate(keys, best.alpha, best.kappa)


def _parent(pool: deque[_Scored], num_samples: int, rng: np.random.Generator) -> _Scored:
    """The best of ``num_samples`` candidates drawn from ``pool`` (the first drawn on a tie)."""
    drawn = rng.choice(len(pool), size=min(num_samples, len(pool)), replace=False)
    return max((pool[int(i)] for i in drawn), key=lambda s: s.reward)


def _mutate(parent: _Scored, legr: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``parent`` changed in a ``mutate_percent`` share of its groups (at least one)."""
    n, sigma = parent.alpha.size, float(legr.scale_sigma)
    alpha, kappa = parent.alpha.copy(), parent.kappa.copy()
    if n == 0:
        return alpha, kappa
    count = min(n, max(1, round(legr.mutate_percent * n)))
    which = rng.choice(n, size=count, replace=False)
    alpha[which] *= np.exp(rng.normal(0.0, sigma, count))
    kappa[which] += rng.normal(0.0, sigma, count)
    return alpha, kappa


def learn_ranking(ctrl: Any) -> dict[int, tuple[float, float]]:
    """The LeGR coefficients of a filter pruning controller starting afresh.

    Loaded from ``load_ranking_coeffs_path`` when given (no search); otherwise searched
    with ``ctrl._ranking_trials()``, a context manager that yields ``trial(plan) ->
    reward`` (the frontend prunes with ``plan``, fine-tunes, validates and restores the
    model). Written to ``save_ranking_coeffs_path`` when given.

    Args:
        ctrl: A :class:`~filterprune.core.controller.PruningControllerBase`.

    Raises:
        ConfigError: For a coefficients file that does not fit, or missing search inputs
            (the frontend names what to register).
    """
    params = ctrl.params
    groups = ctrl.analysis.prunable_groups
    if params.load_ranking_coeffs_path:
        coeffs = load_coeffs(params.load_ranking_coeffs_path, ctrl.analysis)
        log.info("LeGR: ranking coefficients of %d groups loaded from %s", len(coeffs),
                 params.load_ranking_coeffs_path)  # fmt: skip
    elif not groups:
        coeffs = {}  # nothing to rank; the controller warns that nothing is pruned
    else:
        scores = ctrl._scores()  # the weights stay as they are
        level = _search_level(ctrl.pruner, scores, params.legr.max_pruning)
        with ctrl._ranking_trials() as trial:
            coeffs = search_coeffs(
                [g.id for g in groups],
                lambda c: trial(ctrl.pruner.plan_for_flops(level, scores, c)),
                params.legr,
            )
    if params.save_ranking_coeffs_path:
        save_coeffs(params.save_ranking_coeffs_path, coeffs, ctrl.analysis)
        log.info("LeGR: ranking coefficients saved to %s", params.save_ranking_coeffs_path)
    return coeffs


def _search_level(pruner: Any, scores: dict[int, np.ndarray], max_pruning: float) -> float:
    """``max_pruning``, or the most a plan can remove when that is less (with a warning)."""
    reachable = pruner.reachable_flops(scores)
    if max_pruning <= reachable:
        return float(max_pruning)
    log.warning("LeGR: `legr_params.max_pruning`=%s cannot be reached (removing at most 90%% "
                "of each prunable group removes %.4f of the FLOPs); candidates are pruned "
                "at %.4f instead.", max_pruning, reachable, reachable)  # fmt: skip
    return reachable
