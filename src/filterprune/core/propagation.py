"""Channel propagation: label every tensor position with a channel-set id.

Each tensor gets an integer array of *ids*, broadcastable to its shape (size 1
on the axes that carry no channel information). Positions that share a set
(after union) must be kept or removed together. Rules in
:mod:`filterprune.core.rules` say how ids flow through each op; this module runs
them, records which layers read or write which ids, and turns every failure
into a 'blocked' set with a reason instead of an exception.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .graph import Graph, Node
from .unionfind import UnionFind

__all__ = ["Propagation", "Param", "LayerUse", "propagate", "RuleError"]


class RuleError(Exception):
    """Raised by a rule that cannot describe a node; the node is then blocked."""


@dataclass(frozen=True)
class Param:
    """A weight tensor read directly by an op (e.g. a layer-scale vector).

    ``axes``: for a weight reshaped on its way (``gamma.view(1, -1, 1, 1)``), the axis of
    the stored weight each axis comes from (``None`` for an inserted size-1 axis);
    ``None`` when the shape is the stored one. ``also``: other weights of the same shape
    this one is computed with entry by entry (a frozen BatchNorm's
    ``weight * (running_var + eps).rsqrt()``), cut along the same channels. ``made``: a
    tensor the forward makes (``torch.zeros(...)``), not a weight of the model.
    ``buffer``: a buffer of the model (a running statistic, a stream's cache).
    """

    name: str
    shape: tuple[int, ...]
    axes: tuple[int | None, ...] | None = None
    also: tuple[Param, ...] = ()
    made: bool = False
    buffer: bool = False

    @property
    def label(self) -> str:
        """How messages name it: ``weight gamma``, ``buffer cache``, ``tensor zeros_1 made
        in forward``."""
        if self.made:
            return f"tensor {self.name} made in forward"
        return f"{'buffer' if self.buffer else 'weight'} {self.name}"

    def source_axis(self, axis: int) -> int | None:
        """The stored weight's axis behind ``axis`` of this view of it."""
        return axis if self.axes is None else self.axes[axis]


@dataclass
class LayerUse:
    """Ids along one role of a layer ("out", "in", "channel" or "param:<p>:<axis>")."""

    ids: np.ndarray
    node: str


@dataclass
class Propagation:
    """State of one propagation run; rules call its helpers."""

    graph: Graph
    uf: UnionFind = field(default_factory=UnionFind)
    values: dict[str, Any] = field(default_factory=dict)
    uses: dict[str, dict[str, LayerUse]] = field(default_factory=dict)
    producers: list[str] = field(default_factory=list)
    constraints: list[np.ndarray] = field(default_factory=list)
    node_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)
    sizes: list[tuple[np.ndarray, list[int], str]] = field(default_factory=list)

    # -- id creation and blocking -------------------------------------------------
    def fresh(self, ndim: int, axis: int, n: int) -> np.ndarray:
        """New ids for ``n`` channels along ``axis`` of an ``ndim``-d tensor."""
        shape = [1] * ndim
        shape[axis] = n
        return self.uf.new(n).reshape(shape)

    def opaque(self, reason: str, weak: bool = False) -> np.ndarray:
        """One blocked id for a whole tensor whose channels we cannot follow (``weak``: a
        reason that gives way to any other where the sets meet)."""
        ids = self.uf.new(1).reshape(())
        self.uf.block(ids, reason, weak)
        return ids

    def block(self, ids: Any, reason: str, weak: bool = False) -> None:
        for arr in _arrays(ids):
            self.uf.block(arr, reason, weak)

    def hold_layer(self, layer: str, reason: str) -> None:
        """Keep every channel set ``layer`` reads or writes whole (an op without a rule
        reads its weights), whether its other calls come before or after."""
        self.held.setdefault(layer, reason)

    def read_size(self, ids: np.ndarray, dims: list[int], reason: str) -> None:
        """A size read along ``dims`` of a tensor with ``ids``: its channels there stay
        whole. Checked once every union is made, since an axis that varies now may not
        after (the paths of ``torch.stack(paths, 1)`` are tied by a later sum)."""
        self.sizes.append((ids, dims, reason))

    def hold_param(self, name: str, reason: str) -> None:
        """:meth:`hold_layer` for parameter ``name``'s layer: the longest dotted prefix
        of ``name`` that is a layer of the graph (``enc.weight`` -> ``enc``)."""
        layer = name
        while layer not in self.graph.layers and "." in layer:
            layer = layer.rsplit(".", 1)[0]
        self.hold_layer(layer, reason)

    # -- layer bookkeeping --------------------------------------------------------
    def use(self, layer: str, role: str, ids: np.ndarray, node: str) -> None:
        """Record that ``layer``'s ``role`` axis follows ``ids`` (1-d).

        A layer called twice (shared weights) must cut the same channels at both
        calls, so its ids are united with the earlier ones.
        """
        ids = np.asarray(ids, dtype=np.int64).ravel()
        roles = self.uses.setdefault(layer, {})
        if role in roles:
            old = roles[role].ids
            if old.shape != ids.shape:
                raise RuleError(f"layer {layer!r} is called with different widths")
            self.uf.union_arrays(old, ids)
        else:
            roles[role] = LayerUse(ids, node)

    def produce(self, layer: str, ids: np.ndarray, node: str) -> None:
        """Record ``layer`` as the source of the filters ``ids``."""
        self.use(layer, "out", ids, node)
        if layer not in self.producers:
            self.producers.append(layer)

    def require_equal_blocks(self, ids: np.ndarray) -> None:
        """Positions ``ids`` (n_blocks x block_size) must keep equal counts per block."""
        self.constraints.append(np.asarray(ids, dtype=np.int64))

    def canonical(self, ids: np.ndarray) -> np.ndarray:
        """Map ids to their roots and drop axes along which they are constant."""
        return compress(self.uf.roots(ids))


