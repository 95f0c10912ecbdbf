"""LeGR ranking coefficients: one ``(alpha, kappa)`` per prunable group, and their JSON.

Under ``interlayer_ranking_type: learned_ranking`` a group's filter importances,
normalised per group, become ``alpha * score + kappa`` before they are compared with
other groups' (:mod:`~filterprune.core.allocation`). Inside the controller the
coefficients are keyed by group id; in files and compression states by the group's name,
its producer layers joined by ``", "``, so a file fits only the model and config it was
found for.

File format (``save_ranking_coeffs_path`` / ``load_ranking_coeffs_path``)::

    {"version": 1,
     "ranking_coeffs": {"conv1": [1.0, 0.0], "layer1.0.conv2, layer1.1.conv2": [0.8, 0.1]}}

Example:
    >>> import numpy as np
    >>> from filterprune.core.analysis import Group
    >>> class A:  # the part of an Analysis used here
    ...     prunable_groups = [Group(0, np.arange(4), ["conv1"])]
    >>> coeffs_to_json({0: (2.0, 0.5)}, A())
    {'conv1': [2.0, 0.5]}
    >>> coeffs_from_json({"conv1": [2, 0.5]}, A(), "state")
    {0: (2.0, 0.5)}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .._atomic import atomic_write_text
from ..errors import ConfigError
from ._validation import short_repr
from .allocation import Coeffs

__all__ = ["COEFFS_VERSION", "Coeffs", "group_name", "identity", "coeffs_to_json",
           "coeffs_from_json", "save_coeffs", "load_coeffs"]  # fmt: skip

COEFFS_VERSION = 1
_SHOWN = 5  # names listed in a message before "and N more"


def group_name(group: Any) -> str:
    """The name a group's coefficients have in files: its producers joined by ``", "``."""
    return ", ".join(group.producers)


def identity(analysis: Any) -> Coeffs:
    """``alpha`` 1 and ``kappa`` 0 for every prunable group: the plain normalised ranking."""
    return {g.id: (1.0, 0.0) for g in analysis.prunable_groups}


def coeffs_to_json(coeffs: Coeffs, analysis: Any) -> dict[str, list[float]]:
    """``{group name: [alpha, kappa]}`` for every prunable group of ``analysis``."""
    return {group_name(g): [float(coeffs[g.id][0]), float(coeffs[g.id][1])]
            for g in analysis.prunable_groups}  # fmt: skip


def _listed(names: list[str]) -> str:
    more = len(names) - _SHOWN
    return ", ".join(repr(n) for n in names[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _pair(value: Any, where: str, name: str) -> tuple[float, float]:
    numbers = isinstance(value, list | tuple) and len(value) == 2 and all(map(_is_number, value))
    if not numbers or not all(math.isfinite(v) for v in value) or value[0] <= 0:
        raise ConfigError(
            f"`{where}[{name!r}]` must be [alpha, kappa]: two finite numbers, alpha > 0. "
            f"Received: {name!r}: {short_repr(value)}."
        )
    return float(value[0]), float(value[1])


def coeffs_from_json(data: Any, analysis: Any, where: str) -> Coeffs:
    """Check ``{group name: [alpha, kappa]}`` against the model's prunable groups.

    Args:
        data: The mapping as loaded.
        analysis: The model's analysis under the current config.
        where: Key path of ``data`` in messages (a file name, a state key).

    Raises:
        ConfigError: Naming the key and what is wrong, for a value that is not
            ``[alpha, kappa]`` with ``alpha > 0``, a group the model does not have, or a
            prunable group without coefficients.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"`{where}` must be a dict {{group name: [alpha, kappa]}}. "
            f"Received: {short_repr(data)}."
        )
    groups = {group_name(g): g.id for g in analysis.prunable_groups}
    foreign = [str(k) for k in data if k not in groups]
    missing = [n for n in groups if n not in data]
    if foreign or missing:
        raise ConfigError(
            f"`{where}` must name each prunable group of this model once: were the "
            "coefficients found for another model or config? Received: groups this model "
            f"does not prune: {_listed(foreign) or 'none'}; prunable groups without "
            f"coefficients: {_listed(missing) or 'none'}."
        )
    return {groups[name]: _pair(value, where, name) for name, value in data.items()}


def save_coeffs(path: str, coeffs: Coeffs, analysis: Any) -> None:
    """Write ``coeffs`` as JSON to ``path`` (atomically: a reader never sees half a file)."""
    body = {"version": COEFFS_VERSION, "ranking_coeffs": coeffs_to_json(coeffs, analysis)}
    atomic_write_text(path, json.dumps(body, indent=2) + "\n")


def load_coeffs(path: str, analysis: Any) -> Coeffs:
    """Read and check the coefficients :func:`save_coeffs` wrote.

    Raises:
        ConfigError: If the file cannot be read, is not such JSON, or does not fit the
            model (the message names the file and the key).
    """
    key = "params.load_ranking_coeffs_path"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"`{key}` must name a JSON file of LeGR coefficients. Received: "
            f"load_ranking_coeffs_path={path!r} ({type(err).__name__}: {err})."
        ) from err
    if not isinstance(data, Mapping) or data.get("version") != COEFFS_VERSION:
        version = data.get("version") if isinstance(data, Mapping) else None
        raise ConfigError(
            f"`{path}: version` must be {COEFFS_VERSION} (a file written by "
            f"save_ranking_coeffs_path). Received: version={short_repr(version)}."
        )
    if "ranking_coeffs" not in data:
        raise ConfigError(
            f"`{path}: ranking_coeffs` must be set. Received: keys {sorted(map(str, data))}."
        )
    return coeffs_from_json(data["ranking_coeffs"], analysis, f"{path}: ranking_coeffs")
