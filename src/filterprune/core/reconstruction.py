"""What the frontends' weight refits (``params.reconstruction_after_mask_change``) share:
how many samples they take and the ridge (PyTorch solves in torch on the model's device,
Keras with :func:`ridge_solve`). See :mod:`filterprune.torch.reconstruct`."""

from __future__ import annotations

import numpy as np

__all__ = ["LINEAR_ROWS", "MAX_FAN_IN", "POSITIONS", "RIDGE", "ridge_solve"]

RIDGE = 1e-3  # times the mean diagonal of X^T X: keeps the solve well posed
POSITIONS = 16  # output positions sampled per image for a conv
LINEAR_ROWS = 1024  # rows sampled per batch for a linear layer (tokens, say)
MAX_FAN_IN = 8192  # a wider layer's normal equations would take gigabytes: left as it is


def ridge_solve(gram: np.ndarray, cross: np.ndarray) -> np.ndarray | None:
    """``W`` minimising ``|XW - Y|^2 + ridge |W|^2`` from ``gram = X^T X`` and
    ``cross = X^T Y`` (``None`` when ``X`` is all zero)."""
    scale = float(gram.diagonal().mean())
    if scale == 0.0:
        return None
    return np.linalg.solve(gram + RIDGE * scale * np.eye(len(gram)), cross)