def compress(ids: np.ndarray) -> np.ndarray:
    """Shrink every axis along which ``ids`` is constant to size 1."""
    for axis in range(ids.ndim):
        if ids.shape[axis] > 1:
            first = np.take(ids, [0], axis=axis)
            if np.array_equal(np.broadcast_to(first, ids.shape), ids):
                ids = first
    return ids


def _arrays(value: Any) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _arrays(v)]
    return []


def _fits(ids: np.ndarray, shape: Any) -> bool:
    if shape is None or not isinstance(shape, tuple):
        return True
    if ids.ndim > len(shape):
        return False
    tail = shape[len(shape) - ids.ndim :]
    return all(i in (1, s) for i, s in zip(ids.shape, tail, strict=True))


def _check(value: Any, shape: Any) -> bool:
    if isinstance(value, np.ndarray):
        return _fits(value, shape)
    if isinstance(value, tuple) and isinstance(shape, list):
        return len(value) == len(shape) and all(
            _check(v, s) for v, s in zip(value, shape, strict=True)
        )
    return True


def _batch_of_one(graph: Graph) -> Graph:
    """``graph`` with an empty batch read as a batch of one: what a routing picks for an
    expert no sample chose (``x.index_select(0, idx)`` with no index) keeps its channels,
    which an empty layout would not carry to what holds them."""

    def one(shape: Any) -> Any:
        if isinstance(shape, list):
            return [one(s) for s in shape]
        if isinstance(shape, tuple) and len(shape) > 1 and shape[0] == 0:
            return (1, *shape[1:])
        return shape

    if not any(one(n.shape) != n.shape for n in graph):
        return graph
    view = copy.copy(graph)
    view.nodes = {n.name: dataclasses.replace(n, shape=one(n.shape)) for n in graph}
    return view


def _unread_layers(graph: Graph) -> list[str]:
    """Layers whose outputs reach no output of the graph: a re-ID net's classifier, run in
    every mode and returned in training only. Cut as if nothing read them, training
    would return fewer classes."""
    live, todo = set(), list(graph.outputs)
    while todo:
        name = todo.pop()
        if name not in live and name in graph.nodes:
            live.add(name)
            todo.extend(graph[name].inputs)
    # a layer without weights (timm DLA's nn.Identity "project", whose result an inner
    # tree computes again) only reads its input: that its output goes unread cuts nothing
    return [n.name for n in graph if n.layer in graph.layers and n.name not in live]


def _written_back(state: Propagation) -> None:
    """Weights combined entry by entry with a layer's weight and never read after
    (``conv.weight.data *= self.mask``, written back in place): cut along that layer's
    channels as its weight is, or the layer and theirs stay whole where they cannot be."""
    graph = state.graph
    read = {i for n in graph for i in n.inputs} | set(graph.outputs)
    for node in graph:
        value = state.values.get(node.name)
        if node.name in read:
            continue
        weights = _weights_behind(state, node) if node.op in ("elementwise", "identity") \
            and not isinstance(value, Param) else []  # fmt: skip
        if weights:
            # a layer's weight changed by values no rule follows (a mask viewed), written
            # in place or assigned (``w.data = torch.where(...)``, which no trace records)
            state.hold_param(weights[0].name, f"{node.label or node.op}: writes into "
                                              f"{weights[0].label} values that cannot be cut "
                                              "with it")  # fmt: skip
            continue
        if not isinstance(value, Param) or not value.also:
            continue
        layer = _owner(graph, value)
        if layer is None:  # written into a tensor made in forward: no weight changes
            continue
        roles = graph.layers[layer[0]].params[layer[1]][1] if value.axes is None else ()
        uses = {a: state.uses.get(layer[0], {}).get(r) for a, r in enumerate(roles) if r}
        for other in value.also:
            if other.name.startswith(f"{layer[0]}.") and other.shape == value.shape \
                    and layer[1] != "":  # fmt: skip
                continue  # the layer's own, shaped as its weight: cut alike (a mask)
            if value.axes is not None or not _tie_written(state, node, value, other, uses):
                reason = (f"{node.label or node.op}: writes {other.label} into {value.label}, "
                          "which cannot be cut with it")
                for param in (value, other):
                    state.hold_param(param.name, reason)


