"""The demos' pruning config: the seed's filter pruning settings, shortened to the run."""

from __future__ import annotations

from filterprune import NNCFConfig

__all__ = ["pruning_config"]


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
