"""The PyTorch side of the core workflow (:class:`filterprune.core.workflow.Frontend`)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.export._unlift import _StatefulGraphModule
from torch.export.unflatten import UnflattenedModule

from ..core._validation import one_of
from ..core.analysis import Analysis
from ..core.config import INPUT_TYPES, Config
from ..core.finite import Probe
from ..core.params import FilterPruningParams
from ..core.workflow import Captured, Frontend
from ..errors import AnalysisError, ConfigError
from ._copy import copy_model
from ._init_args import InitArgs, adapt_batchnorm
from ._snapshot import note_state, restore, snapshot
from .capture import capture
from .controller import FilterPruningController, check_layers_in_place, export_model
from .distillation import KnowledgeDistillationController
from .fake_quant import FakeQuantize
from .finite import cut_probe, strip_probe
from .masks import is_masked
from .quantization import QuantizationController

__all__ = ["TorchFrontend", "sample_inputs"]


_SEED = 0  # "random" inputs are the same on every run


def sample_inputs(config: Config, model: nn.Module) -> tuple[Any, ...]:
    """Example inputs from ``input_info``, on the model's device, as ``forward``'s arguments.

    Each entry gives a tensor of ``sample_size`` with ``type`` (``"float"`` by default,
    or ``"half"``, ``"long"``, ``"int"``, ``"bool"``... as NNCF names them), filled per
    ``filler``: ``"zeros"`` (default), ``"ones"`` or ``"random"`` (uniform in [0, 1) for
    floats, 0 or 1 for integers; seeded, so the same on every run). Entries with a
    ``keyword`` go to the ``forward`` argument of that name; the others are passed by
    position first. An argument skipped between them takes its default value.

    Raises:
        ConfigError: Without ``input_info``, for an unknown ``type``, or a ``keyword`` that
            names no argument of ``forward``, one already given by position, or leaves an
            argument without a value.
    """
    infos = config.input_infos()
    if not infos:
        raise ConfigError(
            "`input_info.sample_size` is required to trace the model, e.g. "
            '{"input_info": {"sample_size": [1, 3, 224, 224]}}. Received: no input_info.'
        )
    ref = next(model.parameters(), None)
    device = ref.device if ref is not None else None
    where = config.input_info_keys()
    generator = torch.Generator().manual_seed(_SEED)
    tensors = [_sample(info, key, generator).to(device)
               for info, key in zip(infos, where, strict=True)]  # fmt: skip
    if not any("keyword" in info for info in infos):
        _check_count(model, len(tensors))
        return tuple(tensors)
    return _as_arguments(model, infos, tensors, where)


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _positional(model: nn.Module) -> list[inspect.Parameter]:
    """The arguments ``forward`` takes by position."""
    params = inspect.signature(model.forward).parameters.values()
    return [p for p in params if p.kind in _POSITIONAL]


def _keyword_only(model: nn.Module) -> set[str]:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_count(model: nn.Module, given: int) -> None:
    """Refuse more ``input_info`` entries than ``forward`` takes by position (the extra
    ones failed only at export, as a bare TypeError)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a forward without a signature: not checked
        return
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return
    positional = _positional(model)
    if given > len(positional):
        raise ConfigError(
            f"`input_info` must have at most one entry per argument of "
            f"{type(model).__name__}.forward ({', '.join(p.name for p in positional)}). "
            f"Received: {given} entries. Remove the extra ones, or give each a `keyword`."
        )


def _sample(info: dict[str, Any], where: str, generator: torch.Generator) -> torch.Tensor:
    name = info.get("type", "float")
    if name not in INPUT_TYPES:
        raise one_of(f"{where}.type", name, INPUT_TYPES)
    dtype, size = getattr(torch, INPUT_TYPES[name]), [int(d) for d in info["sample_size"]]
    filler = info.get("filler", "zeros")
    if filler == "ones":
        return torch.ones(size, dtype=dtype)
    if filler != "random":
        return torch.zeros(size, dtype=dtype)
    if dtype.is_floating_point:
        return torch.rand(size, generator=generator).to(dtype)
    return torch.randint(0, 2, size, generator=generator).to(dtype)


