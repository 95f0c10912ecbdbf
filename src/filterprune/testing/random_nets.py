"""Random CNN architectures built from the blocks real networks use.

A :class:`RandomNet` is a chain of blocks (residual, concat, chunk, depthwise,
grouped, squeeze-excite, channel shuffle, parallel branches) followed by a head
(global pooling or flatten -> linear). :func:`block_specs` draws a valid chain
for a random generator; hypothesis strategies wrap it in the tests.
"""

from __future__ import annotations

import random

import torch
from torch import nn

__all__ = ["BLOCKS", "RandomNet", "block_specs"]

BLOCKS = ("conv", "residual", "concat", "concat_self", "chunk", "depthwise", "grouped",
          "se", "shuffle", "branches", "down")  # fmt: skip


def _cbr(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())  # fmt: skip


class _Block(nn.Module):
    def __init__(self, kind: str, c: int, rng: random.Random) -> None:
        super().__init__()
        self.kind = kind
        w = rng.choice([8, 12, 16, 24])
        if kind == "conv":
            self.f = _cbr(c, w)
            self.out = w
        elif kind == "residual":
            self.f = nn.Sequential(_cbr(c, w), nn.Conv2d(w, c, 1), nn.BatchNorm2d(c))
            self.out = c
        elif kind == "concat":
            self.a, self.b = _cbr(c, w), nn.Conv2d(c, 8, 1)
            self.out = w + 8
        elif kind == "concat_self":
            self.f = _cbr(c, w)
            self.out = 2 * w
        elif kind == "chunk":
            self.f = _cbr(c // 2, c // 2)
            self.out = c
        elif kind == "depthwise":
            mult = rng.choice([1, 2])
            conv = nn.Conv2d(c, c * mult, 3, 1, 1, groups=c)
            self.f = nn.Sequential(conv, nn.BatchNorm2d(c * mult))
            self.out = c * mult
        elif kind == "grouped":
            g = 4 if c % 4 == 0 else 2
            self.f = _cbr(c, c, groups=g)
            self.out = c
        elif kind == "se":
            self.f = nn.Sequential(nn.Conv2d(c, 4, 1), nn.ReLU(), nn.Conv2d(4, c, 1), nn.Sigmoid())
            self.out = c
        elif kind == "shuffle":
            self.out = c
        elif kind == "branches":
            self.a, self.b = _cbr(c, w), nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, w, 1))
            self.out = w
        elif kind == "down":
            self.f = _cbr(c, w, stride=2)
            self.out = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kind
        if k in ("conv", "depthwise", "grouped", "down"):
            return self.f(x)
        if k == "residual":
            return torch.relu(x + self.f(x))
        if k == "concat":
            return torch.cat([self.a(x), self.b(x)], dim=1)
        if k == "concat_self":
            y = self.f(x)
            return torch.cat([y, y], dim=1)
        if k == "chunk":
            a, b = x.chunk(2, dim=1)
            return torch.cat([a, self.f(b)], dim=1)
        if k == "se":
            return x * self.f(x.mean((2, 3), keepdim=True))
        if k == "shuffle":
            n, c, h, w = x.shape
            return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return torch.relu(self.a(x) + self.b(x))


def block_specs(rng: random.Random, n_blocks: int) -> list[str]:
    """A random list of block kinds (validity is fixed up while building)."""
    return [rng.choice(BLOCKS) for _ in range(n_blocks)]


class RandomNet(nn.Module):
    """A chain of blocks on 3x16x16 inputs, ending in a 10-way classifier.

    Args:
        kinds: Block kinds from :data:`BLOCKS`; one that does not fit the current
            width (e.g. ``chunk`` on an odd width) is replaced by ``conv``.
        seed: Seed for widths and choices.
        flatten_head: End with flatten -> linear instead of global pooling.
    """

    def __init__(self, kinds: list[str], seed: int = 0, flatten_head: bool = False) -> None:
        super().__init__()
        rng = random.Random(seed)
        self.stem = _cbr(3, 16)
        c, blocks = 16, []
        for kind in kinds:
            if kind in ("chunk", "shuffle") and c % 2:
                kind = "conv"
            if kind == "down" and sum(b.kind == "down" for b in blocks) >= 2:
                kind = "conv"
            block = _Block(kind, c, rng)
            blocks.append(block)
            c = block.out
        self.blocks = nn.ModuleList(blocks)
        self.flatten_head = flatten_head
        side = 16 // 2 ** sum(b.kind == "down" for b in blocks)
        self.fc1 = nn.Linear(c * side * side if flatten_head else c, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = torch.flatten(x, 1) if self.flatten_head else x.mean((2, 3))
        return self.fc2(torch.relu(self.fc1(x)))
