"""Schema fragments, and JSON-schema validation errors as one readable :class:`ConfigError`.

Messages follow the package template: what was wrong, what is expected, what was received,
e.g. "`compression[0].params.pruning_target` must be a number in [0, 1). Received:
pruning_target=1.5."

The settings dataclasses of :mod:`filterprune.core.params` declare each key with
:func:`setting` (its place in the config and a schema fragment made with :func:`integer`,
:func:`fraction`, :func:`enum`...) or :func:`nested`; :func:`section_schema` turns such a
dataclass into the schema of its config section.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from ..errors import ConfigError

__all__ = [
    "MISSING",
    "listed",
    "Fragment",
    "setting",
    "nested",
    "field_path",
    "field_schema",
    "is_nested",
    "lookup",
    "plain",
    "section_schema",
    "merge_objects",
    "SCOPES",
    "boolean",
    "integer",
    "fraction",
    "enum",
    "obj",
    "key_path",
    "leaf_name",
    "short_repr",
    "describe",
    "did_you_mean",
    "one_of",
    "validate",
    "check_finite",
]

_TYPE_WORDS = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "a boolean (true or false)",
    "null": "null",
}
_MAX_REPR = 80

SCOPES: dict[str, Any] = {
    "type": ["string", "array"],
    "items": {"type": "string"},
    "description": "Layer names, dotted-path prefixes, or `{re}`-prefixed regular expressions.",
}


def boolean(description: str = "") -> dict[str, Any]:
    """``true`` or ``false``."""
    schema: dict[str, Any] = {"type": "boolean"}
    if description:
        schema["description"] = description
    return schema


def integer(minimum: int, maximum: int | None = None) -> dict[str, Any]:
    """An integer in ``[minimum, maximum]`` (no upper bound when ``maximum`` is ``None``)."""
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def fraction(description: str = "") -> dict[str, Any]:
    """A number in [0, 1)."""
    schema: dict[str, Any] = {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
    if description:
        schema["description"] = description
    return schema


def enum(values: Iterable[str]) -> dict[str, Any]:
    """One of ``values`` (a string)."""
    return {"type": "string", "enum": list(values)}


def obj(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An object with exactly these keys (a misspelt key is an error, not ignored)."""
    return {"type": "object", "properties": properties, "additionalProperties": False, **extra}


# --- declaring settings ----------------------------------------------------------------

Fragment = dict[str, Any] | Callable[[], dict[str, Any]]
"""A schema fragment, or a function building one when asked (enums read from registries)."""

MISSING = object()
"""What :func:`lookup` returns for an absent key."""


def setting(path: str, schema: Fragment, default: Any = None) -> Any:
    """A dataclass field stored at ``path`` (dotted, inside its section) matching ``schema``.

    ``None`` means "not set" (the key is absent from the config); the schema's
    ``default`` annotation is the field's default unless ``schema`` gives its own.
    """
    return dataclasses.field(
        default=default, metadata={"path": tuple(path.split(".")), "schema": schema}
    )


def nested(path: str, default_factory: Callable[[], Any]) -> Any:
    """A dataclass field holding another settings dataclass, stored as the object at ``path``.

    The default instance may differ from the class defaults (weights quantize per channel
    by default, activations do not); keys absent from the config keep its values.
    """
    return dataclasses.field(
        default_factory=default_factory, metadata={"path": tuple(path.split("."))}
    )


def field_path(f: dataclasses.Field) -> tuple[str, ...]:
    """The keys leading to field ``f`` inside its section."""
    return f.metadata["path"]


def field_schema(f: dataclasses.Field) -> dict[str, Any]:
    """The schema fragment of a :func:`setting` field, built now."""
    schema = f.metadata["schema"]
    return schema() if callable(schema) else schema


def is_nested(f: dataclasses.Field) -> bool:
    """Whether ``f`` was made with :func:`nested`."""
    return "schema" not in f.metadata


def lookup(tree: Mapping[str, Any], path: Iterable[str]) -> Any:
    """``tree[path[0]][path[1]]...``, or :data:`MISSING` if a key is absent."""
    value: Any = tree
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return MISSING
        value = value[key]
    return value


