"""Read an ONNX model into the core graph.

Shapes come from ``onnx.shape_inference``; small constant subgraphs (shape
arithmetic, ``Constant`` nodes) are folded with the ONNX reference evaluator so
that Reshape targets and Split sizes are known. Each ONNX tensor becomes one
core node named after it; weighted ops (Conv, Gemm, MatMul, BatchNormalization,
per-channel Q/DQ) become layers named after their ONNX node, with a reference to
where each parameter lives so the rewrite can slice it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..core.graph import Graph, LayerInfo, Node
from ._batch import batch_free_target, evaluate_at_batch
from ._ops import OPS, ZERO_CHECKS, NodeView

__all__ = ["Captured", "capture", "opset_of"]

_SHAPE_KINDS = {"reshape", "split", "index", "tile", "expand"}
_NO_FOLD = {"DequantizeLinear", "RandomNormal", "RandomUniform", "RandomNormalLike",
            "RandomUniformLike", "Multinomial", "Bernoulli"}  # fmt: skip


@dataclass
class Captured:
    """The core graph of an ONNX model plus what the rewrite needs to apply a plan.

    Attributes:
        model: The model the node indices below refer to (not modified here).
        graph: The core graph; node names are ONNX tensor names.
        consts: Initializers, ``Constant`` outputs and folded values by tensor name.
        refs: Layer -> parameter -> (ONNX node index, input index) holding it.
        arrays: Layer -> float arrays for zero analysis (``W``, ``B``, ``shift``).
        zero: Core node -> how a zero channel passes (see :mod:`._ops`).
        layer_node: Layer -> index of its ONNX node.
        node_index: Core node -> index of the ONNX node that computes it.
        dynamic: Names of inputs with a symbolic batch axis (analysed with batch 1).
        notes: Things the user should know (dynamic shapes, folded subgraphs).
    """

    model: onnx.ModelProto
    graph: Graph
    consts: dict[str, np.ndarray]
    refs: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    zero: dict[str, str] = field(default_factory=dict)
    layer_node: dict[str, int] = field(default_factory=dict)
    node_index: dict[str, int] = field(default_factory=dict)
    dynamic: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    opset: int = 17


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _dims(t: onnx.TypeProto) -> tuple[Any, ...] | None:
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim)


def _skeleton(model: onnx.ModelProto, small: int = 4096) -> onnx.ModelProto:
    """``model`` with large initializers replaced by typed inputs: inference needs their
    shapes, not their bytes (serialising 100 MB of weights dominated the capture time)."""
    g = model.graph
    graph = onnx.GraphProto(name=g.name)
    graph.node.extend(g.node)
    graph.output.extend(g.output)
    graph.value_info.extend(g.value_info)
    names = {i.name for i in g.input}
    graph.input.extend(g.input)
    for init in g.initializer:
        if math.prod(init.dims) <= small:
            graph.initializer.append(init)
        elif init.name not in names:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type,
                                                                  list(init.dims)))  # fmt: skip
    out = onnx.ModelProto(ir_version=model.ir_version, graph=graph)
    out.opset_import.extend(model.opset_import)
    return out


def _shapes(model: onnx.ModelProto, batch: int | None = None) -> dict[str, Any]:
    """Inferred shapes by tensor name; with ``batch``, dynamic leading input dims set to it."""
    skeleton = _skeleton(model)
    if batch is not None:
        inits = {i.name for i in model.graph.initializer}
        for v in skeleton.graph.input:
            dims = v.type.tensor_type.shape.dim
            if v.name not in inits and dims and not dims[0].HasField("dim_value"):
                dims[0].Clear()
                dims[0].dim_value = batch
        del skeleton.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    except Exception:  # noqa: BLE001 - partial shapes are still useful; unknown ones block
        inferred = model
    g = inferred.graph
    return {v.name: _dims(v.type) for v in [*g.input, *g.value_info, *g.output]}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _const_of(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int"):
            return np.array(onnx.helper.get_attribute_value(a))
        if a.name in ("value_floats", "value_ints"):
            return np.array(list(onnx.helper.get_attribute_value(a)))
    return None


class _Builder:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.opset = opset_of(model)
        self.static = _shapes(model)
        self.consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.cap = Captured(model, Graph(), self.consts, opset=self.opset)
        self.graph = self.cap.graph
        self.dq_weights: dict[str, int] = {}  # output of a DequantizeLinear of a constant
        self.readers: dict[str, int] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        for n in model.graph.node:
            for i in n.input:
                self.readers[i] = self.readers.get(i, 0) + 1
            self.producer.update((o, n) for o in n.output if o)
        self.noops: set[str] = set()
        self.symbolic: set[str] = set()  # tensors with a dynamic dimension past the batch
        self._shape_model = model
        self._at_batch_1: dict[str, Any] | None = None
        self._batch_led: set[str] | None = None
        self._prefold()
        self._dynamic_inputs()

    def _prefold(self) -> None:
        """Fold constants, then infer shapes again with them known (computed Pad widths...)."""
        initial = set(self.consts)
        folded = [n for n in self.model.graph.node if self.fold(n)]
        folded += [n for n in self.model.graph.node if self._fixed_target(n)]
        if not folded:
            return
        self._shape_model = m = onnx.ModelProto()
        m.CopyFrom(self.model)
        keep = [n for n in m.graph.node if not all(o in self.consts for o in n.output if o)]
        del m.graph.node[:]
        m.graph.node.extend(keep)
        for name, value in self.consts.items():
            if name not in initial and value.dtype != object:
                m.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        self.static = _shapes(m)

    # -- shapes ------------------------------------------------------------------------------
    def _dynamic_inputs(self) -> None:
        inits = set(self.consts)
        for v in self.model.graph.input:
            dims = self.static.get(v.name)
            if v.name not in inits and dims and any(d is None for d in dims):
                self.cap.dynamic.append(v.name)

    def shape(self, name: str) -> tuple[int, ...] | None:
        """Static shape at batch 1, other symbolic dimensions as 1 (``symbolic`` remembers
        the tensor)."""
        dims = self.static.get(name)
        if dims is None:
            return tuple(self.consts[name].shape) if name in self.consts else None
        if any(d is None for d in dims[1:]):
            self.symbolic.add(name)
        if dims and dims[0] is None:  # the batch, or a multiple of it (batch * rows)
            first = (self.at_batch_1().get(name) or (None,))[0]
            dims = (1 if first is None else first, *dims[1:])
        return tuple(1 if d is None else int(d) for d in dims)

    @property
    def batch(self) -> int:
        """The batch size the graph is analysed at: the first input's leading dimension."""
        for v in self.model.graph.input:
            if v.name not in self.consts:
                dims = self.shape(v.name)
                return max(1, int(dims[0])) if dims else 1
        return 1

    @property
    def batch_led(self) -> set[str]:
        """Tensors whose leading dimension is the batch size itself (1 at batch 1, 2 at 2)."""
        if self._batch_led is None:
            one, two = _shapes(self.model, batch=1), _shapes(self.model, batch=2)
            self._batch_led = {n for n, d in one.items()
                               if d and d[0] == 1 and (two.get(n) or (None,))[0] == 2}  # fmt: skip
        return self._batch_led

    def at_batch_1(self) -> dict[str, Any]:
        """Shapes with the batch size 1, Reshape targets computed from it evaluated."""
        if self._at_batch_1 is None:
            m = onnx.ModelProto()
            m.CopyFrom(self._shape_model)
            targets = {}
            for n in m.graph.node:
                if n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] not in self.consts:
                    value = evaluate_at_batch(n.input[1], self.producer, self.consts, self.static,
                                              self.batch_led, self.opset, 1)  # fmt: skip
                    if value is not None:
                        targets[n.input[1]] = value
            keep = [n for n in m.graph.node if not any(o in targets for o in n.output)]
            del m.graph.node[:]
            m.graph.node.extend(keep)
            m.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in targets.items())
            self._at_batch_1 = _shapes(m, batch=1)
        return self._at_batch_1

    # -- constants ---------------------------------------------------------------------------
    def fold(self, node: onnx.NodeProto) -> bool:
        """Evaluate ``node`` if its inputs are known constants; True if it was folded."""
        if node.output and all(o in self.consts for o in node.output if o):
            return True
        if node.op_type == "Constant":
            value = _const_of(node)
            if value is not None:
                self.consts[node.output[0]] = value
                return True
            return False
        if node.op_type in ("Shape", "Size"):
            dims = self.static.get(node.input[0])
            if dims is None or any(d is None for d in dims):
                return False
            if node.op_type == "Size":
                self.consts[node.output[0]] = np.array(math.prod(dims), np.int64)
                return True
            a = _attrs(node)
            start, end = a.get("start", 0), a.get("end", len(dims))
            self.consts[node.output[0]] = np.array(dims[slice(start, end)], dtype=np.int64)
            return True
        ins = [i for i in node.input if i]
        if node.op_type in _NO_FOLD or not ins or node.domain not in ("", "ai.onnx"):
            return False
        if not all(i in self.consts for i in ins):
            return False
        return self._evaluate(node)

    def _evaluate(self, node: onnx.NodeProto) -> bool:
        from onnx.reference import ReferenceEvaluator

        feeds = {i: self.consts[i] for i in node.input if i}
        inputs = [onnx.helper.make_tensor_value_info(i, onnx.TensorProto.UNDEFINED, None)
                  for i in feeds]  # fmt: skip
        outputs = [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                   for o in node.output if o]  # fmt: skip
        g = onnx.helper.make_graph([node], "fold", inputs, outputs)
        m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", self.opset)])
        try:
            results = ReferenceEvaluator(m).run(None, feeds)
        except Exception:  # noqa: BLE001 - anything the evaluator cannot do stays a node
            return False
        for name, value in zip([o for o in node.output if o], results, strict=True):
            self.consts[name] = np.asarray(value)
        return True

    def value(self, name: str) -> np.ndarray | None:
        """A constant's float value, dequantized if it is a DequantizeLinear of constants."""
        if name in self.consts:
            return self.consts[name]
        if name in self.dq_weights:
            node = self.model.graph.node[self.dq_weights[name]]
            x = self.consts[node.input[0]].astype(np.float64)
            scale = self.consts[node.input[1]].astype(np.float64)
            zp = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            axis = int(_attrs(node).get("axis", 1)) % max(x.ndim, 1)
            view = [1] * x.ndim
            if scale.size > 1:
                view[axis] = scale.size
            zero = 0.0 if zp is None else zp.astype(np.float64).reshape(view)
            return (x - zero) * scale.reshape(view)
        return None

    def _fixed_target(self, node: onnx.NodeProto) -> bool:
        """Read a Reshape target computed from the dynamic batch size as a constant."""
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] in self.consts:
            return False
        if self.readers.get(node.input[1]) != 1 or _attrs(node).get("allowzero", 0):
            return False
        value = batch_free_target(node, self.producer, self.consts, self.static,
                                  self.batch_led, self.opset)  # fmt: skip
        if value is not None:
            self.consts[node.input[1]] = value
        return value is not None

    # -- operands ----------------------------------------------------------------------------
    def operand(self, name: str) -> str:
        """The core node for tensor ``name``, creating param/opaque nodes on first use."""
        if name in self.graph.nodes:
            return name
        if name in self.consts:
            shape = tuple(self.consts[name].shape)
            self.graph.add(Node(name, "param", shape=shape, attrs={"target": name}))
            roles = tuple(f"axis{i}" for i in range(len(shape)))
            self.graph.layers.setdefault(name, LayerInfo(name, "param", {"": (shape, roles)}))
            return name
        reason = "a quantized constant read by a non-weighted op" if name in self.dq_weights \
            else "a value the converter cannot follow"  # fmt: skip
        self.graph.add(Node(name, "stop", shape=self.shape(name), attrs={"reason": reason}))
        return name

    # -- nodes -------------------------------------------------------------------------------
    def add_node(self, idx: int, node: onnx.NodeProto) -> None:
        outs = [o for o in node.output if o]
        if not outs or self.fold(node):
            return
        if node.op_type == "DequantizeLinear" and node.input[0] in self.consts and \
                all(i in self.consts for i in node.input[1:] if i):  # fmt: skip
            self.dq_weights[outs[0]] = idx
            return
        spec = OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        label = node.op_type
        picks = range(len(node.input)) if spec is None or spec.tensors is None else spec.tensors
        names = [node.input[i] for i in picks if i < len(node.input) and node.input[i]]
        shape_math = bool(names) and all(n in self.noops for n in names)
        if (spec is not None and spec.build == "noop") or shape_math:
            self.noops.update(outs)
            for o in outs:
                self.graph.add(Node(o, "noop", label=label))
            return
        inputs = list(dict.fromkeys(self.operand(n) for n in names))
        view = NodeView(node, _attrs(node), [self.shape(n) for n in node.input],
                        [self.shape(o) for o in node.output],
                        [self.consts.get(n) for n in node.input], self.opset)  # fmt: skip
        if spec is None:
            kind, attrs = "stop", {"reason": "unsupported op"}  # the label names it
        else:
            kind, attrs = spec.build(view) if callable(spec.build) else (spec.build, {})
        layer = None
        if kind in ("conv", "linear", "batchnorm"):
            layer, kind, attrs = self.layer(idx, node, view, kind, attrs)
        if kind == "elementwise":
            inputs = [self.operand(n) for n in names]  # keep operand order (PRelu, Div)
        mode = spec.zero if spec else "none"
        if mode in ZERO_CHECKS:
            mode = "keep" if ZERO_CHECKS[mode](view) else "none"
        self.emit(idx, node, outs, inputs, kind, attrs, layer, mode)

    def emit(self, idx, node, outs, inputs, kind, attrs, layer, mode) -> None:
        for name in [*outs, f"{node.name or outs[0]}#outputs"]:
            self.cap.node_index[name] = idx
        shapes = [self.shape(o) for o in node.output if o]
        label = node.op_type
        if kind != "split" and shapes[0] is None:
            kind, attrs = "stop", {"reason": "output shape is unknown"}
        if kind in _SHAPE_KINDS and self.symbolic.intersection([*node.input, *node.output]):
            kind, attrs = "stop", {"reason": "reshapes a tensor with dynamic dimensions"}
        if kind == "split":
            multi = f"{node.name or outs[0]}#outputs"
            picks = dict(enumerate(node.output))
            if "pick" in attrs:  # a Slice: one piece of a split
                in_shape = self.shape(node.input[0])
                shapes = [tuple(n if d == attrs["axis"] else s for d, s in enumerate(in_shape))
                          for n in attrs["sizes"]]  # fmt: skip
                picks = {attrs["pick"]: outs[0]}
            self.graph.add(Node(multi, kind, inputs, shapes, layer, attrs, label))
            for i, o in picks.items():
                if o:
                    self.graph.add(Node(o, "getitem", [multi], shapes[i], attrs={"index": i}))
                    self.cap.zero[o] = "keep"
            self.cap.zero[multi] = mode
            return
        self.graph.add(Node(outs[0], kind, inputs, shapes[0], layer, attrs, label))
        self.cap.zero[outs[0]] = mode if kind != "stop" else "none"
        for o in outs[1:]:
            self.graph.add(Node(o, "stop", [outs[0]], self.shape(o), label=label,
                                attrs={"reason": f"extra output of {label}"}))  # fmt: skip
            self.cap.zero[o] = "none"

    # -- layers ------------------------------------------------------------------------------
    def layer(self, idx, node, view: NodeView, kind, attrs):
        from ._layers import build_layer

        name = node.name or node.output[0]
        while name in self.graph.layers:
            name += "'"
        built = build_layer(self, idx, node, view, kind, attrs, name)
        if isinstance(built, str):
            return None, "stop", {"reason": built}
        info, params, arrays, attrs = built
        self.graph.layers[name] = info
        self.cap.refs[name] = params
        self.cap.arrays[name] = arrays
        self.cap.layer_node[name] = idx
        return name, kind, attrs


def capture(model: onnx.ModelProto) -> Captured:
    """Build the core graph of ``model`` (a checked ``ModelProto``)."""
    b = _Builder(model)
    inits = set(b.consts)
    for v in model.graph.input:
        if v.name not in inits:
            b.graph.add(Node(v.name, "input", shape=b.shape(v.name)))
            b.cap.zero[v.name] = "none"
    for idx, node in enumerate(model.graph.node):
        b.add_node(idx, node)
    b.graph.outputs = [o.name for o in model.graph.output if o.name in b.graph.nodes]
    if b.cap.dynamic:
        b.cap.notes.append(
            f"inputs {', '.join(b.cap.dynamic)} have dynamic dimensions: analysed at size 1 "
            "(FLOPs too); channels that a reshape of a dynamic shape touches are kept"
        )
    return b.cap

