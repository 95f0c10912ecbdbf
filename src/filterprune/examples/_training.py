"""Training helpers shared by the Fashion-MNIST examples (torch, CPU only).

This module holds the infrastructure of the demos: data loaders, a small but real
CNN, one-epoch training and evaluation loops, latency measurement and a cached
baseline. It never downloads anything: the data comes from
:func:`filterprune.datasets.load_fashion_mnist`.

Example:
    >>> train_loader, test_loader = fashion_mnist_loaders(train_limit=512, test_limit=256)
    >>> model = SmallCNN()
    >>> tuple(model(next(iter(test_loader))[0]).shape)
    (128, 10)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from filterprune._atomic import atomic_torch_save
from filterprune.datasets import load_fashion_mnist

__all__ = [
    "MEAN",
    "STD",
    "BaselineResult",
    "ResidualBlock",
    "SmallCNN",
    "baseline",
    "compare_latency",
    "evaluate",
    "fashion_mnist_loaders",
    "limit_threads",
    "measure_latency",
    "train_one_epoch",
]

MEAN = 0.2860
"""Mean pixel value of the Fashion-MNIST training images (in [0, 1])."""
STD = 0.3530
"""Standard deviation of the Fashion-MNIST training pixels (in [0, 1])."""
MAX_THREADS = 2
SHIPPED = Path(__file__).parent / "baselines"
"""Baselines shipped with the package (``scripts/train_demo_baseline.py`` wrote them)."""
_CACHE_FORMAT = 2  # bump when SmallCNN or the training recipe changes

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
"""Anything yielding ``(images, labels)`` batches, e.g. a ``DataLoader``."""


def limit_threads(max_threads: int = MAX_THREADS) -> int:
    """Cap torch's intra-op threads at ``max_threads`` (and at the CPU count).

    Args:
        max_threads: Largest number of threads to use.

    Returns:
        The number of threads now in use.
    """
    threads = max(1, min(max_threads, os.cpu_count() or 1, torch.get_num_threads()))
    torch.set_num_threads(threads)
    return threads


# --------------------------------------------------------------------------- data


def fashion_mnist_loaders(
    batch_size: int = 128,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Build shuffled train and ordered test loaders over Fashion-MNIST.

    Images become float tensors of shape ``[N, 1, 28, 28]`` normalised with
    :data:`MEAN` and :data:`STD`; labels are ``int64``.

    Args:
        batch_size: Images per batch (both loaders).
        train_limit: Keep only the first ``train_limit`` training images (all when None).
        test_limit: Keep only the first ``test_limit`` test images (all when None).
        seed: Seed of the training loader's shuffling.

    Returns:
        ``(train_loader, test_loader)``.

    Raises:
        ValueError: ``batch_size`` or a limit is not a positive integer.
        FileNotFoundError: The dataset is not installed.
    """
    _check_positive("batch_size", batch_size)
    for name, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None:
            _check_positive(name, limit)
    train = _tensor_dataset("train", train_limit)
    test = _tensor_dataset("test", test_limit)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator)
    test_loader = DataLoader(test, batch_size=batch_size, shuffle=False)
    return train_loader, test_loader


def _tensor_dataset(split: str, limit: int | None) -> TensorDataset:
    images, labels = load_fashion_mnist(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images).float().div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1)
    return TensorDataset(x, torch.from_numpy(labels))


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int. Received: {name}={value!r}.")
    if value < 1:
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}.")


# --------------------------------------------------------------------------- model


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity shortcut: ``relu(bn2(conv2(...)) + x)``.

    The add couples the block's output channels to its input channels, which is
    exactly what a filter pruner must respect.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + x)


class SmallCNN(nn.Module):
    """A small residual CNN for 28x28 grey images (about 168k parameters at ``width=32``).

    Layout (``w = width``), spatial size in brackets::

        stem   conv 1->w 3x3 stride 2 + BN + ReLU   [14x14]
        down   conv w->2w 3x3 + BN + ReLU           [14x14]
        pool   max-pool 2x2                         [7x7]
        block  ResidualBlock(2w)                    [7x7]
        head   conv 2w->4w 3x3 + BN + ReLU          [7x7]
        global average pool, flatten, Linear 4w->num_classes

    The forward pass has no data-dependent control flow, so ``torch.fx.symbolic_trace``
    works on it.

    Args:
        num_classes: Number of output logits.
        width: Channels of the stem; later stages use 2x and 4x.

    Example:
        >>> model = SmallCNN()
        >>> tuple(model(torch.zeros(2, 1, 28, 28)).shape)
        (2, 10)
    """

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        _check_positive("num_classes", num_classes)
        _check_positive("width", width)
        # The stride sits in the stem (never pruned by default) so that the conv feeding
        # the residual block stays prunable without prune_downsample_convs.
        self.stem = _conv_bn_relu(1, width, stride=2)
        self.down = _conv_bn_relu(width, 2 * width)
        self.pool = nn.MaxPool2d(2)
        self.block = ResidualBlock(2 * width)
        self.head = _conv_bn_relu(2 * width, 4 * width)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.down(self.stem(x)))
        x = self.head(self.block(x))
        return self.fc(self.flatten(self.gap(x)))


