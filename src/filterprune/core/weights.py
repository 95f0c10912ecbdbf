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
    """``(out_axis, in_axis)`` when the weight is grouped and both sides are cut, else None."""
    if groups <= 1 or "out" not in roles or "in" not in roles or "in" not in keep:
        return None
    in_axis = roles.index("in")
    if keep["in"].size != shape[in_axis] * groups:
        return None
    return roles.index("out"), in_axis


def _group_columns(keep: dict[str, np.ndarray], n_out: int, groups: int) -> np.ndarray:
    """(n_out, in/groups) bool: the input columns each filter keeps."""
    block = np.arange(n_out) // (n_out // groups)
    return keep["in"].reshape(groups, -1)[block]


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
        out_axis, in_axis = grouped
        cols = _group_columns(keep, shape[out_axis], groups).astype(np.float32)
        if out_axis > in_axis:
            cols = cols.T
        view = [1] * mask.ndim
        view[min(out_axis, in_axis)], view[max(out_axis, in_axis)] = cols.shape
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
    out_axis, in_axis = grouped
    n_out = keep["out"].size if "out" in keep else array.shape[out_axis]
    cols = _group_columns(keep, n_out, groups)
    if "out" in keep:
        cols = cols[keep["out"]]
    per_row = [np.flatnonzero(c) for c in cols]
    if len({c.size for c in per_row}) > 1:
        raise ValueError(
            "A grouped weight must keep the same number of input channels in every group. "
            f"Received: kept per filter {sorted({c.size for c in per_row})}."
        )
    moved = np.moveaxis(array, (out_axis, in_axis), (0, 1))
    idx = np.stack(per_row) if per_row else np.zeros((0, 0), np.int64)
    picked = moved[np.arange(moved.shape[0])[:, None], idx]
    return np.moveaxis(picked, (0, 1), (out_axis, in_axis))


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
