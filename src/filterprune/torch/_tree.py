"""Walk what a model returns: tuples, lists, mappings (dict subclasses too) and dataclass
instances, which torch's own tree utilities treat as single leaves unless registered (a
``@dataclass`` output, an ``OrderedDict`` subclass such as a model-output record)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from torch.utils import _pytree as pytree

__all__ = ["leaves", "path_name"]


def leaves(obj: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """``(path, value)`` of every leaf of ``obj`` in order, ``None`` left out; a path
    holds mapping keys, field names (dataclass, namedtuple) and sequence indices."""
    if obj is None:
        return
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple: by field name
        for name, item in zip(obj._fields, obj, strict=True):
            yield from leaves(item, (*path, name))
    elif isinstance(obj, (tuple, list)):
        for i, item in enumerate(obj):
            yield from leaves(item, (*path, i))
    elif isinstance(obj, Mapping):
        for key, item in obj.items():
            yield from leaves(item, (*path, key))
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            yield from leaves(getattr(obj, field.name), (*path, field.name))
    elif type(obj) in pytree.SUPPORTED_NODES:  # a class the user registered with torch
        children, _ = pytree.tree_flatten_with_path(obj, is_leaf=lambda x: x is not obj)
        for keys, item in children:
            yield from leaves(item, (*path, *(_key(k) for k in keys)))
    else:
        yield path, obj


def _key(entry: Any) -> Any:
    """A torch pytree key entry as a plain key: a field name, a mapping key, an index."""
    for attr in ("name", "key", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def path_name(path: tuple) -> str:
    """``aux/boxes`` for the path ``("aux", "boxes")``."""
    return "/".join(str(k) for k in path)
