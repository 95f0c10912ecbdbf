"""Resolved settings of each algorithm: frozen, keyword-only, fully defaulted.

Built from a validated :class:`~filterprune.core.config.Config` with ``from_config``, or
directly in code (construction validates against the same schema). ``to_dict`` gives a
flat JSON-able view, ``to_algorithm_dict`` a ``compression`` entry that round-trips.

Example:
    >>> p = FilterPruningParams(pruning_flops_target=0.3, schedule="baseline")
    >>> p.pruning_target, p.target_level, p.prune_flops
    (None, 0.3, True)
    >>> FilterPruningParams().pruning_target
    0.5
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ._validation import validate
from .schedule import exponential_with_bias_feasible
from .schema import FILTER_PRUNING_SCHEMA, QUANTIZATION_SCHEMA
from .scopes import normalize_scopes

if TYPE_CHECKING:
    from .config import Config

__all__ = ["LegrParams", "FilterPruningParams", "QuantizerParams", "QuantizationParams"]

_LEGR_SCHEMA = FILTER_PRUNING_SCHEMA["properties"]["params"]["properties"]["legr_params"]
_GROUP_SCHEMA = QUANTIZATION_SCHEMA["properties"]["weights"]


def _as_config(config: Mapping[str, Any]) -> Config:
    from .config import Config  # config.py imports this module

    return config if isinstance(config, Config) else Config.from_dict(config)


def _merge_scopes(*scopes: Any) -> tuple[str, ...]:
    merged: list[str] = []
    for item in scopes:
        merged.extend(normalize_scopes(item))
    return tuple(dict.fromkeys(merged))


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, for JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _coerce_numbers(obj: Any) -> None:
    """Store ``int``/``float`` fields as exactly that type (JSON gives ``1.0`` or ``0``)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or isinstance(value, bool):
            continue
        if f.type == "int":
            object.__setattr__(obj, f.name, int(value))
        elif f.type in ("float", "float | None"):
            object.__setattr__(obj, f.name, float(value))
        elif f.type == "tuple[str, ...]":
            object.__setattr__(obj, f.name, normalize_scopes(value))


def _scopes_dict(ignored: Any, target: Any) -> dict[str, Any]:
    """The non-empty scope lists, as lists (other types are left for the schema to reject)."""
    out = {}
    for key, value in (("ignored_scopes", ignored), ("target_scopes", target)):
        if isinstance(value, str | list | tuple):
            value = normalize_scopes(value)
        if value != ():
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


@dataclass(frozen=True, kw_only=True)
class LegrParams:
    """``params.legr_params`` of ``filter_pruning`` (LeGR evolutionary search)."""

    generations: int = 400
    train_steps: int = 200
    max_pruning: float = 0.8
    random_seed: int = 42
    population_size: int = 64
    num_samples: int = 16
    mutate_percent: float = 0.1
    scale_sigma: float = 1.0

    def __post_init__(self) -> None:
        validate(dataclasses.asdict(self), _LEGR_SCHEMA, "legr")
        _coerce_numbers(self)


_FP_PARAM_KEYS = (
    "schedule", "pruning_target", "pruning_flops_target", "num_init_steps", "pruning_steps",
    "filter_importance", "interlayer_ranking_type", "all_weights", "prune_first_conv",
    "prune_downsample_convs", "prune_batch_norms", "prune_linear", "filters_multiple_of",
    "save_ranking_coeffs_path", "load_ranking_coeffs_path",
)


