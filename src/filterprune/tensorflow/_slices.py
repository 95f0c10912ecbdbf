"""Slices written as numbers in a Keras model (``h[..., :16]``, ``h[..., 16:]``: a gate's
two halves) on the channels a cut changes.

A slice whose bounds fall on whole parts of ``k`` equal parts of its axis is cut as
``ops.split(h, k)`` is: the parts keep the same channels, so each bound scales with the
kept width, and the strip writes the scaled bounds into the rebuilt model.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["bounds", "equal_parts", "scaled_key"]


def _positions(key: Any, ndim: int) -> dict[int, int] | None:
    """Input axis -> position in ``key`` of its slice, for a key of slices and at most one
    Ellipsis; None for any other key (ints and ``None`` move the axes)."""
    parts = list(key) if isinstance(key, tuple) else [key]
    if parts.count(Ellipsis) > 1 or not all(p is Ellipsis or isinstance(p, slice) for p in parts):
        return None
    at = parts.index(Ellipsis) if Ellipsis in parts else len(parts)
    after = len(parts) - at - (Ellipsis in parts)
    out = {axis: axis for axis in range(at)}
    out.update({ndim - after + i: at + (Ellipsis in parts) + i for i in range(after)})
    return out


def bounds(key: Any, axis: int, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """``(start, stop)`` that ``key`` takes on ``axis`` of a tensor of ``shape``."""
    positions = _positions(key, len(shape))
    if positions is None or axis not in positions:
        return None
    part = (list(key) if isinstance(key, tuple) else [key])[positions[axis]]
    return part.indices(shape[axis])[:2]


def equal_parts(key: Any, shape: tuple[Any, ...]) -> list[list[int]]:
    """``[axis, k]`` for each axis ``key`` slices (step 1) on whole parts of ``k`` equal
    parts of its size (``k`` below the size: single channels are no part a cut keeps)."""
    positions = _positions(key, len(shape))
    if positions is None:
        return []
    parts = list(key) if isinstance(key, tuple) else [key]
    out = []
    for axis, at in positions.items():
        size, part = shape[axis], parts[at]
        if not isinstance(size, int) or part.step not in (None, 1):
            continue
        start, stop, _ = part.indices(size)
        if (start, stop) == (0, size) or stop <= start:
            continue
        k = size // math.gcd(size, start, stop)
        if k < size:
            out.append([axis, k])
    return out


def scaled_key(key: Any, shape: tuple[int, ...], kept: list[int]) -> Any:
    """``key`` with the bounds on each axis scaled from its size in ``shape`` to its kept
    size (a cut by equal parts keeps the same share of every part)."""
    positions = _positions(key, len(shape))
    parts = list(key) if isinstance(key, tuple) else [key]
    for axis, at in (positions or {}).items():
        if kept[axis] == shape[axis]:
            continue
        part = parts[at]

        def scale(bound, full=shape[axis], now=kept[axis]):
            return None if bound is None else bound * now // full

        parts[at] = slice(scale(part.start), scale(part.stop), part.step)
    return tuple(parts) if isinstance(key, tuple) else parts[0]
