"""The demos' command line and pruning config (the seed's settings, shortened to the run)."""

from __future__ import annotations

import argparse

from filterprune import NNCFConfig

__all__ = ["demo_arguments", "pruning_config"]


def demo_arguments(description: str, argv: list[str] | None) -> argparse.Namespace:
    """The options both demos take: epochs, levels, a training subset and the cache folder."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs while pruning")
    parser.add_argument("--baseline-epochs", type=int, default=2)
    parser.add_argument("--init", type=float, default=0.1, help="pruning_init")
    parser.add_argument("--target", type=float, default=0.4, help="pruning_target")
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--cache", default=".cache")
    return parser.parse_args(argv)


def pruning_config(epochs: int, init: float, target: float) -> NNCFConfig:
    """``pruning_init`` -> ``pruning_target`` over ``epochs`` fine-tuning epochs (NCHW input)."""
    return NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, 1, 28, 28]},
        "compression": {
            "algorithm": "filter_pruning",
            "pruning_init": init,
            "params": {"pruning_target": target, "pruning_steps": max(epochs - 1, 1)},
        },
    })  # fmt: skip
