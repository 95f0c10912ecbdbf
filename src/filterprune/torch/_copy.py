"""Weights computed from other parameters: ``weight_norm``, ``spectral_norm`` (forward
pre-hooks) and ``torch.nn.utils.parametrize`` (a property).

After a forward with gradients a hook-computed ``module.weight`` is a non-leaf tensor,
which ``copy.deepcopy`` refuses. Recomputing it without gradients first (eval mode, so
spectral norm's power iteration does not step) gives the same values as a plain tensor.

A pruned layer's weight is masked as it is computed, so masked and stripped models agree
once the strip writes the computed weight in as a plain parameter (:func:`bake_weights`):
a cut of the parameters it is computed from would change the norm it is divided by.
"""

from __future__ import annotations

import copy
import functools
import types
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _torch_module
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from ._forwards import rebind_forwards
from .masks import _masked_class

__all__ = ["detach_computed_weights", "copy_model", "computed_weights", "bake_weights",
           "NORM_HOOKS", "forward_hooks", "global_hooks", "is_users", "object_attributes",
           "user_hooks"]

NORM_HOOKS = (WeightNorm, SpectralNorm)  # the legacy weight-norm forward pre-hooks


def global_hooks() -> tuple[dict, dict]:
    """torch's tables of the forward pre-hooks and hooks every module call runs
    (``register_module_forward_pre_hook``, ``register_module_forward_hook``)."""
    return _torch_module._global_forward_pre_hooks, _torch_module._global_forward_hooks


def forward_hooks(module: nn.Module) -> tuple[list, list]:
    """The ``(id, hook, with_kwargs)`` of the forward pre-hooks and of the forward hooks a
    call of ``module`` runs, in torch's order: the global ones first."""
    before, after = global_hooks()
    pre = [(k, h, k in module._forward_pre_hooks_with_kwargs)
           for k, h in [*before.items(), *module._forward_pre_hooks.items()]]  # fmt: skip
    kwargs = {**_torch_module._global_forward_hooks_with_kwargs,
              **module._forward_hooks_with_kwargs}  # fmt: skip
    post = [(k, h, k in kwargs) for k, h in [*after.items(), *module._forward_hooks.items()]]
    return pre, post


def user_hooks(module: nn.Module) -> bool:
    """Whether a call of ``module`` runs forward or forward pre-hooks of the caller's, its
    own or global ones (weight norms and this package's own hooks are known)."""
    pre, post = forward_hooks(module)
    return any(is_users(h) for _, h, _ in pre + post)


def is_users(hook) -> bool:
    """Whether a module hook is the caller's: not a weight norm's nor this package's."""
    name = getattr(hook, "__module__", None) or type(hook).__module__
    ours = name == "filterprune" or name.startswith("filterprune.")  # not filterprune_tools
    return not ours and not isinstance(hook, NORM_HOOKS)


def _hooks(module: nn.Module) -> list:
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, NORM_HOOKS)]


def computed_weights(module: nn.Module) -> dict[str, tuple[str, ...]]:
    """Each attribute of ``module`` computed from parameters -> the parameters of
    ``module`` itself it is computed from (none for a parametrization, whose parameters
    sit in a child module)."""
    out = {h.name: tuple(n for n in module._parameters if n.startswith(f"{h.name}_"))
           for h in _hooks(module)}  # fmt: skip
    if parametrize.is_parametrized(module):
        out.update({name: () for name in module.parametrizations})
    return out