@dataclass(frozen=True, kw_only=True)
class FilterPruningParams:
    """Every ``filter_pruning`` setting, resolved with its default.

    ``pruning_target`` left as ``None`` becomes 0.5 unless ``pruning_flops_target`` is set;
    setting both is an error. ``ignored_scopes``/``target_scopes`` are the union of the
    top-level and algorithm-level lists. Construction validates against the schema.

    Raises:
        ConfigError: On construction, for any invalid value.
    """

    pruning_init: float = 0.0
    schedule: str = "exponential"
    pruning_target: float | None = None
    pruning_flops_target: float | None = None
    num_init_steps: int = 0
    pruning_steps: int = 100
    filter_importance: str = "L2"
    interlayer_ranking_type: str = "unweighted_ranking"
    all_weights: bool = False
    prune_first_conv: bool = False
    prune_downsample_convs: bool = False
    prune_batch_norms: bool = True
    prune_linear: bool = True
    filters_multiple_of: int = 8
    legr: LegrParams = field(default_factory=LegrParams)
    save_ranking_coeffs_path: str | None = None
    load_ranking_coeffs_path: str | None = None
    ignored_scopes: tuple[str, ...] = ()
    target_scopes: tuple[str, ...] = ()
    num_bn_adaptation_samples: int = 2000

    def __post_init__(self) -> None:
        if self.pruning_target is None and self.pruning_flops_target is None:
            object.__setattr__(self, "pruning_target", 0.5)
        validate(self.to_algorithm_dict(), FILTER_PRUNING_SCHEMA)
        _coerce_numbers(self)
        if self.schedule == "exponential_with_bias" and not exponential_with_bias_feasible(
            self.pruning_init, self.target_level, self.pruning_steps
        ):
            raise ConfigError(
                "`pruning_init` must be below 5/7 of the target for schedule "
                f"'exponential_with_bias'. Received: pruning_init={self.pruning_init}, "
                f"target={self.target_level}."
            )

    @property
    def prune_flops(self) -> bool:
        """``True`` when the target is a FLOPs fraction."""
        return self.pruning_flops_target is not None

    @property
    def target_level(self) -> float:
        """The scheduler's target: the FLOPs target if set, else ``pruning_target``."""
        if self.pruning_flops_target is not None:
            return self.pruning_flops_target
        return self.pruning_target if self.pruning_target is not None else 0.5

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FilterPruningParams:
        """Resolve the ``filter_pruning`` entry of ``config`` (validated if a plain dict).

        Raises:
            ConfigError: If the config is invalid or has no ``filter_pruning`` algorithm.
        """
        config = _as_config(config)
        algo = config.get_algorithm("filter_pruning")
        if algo is None:
            names = [a["algorithm"] for a in config.algorithms()]
            raise ConfigError(
                "`compression` must contain an algorithm 'filter_pruning'. "
                f"Received: algorithms={names}."
            )
        params = algo.get("params", {})
        bn = algo.get("initializer", {}).get("batchnorm_adaptation", {})
        return cls(
            pruning_init=algo.get("pruning_init", 0.0),
            legr=LegrParams(**params.get("legr_params", {})),
            ignored_scopes=_merge_scopes(config.get("ignored_scopes"), algo.get("ignored_scopes")),
            target_scopes=_merge_scopes(config.get("target_scopes"), algo.get("target_scopes")),
            num_bn_adaptation_samples=bn.get("num_bn_adaptation_samples", 2000),
            **{k: params[k] for k in _FP_PARAM_KEYS if k in params},
        )

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-able dict of every field (``legr`` nested)."""
        return _plain(dataclasses.asdict(self))

    def to_algorithm_dict(self) -> dict[str, Any]:
        """This as a ``compression`` entry in the config format (round-trips)."""
        params = {k: getattr(self, k) for k in _FP_PARAM_KEYS if getattr(self, k) is not None}
        params["legr_params"] = dataclasses.asdict(self.legr)
        return {
            "algorithm": "filter_pruning",
            "pruning_init": self.pruning_init,
            "params": params,
            "initializer": {
                "batchnorm_adaptation": {
                    "num_bn_adaptation_samples": self.num_bn_adaptation_samples
                }
            },
            **_scopes_dict(self.ignored_scopes, self.target_scopes),
        }


@dataclass(frozen=True, kw_only=True)
class QuantizerParams:
    """Settings of one quantizer group (``weights`` or ``activations``)."""

    mode: str = "symmetric"
    bits: int = 8
    per_channel: bool = False
    ignored_scopes: tuple[str, ...] = ()
    target_scopes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate(self.to_group_dict(), _GROUP_SCHEMA)
        _coerce_numbers(self)

    def to_group_dict(self) -> dict[str, Any]:
        """This as a ``weights``/``activations`` section of the config format."""
        return {
            "mode": self.mode,
            "bits": self.bits,
            "per_channel": self.per_channel,
            **_scopes_dict(self.ignored_scopes, self.target_scopes),
        }


@dataclass(frozen=True, kw_only=True)
class QuantizationParams:
    """Every ``quantization`` setting, resolved with its default.

    Weights: 8-bit symmetric per output channel; activations: 8-bit symmetric per tensor.
    Scopes are merged: top level, algorithm level, then the group's own.

    Raises:
        ConfigError: On construction, for any invalid value.
    """

    weights: QuantizerParams = field(default_factory=lambda: QuantizerParams(per_channel=True))
    activations: QuantizerParams = field(default_factory=QuantizerParams)
    num_init_samples: int = 256
    range_type: str = "mean_min_max"
    min_percentile: float = 0.1
    max_percentile: float = 99.9
    ignored_scopes: tuple[str, ...] = ()
    target_scopes: tuple[str, ...] = ()
    export_to_onnx_standard_ops: bool = False
    num_bn_adaptation_samples: int = 2000

    def __post_init__(self) -> None:
        validate(self.to_algorithm_dict(), QUANTIZATION_SCHEMA)
        _coerce_numbers(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> QuantizationParams:
        """Resolve the ``quantization`` entry of ``config`` (validated if a plain dict).

        Raises:
            ConfigError: If the config is invalid or has no ``quantization`` algorithm.
        """
        config = _as_config(config)
        algo = config.get_algorithm("quantization")
        if algo is None:
            names = [a["algorithm"] for a in config.algorithms()]
            raise ConfigError(
                "`compression` must contain an algorithm 'quantization'. "
                f"Received: algorithms={names}."
            )
        ignored = _merge_scopes(config.get("ignored_scopes"), algo.get("ignored_scopes"))
        target = _merge_scopes(config.get("target_scopes"), algo.get("target_scopes"))
        init = algo.get("initializer", {})
        rng = init.get("range", {})
        percentiles = rng.get("params", {})
        return cls(
            weights=_group(algo.get("weights", {}), True, ignored, target),
            activations=_group(algo.get("activations", {}), False, ignored, target),
            num_init_samples=rng.get("num_init_samples", 256),
            range_type=rng.get("type", "mean_min_max"),
            min_percentile=percentiles.get("min_percentile", 0.1),
            max_percentile=percentiles.get("max_percentile", 99.9),
            ignored_scopes=ignored,
            target_scopes=target,
            export_to_onnx_standard_ops=algo.get("export_to_onnx_standard_ops", False),
            num_bn_adaptation_samples=init.get("batchnorm_adaptation", {}).get(
                "num_bn_adaptation_samples", 2000
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-able dict of every field (groups nested)."""
        return _plain(dataclasses.asdict(self))

    def to_algorithm_dict(self) -> dict[str, Any]:
        """This as a ``compression`` entry in the config format (round-trips)."""
        return {
            "algorithm": "quantization",
            "initializer": {
                "range": {
                    "num_init_samples": self.num_init_samples,
                    "type": self.range_type,
                    "params": {
                        "min_percentile": self.min_percentile,
                        "max_percentile": self.max_percentile,
                    },
                },
                "batchnorm_adaptation": {
                    "num_bn_adaptation_samples": self.num_bn_adaptation_samples
                },
            },
            "weights": self.weights.to_group_dict(),
            "activations": self.activations.to_group_dict(),
            "export_to_onnx_standard_ops": self.export_to_onnx_standard_ops,
            **_scopes_dict(self.ignored_scopes, self.target_scopes),
        }


def _group(
    section: Mapping[str, Any],
    per_channel: bool,
    ignored: tuple[str, ...],
    target: tuple[str, ...],
) -> QuantizerParams:
    return QuantizerParams(
        mode=section.get("mode", "symmetric"),
        bits=section.get("bits", 8),
        per_channel=section.get("per_channel", per_channel),
        ignored_scopes=_merge_scopes(ignored, section.get("ignored_scopes")),
        target_scopes=_merge_scopes(target, section.get("target_scopes")),
    )