def plain(value: Any) -> Any:
    """Tuples to lists, recursively, for JSON."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def section_schema(settings: Any) -> dict[str, Any]:
    """The object schema of the keys declared by a settings dataclass's fields.

    The ``default`` annotations are ``settings``' values, so a nested group's schema shows
    that group's defaults.
    """
    properties: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if is_nested(f):
            schema = section_schema(value)
        else:
            schema = dict(field_schema(f))
            if value is not None and value != () and "default" not in schema:
                schema["default"] = plain(value)
        *parents, leaf = field_path(f)
        where = properties
        for key in parents:
            where = where.setdefault(key, obj({}))["properties"]
        where[leaf] = schema
    return obj(properties)


def merge_objects(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    """Add the keys of object schema ``other`` missing from ``into``, at every depth."""
    for key, schema in other["properties"].items():
        mine = into["properties"].get(key)
        if mine is not None and mine.get("type") == "object" and "properties" in schema:
            merge_objects(mine, schema)
        else:
            into["properties"].setdefault(key, schema)


# --- messages ----------------------------------------------------------------------------


def key_path(path: Iterable[Any], root: str = "") -> str:
    """Dotted key path with list indices, e.g. ``compression[0].params.pruning_target``.

    Example:
        >>> key_path(["compression", 0, "params", "pruning_target"])
        'compression[0].params.pruning_target'
    """
    text = root
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "config"


def leaf_name(path: Sequence[Any]) -> str:
    """The last key of a path with its trailing indices, e.g. ``sample_size[1]``.

    Example:
        >>> leaf_name(["input_info", "sample_size", 1])
        'sample_size[1]'
    """
    parts = list(path)
    start = len(parts)
    while start > 0 and isinstance(parts[start - 1], int):
        start -= 1
    return key_path(parts[max(start - 1, 0):])


def short_repr(value: Any) -> str:
    """``repr`` cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _interval(schema: Mapping[str, Any]) -> str:
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    if lo is not None and hi is not None:
        left = "[" if "minimum" in schema else "("
        right = "]" if "maximum" in schema else ")"
        return f" in {left}{lo}, {hi}{right}"
    if lo is not None:
        return f" >= {lo}" if "minimum" in schema else f" > {lo}"
    if hi is not None:
        return f" <= {hi}" if "maximum" in schema else f" < {hi}"
    return ""


def _plural(phrase: str) -> str:
    """'an integer >= 1' -> 'integers >= 1'; phrases without an article are kept."""
    words = phrase.split(" ")
    if words[0] not in ("a", "an") or len(words) < 2:
        return phrase
    words = words[1:]
    words[0] += "s"
    return " ".join(words)


