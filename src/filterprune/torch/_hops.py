"""Context blocks torch.export keeps as one call: ``with torch.autocast(..., enabled=False)``
(EfficientViT's attention in float32) and ``with torch.no_grad()`` in forward become a
higher-order op running a subgraph. Their ops are the model's like any other, so the
subgraph is copied in place of the call: the analysis sees each op, and the block sets
only a dtype or whether gradients flow, which no channel rule reads.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

__all__ = ["inline_context_blocks"]


def _context_ops() -> tuple:
    hops = torch.ops.higher_order
    return tuple(getattr(hops, n) for n in ("wrap_with_autocast", "wrap_with_set_grad_enabled")
                 if hasattr(hops, n))  # fmt: skip


def inline_context_blocks(gm: fx.GraphModule) -> None:
    """Copy the subgraph of each context block of ``gm`` (nested ones too) in place of its
    call; its outputs, read by ``getitem``, become the copied values."""
    ops = _context_ops()
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in ops:
            continue
        owner = next((a for a in node.args if isinstance(a, fx.Node) and a.op == "get_attr"),
                     None)  # fmt: skip
        if owner is None or any(u.target is not operator.getitem for u in node.users):
            continue  # another form: left one call, which holds its tensors with a reason
        sub = getattr(gm, owner.target)
        inline_context_blocks(sub)
        operands = node.args[node.args.index(owner) + 1:]
        values = _copy_body(gm, sub, operands, node)
        for user in list(node.users):
            user.replace_all_uses_with(values[user.args[1]])
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
        if not owner.users:
            gm.graph.erase_node(owner)
    gm.graph.lint()


def _copy_body(gm: fx.GraphModule, sub: fx.GraphModule, operands: tuple,
               before: fx.Node) -> list:  # fmt: skip
    """Copy ``sub``'s ops into ``gm`` before ``before``, its inputs taken as ``operands``;
    returns the copies of its outputs."""
    env: dict[fx.Node, fx.Node] = {}
    inputs = iter(operands)
    with gm.graph.inserting_before(before):
        for node in sub.graph.nodes:
            if node.op == "placeholder":
                env[node] = next(inputs)
            elif node.op == "output":
                out = node.args[0]
                return list(fx.node.map_arg(out if isinstance(out, (list, tuple)) else [out],
                                            env.__getitem__))  # fmt: skip
            else:
                copy = gm.graph.node_copy(node, env.__getitem__)
                if node.op == "get_attr":  # a constant of the block: the owner holds it too
                    name = f"{before.name}_{node.target}".replace(".", "_")
                    setattr(gm, name, getattr(sub, node.target))
                    copy.target = name
                env[node] = copy
    raise ValueError(f"{before.name}'s subgraph has no output")
