"""Checks of saved compression states: a state is data from a file, checked before use.

A state from :meth:`~filterprune.core.compression.CompressionController.get_compression_state`
is a JSON-able dict ``{"version": 1, "algorithm": ..., ...}``; a composite controller's
holds its children's under ``children``. Before any part of a state is used its header
(type, version, algorithm) and its body (the schema of the algorithm's state) are checked,
and a filter pruning state is compared with the model it is loaded into, so a truncated,
edited or foreign state gives one :class:`~filterprune.errors.ConfigError` that names the key
path and what differs, never a raw ``KeyError`` or a silent mismatch.

Example:
    >>> check_state_header({"version": 1, "algorithm": "filter_pruning"}, "filter_pruning")
    >>> newer = {"version": 9, "algorithm": "filter_pruning"}
    >>> check_state_header(newer, "filter_pruning")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    filterprune.errors.ConfigError: `compression_state.version` must be 1: ... version=9.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ._validation import boolean, fraction, integer, obj, short_repr, validate

__all__ = ["STATE_VERSION", "check_state_header", "check_pruning_state", "check_same_schedule",
           "check_taylor_state", "auto_numbered_renames", "auto_renamed", "PRUNING_STATE",
           "SCHEDULE_KEYS"]

STATE_VERSION = 1
_SHOWN = 5  # groups listed in a message before "and N more"

_PLAN_GROUP = obj(
    {
        "producers": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "size": integer(1),
        "kept": {"type": "array", "items": integer(0), "uniqueItems": True},
    },
    required=["producers", "size", "kept"],
)

PRUNING_STATE = obj(
    {
        "version": {"const": STATE_VERSION},
        "algorithm": {"const": "filter_pruning"},
        "params": {"type": "object"},
        "scheduler": obj(
            {
                "current_epoch": integer(-1),
                "current_step": integer(-1),
                "current_level": fraction(),
                "frozen": boolean(),
                "ended_epoch": integer(-1),  # absent in states written before it
                "batches_ended": integer(-1),  # likewise
            },
            required=["current_epoch", "current_step", "current_level", "frozen"],
        ),
        "frozen": boolean(),
        "plan": obj(
            {
                "version": {"const": 1},
                "level": fraction(),
                "groups": {"type": "array", "items": _PLAN_GROUP},
            },
            required=["level", "groups"],
        ),
        # LeGR: {group name: [alpha, kappa]}, checked against the model by the controller
        "ranking_coeffs": {"type": "object"},
        # taylor importance: per producer, the per-filter totals and backward passes so far
        "taylor": obj(
            {
                "totals": {"type": "object", "additionalProperties": {
                    "type": "array", "items": {"type": "number", "minimum": 0}}},
                "passes": {"type": "object", "additionalProperties": integer(0)},
            },
            required=["totals", "passes"],
        ),
    },
    required=["version", "algorithm", "scheduler", "plan"],
)
"""The schema of a filter pruning state (``get_compression_state`` of its controller)."""


def check_state_header(state: Any, algorithm: str, where: str = "compression_state",
                       runs: Sequence[str] = ()) -> None:  # fmt: skip
    """Check that ``state`` is a dict of this version saved by an ``algorithm`` controller.

    Args:
        state: The state as loaded.
        algorithm: The ``algorithm`` the state must name (``"composite"`` for several).
        where: Key path of ``state`` in messages (a composite child's includes its index).
        runs: The algorithms of a composite config, named in messages.

    Raises:
        ConfigError: Naming what is missing or different.
    """
    leaf = where.rsplit(".", 1)[-1]
    if not isinstance(state, Mapping):
        raise ConfigError(
            f"`{where}` must be a dict from get_compression_state(). "
            f"Received: {leaf}={short_repr(state)}."
        )
    if "version" not in state:
        raise ConfigError(
            f"`{where}.version` must be set to {STATE_VERSION}. Received: no `version` key "
            f"(keys: {sorted(map(str, state))})."
        )
    version = state["version"]
    if isinstance(version, bool) or version != STATE_VERSION:
        raise ConfigError(
            f"`{where}.version` must be {STATE_VERSION}: this filterprune reads states of "
            f"version {STATE_VERSION} only. Received: version={short_repr(version)}."
        )
    if state.get("algorithm") != algorithm:
        got = short_repr(state["algorithm"]) if "algorithm" in state else "no `algorithm` key"
        children = state.get("children")
        held = ""
        if isinstance(children, list):  # a composite state: say what it holds
            names = [c.get("algorithm") for c in children if isinstance(c, Mapping)]
            held = (f" (it holds {', '.join(map(str, names))}: give the config the same "
                    "`compression` entries, in that order)")  # fmt: skip
        config = " and ".join(runs) + ", saved as one state" if runs else algorithm
        if runs and state.get("algorithm") in runs:  # one algorithm's state alone
            held = (f" (a state of {state['algorithm']} alone: give the config that one "
                    "`compression` entry, or start without the state)")  # fmt: skip
        raise ConfigError(
            f"`{where}.algorithm` must be {algorithm!r}: the config runs {config}. "
            f"Received: algorithm={got}{held}."
        )


def check_pruning_state(state: Any, analysis: Any, where: str = "compression_state",
                        extra_keys: Iterable[str] = ()) -> dict:  # fmt: skip
    """Check a filter pruning state against its schema and the model's groups.

    Args:
        state: The state as loaded.
        analysis: The model's :class:`~filterprune.core.analysis.Analysis` under the
            current config.
        where: Key path of ``state`` in messages.
        extra_keys: Keys a frontend's controller adds to the state (``shrunk``); allowed,
            and checked by that controller.

    Returns:
        The state's ``plan`` without the groups this config leaves whole (all their
        channels are kept), ready for :meth:`~filterprune.core.pruner.Plan.from_dict`.

    Raises:
        ConfigError: For a bad header or schema, a channel index out of range, groups the
            model does not have (another model), or pruned layers the config now leaves
            whole (naming each layer and why).
    """
    check_state_header(state, "filter_pruning", where)
    schema = PRUNING_STATE
    extra = [k for k in extra_keys if k not in schema["properties"]]
    if extra:
        schema = {**schema, "properties": {**schema["properties"], **dict.fromkeys(extra, {})}}
    validate(state, schema, where)
    groups = state["plan"]["groups"]
    for i, group in enumerate(groups):
        wrong = [k for k in group["kept"] if k >= group["size"]]
        if wrong:
            raise ConfigError(
                f"`{where}.plan.groups[{i}].kept` must hold channel indices below "
                f"size={group['size']}. Received: kept has {short_repr(wrong)}."
            )
    by_producers = {tuple(g.producers): g for g in analysis.groups}
    _check_same_model(groups, by_producers, analysis, where)
    _check_still_prunable(groups, by_producers, where)
    kept = [g for g in groups if by_producers[tuple(g["producers"])].prunable]
    return {**state["plan"], "groups": kept}


SCHEDULE_KEYS = ("pruning_init", "schedule", "pruning_target", "pruning_flops_target",
                 "num_init_steps", "pruning_steps")
"""The settings that decide the level at each epoch: a resume must keep them."""
PLAN_KEYS = ("filter_importance", "all_weights", "filters_multiple_of", "prune_batch_norms")
"""The settings that decide which channels a level removes: a resume must keep them too."""


def check_same_schedule(state: Mapping[str, Any], params: Any,
                        where: str = "compression_state") -> None:  # fmt: skip
    """Refuse a state saved under another schedule, or another way of choosing channels:
    the resumed levels or choices would differ from the saved run's, and could bring
    pruned channels back.

    States saved without ``params`` (older ones), or without one of these keys, are not
    compared on what they lack.

    Raises:
        ConfigError: Naming the first key whose saved value differs from the config's.
    """
    saved = state.get("params")
    if not isinstance(saved, Mapping):
        return
    configured = params.to_dict()
    for key in (*SCHEDULE_KEYS, *PLAN_KEYS):
        if key not in saved or key not in configured or saved[key] == configured[key]:
            continue
        why = "follows the schedule it started (a lower level would bring pruned channels " \
              "back)" if key in SCHEDULE_KEYS else "keeps choosing channels as it started " \
              "(another choice at the next level would bring pruned channels back)"  # fmt: skip
        if saved[key] is None:  # the saved run set another target (a FLOPs target)
            want, fix = "unset", f"Remove {key}"
            other = [k for k in SCHEDULE_KEYS if k in configured and saved.get(k) is not None
                     and configured[k] != saved[k]]  # fmt: skip
            fix += "".join(f" and set {k}={short_repr(saved[k])}" for k in other[:1])
        else:
            want = short_repr(saved[key])
            fix = f"Set {key}={want}"
        raise ConfigError(
            f"`{params.key(key)}` must be {want}, as when the state was saved: a resumed "
            f"run {why}. {fix} to resume, or start a new run without compression_state for "
            f"the new setting. Received: `{where}.params.{key}`={short_repr(saved[key])}, "
            f"configured {key}={short_repr(configured[key])}."
        )


def check_taylor_state(state: Mapping[str, Any], filters: Mapping[str, int],
                       where: str = "compression_state") -> dict[str, tuple[list, int]] | None:
    """The saved Taylor totals, checked against the producers ranked now.

    Args:
        state: A filter pruning state that passed :func:`check_pruning_state`.
        filters: Each ranked producer's number of filters.

    Returns:
        Layer -> ``(totals, passes)``; ``None`` for a state saved without totals (older
        ones, or another importance).

    Raises:
        ConfigError: For totals of layers this model does not rank, or of another length.
    """
    saved = state.get("taylor")
    if saved is None:
        return None
    totals, passes = saved["totals"], saved["passes"]
    foreign = sorted(set(totals) - set(filters))
    if foreign or set(passes) != set(totals):
        raise ConfigError(
            f"`{where}.taylor` must hold totals of the layers this model ranks, with their "
            "passes. Was the state saved for another model? Received: totals of layers it "
            f"does not rank: {foreign[:_SHOWN]}; layers with totals and passes: "
            f"{sorted(totals)[:_SHOWN]} and {sorted(passes)[:_SHOWN]}."
        )
    for name, values in totals.items():
        if len(values) != filters[name]:
            raise ConfigError(
                f"`{where}.taylor.totals[{name!r}]` must hold one total per filter "
                f"({filters[name]}). Received: {len(values)} values."
            )
    return {name: (values, int(passes[name])) for name, values in totals.items()}


_AUTO_NUMBER = re.compile(r"_\d+$")  # Keras: "conv2d_3" is the 4th unnamed Conv2D made


def _stem(name: str) -> str:
    """``name`` without Keras' auto-numbering on each path part (``kind:`` prefix kept)."""
    return "/".join(_AUTO_NUMBER.sub("", part) for part in name.split("/"))


