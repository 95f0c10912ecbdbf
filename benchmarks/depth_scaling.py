"""How ``create_compressed_model`` grows with depth: a chain of N conv-BN-ReLU blocks
(8 channels, 8x8 input, one thread), timed at N and 4N in one run. Linear growth gives a
ratio near 4; a cost per pair of modules gives near 16.

    python benchmarks/depth_scaling.py [N]      # default 400: 400 and 1600 blocks
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from filterprune import NNCFConfig
from filterprune.torch import create_compressed_model


def chain(blocks: int, width: int = 8) -> nn.Module:
    layers = [nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    for _ in range(blocks):
        layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU()]  # fmt: skip
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    return nn.Sequential(*layers).eval()


def seconds(blocks: int) -> float:
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 3, 8, 8]}, "compression": {
        "algorithm": "filter_pruning", "pruning_init": 0.5, "params": {"filters_multiple_of": 1}}})
    model = chain(blocks)
    start = time.perf_counter()
    create_compressed_model(model, config)
    return time.perf_counter() - start


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    n = int(argv[0]) if argv else 400
    seconds(25)  # imports and first-call costs out of the timings
    small, large = seconds(n), seconds(4 * n)
    print("create_compressed_model, chain of conv-BN-ReLU blocks, 1 thread, CPU float32")
    print(f"  {n:5d} blocks: {small:6.2f} s")
    print(f"  {4 * n:5d} blocks: {large:6.2f} s")
    print(f"  ratio {large / small:.1f} (4: linear in depth; 16: quadratic)")


if __name__ == "__main__":
    main(sys.argv[1:])
