"""The compression controller for PyTorch filter pruning."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..core.analysis import analyze
from ..core.config import ConfigError, FilterPruningParams
from ..core.controller import CompressionStage, PruningControllerBase, analysis_options
from ..core.finite import Probe
from ..core.pruner import Plan
from ..core.signals import importance_source
from ..core.workflow import Captured
from ..errors import AnalysisError
from . import onnx_export
from ._copy import bake_weights
from ._init_args import own_arithmetic
from ._snapshot import state_reset
from .fake_quant import FakeQuantize
from .fold import fold_batchnorms
from .legr import ranking_trials
from .masks import apply_masks, is_masked, remove_masks
from .reconstruct import Recording, reconstruct, record
from .shrink import cut_output_quantizers, shrink_model
from .shrink_frozen import ShrinkWhenFrozen
from .signals import drop_taylor_hooks, taylor_accumulator, torch_signal

log = logging.getLogger("filterprune")

__all__ = ["FilterPruningController", "CompressionStage", "export_model", "export_onnx"]


class FilterPruningController(ShrinkWhenFrozen, PruningControllerBase):
    """Drives masks on a PyTorch model: schedule, importance, statistics, export, strip.

    Created by :func:`filterprune.torch.create_compressed_model`; not built directly.
    """

    def __init__(self, model: nn.Module, params: FilterPruningParams, captured: Captured,
                 frontend: Any) -> None:  # fmt: skip
        self.model = model
        self.captured = captured
        self.frontend = frontend
        self.sample = captured.sample
        self._distributed = False
        options = analysis_options(params, captured.graph.scope_types)
        super().__init__(params, analyze(captured.graph, options))

    def _weights(self) -> dict[str, np.ndarray]:
        return self.frontend.read_weights(self.captured, self.analysis.state.producers)

    def _signal(self, source: str) -> dict[str, np.ndarray]:
        return torch_signal(self, source)  # taylor: gradient hooks; bn_scale: BN gammas

    def _taylor_state(self) -> dict[str, Any] | None:
        acc = getattr(self, "taylor", None)
        return None if acc is None else acc.state()

    def _load_taylor(self, saved: dict[str, tuple[list[float], int]] | None) -> None:
        if self.shrunk:
            return  # a cut model ranks no more (its hooks are gone)
        acc = taylor_accumulator(self)  # hooked now: the next backward pass counts
        if saved is not None:
            acc.load(saved)

    def _ranking_trials(self) -> contextlib.AbstractContextManager[Callable[[Plan], float]]:
        return ranking_trials(self)  # LeGR: prune, fine-tune, validate, undo

    supports_reconstruction = True

    def _record(self) -> Recording:
        return self._on_every_rank(
            "record", lambda: record(self.model, self.init_data,
                                     self.params.num_reconstruction_samples))  # fmt: skip

    def _refit(self, recording: Recording) -> None:
        if not self._ddp():
            reconstruct(self.model, recording, self.keeps())
            return
        params = list(self.model.parameters())
        before = [p.detach().clone() for p in params]
        try:
            self._on_every_rank("refit", lambda: reconstruct(self.model, recording, self.keeps()))
        except ConfigError:
            with torch.no_grad():  # a rank whose own refit worked undoes it as well
                for p, old in zip(params, before, strict=True):
                    p.copy_(old)
            raise
        with torch.no_grad():  # each rank refit on its own batches: rank 0's weights
            for p in params:
                flat = p.detach().contiguous()
                torch.distributed.broadcast(flat, src=0)
                p.copy_(flat)

    def _ddp(self) -> bool:
        dist = torch.distributed
        return self._distributed and dist.is_available() and dist.is_initialized()

    def _on_every_rank(self, step: str, work: Callable[[], Any]) -> Any:
        """``work()``, then under DDP the ranks agree on whether it failed anywhere, so a
        rank whose ``step`` failed raises its error and the others raise too, instead of
        waiting for it in the next collective."""
        if not self._ddp():
            return work()
        dist = torch.distributed
        error: BaseException | None = None
        try:
            result = work()
        except Exception as err:  # memory errors too: the other ranks must not wait
            error = err
        ref = next(self.model.parameters())
        failed = torch.zeros(dist.get_world_size(), device=ref.device)
        failed[dist.get_rank()] = float(error is not None)
        dist.all_reduce(failed)
        if error is not None:
            raise error
        ranks = [int(r) for r in torch.nonzero(failed).flatten()]
        if ranks:
            raise ConfigError(
                f"`reconstruction_after_mask_change`: the {step} failed on rank(s) {ranks} "
                "(see their error). This rank's weights and masks were left as they were; "
                "every rank raises this error.")
        return result

    def _cut_probe(self) -> contextlib.AbstractContextManager[Probe | None]:
        return self.frontend.cut_probe(self.model, self.captured, self.analysis, self.params)

    def _strip_probe(self) -> contextlib.AbstractContextManager[Probe | None]:
        return self.frontend.strip_probe(self.model, self.captured, self.analysis, self.params)

    def _install(self, plan: Plan) -> None:
        super()._install(plan)
        # a registered copy (an EMA's module) takes the same masks
        for model in (self.model, *filter(None, (r() for r in self.__dict__.get("copies", [])))):
            apply_masks(model, self.keeps(), self.analysis.graph.layers,
                        bn=self.params.prune_batch_norms)  # fmt: skip

    def _sync(self, plan: Plan) -> Plan:
        """Under DDP every rank takes rank 0's plan, so masks are identical everywhere."""
        if not self._ddp():
            self._warn_not_distributed()
            return plan
        box = [plan.to_dict(self.analysis)]
        torch.distributed.broadcast_object_list(box, src=0)
        return Plan.from_dict(box[0], self.analysis)

    def _warn_not_distributed(self) -> None:
        """Once, where masks change under a process group of several ranks without
        :meth:`distributed`: each rank plans its own (DDP copies rank 0's mask buffers
        over them), so another rank's ``strip()`` and export would not match its model."""
        dist = torch.distributed
        if self._starting or self._distributed or self.__dict__.get("_said_not_distributed") \
                or not (dist.is_available() and dist.is_initialized()) \
                or dist.get_world_size() < 2:  # fmt: skip
            return
        self._said_not_distributed = True
        log.warning(
            "filter pruning: the masks changed in a process group of %d ranks, but "
            "ctrl.distributed() was not called. Under DistributedDataParallel each rank then "
            "plans its own masks from its own weights and gradients while DDP copies rank "
            "0's mask buffers over them, so strip() and export on the other ranks do not "
            "match the model they train: call ctrl.distributed() after "
            "create_compressed_model (ranks that each train a model of their own need not).",
            dist.get_world_size())  # fmt: skip

    def distributed(self) -> None:
        """Call under DDP (torchrun) before training: masks are then taken from rank 0,
        the current ones at once (each rank planned them from its own weights)."""
        check_layers_in_place(self)
        self._distributed = True
        if self._ddp() and not self.shrunk:
            self._install(self._sync(self.plan))

    def set_grad_scaler(self, scaler: Any) -> None:
        """With ``filter_importance: taylor`` and a ``torch.amp.GradScaler``: the Taylor
        hooks see gradients of the scaled loss, so each step would count by the square of
        the scale it ran at (which grows, and halves after an overflow); its scale is
        divided out. Other importances read no gradient: nothing to do."""
        if importance_source(self.params.filter_importance) == "gradient" and not self.shrunk:
            taylor_accumulator(self).grad_scaler = scaler

    def loss(self) -> torch.Tensor:
        """Filter pruning adds no regulariser: a zero tensor on the model's device."""
        ref = next(self.model.parameters(), None)
        return torch.zeros((), device=ref.device if ref is not None else None)

    # -- output ----------------------------------------------------------------------------
    def strip(self, shrink: bool = True, do_copy: bool = True) -> nn.Module:
        """A plain ``nn.Module`` without masks.

        Args:
            shrink: Remove pruned filters physically (smaller layers). With ``False`` the
                model keeps its shapes and pruned filters are zero.
            do_copy: Work on a deep copy, leaving the training model untouched.
        """
        return self.frontend.strip(self, do_copy=do_copy, shrink=shrink)

    def strip_model(self, model: nn.Module, shrink: bool = True, **_: Any) -> nn.Module:
        self.say_if_unstepped()
        drop_taylor_hooks(model)
        if self.shrunk:  # cut already (shrink_when_frozen)
            return model
        bake_weights(m for m in model.modules() if is_masked(m))  # weight_norm: written in
        if not shrink:
            remove_masks(model, bake=True)
            return model
        remove_masks(model, bake=False)
        keeps = self.keeps()
        cut = {len(k) for roles in keeps.values() for k in roles.values() if not k.all()}
        _say_state_reset(state_reset(self.model, model, cut))
        small = shrink_model(model, keeps, self.analysis.graph.layers)
        cut_output_quantizers(small, self.kept_channels)
        if model is self.model:  # strip(do_copy=False): the training model is cut now
            self.shrunk = True
        return small

    def export_model(self, save_path: str, save_format: str = "onnx",
                     input_names: list[str] | None = None, output_names: list[str] | None = None,
                     shrink: bool = False) -> None:  # fmt: skip
        """Export to ONNX with pruned filters zeroed (``shrink=True``: removed)."""
        export_model(self, save_path, save_format, input_names, output_names, shrink)


