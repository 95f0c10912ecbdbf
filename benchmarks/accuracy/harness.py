"""Shared pieces of the accuracy benchmark: data, training, evaluation, one FLOPs counter.

Every contender gets the same data split, augmentation, optimizer, learning-rate schedule
and data order; only what it does to the model differs.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from filterprune.datasets.fashion_mnist import load_fashion_mnist
from filterprune.testing.cifar_nets import MobileNetV2Small, ResNet20

MEAN, STD = 0.2860, 0.3530
VAL_SIZE = 5000
CACHE = Path(__file__).parent / "cache"
# Baselines trained once and committed, so every machine fine-tunes the same model: float
# kernels differ between CPUs, and a baseline retrained elsewhere is another model.
SHIPPED = Path(__file__).parent / "baselines"
# ``walltime.py --layout``: fine-tune every contender's model in this memory layout
LAYOUT = "FILTERPRUNE_BENCH_LAYOUT"
MODELS = {"resnet20": ResNet20, "mobilenetv2": MobileNetV2Small}


@dataclass(frozen=True)
class Budget:
    """Epochs and data sizes of one run of the grid (the issue's full budget by default)."""

    baseline_epochs: int = 6
    finetune_epochs: int = 4
    train_limit: int | None = None  # training images used (all 55,000 when None)
    test_limit: int | None = None
    batch_size: int = 128
    bn_samples: int = 2048

    @property
    def tag(self) -> str:
        full = self == Budget()
        return "full" if full else (f"smoke-b{self.baseline_epochs}-f{self.finetune_epochs}"
                                    f"-n{self.train_limit}-t{self.test_limit}")  # fmt: skip


def default_entries(target: float, bn_samples: int = 2048) -> list[dict]:
    """``ours-default``'s compression entries (the NNCF config format), which the NNCF
    peers run too: geometric median, exponential schedule to ``target`` in two steps."""
    return [{"algorithm": "filter_pruning", "pruning_init": 0.0,
             "params": {"schedule": "exponential", "pruning_flops_target": target,
                        "pruning_steps": 2, "filter_importance": "geometric_median",
                        "prune_first_conv": True, "prune_downsample_convs": True},
             "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": bn_samples}}}]


def _tensors(split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_fashion_mnist(split)
    x = torch.from_numpy(images).float().div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1)
    y = torch.from_numpy(labels)
    return (x[:limit], y[:limit]) if limit else (x, y)


def splits(budget: Budget) -> dict[str, TensorDataset]:
    """Train (55k, or ``train_limit``), validation (5k held out of train), test."""
    x, y = _tensors("train")
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1234))
    val, train = order[:VAL_SIZE], order[VAL_SIZE:]
    if budget.train_limit:
        train = train[: budget.train_limit]
    tx, ty = _tensors("test", budget.test_limit)
    return {"train": TensorDataset(x[train], y[train]), "val": TensorDataset(x[val], y[val]),
            "test": TensorDataset(tx, ty)}  # fmt: skip


