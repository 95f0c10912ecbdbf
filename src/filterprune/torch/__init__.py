"""PyTorch frontend: the NNCF-style workflow with physical removal of pruned filters.

Example:
    >>> from filterprune import NNCFConfig  # doctest: +SKIP
    >>> from filterprune.torch import create_compressed_model
    >>> ctrl, model = create_compressed_model(model, NNCFConfig.from_dict({...}))
    >>> ctrl.scheduler.epoch_step(); ...; small = ctrl.strip()
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.analysis import analyze
from ..core.config import Config
from ..core.controller import analysis_options, pruning_params
from ..errors import ConfigError
from ._init_args import InitArgs, adapt_batchnorm, register_default_init_args
from .capture import capture
from .controller import CompressionStage, FilterPruningController
from .shrink import resize_to_state_dict

__all__ = [
    "create_compressed_model",
    "register_default_init_args",
    "resize_to_state_dict",
    "FilterPruningController",
    "CompressionStage",
]


def _sample(config: Config, model: nn.Module) -> tuple[torch.Tensor, ...]:
    sizes = config.sample_sizes()
    if not sizes:
        raise ConfigError(
            "`input_info.sample_size` is required to trace the model, e.g. "
            '{"input_info": {"sample_size": [1, 3, 224, 224]}}. Received: no input_info.'
        )
    ref = next(model.parameters(), None)
    device = ref.device if ref is not None else None
    return tuple(torch.zeros(s, device=device) for s in sizes)


def create_compressed_model(model: nn.Module, config: Config | dict,
                            compression_state: dict[str, Any] | None = None,
                            **_: Any) -> tuple[FilterPruningController, nn.Module]:  # fmt: skip
    """Prepare ``model`` for filter pruning with fine-tuning.

    Args:
        model: The model to prune; it is modified in place (masked layers) and returned.
        config: A :class:`~filterprune.Config` (``NNCFConfig``) or a plain dict.
        compression_state: ``ctrl.get_compression_state()`` from a checkpoint, to resume.

    Returns:
        ``(compression_ctrl, model)``.

    Raises:
        ConfigError: For an invalid config or one this frontend cannot run.
    """
    if not isinstance(config, Config):
        config = Config.from_dict(config)
    params = pruning_params(config, "PyTorch")
    sample = _sample(config, model)
    graph, _ = capture(model, sample)
    analysis = analyze(graph, analysis_options(params))
    ctrl = FilterPruningController(model, params, analysis, sample)
    if ctrl.start(compression_state) and config.has_extra_struct(InitArgs):
        loader = config.get_extra_struct(InitArgs).data_loader
        adapt_batchnorm(model, loader, params.num_bn_adaptation_samples)
    return ctrl, model