def _say_state_reset(names: list[str]) -> None:
    if names:
        log.warning("strip: %s are state the forward keeps across calls (a stream's cache, "
                    "a spiking neuron's membrane, their flags), which the strip does not cut: "
                    "the stripped model starts from the values they had at creation. Reset "
                    "the model's state before comparing.", ", ".join(names))  # fmt: skip


def check_layers_in_place(ctrl: Any) -> None:
    """Refuse a model whose layers were replaced after compression (as
    ``SyncBatchNorm.convert_sync_batchnorm`` replaces every BatchNorm): the masks and
    quantizers stayed on the old ones, and the model computed without them.

    Raises:
        AnalysisError: Naming the first replaced layer and the order that works.
    """
    for child in getattr(ctrl, "child_ctrls", [ctrl]):
        refs = getattr(getattr(child, "captured", None), "refs", {})
        if not refs:  # an algorithm of the user's own that put nothing on layers
            continue
        modules = dict(child.model.named_modules())
        moved = [n for n, m in refs.items() if n in modules and modules[n] is not m
                 and isinstance(m, nn.Module)]  # fmt: skip
        if moved:
            raise AnalysisError(
                f"Layer {moved[0]!r} of the model is now a {type(modules[moved[0]]).__name__}, "
                "put there after create_compressed_model (as "
                "SyncBatchNorm.convert_sync_batchnorm does): its masks and quantizers stayed "
                "on the layer it replaced. Replace layers before create_compressed_model."
            )


