"""FLOPs and parameter accounting under a set of keep vectors.

FLOPs are counted for convolution and linear layers as ``2 * MACs``; a layer's
MACs are its (kept) weight elements times the output positions it is applied at.
A module the frontend cannot see into (attention) counts its matrices, uncut, at
the positions the frontend gives it.
"""

from __future__ import annotations

import math

import numpy as np

from .graph import Graph, Node
from .rules import einsum_subscripts

__all__ = ["kept_elements", "count_params", "count_flops", "layer_flops", "count_product"]

Keeps = dict[str, dict[str, np.ndarray]]


def kept_elements(
    shape: tuple[int, ...],
    roles: tuple[str | None, ...],
    keep: dict[str, np.ndarray],
    groups: int = 1,
) -> int:
    """Elements of a tensor left after cutting the axes whose role has a keep vector.

    Example:
        >>> w = (4, 2, 3, 3)  # conv: out 4, in 4 with groups=2
        >>> keep = {"out": np.array([1, 1, 0, 1], bool), "in": np.array([1, 0, 1, 1], bool)}
        >>> kept_elements(w, ("out", "in", None, None), keep, 2)
        36
    """
    total = 1
    grouped = groups > 1 and "out" in roles and "in" in roles and "out" in keep and "in" in keep
    for axis, size in enumerate(shape):
        role = roles[axis] if axis < len(roles) else None
        if grouped and role in ("out", "in"):
            continue
        vec = keep.get(role) if role else None
        total *= int(vec.sum()) if vec is not None and vec.size == size else size
    if grouped:
        rows = keep["out"].reshape(groups, -1).sum(axis=1)
        cols = keep["in"].reshape(groups, -1).sum(axis=1)
        total *= int(np.sum(rows * cols))
    return total


def count_params(graph: Graph, keeps: Keeps | None = None) -> int:
    """Parameters of every layer in ``graph.layers`` (all of them if ``keeps`` is None),
    each tensor once: an ``opaque`` layer lists its module's parameters, some of which a
    layer inside it owns (a routing Linear in a CondConv), and that layer's count stands.
    A ``buffer`` layer (a constant cut with the channels) is not a parameter, nor is a
    weight's quantizer scale or zero point (``W:scale``, as an ONNX file holds them)."""
    keeps = keeps or {}
    seen: set[str] = set()
    counted: dict[str, list[tuple]] = {}  # a tied tensor -> the cuts of it counted
    tied = {n: group[0] for group in getattr(graph, "shared", ()) for n in group}
    total = 0
    for name, info in sorted(graph.layers.items(), key=lambda kv: kv[1].kind == "opaque"):
        if info.kind == "buffer":
            continue
        for key, (shape, roles) in info.params.items():
            full = f"{name}.{key}" if key else name
            if ":" in key or full in seen:
                continue
            seen.add(full)
            keep = keeps.get(name, {})
            if full in tied:  # one tensor: counted once per distinct cut of it
                cut = cut_signature(roles, keep, info.groups)
                if cut in counted.setdefault(tied[full], []):
                    continue
                counted[tied[full]].append(cut)
            total += kept_elements(shape, roles, keep, info.groups)
    return total


def cut_signature(roles: tuple, keep: dict[str, np.ndarray], groups: int = 1) -> tuple | None:
    """What a cut keeps of a tensor with axis ``roles``: equal for two holders of one tensor
    exactly where they keep the same entries of it (``None``: nothing cut)."""
    kept = [keep.get(r) if r else None for r in roles]
    parts = tuple(None if v is None or v.all() else v.tobytes() for v in kept)
    return None if all(p is None for p in parts) else (groups, parts)


def layer_flops(graph: Graph, keeps: Keeps | None = None) -> dict[str, int]:
    """FLOPs per conv/linear layer, summed over its calls."""
    keeps = keeps or {}
    out: dict[str, int] = {}
    for node in graph:
        info = graph.layers.get(node.layer or "")
        if "weight_elems" in node.attrs:  # a conv or linear op no rule reads (its weight computed)
            key = node.layer or node.name
            flops = 2 * int(node.attrs["positions"]) * int(node.attrs["weight_elems"])
            out[key] = out.get(key, 0) + flops
            continue
        if info is not None and info.kind == "opaque" and "positions" in node.attrs:
            # a module without channel rules (attention): its matrices, never cut; those a
            # layer inside it owns (a DCN's offset conv, a CondConv's routing) count there
            inner = tuple(f"{n}." for n in graph.layers if n.startswith(f"{node.layer}."))
            elems = sum(int(np.prod(shape)) for key, (shape, _) in info.params.items()
                        if _is_matrix(shape) and not _is_bias(key)
                        and not f"{node.layer}.{key}".startswith(inner))  # fmt: skip
            out[node.layer] = out.get(node.layer, 0) + 2 * int(node.attrs["positions"]) * elems
            continue
        if node.op == "recurrent" and info is not None:  # every matrix at every step
            elems = sum(kept_elements(shape, roles, keeps.get(node.layer, {}), info.groups)
                        for key, (shape, roles) in info.params.items()
                        if len(shape) > 1 and not _is_bias(key, recurrent=True))  # fmt: skip
            out[node.layer] = out.get(node.layer, 0) + 2 * int(node.attrs["positions"]) * elems
            continue
        if node.op not in ("conv", "linear") or info is None:
            continue
        shape, roles = info.params[info.weight]
        elems = kept_elements(shape, roles, keeps.get(node.layer, {}), info.groups)
        out[node.layer] = out.get(node.layer, 0) + 2 * int(node.attrs.get("positions", 1)) * elems
    return out


def _is_matrix(shape: tuple[int, ...]) -> bool:
    """A matrix or kernel: two axes, or more with two of them longer than 1; a gain shaped
    to broadcast, ``(C, 1, 1)`` or a weight norm's ``(C, 1, 1, 1)``, multiplies no rows."""
    return len(shape) == 2 or sum(d > 1 for d in shape) >= 2


def _is_bias(key: str, recurrent: bool = False) -> bool:
    """A bias (per head in Keras' attention; ``B``, ``(directions, gates * hidden)``, in an
    ONNX recurrent layer): added, not multiplied, so no FLOPs of a matrix."""
    last = key.replace("/", ".").rsplit(".", 1)[-1]
    return last.endswith("bias") or recurrent and last == "B"


def count_flops(graph: Graph, keeps: Keeps | None = None) -> int:
    return sum(layer_flops(graph, keeps).values())


def count_product(graph: Graph, node: Node, batch: int) -> None:
    """Give an ``einsum`` node (a matrix product too) with a weight matrix operand the
    FLOPs of that weight: once per entry of the output along the axes it does not hold
    itself, per sample of ``batch``."""
    names = node.attrs.get("operands", node.inputs)
    shapes = [graph[n].shape for n in names]
    weights = [i for i, n in enumerate(names) if graph[n].op == "param"
               and sum(d > 1 for d in shapes[i] or ()) >= 2]  # fmt: skip
    if not weights or not all(isinstance(s, tuple) for s in shapes):
        return
    try:
        subs, out = einsum_subscripts(node.attrs["equation"], [len(s) for s in shapes])
    except Exception:  # noqa: BLE001 - the rule says what it cannot read
        return
    w = weights[0]
    held = math.prod(node.shape[out.index(c)] for c in subs[w] if c in out)
    rows = math.prod(node.shape) / max(1, held) / batch
    node.attrs = {**node.attrs, "positions": max(1, round(rows)),
                  "weight_elems": math.prod(shapes[w])}  # fmt: skip
