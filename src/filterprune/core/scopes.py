"""Deny and allow lists of layer names (``ignored_scopes`` / ``target_scopes``).

A pattern is one of:

* ``"{re}<regex>"``: a regular expression that must match the **whole** layer name
  (``re.fullmatch``). NNCF used ``re.search``; write ``{re}.*conv.*`` for a substring match.
  ``re.search`` is never used: a regex written for a substring search (``{re}conv``) matches
  nothing, and :func:`check_unmatched` reports it with that hint.
* an NNCF scope (``ResNet/Sequential[layer1]/NNCFConv2d[conv1]/conv2d_0``): read as the module
  path its bracketed names spell (``layer1.conv1``); one that ends in an operation other
  than a layer's own (``.../InvertedResidual[3]/__add___0``, a residual add) names no layer;
  a ``{re}`` pattern written for such scopes (one with ``\\[``) is searched, as NNCF did,
  in the layer's NNCF scope where the frontend knows the module classes
  (``Graph.scope_types``: ``ResNet/Sequential[layer1]/NNCFConv2d[conv1]``), else in its path
  written the same way without them (``[layer1]/[conv1]``: type names dropped, a leading
  model class read as ``^``); a trailing op name (``/conv2d_0``) becomes ``$``.
* anything else: the exact layer name, or a prefix ending at a path boundary (``.`` or ``/``),
  so ``layer1`` matches ``layer1`` and ``layer1.0.conv1`` but not ``layer10.conv1``.

Patterns that match no layer of the model are an error (:func:`check_unmatched`, run by the
workflow once the layer names are known), or a warning under ``"validate_scopes": false``
(at the top of the config, or in one ``compression`` entry for that entry's patterns).

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

import difflib
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..errors import ConfigError

__all__ = [
    "REGEX_PREFIX",
    "SCOPE_KEYS",
    "ScopeMatcher",
    "check_scope_patterns",
    "check_unmatched",
    "compile_pattern",
    "iter_scope_patterns",
    "nncf_scope_name",
    "normalize_scopes",
    "warn_filterless",
]

log = logging.getLogger("filterprune")

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


def iter_scope_patterns(section: Mapping[str, Any], where: str = "",
                        nested: bool = True) -> Iterator[tuple[str, Any]]:  # fmt: skip
    """Every pattern of the scope lists of a config section, with its key path.

    Args:
        section: A decoded JSON object, e.g. a ``compression`` entry.
        where: Key path of ``section`` in the config.
        nested: Also walk the objects inside ``section`` (a ``weights`` group of an entry);
            off for the top level, where training scripts keep their own settings.

    Yields:
        ``(key path, pattern)``, e.g. ``("compression[0].ignored_scopes[1]", "fc")``.
    """
    for key, value in section.items():
        path = f"{where}.{key}" if where else key
        if key in SCOPE_KEYS and isinstance(value, str):
            yield path, value
        elif key in SCOPE_KEYS and isinstance(value, list | tuple):
            yield from ((f"{path}[{i}]", pattern) for i, pattern in enumerate(value))
        elif nested and isinstance(value, Mapping):
            yield from iter_scope_patterns(value, path)


def check_scope_patterns(section: Mapping[str, Any], where: str = "", nested: bool = True) -> None:
    """Check every pattern of the scope lists of a config section (and its sub-objects).

    Args:
        section: A decoded JSON object, e.g. a ``compression`` entry.
        where: Key path of ``section`` in the config, used in messages.
        nested: See :func:`iter_scope_patterns`.

    Raises:
        ConfigError: Naming the first bad pattern by its key path.
    """
    for path, pattern in iter_scope_patterns(section, where, nested):
        compile_pattern(pattern, path)


def nncf_scope_name(pattern: str) -> str | None:
    """The module path an NNCF scope names, or ``None`` for a pattern in another syntax.

    Example:
        >>> nncf_scope_name("ResNet/Sequential[layer1]/BasicBlock[0]/NNCFConv2d[conv1]/conv2d_0")
        'layer1.0.conv1'
        >>> nncf_scope_name("layer1.0.conv1") is None
        True
    """
    if _NNCF_SCOPE.fullmatch(pattern) is None:
        return None
    return ".".join(_NNCF_PART.findall(pattern))


def _nncf_regex(body: str, typed: bool = False) -> re.Pattern[str] | None:
    """A ``{re}`` body written for NNCF scopes, rewritten for :func:`_nncf_path`: the
    trailing op name becomes ``$``; without ``typed`` (no classes known), the class
    names go and a leading model class becomes ``^``."""
    if "\\[" not in body:
        return None
    if not typed:
        body = _TYPE_BEFORE_BRACKET.sub("", body)
        body = _MODEL_CLASS.sub("^", body, count=1)
    body = _TRAILING_OP.sub("$", body, count=1)
    try:
        return re.compile(body)
    except re.error:
        return None


def _nncf_path(name: str, types: Mapping[str, str] | None = None) -> str | None:
    """``layer1.0.conv1`` -> ``[layer1]/[0]/[conv1]``; with ``types`` (module path ->
    class), the NNCF scope ``ResNet/Sequential[layer1]/BasicBlock[0]/NNCFConv2d[conv1]``,
    or None where a module on the path has no class there."""
    parts = name.split(".")
    if types is None:
        return "/".join(f"[{part}]" for part in parts)
    classes = [types.get(".".join(parts[: i + 1])) for i in range(len(parts))]
    if "" not in types or None in classes:
        return None
    return "/".join([types[""], *(f"{c}[{p}]" for c, p in zip(classes, parts, strict=True))])


def nncf_op(pattern: str) -> str | None:
    """The operation an NNCF scope ends with (``conv2d_0``, ``__add___0``), or None."""
    if _NNCF_SCOPE.fullmatch(pattern) is None:
        return None
    last = pattern.rsplit("/", 1)[-1]
    return None if "[" in last else last


_NNCF_PART = re.compile(r"\[([^/\[\]]+)\]")
_NNCF_SCOPE = re.compile(r"[^/\[\]]+(?:/[^/\[\]]*\[[^/\[\]]+\])+(?:/[^/\[\]]+)?")
_TYPE_BEFORE_BRACKET = re.compile(r"[A-Za-z_]\w*(?=\\\[)")
_MODEL_CLASS = re.compile(r"^\^?[A-Za-z_]\w*/")
_TRAILING_OP = re.compile(r"/[A-Za-z_]\w*_\d+\$?$")
# the op of a layer's own call in an NNCF scope (``conv2d_0``, ``linear_1``, ``batch_norm_0``)
_LAYER_OP = re.compile(r"(conv(_transpose)?\d?d?|linear|matmul|addmm|batch_norm|layer_norm|"
                       r"group_norm|instance_norm|embedding(_bag)?|deform_conv2d)_\d+")


class _Pattern:
    """One compiled scope pattern.

    Attributes:
        text: The pattern as written.
        name: The layer name or prefix a plain pattern stands for (an NNCF scope's module
            path), ``None`` for a regex.
    """

    def __init__(self, text: str, key: str) -> None:
        self.text = text
        self.regex = compile_pattern(text, key)
        self.nncf = None if self.regex is None else _nncf_regex(self.regex.pattern)
        self.typed = None if self.regex is None else _nncf_regex(self.regex.pattern, True)
        if self.typed is None and self.regex is not None and "NNCF" in self.regex.pattern:
            # by NNCF's class alone: ``{re}.*NNCFLinear.*``, ``{re}.*NNCFLinear.*/linear_0``
            self.typed = re.compile(_TRAILING_OP.sub("$", self.regex.pattern, count=1))
        self.name = None if self.regex is not None else nncf_scope_name(text) or text
        op = None if self.regex is not None else nncf_op(text)
        # an NNCF scope of an op inside a module (its residual ``__add___0``): no layer
        self.op = op if op is not None and _LAYER_OP.fullmatch(op) is None else None

    def matches(self, name: str, types: Mapping[str, str] | None = None) -> bool:
        if self.op is not None:
            return False
        if self.typed is not None:
            typed = _nncf_path(name, types) if types else None
            if typed is not None:  # NNCF's scope with its classes: searched as NNCF did
                return self.typed.search(typed) is not None
        if self.nncf is not None:
            return self.nncf.search(_nncf_path(name)) is not None
        if self.regex is not None:
            return self.regex.fullmatch(name) is not None
        if name == self.name:
            return True
        return any(name.startswith(self.name + sep) for sep in _BOUNDARIES)

    def unmatched(self, key: str, names: list[str]) -> str:
        """The message for this pattern (at config key ``key``) matching none of ``names``."""
        leaf = key.rsplit(".", 1)[-1]
        if self.op is not None:
            return (f"`{key}` must match a layer of the model. Received: {leaf}={self.text!r}, "
                    f"which names the operation {self.op!r} inside module {self.name!r}, not "
                    "a layer, so it selects none. Name the layers to compress.")  # fmt: skip
        read = f" (read as layer {self.name!r})" if self.name not in (None, self.text) else ""
        text = (f"`{key}` must match a layer of the model. Received: {leaf}={self.text!r}"
                f"{read}, which matches none.")  # fmt: skip
        if self.regex is not None and self.nncf is None:
            found = [n for n in names if self.regex.search(n)]
            if found:
                return (f"{text} As a substring search it would match {len(found)} layer(s), "
                        f"e.g. {found[0]!r}, but a `{REGEX_PREFIX}` pattern must match the whole "
                        f"name: write '{REGEX_PREFIX}.*{self.regex.pattern}.*'.")  # fmt: skip
        probe = self.name if self.name is not None else self.regex.pattern
        close = difflib.get_close_matches(probe, names, n=3, cutoff=0.5)
        return f"{text} Close layer names: {', '.join(map(repr, close)) or 'none'}."


def check_unmatched(config: Mapping[str, Any], names: Iterable[str],
                    types: Mapping[str, str] | None = None) -> list[str]:  # fmt: skip
    """Report the scope patterns of ``config`` that match none of the layer ``names``.

    A pattern that matches nothing protects nothing: a misspelt ``ignored_scopes`` entry
    would let the layer it meant be pruned. Each pattern is reported with its key path and
    the closest layer names. ``"validate_scopes": false`` (top level, or in a
    ``compression`` entry for that entry's patterns) turns the error into a warning.

    Args:
        config: The validated config (top-level scopes and every ``compression`` entry).
        names: Every layer and op name of the captured model.
        types: Module path -> class (``Graph.scope_types``), for NNCF scopes by class.

    Returns:
        The messages of the unmatched patterns that were only logged as warnings.

    Raises:
        ConfigError: For the first unmatched pattern where ``validate_scopes`` is on.
    """
    names = list(dict.fromkeys(names))
    strict_top = config.get("validate_scopes", True) is not False
    section = config.get("compression")
    entries = [section] if isinstance(section, Mapping) else list(section or [])
    wheres = ["compression"] if isinstance(section, Mapping) else [
        f"compression[{i}]" for i in range(len(entries))]  # fmt: skip
    sections = [(dict(config), "", False, strict_top)]
    for where, entry in zip(wheres, entries, strict=True):
        strict = entry.get("validate_scopes", strict_top) is not False
        sections.append((entry, where, True, strict))
    warned = []
    for section_dict, where, nested, strict in sections:
        for path, text in iter_scope_patterns(section_dict, where, nested):
            pattern = _Pattern(text, path)
            if pattern.op is not None and "target_scopes" not in path:  # said, not refused
                message = (f"`{path}` names the operation {pattern.op!r} inside module "
                           f"{pattern.name!r}, not a layer: scopes here pick layers (their "
                           "filters and weight quantizers), so it changes nothing. NNCF "
                           "used it for that operation's activation quantizer alone; name "
                           f"a layer to leave it alone. Received: {text!r}.")  # fmt: skip
                log.warning("%s", message)
                warned.append(message)
                continue
            if any(pattern.matches(n, types) for n in names):
                continue
            message = pattern.unmatched(path, names)
            if strict:
                raise ConfigError(f"{message} Set `validate_scopes` to false to only warn.")
            log.warning("%s", message)
            warned.append(message)
    return warned


def warn_filterless(ignored: Iterable[str], names: Iterable[str], producers: Iterable[str],
                    types: Mapping[str, str] | None = None) -> list[str]:  # fmt: skip
    """Warn about ``ignored_scopes`` patterns of filter pruning that match only layers
    without filters (a BatchNorm, an activation): pruning keeps whole only the layers
    that make channels, so the filters feeding such a layer are still pruned.

    Returns:
        The warnings logged.
    """
    names, producers = list(dict.fromkeys(names)), set(producers)
    warned = []
    for text in normalize_scopes(ignored):
        pattern = _Pattern(text, "ignored_scopes")
        hits = [n for n in names if pattern.matches(n, types)]
        if not hits or any(n in producers for n in hits):
            continue
        shown = ", ".join(hits[:3]) + (", ..." if len(hits) > 3 else "")
        message = (f"filter_pruning `ignored_scopes` entry {text!r} matches only layers "
                   f"without filters ({shown}), so it keeps nothing whole: the filters that "
                   "feed them are still pruned. Name the convolution or linear layer that "
                   "makes those channels.")  # fmt: skip
        log.warning("%s", message)
        warned.append(message)
    return warned


class ScopeMatcher:
    """Decides whether a layer may be compressed, and says why not.

    Args:
        ignored: Deny list. A layer matching any pattern is left alone.
        target: Allow list. If non-empty, only layers matching a pattern are considered;
            an empty or missing list allows every layer.
        types: Module path -> class (``Graph.scope_types``), for NNCF scopes by class.

    Raises:
        ConfigError: If a pattern is empty or an invalid regular expression.
    """

    def __init__(
        self,
        ignored: str | Iterable[str] | None = None,
        target: str | Iterable[str] | None = None,
        types: Mapping[str, str] | None = None,
    ) -> None:
        self.types = types
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
            if pattern.matches(name, self.types):
                return f"in ignored_scopes ({pattern.text!r})"
        if self._target and not any(p.matches(name, self.types) for p in self._target):
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
            if not any(p.matches(n, self.types) for n in names)
        ]
