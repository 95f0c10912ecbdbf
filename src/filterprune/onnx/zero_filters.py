"""Which channels of an ONNX model can go: zero filters, found and proven irrelevant.

A channel may be removed when its value can never change the model's outputs:
every layer that reads it (a Conv, Gemm or MatMul input column) either has zero
weights for it, or receives a value that is provably zero there. Zeros are
followed forward from zero filters (weights and bias zero) through ops that map
0 to 0; a BatchNormalization whose shift ``B - mean * scale / sqrt(var + eps)`` is
not zero, a Sigmoid or an Add of a constant end that proof, and one whose scale and
shift are both zero starts one (network slimming before BN folding). Which channels must
go together, and which cannot go at all (a model output, an unsupported op), is
the core's channel analysis, shared with the PyTorch and Keras frontends; what a
group keeps beyond the channels still read (at least one; equal groups for a
grouped convolution) is the core's selection, with its reasons; on top, every tensor an
op reads keeps one channel (no op is given an empty tensor).

Example:
    >>> decision = find_removable(capture(model))  # doctest: +SKIP
    >>> decision.plan.kept  # group id -> kept channels  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..core.analysis import Analysis, AnalysisOptions, analyze
from ..core.graph import Node
from ..core.pruner import Plan
from ..core.selection import AT_LEAST_ONE, select_required
from .capture import Captured

__all__ = ["Decision", "find_removable"]

_EMPTY = np.zeros(0, dtype=np.int64)
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_OPTIONS = AnalysisOptions(prune_first_conv=True, prune_downsample_convs=True, prune_linear=True)


@dataclass
class Decision:
    """What goes and what stays, with reasons.

    Attributes:
        analysis: The core analysis of the captured graph.
        plan: Kept channels per prunable group.
        zero_rows: Producer layer -> bool per filter: weights and bias are zero, or the
            BatchNormalization that alone reads it zeroes its output (gamma and beta 0).
        reasons: Channel root -> why a zero filter on it is kept.
    """

    analysis: Analysis
    plan: Plan
    zero_rows: dict[str, np.ndarray]
    reasons: dict[int, str] = field(default_factory=dict)

    def lookup(self) -> Callable[[np.ndarray], np.ndarray]:
        """Channel ids -> kept (True) or removed (False); see ``Analysis.kept_lookup``."""
        return self.analysis.kept_lookup(self.plan.kept)

    def keeps(self) -> dict[str, dict[str, np.ndarray]]:
        return self.analysis.keeps(self.plan.kept)


# -- zeros, followed forward ---------------------------------------------------------------
def _weight_nz(cap: Captured, layer: str) -> np.ndarray:
    """Bool (out, in per group): which weight entries are nonzero."""
    info = cap.graph.layers[layer]
    shape, roles = info.params["W"]
    w = cap.arrays[layer]["W"] != 0
    o, i = roles.index("out"), roles.index("in")
    w = np.moveaxis(w, (o, i), (0, 1))
    w = w.reshape(w.shape[0], w.shape[1], -1).any(axis=2)
    if info.transposed and info.groups > 1:  # (out/groups, in) -> (out, in/groups)
        g = info.groups
        w = w.reshape(w.shape[0], g, -1).swapaxes(0, 1).reshape(-1, w.shape[1] // g)
    return w


def _bias_nz(cap: Captured, layer: str, cout: int) -> np.ndarray:
    b = cap.arrays[layer].get("B")
    if b is None:
        return np.zeros(cout, dtype=bool)
    return out_nonzero(b, cap.graph.layers[layer].params["B"][1], cout)


def out_nonzero(value: np.ndarray, roles: tuple[str | None, ...], cout: int) -> np.ndarray:
    """Bool (cout,): where ``value`` (a bias; Gemm's C may hold a row per sample) is
    nonzero for each output channel; a value without an ``out`` axis adds to all."""
    if "out" not in roles:
        return np.full(cout, bool(np.any(value)))
    o = roles.index("out")
    return np.moveaxis(value != 0, o, 0).reshape(value.shape[o], -1).any(axis=1)


class _Zeros:
    """Per tensor, the channel roots that may be nonzero somewhere in it."""

    def __init__(self, cap: Captured, analysis: Analysis) -> None:
        self.cap, self.state = cap, analysis.state
        self.uf = analysis.state.uf
        self.nz: dict[str, np.ndarray] = {}
        self.needed: list[np.ndarray] = []  # roots read with nonzero weights, maybe nonzero
        self.reader: dict[int, str] = {}
        self.killed: dict[str, np.ndarray] = {}  # producer -> filters a BN after it zeroes
        self.tied: dict[int, str] = {}  # root -> grouped conv tying its input and output

    def all_roots(self, name: str) -> np.ndarray:
        value = self.state.values.get(name)
        parts = value if isinstance(value, tuple) else (value,)
        arrays = [self.uf.roots(p).ravel() for p in parts if isinstance(p, np.ndarray)]
        return np.unique(np.concatenate(arrays)) if arrays else _EMPTY

    def run(self) -> None:
        for node in self.cap.graph:
            self.nz[node.name] = self.node(node)

    def node(self, node: Node) -> np.ndarray:
        mode = self.cap.zero.get(node.name, "none")
        ins = [i for i in node.inputs if self.cap.graph[i].op != "param"]
        uses = self.state.uses.get(node.layer or "", {})
        if node.op in ("conv", "linear") and "in" in uses and "out" in uses:
            return self.layer(node)
        if node.op in ("batchnorm", "groupnorm") and "channel" in uses:
            return self.per_channel(node)
        if node.op == "recurrent" and "in" in uses:
            w = self.cap.arrays[node.layer]["W"] != 0  # (directions, gates * hidden, input)
            self.read(node, w.reshape(-1, w.shape[-1]).any(axis=0))
            return self.all_roots(node.name)
        if node.op in ("input", "stop", "param") or mode == "none":
            return self.all_roots(node.name)
        if mode == "zero":  # zeros of another tensor's shape
            return _EMPTY
        if mode == "keep":
            arrays = [self._in(i) for i in ins]
            out = np.unique(np.concatenate(arrays)) if arrays else _EMPTY
        else:
            out = self.elementwise(node, mode, ins)
        return np.union1d(out, self._fresh(node))

    def per_channel(self, node: Node) -> np.ndarray:
        """A per-channel layer: zero where its shift is, for a zero input, or whatever the
        input where its multiplier is zero too (a BN with gamma and beta zero: network
        slimming before BN folding)."""
        arrays = self.cap.arrays[node.layer]
        line = self.uf.roots(self.state.uses[node.layer]["channel"].ids)
        shift = arrays["shift"][: line.size] != 0
        out = np.union1d(self._in(node.inputs[0]), line[shift])
        mult = arrays.get("mult")
        if mult is None:
            return out
        killed = (mult[: line.size] == 0) & ~shift
        dead = np.setdiff1d(line[killed], line[~killed])  # a root at a live channel stays
        self.note_killed(node, dead)
        return np.setdiff1d(out, dead)

    def note_killed(self, node: Node, dead: np.ndarray) -> None:
        """Filters of the layer feeding ``node`` alone whose output ``node`` zeroes: zero
        filters in effect (the report counts them)."""
        graph = self.cap.graph
        source = graph[node.inputs[0]]
        while source.layer not in self.state.producers and source.label in _QDQ \
                and source.inputs and self._readers(source.name) == 1:  # fmt: skip
            source = graph[source.inputs[0]]  # a QDQ file quantizes what the layer writes
        if not dead.size or source.layer not in self.state.producers:
            return
        if self._readers(source.name) != 1:
            return  # another op reads the filter's output as it is
        out_roots = self.uf.roots(self.state.uses[source.layer]["out"].ids)
        self.killed[source.layer] = np.isin(out_roots, dead)

    def _readers(self, name: str) -> int:
        return sum(name in n.inputs for n in self.cap.graph)

    def _fresh(self, node: Node) -> np.ndarray:
        """Roots of ``node``'s output that none of its inputs carries (a reshape to a
        computed shape starts new ones): nothing is known of their values."""
        mine = self.all_roots(node.name)
        theirs = [self.all_roots(i) for i in node.inputs]
        return np.setdiff1d(mine, np.concatenate(theirs)) if theirs else mine

    def _in(self, name: str) -> np.ndarray:
        return self.nz.get(name, _EMPTY)

    def _read_nz(self, node: Node, roots: np.ndarray) -> np.ndarray:
        """Per channel ``node``'s layer reads (``roots``): may it be nonzero. A root its
        input does not carry (the one set a layer reads when the channels vary along
        other axes, a depth-to-space before it) says nothing of the values: nonzero."""
        x = node.inputs[0]
        return np.isin(roots, self._in(x)) | ~np.isin(roots, self.all_roots(x))

    def elementwise(self, node: Node, mode: str, ins: list[str]) -> np.ndarray:
        params = [i for i in node.inputs if self.cap.graph[i].op == "param"]
        if mode == "branches":  # Where: zero where both branches are, whatever the condition
            mode, ins = "all", [i for i in node.inputs[1:] if self.cap.graph[i].op != "param"]
            params = [i for i in node.inputs[1:] if self.cap.graph[i].op == "param"]
        if not ins:
            return self.all_roots(node.name)
        if mode in ("all", "any"):
            lined = self._lined_up(node, ins)
            if lined is None:
                return self.all_roots(node.name)
            out, masks = lined
            if mode == "any":  # a product: zero where any operand is
                return np.unique(out[np.logical_and.reduce(masks)])
            for p in params:  # a sum: zero where all operands are
                nz = self._param_nz(p)
                if nz is None:
                    return self.all_roots(node.name)
                masks.append(np.isin(out, nz))
            return np.unique(out[np.logical_or.reduce(masks)])
        if mode == "first" and node.inputs[0] == ins[0]:
            return self._in(ins[0])
        return self.all_roots(node.name)

    def _lined_up(self, node: Node, ins: list[str]) -> tuple[np.ndarray, list] | None:
        """The output's roots at each position (broadcast), and per operand where it may
        be nonzero there: an operand one wide along the channels (a spatial gate) meets
        every channel. None if the ids do not line up."""
        arrays = [self.state.values.get(n) for n in (node.name, *ins)]
        if not all(isinstance(a, np.ndarray) for a in arrays):
            return None
        ndim = max(a.ndim for a in arrays)
        try:
            out, *parts = np.broadcast_arrays(
                *(self.uf.roots(a).reshape((1,) * (ndim - a.ndim) + a.shape) for a in arrays))
        except ValueError:
            return None
        return out, [np.isin(r, self._in(i)) for r, i in zip(parts, ins, strict=True)]

    def _param_nz(self, name: str) -> np.ndarray | None:
        """Roots where constant ``name`` (a bias added per channel) is nonzero; None: all."""
        value = self.cap.consts[name] != 0
        if not value.any():
            return _EMPTY
        uses = self.state.uses.get(name, {})
        if not uses:
            return None
        parts = []
        for role, use in uses.items():
            axis = int(role[4:])
            line = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1).any(axis=1)
            parts.append(self.uf.roots(use.ids)[line])
        return np.unique(np.concatenate(parts))

    def layer(self, node: Node) -> np.ndarray:
        layer, cap = node.layer, self.cap
        uses = self.state.uses[layer]
        in_roots = self.uf.roots(uses["in"].ids)
        out_roots = self.uf.roots(uses["out"].ids)
        w = _weight_nz(cap, layer)
        cout, cin = out_roots.size, in_roots.size
        groups = int(node.attrs.get("groups", 1)) if node.op == "conv" else 1
        cin_g, cout_g = cin // groups, cout // groups
        in_nz = self._read_nz(node, in_roots)
        cols = in_nz.reshape(groups, cin_g)[np.arange(cout) // cout_g]
        out_nz = (w & cols).any(axis=1) | _bias_nz(cap, layer, cout)
        if groups > 1 and cin_g > 1:  # not depthwise: output i is not made from input i
            for r in np.intersect1d(in_roots, out_roots).tolist():
                self.tied.setdefault(r, layer)
        self.read(node, w.reshape(groups, cout_g, cin_g).any(axis=1).reshape(cin))
        return np.unique(out_roots[out_nz])

    def read(self, node: Node, col_used: np.ndarray) -> None:
        """The input channels ``node``'s layer reads with nonzero weights (``col_used``)
        that may be nonzero: they are needed."""
        in_roots = self.uf.roots(self.state.uses[node.layer]["in"].ids)
        in_nz = self._read_nz(node, in_roots)
        needed = np.unique(in_roots[in_nz & col_used])
        self.needed.append(needed)
        for r in needed.tolist():
            self.reader.setdefault(r, node.layer)


def _zero_rows(cap: Captured, analysis: Analysis, zeros: _Zeros) -> dict[str, np.ndarray]:
    out = {}
    for layer in analysis.state.producers:
        if layer in cap.arrays and "W" in cap.arrays[layer]:
            w = _weight_nz(cap, layer)
            out[layer] = ~w.any(axis=1) & ~_bias_nz(cap, layer, w.shape[0])
            if layer in zeros.killed and zeros.killed[layer].size == out[layer].size:
                out[layer] |= zeros.killed[layer]
    return out


# -- decisions -----------------------------------------------------------------------------
def find_removable(cap: Captured) -> Decision:
    """Analyse ``cap`` and decide, per channel, whether it can be removed."""
    analysis = analyze(cap.graph, _OPTIONS)
    zeros = _Zeros(cap, analysis)
    zeros.run()
    needed = np.unique(np.concatenate(zeros.needed)) if zeros.needed else _EMPTY
    kept: dict[int, np.ndarray] = {}
    reasons: dict[int, str] = {}
    for g in analysis.prunable_groups:
        required = np.isin(g.roots, needed)
        for r in g.roots[required].tolist():
            reasons[r] = _needed_reason(zeros, r)
        chosen = select_required(g, required)
        reasons.update((int(g.roots[pos]), why) for pos, why in chosen.added.items())
        kept[g.id] = chosen.keep
    for g in analysis.groups:
        if not g.prunable:
            reasons.update({int(r): g.reason or "" for r in g.roots})
    decision = Decision(analysis, Plan(0.0, kept), _zero_rows(cap, analysis, zeros), reasons)
    _keep_read_tensors(cap, decision)
    _fix_layouts(cap, decision)
    return decision


def _needed_reason(zeros: _Zeros, root: int) -> str:
    reader, tie = zeros.reader[root], zeros.tied.get(root)
    if tie is None or tie == reader:
        return f"{reader} reads it with nonzero weights and it is not provably zero"
    # the core cuts input and output channel i of such a conv together; output i sums
    # the group's other inputs, so it is not zero when input i is
    return (f"grouped Conv {tie} (as many outputs as inputs) ties each input channel to "
            f"its output channel at the same position, and {reader} reads that output with "
            "nonzero weights")


def _live(cap: Captured) -> list[Node]:
    """The core nodes the model's outputs depend on (the rewrite drops the others)."""
    graph = cap.graph
    needed = set(graph.outputs)
    live = []
    for node in reversed(list(graph)):
        if node.name in needed:
            live.append(node)
            needed.update(node.inputs)
    return live[::-1]