def loader(data: TensorDataset, budget: Budget, seed: int | None) -> DataLoader:
    """Shuffled in a fixed order for ``seed``; ordered when ``seed`` is None."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(data, batch_size=budget.batch_size, shuffle=seed is not None, generator=gen)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop (pad 2) and horizontal flip, per image."""
    n = x.shape[0]
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    dx = torch.randint(0, 5, (n,), generator=gen)
    dy = torch.randint(0, 5, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(28)[None, :])[:, None, :, None].expand(n, 1, 28, 32)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(28)[None, :])[:, None, None, :].expand(n, 1, 28, 28)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def sgd(model: nn.Module, lr: float, steps: int):
    """SGD (nesterov, momentum 0.9, weight decay 5e-4) and a cosine schedule per step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)  # fmt: skip
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return opt, sched


def train_epoch(model, data_loader, opt, sched, gen, extra_loss=None, on_step=None) -> float:
    model.train()
    total, count = 0.0, 0
    for x, y in data_loader:
        loss = nn.functional.cross_entropy(model(augment(x, gen)), y)
        if extra_loss is not None:
            loss = loss + extra_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step()
        total, count = total + loss.item() * len(y), count + len(y)
    return total / max(count, 1)


def finetune(model, data, budget: Budget, seed: int, extra_loss=None, on_step=None,
             on_epoch=None) -> float:  # fmt: skip
    """The fine-tuning every contender gets; the seconds it took.

    ``on_epoch(epoch, opt, sched)`` runs at the start of each epoch and returns the
    optimizer and scheduler to go on with (new ones where it replaced parameters).
    """
    train = loader(data["train"], budget, seed=seed)
    opt, sched = sgd(model, 0.01, budget.finetune_epochs * len(train))
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(budget.finetune_epochs):
        if on_epoch is not None:
            opt, sched = on_epoch(epoch, opt, sched)
        if os.environ.get(LAYOUT) == "channels_last":  # a control: every contender alike
            model.to(memory_format=torch.channels_last)  # parameters stay, only strides
        train_epoch(model, train, opt, sched, gen, extra_loss=extra_loss, on_step=on_step)
    return time.perf_counter() - start


def measure(model, data, budget: Budget, seconds: float, **notes) -> dict:
    """The row's numbers for the final (pruned) model, plus ``notes`` (which may replace
    one, such as ``flops_params``)."""
    return {"val": evaluate(model, loader(data["val"], budget, None)),
            "test": evaluate(model, loader(data["test"], budget, None)),
            "finetune_seconds": round(seconds, 1), "flops_params": count_flops(model),
            **notes}  # fmt: skip


@torch.no_grad()
def evaluate(model: nn.Module, data_loader: DataLoader) -> float:
    model.eval()
    hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in data_loader)
    return hits / len(data_loader.dataset)


def count_flops(model: nn.Module, size=(1, 1, 28, 28)) -> tuple[int, int]:
    """``(FLOPs, parameters)`` of one image: 2 x multiply-adds of every Conv/Linear, counted
    by forward hooks on whatever model a tool returns (the same counter for all)."""
    flops = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            per_out = module.in_channels // module.groups * math.prod(module.kernel_size)
            flops[0] += 2 * output[0].numel() * per_out
        elif isinstance(module, nn.Linear):
            flops[0] += 2 * output[0].numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]  # fmt: skip
    model.eval()
    with torch.no_grad():
        model(torch.zeros(size))
    for h in handles:
        h.remove()
    return flops[0], sum(p.numel() for p in model.parameters())


def count_live_flops(model: nn.Module, probe: torch.Tensor) -> tuple[int, int]:
    """:func:`count_flops` of the model that removing its dead channels would leave: for
    a tool that only zeroes (masks) the filters it prunes.

    A Conv/Linear output channel is dead when its weights are all zero. An input channel is
    dead when it is zero for every image of ``probe``, where every BatchNorm output channel
    that is not all zero is made positive (``|x| + 1``) on the way, so that no ReLU kills
    it: only the channels whose filter and BatchNorm weight and bias were zeroed stay dead,
    as masking tools leave them. Parameters count the live part of each Conv, Linear and
    BatchNorm. Convs must be dense or depthwise.
    """
    flops, params = [0], [0]

    def live(tensor: torch.Tensor) -> torch.Tensor:  # per channel (dim 1)
        return tensor.transpose(0, 1).reshape(tensor.shape[1], -1).abs().amax(1) > 0

    def hook(module, inputs, output):
        if isinstance(module, nn.BatchNorm2d):
            used = live(output)
            params[0] += 2 * int(used.sum())
            return (output.abs() + 1) * used[None, :, None, None]
        used_in, used_out = live(inputs[0]), module.weight.flatten(1).abs().amax(1) > 0
        if isinstance(module, nn.Conv2d) and module.groups == module.in_channels > 1:
            used_in = used_out = used_in & used_out  # depthwise: channel c reads only c
        elif isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ValueError(f"`groups` must be 1 or in_channels. Received: groups="
                             f"{module.groups} (in_channels={module.in_channels}).")
        per_out = 1 if used_in is used_out else int(used_in.sum())
        per_out *= math.prod(getattr(module, "kernel_size", (1,)))
        kept = int(used_out.sum())
        flops[0] += 2 * kept * math.prod(output.shape[2:]) * per_out  # one image
        params[0] += kept * per_out + (kept if module.bias is not None else 0)

    kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    model.eval()
    with torch.no_grad():
        model(probe)
    for h in handles:
        h.remove()
    return flops[0], params[0]


def baseline_path(name: str, budget: Budget) -> Path:
    """Where the baseline of ``name`` for ``budget`` is (its state dict): the one the repo
    ships, else the one trained here and cached."""
    key = hashlib.sha1(f"{name}-{budget.baseline_epochs}-{budget.train_limit}".encode())
    file = f"{name}-{key.hexdigest()[:10]}.pt"
    return SHIPPED / file if (SHIPPED / file).exists() else CACHE / file


def baseline_id(model: nn.Module) -> str:
    """A fingerprint of ``model``'s state (names and exact values)."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def baseline(name: str, budget: Budget, data: dict, log=print) -> nn.Module:
    """The model's baseline, trained once per budget and cached (lr 0.1 cosine)."""
    CACHE.mkdir(exist_ok=True)
    path = baseline_path(name, budget)
    torch.manual_seed(0)
    model = MODELS[name]()
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model
    train = loader(data["train"], budget, seed=0)
    opt, sched = sgd(model, 0.1, budget.baseline_epochs * len(train))
    gen = torch.Generator().manual_seed(0)
    for epoch in range(budget.baseline_epochs):
        start = time.perf_counter()
        loss = train_epoch(model, train, opt, sched, gen)
        log(f"baseline {name} epoch {epoch + 1}: loss {loss:.4f} "
            f"({time.perf_counter() - start:.0f}s)")  # fmt: skip
    torch.save(model.state_dict(), path)
    return model
