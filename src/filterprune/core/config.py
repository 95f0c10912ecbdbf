"""The configuration object: a ``dict`` in NNCF's ``NNCFConfig`` format, validated once.

:class:`Config` holds the user's JSON and validates it when made with :meth:`Config.from_dict`
or :meth:`Config.from_json`: the top level against :func:`~filterprune.core.schema.config_schema`,
each ``compression`` entry with its settings class. The resolved, fully defaulted settings
the algorithms read (:class:`FilterPruningParams`, :class:`QuantizationParams`) live in
:mod:`filterprune.core.params` (imported here, never the other way) and are re-exported.

Example:
    >>> config = Config.from_dict({
    ...     "input_info": {"sample_size": [1, 3, 224, 224]},
    ...     "compression": [{"algorithm": "filter_pruning", "pruning_init": 0.1,
    ...                      "params": {"pruning_target": 0.4, "pruning_steps": 15}}],
    ... })
    >>> params = FilterPruningParams.from_config(config)
    >>> params.pruning_target, params.schedule, params.filter_importance
    (0.4, 'exponential', 'L2')
    >>> config.sample_sizes()
    [[1, 3, 224, 224]]
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import schema
from ._jsonc import strip_comments
from ._validation import check_finite, short_repr, validate
from .params import (
    ALGORITHMS,
    FilterPruningParams,
    LegrParams,
    QuantizationParams,
    QuantizerParams,
)
from .schema import config_schema
from .scopes import check_scope_patterns

__all__ = [
    "Config",
    "LegrParams",
    "FilterPruningParams",
    "QuantizerParams",
    "QuantizationParams",
]


INPUT_TYPES = {
    "float": "float32", "float32": "float32", "half": "float16", "float16": "float16",
    "bfloat16": "bfloat16", "double": "float64", "float64": "float64", "long": "int64",
    "int64": "int64", "int": "int32", "int32": "int32", "uint8": "uint8", "bool": "bool",
}  # fmt: skip
"""``input_info.type`` names (the old system's, and NumPy's) -> NumPy dtype names."""


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class Config(dict):
    """A validated configuration dict (alias ``NNCFConfig``).

    The constructor does not validate (like NNCF); use :meth:`from_dict` or
    :meth:`from_json`. Objects that are not JSON (data loaders, callbacks) go in
    :attr:`init_args` or :meth:`register_extra_structs`, not in the dict itself.

    Attributes:
        init_args: Free-form runtime arguments, e.g. ``{"data_loader": loader}``.
        validated: Whether :meth:`validate` passed; the algorithms' ``from_config`` then
            reads the config without checking it again.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.init_args: dict[str, Any] = {}
        self.validated = False
        self._extra_structs: dict[type, Any] = {}

    def __deepcopy__(self, memo: dict[int, Any]) -> Config:
        new = type(self)(copy.deepcopy(dict(self), memo))
        new.init_args = dict(self.init_args)  # data loaders are shared, not copied
        new.validated = self.validated
        new._extra_structs = dict(self._extra_structs)
        return new

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """A validated deep copy of ``data``.

        Raises:
            ConfigError: For the first problem found: unknown key, wrong type, value out
                of range, missing key, both pruning targets, bad regex in a scope.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"`config` must be an object (dict). Received: config={short_repr(data)}."
            )
        config = cls(copy.deepcopy(dict(data)))
        config.validate()
        return config

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> Config:
        """Read and validate a JSON file (``//`` and ``/* */`` comments allowed).

        Raises:
            ConfigError: If the file is missing, unreadable, not valid JSON (with line and
                column), or fails validation (the message names the file).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise ConfigError(
                "`path` (the CLI's --config) must name an existing JSON file. "
                f"Received: path='{path}'."
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Config file '{path}' cannot be read: {exc}.") from None
        try:
            data = json.loads(strip_comments(text), object_pairs_hook=_unique_keys)
        except _DuplicateKey as exc:
            raise ConfigError(
                f"Config file '{path}' has the key `{exc.args[0]}` twice in one object (a JSON "
                "reader would keep the last one silently): remove one."
            ) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"Config file '{path}' is not valid JSON: {exc.msg} "
                f"at line {exc.lineno}, column {exc.colno}."
            ) from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in config file '{path}')") from None

    def validate(self) -> None:
        """Check the whole config; called by :meth:`from_dict`.

        Raises:
            ConfigError: Naming the key path, what is expected and what was received.
        """
        self.validated = False
        _plain_in_place(self)
        top = {k: v for k, v in self.items() if k != "compression"}
        check_finite(top)
        validate(dict(self), config_schema(with_algorithms=False))
        check_scope_patterns(top, nested=False)
        self._check_unique_algorithms()
        for path, algo in self.algorithms_with_paths():
            ALGORITHMS[algo["algorithm"]].check_entry(self, algo, path)
        if "accuracy_aware_training" in self:  # its keys and mode, not only when a loop is made
            from .accuracy_aware import AccuracyAwareParams

            AccuracyAwareParams.from_config(self)
        self.validated = True

    def algorithms_with_paths(self) -> Iterator[tuple[str, dict[str, Any]]]:
        section = self.get("compression")
        if isinstance(section, Mapping):
            yield "compression", section
        elif isinstance(section, list):
            yield from ((f"compression[{i}]", algo) for i, algo in enumerate(section))

    def _check_unique_algorithms(self) -> None:
        seen: dict[str, str] = {}
        for path, algo in self.algorithms_with_paths():
            name = algo["algorithm"]
            if name in seen:
                raise ConfigError(
                    f"`compression` must list each algorithm once. Received: "
                    f"algorithm={name!r} at {seen[name]} and {path}."
                )
            seen[name] = path

    def algorithms(self) -> list[dict[str, Any]]:
        """The algorithm dicts of ``compression``, in application order."""
        return [algo for _, algo in self.algorithms_with_paths()]

    def get_algorithm(self, name: str) -> dict[str, Any] | None:
        """The dict of algorithm ``name`` (e.g. ``"filter_pruning"``), or ``None``."""
        return next((a for a in self.algorithms() if a.get("algorithm") == name), None)

    def input_infos(self) -> list[dict[str, Any]]:
        """``input_info`` as a list of dicts (one per model input)."""
        info = self.get("input_info", [])
        return [info] if isinstance(info, Mapping) else list(info)

    def input_info_keys(self) -> list[str]:
        """The key path of each ``input_info`` entry, for messages (``input_info[1]``)."""
        if isinstance(self.get("input_info"), Mapping):
            return ["input_info"]
        return [f"input_info[{i}]" for i in range(len(self.input_infos()))]

    def sample_sizes(self) -> list[list[int]]:
        """The ``sample_size`` of every model input, e.g. ``[[1, 3, 224, 224]]``."""
        return [[int(d) for d in info["sample_size"]] for info in self.input_infos()]

    def register_extra_structs(self, structs: Iterable[Any]) -> None:
        """Attach runtime objects (e.g. init-args structs), one per type.

        Raises:
            ConfigError: If an object of the same type is already registered.
        """
        for struct in structs:
            kind = type(struct)
            if kind in self._extra_structs:
                raise ConfigError(
                    f"`extra structs` must be registered once per type. "
                    f"Received: a second {kind.__name__}."
                )
            self._extra_structs[kind] = struct

    def has_extra_struct(self, cls: type) -> bool:
        """Whether an object of type ``cls`` (or a subclass) is registered."""
        return any(issubclass(kind, cls) for kind in self._extra_structs)

    def get_extra_struct(self, cls: type) -> Any:
        """The registered object of type ``cls`` (or a subclass).

        Raises:
            ConfigError: If none is registered; the message lists what is.
        """
        if cls in self._extra_structs:
            return self._extra_structs[cls]
        for kind, struct in self._extra_structs.items():
            if issubclass(kind, cls):
                return struct
        known = ", ".join(k.__name__ for k in self._extra_structs) or "none"
        raise ConfigError(
            f"No `{cls.__name__}` is registered in the config (registered: {known}). "
            "Register it first, e.g. with register_default_init_args(config, data_loader)."
        )

    def get_all_extra_structs(self) -> list[Any]:
        """Every registered extra struct, in registration order."""
        return list(self._extra_structs.values())


def __getattr__(name: str) -> Any:
    """``CONFIG_SCHEMA`` and the other schema names, built on access (see ``schema``)."""
    if name in schema.__all__:
        return getattr(schema, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _plain_in_place(container: dict | list) -> None:
    """Write ``container``'s values as JSON holds them: a tuple (``x.shape``, a
    ``torch.Size``) as a list, a NumPy number as a Python one (a script sets sizes from
    arrays and tensors). Dicts and lists are changed in place: a script may hold them."""
    for key, value in list(container.items() if isinstance(container, dict)
                           else enumerate(container)):  # fmt: skip
        if isinstance(value, tuple):
            value = container[key] = list(value)
        elif isinstance(value, (np.generic, np.ndarray)):
            container[key] = value.tolist()
        if isinstance(value, (dict, list)):
            _plain_in_place(value)
