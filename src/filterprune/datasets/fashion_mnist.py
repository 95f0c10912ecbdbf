"""Read Fashion-MNIST from its gzipped IDX files with numpy only.

The files come from the Debian package ``dataset-fashion-mnist``, which installs
them under ``/usr/share/datasets/fashion-mnist``. This module never downloads.

Example:
    >>> images, labels = load_fashion_mnist("test")  # doctest: +SKIP
    >>> images.shape, images.dtype, labels.dtype  # doctest: +SKIP
    ((10000, 28, 28), dtype('uint8'), dtype('int64'))
    >>> CLASSES[0]
    'T-shirt/top'
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["CLASSES", "DEFAULT_ROOT", "ENV_VAR", "load_fashion_mnist"]

CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Class names, indexed by label."""

ENV_VAR = "FILTERPRUNE_FASHION_MNIST"
"""Environment variable naming the folder that holds the IDX files."""

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the files."""

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
_SIDE = 28
_INSTALL_HINT = "Install it with `apt-get install -y dataset-fashion-mnist` (or run `make data`)"


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of Fashion-MNIST.

    The folder is, in order: ``root`` when given, else the environment variable
    ``FILTERPRUNE_FASHION_MNIST`` when set, else ``/usr/share/datasets/fashion-mnist``.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        root: Folder holding the four ``*-ubyte.gz`` files.

    Returns:
        ``(images, labels)``: ``images`` is a ``uint8`` array of shape ``[N, 28, 28]``,
        ``labels`` an ``int64`` array of shape ``[N]`` with values in ``0..9``
        (see :data:`CLASSES`).

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"test"``, or a file is not a valid
            Fashion-MNIST IDX file.
        FileNotFoundError: A file is missing; the message names it and says how to
            install the data.

    Example:
        >>> images, labels = load_fashion_mnist("test")  # doctest: +SKIP
        >>> int(labels.max())  # doctest: +SKIP
        9
    """
    if split not in _FILES:
        raise ValueError(f"`split` must be one of {sorted(_FILES)}. Received: split={split!r}.")
    images_name, labels_name, count = _FILES[split]
    folder = _resolve_root(root)
    images = _read_idx(folder / images_name, _IMAGES_MAGIC, (count, _SIDE, _SIDE))
    labels = _read_idx(folder / labels_name, _LABELS_MAGIC, (count,)).astype(np.int64)
    if labels.max(initial=0) >= len(CLASSES):
        raise ValueError(
            f"{folder / labels_name} must hold labels in [0, {len(CLASSES)}). "
            f"Received: a label {int(labels.max())}."
        )
    return images, labels


def _resolve_root(root: str | os.PathLike[str] | None) -> Path:
    if root is not None:
        return Path(root)
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        return Path(from_env)
    return DEFAULT_ROOT


def _read_idx(path: Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """Read a gzipped IDX file and check its magic number and dimensions."""
    if not path.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST file not found: {path}. {_INSTALL_HINT}, "
            f"or point {ENV_VAR} at a folder holding the *-ubyte.gz files."
        )
    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path} must be a gzip file. Received: unreadable data ({exc}).") from exc
    header_size = 4 * (1 + len(shape))
    if len(data) < header_size:
        raise ValueError(
            f"{path} must start with a {header_size}-byte IDX header. "
            f"Received: {len(data)} bytes."
        )
    header = np.frombuffer(data, dtype=">u4", count=1 + len(shape))
    if int(header[0]) != magic:
        raise ValueError(
            f"{path} must have IDX magic number {magic:#010x}. Received: {int(header[0]):#010x}."
        )
    dims = tuple(int(d) for d in header[1:])
    if dims != shape:
        raise ValueError(f"{path} must hold an array of shape {shape}. Received: {dims}.")
    expected = header_size + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(
            f"{path} must be {expected} bytes once decompressed. Received: {len(data)} bytes."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape).copy()