def export_model(ctrl: Any, save_path: str, save_format: str = "onnx",
                 input_names: list[str] | None = None, output_names: list[str] | None = None,
                 shrink: bool = False) -> None:  # fmt: skip
    """Export ``ctrl``'s stripped model to ONNX (pruned filters zeroed; ``shrink``: removed).

    BatchNorms after per-channel quantized convs are folded into them, so that ONNX
    Runtime runs those convs as int8.
    """
    if save_format != "onnx":
        raise ValueError(f"`save_format` must be 'onnx'. Received: save_format={save_format!r}.")
    suffix = os.path.splitext(str(save_path))[1]
    if suffix.lower() != ".onnx":  # a .pt or .xml holding ONNX would mislead its reader
        raise ValueError(
            f"export_model writes ONNX; `save_path` {str(save_path)!r} ends in "
            f"{suffix or 'no suffix'}. Give a path ending in .onnx (for OpenVINO IR, run "
            "`filterprune convert` on it; for a PyTorch file, torch.save(ctrl.strip(), ...))."
        )
    _check_ranges_set(ctrl.model)
    _check_eight_bits(ctrl.model)
    _check_not_bfloat16(ctrl.model)
    model = fold_batchnorms(ctrl.strip(shrink=shrink).eval(), ctrl.captured.graph)
    # a channels_last model exports its pooling as strided gathers that convert cannot cut
    model = model.to(memory_format=torch.contiguous_format)
    # in an autocast block the exporter would write its casts (bfloat16 into a Conv, which
    # ONNX Runtime refuses)
    with own_arithmetic():
        export_onnx(model, _sample_like(ctrl.captured, model), save_path, input_names,
                    output_names)  # fmt: skip


