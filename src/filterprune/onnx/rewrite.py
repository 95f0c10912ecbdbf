"""Apply a decision to an ONNX model: slice initializers, rewrite shape constants.

Every parameter a layer owns is sliced along its roles (the same keep vectors the
PyTorch frontend uses to shrink modules) and written as a new initializer; the
old one goes when nothing reads it any more. Ops that carry sizes in constants
get new ones: Reshape targets, Split sizes, Resize ``sizes``, Expand shapes; a
depthwise Conv gets its new ``group``. Nothing else in the graph changes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..core.weights import slice_weight
from ..errors import ConversionError
from ._group_norm import unfuse
from .capture import Captured
from .facts import LAYOUT_OPS, has_subgraph, laid_out, layout_arg, subgraph_inputs, unit_axes_perm
from .zero_filters import Decision

__all__ = ["rewrite"]


class _Writer:
    def __init__(self, cap: Captured, decision: Decision) -> None:
        self.cap, self.decision = cap, decision
        self.model = onnx.ModelProto()
        self.model.CopyFrom(cap.model)
        self.nodes = self.model.graph.node
        self.lookup = decision.lookup()
        self.names = {i.name for i in self.model.graph.initializer}
        self.names.update(o for n in self.nodes for o in n.output)
        self.names.update(i.name for i in self.model.graph.input)
        self.written: dict[tuple, str] = {}  # (old name, dtype, shape, digest) -> new name

    def original(self, ni: int, ii: int) -> np.ndarray:
        return self.cap.consts[self.cap.model.graph.node[ni].input[ii]]

    def set_input(self, ni: int, ii: int, value: np.ndarray) -> None:
        """Point input ``ii`` of node ``ni`` to a new initializer holding ``value``; one cut
        of a tensor read twice (a scale both Q and DQ read) is written once."""
        node = self.nodes[ni]
        base = (node.input[ii] if ii < len(node.input) and node.input[ii] else node.output[0])
        value = np.asarray(value)
        key = (base, value.dtype.str, value.shape, hashlib.sha1(value.tobytes()).hexdigest())
        name = self.written.get(key)
        if name is None:
            name, k = f"{base}__pruned", 1
            while name in self.names:
                name, k = f"{base}__pruned{k}", k + 1
            self.names.add(name)
            self.written[key] = name
            self.model.graph.initializer.append(numpy_helper.from_array(value, name))
        while len(node.input) <= ii:
            node.input.append("")
        node.input[ii] = name

    # -- layers and params --------------------------------------------------------------------
    def layers(self) -> None:
        graph = self.cap.graph
        for layer, keep in self.decision.keeps().items():
            if all(v.all() for v in keep.values()):
                continue
            info = graph.layers.get(layer)
            if info is None:
                continue
            if info.kind == "param":
                self.param(layer, keep)
                continue
            for key, (ni, ii) in self.cap.refs[layer].items():
                shape, roles = info.params[key]
                groups = info.groups if key == "W" else 1
                self.set_input(ni, ii, slice_weight(self.original(ni, ii), roles, keep, groups))
            if info.kind == "conv" and info.groups > 1:
                self.regroup(layer, info, keep)

    def regroup(self, layer: str, info: Any, keep: dict[str, np.ndarray]) -> None:
        node = self.nodes[self.cap.layer_node[layer]]
        shape, roles = info.params["W"]  # the stored weight's layout (roles say which axis)
        cin = shape[roles.index("in")] * (1 if info.transposed else info.groups)
        if info.groups == cin:  # depthwise: one group per remaining input channel
            groups = int(keep.get("in", np.ones(cin, bool)).sum())
            for a in node.attribute:
                if a.name == "group":
                    a.i = groups

    def param(self, name: str, keep: dict[str, np.ndarray]) -> None:
        if name in self.cap.dq_params:
            self.quantized_param(self.cap.dq_params[name], keep)
            return
        value = self.cap.consts[name]
        roles = tuple(f"axis{i}" for i in range(value.ndim))
        sliced = slice_weight(value, roles, keep)
        for core in self.cap.graph:
            if name in core.inputs and core.name in self.cap.node_index:
                ni = self.cap.node_index[core.name]
                for ii, inp in enumerate(self.nodes[ni].input):
                    if inp == name:
                        self.set_input(ni, ii, sliced)

    def quantized_param(self, ni: int, keep: dict[str, np.ndarray]) -> None:
        """Cut a constant read through DequantizeLinear ``ni``: its integers, and its scale
        and zero point where they run along a cut axis."""
        node = self.nodes[ni]
        ints = self.original(ni, 0)
        self.set_input(ni, 0, slice_weight(ints, tuple(f"axis{i}" for i in range(ints.ndim)), keep))
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % ints.ndim
        if self.original(ni, 1).size <= 1 or f"axis{axis}" not in keep:
            return
        for ii in (1, 2):  # one entry per channel of that axis
            if ii < len(node.input) and node.input[ii]:
                self.set_input(ni, ii, slice_weight(self.original(ni, ii), (f"axis{axis}",), keep))

    # -- shape constants ----------------------------------------------------------------------
    def new_shape(self, name: str) -> tuple[int, ...] | None:
        node = self.cap.graph.nodes.get(name)
        value = self.decision.analysis.state.values.get(name)
        if node is None or not isinstance(node.shape, tuple) or not isinstance(value, np.ndarray):
            return None
        keep = self.lookup(value)
        keep = keep.reshape((1,) * (len(node.shape) - keep.ndim) + keep.shape)
        out = list(node.shape)
        for a in range(keep.ndim):
            if keep.shape[a] > 1:
                out[a] = int(keep.any(axis=tuple(b for b in range(keep.ndim) if b != a)).sum())
        return tuple(out)

    def shapes(self) -> None:
        for ni, node in enumerate(self.cap.model.graph.node):
            fix = _SHAPE_FIXES.get(node.op_type)
            if fix is not None:
                fix(self, ni, node)

    def _changed(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        old = self.cap.graph.nodes[name].shape if name in self.cap.graph.nodes else None
        new = self.new_shape(name)
        if new is None or old == new:
            return None
        return old, new

    def reshape(self, ni: int, node: onnx.NodeProto) -> None:
        if self._weight_reshape(ni, node):  # in a quantized weight's layout
            return
        changed = self._changed(node.output[0])
        if changed is None:
            return
        if node.input[1] not in self.cap.consts:
            raise ConversionError(f"Reshape {node.name} has a computed shape but loses channels")
        entries = [int(e) for e in self.cap.consts[node.input[1]]]
        for a, (o, n) in enumerate(zip(*changed, strict=True)):
            if o != n and entries[a] != -1:
                entries[a] = n
        self.set_input(ni, 1, np.array(entries, dtype=np.int64))

    def _weight_reshape(self, ni: int, node: onnx.NodeProto) -> bool:
        """Whether ``node`` moves axes of size 1 of a quantized weight it reads (through
        Q/DQ and layout ops); if so, it takes the weight's new sizes."""
        target = self.cap.consts.get(node.input[1])
        made_by = self.cap.node_index.get(node.input[0])
        if target is None or made_by is not None and (
                self.cap.model.graph.node[made_by].op_type not in _LAYOUT):  # fmt: skip
            return False  # an activation's Reshape: no walk over the graph
        old, new = (_view_shape(m, node.input[0]) for m in (self.cap.model, self.model))
        perm = unit_axes_perm(old, tuple(int(d) for d in target))
        if perm is None or new is None:
            return False
        if new != old:
            self.set_input(ni, 1, np.array([new[p] for p in perm], dtype=np.int64))
        return True

    def piece_size(self, name: str, axis: int) -> int:
        """A split piece's new size along ``axis``. A piece one channel wide carries its
        channel on an axis of size 1, which :meth:`new_shape` cannot tell from an axis
        without channels: a piece whose every channel goes is empty along ``axis``."""
        shape = self.new_shape(name)
        value = self.decision.analysis.state.values.get(name)
        if shape is None or not isinstance(value, np.ndarray):
            return int(self.cap.graph.nodes[name].shape[axis])
        if 0 not in shape and value.size and not self.lookup(value).any():
            return 0
        return shape[axis]

    def _loses_channels(self, name: str) -> bool:
        value = self.decision.analysis.state.values.get(name)
        return isinstance(value, np.ndarray) and value.size > 0 and not self.lookup(value).all()

    def split(self, ni: int, node: onnx.NodeProto) -> None:
        outs = [o for o in node.output]
        if outs[0] not in self.cap.graph.nodes:  # shape arithmetic, which holds no channels
            return
        shape = self.cap.graph.nodes[outs[0]].shape
        if shape is None:  # rank unknown (Mask R-CNN's per-image split of box deltas)
            if any(self._loses_channels(o) for o in outs):
                raise ValueError(f"Split {node.name!r} loses channels but its shape is unknown")
            return
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % len(shape)
        sizes = [self.piece_size(o, axis) for o in outs]
        if sizes == [self.cap.graph.nodes[o].shape[axis] for o in outs]:
            return
        target = self.nodes[ni]
        for a in list(target.attribute):
            if a.name in ("num_outputs", "split"):
                target.attribute.remove(a)
        if self.cap.opset >= 13:
            self.set_input(ni, 1, np.array(sizes, dtype=np.int64))
        else:
            target.attribute.append(onnx.helper.make_attribute("split", sizes))

    def group_norm(self, ni: int, node: onnx.NodeProto) -> None:
        """Whole groups went: as many fewer ``num_groups`` (each keeps its width)."""
        changed = self._changed(node.output[0])
        if changed is None:
            return
        (old, new), attr = (changed[0][1], changed[1][1]), next(
            a for a in self.nodes[ni].attribute if a.name == "num_groups")  # fmt: skip
        attr.i = new // (old // attr.i)

    def slice_(self, ni: int, node: onnx.NodeProto) -> None:
        """A Slice read as one piece of a split: move its bounds past removed channels."""
        core = self.cap.graph.nodes.get(f"{node.name or node.output[0]}#outputs")
        if core is None or core.op != "split":
            return
        axis, (b, e) = core.attrs["axis"], core.attrs["bounds"]
        value = self.decision.analysis.state.values.get(core.inputs[0])
        if not isinstance(value, np.ndarray):
            return
        rank = len(self.cap.graph.nodes[core.inputs[0]].shape)
        keep = self.lookup(value)
        keep = keep.reshape((1,) * (rank - keep.ndim) + keep.shape)
        if keep.shape[axis] == 1:
            return
        line = keep.any(axis=tuple(d for d in range(rank) if d != axis))
        if len(node.input) < 2:  # opset < 10: the bounds are attributes
            attrs = {a.name: a for a in self.nodes[ni].attribute}
            axes = list(attrs["axes"].ints) if "axes" in attrs else list(
                range(len(attrs["starts"].ints)))  # fmt: skip
            i = [a % rank for a in axes].index(axis)
            attrs["starts"].ints[i], attrs["ends"].ints[i] = int(line[:b].sum()), int(
                line[:e].sum())  # fmt: skip
            return
        starts = np.array(self.cap.consts[node.input[1]], dtype=np.int64)
        ends = np.array(self.cap.consts[node.input[2]], dtype=np.int64)
        axes = list(range(starts.size))
        if len(node.input) > 3 and node.input[3]:
            axes = [int(a) % rank for a in self.cap.consts[node.input[3]]]
        i = axes.index(axis)
        starts[i], ends[i] = int(line[:b].sum()), int(line[:e].sum())
        self.set_input(ni, 1, starts)
        self.set_input(ni, 2, ends)

    def resize(self, ni: int, node: onnx.NodeProto) -> None:
        changed = self._changed(node.output[0])
        if changed is None or len(node.input) < 4 or node.input[3] not in self.cap.consts:
            return  # no sizes, or computed ones that follow the input (sizes_follow_channels)
        sizes = [int(s) for s in self.cap.consts[node.input[3]]]
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        axes = axes or list(range(len(sizes)))
        for i, a in enumerate(axes):
            sizes[i] = changed[1][a % len(changed[1])]
        self.set_input(ni, 3, np.array(sizes, dtype=np.int64))

    def expand(self, ni: int, node: onnx.NodeProto) -> None:
        changed = self._changed(node.output[0])
        if changed is None or node.input[1] not in self.cap.consts:
            return  # a shape read in the file (Shape of the tensor it fills like) follows
        shape = [int(s) for s in self.cap.consts[node.input[1]]]
        offset = len(changed[1]) - len(shape)
        for a, (o, n) in enumerate(zip(*changed, strict=True)):
            if o != n and a >= offset and shape[a - offset] != 1:
                shape[a - offset] = n
        self.set_input(ni, 1, np.array(shape, dtype=np.int64))

    # -- cleanup ------------------------------------------------------------------------------
    def prune_dead(self) -> None:
        g = self.model.graph
        needed = {o.name for o in g.output}
        keep_nodes = []
        for node in reversed(list(g.node)):
            if any(o in needed for o in node.output) or has_subgraph(node):
                keep_nodes.append(node)
                needed.update(i for i in node.input if i)
                needed.update(subgraph_inputs(node))
        if len(keep_nodes) != len(g.node):
            kept = list(reversed(keep_nodes))
            del g.node[:]
            g.node.extend(kept)
        inits = [i for i in g.initializer if i.name in needed]
        if len(inits) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(inits)
        names = {i.name for i in g.initializer}
        stale = {i.name for i in self.cap.model.graph.initializer} - names
        inputs = [i for i in g.input if i.name not in stale]
        if len(inputs) != len(g.input):
            del g.input[:]
            g.input.extend(inputs)
        del g.value_info[:]


