"""Training and validation loaders for ``filterprune prune --data``.

``--data`` is either a folder in the ImageFolder layout, with one subfolder per class
under ``train/`` and ``val/``::

    DIR/train/cat/001.png  DIR/train/dog/002.jpg  ...
    DIR/val/cat/101.png    DIR/val/dog/102.jpg    ...

or ``fashion-mnist`` (the Debian package ``dataset-fashion-mnist``; 28x28 grey images).
Nothing is downloaded. The training loader's order depends only on the seed and the
epoch (:meth:`Data.shuffle_for`), so a resumed run sees the batches an uninterrupted
run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..cli_common import UsageError

__all__ = ["Data", "open_data", "FASHION_MNIST"]

FASHION_MNIST = "fashion-mnist"
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Data:
    """Loaders and facts about a training set.

    Attributes:
        train: Shuffled training batches ``(images, labels)``.
        val: Validation batches in a fixed order.
        classes: Class names, indexed by label.
        sample_size: One input's shape with batch 1, e.g. ``[1, 3, 224, 224]``.
    """

    train: DataLoader
    val: DataLoader
    classes: list[str]
    sample_size: list[int]
    seed: int = 0

    def shuffle_for(self, epoch: int) -> None:
        """Make the training order that of ``epoch`` (the same on every run)."""
        self.train.generator.manual_seed(self.seed * 1000003 + epoch)


def open_data(data: str, sample_size: list[int] | None, *, batch_size: int = 64,
              workers: int = 0, seed: int = 0, train_limit: int | None = None,
              val_limit: int | None = None) -> Data:  # fmt: skip
    """The loaders of ``--data`` (an ImageFolder root or ``fashion-mnist``).

    Args:
        sample_size: The model's input shape ``[1, C, H, W]``: images are resized to
            ``H x W`` and given ``C`` channels (1: grey, 3: RGB). Default: 28x28 grey
            for Fashion-MNIST, 224x224 RGB for a folder.
        train_limit: Use only this many training images, drawn at random (``seed``).
        val_limit: Use only this many validation images, drawn likewise.

    Raises:
        UsageError: For a folder without ``train/`` and ``val/`` class folders, class
            folders that differ between the two, or a size Fashion-MNIST cannot give.
    """
    if data == FASHION_MNIST:
        train, val, classes, size = _fashion_mnist(sample_size)
    else:
        train, val, classes, size = _image_folder(Path(data), sample_size)
    train, val = _limited(train, train_limit, seed), _limited(val, val_limit, seed)
    generator = torch.Generator().manual_seed(seed)
    return Data(
        train=DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator,
                         num_workers=workers, drop_last=len(train) > batch_size),
        val=DataLoader(val, batch_size=batch_size, shuffle=False, num_workers=workers),
        classes=classes, sample_size=size, seed=seed,
    )  # fmt: skip


def _limited(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """``limit`` samples drawn at random (seeded), in their order: an image folder lists
    its classes one after another, so the first ones would be one class."""
    if limit is None or limit >= len(dataset):
        return dataset
    picked = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, sorted(picked[:limit].tolist()))


def _fashion_mnist(sample_size: list[int] | None):
    from ..examples._training import MEAN, STD
    from . import CLASSES, load_fashion_mnist

    if sample_size and list(sample_size[1:]) != [1, 28, 28]:
        raise UsageError(
            "--data fashion-mnist gives 1x28x28 grey images; the input size must be "
            f"1,1,28,28. Received: {','.join(map(str, sample_size))}. Drop --input-size or "
            "set input_info.sample_size to [1, 1, 28, 28].")
    sets = []
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(split)
        x = torch.from_numpy(images).float().div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1)
        sets.append(torch.utils.data.TensorDataset(x, torch.from_numpy(labels)))
    return sets[0], sets[1], list(CLASSES), [1, 1, 28, 28]


def _image_folder(root: Path, sample_size: list[int] | None):
    from torchvision import datasets, transforms

    size = list(sample_size or [1, 3, 224, 224])
    if len(size) != 4 or size[1] not in (1, 3):
        raise UsageError(
            "An image folder needs an input size of 1,C,H,W with C = 1 (grey) or 3 (RGB). "
            f"Received: {','.join(map(str, size))}. Set --input-size.")
    channels, height, width = size[1:]
    mean, std = (_IMAGENET_MEAN, _IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
    steps = [transforms.Grayscale(1)] if channels == 1 else [transforms.Lambda(_rgb)]
    pipeline = transforms.Compose([*steps, transforms.Resize((height, width)),
                                   transforms.ToTensor(), transforms.Normalize(mean, std)])
    found = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
            raise UsageError(
                f"--data {root} must hold train/ and val/ folders with one subfolder per "
                f"class (the ImageFolder layout), or be 'fashion-mnist'. Missing or empty: "
                f"{folder}.")
        try:
            found[split] = datasets.ImageFolder(str(folder), transform=pipeline,
                                                loader=_load_image)  # fmt: skip
        except (FileNotFoundError, OSError) as err:
            raise UsageError(f"--data {folder}: {err}. Each class folder needs images "
                             "(.png, .jpg, ...).") from None
    if found["train"].classes != found["val"].classes:
        raise UsageError(
            f"--data {root}: train/ and val/ must have the same class folders. Received: "
            f"train {found['train'].classes}, val {found['val'].classes}.")
    return found["train"], found["val"], list(found["train"].classes), size


def _load_image(path: str):
    """The image at ``path`` (as torchvision's loader reads it); an unreadable one is
    named, so the error says which file to remove or replace."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except OSError as err:
        raise OSError(f"{path} cannot be read as an image ({err}); remove or replace "
                      "it") from err  # fmt: skip


def _rgb(image):
    return image.convert("RGB")
