"""Reading JSON with comments and trailing commas, as NNCF's ``jstyleson`` did.

Comments and trailing commas are replaced by spaces (newlines kept), so the line and
column numbers of a later ``json`` error still point into the original file.
"""

from __future__ import annotations

__all__ = ["strip_comments"]


def _skip_string(text: str, i: int, out: list[str]) -> int:
    """Copy the string literal starting at ``text[i] == '"'``; return the index after it."""
    out.append('"')
    i += 1
    while i < len(text):
        ch = text[i]
        out.append(ch)
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        i += 1
        if ch == '"':
            break
    return i


def _blank(chunk: str) -> str:
    return "".join(c if c == "\n" else " " for c in chunk)


def _comment_end(text: str, i: int) -> int:
    """Index after the comment starting at ``i``, or ``i`` if none starts there."""
    if text.startswith("//", i):
        end = text.find("\n", i)
        return len(text) if end < 0 else end
    if text.startswith("/*", i):
        end = text.find("*/", i + 2)
        return len(text) if end < 0 else end + 2
    return i


def _drop_trailing_commas(chars: list[str]) -> None:
    """Blank every comma followed only by whitespace and then ``}`` or ``]``."""
    pending = -1
    in_string = False
    escaped = False
    for i, ch in enumerate(chars):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string, pending = True, -1
        elif ch == ",":
            pending = i
        elif ch in "}]" and pending >= 0:
            chars[pending] = " "
            pending = -1
        elif not ch.isspace():
            pending = -1


def strip_comments(text: str) -> str:
    """Remove ``//`` and ``/* */`` comments and trailing commas outside string literals.

    Example:
        >>> strip_comments('{"a": 1, // one\\n "b": "//x",}')
        '{"a": 1,       \\n "b": "//x" }'
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == '"':
            i = _skip_string(text, i, out)
            continue
        end = _comment_end(text, i)
        if end > i:
            out.append(_blank(text[i:end]))
            i = end
            continue
        out.append(text[i])
        i += 1
    chars = list("".join(out))
    _drop_trailing_commas(chars)
    return "".join(chars)
