"""What the torch.fx trace cannot know of a value, read on the sample input.

torch.fx refuses to iterate a proxy, to take its ``len()`` or to branch on it. The
capture answers those from the trace so far, run on the sample and on a second input of
the same sizes with other values: the number of pieces a split gave, or a test of sizes
only (``if h % 2``). A test that reads a tensor's values, or an answer the two inputs
give otherwise (the count of ``nonzero``), stays refused: the model may answer it
otherwise on other inputs.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn
from torch.fx._symbolic_trace import _maybe_revert_all_patches
from torch.utils import _pytree as pytree

from ._copy import global_hooks, is_users
from ._init_args import random_state_kept
from ._snapshot import attributes_kept

__all__ = ["HOOKED", "settled", "sized_range", "traced_hooks_off"]

HOOKED = "filterprune_hooked"  # node meta: the user's hooks of the module traced around it

# what a test may read of a tensor: its sizes, and what the model's dtype and device fix
_SIZE_ATTRIBUTES = ("shape", "ndim", "dtype", "device", "is_cuda")
_SIZE_METHODS = ("size", "dim", "is_floating_point", "is_complex")


def settled(tracer: Any, node: fx.Node, measure: Any, sizes: bool) -> Any:
    """``measure`` of ``node``'s value where the sample and a second input of its sizes
    give the same (and, with ``sizes``, the value is computed from sizes alone); else
    ``None``."""
    if getattr(tracer, "sampling", False) or any(
            isinstance(b, fx.Proxy) for b in tracer.root.buffers()):  # fmt: skip
        return None  # asked while running (a buffer the trace wrote a proxy into)
    found = []
    if not hasattr(tracer, "sampled"):  # values found so far, per input: each run goes on
        tracer.sampled = ({}, {})  # from them, so a trace's many questions cost one run
    for example, known in zip((tracer.example, _other_values(tracer.example)), tracer.sampled,
                              strict=True):  # fmt: skip
        tracer.sampling = True
        try:
            values = _values(tracer, node, example, known)
        finally:
            tracer.sampling = False
        if values is None or sizes and not _sizes_only(node, values):
            return None
        try:
            found.append(measure(values[node]))
        except Exception:  # noqa: BLE001 - not a number, not a sequence
            return None
    return found[0] if found[0] is not None and found[0] == found[1] else None


def _other_values(example: Any) -> Any:
    generator = torch.Generator().manual_seed(1)

    def other(t: Any) -> Any:
        if not torch.is_tensor(t) or not t.is_floating_point():
            return t
        return torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)

    return None if example is None else pytree.tree_map(other, example)


def _values(tracer: Any, node: fx.Node, example: Any,
            known: dict[fx.Node, Any]) -> dict[fx.Node, Any] | None:  # fmt: skip
    """The values of ``node`` and of the nodes traced before it on ``example``, with the
    model's state, the random state and the user's hooks as for any run of ours; ``None``
    where that run fails. ``known``: values of nodes found before (added to)."""
    graph, copies = fx.Graph(), {}
    model = tracer.root
    try:
        for n in tracer.graph.nodes:
            copies[n] = graph.node_copy(n, copies.__getitem__)
            if n is node:
                break
        if example is None or node not in copies:
            return None
        graph.output(copies[node])
        with _maybe_revert_all_patches():  # the trace's patched attribute reads and calls
            gm = fx.GraphModule(model, graph)
            run = fx.Interpreter(gm, garbage_collect_values=False)
            with torch.no_grad(), attributes_kept(model), random_state_kept(model), \
                    traced_hooks_off(gm):  # fmt: skip
                run.run(*example, initial_env={c: known[n] for n, c in copies.items()
                                               if n in known})  # fmt: skip
    except Exception:  # noqa: BLE001 - e.g. a node not in the graph yet (a lazy layer's
        return None  # sizes read in its pre-hook): torch.fx's own refusal is said instead
    known.update((n, run.env[copy]) for n, copy in copies.items() if copy in run.env)
    return known


def _sizes_only(node: fx.Node, values: dict[fx.Node, Any]) -> bool:
    """Whether ``node`` is computed from sizes read in forward alone (or a dtype, a
    device), no tensor's values; sizes of a tensor whose shape values set (``nonzero``'s,
    a boolean mask's pick) are values."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_function" and n.target is getattr and n.args[1:2] in (
                (a,) for a in _SIZE_ATTRIBUTES) or n.op == "call_method" and \
                n.target in _SIZE_METHODS:  # fmt: skip
            if isinstance(n.args[0], fx.Node) and _value_shaped(n.args[0], values):
                return False
            continue
        if n not in values or any(torch.is_tensor(v) for v in pytree.tree_leaves(values[n])):
            return False
        fx.node.map_arg((n.args, n.kwargs), lambda a: stack.append(a) or a)
    return True


