"""The JSON schema of a filterprune configuration (NNCF 2.x format plus our keys).

The schema is a plain dict (JSON Schema draft 2020-12). Every object we define sets
``additionalProperties: false``, so a misspelt key is an error rather than a silently
ignored setting. Defaults are recorded as ``default`` annotations; the resolved values
live in :class:`filterprune.core.config.FilterPruningParams`.

``compression`` and ``input_info`` accept one object or a list of them. They are written
with ``if``/``then`` on the instance type instead of ``oneOf``, so that a validation error
points at the offending key instead of at the whole alternative.

Example:
    >>> import jsonschema
    >>> jsonschema.Draft202012Validator(CONFIG_SCHEMA).is_valid(
    ...     {"input_info": {"sample_size": [1, 3, 32, 32]},
    ...      "compression": {"algorithm": "filter_pruning"}})
    True
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = [
    "CONFIG_SCHEMA",
    "FILTER_PRUNING_SCHEMA",
    "QUANTIZATION_SCHEMA",
    "ALGORITHM_SCHEMAS",
    "SCHEDULES",
    "FILTER_IMPORTANCES",
    "INTERLAYER_RANKING_TYPES",
    "TARGET_DEVICES",
    "RANGE_INIT_TYPES",
    "QUANTIZATION_MODES",
    "algorithm_schema",
]

SCHEDULES = ("exponential", "exponential_with_bias", "baseline")
FILTER_IMPORTANCES = ("L2", "L1", "geometric_median")
INTERLAYER_RANKING_TYPES = ("unweighted_ranking", "learned_ranking")
TARGET_DEVICES = ("ANY", "CPU", "GPU", "VPU", "NPU", "CPU_SPR", "TRIAL")
RANGE_INIT_TYPES = ("min_max", "mean_min_max", "percentile")
QUANTIZATION_MODES = ("symmetric", "asymmetric")
_FILLERS = ("zeros", "ones", "random")


def _bool(default: bool, description: str) -> dict[str, Any]:
    return {"type": "boolean", "default": default, "description": description}


def _int(minimum: int, default: int | None = None, maximum: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        schema["maximum"] = maximum
    if default is not None:
        schema["default"] = default
    return schema


def _fraction(default: float | None = None, description: str = "") -> dict[str, Any]:
    """A number in [0, 1)."""
    schema: dict[str, Any] = {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
    if default is not None:
        schema["default"] = default
    if description:
        schema["description"] = description
    return schema


def _enum(values: tuple[str, ...], default: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "enum": list(values)}
    if default is not None:
        schema["default"] = default
    return schema


def _object(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "additionalProperties": False, **extra}


def _one_or_list(item: dict[str, Any]) -> dict[str, Any]:
    """One object matching ``item``, or a non-empty list of them."""
    return {
        "type": ["object", "array"],
        "items": item,
        "minItems": 1,
        "if": {"type": "object"},
        "then": item,
    }


SCOPES = {
    "type": ["string", "array"],
    "items": {"type": "string"},
    "description": "Layer names, dotted-path prefixes, or `{re}`-prefixed regular expressions.",
}
_SCOPING = {"ignored_scopes": SCOPES, "target_scopes": SCOPES}

_INPUT_INFO = _object(
    {
        "sample_size": {"type": "array", "items": _int(1), "minItems": 1},
        "type": {"type": "string"},
        "filler": _enum(_FILLERS),
        "keyword": {"type": "string"},
    },
    required=["sample_size"],
)

_BN_ADAPTATION = _object(
    {
        "num_bn_adaptation_samples": _int(0, default=2000),
        "num_bn_forget_samples": _int(0),
    }
)

_RANGE_INIT = _object(
    {
        "num_init_samples": _int(0, default=256),
        "type": _enum(RANGE_INIT_TYPES, default="mean_min_max"),
        "params": _object(
            {
                "min_percentile": {"type": "number", "minimum": 0, "maximum": 100},
                "max_percentile": {"type": "number", "minimum": 0, "maximum": 100},
            }
        ),
    }
)

_PRECISION_INIT = _object(
    {
        "type": {"type": "string"},
        "bits": {"type": "array", "items": _int(2, maximum=8)},
        "bitwidth_per_scope": {"type": "array"},
        "num_data_points": _int(1),
        "iter_number": _int(1),
        "tolerance": {"type": "number", "minimum": 0},
        "compression_ratio": {"type": "number", "exclusiveMinimum": 0},
    },
    description="Accepted for compatibility; mixed-precision search is not performed.",
)

_INITIALIZER = _object(
    {
        "batchnorm_adaptation": _BN_ADAPTATION,
        "range": _RANGE_INIT,
        "precision": _PRECISION_INIT,
    }
)

_LEGR_PARAMS = _object(
    {
        "generations": _int(1, default=400),
        "train_steps": _int(1, default=200),
        "max_pruning": _fraction(default=0.8),
        "random_seed": _int(0, default=42),
        "population_size": _int(1, default=64),
        "num_samples": _int(1, default=16),
        "mutate_percent": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1},
        "scale_sigma": {"type": "number", "exclusiveMinimum": 0, "default": 1.0},
    }
)

_FILTER_PRUNING_PARAMS = _object(
    {
        "schedule": _enum(SCHEDULES, default="exponential"),
        "pruning_target": _fraction(0.5, "Fraction of filters removed in each prunable group."),
        "pruning_flops_target": _fraction(description="Fraction of FLOPs removed instead."),
        "num_init_steps": _int(0, default=0),
        "pruning_steps": _int(1, default=100),
        "filter_importance": _enum(FILTER_IMPORTANCES, default="L2"),
        "interlayer_ranking_type": _enum(INTERLAYER_RANKING_TYPES, default="unweighted_ranking"),
        "all_weights": _bool(False, "Rank filters globally instead of per group."),
        "prune_first_conv": _bool(False, "Allow pruning convs with no conv before them."),
        "prune_downsample_convs": _bool(False, "Allow pruning convs with stride > 1."),
        "prune_batch_norms": _bool(True, "Mask the BatchNorm following a pruned conv."),
        "prune_linear": _bool(
            True, "filterprune: allow pruning output neurons of Linear/Dense layers "
            "that do not produce a model output."
        ),
        "filters_multiple_of": _int(1, default=8, maximum=512),
        "legr_params": _LEGR_PARAMS,
        "save_ranking_coeffs_path": {"type": "string"},
        "load_ranking_coeffs_path": {"type": "string"},
    },
    # Setting both targets is an error (NNCF semantics).
    **{"not": {"required": ["pruning_target", "pruning_flops_target"]}},
)

FILTER_PRUNING_SCHEMA: dict[str, Any] = _object(
    {
        "algorithm": {"const": "filter_pruning"},
        "pruning_init": _fraction(0.0, "Level applied at creation; the schedule's start."),
        "params": _FILTER_PRUNING_PARAMS,
        "initializer": _INITIALIZER,
        **_SCOPING,
    },
    required=["algorithm"],
)

_QUANTIZER_GROUP = _object(
    {
        "mode": _enum(QUANTIZATION_MODES, default="symmetric"),
        "bits": _int(2, default=8, maximum=8),
        "per_channel": {"type": "boolean"},
        **_SCOPING,
    }
)

QUANTIZATION_SCHEMA: dict[str, Any] = _object(
    {
        "algorithm": {"const": "quantization"},
        "initializer": _INITIALIZER,
        "weights": _QUANTIZER_GROUP,
        "activations": _QUANTIZER_GROUP,
        "export_to_onnx_standard_ops": _bool(False, "Accepted; QDQ pairs are always written."),
        **_SCOPING,
    },
    required=["algorithm"],
)

ALGORITHM_SCHEMAS: dict[str, dict[str, Any]] = {
    "filter_pruning": FILTER_PRUNING_SCHEMA,
    "quantization": QUANTIZATION_SCHEMA,
}

_ALGORITHM = {
    "type": "object",
    "required": ["algorithm"],
    "properties": {"algorithm": {"type": "string", "enum": list(ALGORITHM_SCHEMAS)}},
    "allOf": [
        {
            "if": {"properties": {"algorithm": {"const": name}}, "required": ["algorithm"]},
            "then": schema,
        }
        for name, schema in ALGORITHM_SCHEMAS.items()
    ],
}

CONFIG_SCHEMA: dict[str, Any] = _object(
    {
        "input_info": _one_or_list(_INPUT_INFO),
        "compression": _one_or_list(_ALGORITHM),
        "target_device": _enum(TARGET_DEVICES, default="ANY"),
        "log_dir": {"type": "string"},
        "disable_shape_matching": {"type": "boolean"},
        **_SCOPING,
    },
    required=["input_info"],
    # Training scripts keep their own settings (model, batch_size, epochs...) beside ours.
    additionalProperties=True,
    **{
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "filterprune configuration (NNCF 2.x compatible)",
    },
)


def algorithm_schema(name: str) -> dict[str, Any]:
    """A standalone copy of the schema of one compression algorithm.

    Args:
        name: ``"filter_pruning"`` or ``"quantization"``.

    Returns:
        A deep copy, safe to modify.

    Raises:
        KeyError: If ``name`` is not a known algorithm; the message lists the known ones.

    Example:
        >>> algorithm_schema("filter_pruning")["properties"]["algorithm"]
        {'const': 'filter_pruning'}
    """
    if name not in ALGORITHM_SCHEMAS:
        known = ", ".join(repr(n) for n in ALGORITHM_SCHEMAS)
        raise KeyError(f"Unknown algorithm {name!r}. Known algorithms: {known}.")
    return copy.deepcopy(ALGORITHM_SCHEMAS[name])
