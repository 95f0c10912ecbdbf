"""Item assignment into a tensor made in forward, read by the torch.fx trace: TSM's
temporal shift (``out = torch.zeros_like(x); out[:, :-1, :fold] = x[:, 1:, :fold]``).

torch.fx's proxies refuse item assignment. A write into a tensor the forward made itself
(or wrote before), that nothing has read yet, is recorded as a call of :func:`written`,
and the proxy of the tensor moves to that call's node: later reads read the write, and
the graph has no mutation left (core rule ``write``). A write into anything else (an
input, a view, a tensor read before) is refused as torch.fx refuses it, and the capture
goes on as it did (torch.export, whose sizes are fixed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

__all__ = ["SHAPED_AS", "WritableProxy", "WriteShapes", "shaped_like", "written", "write_spec"]

SHAPED_AS = {torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like,
             torch.rand_like, torch.randn_like, torch.randint_like}
"""Calls that read only their first argument's shape (and dtype, device)."""
# a tensor of another's shape: its channels are that tensor's (``x.new_zeros(n, c)`` and
# ``torch.zeros`` take sizes of the code's; writes into them are left to torch.export)
_MADE = SHAPED_AS | {torch.clone, "clone"}
_INDEX = "filterprune_index"  # node meta: a write's index as it ran on the sample


def written(tensor: torch.Tensor, index: Any, value: Any) -> torch.Tensor:
    """``tensor[index] = value``, and ``tensor``: the value later reads take."""
    tensor[index] = value
    return tensor


def shaped_like(node: fx.Node) -> fx.Node | None:
    """The tensor whose shape ``node``'s result has, for a tensor made of another's shape
    (``torch.zeros_like(x)``, ``x.clone()``) or a write into one; else None."""
    call = node.op == "call_method" if isinstance(node.target, str) else \
        node.op == "call_function"  # fmt: skip
    made = call and (node.target in _MADE or node.target is written)
    return node.args[0] if made and node.args and isinstance(node.args[0], fx.Node) else None


class WritableProxy(fx.Proxy):
    """A proxy that records a write into a tensor made in forward (see the module)."""

    def __setitem__(self, index: Any, value: Any) -> None:
        node = self.node
        if shaped_like(node) is None or node.users or not _basic(index) \
                or isinstance(value, (list, tuple)):  # fmt: skip
            raise TypeError("'Proxy' object does not support item assignment")
        self.node = self.tracer.create_proxy("call_function", written, (self, index, value),
                                             {}).node  # fmt: skip


def _basic(index: Any) -> bool:
    """Slices (their bounds numbers or traced sizes), ints and one Ellipsis."""
    items = index if isinstance(index, tuple) else (index,)
    return sum(it is Ellipsis for it in items) <= 1 and all(
        it is Ellipsis or type(it) is int or isinstance(it, slice) and all(
            v is None or type(v) is int or isinstance(v, fx.Proxy)
            for v in (it.start, it.stop, it.step))
        for it in items)  # fmt: skip


class WriteShapes(ShapeProp):
    """torch.fx's ShapeProp that keeps each write's index as it ran (bounds computed in
    forward as numbers)."""

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "call_function" and n.target is written:
            n.meta[_INDEX] = self.map_nodes_to_values(n.args[1], n)
        return super().run_node(n)


def write_spec(node: fx.Node, shapes: tuple[int, ...]) -> tuple[str, dict]:
    """The core ``write`` node's attributes: the index as it ran, and the axes of ``x``
    sliced at bounds computed in forward (``computed_axes``, as for a getitem)."""
    index, traced = node.meta[_INDEX], node.args[1]
    items = traced if isinstance(traced, tuple) else (traced,)
    computed, axis = [], 0
    for it in items:
        if it is Ellipsis:
            axis = len(shapes) - (len(items) - items.index(it) - 1)
            continue
        if isinstance(it, slice) and any(isinstance(v, fx.Node)
                                         for v in (it.start, it.stop, it.step)):  # fmt: skip
            computed.append(axis)
        axis += 1
    return "write", {"index": index, "computed_axes": computed}