def auto_numbered_renames(saved: Sequence[str], own: Sequence[str]) -> dict[str, str] | None:
    """Saved name -> own name, where the two lists differ only by auto-numbering.

    Keras numbers the layers it names itself per process: a model built a second time
    has ``dropout_1`` where the first had ``dropout``. Both lists must name the same
    things in the same order (graph order), pair by pair with equal stems, and a name
    found in both must pair with itself.

    Returns:
        The renames (every saved name), or ``None`` when the lists do not pair up so.
    """
    if len(saved) != len(own) or len(set(saved)) != len(saved) or not all(
            isinstance(name, str) for name in [*saved, *own]):  # fmt: skip
        return None
    both = set(saved) & set(own)
    for old, new in zip(saved, own, strict=True):
        if _stem(old) != _stem(new) or (old != new and (old in both or new in both)):
            return None
    return dict(zip(saved, own, strict=True))


def auto_renamed(state: Any, analysis: Any) -> Any:
    """A filter pruning ``state`` with its layer names made this model's, where they differ
    only by Keras' auto-numbering (the model built again in the same process): its groups
    pair up with the model's prunable ones in order, name by name. Otherwise ``state``
    itself (the checks then say what differs)."""
    try:
        groups = state["plan"]["groups"]
        if not all(isinstance(g, Mapping) and isinstance(g["producers"], list) for g in groups):
            return state
        saved = [name for g in groups for name in g["producers"]]
    except (KeyError, TypeError):
        return state  # malformed: the schema check names what is wrong
    if not all(isinstance(name, str) for name in saved):
        return state
    prunable = analysis.prunable_groups
    own = [name for g in prunable for name in g.producers]
    if set(saved) <= set(own) or [len(g["producers"]) for g in groups] != [
            len(g.producers) for g in prunable]:  # fmt: skip
        return state
    renames = auto_numbered_renames(saved, own)
    if renames is None:
        return state

    def rename(name: str) -> str:
        return renames.get(name, name)

    plan = {**state["plan"], "groups": [{**g, "producers": [rename(n) for n in g["producers"]]}
                                        for g in groups]}  # fmt: skip
    out = {**state, "plan": plan}
    taylor = state.get("taylor")
    if isinstance(taylor, Mapping):
        out["taylor"] = {k: {rename(n): v for n, v in part.items()} if isinstance(part, Mapping)
                         else part for k, part in taylor.items()}  # fmt: skip
    coeffs = state.get("ranking_coeffs")
    if isinstance(coeffs, Mapping):  # keys: a group's producers joined by ", "
        out["ranking_coeffs"] = {", ".join(map(rename, k.split(", "))) if isinstance(k, str)
                                 else k: v for k, v in coeffs.items()}  # fmt: skip
    return out


