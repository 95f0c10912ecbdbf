"""What the frontends' weight refits (``params.reconstruction_after_mask_change``) share:
how many samples they take, the ridge (PyTorch solves in torch on the model's device,
Keras with :func:`ridge_solve`) and the check on held-out rows. See
:mod:`filterprune.torch.reconstruct`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["HELD_OUT", "LINEAR_ROWS", "MAX_FAN_IN", "ONE_PASS_BYTES", "POSITIONS", "RIDGE",
           "ROWS_PER_UNKNOWN", "NormalEquations", "held_out", "positions_per_image",
           "ridge_solve", "solve_checked", "squared_error"]  # fmt: skip

RIDGE = 1e-3  # times the mean diagonal of X^T X: keeps the solve well posed
POSITIONS = 16  # output positions sampled per image for a conv, at least
ROWS_PER_UNKNOWN = 2  # a conv's positions per image grow until its rows reach this ratio
LINEAR_ROWS = 1024  # rows sampled per batch for a linear layer (tokens, say)
MAX_FAN_IN = 8192  # a wider layer's normal equations would take gigabytes: left as it is
ONE_PASS_BYTES = 2**30  # activations up to this size: every layer refit in one joined pass
HELD_OUT = 8  # every 8th image (row, for linear layers) is kept out of the deciding fit


def positions_per_image(unknowns: int, images: int, spatial: int) -> int:
    """Output positions to sample per image for a conv with ``unknowns`` weights per
    output: ``POSITIONS``, or enough for ``ROWS_PER_UNKNOWN`` rows per unknown over
    ``images`` images, and never more than the ``spatial`` positions there are.

    With few images (a small ``num_reconstruction_samples``) a wide conv would otherwise
    get fewer rows than unknowns and be left unrefit."""
    wanted = math.ceil(ROWS_PER_UNKNOWN * unknowns / max(images, 1))
    return max(1, min(spatial, max(POSITIONS, wanted)))


def squared_error(w: Any, gram: Any, cross: Any, norm: float) -> float:
    """``|XW - Y|^2`` from ``gram = X^T X``, ``cross = X^T Y`` and ``norm = |Y|^2``
    (numpy arrays or torch tensors)."""
    return float((w * (gram @ w)).sum() - 2 * (w * cross).sum()) + norm


def ridge_solve(gram: np.ndarray, cross: np.ndarray) -> np.ndarray | None:
    """``W`` minimising ``|XW - Y|^2 + ridge |W|^2`` from ``gram = X^T X`` and
    ``cross = X^T Y`` (``None`` when ``X`` is all zero)."""
    scale = float(gram.diagonal().mean())
    if scale == 0.0:
        return None
    return np.linalg.solve(gram + RIDGE * scale * np.eye(len(gram)), cross)


def held_out(units: Any, start: int) -> Any:
    """Which rows the check holds out: those whose unit (an image for a conv, a row for a
    linear layer), counted from ``start`` over the whole recording, is every
    ``HELD_OUT``-th. Whole images go out, so the check never sees a fitted image."""
    return (units + start) % HELD_OUT == HELD_OUT - 1


class NormalEquations:
    """``X^T X``, ``X^T Y``, ``|Y|^2`` and the current weights' ``|X W0 - Y|^2``, summed
    over batches (numpy arrays or torch tensors; ``old`` is ``W0`` as ``(fan_in, out)``)."""

    def __init__(self, old: Any) -> None:
        self.old = old
        self.gram: Any = None
        self.cross: Any = None
        self.norm = self.before = 0.0
        self.rows = 0

    def add(self, a: Any, b: Any) -> None:
        if len(a) == 0:
            return
        gram, cross = a.T @ a, a.T @ b
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross
        self.before += float(((a @ self.old - b) ** 2).sum())
        self.norm += float((b**2).sum())
        self.rows += len(a)

    def __add__(self, other: NormalEquations) -> NormalEquations:
        total = NormalEquations(self.old)
        for part in (self, other):
            if part.rows:
                total.gram = part.gram if total.gram is None else total.gram + part.gram
                total.cross = part.cross if total.cross is None else total.cross + part.cross
                total.norm += part.norm
                total.before += part.before
                total.rows += part.rows
        return total


def solve_checked(fit: NormalEquations, held: NormalEquations,
                  solve: Callable[[Any, Any], Any | None],
                  ) -> tuple[Any | None, float, float] | None:  # fmt: skip
    """The refit on every row, if a fit without the ``held`` rows predicts them better
    than the current weights do. When nothing was held out, or the rest alone would not
    determine the weights (fewer rows than unknowns), the fitted rows decide.

    Returns:
        ``(weights or None to keep the current ones, relative error before, after)`` on
        all rows, or ``None`` when there is nothing to fit (all-zero inputs or targets).
    """
    total = fit + held
    if total.rows == 0 or total.norm == 0.0:
        return None
    if held.rows and fit.rows and fit.rows >= len(fit.gram) and held.norm > 0.0:
        trial = solve(fit.gram, fit.cross)
        if trial is None:
            return None
        if squared_error(trial, held.gram, held.cross, held.norm) >= held.before:
            return None, total.before / total.norm, total.before / total.norm
    solved = solve(total.gram, total.cross)
    if solved is None:
        return None
    after = squared_error(solved, total.gram, total.cross, total.norm)
    if after >= total.before:
        return None, total.before / total.norm, total.before / total.norm
    return solved, total.before / total.norm, max(after, 0.0) / total.norm
