"""Read an ONNX model into the core graph: graph emission.

Shapes and constants come first, from :func:`.facts.read_facts`; this module
only turns ONNX nodes into core nodes. Each ONNX tensor becomes one core node
named after it; weighted ops (Conv, Gemm, MatMul, BatchNormalization,
per-channel Q/DQ) become layers named after their ONNX node (:mod:`._layers`),
with a reference to where each parameter lives so the rewrite can slice it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..core.flops import count_product
from ..core.graph import Graph, LayerInfo, Node
from ..core.workflow import Captured as CoreCaptured
from ._group_norm import fuse
from ._layers import COMPUTED_PRODUCT, build_layer, held_layer
from ._ops import OPS, ZERO_CHECKS, NodeView, OpSpec, Spec, positions
from ._shapes import opset_of
from .facts import ModelFacts, attrs_of, has_subgraph, read_facts, subgraph_inputs

__all__ = ["Captured", "capture", "opset_of"]

_SHAPE_KINDS = {"reshape", "split", "index", "tile", "expand"}
_WEIGHTED = ("conv", "linear", "batchnorm", "groupnorm", "recurrent")
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class Captured(CoreCaptured):
    """The core graph of an ONNX model plus what the rewrite needs to apply a plan.

    Attributes:
        graph: The core graph; node names are ONNX tensor names.
        model: The model the node indices below refer to (not modified here).
        consts: Initializers, ``Constant`` outputs and folded values by tensor name.
        refs: Layer -> parameter -> (ONNX node index, input index) holding it.
        arrays: Layer -> float arrays for zero analysis (``W``, ``B``, ``shift``).
        zero: Core node -> how a zero channel passes (see :mod:`._ops`).
        layer_node: Layer -> index of its ONNX node.
        node_index: Core node -> index of the ONNX node that computes it.
        dynamic: Names of inputs with a symbolic batch axis (analysed with batch 1).
        notes: Things the user should know (dynamic shapes, folded subgraphs).
        dq_params: A constant read through its own DequantizeLinear -> that node's index.
    """

    model: onnx.ModelProto | None = None
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    refs: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    zero: dict[str, str] = field(default_factory=dict)
    layer_node: dict[str, int] = field(default_factory=dict)
    node_index: dict[str, int] = field(default_factory=dict)
    dynamic: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    opset: int = 17
    fused: dict[str, dict] = field(default_factory=dict)  # see ._group_norm
    dq_params: dict[str, int] = field(default_factory=dict)  # param -> its DequantizeLinear
    sized_at_one: list[str] = field(default_factory=list)  # layers counted at free sizes 1


class _Emitter:
    """Adds one core node (or a few) per ONNX node, in graph order."""

    def __init__(self, facts: ModelFacts) -> None:
        self.facts = facts
        self.cap = Captured(Graph(), model=facts.model, consts=dict(facts.consts),
                            dynamic=list(facts.dynamic), opset=facts.opset)  # fmt: skip
        self.graph = self.cap.graph
        self.noops: set[str] = set()  # outputs of shape arithmetic on computed shapes
        self.sizes: dict[str, dict[str, set[int]]] = {}  # value -> tensor -> axes it reads

    # -- operands ----------------------------------------------------------------------------
    def operand(self, name: str) -> str:
        """The core node for tensor ``name``, creating param/opaque nodes on first use."""
        if name in self.graph.nodes:
            return name
        value = self.facts.const(name)
        d = self.facts.dq_node(name)
        if value is None and d is not None and self._own_dq(d):
            # a quantized constant (quantize_static's Mul/Add operand): read dequantized,
            # cut as its integers (and per-axis scales) by the rewrite
            value = self.cap.consts[name] = self.facts.value(name)
            self.cap.dq_params[name] = d
        if value is not None:
            shape = tuple(value.shape)
            self.graph.add(Node(name, "param", shape=shape, attrs={"target": name}))
            roles = tuple(f"axis{i}" for i in range(len(shape)))
            self.graph.layers.setdefault(name, LayerInfo(name, "param", {"": (shape, roles)}))
            return name
        reason = "a quantized constant read by a non-weighted op" \
            if self.facts.dq_node(name) is not None else "a value the converter cannot follow"
        self.graph.add(Node(name, "stop", shape=self.facts.shape(name), attrs={"reason": reason}))
        return name

    def _own_dq(self, idx: int) -> bool:
        """Whether DequantizeLinear ``idx`` reads integers stored for it alone (not a float
        quantized in the graph, nor a tensor another node reads too)."""
        source = self.facts.node(idx).input[0]
        return self.facts.q_node(source) is None and self.facts.readers(source) == 1

    # -- nodes -------------------------------------------------------------------------------
    def add_node(self, idx: int, node: onnx.NodeProto) -> None:
        outs = [o for o in node.output if o]
        self.track_sizes(node)
        if not outs or self.facts.folded(node) or self.facts.dq_node(outs[0]) is not None:
            return  # a constant, or a quantized weight (part of the layer that reads it)
        like = self.filled_like(node)
        if like is not None:  # zeros_like(t): t's channels, cut with t's by its Shape
            self.emit(idx, node, [self.operand(like[0])], ("identity", {}), None,
                      "zero" if like[1] else "none")  # fmt: skip
            return
        spec = OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        picks = range(len(node.input)) if spec is None or spec.tensors is None else spec.tensors
        names = [node.input[i] for i in picks if i < len(node.input) and node.input[i]]
        if has_subgraph(node):  # an If or Loop body reading outer tensors: they stay whole
            names += sorted(n for n in subgraph_inputs(node) - set(names) if n in self.graph.nodes)
        self.sizes_as_values(node, names)
        shape_math = bool(names) and all(n in self.noops for n in names)
        if (spec is not None and spec.build == "noop") or shape_math:
            self.noops.update(outs)
            for o in outs:
                self.graph.add(Node(o, "noop", label=node.op_type))
            return
        inputs = list(dict.fromkeys(self.operand(n) for n in names))
        f = self.facts
        view = NodeView(node, attrs_of(node), [f.shape(n) for n in node.input],
                        [f.shape(o) for o in node.output], [f.const(n) for n in node.input],
                        f.opset)  # fmt: skip
        if spec is None:
            kind, attrs = "stop", {"reason": "unsupported op"}  # the label names it
        else:
            kind, attrs = spec.build(view) if callable(spec.build) else (spec.build, {})
        if node.op_type == "Resize" and kind == "stop" and self.facts.sizes_follow_channels(node):
            kind, attrs = "identity", {}  # computed sizes that follow the cut channels
        if node.op_type == "Expand" and kind != "stop" and f.const(node.input[1]) is None:
            # a shape computed in the file (Concat(Shape(x)[0], [16, 32, 32]) for a free
            # batch) may hold the channel count as a number the rewrite cannot reach
            kind, attrs = "stop", {"reason": "its shape is computed in the file"}
        layer = None
        if kind in _WEIGHTED:
            layer, kind, attrs = self.layer(idx, node, view, kind, attrs)
            if kind == "einsum":  # a product of two computed tensors: zero rows stay zero
                spec, names = OpSpec("einsum", None, "keep"), list(node.input[:2])
            elif kind == "stop":  # whole: every computed operand it reads stays whole too
                inputs = list(dict.fromkeys(n for n in node.input if n in self.graph.nodes))
        # every operand in order: PRelu, Div, Einsum; a tensor concatenated with itself
        if kind in ("elementwise", "einsum", "concat", "stack"):
            inputs = [self.operand(n) for n in names]
        mode = spec.zero if spec else "none"
        if mode in ZERO_CHECKS:
            mode = "keep" if ZERO_CHECKS[mode](view) else "none"
        if kind == "identity" and node.op_type in _QDQ and not self.facts.keeps_zero(node).all():
            mode = "none"  # a per-tensor Q/DQ whose zero points do not match
        self.emit(idx, node, inputs, (kind, attrs), layer, mode)

    def filled_like(self, node: onnx.NodeProto) -> tuple[str, bool] | None:
        """``(t, all zero)`` for a tensor of one value in the shape of ``t`` (``Expand`` of
        a one-value constant, or ``ConstantOfShape``, to ``Shape(t)``: torch's
        ``zeros_like``), else None. Its width is read from ``t`` when the model runs."""
        if node.domain not in ("", "ai.onnx") or not node.input:
            return None
        if node.op_type == "Expand" and len(node.input) == 2:
            value, shape = self.facts.const(node.input[0]), node.input[1]
        elif node.op_type == "ConstantOfShape":
            attr = attrs_of(node).get("value")
            value = np.zeros(1) if attr is None else onnx.numpy_helper.to_array(attr)
            shape = node.input[0]
        else:
            return None
        source = self.facts.producer(shape)
        if value is None or np.size(value) != 1 or source is None or source.op_type != "Shape":
            return None
        attrs = attrs_of(source)
        if attrs.get("start", 0) != 0 or attrs.get("end") is not None:
            return None
        like = source.input[0]
        return (like, not np.any(value)) if like in self.graph.nodes else None

    def _size_free(self, node: onnx.NodeProto) -> bool:
        """Whether ``node`` moves elements the same whatever size a dynamic dimension has:
        an Unsqueeze, a Squeeze of given axes (one of every unit axis may squeeze an axis
        read as 1), or a GatherND of constant indices over static axes (the axes after
        them pass whole)."""
        if node.op_type == "GatherND":
            idx = self.facts.const(node.input[1])
            return idx is not None and idx.ndim > 0 and not self.facts.symbolic(
                node.input[0], slice(0, idx.shape[-1]))  # fmt: skip
        return node.op_type == "Unsqueeze" or node.op_type == "Squeeze" and (
            "axes" in attrs_of(node) or len(node.input) > 1 and bool(node.input[1]))

    def emit(self, idx: int, node: onnx.NodeProto, inputs: list[str], spec: Spec,
             layer: str | None, mode: str) -> None:  # fmt: skip
        """Add the core node(s) for ``node``: rule ``spec``, zeros passing as ``mode``."""
        kind, attrs = spec
        outs = [o for o in node.output if o]
        for name in [*outs, f"{node.name or outs[0]}#outputs"]:
            self.cap.node_index[name] = idx
        shapes = [self.facts.shape(o) for o in outs]
        label = node.op_type
        if kind != "split" and shapes[0] is None:
            kind, attrs = "stop", {"reason": "output shape is unknown"}
        if kind in _SHAPE_KINDS and not self._size_free(node) and any(
                self.facts.symbolic(t) for t in [*node.input, *outs]):  # fmt: skip
            kind, attrs = "stop", {"reason": "reshapes a tensor with dynamic dimensions"}
        if kind == "split":
            self.emit_split(node, inputs, shapes, (kind, attrs), layer, mode)
            return
        self.graph.add(Node(outs[0], kind, inputs, shapes[0], layer, attrs, label))
        if kind in ("conv", "linear") and self.facts.symbolic(outs[0]) \
                and not any(self.facts.symbolic(i) for i in self.facts.dynamic):  # fmt: skip
            self.cap.sized_at_one.append(layer or outs[0])  # a free size made in the file
        self.cap.zero[outs[0]] = mode if kind != "stop" else "none"
        for o, shape in zip(outs[1:], shapes[1:], strict=True):
            self.graph.add(Node(o, "stop", [outs[0]], shape, label=label,
                                attrs={"reason": f"extra output of {label}"}))  # fmt: skip
            self.cap.zero[o] = "none"

    def emit_split(self, node: onnx.NodeProto, inputs: list[str], shapes: list[Any],
                   spec: Spec, layer: str | None, mode: str) -> None:  # fmt: skip
        """A split: one multi-output node, a ``getitem`` per output it picks."""
        kind, attrs = spec
        outs = [o for o in node.output if o]
        multi = f"{node.name or outs[0]}#outputs"
        picks = dict(enumerate(node.output))
        if "pick" in attrs:  # a Slice: one piece of a split
            in_shape = self.facts.shape(node.input[0])
            shapes = [tuple(n if d == attrs["axis"] else s for d, s in enumerate(in_shape))
                      for n in attrs["sizes"]]  # fmt: skip
            picks = {attrs["pick"]: outs[0]}
        self.graph.add(Node(multi, kind, inputs, shapes, layer, attrs, node.op_type))
        for i, o in picks.items():
            if o:
                self.graph.add(Node(o, "getitem", [multi], shapes[i], attrs={"index": i}))
                self.cap.zero[o] = "keep"
        self.cap.zero[multi] = mode

    # -- sizes -------------------------------------------------------------------------------
    def track_sizes(self, node: onnx.NodeProto) -> None:
        """Record which tensors' sizes, on which axes, each value is computed from (a
        ``Shape``, and what is computed from it, folded to a constant or not)."""
        if node.op_type in ("Shape", "Size") and node.input:
            attrs = attrs_of(node)
            axes = range(len(self.facts.shape(node.input[0]) or ()))
            if node.op_type == "Shape":
                axes = axes[slice(attrs.get("start", 0), attrs.get("end"))]
            for o in node.output:
                self.sizes[o] = {node.input[0]: set(axes)}
            return
        spec = OPS.get(node.op_type)
        if node.op_type == "ConstantOfShape":
            return  # its values are its attribute's, whatever the shape
        values = node.input if spec is None or spec.tensors is None else \
            [node.input[i] for i in spec.tensors if i < len(node.input)]  # not a target shape
        found: dict[str, set[int]] = {}
        for name in values:
            for tensor, axes in self.sizes.get(name, {}).items():
                found.setdefault(tensor, set()).update(axes)
        if not found:
            return
        index = self.facts.const(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "Gather" and index is not None and len(found) == 1:
            ((tensor, axes),) = found.items()  # a Shape's entries picked by a constant index
            picked = sorted(axes)
            found = {tensor: {picked[int(i)] for i in np.ravel(index)
                              if -len(picked) <= i < len(picked)}}  # fmt: skip
        for o in node.output:
            self.sizes[o] = found

    def sizes_as_values(self, node: onnx.NodeProto, names: list[str]) -> None:
        """A size met by a real tensor in one op (``x / C``) is a value that a cut would
        change: the axes it reads stay whole. Sizes that only shape other tensors (a
        Reshape's target) are no tensor operand, and size arithmetic meets no real tensor."""
        real = [n for n in names if n not in self.noops and n not in self.sizes
                and self.facts.const(n) is None]  # fmt: skip
        if not real:
            return
        read: dict[str, set[int]] = {}  # two operands may read one tensor's sizes (an If's)
        for name in names:
            for tensor, axes in self.sizes.get(name, {}).items():
                read.setdefault(tensor, set()).update(axes)
        for tensor, axes in read.items():
            if tensor in self.graph.nodes and axes:
                self.graph.add(Node(f"{node.name or node.output[0]}#size:{tensor}", "size",
                                    [tensor], self.facts.shape(tensor),
                                    attrs={"dims": sorted(axes),
                                           "reason": f"{node.op_type} reads its size as a "
                                                     "value"}))  # fmt: skip
        for o in node.output:  # held once: what it computes is data, not a size
            self.sizes.pop(o, None)

    # -- layers ------------------------------------------------------------------------------
    def _op_flops(self, node: onnx.NodeProto, view: NodeView) -> dict[str, int]:
        """What a Conv, Gemm or MatMul that stays whole (its weight computed: CondConv's
        mixed kernels; a Gemm with ``transA``) still computes: its FLOPs, as a layer's
        (``weight_elems`` per output position)."""
        if node.op_type in ("Gemm", "MatMul") and len(node.input) >= 2:
            return self._product_flops(node, view)
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2:
            return {}
        elems = _weight_elements(self.facts.shape(node.input[1]))
        spatial = view.in_shapes[0] if node.op_type == "ConvTranspose" else \
            view.out_shapes[0] if view.out_shapes else None  # fmt: skip
        if elems is None or not isinstance(spatial, tuple) or not spatial:
            return {}
        # per sample of the model: a batch folded into its groups (B*out filters, batch 1)
        # counts once for all samples
        per_sample = max(1, elems * spatial[0] // max(1, self.facts.batch))
        return {"positions": positions(spatial, 2), "weight_elems": per_sample}

    def _product_flops(self, node: onnx.NodeProto, view: NodeView) -> dict[str, int]:
        """A matrix product's: the 2-D operand counted as the weight (the constant one,
        else the second) times the output positions it is applied at."""
        left = node.op_type == "MatMul" and self.facts.value(node.input[0]) is not None \
            and self.facts.value(node.input[1]) is None  # fmt: skip
        w = self.facts.shape(node.input[0 if left else 1])
        out = view.out_shapes[0] if view.out_shapes else None
        if not isinstance(w, tuple) or len(w) != 2 or not isinstance(out, tuple) or not out \
                or not all(isinstance(d, int) for d in (*w, *out)):  # fmt: skip
            return {}
        trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        width = w[0] if left or trans_b else w[1]  # the weight's axis the output keeps
        rows = math.prod(out) // max(1, width)
        return {"positions": max(1, rows // max(1, self.facts.batch)), "weight_elems": w[0] * w[1]}

    def layer(self, idx: int, node: onnx.NodeProto, view: NodeView, kind: str,
              attrs: dict[str, Any]) -> tuple[str | None, str, dict[str, Any]]:  # fmt: skip
        """Register weighted ``node`` as a layer; a ``stop`` with the reason if it cannot be."""
        name = node.name or node.output[0]
        while name in self.graph.layers:
            name += "'"
        built = build_layer(self.facts, idx, node, view, attrs, name)
        if built == COMPUTED_PRODUCT and all(len(s or ()) >= 2 for s in view.in_shapes[:2]):
            # attention's product (``v @ softmax(q @ k)``): each operand's channels pass
            return None, "einsum", {"equation": "...ij,...jk->...ik", "batch_whole": True}
        if isinstance(built, str):
            held = held_layer(self.facts, idx, node, name)
            if held is not None:  # counted, and its zero filters reported
                self.graph.layers[name] = held.info
                self.cap.arrays[name] = held.arrays
                self.cap.layer_node[name] = idx
            return name if held else None, "stop", {"reason": built,
                                                   **self._op_flops(node, view)}
        self.graph.layers[name] = built.info
        self.cap.refs[name] = built.refs
        self.cap.arrays[name] = built.arrays
        self.cap.layer_node[name] = idx
        return name, kind, built.attrs


def _weight_elements(shape: Any) -> int | None:
    return math.prod(shape) if isinstance(shape, tuple) and shape else None


def capture(model: onnx.ModelProto) -> Captured:
    """Build the core graph of ``model`` (a checked ``ModelProto``; a quantized weight
    read by several layers is first given one copy per layer, :func:`own_weights`, and a
    GroupNorm written as a chain of ops is read as one, :func:`._group_norm.fuse`)."""
    own = own_weights(model)
    model, fused = fuse(own)
    facts = read_facts(model)
    astray = [name for name, f in fused.items()  # a constant that broadcasts elsewhere
              if len(facts.shape(f["chain"][0].input[0]) or ()) != f["trailing"] + 2]
    if astray:
        model, fused = fuse(own, skip=astray)
        facts = read_facts(model)
    e = _Emitter(facts)
    e.cap.fused = fused
    for v in model.graph.input:
        if v.name not in e.facts.consts:
            e.graph.add(Node(v.name, "input", shape=e.facts.shape(v.name)))
            e.cap.zero[v.name] = "none"
    for idx, node in enumerate(model.graph.node):
        e.add_node(idx, node)
    e.graph.outputs = [o.name for o in model.graph.output if o.name in e.graph.nodes]
    for n in e.graph:  # an Einsum with a constant weight (tf2onnx writes EinsumDense so)
        if n.op == "einsum" and isinstance(n.shape, tuple):
            count_product(e.graph, n, facts.batch)
    if e.cap.dynamic:
        e.cap.notes.append(
            f"inputs {', '.join(e.cap.dynamic)} have dynamic dimensions: analysed at size 1 "
            "(FLOPs too); channels that a reshape of a dynamic shape touches are kept"
        )
    return e.cap


def own_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` where each DequantizeLinear of a constant weight (with the QuantizeLinear
    of a float one before it) that several nodes read is copied once per extra reader: a
    layer called twice then has a quantized weight of its own to cut, as a float weight
    read twice already is. The same arithmetic; ``model`` itself if nothing is shared."""
    graph = model.graph
    consts = {i.name for i in graph.initializer}
    consts.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in graph.node:
        for k, name in enumerate(n.input):
            readers.setdefault(name, []).append((n, k))

    def chain(dq: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        source = producer.get(dq.input[0])
        if dq.input[0] in consts:
            return [dq]
        if source is not None and source.op_type == "QuantizeLinear" \
                and source.input[0] in consts and len(readers[dq.input[0]]) == 1:  # fmt: skip
            return [source, dq]
        return None

    shared = [(n, c) for n in graph.node if n.op_type == "DequantizeLinear"
              and len(readers.get(n.output[0], [])) > 1 and (c := chain(n))]  # fmt: skip
    if not shared:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    index = {id(n): i for i, n in enumerate(model.graph.node)}
    names = {o for n in model.graph.node for o in n.output} | consts
    inserts: dict[int, list[onnx.NodeProto]] = {}
    for dq, nodes_of in shared:
        for copy_no, (reader, k) in enumerate(readers[dq.output[0]][1:], start=1):
            renamed = {}
            for original in nodes_of:
                clone = onnx.NodeProto()
                clone.CopyFrom(original)
                clone.name = f"{original.name}__copy{copy_no}" if original.name else ""
                for j, name in enumerate(clone.input):
                    clone.input[j] = renamed.get(name, name)
                new = f"{original.output[0]}__copy{copy_no}"
                while new in names:
                    new += "_"
                names.add(new)
                renamed[original.output[0]] = new
                clone.output[0] = new
                inserts.setdefault(index[id(dq)], []).append(clone)
            nodes[index[id(reader)]].input[k] = renamed[dq.output[0]]
    del out.graph.node[:]
    for i, node in enumerate(nodes):
        out.graph.node.append(node)
        out.graph.node.extend(inserts.get(i, []))
    return out