def _describe(groups: list[tuple[list[str], int]]) -> str:
    shown = ", ".join(f"{names} (size {size})" for names, size in groups[:_SHOWN])
    more = len(groups) - _SHOWN
    return shown + (f" and {more} more" if more > 0 else "") if groups else "none"


def _check_same_model(groups: list[dict], by_producers: dict, analysis: Any, where: str) -> None:
    """Every saved group must be one of the model's, with the same number of channels."""
    foreign = []
    for g in groups:
        here = by_producers.get(tuple(g["producers"]))
        if here is None or here.size != g["size"]:
            foreign.append((g["producers"], g["size"]))
    if not foreign:
        return
    saved = {tuple(g["producers"]) for g in groups}
    absent = [(g.producers, g.size) for g in analysis.prunable_groups
              if tuple(g.producers) not in saved]  # fmt: skip
    raise ConfigError(
        f"`{where}.plan.groups` must be groups of this model: was the state saved for another "
        f"model? Received: groups this model does not have: {_describe(foreign)}; this "
        f"model's prunable groups the state lacks: {_describe(absent)}."
    )


def _check_still_prunable(groups: list[dict], by_producers: dict, where: str) -> None:
    """A pruned group the config now leaves whole would be pruned once, then restored."""
    for i, g in enumerate(groups):
        here = by_producers[tuple(g["producers"])]
        if here.prunable or len(g["kept"]) == g["size"]:
            continue
        raise ConfigError(
            f"`{where}.plan.groups[{i}]` prunes {', '.join(g['producers'])} ({len(g['kept'])} "
            f"of {g['size']} filters kept), which this config leaves whole: {here.reason}. "
            "Resume with the config the state was saved with, or start a new run."
        )