# --------------------------------------------------------------------------- loops


def _progress(iterable: Iterable, desc: str) -> Iterator:
    """Wrap ``iterable`` in a tqdm bar on a TTY outside CI; plain iteration otherwise."""
    disable = bool(os.environ.get("CI")) or not sys.stderr.isatty()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional (extra "progress")
        return iter(iterable)
    return tqdm(iterable, desc=desc, leave=False, disable=disable, dynamic_ncols=True)


def train_one_epoch(
    model: nn.Module,
    loader: Batches,
    optimizer: torch.optim.Optimizer,
    *,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    desc: str = "train",
) -> dict[str, float]:
    """Train ``model`` for one pass over ``loader`` with cross-entropy.

    Args:
        model: The network; it is put in training mode.
        loader: Yields ``(images, labels)`` batches.
        optimizer: Optimiser over the model's parameters.
        extra_loss: Called as ``extra_loss(model)`` each step; its scalar result is added
            to the cross-entropy (e.g. an L1 penalty on BN scales for sparsity training).
        on_step: Called as ``on_step(step, loss)`` after each ``optimizer.step()``, with
            the 0-based step index and the step's total loss (e.g. to step a learning
            rate scheduler or to re-apply pruning masks).
        desc: Label of the progress bar.

    Returns:
        ``{"loss": mean loss, "accuracy": training accuracy, "seconds": wall time}``.
    """
    model.train()
    start = time.perf_counter()
    total_loss, correct, seen = 0.0, 0, 0
    bar = _progress(loader, desc)
    for step, (images, labels) in enumerate(bar):
        optimizer.zero_grad(set_to_none=True)
        logits = model(images)
        loss = nn.functional.cross_entropy(logits, labels)
        if extra_loss is not None:
            loss = loss + extra_loss(model)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        total_loss += value * labels.numel()
        correct += int((logits.detach().argmax(1) == labels).sum())
        seen += labels.numel()
        if on_step is not None:
            on_step(step, value)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    if hasattr(bar, "close"):
        bar.close()
    return {
        "loss": total_loss / max(seen, 1),
        "accuracy": correct / max(seen, 1),
        "seconds": time.perf_counter() - start,
    }


