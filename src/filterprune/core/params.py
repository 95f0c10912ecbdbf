"""Each algorithm's settings, declared once: resolved dataclasses that also define the config.

A field made with :func:`~filterprune.core._validation.setting` names its key in the
algorithm's ``compression`` entry (``path``) and the JSON-schema fragment its value must
match; a field made with :func:`~filterprune.core._validation.nested` holds another settings
dataclass (a sub-object of the entry). From these fields come the algorithm's schema
(:func:`entry_schema`, which :mod:`filterprune.core.schema` assembles into the config
schema), the reading of a validated config (``from_config``) and the writing back
(``to_algorithm_dict``).

Values are checked once, where they enter: a config by
:meth:`~filterprune.core.config.Config.validate`, which calls :meth:`Settings.check_entry`
for each algorithm; settings built in code by their constructor, against the same fragments
and the same cross-field rules (:meth:`Settings.check`).

Example:
    >>> p = FilterPruningParams(pruning_flops_target=0.3, schedule="baseline")
    >>> p.pruning_target, p.target_level, p.prune_flops
    (None, 0.3, True)
    >>> FilterPruningParams().pruning_target
    0.5
    >>> FilterPruningParams.from_config({
    ...     "input_info": {"sample_size": [1, 3, 8, 8]},
    ...     "compression": {"algorithm": "filter_pruning", "params": {"schedule": "baseline"}},
    ... }).schedule
    'baseline'
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from ..errors import ConfigError
from ._validation import (
    MISSING,
    SCOPES,
    boolean,
    check_finite,
    enum,
    field_path,
    field_schema,
    fraction,
    integer,
    is_nested,
    key_path,
    lookup,
    merge_objects,
    nested,
    obj,
    plain,
    section_schema,
    setting,
    short_repr,
    validate,
)
from .importance import list_importances
from .schedule import get_schedule, list_schedules
from .scopes import SCOPE_KEYS, check_scope_patterns, normalize_scopes

__all__ = [
    "ALGORITHMS",
    "Settings",
    "LegrParams",
    "FilterPruningParams",
    "QuantizerParams",
    "QuantizationParams",
    "entry_schema",
]

_S = TypeVar("_S", bound="Settings")
# Set while reading a validated config: construction then skips the checks it already passed.
_TRUSTED = contextvars.ContextVar("filterprune_trusted_settings", default=False)


def _merge_scopes(*scopes: Any) -> tuple[str, ...]:
    merged: list[str] = []
    for item in scopes:
        merged.extend(normalize_scopes(item))
    return tuple(dict.fromkeys(merged))


@contextlib.contextmanager
def _trusted() -> Iterator[None]:
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


class Settings:
    """Base of the settings dataclasses: checks, reading and writing, from the field list.

    Subclasses are frozen keyword-only dataclasses whose fields are made with
    :func:`setting` or :func:`nested`. An algorithm's class sets ``ALGORITHM`` and is
    listed in :data:`ALGORITHMS`.
    """

    ALGORITHM: ClassVar[str] = ""
    #: Key path prefixed to messages when the settings are built in code.
    WHERE: ClassVar[str] = ""

    def __post_init__(self) -> None:
        checked = not _TRUSTED.get()
        if checked:
            self._check_fields()
        self._normalize()
        self._resolve()
        if checked:
            self.check(self.WHERE)

    def _check_fields(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if is_nested(f):
                kind = type(f.default_factory())
                if not isinstance(value, kind):
                    raise ConfigError(
                        f"`{f.name}` must be a {kind.__name__}. "
                        f"Received: {f.name}={short_repr(value)}."
                    )
            elif value is not None:
                validate(plain(value), field_schema(f), key_path(field_path(f), self.WHERE))

    def _normalize(self) -> None:
        """Store numbers as the declared type (JSON gives ``1.0`` or ``0``), scopes as tuples."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or is_nested(f):
                continue
            kind = field_schema(f).get("type")
            if f.name in SCOPE_KEYS:
                value = normalize_scopes(value)
            elif kind == "integer":
                value = int(value)
            elif kind == "number":
                value = float(value)
            object.__setattr__(self, f.name, value)

    def _resolve(self) -> None:
        """Fill defaults that depend on other fields (none here)."""

    def check(self, where: str = "") -> None:
        """Raise for a combination of values the algorithm cannot run with (none here).

        Args:
            where: Key path of the entry in the config (e.g. ``compression[0]``), so the
                message names the keys as the user wrote them.
        """

    def key(self, name: str, where: str = "") -> str:
        """Key path of field ``name`` in the config, e.g. ``compression[0].params.schedule``."""
        return key_path(field_path(self.__dataclass_fields__[name]), where)

    # -- reading and writing the config format ---------------------------------------------
    @classmethod
    def _read(cls, section: Mapping[str, Any], scopes: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor arguments for the keys present in ``section``.

        Scope lists are merged with the enclosing ones (``scopes``) and passed down.
        """
        own = {k: _merge_scopes(scopes.get(k, ()), section.get(k, ())) for k in SCOPE_KEYS}
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            found = lookup(section, field_path(f))
            if f.name in SCOPE_KEYS:
                values[f.name] = own[f.name]
            elif is_nested(f):
                default = f.default_factory()
                sub = found if isinstance(found, Mapping) else {}
                values[f.name] = dataclasses.replace(default, **default._read(sub, own))
            elif found is not MISSING:
                values[f.name] = found
        return values

    @classmethod
    def _resolve_entry(cls: type[_S], config: Mapping[str, Any], entry: Mapping[str, Any]) -> _S:
        """Build from a ``compression`` entry already checked (no checks repeated)."""
        with _trusted():
            return cls(**cls._read(entry, {k: config.get(k, ()) for k in SCOPE_KEYS}))

    @classmethod
    def check_entry(
        cls: type[_S], config: Mapping[str, Any], entry: Mapping[str, Any], where: str
    ) -> _S:
        """Validate the ``compression`` entry ``entry`` of ``config`` and resolve it.

        Called by :meth:`Config.validate` for each entry, and by ``from_config`` on a
        plain dict. The top level of ``config`` is the caller's to check.

        Raises:
            ConfigError: Naming the key path (``where`` + key), what is expected, what was
                received.
        """
        check_finite(entry, where=where)
        validate(entry, entry_schema(cls), where)
        check_scope_patterns(entry, where)
        params = cls._resolve_entry(config, entry)
        params.check(where)
        return params

    @classmethod
    def from_config(cls: type[_S], config: Mapping[str, Any]) -> _S:
        """Resolve this algorithm's ``compression`` entry of ``config``.

        Args:
            config: A :class:`~filterprune.core.config.Config` from ``from_dict`` or
                ``from_json`` (read as validated), or a plain dict (its top-level scopes
                and this algorithm's entry are validated here).

        Raises:
            ConfigError: If the entry is invalid or ``compression`` has no such algorithm.
        """
        section = config.get("compression")
        entries = [section] if isinstance(section, Mapping) else section
        if not isinstance(entries, list):
            entries = []
        names = [e.get("algorithm") if isinstance(e, Mapping) else None for e in entries]
        if cls.ALGORITHM not in names:
            raise ConfigError(
                f"`compression` must contain an algorithm {cls.ALGORITHM!r}. "
                f"Received: algorithms={[n for n in names if n is not None]}."
            )
        index = names.index(cls.ALGORITHM)
        entry = entries[index]
        if getattr(config, "validated", False):
            return cls._resolve_entry(config, entry)
        top = {k: config[k] for k in SCOPE_KEYS if k in config}
        validate(top, obj(dict.fromkeys(top, SCOPES)))
        check_scope_patterns(top, "", nested=False)
        where = "compression" if isinstance(section, Mapping) else f"compression[{index}]"
        return cls.check_entry(config, entry, where)

    def _section(self) -> dict[str, Any]:
        """The fields as a section of the config format (unset and empty ones left out)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if is_nested(f):
                value = value._section()
            elif value is None or value == ():
                continue
            path = field_path(f)
            target = out
            for key in path[:-1]:
                target = target.setdefault(key, {})
            target[path[-1]] = plain(value)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-able dict of every field (nested settings as dicts)."""
        return plain(dataclasses.asdict(self))

    def to_algorithm_dict(self) -> dict[str, Any]:
        """An algorithm's settings as its ``compression`` entry (round-trips)."""
        return {"algorithm": self.ALGORITHM, **self._section()}


def entry_schema(cls: type[Settings]) -> dict[str, Any]:
    """The schema of a ``compression`` entry of algorithm class ``cls``.

    Its ``initializer`` accepts every algorithm's initializer keys (NNCF shares one
    initializer schema); each algorithm reads its own.
    """
    schema = section_schema(cls())
    properties = {"algorithm": {"const": cls.ALGORITHM}, **schema["properties"]}
    properties["initializer"] = _shared_initializer()
    return obj(properties, required=["algorithm"])


# Accepted for NNCF compatibility; nothing reads them.
_COMPAT_INITIALIZER = obj(
    {
        "batchnorm_adaptation": obj({"num_bn_forget_samples": integer(0)}),
        "precision": obj(
            {
                "type": {"type": "string"},
                "bits": {"type": "array", "items": integer(2, 8)},
                "bitwidth_per_scope": {"type": "array"},
                "num_data_points": integer(1),
                "iter_number": integer(1),
                "tolerance": {"type": "number", "minimum": 0},
                "compression_ratio": {"type": "number", "exclusiveMinimum": 0},
            },
            description="Accepted for compatibility; mixed-precision search is not performed.",
        ),
    }
)


def _shared_initializer() -> dict[str, Any]:
    merged = obj({})
    for cls in ALGORITHMS.values():
        own = section_schema(cls())["properties"].get("initializer")
        if own is not None:
            merge_objects(merged, own)
    merge_objects(merged, _COMPAT_INITIALIZER)
    return merged


_BN_SAMPLES = "initializer.batchnorm_adaptation.num_bn_adaptation_samples"
_VALIDATE_SCOPES = boolean(
    "A scope pattern of this entry that matches no layer is an error (true, the default, "
    "from the top-level key) or a warning (false)."
)


# --- filter pruning --------------------------------------------------------------------

INTERLAYER_RANKING_TYPES = ("unweighted_ranking", "learned_ranking")
MEMORY_FORMATS = ("preserve", "channels_last")


@dataclass(frozen=True, kw_only=True)
class LegrParams(Settings):
    """``params.legr_params`` of ``filter_pruning`` (LeGR evolutionary search)."""

    WHERE = "legr"

    generations: int = setting("generations", integer(1), 400)
    train_steps: int = setting("train_steps", integer(1), 200)
    max_pruning: float = setting("max_pruning", fraction(), 0.8)
    random_seed: int = setting("random_seed", integer(0), 42)
    population_size: int = setting("population_size", integer(1), 64)
    num_samples: int = setting("num_samples", integer(1), 16)
    mutate_percent: float = setting(
        "mutate_percent", {"type": "number", "minimum": 0, "maximum": 1}, 0.1
    )
    scale_sigma: float = setting("scale_sigma", {"type": "number", "exclusiveMinimum": 0}, 1.0)


@dataclass(frozen=True, kw_only=True)
class FilterPruningParams(Settings):
    """Every ``filter_pruning`` setting, resolved with its default.

    ``pruning_target`` left as ``None`` becomes 0.5 unless ``pruning_flops_target`` is set;
    setting both is an error. ``ignored_scopes``/``target_scopes`` are the union of the
    top-level and algorithm-level lists.

    Raises:
        ConfigError: On construction, for any invalid value or combination.
    """

    ALGORITHM = "filter_pruning"

    pruning_init: float = setting(
        "pruning_init", fraction("Level applied at creation; the schedule's start."), 0.0
    )
    schedule: str = setting("params.schedule", lambda: enum(list_schedules()), "exponential")
    pruning_target: float | None = setting(
        "params.pruning_target",
        {**fraction("Fraction of filters removed in each prunable group."), "default": 0.5},
    )
    pruning_flops_target: float | None = setting(
        "params.pruning_flops_target",
        fraction("Fraction of FLOPs removed instead (not with pruning_target)."),
    )
    num_init_steps: int = setting("params.num_init_steps", integer(0), 0)
    pruning_steps: int = setting("params.pruning_steps", integer(1), 100)
    filter_importance: str = setting(
        "params.filter_importance", lambda: enum(list_importances()), "L2"
    )
    interlayer_ranking_type: str = setting(
        "params.interlayer_ranking_type",
        enum(INTERLAYER_RANKING_TYPES),
        "unweighted_ranking",
    )
    all_weights: bool = setting(
        "params.all_weights", boolean("Rank filters globally instead of per group."), False
    )
    prune_first_conv: bool = setting(
        "params.prune_first_conv", boolean("Allow pruning convs with no conv before them."), False
    )
    prune_downsample_convs: bool = setting(
        "params.prune_downsample_convs", boolean("Allow pruning convs with stride > 1."), False
    )
    prune_batch_norms: bool = setting(
        "params.prune_batch_norms", boolean("Mask the BatchNorm following a pruned conv."), True
    )
    prune_linear: bool = setting(
        "params.prune_linear",
        boolean("filterprune: allow pruning output neurons of Linear/Dense layers "
                "that do not produce a model output."),
        True,
    )  # fmt: skip
    filters_multiple_of: int = setting("params.filters_multiple_of", integer(1, 512), 8)
    shrink_when_frozen: bool = setting(
        "params.shrink_when_frozen",
        boolean("filterprune (PyTorch): once the masks freeze, cut the pruned channels out "
                "of the training model in place, so the rest of fine-tuning runs at pruned "
                "cost."),
        False,
    )  # fmt: skip
    shrunk_memory_format: str = setting(
        "params.shrunk_memory_format",
        {**enum(MEMORY_FORMATS),
         "description": "filterprune (PyTorch, with shrink_when_frozen): the memory layout of "
                        "the cut model; channels_last trains convs faster on CPUs (oneDNN). "
                        "preserve keeps each tensor's own."},
        "preserve",
    )  # fmt: skip
    bn_adaptation_after_mask_change: bool = setting(
        "params.bn_adaptation_after_mask_change",
        boolean("filterprune: re-estimate BatchNorm statistics on the registered data "
                "after each mask change (after the cut, with shrink_when_frozen)."),
        False,
    )  # fmt: skip
    reconstruction_after_mask_change: bool = setting(
        "params.reconstruction_after_mask_change",
        boolean("filterprune: after each mask change, refit the kept weights of every "
                "conv and linear layer by least squares, layer by layer on the registered "
                "data, so its outputs match the model's before the change (before "
                "BatchNorm re-estimation)."),
        False,
    )  # fmt: skip
    num_reconstruction_samples: int = setting("params.num_reconstruction_samples", integer(1), 512)
    legr: LegrParams = nested("params.legr_params", LegrParams)
    save_ranking_coeffs_path: str | None = setting(
        "params.save_ranking_coeffs_path", {"type": "string"}
    )
    load_ranking_coeffs_path: str | None = setting(
        "params.load_ranking_coeffs_path", {"type": "string"}
    )
    ignored_scopes: tuple[str, ...] = setting("ignored_scopes", SCOPES, ())
    target_scopes: tuple[str, ...] = setting("target_scopes", SCOPES, ())
    validate_scopes: bool | None = setting("validate_scopes", _VALIDATE_SCOPES)
    num_bn_adaptation_samples: int = setting(_BN_SAMPLES, integer(0), 2000)

    def _resolve(self) -> None:
        if self.pruning_target is None and self.pruning_flops_target is None:
            object.__setattr__(self, "pruning_target", 0.5)

    def check(self, where: str = "") -> None:
        """Only one target, not below ``pruning_init``; a schedule that can reach it."""
        if self.pruning_target is not None and self.pruning_flops_target is not None:
            raise ConfigError(
                f"`{self.key('pruning_target', where)}` and "
                f"`{self.key('pruning_flops_target', where)}` must not both be set; "
                f"choose one. Received: pruning_target={self.pruning_target}, "
                f"pruning_flops_target={self.pruning_flops_target}."
            )
        target = "pruning_flops_target" if self.prune_flops else "pruning_target"
        if self.pruning_init > self.target_level:
            raise ConfigError(
                f"`{self.key(target, where)}` must be at least `{self.key('pruning_init', where)}`"
                f": the schedule only prunes more over time. Received: {target}="
                f"{self.target_level}, pruning_init={self.pruning_init}."
            )
        if self.shrunk_memory_format != "preserve" and not self.shrink_when_frozen:
            raise ConfigError(
                f"`{self.key('shrunk_memory_format', where)}` applies when the model is cut: "
                f"set `{self.key('shrink_when_frozen', where)}` to true, or leave the layout "
                f"as it is (preserve). Received: shrunk_memory_format="
                f"{self.shrunk_memory_format!r}, shrink_when_frozen=False."
            )
        get_schedule(self.schedule).check(
            self.pruning_init, self.target_level, self.pruning_steps,
            self.key("pruning_init", where), self.key(target, where),
        )  # fmt: skip

    @property
    def prune_flops(self) -> bool:
        """``True`` when the target is a FLOPs fraction."""
        return self.pruning_flops_target is not None

    @property
    def target_level(self) -> float:
        """The scheduler's target: the FLOPs target if set, else ``pruning_target``."""
        target = self.pruning_flops_target if self.prune_flops else self.pruning_target
        return float(target)  # type: ignore[arg-type]  # one of them is set after _resolve


# --- quantization ----------------------------------------------------------------------

QUANTIZATION_MODES = ("symmetric", "asymmetric")
PRESETS = ("performance", "mixed")
RANGE_INIT_TYPES = ("min_max", "mean_min_max", "percentile", "mean_percentile")
OVERFLOW_FIXES = ("enable", "first_layer_only", "disable")
_PERCENT = {"type": "number", "minimum": 0, "maximum": 100}
_PRESET_MODES = {"performance": ("symmetric", "symmetric"), "mixed": ("symmetric", "asymmetric")}


@dataclass(frozen=True, kw_only=True)
class QuantizerParams(Settings):
    """Settings of one quantizer group (``weights`` or ``activations``).

    ``mode=None`` is resolved by :class:`QuantizationParams` from its ``preset``;
    ``signed=None`` leaves the sign to the algorithm (from the data).
    """

    mode: str | None = setting("mode", enum(QUANTIZATION_MODES))
    bits: int = setting("bits", integer(2, 8), 8)
    per_channel: bool = setting("per_channel", boolean(), False)
    signed: bool | None = setting("signed", boolean("Unset: decided from the data."))
    ignored_scopes: tuple[str, ...] = setting("ignored_scopes", SCOPES, ())
    target_scopes: tuple[str, ...] = setting("target_scopes", SCOPES, ())

    def to_group_dict(self) -> dict[str, Any]:
        """This as a ``weights``/``activations`` section of the config format."""
        return self._section()


@dataclass(frozen=True, kw_only=True)
class QuantizationParams(Settings):
    """Every ``quantization`` setting, resolved with its default.

    Weights: 8-bit symmetric per output channel; activations: 8-bit per tensor, symmetric
    under ``preset="performance"`` (the default) and asymmetric under ``"mixed"`` unless
    their ``mode`` is given. ``overflow_fix`` (``enable`` or ``first_layer_only``;
    ``disable``, the default) sets weight ranges so the weights use half of
    their integer range (see :class:`~filterprune.core.quantization.QuantizerSettings`).
    Scopes are merged: top level, algorithm level, then the group's.

    Raises:
        ConfigError: On construction, for any invalid value or combination.
    """

    ALGORITHM = "quantization"

    weights: QuantizerParams = nested("weights", lambda: QuantizerParams(per_channel=True))
    activations: QuantizerParams = nested("activations", QuantizerParams)
    preset: str = setting("preset", enum(PRESETS), "performance")
    # int8 kernels without VNNI add pairs of u8 x s8 products in 16 bits, which saturate
    overflow_fix: str = setting("overflow_fix", enum(OVERFLOW_FIXES), "disable")
    num_init_samples: int = setting("initializer.range.num_init_samples", integer(0), 256)
    range_type: str = setting("initializer.range.type", enum(RANGE_INIT_TYPES), "mean_min_max")
    min_percentile: float = setting("initializer.range.params.min_percentile", _PERCENT, 0.1)
    max_percentile: float = setting("initializer.range.params.max_percentile", _PERCENT, 99.9)
    ignored_scopes: tuple[str, ...] = setting("ignored_scopes", SCOPES, ())
    target_scopes: tuple[str, ...] = setting("target_scopes", SCOPES, ())
    validate_scopes: bool | None = setting("validate_scopes", _VALIDATE_SCOPES)
    export_to_onnx_standard_ops: bool = setting(
        "export_to_onnx_standard_ops", boolean("Accepted; QDQ pairs are always written."), False
    )
    num_bn_adaptation_samples: int = setting(_BN_SAMPLES, integer(0), 2000)

    def _resolve(self) -> None:
        for name, mode in zip(("weights", "activations"), _PRESET_MODES[self.preset], strict=True):
            group = getattr(self, name)
            if group.mode is None:
                with _trusted():
                    object.__setattr__(self, name, dataclasses.replace(group, mode=mode))

    def check(self, where: str = "") -> None:
        """The percentile range must not be empty."""
        if self.min_percentile >= self.max_percentile:
            raise ConfigError(
                f"`{self.key('min_percentile', where)}` must be below "
                f"`{self.key('max_percentile', where)}`. Received: "
                f"min_percentile={self.min_percentile}, max_percentile={self.max_percentile}."
            )


ALGORITHMS: dict[str, type[Settings]] = {
    "filter_pruning": FilterPruningParams,
    "quantization": QuantizationParams,
}
"""The settings class of each ``compression`` algorithm, in the schema's order."""