def _keep_read_tensors(cap: Captured, decision: Decision) -> None:
    """Keep one channel of every tensor a live op reads that would lose them all: an op
    given an empty tensor (a Conv of a 1-channel Slice of a zero filter) runs in
    onnxruntime but not in every runtime (OpenVINO refuses it)."""
    values, uf = decision.analysis.state.values, decision.analysis.state.uf
    lookup = decision.lookup()
    for node in _live(cap):
        for name in node.inputs:
            value = values.get(name)
            if not isinstance(value, np.ndarray) or not value.size or lookup(value).any():
                continue
            root = int(uf.roots(value).ravel()[0])
            decision.reasons[root] = (f"{node.label or node.op} {_onnx_name(cap, node)} would "
                                      f"read an empty {name} ({AT_LEAST_ONE})")  # fmt: skip
            _keep_roots(decision, [root])
            lookup = decision.lookup()


def _onnx_name(cap: Captured, node: Node) -> str:
    idx = cap.node_index.get(node.name)
    return (cap.model.graph.node[idx].name or node.name) if idx is not None else node.name


def _fix_layouts(cap: Captured, decision: Decision) -> None:
    """Keep channels whose removal would leave a tensor that is not a box (after Reshape)."""
    uf = decision.analysis.state.uf
    for _ in range(8):
        lookup = decision.lookup()
        bad: list[np.ndarray] = []
        for node in cap.graph:
            value = decision.analysis.state.values.get(node.name)
            if not isinstance(value, np.ndarray) or value.ndim < 2:
                continue
            keep = lookup(value)
            axes = [a for a in range(keep.ndim) if keep.shape[a] > 1]
            if len(axes) < 2 or keep.all():
                continue
            proj = [keep.any(axis=tuple(b for b in axes if b != a), keepdims=True) for a in axes]
            box = np.logical_and.reduce(np.broadcast_arrays(*proj))
            if not np.array_equal(box, keep):
                bad.append(np.unique(uf.roots(value)))
                for r in bad[-1].tolist():
                    decision.reasons[r] = f"{node.label or node.op} {node.name} spreads " \
                        "channels over several axes"  # fmt: skip
        if not bad:
            return
        _keep_roots(decision, np.unique(np.concatenate(bad)).tolist())


def _keep_roots(decision: Decision, roots: list[int]) -> None:
    """Keep channels ``roots``, then whatever their groups' equal splits need on top."""
    root_group, kept = decision.analysis.root_group, decision.plan.kept
    touched = set()
    for r in roots:
        if r in root_group and root_group[r][0] in kept:
            gid, pos = root_group[r]
            kept[gid][pos] = True
            touched.add(gid)
    for gid in sorted(touched):
        group = decision.analysis.groups[gid]
        chosen = select_required(group, kept[gid])
        kept[gid] = chosen.keep
        decision.reasons.update((int(group.roots[p]), why) for p, why in chosen.added.items())