def describe(schema: Mapping[str, Any]) -> str:
    """A short English description of what a (sub)schema accepts.

    Example:
        >>> describe({"type": "number", "minimum": 0, "exclusiveMaximum": 1})
        'a number in [0, 1)'
        >>> describe({"type": ["string", "array"], "items": {"type": "string"}})
        'a string or a list of strings'
    """
    if "const" in schema:
        return short_repr(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(short_repr(v) for v in schema["enum"])
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    words = []
    for name in types:
        word = _TYPE_WORDS.get(name, name)
        if name in ("number", "integer"):
            word += _interval(schema)
        elif name == "array":
            word = "a non-empty list" if schema.get("minItems", 0) > 0 else "a list"
            item = schema.get("items")
            if isinstance(item, Mapping) and item.get("type"):
                item_words = describe(item).split(" or ")
                word += " of " + " or ".join(_plural(w) for w in item_words)
        words.append(word)
    return " or ".join(words) if words else "valid"


def listed(names: Sequence[str], shown: int = 5) -> str:
    """``a, b, c, d, e and 2 more``: the first ``shown`` names of a list, for one message."""
    names = list(names)
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def did_you_mean(value: Any, choices: Iterable[Any], cutoff: float = 0.6) -> str:
    """`` Did you mean `x`?`` for the closest choice (similarity ``cutoff`` or more), or an
    empty string."""
    if not isinstance(value, str):
        return ""
    lowered = {c.lower(): c for c in choices if isinstance(c, str)}  # `Ignored_Scopes` too
    close = difflib.get_close_matches(value.lower(), list(lowered), n=1, cutoff=cutoff)
    return f" Did you mean `{lowered[close[0]]}`?" if close else ""


def _must_be(key: str, expected: str, name: str, value: Any, hint: str = "") -> str:
    return f"`{key}` must be {expected}. Received: {name}={short_repr(value)}.{hint}"


def one_of(key: str, value: Any, choices: Iterable[Any]) -> ConfigError:
    """The error for ``value`` not among ``choices`` (as a schema ``enum`` reports it).

    Example:
        >>> print(one_of("mode", "symetric", ["symmetric", "asymmetric"]))
        ... # doctest: +NORMALIZE_WHITESPACE
        `mode` must be one of 'symmetric', 'asymmetric'. Received: mode='symetric'.
        Did you mean `symmetric`?
    """
    choices = list(choices)
    name = key.rsplit(".", 1)[-1]
    expected = describe({"enum": choices})
    return ConfigError(_must_be(key, expected, name, value, did_you_mean(value, choices)))


# NNCF keys with no counterpart here, and what to do with them instead
_NNCF_ONLY = {
    "zero_grad": " Pruned filters always get zero gradients here (their weights are masked): "
                 "drop the key.",
    "scope_overrides": " Per-scope quantizer settings are not supported: the `weights` and "
                       "`activations` settings apply to every quantizer; leave layers in "
                       "float with `ignored_scopes`.",
    "compression_lr_multiplier": " Compression adds no trainable parameters to scale: drop "
                                 "the key.",
    "signedness_to_force": " It is `signed` here: true for a signed range, false for an "
                           "unsigned one.",
}


# NNCF keys that also took a list of per-scope objects
_NNCF_LISTS = {
    "range": " Per-scope ranges (a list with `target_scopes`) are not supported: give one "
             "object; its settings apply to every quantizer.",
}


def _unknown_key(error: ValidationError, where: str) -> str:
    allowed = list(error.schema.get("properties", {}))
    unknown = [k for k in error.instance if k not in allowed]
    key = unknown[0]
    path = key_path([*error.absolute_path, key], where)
    return (
        f"Unknown key `{path}`. Allowed keys: {', '.join(sorted(allowed))}."
        + (_NNCF_ONLY.get(key) or did_you_mean(key, allowed))
    )


def _missing_key(error: ValidationError, where: str) -> str:
    missing = next(k for k in error.validator_value if k not in error.instance)
    path = key_path([*error.absolute_path, missing], where)
    expected = error.schema.get("properties", {}).get(missing)
    what = f"set to {describe(expected)}" if expected else "set"
    return f"`{path}` must be {what}. Received: no `{missing}` key."


def _message(error: ValidationError, where: str) -> str:
    if error.validator == "additionalProperties":
        return _unknown_key(error, where)
    if error.validator == "required":
        return _missing_key(error, where)
    path = list(error.absolute_path)
    name = leaf_name(path) if path else (where.rsplit(".", 1)[-1] or "config")
    hint = did_you_mean(error.instance, error.schema.get("enum", ()))
    if isinstance(error.instance, list) and error.schema.get("type") == "object":
        hint = _NNCF_LISTS.get(name, hint)
    return _must_be(key_path(path, where), describe(error.schema), name, error.instance, hint)


def validate(instance: Any, schema: Mapping[str, Any], where: str = "") -> None:
    """Validate ``instance`` against ``schema``; raise the most relevant error.

    Args:
        instance: The decoded JSON value.
        schema: A draft 2020-12 schema.
        where: Key path of ``instance`` inside a larger config, prefixed to messages.

    Raises:
        ConfigError: The best-matching schema violation, in the package's error template.
    """
    validator = jsonschema.Draft202012Validator(schema)
    error = best_match(validator.iter_errors(instance))
    if error is not None:
        raise ConfigError(_message(error, where)) from None


def check_finite(value: Any, path: tuple[Any, ...] = (), where: str = "") -> None:
    """Reject NaN and infinities anywhere in a decoded JSON value.

    Python's ``json`` accepts ``NaN`` and ``Infinity``; range checks cannot catch them.

    Raises:
        ConfigError: Naming the first non-finite number found.
    """
    if isinstance(value, float) and not math.isfinite(value):
        name = leaf_name(path) if path else "config"
        raise ConfigError(
            f"`{key_path(path, where)}` must be a finite number. Received: {name}={value!r}."
        )
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_finite(item, (*path, key), where)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_finite(item, (*path, index), where)