_VALUE_SHAPED = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive",
                 "bincount", "repeat_interleave", "nonzero_static"}  # fmt: skip


def _value_shaped(node: fx.Node, values: dict[fx.Node, Any]) -> bool:
    """Whether ``node``'s shape may follow tensors' values: it or a tensor before it comes
    from an op whose output size counts values, or picks by a boolean mask."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen or n.op not in ("call_function", "call_method", "call_module"):
            continue
        seen.add(n)
        name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
        if name in _VALUE_SHAPED or name == "where" and len(n.args) == 1:
            return True
        if n.target is operator.getitem and any(
                torch.is_tensor(values.get(a)) and values[a].dtype == torch.bool
                for a in n.all_input_nodes[1:]):  # fmt: skip
            return True  # ``x[mask]``
        stack.extend(n.all_input_nodes)
    return False


class _RangeOfSizes(type):
    """``range`` as the trace's forwards see it: a call answers a traced size on the
    sample, and ``isinstance(v, range)`` still holds for a range."""

    def __call__(cls, *bounds: Any) -> range:
        return range(*(int(b) if isinstance(b, fx.Proxy) else b for b in bounds))

    def __instancecheck__(cls, value: Any) -> bool:
        return isinstance(value, range)


class _SizedRange(metaclass=_RangeOfSizes):
    pass


@contextlib.contextmanager
def sized_range(root: nn.Module) -> Iterator[None]:
    """``range(x.shape[0])`` in the forwards of ``root``'s modules (a loop over time
    steps) answered on the sample while the trace runs: ``range`` asks a size for an
    index, which the capture's proxy refuses (a list of sizes given to a torch op would
    lose its proxies). The size is read as ``int()`` reads it, so its axis stays whole."""
    spaces = {id(g): g for m in (root.modules() if isinstance(root, nn.Module) else ())
              if (g := getattr(getattr(m, "forward", None), "__globals__", None)) is not None
              and g.get("range", range) is range}  # fmt: skip
    owned = {key for key, g in spaces.items() if "range" in g}
    for g in spaces.values():
        g["range"] = _SizedRange
    try:
        yield
    finally:
        for key, g in spaces.items():
            if key in owned:
                g["range"] = range
            else:
                g.pop("range", None)


@contextlib.contextmanager
def traced_hooks_off(gm: fx.GraphModule) -> Iterator[None]:
    """The user's hooks of the modules whose calls the trace wrote them around
    (``_Tracer._hooked``) off while ``gm`` runs: they would apply twice. Global hooks
    stay on for the other calls."""
    hooked = {gm.get_submodule(n.target) for n in gm.graph.nodes if n.meta.get(HOOKED)}
    tables = [t for m in hooked for t in (m._forward_hooks, m._forward_pre_hooks)]
    saved = [(table, dict(table)) for table in [*tables, *global_hooks()]]
    for table in tables:
        for key in [k for k, hook in table.items() if is_users(hook)]:
            del table[key]
    for table in global_hooks():
        for key, hook in [(k, h) for k, h in table.items() if is_users(h)]:
            table[key] = _except_in(hooked, hook)
    try:
        yield
    finally:
        for table, entries in saved:
            table.clear()
            table.update(entries)


def _except_in(hooked: set[nn.Module], hook: Any) -> Any:
    def run(module: nn.Module, *rest: Any) -> Any:
        return None if module in hooked else hook(module, *rest)

    return run
