"""From propagated channel ids to pruning groups.

A *group* is a set of layers whose filters must be cut together (a residual
add ties the convolutions feeding it; a depthwise conv follows its producer).
Its *channels* are the union-find roots of its producers' filters. Each group
is prunable or carries the reason it is left alone.

Example:
    >>> from filterprune.core.graph import Graph, Node, LayerInfo
    >>> g = Graph()
    >>> _ = g.add(Node("x", "input", shape=(1, 3, 8, 8)))
    >>> for i, src in enumerate(["x", "c0"]):
    ...     _ = g.add(Node(f"c{i}", "conv", [src], shape=(1, 8, 8, 8), layer=f"c{i}",
    ...               attrs={"in_channels": 3 if i == 0 else 8, "out_channels": 8}))
    >>> g.outputs = ["c1"]
    >>> a = analyze(g)
    >>> for grp in a.groups:
    ...     print(grp.producers, grp.size, grp.reason)
    ['c0'] 8 first convolution (prune_first_conv is off)
    ['c1'] 8 feeds a model output
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .graph import Graph
from .propagation import Propagation, propagate
from .rules import RULES
from .unionfind import UnionFind

__all__ = ["AnalysisOptions", "Group", "Analysis", "analyze"]


@dataclass(frozen=True, kw_only=True)
class AnalysisOptions:
    """Which producers may be pruned at all (the config's structural switches)."""

    prune_first_conv: bool = False
    prune_downsample_convs: bool = False
    prune_linear: bool = True
    scope_reason: Any = None  # Callable[[str], str | None]: why a layer is out of scope


@dataclass
class Group:
    """Layers that share one channel mask.

    Attributes:
        id: Index in :attr:`Analysis.groups`.
        roots: The group's channels (union-find roots), in a stable order.
        producers: Layers whose filters create these channels.
        reason: ``None`` if prunable, else why the group is left whole.
        blocks: Equal-split constraints, each an array (n_blocks, k) of positions
            given as indices into ``roots`` (-1 where a position is outside the group).
        width: Filters of a producer each channel stands for (the greatest common
            divisor over channels and producers): more than 1 where filters are tied
            within one layer, e.g. by a GroupNorm, whose groups are cut whole.
    """

    id: int
    roots: np.ndarray
    producers: list[str]
    reason: str | None = None
    blocks: list[np.ndarray] = field(default_factory=list)
    width: int = 1

    @property
    def size(self) -> int:
        return int(self.roots.size)

    @property
    def prunable(self) -> bool:
        return self.reason is None


@dataclass
class Analysis:
    """The result of channel analysis on one graph."""

    graph: Graph
    state: Propagation
    groups: list[Group]
    root_group: dict[int, tuple[int, int]]  # root -> (group id, index in group.roots)

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def layer_roots(self) -> dict[str, dict[str, np.ndarray]]:
        """Per layer and role, the channel root of every position along that axis."""
        uf = self.state.uf
        return {
            layer: {role: uf.roots(use.ids) for role, use in roles.items()}
            for layer, roles in self.state.uses.items()
        }

    def filters(self, group: Group) -> int:
        """Filters each producer of ``group`` has in it (the most of any): the group's
        ``size`` counts its channel units, fewer where channels are tied together."""
        uf, ids = self.state.uf, self.state.uses
        return max((int(np.isin(uf.roots(ids[p]["out"].ids), group.roots).sum())
                    for p in group.producers), default=0)  # fmt: skip

    def followed(self) -> dict[str, list[int | None]]:
        """Per layer that is no group's producer and has filters (a depthwise or grouped
        conv after a producer): the group of each of its filters, ``None`` for a filter
        that follows channels of no group (the model input's)."""
        producers = {p for g in self.groups for p in g.producers}
        out = {}
        for layer, roles in self.layer_roots().items():
            if layer not in producers and "out" in roles and roles["out"].size:
                found = (self.root_group.get(int(r)) for r in roles["out"])
                out[layer] = [None if f is None else f[0] for f in found]
        return out

    def followers(self) -> dict[int, list[str]]:
        """Group id -> the layers of :meth:`followed` whose filters follow its channels:
        cut or kept whole with it."""
        out: dict[int, list[str]] = {}
        for layer, ids in self.followed().items():
            for gid in dict.fromkeys(i for i in ids if i is not None):
                out.setdefault(gid, []).append(layer)
        return out

    def kept_lookup(self, kept: dict[int, np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """A function telling, for an array of channel ids, whether each is kept.

        ``kept`` holds kept channels per group id (boolean over ``group.roots``). Ids
        outside every group, or in a group ``kept`` does not name, count as kept. The
        table is built once, so call the result as often as needed (a converter asks
        once per tensor).

        Example:
            >>> lookup = analysis.kept_lookup(plan.kept)  # doctest: +SKIP
            >>> lookup(analysis.state.values["conv1"])  # same shape, bool  # doctest: +SKIP
        """
        keys = np.fromiter(self.root_group, dtype=np.int64, count=len(self.root_group))
        vals = np.array(
            [bool(kept[g][i]) if g in kept else True for g, i in self.root_group.values()],
            dtype=bool,
        )
        order = np.argsort(keys)
        keys, vals = keys[order], vals[order]
        uf = self.state.uf

        def lookup(ids: np.ndarray) -> np.ndarray:
            roots = uf.roots(np.asarray(ids, dtype=np.int64))
            if not len(keys):
                return np.ones(roots.shape, dtype=bool)
            pos = np.clip(np.searchsorted(keys, roots), 0, len(keys) - 1)
            return np.where(keys[pos] == roots, vals[pos], True)

        return lookup

    def kept_ids(self, ids: np.ndarray, kept: dict[int, np.ndarray]) -> np.ndarray:
        """Whether each channel id in ``ids`` is kept, given kept channels per group id.

        Ids outside every group (channels nothing prunes) count as kept. Frontends use
        it on a node's value (``state.values[name]``) to find the kept extent of each
        axis, e.g. to rewrite a literal reshape target.
        """
        return self.kept_lookup(kept)(ids)

    def keeps(self, kept: dict[int, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Boolean keep vectors per layer and role, given kept channels per group id."""
        lookup = self.kept_lookup(kept)
        return {
            layer: {role: lookup(use.ids) for role, use in roles.items()}
            for layer, roles in self.state.uses.items()
        }


def analyze(graph: Graph, options: AnalysisOptions | None = None) -> Analysis:
    """Propagate channels through ``graph`` and form pruning groups."""
    options = options or AnalysisOptions()
    state = propagate(graph, RULES)
    uf = state.uf
    producer_roots = {p: uf.roots(state.uses[p]["out"].ids) for p in state.producers}
    constraints = [uf.roots(c) for c in state.constraints]
    groups = _build_groups(producer_roots, constraints)
    _set_widths(groups, producer_roots)
    root_group = {int(r): (g.id, i) for g in groups for i, r in enumerate(g.roots)}
    for c in constraints:
        _attach_constraint(groups, root_group, c)
    first = _first_layers(graph)
    for g in groups:
        g.reason = _reason(g, uf, graph, options, first)
    return Analysis(graph, state, groups, root_group)


def _build_groups(producer_roots, constraints) -> list[Group]:
    """Channels touched by the same set of producers form a group; constraints join groups.

    The set of producers touching a channel is summarised by a xor of random 64-bit
    tags, so grouping is vectorised over all channels at once.
    """
    names = list(producer_roots)
    if not names:
        return []
    tags = np.random.default_rng(0).integers(1, 2**62, size=len(names), dtype=np.int64)
    roots = np.concatenate([producer_roots[n] for n in names])
    owner = np.concatenate([np.full(producer_roots[n].size, i) for i, n in enumerate(names)])
    pairs = np.unique(np.stack([roots, owner], axis=1), axis=0)  # one row per (root, layer)
    uniq, _, inverse = np.unique(pairs[:, 0], return_index=True, return_inverse=True)
    sig = np.zeros(uniq.size, dtype=np.int64)
    np.bitwise_xor.at(sig, inverse, tags[pairs[:, 1]])
    keys, key_of_root = np.unique(sig, return_inverse=True)
    links = UnionFind()
    links.new(keys.size)
    for c in constraints:  # groups under one equal-split constraint are chosen together
        present = np.unique(c)
        idx = np.searchsorted(uniq, present)
        idx = idx[(idx < uniq.size) & (uniq[np.minimum(idx, uniq.size - 1)] == present)]
        links.union_all(key_of_root[idx])
    comp = links.roots(key_of_root)
    # channel order: by first appearance in producer order, then position
    appear = np.unique(roots, return_index=True)[1]
    order = np.argsort(appear, kind="stable")
    groups: dict[int, Group] = {}
    for i in order:
        c = int(comp[i])
        if c not in groups:
            groups[c] = Group(len(groups), [], [])
        groups[c].roots.append(int(uniq[i]))
    layer_comp = np.unique(np.stack([comp[inverse], pairs[:, 1]], axis=1), axis=0)
    for c, layer in layer_comp.tolist():
        groups[c].producers.append(names[layer])
    for g in groups.values():
        g.roots = np.asarray(g.roots, dtype=np.int64)
        g.producers.sort(key=names.index)
    return list(groups.values())


def _set_widths(groups: list[Group], producer_roots: dict[str, np.ndarray]) -> None:
    for g in groups:
        counts = []
        for p in g.producers:
            roots = producer_roots[p]
            counts.append(np.unique(roots[np.isin(roots, g.roots)], return_counts=True)[1])
        g.width = int(np.gcd.reduce(np.concatenate(counts))) if counts else 1


def _attach_constraint(groups, root_group, constraint: np.ndarray) -> None:
    gids = {root_group[int(r)][0] for r in np.unique(constraint) if int(r) in root_group}
    if len(gids) != 1:
        return  # touches no group (nothing to prune there) or was merged into one above
    group = groups[gids.pop()]
    local = np.vectorize(lambda r: root_group.get(int(r), (None, -1))[1], otypes=[np.int64])
    group.blocks.append(local(constraint))


def _first_layers(graph: Graph) -> set[str]:
    """Layers reached from a model input without passing another conv or linear layer,
    or an op no rule reads that computes one (``F.conv1d(x, filterbank.filters())``)."""
    free: dict[str, bool] = {}
    first: set[str] = set()
    for node in graph:
        # only values flow: a size read from the input (``x.shape[2:]``: shape None) and a
        # reshape's size sources (``tied_dims``, inputs after the first) carry none
        data = node.inputs[:1] if node.op == "reshape" else node.inputs
        reached = node.op == "input" or any(free.get(i, False) for i in data
                                            if graph[i].shape is not None)
        if node.op in ("conv", "linear", "recurrent"):
            if reached and node.layer:
                first.add(node.layer)
            free[node.name] = False
        else:
            free[node.name] = reached and not (node.op == "stop" and _weighted(graph, node))
    return first


def _weighted(graph: Graph, node: Any) -> bool:
    """Whether a stop multiplies by a weight: a conv or linear op no rule reads (attribute
    ``weighted``: on a weight computed in forward, or another module's), or a layer no
    rule reads that holds a matrix or kernel (two axes or more longer than 1, unlike a
    per-channel scale)."""
    info = graph.layers.get(node.layer) if node.layer else None
    return node.attrs.get("weighted", False) or (info is not None and info.kind == "opaque"
                                                 and any(sum(n > 1 for n in shape) >= 2
                                                         for shape, _ in info.params.values()))


def _reason(group: Group, uf: UnionFind, graph: Graph, options, first: set[str]) -> str | None:
    for r in group.roots:
        why = uf.reasons.get(int(r))
        if why:
            return why
    for layer in group.producers:
        info = graph.layers.get(layer)
        if layer in first and not options.prune_first_conv:
            if info is not None and info.kind != "conv":  # a Linear on a second input (FiLM)
                return f"{info.kind} layer {layer} reads a model input (prune_first_conv is off)"
            return "first convolution (prune_first_conv is off)"
        if info and info.stride > 1 and not options.prune_downsample_convs:
            return f"downsampling convolution {layer} (prune_downsample_convs is off)"
        if info and info.kind == "linear" and not options.prune_linear:
            return f"linear layer {layer} (prune_linear is off)"
        if options.scope_reason is not None:
            why = options.scope_reason(layer)
            if why:
                return f"{layer} {why}"
    if group.size < 2:
        return "its channels are all tied together (one channel class)"
    return None
