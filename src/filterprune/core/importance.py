"""Filter importance criteria: one score per filter (slice of a weight along an axis).

* ``L1``: sum of absolute values.
* ``L2``: Euclidean norm.
* ``geometric_median`` (FPGM, He et al. 2019): the sum of Euclidean distances from a
  filter to every other filter of the same tensor. Filters near the geometric median
  (small sums) are the most replaceable, so they score lowest.
* ``taylor`` and ``bn_scale``: score a signal the frontend reads instead of the weight
  (accumulated gradient x weight; the following BatchNorm's scale), handed over as one
  value per filter; see :mod:`filterprune.core.signals`.
* ``coupled_L2``: the sums of squares of every slice that goes with a channel (its
  filters, norm parameters and readers' input columns), each relative to its tensor's
  mean, averaged over those tensors; scored per group by :mod:`filterprune.core.coupled`.
  Its function here, the squared L2 norm, is one tensor's raw share.

Scores are ``float64``. Higher means more important.

Example:
    >>> w = np.array([[1.0, -2.0], [0.0, 0.5], [3.0, 4.0]])
    >>> filter_importance(w, "L1").tolist(), float(filter_importance(w, "L2")[2])
    ([3.0, 0.5, 7.0], 5.0)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._validation import one_of

__all__ = [
    "ImportanceFn",
    "filter_importance",
    "register_importance",
    "get_importance",
    "list_importances",
    "l1_importance",
    "l2_importance",
    "geometric_median_importance",
    "taylor_importance",
    "bn_scale_importance",
    "coupled_l2_importance",
    "normalize",
]

ImportanceFn = Callable[[np.ndarray], np.ndarray]
"""Maps a ``(filters, fan_in)`` float64 matrix to ``(filters,)`` scores."""

_IMPORTANCES: dict[str, ImportanceFn] = {}
_BLOCK_BYTES = 64 * 2**20  # memory cap of one block of the distance matrix


def register_importance(name: str) -> Callable[[ImportanceFn], ImportanceFn]:
    """Decorator adding an importance function under ``name``.

    The function receives the weight flattened to ``(filters, fan_in)`` in float64.

    Raises:
        ValueError: If ``name`` is already registered.
    """

    def decorator(fn: ImportanceFn) -> ImportanceFn:
        if name in _IMPORTANCES:
            raise ValueError(f"Importance {name!r} is already registered ({_IMPORTANCES[name]}).")
        _IMPORTANCES[name] = fn
        return fn

    return decorator


def get_importance(name: str) -> ImportanceFn:
    """The importance function registered under ``name``.

    Raises:
        ConfigError: If unknown; the message lists the known criteria.
    """
    if name not in _IMPORTANCES:
        raise one_of("filter_importance", name, _IMPORTANCES)
    return _IMPORTANCES[name]


def list_importances() -> list[str]:
    """Names of the registered criteria, in registration order."""
    return list(_IMPORTANCES)


@register_importance("L1")
def l1_importance(filters: np.ndarray) -> np.ndarray:
    """Sum of absolute values of each row."""
    return np.abs(filters).sum(axis=1)


@register_importance("L2")
def l2_importance(filters: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row."""
    return np.sqrt(np.square(filters).sum(axis=1))


