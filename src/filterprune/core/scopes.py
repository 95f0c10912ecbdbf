"""Deny and allow lists of layer names (``ignored_scopes`` / ``target_scopes``).

A pattern is one of:

* ``"{re}<regex>"``: a regular expression that must match the **whole** layer name
  (``re.fullmatch``). NNCF used ``re.search``; write ``{re}.*conv.*`` for a substring match.
* anything else: the exact layer name, or a prefix ending at a path boundary (``.`` or ``/``),
  so ``layer1`` matches ``layer1`` and ``layer1.0.conv1`` but not ``layer10.conv1``.

Example:
    >>> m = ScopeMatcher(ignored=["{re}.*downsample.*"], target=["layer1", "layer2"])
    >>> m.reason("layer1.0.conv1") is None
    True
    >>> m.reason("layer1.0.downsample.0")
    "in ignored_scopes ('{re}.*downsample.*')"
    >>> m.reason("fc")
    'not in target_scopes'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigError

__all__ = [
    "REGEX_PREFIX",
    "SCOPE_KEYS",
    "ScopeMatcher",
    "check_scope_patterns",
    "compile_pattern",
    "normalize_scopes",
]

REGEX_PREFIX = "{re}"
SCOPE_KEYS = ("ignored_scopes", "target_scopes")
_BOUNDARIES = (".", "/")


def normalize_scopes(scopes: str | Iterable[str] | None) -> tuple[str, ...]:
    """A string, a list of strings or ``None`` as a tuple of patterns, duplicates dropped.

    Example:
        >>> normalize_scopes("conv1"), normalize_scopes(["a", "b", "a"]), normalize_scopes(None)
        (('conv1',), ('a', 'b'), ())
    """
    if scopes is None:
        return ()
    if isinstance(scopes, str):
        return (scopes,)
    return tuple(dict.fromkeys(scopes))


def compile_pattern(pattern: str, key: str = "ignored_scopes") -> re.Pattern[str] | None:
    """Check one pattern; return its compiled regex (or ``None`` for a plain name).

    Args:
        pattern: A layer name, a dotted prefix, or ``{re}<regex>``.
        key: Key path of the pattern in the config (e.g. ``ignored_scopes[1]``), used in
            error messages.

    Raises:
        ConfigError: If the pattern is not a string, is empty, or is an invalid regex.

    Example:
        >>> compile_pattern("{re}layer[12]").pattern, compile_pattern("layer1")
        ('layer[12]', None)
    """
    leaf = key.rsplit(".", 1)[-1]
    if not isinstance(pattern, str):
        raise ConfigError(f"`{key}` must be a string. Received: {leaf}={pattern!r}.")
    if not pattern.startswith(REGEX_PREFIX):
        if not pattern:
            raise ConfigError(f"`{key}` must be a non-empty name. Received: {leaf}=''.")
        return None
    try:
        return re.compile(pattern[len(REGEX_PREFIX):])
    except re.error as exc:
        raise ConfigError(
            f"`{key}` must be a valid regular expression after `{REGEX_PREFIX}`. "
            f"Received: {leaf}={pattern!r} ({exc})."
        ) from None


def check_scope_patterns(section: Mapping[str, Any], where: str = "", nested: bool = True) -> None:
    """Check every pattern of the scope lists of a config section (and its sub-objects).

    Args:
        section: A decoded JSON object, e.g. a ``compression`` entry.
        where: Key path of ``section`` in the config, used in messages.
        nested: Also check the scope lists of objects inside ``section`` (a ``weights``
            group of an entry); off for the top level, where training scripts keep their
            own settings.

    Raises:
        ConfigError: Naming the first bad pattern by its key path.
    """
    for key, value in section.items():
        path = f"{where}.{key}" if where else key
        if key in SCOPE_KEYS and isinstance(value, str):
            compile_pattern(value, path)
        elif key in SCOPE_KEYS:
            for index, pattern in enumerate(value):
                compile_pattern(pattern, f"{path}[{index}]")
        elif nested and isinstance(value, Mapping):
            check_scope_patterns(value, path)


class _Pattern:
    """One compiled scope pattern."""

    def __init__(self, text: str, key: str) -> None:
        self.text = text
        self.regex = compile_pattern(text, key)

    def matches(self, name: str) -> bool:
        if self.regex is not None:
            return self.regex.fullmatch(name) is not None
        if name == self.text:
            return True
        return any(name.startswith(self.text + sep) for sep in _BOUNDARIES)


class ScopeMatcher:
    """Decides whether a layer may be compressed, and says why not.

    Args:
        ignored: Deny list. A layer matching any pattern is left alone.
        target: Allow list. If non-empty, only layers matching a pattern are considered;
            an empty or missing list allows every layer.

    Raises:
        ConfigError: If a pattern is empty or an invalid regular expression.
    """

    def __init__(
        self,
        ignored: str | Iterable[str] | None = None,
        target: str | Iterable[str] | None = None,
    ) -> None:
        self.ignored = normalize_scopes(ignored)
        self.target = normalize_scopes(target)
        self._ignored = [_Pattern(p, f"ignored_scopes[{i}]") for i, p in enumerate(self.ignored)]
        self._target = [_Pattern(p, f"target_scopes[{i}]") for i, p in enumerate(self.target)]

    def __repr__(self) -> str:
        return f"ScopeMatcher(ignored={list(self.ignored)!r}, target={list(self.target)!r})"

    def reason(self, name: str) -> str | None:
        """Why ``name`` is excluded, or ``None`` if it may be compressed.

        The deny list is checked first, so a layer both ignored and not targeted
        reports the ignored pattern.
        """
        for pattern in self._ignored:
            if pattern.matches(name):
                return f"in ignored_scopes ({pattern.text!r})"
        if self._target and not any(p.matches(name) for p in self._target):
            return "not in target_scopes"
        return None

    def allows(self, name: str) -> bool:
        """``True`` if ``name`` may be compressed."""
        return self.reason(name) is None

    def unused(self, names: Iterable[str]) -> list[str]:
        """Patterns (ignored first, then target) that match none of ``names``.

        Useful to warn about scopes that refer to layers the model does not have.
        """
        names = list(names)
        return [
            p.text
            for p in (*self._ignored, *self._target)
            if not any(p.matches(n) for n in names)
        ]
