"""Put a model back as it was when ``create_compressed_model`` fails halfway.

Compression changes a model in few ways: module classes are swapped, buffers (masks,
quantizer state) and child modules (quantizers) are added, hooks are registered and
statistics change. A snapshot keeps each module's class, training flag, the entries of
its parameter, buffer, child and hook tables, and a copy of every buffer's value
(parameters are left untouched until training starts).
"""

from __future__ import annotations

import contextlib
import functools
import types
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from ._copy import global_hooks, object_attributes
from ._forwards import function_roots

__all__ = ["restore", "snapshot", "attributes_kept", "plain_attributes", "put_back",
           "held_by_hooks", "saved_buffers", "put_back_buffers", "note_state", "state_reset"]

_TABLES = ("_parameters", "_modules", "_forward_hooks", "_forward_pre_hooks")


def snapshot(model: nn.Module) -> list[tuple[Any, ...]]:
    """Each module with what :func:`restore` needs."""
    out = []
    for module in model.modules():
        sync = getattr(module, "sync_buffers", None)
        if callable(sync):  # a buffer that mirrors Python state (a quantizer's flags)
            sync()
        tables = {name: dict(getattr(module, name)) for name in _TABLES}
        buffers = {k: (b, None if b is None else b.detach().clone())
                   for k, b in module._buffers.items()}  # fmt: skip
        out.append((module, type(module), module.training, tables, buffers))
    return out


def restore(snap: list[tuple[Any, ...]]) -> None:
    """Give every module of ``snap`` its class, tables and buffer values back; a module
    with a ``buffers_restored()`` method is told (its buffers may mirror attributes; its
    ``sync_buffers()`` ran before the snapshot)."""
    with torch.no_grad():
        for module, cls, training, tables, buffers in snap:
            module.__class__ = cls
            module.training = training
            for name, entries in tables.items():
                table = getattr(module, name)
                table.clear()
                table.update(entries)
            module._buffers.clear()
            for key, (buffer, value) in buffers.items():
                if buffer is not None:
                    buffer.copy_(value)
                module._buffers[key] = buffer
            restored = getattr(module, "buffers_restored", None)
            if callable(restored):  # the Python state they mirror, as they hold it
                restored()


_TORCH_OWN = frozenset(vars(nn.Module()))  # its tables and flags: the rest is the class's


Attributes = tuple[dict[nn.Module, dict[str, Any]], list[tuple[Any, Any]]]