def _as_arguments(model: nn.Module, infos: list[dict[str, Any]], tensors: list[torch.Tensor],
                  where: list[str]) -> tuple[Any, ...]:  # fmt: skip
    """Positional entries first, keyword entries at their argument's position."""
    params = _positional(model)
    names = [p.name for p in params]
    given: dict[int, tuple[str, torch.Tensor]] = {}
    for info, tensor, key in zip(infos, tensors, where, strict=True):
        if "keyword" not in info:
            given[len(given)] = (key, tensor)
    signature = f"{type(model).__name__}.forward({', '.join(names)})"
    for info, tensor, key in zip(infos, tensors, where, strict=True):
        word = info.get("keyword")
        if word is None:
            continue
        if word in _keyword_only(model):
            raise ConfigError(
                f"`{key}.keyword` must name an argument {type(model).__name__}.forward takes "
                f"by position: the model is run with positional inputs. Received: "
                f"keyword={word!r}, a keyword-only argument (after `*`); remove the `*` or "
                "wrap the model in a module whose forward passes it on.")  # fmt: skip
        if word not in names or params[names.index(word)].kind == _POSITIONAL[0]:
            raise ConfigError(f"`{key}.keyword` must name an argument of {signature}. "
                              f"Received: keyword={word!r}.")  # fmt: skip
        if names.index(word) in given:
            raise ConfigError(
                f"`{key}.keyword` must name an argument not given by position. Received: "
                f"keyword={word!r}, which {given[names.index(word)][0]} fills already."
            )
        given[names.index(word)] = (key, tensor)
    args = []
    for pos in range(max(given) + 1):
        if pos in given:
            args.append(given[pos][1])
        elif params[pos].default is not inspect.Parameter.empty:
            args.append(params[pos].default)
        else:
            raise ConfigError(
                f"`input_info` must give argument {names[pos]!r} of {signature}: the ones "
                f"after it are given. Received: no entry for {names[pos]!r}."
            )
    return tuple(args)


_AO_QUANT = (torch.ao.quantization.ObserverBase, torch.ao.quantization.FakeQuantizeBase)
# what ExportedProgram.module() and torch.export.unflatten give
_EXPORTED = (_StatefulGraphModule, UnflattenedModule)


def _described(value: object) -> str:
    """What was passed instead of a model, in a few words."""
    if isinstance(value, dict):
        return "a dict (a state_dict or a checkpoint?)"
    if isinstance(value, type):
        return f"the class {value.__name__} (not an instance of it)"
    return f"a {type(value).__name__}"


