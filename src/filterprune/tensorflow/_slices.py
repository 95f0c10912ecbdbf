"""Slices written as numbers in a Keras model (``h[..., :16]``, ``h[..., 16:]``: a gate's
two halves) on the channels a cut changes.

A slice whose bounds fall on whole parts of ``k`` equal parts of its axis is cut as
``ops.split(h, k)`` is: the parts keep the same channels, so each bound scales with the
kept width, and the strip writes the scaled bounds into the rebuilt model.
"""

from __future__ import annotations

import math
from typing import Any

from ..core.rules import axis_parts

__all__ = ["bounds", "equal_parts", "scaled_key", "split_parts"]


def bounds(key: Any, axis: int, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """``(start, stop)`` that ``key`` takes on ``axis`` of a tensor of ``shape``."""
    parts = axis_parts(key, len(shape))
    return None if parts is None else parts[axis].indices(shape[axis])[:2]


def equal_parts(key: Any, shape: tuple[Any, ...]) -> list[list[int]]:
    """``[axis, k]`` for each axis ``key`` slices (step 1) on whole parts of ``k`` equal
    parts of its size (``k`` below the size: single channels are no part a cut keeps)."""
    out = []
    for axis, part in enumerate(axis_parts(key, len(shape)) or ()):
        size = shape[axis]
        if not isinstance(size, int) or part.step not in (None, 1):
            continue
        start, stop, _ = part.indices(size)
        if (start, stop) == (0, size) or stop <= start:
            continue
        k = size // math.gcd(size, start, stop)
        if k < size:
            out.append([axis, k])
    return out


def scaled_key(key: Any, shape: tuple[int, ...], kept: list[int]) -> tuple[slice, ...]:
    """``key`` as one slice per axis, its bounds scaled from each axis' size in ``shape``
    to its kept size (a cut by equal parts keeps the same share of every part)."""

    def scale(bound: int | None, full: int, now: int) -> int | None:
        return None if bound is None else bound * now // full

    return tuple(slice(scale(p.start, full, now), scale(p.stop, full, now), p.step)
                 for p, full, now in zip(axis_parts(key, len(shape)), shape, kept, strict=True))


def split_parts(points: Any, size: Any) -> int | None:
    """The ``k`` of the ``k`` equal parts of ``size`` that split points written in code
    fall on (``ops.split(h, [8, 16])`` of 32: quarters), below the size; else None."""
    if not isinstance(points, (list, tuple)) or not isinstance(size, int) or not points \
            or not all(type(p) is int and 0 <= p <= size for p in points):  # fmt: skip
        return None
    k = size // math.gcd(size, *points)
    return k if k < size else None
