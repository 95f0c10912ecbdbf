"""The JSON schema of a filterprune configuration (NNCF 2.x format plus our keys).

The schema is a plain dict (JSON Schema draft 2020-12), built when asked: each
``compression`` entry's schema comes from its settings dataclass
(:mod:`filterprune.core.params`), and the ``schedule`` and ``filter_importance`` names
from their registries, so a name added with ``register_schedule`` or
``register_importance`` is valid in a config. ``CONFIG_SCHEMA`` and the other upper-case
schema names are rebuilt on each access for the same reason.

Every object we define sets ``additionalProperties: false``, so a misspelt key is an error
rather than a silently ignored setting. Defaults are recorded as ``default`` annotations.
``compression`` and ``input_info`` accept one object or a list of them, written with
``if``/``then`` on the instance type instead of ``oneOf`` so that a validation error points
at the offending key instead of at the whole alternative.

Example:
    >>> import jsonschema
    >>> jsonschema.Draft202012Validator(config_schema()).is_valid(
    ...     {"input_info": {"sample_size": [1, 3, 32, 32]},
    ...      "compression": {"algorithm": "filter_pruning"}})
    True
"""

from __future__ import annotations

import copy
from typing import Any

from ._validation import SCOPES, enum, integer, obj
from .importance import list_importances
from .params import (
    ALGORITHMS,
    INTERLAYER_RANKING_TYPES,
    PRESETS,
    QUANTIZATION_MODES,
    RANGE_INIT_TYPES,
    entry_schema,
)
from .schedule import list_schedules

TARGET_DEVICES = ("ANY", "CPU", "GPU", "VPU", "NPU", "CPU_SPR", "TRIAL")
_FILLERS = ("zeros", "ones", "random")

_INPUT_INFO = obj(
    {
        "sample_size": {"type": "array", "items": integer(1), "minItems": 1},
        "type": {"type": "string"},
        "filler": enum(_FILLERS),
        "keyword": {"type": "string"},
    },
    required=["sample_size"],
)


def _one_or_list(item: dict[str, Any]) -> dict[str, Any]:
    """One object matching ``item``, or a non-empty list of them."""
    return {
        "type": ["object", "array"],
        "items": item,
        "minItems": 1,
        "if": {"type": "object"},
        "then": item,
    }


def _compression_entry(with_algorithms: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": "object",
        "required": ["algorithm"],
        "properties": {"algorithm": enum(ALGORITHMS)},
    }
    if with_algorithms:
        entry["allOf"] = [
            {
                "if": {"properties": {"algorithm": {"const": name}}, "required": ["algorithm"]},
                "then": entry_schema(cls),
            }
            for name, cls in ALGORITHMS.items()
        ]
    return entry


def config_schema(with_algorithms: bool = True) -> dict[str, Any]:
    """The schema of a whole config, with the names registered now.

    Args:
        with_algorithms: Include each ``compression`` entry's own schema. Without it only
            the entry's ``algorithm`` is checked: :class:`~filterprune.core.config.Config`
            checks each entry with its settings class (``check_entry``), which adds the
            rules a schema cannot express.
    """
    schema = obj(
        {
            "input_info": _one_or_list(_INPUT_INFO),
            "compression": _one_or_list(_compression_entry(with_algorithms)),
            "target_device": {**enum(TARGET_DEVICES), "default": "ANY"},
            "log_dir": {"type": "string"},
            "disable_shape_matching": {"type": "boolean"},
            "ignored_scopes": SCOPES,
            "target_scopes": SCOPES,
            "validate_scopes": {
                "type": "boolean",
                "default": True,
                "description": "A scope pattern that matches no layer is an error (true) or "
                "a warning (false).",
            },
        },
        required=["input_info"],
        # Training scripts keep their own settings (model, batch_size, epochs...) beside ours.
        additionalProperties=True,
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "filterprune configuration (NNCF 2.x compatible)",
        **schema,
    }


def algorithm_schema(name: str) -> dict[str, Any]:
    """A standalone copy of the schema of one compression algorithm.

    Args:
        name: ``"filter_pruning"`` or ``"quantization"``.

    Returns:
        A fresh dict, safe to modify.

    Raises:
        KeyError: If ``name`` is not a known algorithm; the message lists the known ones.

    Example:
        >>> algorithm_schema("filter_pruning")["properties"]["algorithm"]
        {'const': 'filter_pruning'}
    """
    if name not in ALGORITHMS:
        known = ", ".join(repr(n) for n in ALGORITHMS)
        raise KeyError(f"Unknown algorithm {name!r}. Known algorithms: {known}.")
    return copy.deepcopy(entry_schema(ALGORITHMS[name]))


_LIVE = {
    "CONFIG_SCHEMA": config_schema,
    "FILTER_PRUNING_SCHEMA": lambda: algorithm_schema("filter_pruning"),
    "QUANTIZATION_SCHEMA": lambda: algorithm_schema("quantization"),
    "ALGORITHM_SCHEMAS": lambda: {name: algorithm_schema(name) for name in ALGORITHMS},
    "SCHEDULES": lambda: tuple(list_schedules()),
    "FILTER_IMPORTANCES": lambda: tuple(list_importances()),
}


__all__ = [
    *_LIVE,
    "INTERLAYER_RANKING_TYPES",
    "TARGET_DEVICES",
    "RANGE_INIT_TYPES",
    "QUANTIZATION_MODES",
    "PRESETS",
    "SCOPES",
    "algorithm_schema",
    "config_schema",
]


def __getattr__(name: str) -> Any:
    """Build the schema names on access, so they list what is registered now."""
    if name in _LIVE:
        return _LIVE[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
