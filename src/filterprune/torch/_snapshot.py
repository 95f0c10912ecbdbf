"""Put a model back as it was when ``create_compressed_model`` fails halfway.

Compression changes a model in few ways: module classes are swapped, buffers (masks,
quantizer state) and child modules (quantizers) are added, hooks are registered and
statistics change. A snapshot keeps each module's class, training flag, the entries of
its parameter, buffer, child and hook tables, and a copy of every buffer's value
(parameters are left untouched until training starts).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

__all__ = ["restore", "snapshot", "attributes_kept", "plain_attributes", "put_back",
           "saved_buffers", "put_back_buffers"]

_TABLES = ("_parameters", "_modules", "_forward_hooks", "_forward_pre_hooks")


def snapshot(model: nn.Module) -> list[tuple[Any, ...]]:
    """Each module with what :func:`restore` needs."""
    out = []
    for module in model.modules():
        tables = {name: dict(getattr(module, name)) for name in _TABLES}
        buffers = {k: (b, None if b is None else b.detach().clone())
                   for k, b in module._buffers.items()}  # fmt: skip
        out.append((module, type(module), module.training, tables, buffers))
    return out


def restore(snap: list[tuple[Any, ...]]) -> None:
    """Give every module of ``snap`` its class, tables and buffer values back."""
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


_TORCH_OWN = frozenset(vars(nn.Module()))  # its tables and flags: the rest is the class's


def plain_attributes(model: nn.Module) -> dict[nn.Module, dict[str, Any]]:
    """Each module's attributes that are not torch's own tables (a flag, a cache), but a
    lazy module's: its first call sets its sizes for good."""
    return {m: {k: v for k, v in vars(m).items() if k not in _TORCH_OWN}
            for m in model.modules() if not isinstance(m, LazyModuleMixin)}  # fmt: skip


def put_back(saved: dict[nn.Module, dict[str, Any]]) -> None:
    """Give each module of ``saved`` those attributes again, dropping any set since."""
    for module, before in saved.items():
        now = vars(module)
        for key in [k for k in now if k not in before and k not in _TORCH_OWN]:
            del now[key]
        now.update((k, v) for k, v in before.items() if now.get(k) is not v)


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
            if module._buffers.keys() != table.keys() or any(
                    module._buffers[k] is not b for k, (b, _) in table.items()):  # fmt: skip
                module._buffers.clear()
                module._buffers.update((k, b) for k, (b, _) in table.items())
            for buffer, value in table.values():
                if value is not None and buffer.shape == value.shape:
                    buffer.copy_(value)