def plain_attributes(model: nn.Module) -> Attributes:
    """Each module's attributes that are not torch's own tables (a flag, a cache), but a
    lazy module's: its first call sets its sizes for good; and a shallow copy of each
    dict, list and plain object's attributes they hold, a few levels down (timm's
    feature hooks keep a dict their hooks fill in forward, keyed by the input's device:
    a trace leaves proxies in it, which no copy of the model survives)."""
    attrs = {m: {k: v for k, v in vars(m).items() if k not in _TORCH_OWN}
             for m in model.modules() if not isinstance(m, LazyModuleMixin)}  # fmt: skip
    contents: list[tuple[Any, Any]] = []
    seen: set[int] = set()
    for values in attrs.values():
        for value in values.values():
            _contents(value, 3, seen, contents)
    hooks = [h for table in global_hooks() for h in table.values()]
    for module in attrs:  # what hooks write to: their closures' and bound objects' tables
        hooks += [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    for hook in hooks:
        for value in _hook_roots(hook):
            _contents(value, 3, seen, contents)
    return attrs, contents


def _hook_roots(hook: Any) -> list[Any]:
    """The objects a hook holds: its closure's values and the globals it names, the object
    of a bound method, a partial's arguments, an object called as the hook."""
    if isinstance(hook, functools.partial):
        return [*_hook_roots(hook.func), *hook.args, *hook.keywords.values()]
    if not isinstance(hook, (types.FunctionType, types.MethodType)):
        return [hook]  # an object called as the hook: its own attributes
    roots = [getattr(hook, "__self__", None), *function_roots(hook)]
    return [r for r in roots if r is not None]


def held_by_hooks(model: nn.Module) -> set[str]:
    """The names of the parameters and buffers of ``model`` that a hook holds in its
    closure or globals, itself or as its module's own. A copy of the model
    shares such a function, so the copy's hook reads the original's tensor: one the
    strip cuts would no longer fit the stripped model."""
    names = {id(t): n for n, t in [*model.named_parameters(), *model.named_buffers()]}
    owned = {id(m): m for m in model.modules()}
    hooks = [h for table in global_hooks() for h in table.values()]
    for module in model.modules():
        hooks += [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    held = set()
    for hook in hooks:
        fn = hook.func if isinstance(hook, functools.partial) else hook
        if not isinstance(fn, (types.FunctionType, types.MethodType)):
            continue  # an object called as the hook is copied with the model
        for root in function_roots(fn):
            if id(root) in owned:  # its own tensors: the model's are named through it
                tensors = [*root.parameters(recurse=False), *root.buffers(recurse=False)]
            else:
                tensors = root.values() if isinstance(root, dict) else \
                    root if isinstance(root, (list, tuple)) else [root]  # fmt: skip
            held |= {names[id(t)] for t in tensors if id(t) in names}
    return held


def _contents(value: Any, depth: int, seen: set[int], out: list[tuple[Any, Any]]) -> None:
    """Append ``(container, shallow copy)`` for ``value`` and what it holds, ``depth``
    levels down: dicts, lists and the attributes of plain objects (not modules, tensors,
    classes or functions)."""
    if depth == 0 or id(value) in seen:
        return
    if isinstance(value, dict):
        table = value
    elif isinstance(value, list):
        table = None
    elif (table := object_attributes(value)) is None:
        return
    seen.add(id(value))
    held = list(value) if table is None else dict(table)
    out.append((value if table is None else table, held))
    if len(held) <= 1000:  # a big table is put back, not searched
        for item in held if table is None else held.values():
            _contents(item, depth - 1, seen, out)


def put_back(saved: Attributes) -> None:
    """Give each module of ``saved`` those attributes again, dropping any set since, and
    each container its entries."""
    attrs, contents = saved
    changed = {id(c) for c, held in contents if _changed(c, held)}
    for module, before in attrs.items():
        now = vars(module)
        _WRITTEN.setdefault(module, set()).update(
            k for k, v in now.items() if k not in _TORCH_OWN and (
                k not in before or v is not before[k] or id(v) in changed))  # fmt: skip
        for key in [k for k in now if k not in before and k not in _TORCH_OWN]:
            del now[key]
        now.update((k, v) for k, v in before.items() if now.get(k) is not v)
    for container, held in contents:
        if id(container) not in changed:
            continue
        if isinstance(container, list):
            container[:] = held
        else:
            container.clear()
            container.update(held)


def _changed(container: Any, held: Any) -> bool:
    if isinstance(container, list):
        return len(container) != len(held) or any(
            a is not b for a, b in zip(container, held, strict=True))  # fmt: skip
    return container.keys() != held.keys() or any(
        container[k] is not v for k, v in held.items())  # fmt: skip


@contextlib.contextmanager
def attributes_kept(model: nn.Module) -> Iterator[None]:
    """Runs of ``model`` on a made-up input (the capture's, a probe's) leave no plain
    attribute behind: a forward that sets a flag from its input (BasicVSR++ sets
    ``is_mirror_extended`` on a clip that reads the same backwards, as zeros do) would
    otherwise compute otherwise on every real input after. Nor a buffer's value: a step
    count or a cache a forward writes is as it was."""
    saved, buffers = plain_attributes(model), saved_buffers(model)
    try:
        yield
    finally:
        put_back(saved)
        put_back_buffers(buffers)


Buffers = dict[nn.Module, dict[str, tuple[Any, Any]]]


def saved_buffers(model: nn.Module) -> Buffers:
    """Each module's buffer table, with a copy of each value (none of a lazy module's,
    which its first call sets for good)."""
    return {m: {k: (b, None if b is None or isinstance(m, LazyModuleMixin)
                    else b.detach().clone()) for k, b in m._buffers.items()}
            for m in model.modules()}  # fmt: skip


def put_back_buffers(saved: Buffers) -> None:
    """Give each module the buffers of ``saved`` and their values: a forward that assigns
    one (``self.cache = x``) or counts one up, run on a made-up input or traced (which
    leaves a proxy in it), changes neither."""
    with torch.no_grad():
        for module, table in saved.items():
            _WRITTEN.setdefault(module, set()).update(
                ("buffer", k) for k, b in module._buffers.items()
                if k not in table or b is not table[k][0])  # fmt: skip
            if module._buffers.keys() != table.keys() or any(
                    module._buffers[k] is not b for k, (b, _) in table.items()):  # fmt: skip
                module._buffers.clear()
                module._buffers.update((k, b) for k, (b, _) in table.items())
            for buffer, value in table.values():
                if value is not None and buffer.shape == value.shape:
                    buffer.copy_(value)


# each module's plain attributes at creation: a plain value, or what else it was; and its
# buffers registered as None (filled by a forward)
_AT_CREATION: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# what a run of the model on a made-up input wrote (put back after): the attributes and
# buffers its forward sets
_WRITTEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PLAIN, _HELD, _NONE_BUFFER = (type(None), bool, int, float), object(), object()


def note_state(model: nn.Module) -> None:
    """Note ``model``'s plain attributes now (at creation), for :func:`state_reset`."""
    for module in model.modules():
        found = {k: v if isinstance(v, _PLAIN) else _Empty(type(v)) if _empty(v) else _HELD
                 for k, v in vars(module).items() if k not in _TORCH_OWN}  # fmt: skip
        found.update({("buffer", k): _NONE_BUFFER for k, b in module._buffers.items()
                      if b is None})  # fmt: skip
        _AT_CREATION[module] = found


def state_reset(model: nn.Module, copy: nn.Module, widths: set[int]) -> list[str]:
    """Start ``copy`` (a copy of ``model``) as a fresh stream, where it holds state a
    forward keeps across calls (a spiking neuron's membrane, a stream's cache, a ConvLSTM's
    pair) that is not cut with the channels: every attribute its forwards write (seen in
    the capture's runs), flags beside tensors, and buffers registered as None, get the
    value they had when ``model`` was created (``None``, a number, an empty list, or none);
    so does a tensor set since whose axis 1 is a width the strip cuts (``widths``: state
    written in training only). What the user set otherwise stays. Returns the names, or
    nothing where no such state holds a tensor."""
    resets, copies, tensors = [], dict(copy.named_modules()), False  # (copy, before, key)
    for path, module in model.named_modules():
        before, copied = _AT_CREATION.get(module), copies.get(path)
        if before is None or copied is None:  # (a parametrization the strip wrote in)
            continue
        written, prefix = _WRITTEN.get(module, set()), f"{path}." if path else ""
        for key, value in vars(copied).items():
            if key in _TORCH_OWN or before.get(key) is _HELD:
                continue  # (a tensor or an object at creation: no value to go back to)
            if key in written or _holds_tensors(value, widths):
                resets.append((copied, before, key, prefix + key))
                tensors |= _holds_tensors(value)
        for key, value in copied._buffers.items():
            if before.get(("buffer", key)) is _NONE_BUFFER and value is not None and (
                    ("buffer", key) in written or _holds_tensors(value, widths)):  # fmt: skip
                resets.append((copied, before, ("buffer", key), prefix + key))
                tensors = True
    if not tensors:
        return []
    for copied, before, key, _ in resets:
        if isinstance(key, tuple):
            copied._buffers[key[1]] = None
        elif key in before:
            was = before[key]
            vars(copied)[key] = was.kind() if isinstance(was, _Empty) else was
        else:
            del vars(copied)[key]
    return [name for *_, name in resets]


class _Empty:
    """An empty list, tuple or dict at creation (a memory bank a forward fills)."""

    def __init__(self, kind: type) -> None:
        self.kind = kind


def _empty(value: Any) -> bool:
    return type(value) in (list, tuple, dict) and not value


def _holds_tensors(value: Any, widths: set[int] | None = None) -> bool:
    """Whether ``value`` is a tensor (not a parameter), or a tuple, list or dict of some;
    with ``widths``, one whose axis 1 (axis 0 of a vector) is one of them."""
    if isinstance(value, (tuple, list, dict)):
        items = value.values() if isinstance(value, dict) else value
        return any(_holds_tensors(v, widths) for v in items)
    if not torch.is_tensor(value) or isinstance(value, nn.Parameter):
        return False
    return widths is None or value.dim() > 0 and value.shape[min(1, value.dim() - 1)] in widths
