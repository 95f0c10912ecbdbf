"""The framework-free half of a filter pruning controller.

A frontend's controller subclasses :class:`PruningControllerBase` and supplies three
hooks: :meth:`~PruningControllerBase._weights` (each producer's weight, filters on
axis 0, as numpy), :meth:`~PruningControllerBase._install` (put a plan's masks on the
model) and, for data-parallel training, :meth:`~PruningControllerBase._sync`. The
schedule, the choice of filters, statistics and the saved state are the same for
every framework.

Example (a frontend with weights held in a dict)::

    class Dry(PruningControllerBase):
        def _weights(self):
            return {name: weights[name] for name in self.analysis.state.producers}

    ctrl = Dry(FilterPruningParams(), analysis)
    ctrl.scheduler.epoch_step()
    print(ctrl.statistics())
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError
from .allocation import TOLERANCE
from .analysis import Analysis, AnalysisOptions
from .compression import STATE_VERSION, CompressionController, CompressionStage
from .coupled import coupled_layers, coupled_scores
from .finite import Probe, hold_nonfinite, hold_unstripped
from .legr import learn_ranking
from .legr_coeffs import Coeffs, coeffs_from_json, coeffs_to_json, identity, load_coeffs
from .params import FilterPruningParams
from .pruner import Plan, Pruner
from .schedule import Scheduler
from .scopes import ScopeMatcher, warn_filterless
from .selection import MAX_GROUP_LEVEL, too_narrow
from .signals import importance_source, unsupported
from .state import auto_renamed, check_pruning_state, check_same_schedule, check_taylor_state
from .stats import PruningStatistics, collect_statistics, whole_layers

log = logging.getLogger("filterprune")

__all__ = ["CompressionStage", "PruningControllerBase", "STATE_VERSION", "pruning_params",
           "analysis_options"]


def pruning_params(config: Any, frontend: str = "") -> FilterPruningParams:
    """The ``filter_pruning`` settings of ``config``.

    Raises:
        ConfigError: Without a ``filter_pruning`` entry, or for an invalid setting.
    """
    return FilterPruningParams.from_config(config)


def analysis_options(params: FilterPruningParams,
                     types: Mapping[str, str] | None = None) -> AnalysisOptions:  # fmt: skip
    """The structural switches and scopes of ``params`` as analysis options (``types``:
    the graph's ``scope_types``)."""
    scopes = ScopeMatcher(params.ignored_scopes, params.target_scopes, types)
    return AnalysisOptions(
        prune_first_conv=params.prune_first_conv,
        prune_downsample_convs=params.prune_downsample_convs,
        prune_linear=params.prune_linear,
        scope_reason=scopes.reason,
    )

def _why_whole(analysis: Analysis) -> str:
    """The distinct reasons groups and layers are left whole, most common first (for one
    log line): a layer no rule reads is no group's, and may be all there is."""
    reasons = [g.reason for g in analysis.groups if g.reason]
    producers = {p for g in analysis.groups for p in g.producers}
    reasons += [why for _, why in whole_layers(analysis.graph, producers)]
    if not reasons:
        return "the model has no layer with filters"
    kinds = sorted(dict.fromkeys(reasons), key=lambda r: -reasons.count(r))  # ties: first seen
    return "; ".join(kinds[:3]) + (f"; and {len(kinds) - 3} more" if len(kinds) > 3 else "")


def _same_kept(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _only_removes(old: dict[int, np.ndarray], new: dict[int, np.ndarray]) -> bool:
    """Whether ``new`` removes channels and brings none back (a group missing from ``old``
    is whole). A refit after a channel comes back would match a model without it."""
    removes = revives = False
    for gid, keep in new.items():
        before = old.get(gid, np.ones_like(keep))
        removes |= bool(np.any(before & ~keep))
        revives |= bool(np.any(keep & ~before))
    return removes and not revives


class PruningControllerBase(CompressionController):
    """Schedule, plans, statistics and state of filter pruning on one analysed model.

    Args:
        params: Resolved ``filter_pruning`` settings.
        analysis: The model's channel analysis.
    """

    name = "filter_pruning"
    supports_shrink_when_frozen = False  # frontends that cut the training model set True
    supports_reconstruction = False  # frontends that refit weights after a mask change set True

    def __init__(self, params: FilterPruningParams, analysis: Analysis) -> None:
        self.params = params
        self.analysis = analysis
        warn_filterless(params.ignored_scopes, analysis.graph.scope_names(),
                        analysis.state.producers, analysis.graph.scope_types)  # fmt: skip
        self.pruner = Pruner(analysis, importance=params.filter_importance,
                             global_ranking=params.all_weights,
                             multiple_of=params.filters_multiple_of)  # fmt: skip
        self.plan = Plan(0.0, {})
        self.frozen = False
        self.init_data: Any = None  # the registered batches (set by the workflow)
        self.registered_args: Any = None  # all that register_default_init_args registered (idem)
        self.ranking_coeffs: Coeffs | None = None  # LeGR (alpha, kappa) per group id
        self._starting = False
        self._deferring = False  # inside a scheduler step: BatchNorm waits for its end
        self._bn_stale = False
        self._overshoot_said = False
        self._unstepped_said = False
        self._set_by_hand = False  # set_pruning_level called by the user
        self._recording: Any = None  # outputs before a mask change, refit at the step's end
        self._before_change: Plan | None = None  # the masks to put back if that refit fails
        self.scheduler = Scheduler(params, self._scheduled_level, self.freeze,
                                   settle=self._settle)  # fmt: skip

    # -- frontend hooks --------------------------------------------------------------------
    def _weights(self) -> dict[str, np.ndarray]:
        """Each producer layer's weight with its filters on axis 0."""
        raise NotImplementedError

    def _signal(self, source: str) -> dict[str, np.ndarray]:
        """Per producer, the ``(filters, 1)`` signal a ``taylor``/``bn_scale`` importance
        scores (:mod:`~filterprune.core.signals`); frontends that have it override this."""
        frontend = getattr(getattr(self, "frontend", None), "name", None)
        where = f"the {frontend} frontend" if frontend else "a dry run (analyze)"
        raise unsupported(self.params.filter_importance, where)

    def _importance_inputs(self) -> dict[str, np.ndarray]:
        source = importance_source(self.params.filter_importance)
        return self._weights() if source == "weight" else self._signal(source)

    def _taylor_state(self) -> dict[str, Any] | None:
        """The Taylor totals so far, JSON-able: ``{"totals": {layer: [float, ...]},
        "passes": {layer: int}}`` (layers a backward pass reached); ``None`` where the
        importance is not ``taylor``. Frontends with a Taylor signal override this."""
        return None

    def _load_taylor(self, saved: dict[str, tuple[list[float], int]] | None) -> None:
        """Put saved Taylor totals in place (layer -> ``(totals, passes)``), so the next
        plan ranks filters as the saved run would have; ``None``: a state saved without
        them (the totals start afresh). Frontends with a Taylor signal override this."""

    def _params(self, layers: list[str]) -> dict[str, dict[str, np.ndarray]]:
        """``layers``' parameters as stored (what ``coupled_L2`` scores), read by the
        frontend; a controller without one refuses."""
        frontend = getattr(self, "frontend", None)
        if frontend is None:
            raise unsupported(self.params.filter_importance, "this controller")
        return frontend.read_params(self.captured, layers)

    def _scores(self) -> dict[int, np.ndarray]:
        """Each prunable group's channel scores under ``filter_importance``."""
        if importance_source(self.params.filter_importance) == "params":
            layers = coupled_layers(self.analysis)
            scores = coupled_scores(self.analysis, self._params(layers))
            for group in self.analysis.prunable_groups:
                self.pruner.nonfinite_last(group, scores[group.id])
            return scores
        return self.pruner.scores(self._importance_inputs())

    def _install(self, plan: Plan) -> None:
        """Make ``plan`` the masks in place; subclasses update the model, then call this."""
        self.plan = plan

    def _cut_probe(self) -> contextlib.AbstractContextManager[Probe | None]:
        """The frontend's probe (:meth:`~filterprune.core.workflow.Frontend.cut_probe`)
        on this controller's model; here none."""
        return contextlib.nullcontext(None)

    def _strip_probe(self) -> contextlib.AbstractContextManager[Probe | None]:
        """The frontend's strip probe (:meth:`~filterprune.core.workflow.Frontend.strip_probe`)
        on this controller's model; here none."""
        return contextlib.nullcontext(None)

    def _hold_nonfinite(self) -> None:
        """Keep whole the groups whose cut makes the model non-finite, or that a strip would
        not cut as the masks do (:mod:`.finite`)."""
        with self._cut_probe() as finite:
            hold_nonfinite(self.analysis, finite)
        with self._strip_probe() as same:
            hold_unstripped(self.analysis, same)

    def _sync(self, plan: Plan) -> Plan:
        """The plan every data-parallel worker uses (here: ``plan`` itself)."""
        return plan

    @contextlib.contextmanager
    def _ranking_trials(self) -> Iterator[Callable[[Plan], float]]:
        """Yield ``trial(plan) -> reward`` for the LeGR search: put ``plan``'s masks on the
        model, fine-tune, validate, then restore the model exactly; frontends override."""
        raise ConfigError(
            "`params.interlayer_ranking_type`='learned_ranking' needs a LeGR search, which "
            "this frontend cannot run: give `params.load_ranking_coeffs_path`. Received: "
            "load_ranking_coeffs_path=None."
        )
        yield  # pragma: no cover  (a generator, for contextmanager)

    @property
    def learned_ranking(self) -> bool:
        return self.params.interlayer_ranking_type == "learned_ranking"

    def ranking_without_search(self) -> None:
        """LeGR coefficients for a dry run: loaded when a file is given, else the identity."""
        if not self.learned_ranking:
            return
        path = self.params.load_ranking_coeffs_path
        self.ranking_coeffs = load_coeffs(path, self.analysis) if path else identity(self.analysis)

    def start(self, compression_state: dict[str, Any] | None) -> bool:
        """Resume from ``compression_state``, or put ``pruning_init`` in place.

        Returns:
            True when the masks are new (a caller may then adapt BatchNorm statistics).
        """
        if self.params.shrink_when_frozen and not self.supports_shrink_when_frozen:
            raise ConfigError(
                "`params.shrink_when_frozen` must be false here: only the PyTorch frontend "
                "cuts the training model. Received: shrink_when_frozen=True."
            )
        if self.params.reconstruction_after_mask_change and not self.supports_reconstruction:
            raise ConfigError(
                "`params.reconstruction_after_mask_change` must be false here: this frontend "
                "does not refit weights. Received: reconstruction_after_mask_change=True."
            )
        for key in ("bn_adaptation_after_mask_change", "reconstruction_after_mask_change"):
            if getattr(self.params, key) and self.init_data is None:
                raise ConfigError(
                    f"`params.{key}` needs training data: register it with "
                    "register_default_init_args(config, data) first. Received: no registered "
                    "data."
                )
        self._hold_nonfinite()  # after the checks above: it runs the model
        for group in self.analysis.groups:
            if not group.prunable:
                log.info("left unpruned: %s: %s", ", ".join(group.producers), group.reason)
        if not self.analysis.prunable_groups:
            log.warning("filter_pruning: nothing can be pruned, every group is left whole (%s); "
                        "the model stays UNCOMPRESSED.", _why_whole(self.analysis))  # fmt: skip
        if self.params.prune_flops:
            self._check_flops_target()
        if compression_state is not None:
            self.load_state(compression_state)
            return False
        if self.learned_ranking:
            self.ranking_coeffs = learn_ranking(self)
        self._starting = True  # the workflow re-estimates BatchNorm after start itself
        try:
            self.set_pruning_level(self.params.pruning_init)
        finally:
            self._starting = False
        self.scheduler.current_level = self.params.pruning_init
        return self.pruning_level > 0

    def _check_flops_target(self) -> None:
        """Refuse a ``pruning_flops_target`` this model cannot reach, at creation rather
        than at the epoch whose scheduled level first passes what can be removed."""
        if not self.analysis.prunable_groups:
            return  # nothing is pruned (logged above): every level keeps all the FLOPs
        target = float(self.params.pruning_flops_target)
        removable = self.pruner.reachable_flops(self._scores())
        if removable + 1e-9 >= target:
            return
        most = np.floor(removable * 1e4) / 1e4  # rounded down: a target it names is met
        raise ConfigError(
            f"`{self.params.key('pruning_flops_target')}`={target} cannot be reached on this "
            f"model: with at most {MAX_GROUP_LEVEL:.0%} of each prunable group's filters "
            f"removed, at most {most:.4f} of the FLOPs go, so the smallest fraction of "
            f"the FLOPs that can remain is {1 - most:.4f}. Set pruning_flops_target <= "
            f"{most:.4f}, or {self._more_prunable()}. Received: "
            f"pruning_flops_target={target}."
        )

    def _more_prunable(self) -> str:
        """The settings, of those in place, whose change would let more be pruned."""
        p = self.params
        held = " ".join(g.reason for g in self.analysis.groups if g.reason)
        ways = [f"`{name}` true" for name in ("prune_first_conv", "prune_downsample_convs")
                if f"({name} is off)" in held]  # only where a group is held for it
        if p.filters_multiple_of > 1:
            ways.append(f"a lower `filters_multiple_of` (now {p.filters_multiple_of}: groups "
                        "of no more filters stay whole, the others keep multiples of it)")
        if p.ignored_scopes:
            ways.append("fewer `ignored_scopes`")
        if p.target_scopes:
            ways.append("more `target_scopes`")
        return "let more be pruned: " + ", ".join(ways) if ways else (
            "see `filterprune analyze` for what is left whole and why")  # fmt: skip

    @property
    def bn_adaptation_samples(self) -> int:
        return self.params.num_bn_adaptation_samples

    # -- levels ----------------------------------------------------------------------------
    @property
    def pruning_level(self) -> float:
        """The level of the masks in place (FLOPs fraction under a FLOPs target)."""
        return self.plan.level

    def set_pruning_level(self, level: float) -> None:
        """Recompute masks so each prunable group loses ``level`` of its filters.

        Under ``pruning_flops_target``, ``level`` is the fraction of FLOPs to remove.

        Raises:
            ValueError: If ``level`` is not in [0, 1).
            ConfigError: If a FLOPs target cannot be reached.
        """
        if not 0.0 <= float(level) < 1.0:
            raise ValueError(f"`level` must be a float in [0, 1). Received: level={level}.")
        self._set_by_hand |= not (self._starting or self._deferring)
        scores = self._scores()
        if self.params.prune_flops:
            plan = self.pruner.plan_for_flops(float(level), scores, self.ranking_coeffs,
                                              final=self.params.pruning_flops_target)
        else:
            plan = self.pruner.plan(float(level), scores, self.ranking_coeffs)
        plan = self._sync(plan)
        self._warn_overshoot(float(level), plan)
        changed = not _same_kept(self.plan.kept, plan.kept)
        recording = None
        if self.params.reconstruction_after_mask_change and self._recording is None and (
                _only_removes(self.plan.kept, plan.kept)):  # fmt: skip
            recording = self._record()  # what the refit matches
        previous = self.plan
        self._install(plan)
        if recording is not None:
            if self._deferring:
                self._recording, self._before_change = recording, previous
            else:
                self._refit_or_undo(recording, previous)
        if self.params.bn_adaptation_after_mask_change and not self._starting and changed:
            if self._deferring:
                self._bn_stale = True
            else:
                self._adapt_batchnorm()

    def _warn_overshoot(self, level: float, plan: Plan) -> None:
        """Say once when the FLOPs target is passed by more than the window: a user asking
        for half should hear that the filter blocks only allow three quarters."""
        if not self.params.prune_flops or level < self.params.target_level - 1e-9:
            return
        removed = 1.0 - self.pruner.flops(plan) / self.pruner.full_flops
        if removed <= level + TOLERANCE or self._overshoot_said:
            return
        self._overshoot_said = True
        multiple = self.pruner.multiple_of
        steps = (f"with filters kept in multiples of {multiple}. Lower `filters_multiple_of` "
                 "for finer steps, or lower the target" if multiple > 1 else
                 "in their steps (a grouped convolution keeps equal counts per group, so its "
                 "channels go in blocks). Lower the target, or leave such layers whole "
                 "(`ignored_scopes`)")  # fmt: skip
        log.warning("filter_pruning: `pruning_flops_target` %.3g is passed: %.3f of the FLOPs "
                    "are removed, the least the prunable groups allow %s.", level, removed, steps)

    def say_if_unstepped(self) -> None:
        """Warn once, at a strip or an export, where the schedule goes further than
        ``pruning_init`` but its scheduler was never stepped (a training loop of the user's
        own without its calls): the model is cut at ``pruning_init`` only."""
        s, p = self.scheduler, self.params
        if self._unstepped_said or self._set_by_hand or s.held or s.current_epoch >= 0 or \
                s.target_level <= p.pruning_init + 1e-9:  # fmt: skip
            return  # (``step()`` alone moves no level: only ``epoch_step()`` does)
        self._unstepped_said = True
        log.warning("filter_pruning: the scheduler was never stepped, so the model is cut at "
                    "`pruning_init` %.3g, not on the way to the target %.3g. In a training loop "
                    "of your own, call ctrl.scheduler.epoch_step() at the start of every epoch "
                    "and ctrl.scheduler.step() at every batch (Keras fit: pass "
                    "create_compression_callbacks(ctrl)).", p.pruning_init, s.target_level)

    def _scheduled_level(self, level: float) -> None:
        """The scheduler's ``set_pruning_level``: BatchNorm is re-estimated once the epoch
        step ends (:meth:`_settle`), after a freeze that may cut the model, so the statistics
        are the same and cost the pruned model's forward passes."""
        self._deferring = True
        try:
            self.set_pruning_level(level)
        finally:
            self._deferring = False

    def _settle(self) -> None:
        """End of a scheduler epoch step: refit weights and re-estimate BatchNorm if the
        masks changed."""
        self._refit_pending()
        if self._bn_stale:
            self._bn_stale = False
            self._adapt_batchnorm()

    def _refit_pending(self) -> None:
        """Refit the change this epoch step made, if it was recorded. Frontends that cut
        the model at a freeze call this before cutting, so a failure can still put the
        masks back."""
        if self._recording is not None:
            recording, previous = self._recording, self._before_change
            self._recording = self._before_change = None
            self._refit_or_undo(recording, previous)

    def _refit_or_undo(self, recording: Any, previous: Plan) -> None:
        try:
            self._refit(recording)
        except BaseException:
            self._install(previous)  # a refused refit leaves the masks as they were
            self._bn_stale = False  # and so needs no BatchNorm pass
            raise

    def _record(self) -> Any:
        """The layers' outputs on the registered data now, before the masks change, for
        ``reconstruction_after_mask_change``."""
        raise NotImplementedError

    def _refit(self, recording: Any) -> None:
        """Refit the kept weights so each layer's outputs match those in ``recording``."""
        raise NotImplementedError

    def _adapt_batchnorm(self) -> None:
        """Re-estimate BatchNorm statistics for the masks just put in place."""
        self.frontend.adapt_batchnorm(self.model, self.init_data, self.bn_adaptation_samples)

    def freeze(self, freeze: bool = True) -> None:
        """Stop the scheduler from changing masks (``False``: let it change them again,
        until its own freeze epoch). :meth:`set_pruning_level` still sets them."""
        self.frozen = bool(freeze)
        self.scheduler.frozen = self.frozen

    def keeps(self) -> dict[str, dict[str, np.ndarray]]:
        """Boolean keep vectors per layer and role for the masks in place."""
        return self.pruner.keeps(self.plan)

    def kept_channels(self, node: str, axis: int) -> np.ndarray | None:
        """Which entries along ``axis`` of graph node ``node``'s output the masks in place
        keep (what a per-channel activation quantizer of that tensor is cut to); ``None``
        for a node without a followed tensor."""
        ids = self.analysis.state.values.get(node)
        shape = self.analysis.graph[node].shape if node in self.analysis.graph.nodes else None
        if not isinstance(ids, np.ndarray) or not isinstance(shape, tuple):
            return None
        full = np.broadcast_to(self.analysis.kept_ids(ids, self.plan.kept), shape)
        return np.moveaxis(full, axis, 0).reshape(shape[axis], -1).any(axis=1)

    def compression_stage(self) -> CompressionStage:
        """``UNCOMPRESSED`` while no filter is pruned (also when nothing can be: see the log),
        ``FULLY_COMPRESSED`` at the target level, else ``PARTIALLY_COMPRESSED``."""
        target = self.scheduler.target_level
        if self.pruning_level <= 0 or all(keep.all() for keep in self.plan.kept.values()):
            return CompressionStage.UNCOMPRESSED
        if self.pruning_level >= target - 1e-9:
            return CompressionStage.FULLY_COMPRESSED
        return CompressionStage.PARTIALLY_COMPRESSED

    # -- reporting -------------------------------------------------------------------------
    def statistics(self, quickly_collected_only: bool = False) -> PruningStatistics:
        """FLOPs, parameters and filters, full and current, per-layer levels and reasons."""
        return collect_statistics(
            self.analysis, self.keeps(),
            full_flops=self.pruner.full_flops, full_params=self.pruner.full_params,
            current_params=self.pruner.params(self.plan),
            # the masks' level: a loop that sets it itself (accuracy-aware) holds the schedule
            current_level=self.pruning_level, target_level=self.scheduler.target_level,
            reasons={**too_narrow(self.analysis.prunable_groups, self.pruner.multiple_of),
                     **self.plan.reasons},
        )  # fmt: skip

    # -- state -----------------------------------------------------------------------------
    def get_compression_state(self) -> dict[str, Any]:
        """JSON-able state to save beside the model's weights in a checkpoint (with
        ``ranking_coeffs`` under LeGR, so a resume does not search again)."""
        state = {
            "version": STATE_VERSION,
            "algorithm": "filter_pruning",
            "params": self.params.to_dict(),
            "scheduler": self.scheduler.get_state(),
            "frozen": self.frozen,
            "plan": self.plan.to_dict(self.analysis),
        }
        if self.ranking_coeffs is not None:
            state["ranking_coeffs"] = coeffs_to_json(self.ranking_coeffs, self.analysis)
        taylor = self._taylor_state()
        if taylor is not None:
            state["taylor"] = taylor
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_compression_state` output: schedule, frozen flag, masks,
        under LeGR the ranking coefficients and under ``taylor`` the accumulated totals.

        The state is checked first (:func:`~filterprune.core.state.check_pruning_state`,
        :func:`~filterprune.core.state.check_same_schedule`); nothing changes unless it
        passes.

        Raises:
            ConfigError: If ``state`` is not a filter pruning state of this version, breaks
                its schema, was saved for another model or under another schedule, prunes
                a layer this config leaves whole, or lacks the coefficients
                ``learned_ranking`` needs.
        """
        state = auto_renamed(state, self.analysis)  # a Keras model built twice: other names
        own = self.get_compression_state()  # a frontend's controller may add keys
        plan = check_pruning_state(state, self.analysis, self.state_where, own)
        check_same_schedule(state, self.params, self.state_where)
        coeffs = self._state_coeffs(state)
        taylor = self._state_taylor(state)
        self.scheduler.load_state(state["scheduler"])
        self.frozen = bool(state.get("frozen", False))
        self.ranking_coeffs = coeffs
        self._install(Plan.from_dict(plan, self.analysis))
        if importance_source(self.params.filter_importance) == "gradient":
            self._load_taylor(taylor)

    def _state_taylor(self, state: dict[str, Any]) -> dict[str, tuple[list[float], int]] | None:
        """The checked Taylor totals of ``state`` under ``taylor`` (ignored otherwise)."""
        if importance_source(self.params.filter_importance) != "gradient":
            return None
        uses = self.analysis.state.uses
        filters = {name: int(uses[name]["out"].ids.size)
                   for g in self.analysis.prunable_groups for name in g.producers}  # fmt: skip
        return check_taylor_state(state, filters, self.state_where)

    def _state_coeffs(self, state: dict[str, Any]) -> Coeffs | None:
        """The checked ``ranking_coeffs`` of ``state`` under LeGR (ignored otherwise)."""
        if not self.learned_ranking:
            return None
        where = f"{self.state_where}.ranking_coeffs"
        if "ranking_coeffs" not in state:
            raise ConfigError(
                f"`{where}` must be set to resume `interlayer_ranking_type`='learned_ranking': "
                "the state was saved without LeGR coefficients. Resume with the config it was "
                "saved with, or start a new run. Received: no `ranking_coeffs` key."
            )
        return coeffs_from_json(state["ranking_coeffs"], self.analysis, where)