@register_importance("geometric_median")
def geometric_median_importance(filters: np.ndarray) -> np.ndarray:
    """Sum over ``j`` of ``||f_i - f_j||`` for each row ``i`` (FPGM).

    Uses ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b`` on mean-centred rows (distances do not
    change, rounding error shrinks), in row blocks whose distance matrix stays under
    64 MiB, so 2048 x 4608 filters need about 32 MiB beyond the input.
    """
    n = filters.shape[0]
    centred = filters - filters.mean(axis=0, keepdims=True)
    sq = np.square(centred).sum(axis=1)
    block = max(1, _BLOCK_BYTES // (8 * max(n, 1)))
    scores = np.empty(n, dtype=np.float64)
    for start in range(0, n, block):
        rows = centred[start : start + block]
        d2 = sq[start : start + block, None] + sq[None, :] - 2.0 * (rows @ centred.T)
        np.maximum(d2, 0.0, out=d2)
        d2[np.arange(rows.shape[0]), np.arange(start, start + rows.shape[0])] = 0.0
        scores[start : start + block] = np.sqrt(d2).sum(axis=1)
    return scores


@register_importance("taylor")
def taylor_importance(filters: np.ndarray) -> np.ndarray:
    """First-order Taylor: the frontend's accumulated ``(sum g*w)^2`` per filter, summed."""
    return filters.sum(axis=1)


@register_importance("bn_scale")
def bn_scale_importance(filters: np.ndarray) -> np.ndarray:
    """``|gamma|`` of the BatchNorm after the layer (the frontend hands ``gamma`` over)."""
    return np.abs(filters).sum(axis=1)


@register_importance("coupled_L2")
def coupled_l2_importance(filters: np.ndarray) -> np.ndarray:
    """Sum of squares of each row: one tensor's share of the ``coupled_L2`` score."""
    return np.square(filters).sum(axis=1)


def _as_filters(weight: np.ndarray, axis: int) -> np.ndarray:
    array = np.asarray(weight)
    if array.ndim == 0:
        raise ValueError(f"`weight` must have at least 1 dimension. Received: shape={array.shape}.")
    if not -array.ndim <= axis < array.ndim:
        raise ValueError(
            f"`axis` must be in [{-array.ndim}, {array.ndim}) for a weight of shape "
            f"{array.shape}. Received: axis={axis}."
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"`weight` must hold real numbers. Received: dtype={array.dtype}.")
    moved = np.moveaxis(array, axis, 0)
    return moved.reshape(moved.shape[0], -1).astype(np.float64, copy=False)


def filter_importance(weight: np.ndarray, kind: str, axis: int = 0) -> np.ndarray:
    """One importance score per slice of ``weight`` along ``axis``.

    Args:
        weight: A weight tensor, e.g. a conv kernel ``(out, in, kh, kw)``.
        kind: A registered criterion: ``"L1"``, ``"L2"`` or ``"geometric_median"``.
        axis: The filter (output-channel) axis; 0 for PyTorch convs, -1 for Keras.

    Returns:
        ``float64`` array of shape ``(weight.shape[axis],)``.

    Raises:
        ConfigError: If ``kind`` is not registered.
        ValueError: If ``axis`` is out of range or ``weight`` is a scalar.
        TypeError: If ``weight`` does not hold real numbers.

    Example:
        >>> w = np.zeros((3, 2, 1, 1)); w[:, 0, 0, 0] = [0.0, 1.0, 3.0]
        >>> filter_importance(w, "geometric_median").tolist()  # 0+1+3, 1+0+2, 3+2+0
        [4.0, 3.0, 5.0]
    """
    fn = get_importance(kind)
    return np.asarray(fn(_as_filters(weight, axis)), dtype=np.float64)


def normalize(scores: np.ndarray, by: str = "max") -> np.ndarray:
    """Scores divided by their largest magnitude (``by="mean"``: their mean magnitude),
    for ranking across tensors. By the mean, one strong filter does not lower the rest.

    All-zero (or empty) input gives zeros (or an empty array) rather than NaN.

    Example:
        >>> normalize(np.array([1.0, 4.0, 2.0])).tolist(), normalize(np.zeros(2)).tolist()
        ([0.25, 1.0, 0.5], [0.0, 0.0])
        >>> normalize(np.array([1.0, 4.0, 1.0]), by="mean").tolist()
        [0.5, 2.0, 0.5]
    """
    array = np.asarray(scores, dtype=np.float64)
    if array.size == 0:
        return array.copy()
    magnitude = np.abs(array)
    peak = float(np.max(magnitude) if by == "max" else np.mean(magnitude))
    if peak == 0.0:
        return np.zeros_like(array)
    return array / peak
