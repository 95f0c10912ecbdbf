"""Small models, a generated ImageFolder and bad inputs for the command-line tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from filterprune.examples._training import SmallCNN

CLASSES = ("red", "green", "blue")
TINY = "cli_helpers:tiny_cnn"  # 3 classes, any H x W, grey or RGB by --input-size
RUN_ARGS = ["--input-size", "1,3,16,16", "--batch-size", "8", "--bench-seconds", "0",
            "--device", "cpu"]  # fmt: skip


def tiny_cnn() -> nn.Module:
    """A residual CNN with 3 input channels and 3 classes (about 6k parameters)."""
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, width=8)
    model.stem[0] = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    return model


def tiny_cnn_dropout() -> nn.Module:
    """``tiny_cnn`` with dropout before its classifier: training draws random numbers."""
    model = tiny_cnn()
    model.fc = nn.Sequential(nn.Dropout(0.5), model.fc)
    return model


def two_outputs() -> nn.Module:
    model = tiny_cnn()
    model.fc = nn.Linear(model.fc.in_features, 2)
    return model


def half_model() -> nn.Module:
    return tiny_cnn().half()


def bf16_model() -> nn.Module:
    return tiny_cnn().to(torch.bfloat16)


def meta_model() -> nn.Module:
    with torch.device("meta"):
        return tiny_cnn()


def not_a_model() -> int:
    return 3


def broken_factory() -> nn.Module:
    raise RuntimeError("the factory needs a config file")


class TokenNet(nn.Module):
    """Takes integer token ids: an Embedding first."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.conv = nn.Conv1d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.embed(x).transpose(1, 2))


def write_image_folder(root: Path, train: int = 12, val: int = 4, size: int = 16) -> Path:
    """``root/{train,val}/{red,green,blue}/*.png``: noisy images tinted by class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
                pixels[..., label] += 150
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


class _Marker:
    """Unpickling this creates a file: a stand-in for code a crafted checkpoint runs."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A torch.save file whose unpickling would create ``marker``."""
    payload = {"state_dict": {}, "compression_state": {}, "evil": _Marker(str(marker))}
    torch.save(payload, path, pickle_module=pickle)
    return path
