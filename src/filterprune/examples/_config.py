"""The demos' command line and pruning config (the seed's settings, shortened to the run)."""

from __future__ import annotations

import argparse

from filterprune import NNCFConfig

__all__ = ["demo_arguments", "pruning_config"]


def demo_arguments(description: str, argv: list[str] | None, **defaults) -> argparse.Namespace:
    """The options both demos take: epochs, levels, a training subset and the cache folder.

    Args:
        description: The command's help text.
        argv: Arguments (``sys.argv[1:]`` when None).
        **defaults: A demo's own defaults (e.g. ``epochs=4``).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs while pruning")
    parser.add_argument("--baseline-epochs", type=int, default=2)
    parser.add_argument("--init", type=float, default=0.1, help="pruning_init")
    parser.add_argument("--target", type=float, default=0.4, help="pruning_target")
    parser.add_argument("--flops-target", type=float, default=None,
                        help="pruning_flops_target (replaces --target when given)")
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None, help="test images (all: 10,000)")
    parser.add_argument("--cache", default=".cache")
    parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def pruning_config(epochs: int, init: float, target: float,
                   flops_target: float | None = None) -> NNCFConfig:  # fmt: skip
    """``pruning_init`` -> ``pruning_target`` (or ``pruning_flops_target`` when given) over
    ``epochs`` fine-tuning epochs (NCHW input)."""
    goal = {"pruning_target": target} if flops_target is None else {
        "pruning_flops_target": flops_target}  # fmt: skip
    return NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, 1, 28, 28]},
        "compression": {
            "algorithm": "filter_pruning",
            "pruning_init": init,
            "params": {**goal, "pruning_steps": max(epochs - 1, 1)},
        },
    })  # fmt: skip