class TorchFrontend(Frontend):
    """Reads ``nn.Module`` s with torch.fx; one controller class per algorithm."""

    name = "PyTorch"
    controllers = {"filter_pruning": FilterPruningController,
                   "quantization": QuantizationController,
                   "knowledge_distillation": KnowledgeDistillationController}  # fmt: skip

    def check(self, model: nn.Module, config: Config, fresh: bool = True) -> None:
        # ``fresh`` unread: a compressed model is refused even to resume (a fresh one is
        # built for that), as its masks would be read as ops of the model
        if not isinstance(model, nn.Module):
            raise TypeError(
                "The model must be a torch.nn.Module. Received: "
                f"{_described(model)}. Build the model, load its weights "
                "(model.load_state_dict(...)), and pass the model."
            )
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            raise AnalysisError(  # its layers' names carry "module.": no state or scope fits
                f"The model is wrapped in {type(model).__name__}. Compress the model itself "
                "(model.module), then wrap the model create_compressed_model returns. The "
                "model is unchanged."
            )
        compiled = [n for n, m in model.named_modules()
                    if hasattr(m, "_orig_mod") and hasattr(m, "dynamo_ctx")]  # fmt: skip
        if compiled:  # its wrapper hides the module from torch.fx; torch.export's capture
            name = compiled[0]  # then fixes the batch size and misses quantizer places
            unwrap = f"model.{name} = model.{name}._orig_mod" if name else "model._orig_mod"
            raise AnalysisError(
                f"Module {name or type(model).__name__!r} is a torch.compile wrapper. Compress "
                f"the model uncompiled ({unwrap}), then compile the model "
                "create_compressed_model returns (or call model.compile() in place). The "
                "model is unchanged."
            )
        in_place = [n for n, m in model.named_modules()
                    if getattr(m, "_compiled_call_impl", None) is not None]  # fmt: skip
        if in_place:  # creation's passes pass the recompile limit: it then runs uncompiled
            raise AnalysisError(
                f"Module {in_place[0] or type(model).__name__!r} was compiled in place "
                "(.compile()) before create_compressed_model, whose passes over the model "
                "would leave it running uncompiled. Compress a model not compiled, then call "
                "model.compile() on the model create_compressed_model returns. The model is "
                "unchanged."
            )
        exported = [n or type(model).__name__ for n, m in model.named_modules()
                    if isinstance(m, _EXPORTED)]  # fmt: skip
        if exported:  # aten calls on lifted weights: no layer to mask; torch cannot copy it
            raise AnalysisError(
                f"Module {exported[0]!r} is a module torch.export made (ep.module() or "
                "torch.export.unflatten(ep)): its layers cannot be masked, cut or copied. "
                "Compress the nn.Module you exported, then export the model ctrl.strip() "
                "returns. The model is unchanged."
            )
        scripted = [n or type(model).__name__ for n, m in model.named_modules()
                    if isinstance(m, torch.jit.ScriptModule)]  # fmt: skip
        if scripted:
            raise AnalysisError(
                f"Module {scripted[0]!r} is a TorchScript module (torch.jit.script or trace): "
                "its layers cannot be masked or cut. Compress the plain nn.Module, then "
                "script the model ctrl.strip() returns. The model is unchanged."
            )
        prepared = [n or type(model).__name__ for n, m in model.named_modules()
                    if isinstance(m, _AO_QUANT)]  # fmt: skip
        if prepared:  # its observers read as ops without channel rules, its QAT convs as
            raise AnalysisError(  # no layers, and its export fails
                f"Module {prepared[0]!r} is a torch.ao.quantization observer or fake quantizer "
                "(the model went through prepare, prepare_qat or prepare_fx): its layers "
                "cannot be masked or cut. Pass the float model, with a `quantization` entry "
                "in the config for quantization-aware training. The model is unchanged."
            )
        frozen = [n for n, m in model.named_modules() if isinstance(m, FakeQuantize) and m.frozen]
        if frozen:
            raise AnalysisError(
                f"Module {frozen[0]!r} is a quantizer of a stripped model (ctrl.strip()): its "
                "layers are frozen for deployment and cannot be compressed again. Pass the "
                "model as it was before create_compressed_model. The model is unchanged."
            )
        done = _compressed_modules(model)
        if done:  # its masks would be read as ops of the model, and nothing found to prune
            raise AnalysisError(
                f"Module {done[0]!r} already carries filterprune masks or quantizers: the "
                "model was compressed before. Pass the model as it was before "
                "create_compressed_model (keep a copy.deepcopy), or to resume a run, build a "
                "fresh model and pass compression_state=ctrl.get_compression_state(). The "
                "model is unchanged."
            )

    def capture(self, model: nn.Module, config: Config) -> Captured:
        return capture(model, sample_inputs(config, model))

    def read_weights(self, captured: Captured, layers: Iterable[str]) -> dict[str, np.ndarray]:
        out = {}
        for layer in layers:
            module, info = captured.refs[layer], captured.graph.layers[layer]
            w = module.weight.detach()
            if info.transposed:  # (in, out/g, ...)
                g = info.groups  # filters first: (out, in/g, ...), group by group
                w = w.unflatten(0, (g, -1)).transpose(1, 2).flatten(0, 1)
            out[layer] = w.float().cpu().numpy()
        return out

    def read_params(self, captured: Captured,
                    layers: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
        out = {}
        for layer in layers:
            module = captured.refs.get(layer)  # a bare parameter has no module: not read
            names = captured.graph.layers[layer].params if module is not None else {}
            tensors = {p: getattr(module, p, None) for p in names}
            out[layer] = {p: t.detach().float().cpu().numpy() for p, t in tensors.items()
                          if isinstance(t, torch.Tensor)}  # fmt: skip
        return out

    def init_data(self, config: Config) -> Any:
        if config.has_extra_struct(InitArgs):
            return config.get_extra_struct(InitArgs).data_loader
        return None

    def registered_args(self, config: Config) -> Any:
        return config.get_extra_struct(InitArgs) if config.has_extra_struct(InitArgs) else None

    def adapt_batchnorm(self, model: nn.Module, data: Any, num_samples: int) -> None:
        adapt_batchnorm(model, data, num_samples)

    def cut_probe(self, model: nn.Module, captured: Captured, analysis: Analysis,
                  params: FilterPruningParams,
                  ) -> contextlib.AbstractContextManager[Probe | None]:  # fmt: skip
        return cut_probe(model, captured.sample, analysis, params)

    def strip_probe(self, model: nn.Module, captured: Captured, analysis: Analysis,
                    params: FilterPruningParams,
                    ) -> contextlib.AbstractContextManager[Probe | None]:  # fmt: skip
        if captured.extra.get("capture") == "torch.fx":  # fx sees the sizes read in forward
            return contextlib.nullcontext(None)
        return strip_probe(model, captured.sample, analysis, params)

    def snapshot(self, model: nn.Module) -> Any:
        return snapshot(model)

    def finish(self, model: nn.Module) -> None:
        note_state(model)  # a strip starts the state a forward keeps from these values

    def restore(self, model: nn.Module, snapshot: Any) -> None:
        restore(snapshot)

    def strip(self, ctrl: Any, shrink: bool = True, do_copy: bool = True) -> nn.Module:
        check_layers_in_place(ctrl)
        left = getattr(ctrl, "left_after_strip", None)  # quantizers a deployed model keeps
        found = _compressed_modules(ctrl.model) if left is not None else []
        again = [name for name in found if name not in left]
        if again:
            raise AnalysisError(
                f"This controller stripped its model in place (strip(do_copy=False)), and "
                f"the model was compressed again since: module {again[0]!r} carries another "
                "controller's masks or quantizers. Strip it with the controller "
                "create_compressed_model returned last."
            )
        model = copy_model(ctrl.model) if do_copy else ctrl.model
        small = ctrl.strip_model(model, shrink=shrink)
        if not do_copy:
            ctrl.left_after_strip = set(_compressed_modules(ctrl.model))
        return small

    def export_model(self, ctrl: Any, save_path: str, *args: Any, **kwargs: Any) -> None:
        export_model(ctrl, save_path, *args, **kwargs)


def _compressed_modules(model: nn.Module) -> list[str]:
    """Names of the modules carrying filterprune masks or quantizers."""
    return [n or type(model).__name__ for n, m in model.named_modules()
            if is_masked(m) or isinstance(m, FakeQuantize)]  # fmt: skip
