"""The demos' command line and config: pruning (the seed's settings, shortened to the run),
and the recipe both demos fine-tune with."""

from __future__ import annotations

import argparse

from filterprune import NNCFConfig

__all__ = ["DEFAULTS", "DISTILLATION", "RECIPE", "demo_arguments", "demo_config",
           "pruning_config"]

DEFAULTS = {"epochs": 3, "init": 0.0, "flops_target": 0.5}
"""The demos' command-line defaults (the others are :func:`demo_arguments`' own)."""
RECIPE = {"schedule": "baseline", "filter_importance": "geometric_median",
          "bn_adaptation_after_mask_change": True}
"""Pruning params on top of :func:`pruning_config`: one cut at the start, then fine-tuning."""
DISTILLATION = {"algorithm": "knowledge_distillation", "type": "softmax", "temperature": 4.0,
                "scale": 1.0}
LR = 1e-3
"""The fine-tuning learning rate (AdamW, weight decay 1e-4, cosine decay per step)."""


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


def demo_config(args: argparse.Namespace, **params) -> NNCFConfig:
    """The demos' recipe: pruning to ``--flops-target`` (or ``--target``) with :data:`RECIPE`
    and ``params``, distillation from the dense model, then 8-bit quantization with its
    defaults, as in the reference "Filter Pruning + QAT" config."""
    config = pruning_config(args.epochs, args.init, args.target, args.flops_target)
    pruning = {**config["compression"], "params": {
        **config["compression"]["params"], **RECIPE, **params}}  # fmt: skip
    return NNCFConfig.from_dict({**config, "compression": [
        pruning, DISTILLATION, {"algorithm": "quantization"}]})  # fmt: skip
