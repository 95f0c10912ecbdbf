"""What the capture tells the user beside the graph: warnings about the model as given,
and the advice in its errors (what the model failed on, what to return or give instead)."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import AnalysisError
from ..testing.zoo import relative_diff
from ._copy import copy_model, global_hooks, is_users
from ._snapshot import attributes_kept
from ._tree import leaves, path_name
from .masks import apply_masks

__all__ = ["check_runs", "detector_hint", "first_line", "first_sentence", "output_hint", "runs",
           "sample_fix", "sample_words", "say_global_hooks", "say_unregistered",
           "say_written_parameters"]

def say_unregistered(model: nn.Module) -> None:
    """Warn about layers kept in a plain list, tuple or dict attribute: they are no
    submodules (not in ``parameters()``, ``state_dict()`` or ``.to()``), so they cannot be
    masked, and the layers around them read as foreign tensors."""
    found, internal = [], set(vars(nn.Module()))  # _modules, _parameters...: torch's own
    registered = {id(m) for m in model.modules()}  # a list of references to them is fine
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr in internal:
                continue
            items = value.values() if isinstance(value, dict) else value \
                if isinstance(value, (list, tuple)) else ()  # fmt: skip
            if any(isinstance(v, nn.Module) and id(v) not in registered for v in items):
                found.append(f"{name}.{attr}" if name else attr)
    if found:
        warnings.warn(
            f"{', '.join(found[:5])} holds layers in a plain list or dict: they are not "
            "registered submodules (not trained by an optimizer over model.parameters(), "
            "not saved, not pruned). Use nn.ModuleList / nn.ModuleDict.", stacklevel=3)


def detector_hint(model: nn.Module) -> str:
    """Where to look when a torchvision detector's post-processing defeats both captures."""
    if not type(model).__module__.startswith("torchvision.models.detection"):
        return ""
    return (" For torchvision detectors, filterprune.testing.detectors wraps the parts that "
            "capture: HeadTensors (RetinaNet, FCOS), RCNNTensors (two-stage R-CNNs) and "
            "masks_unpasted (Mask R-CNN's masks as its head predicts them).")


def output_hint(model: nn.Module, example: tuple[Any, ...]) -> str:
    """What to return instead, where the model returns an object that is not a tensor or a
    container of tensors (a ``torch.distributions`` object from a policy head)."""
    was_training = model.training
    try:
        with attributes_kept(model), torch.no_grad():
            out = model.eval()(*example)
    except Exception:  # noqa: BLE001 - check_runs has reported a failing model
        return ""
    finally:
        model.train(was_training)
    for path, value in leaves(out):
        if not isinstance(value, (torch.Tensor, int, float, bool, str)):
            where = f" at {path_name(path)}" if path else ""
            return (f"{type(model).__name__} returns a {type(value).__module__}."
                    f"{type(value).__qualname__}{where}, which neither capture reads: return "
                    "the tensors it is made from (a distribution's logits or parameters) and "
                    "build it outside the model, in the loss or the sampling code. ")
    return ""


def say_global_hooks(model: nn.Module, example: tuple[Any, ...], layers: dict) -> None:
    """Warn where a global module hook computes otherwise on a copy of the model (it tells
    modules by identity: strip() and export_model work on a copy) or on its masked layers
    (it tells them by exact class: masking swaps the class). The capture traced the hook
    on the model as it is."""
    if not any(is_users(h) for table in global_hooks() for h in table.values()):
        return
    was_training = model.training
    try:
        with attributes_kept(model), torch.no_grad():
            ref = model.eval()(*example)
            copy = copy_model(model).eval()
            same = copy(*example)
            apply_masks(copy, {name: {} for name in layers}, layers)  # every mask all ones
            masked = copy(*example)
    except Exception:  # noqa: BLE001 - it ran in the capture; a probe's failure says nothing
        return
    finally:
        model.train(was_training)
    found = []
    for what, a, b in (("a copy of the model, as strip() and export_model make (it tells "
                        "modules by identity)", ref, same),
                       ("the masked model, whose layers take classes of their own, "
                        "MaskedConv2d and the like (it tells layers by exact class)", same,
                        masked)):  # fmt: skip
        diff = relative_diff(a, b)
        if diff > 1e-5:
            found.append(f"on {what}: {diff:.2g} relative")
    if found:
        warnings.warn(
            "A global module hook (register_module_forward_hook) computes otherwise "
            f"{'; and '.join(found)}. Register it on the modules themselves "
            "(module.register_forward_hook), or tell layers with isinstance.", stacklevel=3)


def _real(t: torch.Tensor) -> torch.Tensor:
    """``t``, a complex one as its real and imaginary parts (both count)."""
    return torch.view_as_real(t) if t.is_complex() else t


