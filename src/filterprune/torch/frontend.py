"""The PyTorch side of the core workflow (:class:`filterprune.core.workflow.Frontend`)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.config import Config
from ..core.workflow import Captured, Frontend
from ..errors import ConfigError
from ._init_args import InitArgs, adapt_batchnorm
from .capture import capture
from .controller import FilterPruningController, export_model
from .quantization import QuantizationController

__all__ = ["TorchFrontend", "sample_inputs"]


def sample_inputs(config: Config, model: nn.Module) -> tuple[torch.Tensor, ...]:
    """Zero tensors of ``input_info``'s shapes on the model's device."""
    sizes = config.sample_sizes()
    if not sizes:
        raise ConfigError(
            "`input_info.sample_size` is required to trace the model, e.g. "
            '{"input_info": {"sample_size": [1, 3, 224, 224]}}. Received: no input_info.'
        )
    ref = next(model.parameters(), None)
    device = ref.device if ref is not None else None
    return tuple(torch.zeros(s, device=device) for s in sizes)


class TorchFrontend(Frontend):
    """Reads ``nn.Module`` s with torch.fx; one controller class per algorithm."""

    name = "PyTorch"
    controllers = {"filter_pruning": FilterPruningController,
                   "quantization": QuantizationController}  # fmt: skip

    def capture(self, model: nn.Module, config: Config) -> Captured:
        return capture(model, sample_inputs(config, model))

    def read_weights(self, captured: Captured, layers: Iterable[str]) -> dict[str, np.ndarray]:
        out = {}
        for layer in layers:
            module = captured.refs[layer]
            w = module.weight.detach()
            if isinstance(module, nn.modules.conv._ConvTransposeNd):
                w = w.transpose(0, 1)
            out[layer] = w.float().cpu().numpy()
        return out

    def init_data(self, config: Config) -> Any:
        if config.has_extra_struct(InitArgs):
            return config.get_extra_struct(InitArgs).data_loader
        return None

    def adapt_batchnorm(self, model: nn.Module, data: Any, num_samples: int) -> None:
        adapt_batchnorm(model, data, num_samples)

    def strip(self, ctrl: Any, do_copy: bool = True, **kwargs: Any) -> nn.Module:
        model = copy.deepcopy(ctrl.model) if do_copy else ctrl.model
        return ctrl.strip_model(model, **kwargs)

    def export_model(self, ctrl: Any, save_path: str, *args: Any, **kwargs: Any) -> None:
        export_model(ctrl, save_path, *args, **kwargs)