def evaluate(model: nn.Module, loader: Batches) -> float:
    """Return the top-1 accuracy of ``model`` on ``loader`` (in [0, 1]).

    The model runs in eval mode under ``torch.inference_mode``; its previous
    training mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    correct, seen = 0, 0
    with torch.inference_mode():
        for images, labels in loader:
            correct += int((model(images).argmax(1) == labels).sum())
            seen += labels.numel()
    model.train(was_training)
    return correct / max(seen, 1)


# --------------------------------------------------------------------------- latency


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads is not None:
        _check_positive("threads", threads)
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _time_once(model: nn.Module, sample: torch.Tensor) -> float:
    start = time.perf_counter()
    model(sample)
    return (time.perf_counter() - start) * 1000.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def measure_latency(
    model: nn.Module,
    sample: torch.Tensor,
    *,
    repeats: int = 50,
    warmup: int = 10,
    threads: int | None = None,
) -> dict[str, float]:
    """Time ``model(sample)`` in eval mode under ``torch.inference_mode``.

    Args:
        model: The network (its training mode is restored afterwards).
        sample: One input batch.
        repeats: Timed calls.
        warmup: Untimed calls first.
        threads: Torch threads during the measurement (unchanged when None).

    Returns:
        ``{"median_ms": ..., "p90_ms": ...}``.
    """
    _check_positive("repeats", repeats)
    was_training = model.training
    model.eval()
    with _threads(threads), torch.inference_mode():
        for _ in range(warmup):
            model(sample)
        times = [_time_once(model, sample) for _ in range(repeats)]
    model.train(was_training)
    return {"median_ms": statistics.median(times), "p90_ms": _percentile(times, 0.9)}


def compare_latency(
    model_a: nn.Module,
    model_b: nn.Module,
    sample: torch.Tensor,
    *,
    rounds: int = 30,
    warmup: int = 5,
    threads: int | None = None,
) -> dict[str, float]:
    """Time two models interleaved in one run, so machine noise hits both alike.

    Each round times A then B, or B then A on odd rounds, so neither always runs
    on a warmer cache.

    Args:
        model_a: Reference model (e.g. the dense one).
        model_b: Model to compare (e.g. the pruned one).
        sample: One input batch, fed to both.
        rounds: Timed calls per model.
        warmup: Untimed calls per model first.
        threads: Torch threads during the measurement (unchanged when None).

    Returns:
        ``{"a_median_ms", "b_median_ms", "ratio"}`` where ``ratio`` is
        ``b_median_ms / a_median_ms`` (below 1 means B is faster).
    """
    _check_positive("rounds", rounds)
    modes = (model_a.training, model_b.training)
    model_a.eval()
    model_b.eval()
    times_a: list[float] = []
    times_b: list[float] = []
    with _threads(threads), torch.inference_mode():
        for _ in range(warmup):
            model_a(sample)
            model_b(sample)
        for index in range(rounds):
            if index % 2 == 0:
                times_a.append(_time_once(model_a, sample))
                times_b.append(_time_once(model_b, sample))
            else:
                times_b.append(_time_once(model_b, sample))
                times_a.append(_time_once(model_a, sample))
    model_a.train(modes[0])
    model_b.train(modes[1])
    a_median, b_median = statistics.median(times_a), statistics.median(times_b)
    return {"a_median_ms": a_median, "b_median_ms": b_median, "ratio": b_median / a_median}


# --------------------------------------------------------------------------- baseline


@dataclass(frozen=True)
class BaselineResult:
    """A trained :class:`SmallCNN` and where it came from."""

    model: SmallCNN
    accuracy: float
    """Test accuracy (in [0, 1]) measured right after training."""
    path: Path
    """The cache file holding the state_dict."""
    from_cache: bool
    train_seconds: float
    """Wall time of the original training run (also when loaded from the cache)."""
    shipped: bool = False
    """Loaded from :data:`SHIPPED` (half-precision weights of the same recipe)."""


def baseline(
    cache_dir: str | os.PathLike[str] = ".cache",
    epochs: int = 2,
    *,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    width: int = 32,
    seed: int = 0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    verbose: bool = True,
) -> BaselineResult:
    """Train :class:`SmallCNN` on Fashion-MNIST once and cache it under ``cache_dir``.

    The cache file name carries a hash of every hyperparameter, so changing one
    retrains; the file is written atomically (a temporary file renamed into place). A file
    of that name in :data:`SHIPPED` stands in for a missing cache.
    Training uses AdamW with a one-cycle learning-rate schedule, ``torch.manual_seed(seed)``
    and at most two CPU threads.

    Args:
        cache_dir: Folder of the cache (created when missing).
        epochs: Passes over the training set.
        batch_size: Training batch size.
        lr: Peak learning rate of the one-cycle schedule.
        weight_decay: AdamW weight decay.
        width: :class:`SmallCNN` width.
        seed: Seed of the weights and of the shuffling.
        train_limit: Train on the first ``train_limit`` images only (all when None).
        test_limit: Measure the accuracy on the first ``test_limit`` test images only
            (all when None).
        verbose: Print one line per epoch and where the cache is.

    Returns:
        A :class:`BaselineResult`; its model is in eval mode.
    """
    _check_positive("epochs", epochs)
    config = {
        "format": _CACHE_FORMAT,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "width": width,
        "seed": seed,
        "train_limit": train_limit,
        "test_limit": test_limit,
    }
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(cache_dir) / f"smallcnn_w{width}_e{epochs}_{digest}.pt"
    limit_threads()
    model = SmallCNN(width=width)
    for candidate in (path, SHIPPED / path.name):
        if candidate.is_file():
            return _load_baseline(model, candidate, shipped=candidate != path, verbose=verbose)
    accuracy, seconds = _train_baseline(model, config, verbose)
    payload = {"state_dict": model.state_dict(), "accuracy": accuracy,
               "train_seconds": seconds, "config": config}  # fmt: skip
    atomic_torch_save(path, payload)
    if verbose:
        print(f"baseline: saved {path}")
    return BaselineResult(model, accuracy, path, False, seconds)


def _load_baseline(model: SmallCNN, path: Path, shipped: bool, verbose: bool) -> BaselineResult:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(payload["state_dict"])  # half-precision weights become float32
    model.eval()
    if verbose:
        print(f"baseline: loaded {path} (test accuracy {payload['accuracy']:.4f})")
    return BaselineResult(model, payload["accuracy"], path, True, payload["train_seconds"],
                          shipped)  # fmt: skip


def _train_baseline(model: SmallCNN, config: dict, verbose: bool) -> tuple[float, float]:
    torch.manual_seed(config["seed"])
    model.load_state_dict(SmallCNN(width=config["width"]).state_dict())  # seeded init
    train_loader, test_loader = fashion_mnist_loaders(
        config["batch_size"],
        train_limit=config["train_limit"],
        test_limit=config["test_limit"],
        seed=config["seed"],
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config["lr"], total_steps=config["epochs"] * len(train_loader)
    )
    start = time.perf_counter()
    for epoch in range(config["epochs"]):
        stats = train_one_epoch(
            model, train_loader, optimizer,
            on_step=lambda _step, _loss: scheduler.step(),
            desc=f"baseline {epoch + 1}/{config['epochs']}",
        )
        if verbose:
            print(f"baseline epoch {epoch + 1}/{config['epochs']}: loss {stats['loss']:.4f}, "
                  f"train acc {stats['accuracy']:.4f}, {stats['seconds']:.1f} s", flush=True)
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, test_loader)
    model.eval()
    if verbose:
        print(f"baseline: test accuracy {accuracy:.4f} after {seconds:.1f} s of training")
    return accuracy, seconds
