"""The compression controller for PyTorch filter pruning."""

from __future__ import annotations

import copy
import enum
import logging
import os
import tempfile
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.analysis import Analysis
from ..core.config import FilterPruningParams
from ..core.pruner import Plan, Pruner
from ..core.schedule import Scheduler
from ..core.stats import PruningStatistics, collect_statistics
from ..errors import ConfigError
from .masks import apply_masks, remove_masks
from .shrink import shrink_model

__all__ = ["FilterPruningController", "CompressionStage"]

log = logging.getLogger("filterprune")
STATE_VERSION = 1


class CompressionStage(enum.IntEnum):
    UNCOMPRESSED = 0
    PARTIALLY_COMPRESSED = 1
    FULLY_COMPRESSED = 2


class FilterPruningController:
    """Drives masks on a model: schedule, importance, statistics, export, strip.

    Created by :func:`filterprune.torch.create_compressed_model`; not built directly.
    """

    def __init__(self, model: nn.Module, params: FilterPruningParams, analysis: Analysis,
                 sample: tuple[torch.Tensor, ...]) -> None:  # fmt: skip
        self.model = model
        self.params = params
        self.analysis = analysis
        self.sample = sample
        self.pruner = Pruner(analysis, importance=params.filter_importance,
                             global_ranking=params.all_weights)  # fmt: skip
        self.plan = Plan(0.0, {})
        self.frozen = False
        self._distributed = False
        self.scheduler = Scheduler(params, self.set_pruning_level, self.freeze)

    # -- levels and masks ------------------------------------------------------------------
    @property
    def pruning_level(self) -> float:
        """The level of the masks in place (FLOPs fraction under a FLOPs target)."""
        return self.plan.level

    def _weights(self) -> dict[str, np.ndarray]:
        modules = dict(self.model.named_modules())
        out = {}
        for layer in self.pruner.analysis.state.producers:
            w = modules[layer].weight.detach()
            if isinstance(modules[layer], nn.modules.conv._ConvTransposeNd):
                w = w.transpose(0, 1)
            out[layer] = w.float().cpu().numpy()
        return out

    def set_pruning_level(self, level: float) -> None:
        """Recompute masks so each prunable group loses ``level`` of its filters.

        Under ``pruning_flops_target``, ``level`` is the fraction of FLOPs to remove.
        """
        if not 0.0 <= float(level) < 1.0:
            raise ValueError(f"`level` must be a float in [0, 1). Received: level={level}.")
        scores = self.pruner.scores(self._weights())
        if self.params.prune_flops:
            plan = self.pruner.plan_for_flops(float(level), scores)
        else:
            plan = self.pruner.plan(float(level), scores)
        self._install(self._sync(plan))

    def _install(self, plan: Plan) -> None:
        self.plan = plan
        apply_masks(self.model, self.pruner.keeps(plan), self.analysis.graph.layers,
                    bn=self.params.prune_batch_norms)  # fmt: skip

    def _sync(self, plan: Plan) -> Plan:
        """Under DDP every rank takes rank 0's plan, so masks are identical everywhere."""
        dist = torch.distributed
        if not (self._distributed and dist.is_available() and dist.is_initialized()):
            return plan
        box = [plan.to_dict(self.analysis)]
        dist.broadcast_object_list(box, src=0)
        return Plan.from_dict(box[0], self.analysis)

    def freeze(self) -> None:
        """Stop the scheduler from changing masks."""
        self.frozen = True

    def distributed(self) -> None:
        """Call under DDP (torchrun) before training: masks are then taken from rank 0."""
        self._distributed = True

    def loss(self) -> torch.Tensor:
        """Filter pruning adds no regulariser: a zero tensor on the model's device."""
        ref = next(self.model.parameters(), None)
        return torch.zeros((), device=ref.device if ref is not None else None)

    def compression_stage(self) -> CompressionStage:
        target = self.scheduler.target_level
        if self.pruning_level <= 0:
            return CompressionStage.UNCOMPRESSED
        if self.pruning_level >= target - 1e-9:
            return CompressionStage.FULLY_COMPRESSED
        return CompressionStage.PARTIALLY_COMPRESSED

    # -- reporting -------------------------------------------------------------------------
    def statistics(self, quickly_collected_only: bool = False) -> PruningStatistics:
        keeps = self.pruner.keeps(self.plan)
        return collect_statistics(
            self.analysis, keeps, self.plan.kept,
            full_flops=self.pruner.full_flops, full_params=self.pruner.full_params,
            current_params=self.pruner.params(self.plan),
            current_level=self.scheduler.current_level, target_level=self.scheduler.target_level,
        )  # fmt: skip

    # -- state -----------------------------------------------------------------------------
    def get_compression_state(self) -> dict[str, Any]:
        """JSON-able state to save next to ``model.state_dict()`` in a checkpoint."""
        return {
            "version": STATE_VERSION,
            "algorithm": "filter_pruning",
            "params": self.params.to_dict(),
            "scheduler": self.scheduler.get_state(),
            "frozen": self.frozen,
            "plan": self.plan.to_dict(self.analysis),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("algorithm") != "filter_pruning" or "plan" not in state:
            raise ConfigError(
                "`compression_state` must come from get_compression_state() of a filter "
                f"pruning controller. Received keys: {sorted(state)}."
            )
        self.scheduler.load_state(state["scheduler"])
        self.frozen = bool(state.get("frozen", False))
        self._install(Plan.from_dict(state["plan"], self.analysis))

    # -- output ----------------------------------------------------------------------------
    def strip(self, shrink: bool = True, do_copy: bool = True) -> nn.Module:
        """A plain ``nn.Module`` without masks.

        Args:
            shrink: Remove pruned filters physically (smaller layers). With ``False`` the
                model keeps its shapes and pruned filters are zero.
            do_copy: Work on a deep copy, leaving the training model untouched.
        """
        model = copy.deepcopy(self.model) if do_copy else self.model
        if not shrink:
            remove_masks(model, bake=True)
            return model
        remove_masks(model, bake=False)
        return shrink_model(model, self.pruner.keeps(self.plan), self.analysis.graph.layers)

    def export_model(self, save_path: str, save_format: str = "onnx",
                     input_names: list[str] | None = None, output_names: list[str] | None = None,
                     shrink: bool = False) -> None:  # fmt: skip
        """Export to ONNX with pruned filters zeroed (``shrink=True``: removed)."""
        if save_format != "onnx":
            raise ValueError(f"`save_format` must be 'onnx'. Received: save_format={save_format!r}.")
        model = self.strip(shrink=shrink).eval()
        export_onnx(model, self.sample, save_path, input_names, output_names)


def export_onnx(model: nn.Module, sample, path: str, input_names=None, output_names=None) -> None:
    """Write ``model`` as ONNX atomically (a temp file renamed into place)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=folder)
    os.close(fd)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention op has no ONNX form
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, tuple(sample), tmp, dynamo=False, opset_version=17,
                              input_names=input_names, output_names=output_names)  # fmt: skip
        os.replace(tmp, path)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        if os.path.exists(tmp):
            os.remove(tmp)
