"""Forwards set on module instances (``m.forward = wrap(m.forward)``, as mixed-precision
code runs a model or a layer under autocast, or accelerate's hooks do).

``copy.deepcopy`` shares a function: the copy's forward would still call the original
model. A copy gets one whose closure holds the copy's modules, tensors and bound methods
instead; what stays out of reach (a global, a deeper wrapper) is said.
"""

from __future__ import annotations

import contextlib
import functools
import types
import warnings
from collections.abc import Iterator
from typing import Any

from torch import nn

__all__ = ["function_roots", "rebind_forwards", "reached_modules"]

_DEPTH = 8  # wrappers of wrappers: how far a closure is followed


def rebind_forwards(model: nn.Module, duplicate: nn.Module) -> None:
    """Point the instance forwards of ``duplicate`` (a deep copy of ``model``) at its own
    modules, parameters and buffers."""
    twin: dict[int, Any] = {}
    for named in ("named_modules", "named_parameters", "named_buffers"):
        kwargs = {"remove_duplicate": False} if named == "named_modules" else {}
        twin.update({id(a): b for (_, a), (_, b) in zip(getattr(model, named)(**kwargs),
                                                        getattr(duplicate, named)(**kwargs),
                                                        strict=True)})  # fmt: skip
    names = {id(m): name or type(model).__name__ for name, m in model.named_modules()}
    for name, module in duplicate.named_modules():
        forward = vars(module).get("forward")
        if forward is None:
            continue
        vars(module)["forward"] = forward = _translated(forward, twin, _DEPTH)
        left = [names[i] for i in reached_modules(forward) if i in names]
        if left:
            warnings.warn(
                f"{name or type(duplicate).__name__}.forward, set on the instance, reaches the "
                f"original model's {', '.join(left[:3])} where a copy cannot rebind it (a "
                "global, or wrappers deeper than 8): the copy strip() and export_model make "
                "would run the original. Set such a wrapper on the stripped model instead.",
                stacklevel=4)  # fmt: skip


def _translated(value: Any, twin: dict[int, Any], depth: int) -> Any:
    """``value`` with what it reaches of the original model (closures, bound methods,
    partials, lists, tuples and dicts, ``depth`` levels down) replaced by the copy's."""
    if id(value) in twin:
        return twin[id(value)]
    if depth == 0:
        return value

    def again(v: Any) -> Any:
        return _translated(v, twin, depth - 1)

    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        items = [again(v) for v in value]
        same = all(a is b for a, b in zip(items, value, strict=True))
        return value if same else type(value)(items)
    if isinstance(value, dict) and type(value) is dict:
        items = {k: again(v) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    if isinstance(value, types.MethodType):
        func, owner = again(value.__func__), again(value.__self__)
        same = func is value.__func__ and owner is value.__self__
        return value if same else types.MethodType(func, owner)
    if isinstance(value, functools.partial):
        func, args = again(value.func), [again(a) for a in value.args]
        keywords = {k: again(v) for k, v in value.keywords.items()}
        if func is value.func and all(a is b for a, b in zip(args, value.args, strict=True)) \
                and all(keywords[k] is v for k, v in value.keywords.items()):  # fmt: skip
            return value
        out = functools.partial(func, *args, **keywords)
        vars(out).update({k: again(v) for k, v in vars(value).items()})  # __wrapped__
        return out
    if not isinstance(value, types.FunctionType) or not value.__closure__:
        return value
    cells, changed = [], False
    for cell in value.__closure__:
        try:
            content = cell.cell_contents
        except ValueError:  # an empty cell
            cells.append(cell)
            continue
        new = again(content)
        changed |= new is not content
        cells.append(types.CellType(new) if new is not content else cell)
    if not changed:
        return value
    out = types.FunctionType(value.__code__, value.__globals__, value.__name__,
                             value.__defaults__, tuple(cells))  # fmt: skip
    out.__kwdefaults__ = value.__kwdefaults__
    out.__dict__.update({k: again(v) for k, v in vars(value).items()})  # __wrapped__
    return out


def function_roots(fn: Any) -> list[Any]:
    """What a function reaches without arguments: its closure's values, the globals it
    names (a global list)."""
    fn = getattr(fn, "__func__", fn)
    roots = []
    for cell in getattr(fn, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            roots.append(cell.cell_contents)
    code, space = getattr(fn, "__code__", None), getattr(fn, "__globals__", {})
    return roots + [space[n] for n in (code.co_names if code else ()) if n in space]


def reached_modules(value: Any) -> set[int]:
    """The ids of the modules a forward reaches: through closures, bound methods,
    partials, containers, the attributes of plain objects and the globals its code
    names, ``_DEPTH`` levels down."""
    found: set[int] = set()
    seen: set[int] = set()
    for item in _walk(value, _DEPTH, seen):
        if isinstance(item, nn.Module):
            found.add(id(item))
    return found


def _walk(value: Any, depth: int, seen: set[int]) -> Iterator[Any]:
    if id(value) in seen or depth < 0:
        return
    seen.add(id(value))
    yield value
    if isinstance(value, nn.Module) or isinstance(value, type) or isinstance(
            value, types.ModuleType):  # fmt: skip
        return  # a module is found, not entered: its own forward is its class's
    children: list[Any] = []
    if isinstance(value, types.MethodType):
        children = [value.__func__, value.__self__]
    elif isinstance(value, functools.partial):
        children = [value.func, *value.args, *value.keywords.values(), *vars(value).values()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = list(value)
    elif isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, types.FunctionType):
        children = [*function_roots(value), *vars(value).values()]
    else:
        from ._copy import object_attributes

        children = list((object_attributes(value) or {}).values())
    for child in children:
        yield from _walk(child, depth - 1, seen)