def _sample_like(captured: Captured, model: nn.Module) -> Any:
    """``input_info``'s sample on the model's device; where the user cast the model after
    creation (``model.half()``), its tensors of the model's old type in the new one (a
    float64 input the model takes on purpose stays)."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    if not params:
        return captured.sample
    was, now = captured.extra.get("dtypes", set()), {p.dtype for p in params}
    cast = len(was) == len(now) == 1 and was != now
    old, new = (next(iter(was)), next(iter(now))) if cast else (None, None)

    def like(t: Any) -> Any:
        if not torch.is_tensor(t):
            return t
        t = t.to(params[0].device)
        return t.to(new) if t.dtype == old else t

    return pytree.tree_map(like, captured.sample)


def _check_ranges_set(model: nn.Module) -> None:
    """Refuse to export activation quantizers whose range is not set yet: the file would
    hold a placeholder scale, and the model would take another from its first batch."""
    waiting = [m.spec.key for m in model.modules() if isinstance(m, FakeQuantize)
               and m.enabled and not m.follows_weight and not m.initialized]  # fmt: skip
    if waiting:
        raise ConfigError(
            f"{len(waiting)} activation quantizers have no range yet ({', '.join(waiting[:3])}"
            f"{', ...' if len(waiting) > 3 else ''}): with `initializer.range.num_init_samples`"
            " 0 they take it from the first batch the model sees. Run a batch through the "
            "model (a training step or an evaluation) before export_model, or give init data "
            "with register_default_init_args. Nothing was written."
        )


def _check_not_bfloat16(model: nn.Module) -> None:
    """Refuse bfloat16 weights: the operator sets the exporters write have no bfloat16
    convolution (the file fails the ONNX checker), and ONNX Runtime runs none."""
    found = [n for n, p in model.named_parameters() if p.dtype == torch.bfloat16]
    if found:
        raise ValueError(
            f"The model's parameters are bfloat16 ({', '.join(found[:3])}"
            f"{', ...' if len(found) > 3 else ''}), which ONNX convolutions and ONNX Runtime "
            "do not take. Export it in float32: model.float() before export_model (a runtime "
            "may still compute in bfloat16 where the hardware has it). Nothing was written.")


def _check_eight_bits(model: nn.Module) -> None:
    """Refuse quantizers of other widths before any exporter runs: QuantizeLinear holds
    8-bit integers (uint8 or int8)."""
    found = {m.spec.kind: m.spec.settings.bits for m in model.modules()
             if isinstance(m, FakeQuantize) and m.spec.settings.bits != 8}  # fmt: skip
    if found:
        kind, bits = next(iter(found.items()))
        raise ConfigError(
            f"`{kind}s.bits` of the `quantization` entry must be 8 to export "
            f"QuantizeLinear/DequantizeLinear pairs to ONNX. Received: bits={bits}. Train "
            "with 8 bits to export, or keep the model in PyTorch. Nothing was written."
        )


def export_onnx(model: nn.Module, sample, path: str, input_names=None, output_names=None,
                **kwargs: Any) -> str:  # fmt: skip
    """Write ``model`` as ONNX atomically; see :func:`filterprune.torch.onnx_export.export_onnx`."""
    return onnx_export.export_onnx(model, sample, path, input_names, output_names, **kwargs)
