"""GroupNorm as exporters write it below opset 21, read as one op while convert works.

PyTorch's exporters write ``nn.GroupNorm`` as ``Reshape(x, [N, G, -1])`` ->
``InstanceNormalization`` (scale 1, bias 0, one per group) -> ``Reshape`` back to ``x``'s
shape -> ``Mul`` by the per-channel weight -> ``Add`` of the per-channel bias. Read node by
node, the first Reshape mixes channels with space, so every channel stayed. :func:`fuse`
replaces each such chain by one ``GroupNormalization`` with a scale and bias per channel
(opset 21's meaning), which the analysis and the rewrite know (whole groups go, and
``num_groups`` falls); :func:`unfuse` writes the chain back with the new sizes, so the file
keeps its opset.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .facts import attrs_of

__all__ = ["fuse", "unfuse"]


@dataclass
class _Chain:
    nodes: list[onnx.NodeProto]  # Reshape, InstanceNormalization, Reshape[, Mul][, Add]
    groups: int
    scale: np.ndarray  # per channel
    bias: np.ndarray
    shapes: dict[str, tuple[int, ...]]  # "Mul" / "Add": the constant's shape
    trailing: int = -1  # axes after the channels, where no constant tells (affine=False)


def _consts(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    found = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            found[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return found


def _per_channel(value: np.ndarray | None) -> int:
    """How many axes follow the channel axis of a constant shaped ``(..., 1, C, 1, ..., 1)``
    (C > 1), or -1."""
    dims = list(value.shape) if value is not None else []
    while dims and dims[0] == 1:
        dims.pop(0)
    return len(dims) - 1 if dims and dims[0] > 1 and all(d == 1 for d in dims[1:]) else -1


def _chain(start: onnx.NodeProto, readers: dict, consts: dict) -> _Chain | None:
    """The GroupNorm chain that starts at Reshape ``start``, or ``None``."""
    target = consts.get(start.input[1]) if len(start.input) > 1 else None
    if target is None or target.shape != (3,) or target[2] != -1 or target[1] < 1:
        return None
    groups = int(target[1])
    norm = _only_reader(start.output[0], readers, "InstanceNormalization")
    if norm is None:
        return None
    scale, bias = (consts.get(norm.input[i]) for i in (1, 2))
    if scale is None or bias is None or scale.shape != (groups,) or not (
            np.all(scale == 1) and np.all(bias == 0)):  # fmt: skip
        return None
    back = _only_reader(norm.output[0], readers, "Reshape")
    if back is None:
        return None
    nodes, out, values, trailing = [start, norm, back], back.output[0], {}, set()
    for op in ("Mul", "Add"):
        node = _only_reader(out, readers, op)
        other = [] if node is None else [i for i in node.input if i != out]
        value = consts.get(other[0]) if len(other) == 1 else None
        if _per_channel(value) < 0 or value.size % groups:
            continue
        nodes.append(node)
        values[op], out = value, node.output[0]
        trailing.add(_per_channel(value))
    if not values:  # affine=False: the channel count comes from the input's shape
        return _Chain(nodes, groups, scale[:0], scale[:0], {})
    if len(trailing) > 1 or len({v.size for v in values.values()}) > 1:
        return None
    like = next(iter(values.values()))
    ones = np.ones(like.size, like.dtype)
    return _Chain(nodes, groups, values.get("Mul", ones).reshape(-1),
                  values.get("Add", ones * 0).reshape(-1),
                  {op: v.shape for op, v in values.items()})  # fmt: skip


def _sized(model: onnx.ModelProto, chains: list[_Chain]) -> list[_Chain]:
    """``chains``, those without a per-channel constant (affine=False) given their
    channel count from the inferred shape of their input (left out where unknown)."""
    if all(c.shapes for c in chains):
        return chains
    graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph  # (Shape -> Reshape)
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else 0
                     for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.value_info, *graph.output]}  # fmt: skip
    producers = {o: n for n in graph.node for o in n.output}
    weights = {i.name: tuple(i.dims) for i in graph.initializer}
    out = []
    for chain in chains:
        x = chain.nodes[0].input[0]
        shape = dims.get(x) or _conv_output(producers.get(x), weights)
        if not chain.shapes:
            if len(shape) < 3 or not shape[1] or shape[1] % chain.groups:
                continue
            chain.scale = np.ones(shape[1], chain.scale.dtype)
            chain.bias = np.zeros(shape[1], chain.scale.dtype)
            chain.trailing = len(shape) - 2
        out.append(chain)
    return out


def _conv_output(node: onnx.NodeProto | None, weights: dict) -> list[int]:
    """``[0, channels, 0, ...]`` for the output of a Conv of a constant weight, where shape
    inference does not reach (after a Reshape to a computed shape); else []."""
    if node is None or node.op_type != "Conv" or node.input[1] not in weights:
        return []
    w = weights[node.input[1]]
    return [0, w[0], *[0] * (len(w) - 2)]


def _only_reader(name: str, readers: dict, op: str) -> onnx.NodeProto | None:
    found = readers.get(name, [])
    return found[0] if len(found) == 1 and found[0].op_type == op else None


def fuse(model: onnx.ModelProto, skip: Collection[str] = ()
         ) -> tuple[onnx.ModelProto, dict[str, dict]]:  # fmt: skip
    """``model`` with each GroupNorm chain as one ``GroupNormalization`` node (but those
    whose output is in ``skip``), and what :func:`unfuse` needs to write it back (by the
    fused node's output; ``"trailing"``: how many axes its input has after the channels,
    which the caller checks against the input's shape)."""
    graph = model.graph
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    consts = _consts(graph)
    outputs = {o.name for o in graph.output}
    chains = [c for n in graph.node if n.op_type == "Reshape"
              for c in [_chain(n, readers, consts)] if c is not None
              and not outputs & {n.output[0] for n in c.nodes[:-1]}
              and c.nodes[-1].output[0] not in skip]  # fmt: skip
    if not chains:
        return model, {}
    chains = _sized(model, chains)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    drop = {id(n) for c in chains for n in c.nodes[1:]}
    firsts = {id(c.nodes[0]): c for c in chains}
    nodes, fused = [], {}
    for n in model.graph.node:
        if id(n) in drop:
            continue
        chain = firsts.get(id(n))
        if chain is None:
            nodes.append(n)
            continue
        name = chain.nodes[-1].output[0]
        scale, bias = f"{name}__gn_scale", f"{name}__gn_bias"
        out.graph.initializer.extend([
            numpy_helper.from_array(chain.scale, scale),
            numpy_helper.from_array(chain.bias, bias)])  # fmt: skip
        eps = attrs_of(chain.nodes[1]).get("epsilon", 1e-5)
        nodes.append(onnx.helper.make_node(
            "GroupNormalization", [n.input[0], scale, bias], [name], name=chain.nodes[1].name,
            num_groups=chain.groups, epsilon=eps))  # fmt: skip
        trailing = (_per_channel(chain.scale.reshape(next(iter(chain.shapes.values()))))
                    if chain.shapes else chain.trailing)  # fmt: skip
        fused[name] = {"chain": [onnx.NodeProto.FromString(c.SerializeToString())
                                 for c in chain.nodes], "shapes": chain.shapes,
                       "trailing": trailing}  # fmt: skip
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, fused


def unfuse(model: onnx.ModelProto, fused: dict[str, dict]) -> None:
    """Write each fused node of ``model`` back as its chain, at its new sizes."""
    if not fused:
        return
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for n in graph.node:
        if n.op_type != "GroupNormalization" or n.output[0] not in fused:
            nodes.append(n)
            continue
        nodes.extend(_written_back(n, fused[n.output[0]], inits, graph))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _written_back(node: onnx.NodeProto, saved: dict, inits: dict,
                  graph: onnx.GraphProto) -> list[onnx.NodeProto]:  # fmt: skip
    reshape, norm, back, *affine = saved["chain"]
    groups = attrs_of(node)["num_groups"]
    scale, bias = (numpy_helper.to_array(inits[node.input[i]]) for i in (1, 2))
    name = node.output[0]

    def const(value: np.ndarray, tag: str) -> str:
        graph.initializer.append(numpy_helper.from_array(value, f"{name}__gn_{tag}"))
        return f"{name}__gn_{tag}"

    reshape.input[0] = node.input[0]
    reshape.input[1] = const(np.array([0, groups, -1], np.int64), "groups")
    dtype = scale.dtype
    norm.input[1] = const(np.ones(groups, dtype), "ones")
    norm.input[2] = const(np.zeros(groups, dtype), "zeros")
    shape = onnx.helper.make_node("Shape", [node.input[0]], [f"{name}__gn_shape"])
    back.input[1] = shape.output[0]
    for n in affine:
        value = scale if n.op_type == "Mul" else bias
        dims = [-1 if d > 1 else 1 for d in saved["shapes"][n.op_type]]
        at = 1 if n.input[0] in (back.output[0], *(a.output[0] for a in affine)) else 0
        n.input[at] = const(value.reshape(dims), n.op_type.lower())
    return [reshape, norm, shape, back, *affine]
