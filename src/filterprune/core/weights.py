"""Masks and cuts of one weight tensor, given its axis roles and keep vectors.

Frontends store weights in different layouts (a torch conv is ``(out, in/groups, kh, kw)``,
a Keras conv ``(kh, kw, in/groups, out)``); the roles of
:class:`~filterprune.core.graph.LayerInfo` say which axis is which, so one numpy routine
masks or slices any of them. For a grouped weight the ``"in"`` axis holds ``in/groups``
columns while the keep vector covers all ``in`` channels: a filter of group ``g`` reads
the columns of block ``g``.

Example:
    >>> w = np.arange(12.0).reshape(1, 1, 3, 4)  # Keras conv: 3 inputs, 4 filters
    >>> keep = {"out": np.array([1, 0, 1, 1], bool), "in": np.array([1, 1, 0], bool)}
    >>> roles = (None, None, "in", "out")
    >>> weight_mask(w.shape, roles, keep).shape
    (1, 1, 3, 4)
    >>> slice_weight(w, roles, keep).shape
    (1, 1, 2, 3)
"""

from __future__ import annotations

import numpy as np

from ..errors import AnalysisError

__all__ = ["weight_mask", "slice_weight", "filters_first", "groups_left"]

Roles = tuple[str | None, ...]


def _grouped(shape: tuple[int, ...], roles: Roles, keep: dict[str, np.ndarray], groups: int):
    """``(full_axis, part_axis, part_role)`` when the weight is grouped and its per-group
    side is cut, else None. A conv's ``"in"`` axis holds ``in/groups`` columns; a
    transposed conv's ``"out"`` axis holds ``out/groups`` (its ``"in"`` axis is full)."""
    if groups <= 1 or "out" not in roles or "in" not in roles:
        return None
    for part, full in (("in", "out"), ("out", "in")):
        axis = roles.index(part)
        if part in keep and keep[part].size == shape[axis] * groups != shape[axis]:
            return roles.index(full), axis, part
    return None


def _group_columns(keep: dict[str, np.ndarray], n_full: int, groups: int,
                   part: str = "in") -> np.ndarray:  # fmt: skip
    """(n_full, part/groups) bool: the per-group entries each full-side row keeps."""
    block = np.arange(n_full) // (n_full // groups)
    return keep[part].reshape(groups, -1)[block]


def weight_mask(
    shape: tuple[int, ...], roles: Roles, keep: dict[str, np.ndarray], groups: int = 1
) -> np.ndarray:
    """A float32 mask broadcastable to a weight of ``shape``: 1 where kept, 0 where cut.

    Args:
        shape: The weight's shape.
        roles: One role per axis (``"out"``, ``"in"``, ``"channel"``, ``"axisK"`` or None).
        keep: Boolean keep vectors by role; a role without one is kept whole.
        groups: Convolution groups (the ``"in"`` vector then covers every input channel).

    Returns:
        An array with the weight's rank, of size 1 along the axes that are not cut.
    """
    roles = tuple(roles) + (None,) * (len(shape) - len(roles))
    mask = np.ones([s if r in keep else 1 for s, r in zip(shape, roles, strict=True)], np.float32)
    for axis, role in enumerate(roles):
        vec = keep.get(role) if role else None
        if vec is not None and vec.size == shape[axis]:
            view = [1] * mask.ndim
            view[axis] = shape[axis]
            mask = mask * vec.reshape(view)
    grouped = _grouped(shape, roles, keep, groups)
    if grouped is not None:
        full_axis, part_axis, part = grouped
        cols = _group_columns(keep, shape[full_axis], groups, part).astype(np.float32)
        if full_axis > part_axis:
            cols = cols.T
        view = [1] * mask.ndim
        view[min(full_axis, part_axis)], view[max(full_axis, part_axis)] = cols.shape
        mask = mask * cols.reshape(view)
    return mask


def slice_weight(
    array: np.ndarray, roles: Roles, keep: dict[str, np.ndarray], groups: int = 1
) -> np.ndarray:
    """``array`` cut down to the kept entries along every axis that has a keep vector.

    Raises:
        ValueError: If a grouped weight keeps different numbers of columns per group.
    """
    roles = tuple(roles) + (None,) * (array.ndim - len(roles))
    grouped = _grouped(array.shape, roles, keep, groups)
    for axis, role in enumerate(roles):
        vec = keep.get(role) if role else None
        if grouped is not None and axis == grouped[1]:
            continue
        if vec is not None and vec.size == array.shape[axis] and not vec.all():
            array = np.take(array, np.flatnonzero(vec), axis=axis)
    if grouped is None:
        return array
    full_axis, part_axis, part = grouped
    full = "out" if part == "in" else "in"
    n_full = keep[full].size if full in keep else array.shape[full_axis]
    cols = _group_columns(keep, n_full, groups, part)
    if full in keep:
        cols = cols[keep[full]]
    per_row = [np.flatnonzero(c) for c in cols]
    if len({c.size for c in per_row}) > 1:
        raise ValueError(
            "A grouped weight must keep the same number of channels in every group. "
            f"Received: kept per row {sorted({c.size for c in per_row})}."
        )
    moved = np.moveaxis(array, (full_axis, part_axis), (0, 1))
    idx = np.stack(per_row) if per_row else np.zeros((0, 0), np.int64)
    picked = moved[np.arange(moved.shape[0])[:, None], idx]
    return np.moveaxis(picked, (0, 1), (full_axis, part_axis))


def filters_first(array: np.ndarray, roles: Roles) -> np.ndarray:
    """``array`` with its ``"out"`` axis moved to the front (the layout importance expects)."""
    if "out" not in roles:
        raise ValueError(f"A producer's weight must have an 'out' axis. Received roles: {roles}.")
    return np.moveaxis(array, roles.index("out"), 0)


def groups_left(name: str, kept: int, channels: int, groups: int) -> int:
    """The group count of a norm over ``groups`` groups of ``channels`` once ``kept``
    channels stay: the cut removes whole groups, each as wide as before.

    Raises:
        AnalysisError: If ``kept`` is not a whole number of groups.
    """
    width = channels // groups
    if kept % width:
        raise AnalysisError(f"{name}: {kept} channels kept are not whole groups of {width}.")
    return kept // width