def detach_computed_weights(model: nn.Module) -> None:
    """Recompute every hook-computed weight of ``model`` without gradients."""
    for module in model.modules():
        hooks = _hooks(module)
        if not hooks:
            continue
        training = module.training
        module.eval()
        try:
            with torch.no_grad():
                for hook in hooks:
                    hook(module, ())
        finally:
            module.train(training)


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also after a training step of a weight-normed model, and
    of one that keeps tensors of its last forward (RAFT's correlation pyramid): those are
    copied detached, as deepcopy refuses a tensor that is not a graph leaf."""
    detach_computed_weights(model)
    duplicate = copy.deepcopy(model, _detached(model))
    rebind_forwards(model, duplicate)
    return duplicate


def object_attributes(value: Any) -> dict | None:
    """The attributes of a plain object; ``None`` for a module, tensor, class, function or
    builtin, and for one without a ``__dict__`` (slots) or whose ``__getattr__`` raises."""
    if type(value).__module__ == "builtins" or isinstance(
            value, (nn.Module, torch.Tensor, type, types.FunctionType, types.MethodType,
                    types.ModuleType, functools.partial)):  # fmt: skip
        return None
    try:
        return vars(value)
    except Exception:  # noqa: BLE001 - no __dict__ (slots), or a __getattr__ that raises
        return None


def _detached(model: nn.Module) -> dict[int, torch.Tensor]:
    """A deepcopy memo: each non-leaf tensor a module holds as an attribute (or in a list,
    tuple or dict there, or in an object's attributes: a policy's last action
    distribution) -> a detached copy of it."""
    memo: dict[int, torch.Tensor] = {}

    def visit(value: object, depth: int) -> None:
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            if value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
        elif depth < 3 and isinstance(value, (list, tuple)):
            for v in value:
                visit(v, depth + 1)
        elif depth < 3 and isinstance(value, dict):
            for v in value.values():
                visit(v, depth + 1)
        elif depth < 3 and not isinstance(value, nn.Module) and (
                attributes := object_attributes(value)) is not None:  # fmt: skip
            for v in attributes.values():
                visit(v, depth + 1)

    for module in model.modules():
        for key, value in vars(module).items():
            if key not in ("_parameters", "_modules"):
                visit(value, 0)
    return memo


def bake_weights(modules: Iterable[nn.Module]) -> dict[nn.Parameter, list[nn.Parameter]]:
    """Write each computed weight of ``modules`` in as a plain parameter with its current
    value (computed in eval mode: no power-iteration step). A module swapped for a masked
    class keeps that swap, over the class the parametrization leaves.

    Returns:
        Each new parameter -> the parameters it was computed from (for optimizers).
    """
    baked = {}
    for module in modules:
        computed = computed_weights(module)
        if not computed:
            continue
        before = {name: _sources(module, name) for name in computed}
        swapped = getattr(type(module), "_filterprune_base", None)
        if swapped is not None:
            masked_class, module.__class__ = type(module), swapped
        training = module.training
        module.eval()
        try:
            with torch.no_grad():
                for key, hook in list(module._forward_pre_hooks.items()):
                    if isinstance(hook, NORM_HOOKS):
                        hook.remove(module)
                        del module._forward_pre_hooks[key]
                if parametrize.is_parametrized(module):
                    _unparametrize(module)
        finally:
            module.train(training)
        if swapped is not None:  # the same forward over the plain class
            prefix = masked_class.__name__[: -len(swapped.__name__)]
            module.__class__ = _masked_class(type(module), prefix,
                                             masked_class._filterprune_channels)  # fmt: skip
        baked.update({module._parameters[name]: sources for name, sources in before.items()})
    return baked


def _sources(module: nn.Module, name: str) -> list[nn.Parameter]:
    if parametrize.is_parametrized(module, name):
        return list(module.parametrizations[name].parameters())
    return [module._parameters[n] for n in computed_weights(module)[name]]


def _unparametrize(module: nn.Module) -> None:
    """``remove_parametrizations(leave_parametrized=True)`` for every tensor, leaving the
    class alone: a deep copy shares its parametrized class with the original, whose
    properties ``remove_parametrizations`` deletes."""
    values = {name: getattr(module, name) for name in module.parametrizations}
    delattr(module, "parametrizations")
    module.__class__ = module.__class__.__bases__[0]
    for name, value in values.items():
        module.register_parameter(name, nn.Parameter(value.detach().clone()))
