"""FLOPs and parameter accounting under a set of keep vectors.

FLOPs are counted for convolution and linear layers as ``2 * MACs``; a layer's
MACs are its (kept) weight elements times the output positions it is applied at.
A module the frontend cannot see into (attention) counts its matrices, uncut, at
the positions the frontend gives it.
"""

from __future__ import annotations

import numpy as np

from .graph import Graph

__all__ = ["kept_elements", "count_params", "count_flops", "layer_flops"]

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
    total = 0
    for name, info in sorted(graph.layers.items(), key=lambda kv: kv[1].kind == "opaque"):
        if info.kind == "buffer":
            continue
        for key, (shape, roles) in info.params.items():
            full = f"{name}.{key}" if key else name
            if ":" not in key and full not in seen:
                seen.add(full)
                total += kept_elements(shape, roles, keeps.get(name, {}), info.groups)
    return total


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
            # a module without channel rules (attention): its matrices, never cut
            elems = sum(int(np.prod(shape)) for shape, _ in info.params.values() if len(shape) > 1)
            out[node.layer] = out.get(node.layer, 0) + 2 * int(node.attrs["positions"]) * elems
            continue
        if node.op == "recurrent" and info is not None:  # every matrix at every step
            elems = sum(kept_elements(shape, roles, keeps.get(node.layer, {}), info.groups)
                        for shape, roles in info.params.values() if len(shape) > 1)
            out[node.layer] = out.get(node.layer, 0) + 2 * int(node.attrs["positions"]) * elems
            continue
        if node.op not in ("conv", "linear") or info is None:
            continue
        shape, roles = info.params[info.weight]
        elems = kept_elements(shape, roles, keeps.get(node.layer, {}), info.groups)
        out[node.layer] = out.get(node.layer, 0) + 2 * int(node.attrs.get("positions", 1)) * elems
    return out


def count_flops(graph: Graph, keeps: Keeps | None = None) -> int:
    return sum(layer_flops(graph, keeps).values())