def say_written_parameters(model: nn.Module, example: tuple[Any, ...]) -> None:
    """Warn where a forward writes parameters: a momentum encoder updated from the online
    one (MoCo's ``pk.data = m * pk + (1 - m) * pq``, a BYOL target). The two encoders
    are cut each on its own, and no mask or cut follows such a write."""
    params = {n: p for n, p in model.named_parameters()
              if not isinstance(p, nn.parameter.UninitializedParameter)}  # fmt: skip

    def marks() -> dict[str, tuple[int, float]]:
        return {n: (p.data_ptr(), float(_real(p.detach()).double().nansum()))
                for n, p in params.items()}  # fmt: skip

    before, was_training = marks(), model.training
    try:
        with attributes_kept(model), torch.no_grad():
            model.eval()(*example)
    except Exception:  # noqa: BLE001 - it ran in the capture; a probe's failure says nothing
        return
    finally:
        model.train(was_training)
    written = [n for n, mark in marks().items() if mark != before[n]]
    if written:
        more = f" and {len(written) - 3} more" if len(written) > 3 else ""
        warnings.warn(
            f"{type(model).__name__}'s forward writes its parameters ({', '.join(written[:3])}"
            f"{more}): a momentum or EMA copy updated from other parameters. Masks and cuts do "
            "not follow such a write: each copy is cut on its own, and after strip() the "
            "update mixes filters that do not correspond. Prune the online model alone and "
            "make the copy from it.", stacklevel=3)  # fmt: skip


def first_sentence(err: Exception) -> str:
    """The cause of an fx failure without the tracer's advice, so the export's fits beside it."""
    text = str(err).splitlines()[0]
    return text.split(". ")[0].rstrip(".") + "."


def first_line(err: Exception) -> str:
    """The error's first line, without the tracer's advice, cut at a word past 200."""
    line = str(err).split(". Make the forward")[0].splitlines()[0]
    return line if len(line) <= 200 else line[:200].rsplit(" ", 1)[0] + " ..."


def runs(model: nn.Module, example: tuple[torch.Tensor, ...]) -> bool:
    """Whether ``model`` runs on ``example`` (:func:`check_runs`, attributes put back)."""
    try:
        with attributes_kept(model):
            check_runs(model, example)
    except AnalysisError:
        return False
    return True


_SAMPLE_FIX = ("Give a sample_size and `filler` the model accepts; an input it reads as "
               "numbers (sequence lengths) is best made in a wrapper's forward.")


def sample_fix(model: nn.Module) -> str:
    """:data:`_SAMPLE_FIX`, and for a ``forward(self, batch)`` (one argument, not said to
    be a tensor) how to give it a container of tensors."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return _SAMPLE_FIX
    if len(params) != 1 or params[0].kind not in (params[0].POSITIONAL_ONLY,
                                                  params[0].POSITIONAL_OR_KEYWORD) or \
            params[0].annotation in (torch.Tensor, "torch.Tensor", "Tensor"):  # fmt: skip
        return _SAMPLE_FIX
    return (f"{_SAMPLE_FIX} `input_info` gives tensors, one per argument: if "
            f"`forward({params[0].name})` takes a dict or tuple of tensors, prune a wrapper "
            "whose forward takes each tensor as an argument and builds the container.")


def sample_words(example: tuple[Any, ...]) -> str:
    """``a zero input of shape [(1, 3, 8, 8)] (from `input_info`)``: what the model was given."""
    tensors = [t for t in example if torch.is_tensor(t)]
    if tensors and not any(bool(t.any()) for t in tensors):
        kind = "a zero input"
    elif tensors and all(bool((t == 1).all()) for t in tensors):
        kind = "an input of ones"
    else:
        kind = "the sample input"
    return f"{kind} of shape {[tuple(t.shape) for t in tensors]} (from `input_info`)"


def check_runs(model: nn.Module, example: tuple[torch.Tensor, ...]) -> None:
    """Refuse an input the model itself fails on, before trying another capture."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*example)
    except Exception as err:  # noqa: BLE001 - reported with the input shape that failed
        given = {t.dtype for t in example if torch.is_tensor(t) and t.is_floating_point()}
        own = {p.dtype for p in model.parameters() if p.is_floating_point()}
        fix = sample_fix(model)
        if given and own and not given & own:  # a float64 or bfloat16 model, float32 input
            kind = str(sorted(own, key=str)[0]).removeprefix("torch.")
            fix = (f"The model's parameters are {kind}: set `input_info.type` to {kind!r} "
                   "(or give a sample_size the model accepts).")
        raise AnalysisError(
            f"{type(model).__name__} failed on {sample_words(example)}: {err}. {fix}") from err
    finally:
        model.train(was_training)
