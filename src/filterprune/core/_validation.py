"""Turning JSON-schema validation errors into one readable :class:`ConfigError`.

Messages follow the package template: what was wrong, what is expected, what was received,
e.g. "`compression[0].params.pruning_target` must be a number in [0, 1). Received:
pruning_target=1.5."
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from ..errors import ConfigError

__all__ = [
    "key_path",
    "leaf_name",
    "short_repr",
    "describe",
    "did_you_mean",
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


def did_you_mean(value: Any, choices: Iterable[Any]) -> str:
    """`` Did you mean `x`?`` for the closest choice, or an empty string."""
    if not isinstance(value, str):
        return ""
    strings = [c for c in choices if isinstance(c, str)]
    close = difflib.get_close_matches(value, strings, n=1, cutoff=0.6)
    return f" Did you mean `{close[0]}`?" if close else ""


def _unknown_key(error: ValidationError, where: str) -> str:
    allowed = list(error.schema.get("properties", {}))
    unknown = [k for k in error.instance if k not in allowed]
    key = unknown[0]
    path = key_path([*error.absolute_path, key], where)
    return (
        f"Unknown key `{path}`. Allowed keys: {', '.join(sorted(allowed))}."
        + did_you_mean(key, allowed)
    )


def _missing_key(error: ValidationError, where: str) -> str:
    missing = next(k for k in error.validator_value if k not in error.instance)
    path = key_path([*error.absolute_path, missing], where)
    expected = error.schema.get("properties", {}).get(missing)
    what = f"set to {describe(expected)}" if expected else "set"
    return f"`{path}` must be {what}. Received: no `{missing}` key."


def _conflict(error: ValidationError, where: str) -> str:
    keys = list(error.validator_value.get("required", []))
    paths = " and ".join(f"`{key_path([*error.absolute_path, k], where)}`" for k in keys)
    received = ", ".join(f"{k}={short_repr(error.instance[k])}" for k in keys)
    return f"{paths} must not both be set; choose one. Received: {received}."


def _message(error: ValidationError, where: str) -> str:
    if error.validator == "additionalProperties":
        return _unknown_key(error, where)
    if error.validator == "required":
        return _missing_key(error, where)
    if error.validator == "not" and "required" in error.validator_value:
        return _conflict(error, where)
    path = list(error.absolute_path)
    name = leaf_name(path) if path else (where or "config")
    text = f"`{key_path(path, where)}` must be {describe(error.schema)}."
    hint = did_you_mean(error.instance, error.schema.get("enum", ()))
    return f"{text} Received: {name}={short_repr(error.instance)}.{hint}"


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