def _weights_behind(state: Propagation, node: Node) -> list[Param]:
    """Layer weights of ``node``'s shape that the elementwise ops ending at ``node`` read
    (``w * softmax(g).view(-1, 1, 1, 1) * n``): what a write of its result changes."""
    graph, found, todo, seen = state.graph, [], [node], set()
    while todo:
        for name in todo.pop().inputs:
            value, source = state.values.get(name), graph[name]
            if isinstance(value, Param):
                if value.shape == node.shape and _owner(graph, value) is not None:
                    found.append(value)
            elif source.op in ("elementwise", "identity") and source.shape == node.shape \
                    and name not in seen:  # fmt: skip
                seen.add(name)
                todo.append(source)
    return found


def _owner(graph: Graph, param: Param) -> tuple[str, str] | None:
    """``(layer, parameter key)`` of a weight (``""``: a bare weight, its own layer)."""
    if param.name in graph.layers:
        return param.name, ""
    layer, _, key = param.name.rpartition(".")
    info = graph.layers.get(layer)
    return (layer, key) if info is not None and key in info.params else None


def _tie_written(state: Propagation, node: Node, value: Param, other: Param,
                 uses: dict[int, LayerUse | None]) -> bool:  # fmt: skip
    """Cut ``other`` along ``value``'s layer's channels, axis by axis; False where it
    cannot be (another shape, a view of it, a grouped weight's partial axis)."""
    owner = _owner(state.graph, other)
    if owner is None or other.shape != value.shape:
        return False
    roles = state.graph.layers[owner[0]].params[owner[1]][1]
    for axis, use in uses.items():
        if use is None or value.shape[axis] == 1:  # a depthwise conv's one input
            continue
        source = other.source_axis(axis)
        if source is None:  # broadcast along it (a gate per filter): nothing to cut
            continue
        if use.ids.size != value.shape[axis]:
            return False
        if owner[1] == "":  # a bare weight: cut along the axis it is read on
            state.use(owner[0], f"axis{source}", use.ids, node.name)
            continue
        theirs = state.uses.get(owner[0], {}).get(roles[source]) if roles[source] else None
        if theirs is None or theirs.ids.size != use.ids.size:
            return False
        state.uf.union_arrays(theirs.ids, use.ids)  # another layer's weight: cut alike
    return True


def propagate(graph: Graph, rules: dict[str, Callable[..., Any]]) -> Propagation:
    """Run every node's rule in order and block what reaches the model outputs."""
    state = Propagation(_batch_of_one(graph))
    for node in state.graph:
        ins = [state.values.get(name) for name in node.inputs]
        state.values[node.name] = _run(state, rules, node, ins)
    _written_back(state)
    for name in graph.outputs:
        value = state.values.get(name)
        if isinstance(value, Param):
            continue
        state.block(value, "feeds a model output")
    for name in _unread_layers(graph):
        state.block(state.values.get(name), "its output reaches no output of the captured "
                    "forward (a model may return it in training only)")
    for ids, dims, reason in state.sizes:
        roots = compress(state.uf.roots(ids))
        if any(roots.shape[d] > 1 for d in dims):
            state.block(roots, reason)
    for layer, reason in state.held.items():
        for use in state.uses.get(layer, {}).values():
            state.block(use.ids, reason)
    return state


def _run(state: Propagation, rules: dict[str, Callable[..., Any]], node: Node, ins: list[Any]):
    rule = rules.get(node.op)
    what = node.label or node.op
    if rule is None:
        reason = f"unsupported op {what}"
    else:
        try:
            out = rule(state, node, ins)
            if _check(out, node.shape):
                read = state.uses.get(node.layer or "", {}).get("in")
                if "in_held" in node.attrs and read is not None:  # what it reads stays
                    state.block(read.ids, f"{what}: {node.attrs['in_held']}")
                return out
            reason = f"{what}: channel layout does not match its output shape"
        except RuleError as err:
            reason = f"{what}: {err}"
    for value in ins:
        if isinstance(value, Param):
            state.hold_param(value.name, reason)
        else:
            state.block(value, reason)
    if node.layer and node.op == "stop":  # an op without a rule reads this layer's weights
        state.hold_layer(node.layer, reason)
    for layer in node.attrs.get("reads_layers", ()) if node.op == "stop" else ():
        state.hold_layer(layer, reason)  # and these layers' weights too
    if isinstance(node.shape, list):
        return tuple(state.opaque(reason) for _ in node.shape)
    return state.opaque(reason)