_LAYOUT = ("QuantizeLinear", "DequantizeLinear", *LAYOUT_OPS)


def _view_shape(model: onnx.ModelProto, name: str) -> tuple[int, ...] | None:
    """The shape of ``name`` where it lays out a stored weight: an initializer seen
    through Q/DQ and layout ops of constant arguments (tf2onnx's depthwise kernels); None
    otherwise."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    chain = []
    while name not in inits:
        node = producers.get(name)
        if node is None or node.op_type not in _LAYOUT or not node.input:
            return None
        chain.append(node)
        name = node.input[0]
    value = np.empty(tuple(inits[name].dims), dtype=bool)  # laid out for its shape only
    for node in reversed(chain):
        if node.op_type in LAYOUT_OPS:
            value = laid_out(value, node.op_type, layout_arg(node, inits))
            if value is None:
                return None
    return value.shape


_SHAPE_FIXES = {"Reshape": _Writer.reshape, "Split": _Writer.split, "Resize": _Writer.resize,
                "Expand": _Writer.expand, "Slice": _Writer.slice_,
                "GroupNormalization": _Writer.group_norm}  # fmt: skip


def rewrite(cap: Captured, decision: Decision) -> onnx.ModelProto:
    """A new model with the channels ``decision`` removes cut out of ``cap.model``."""
    w = _Writer(cap, decision)
    w.layers()
    w.shapes()
    w.prune_dead()
    unfuse(w.model, cap.fused)
    return w.model
