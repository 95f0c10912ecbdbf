"""What is known about an ONNX model before any core node exists: shapes and constants.

:func:`read_facts` infers shapes with ``onnx.shape_inference``, folds small
constant subgraphs (shape arithmetic, ``Constant`` nodes) with the ONNX reference
evaluator so that Reshape targets and Split sizes are known, reads Reshape targets
computed from a dynamic batch size as constants (:mod:`._batch`), and infers the
shapes again with all of that known. The result, :class:`ModelFacts`, is
read-only: graph emission (:mod:`.capture`) and the layer builders
(:mod:`._layers`) only ask it questions.

Example:
    >>> facts = read_facts(model)  # doctest: +SKIP
    >>> facts.shape("input"), facts.const("/Constant_output_0")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cached_property
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ._batch import BatchShapes, evaluate_at_batch
from ._shapes import Shapes, infer_elem_types, infer_shapes, opset_of

__all__ = ["ModelFacts", "read_facts", "attrs_of", "has_subgraph", "subgraph_inputs",
           "unit_axes_perm", "laid_out", "layout_arg", "LAYOUT_OPS"]

_NO_FOLD = {"DequantizeLinear", "RandomNormal", "RandomUniform", "RandomNormalLike",
            "RandomUniformLike", "Multinomial", "Bernoulli"}  # fmt: skip


_VIEWS = ("Transpose", "Unsqueeze", "Squeeze", "Identity", "Reshape", "Cast")
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}  # fmt: skip


LAYOUT_OPS = ("Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze")


def layout_arg(node: onnx.NodeProto, consts: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The argument of layout op ``node``: a Transpose's ``perm``, a Reshape's target, the
    axes of a Squeeze/Unsqueeze (attribute or constant input); None where not given."""
    attrs = attrs_of(node)
    if node.op_type == "Transpose":
        return tuple(int(a) for a in attrs["perm"]) if "perm" in attrs else None
    value = attrs.get("axes")
    if value is None and len(node.input) > 1 and node.input[1]:
        value = consts.get(node.input[1])
        value = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value
    return None if value is None else tuple(int(a) for a in np.ravel(value))


def laid_out(value: np.ndarray, op: str, arg: tuple[int, ...] | None) -> np.ndarray | None:
    """``value`` through layout op ``op`` with argument ``arg`` (:func:`layout_arg`), as
    ONNX defines it; None for what this does not read (a Reshape of ``allowzero``)."""
    if op in ("Identity", "Cast"):  # a cast between float types: the value, rounded
        return value
    if op == "Transpose":
        return np.transpose(value, arg)
    if op == "Reshape":
        return None if arg is None else value.reshape(
            [value.shape[i] if d == 0 else d for i, d in enumerate(arg)])  # fmt: skip
    if op == "Squeeze":
        return np.squeeze(value, None if arg is None else tuple(a % value.ndim for a in arg))
    if op == "Unsqueeze" and arg is not None:
        return np.expand_dims(value, tuple(a % (value.ndim + len(arg)) for a in arg))
    return None


def unit_axes_perm(before: tuple[int, ...] | None, after: tuple[int, ...]) -> tuple | None:
    """The permutation a Reshape from ``before`` to ``after`` is, where it only moves axes of
    size 1 (tf2onnx lays out a depthwise kernel so: ``(3, 3, 16, 1) -> (3, 3, 1, 16)``):
    the other axes, and the axes of size 1, keep their order. None otherwise."""
    if not before or len(before) != len(after) or any(d < 1 for d in after):
        return None
    big = [[i for i, d in enumerate(shape) if d != 1] for shape in (before, after)]
    if [before[i] for i in big[0]] != [after[i] for i in big[1]]:
        return None
    ones = iter(i for i, d in enumerate(before) if d == 1)
    bigs = iter(big[0])
    return tuple(next(bigs) if d != 1 else next(ones) for d in after)


def attrs_of(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as Python values."""
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


class ModelFacts:
    """Shapes, constants and producers of one model; read-only.

    Made by :func:`read_facts`. Shapes are at batch size 1 with other symbolic
    dimensions read as 1; :meth:`symbolic` tells which tensors had one.
    """

    def __init__(self, folder: _Folder) -> None:
        self._model, self._opset = folder.model, folder.opset
        self._consts = MappingProxyType(folder.consts)
        self._static = folder.static
        self._producer, self._readers = folder.producer, folder.readers
        self._dq, self._q = folder.dq_nodes, folder.q_nodes
        self._consumers = folder.consumers
        self._batch = folder.batch
        self._shape_model = folder.shape_model
        self._consts_at_fold = folder.consts_at_fold
        inits = {i.name for i in folder.model.graph.initializer}
        inputs = [v.name for v in folder.model.graph.input if v.name not in inits]
        self._dynamic = tuple(n for n in inputs if None in (self._static.get(n) or ()))

    @property
    def model(self) -> onnx.ModelProto:
        """The model as given (never modified)."""
        return self._model

    @property
    def opset(self) -> int:
        """The model's default-domain opset."""
        return self._opset

    @property
    def consts(self) -> Mapping[str, np.ndarray]:
        """Initializers, ``Constant`` outputs and folded values by tensor name."""
        return self._consts

    @property
    def dynamic(self) -> tuple[str, ...]:
        """Graph inputs with a symbolic dimension (analysed at size 1)."""
        return self._dynamic

    @cached_property
    def batch(self) -> int:
        """The batch size the graph is analysed at: the first input's leading dimension."""
        for v in self._model.graph.input:
            if v.name not in self._consts:
                dims = self.shape(v.name)
                return max(1, int(dims[0])) if dims else 1
        return 1

    @cached_property
    def _at_batch_1(self) -> Shapes:
        # consts as they were right after folding: the ones known when shapes were inferred
        return self._batch.at_batch_1(self._shape_model, self._consts_at_fold, self._static)

    def sizes_follow_channels(self, node: onnx.NodeProto) -> bool:
        """Whether Resize ``node``'s computed ``sizes`` take their channel entry from its
        own input's shape and no other entry does (``Concat(Shape(x)[0:2], [h, w])``, as
        ``F.interpolate(size=...)`` exports with a free batch): once channels are cut, the
        sizes follow. Found by evaluating them with that channel count one larger."""
        x, name = node.input[0], node.input[3]
        dims = self._static.get(x)
        if not dims or len(dims) < 2 or dims[1] is None or attrs_of(node).get("axes"):
            return False
        wider = {**self._static, x: (dims[0], dims[1] + 1, *dims[2:])}
        probes = [evaluate_at_batch(name, self._producer, self._consts, static,
                                    self._batch.led, self._opset, 1)
                  for static in (self._static, wider)]  # fmt: skip
        if any(p is None or p.shape != (len(dims),) for p in probes):
            return False
        moved = np.flatnonzero(probes[0] != probes[1]).tolist()
        return moved == [1] and int(probes[1][1]) == int(probes[0][1]) + 1

    def shape(self, name: str) -> tuple[int, ...] | None:
        """Static shape at batch 1, other symbolic dimensions as 1; None if unknown."""
        dims = self._static.get(name)
        if dims is None:
            return tuple(self._consts[name].shape) if name in self._consts else None
        if dims and dims[0] is None:  # the batch, or a multiple of it (batch * rows)
            first = (self._at_batch_1.get(name) or (None,))[0]
            dims = (1 if first is None else first, *dims[1:])
        return tuple(1 if d is None else int(d) for d in dims)

    def symbolic(self, name: str, axes: slice = slice(1, None)) -> bool:
        """Whether tensor ``name`` has a symbolic dimension among ``axes`` (past the
        leading one by default)."""
        dims = self._static.get(name)
        return dims is not None and any(d is None for d in dims[axes])

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (as stored), or None."""
        return self._consts.get(name)

    def folded(self, node: onnx.NodeProto) -> bool:
        """Whether every output of ``node`` is a known constant."""
        outs = [o for o in node.output if o]
        return bool(outs) and all(o in self._consts for o in outs)

    def dq_node(self, name: str) -> int | None:
        """Index of the DequantizeLinear of constants that computes ``name``, or None."""
        return self._dq.get(name)

    def q_node(self, name: str) -> int | None:
        """Index of the QuantizeLinear of constants (a float weight) that computes ``name``."""
        return self._q.get(name)

    def zero_point(self, node: onnx.NodeProto) -> np.ndarray:
        """The zero point of a Q/DQ node as int64 (0 when it has none), or a float NaN array
        when it is computed."""
        name = node.input[2] if len(node.input) > 2 else ""
        if not name:
            return np.zeros((), np.int64)
        value = self._consts.get(name)
        return np.full((), np.nan) if value is None else value.astype(np.int64)

    def keeps_zero(self, node: onnx.NodeProto) -> np.ndarray:
        """Where (per element of its scale) a Q/DQ node of activations passes a real zero on.

        ``QuantizeLinear`` turns 0 into its zero point ``z`` (``round(0 / s) + z``), which
        means zero only to a ``DequantizeLinear`` with that same zero point: a Q keeps
        zeros where its scale is nonzero and every reader is a DQ; a DQ where its zero
        point equals that of the Q feeding it (``(z - z') * s'`` is 0 only if ``z' == z``).
        """
        scale = self._consts.get(node.input[1]) if len(node.input) > 1 else None
        if scale is None:
            return np.zeros((), bool)
        if node.op_type == "QuantizeLinear":
            readers = self._consumers.get(node.output[0], [])
            only_dq = bool(readers) and all(r.op_type == "DequantizeLinear" for r in readers)
            return (scale != 0) & only_dq
        source = self._producer.get(node.input[0])
        if source is None or source.op_type != "QuantizeLinear":
            return np.zeros(scale.shape, bool)
        theirs, mine = self.zero_point(source), self.zero_point(node)
        try:
            same = np.broadcast_to(theirs == mine, np.broadcast_shapes(theirs.shape, mine.shape))
        except ValueError:  # zero points of different lengths: nothing is known
            return np.zeros(scale.shape, bool)
        return np.broadcast_to(same, scale.shape) if same.size < scale.size else same

    def weight_view(self, name: str) -> tuple[str, list[tuple[str, tuple[int, ...]]]] | None:
        """``(dq, steps)`` when ``name`` is a DequantizeLinear output ``dq`` of constants
        seen through layout ops (Transpose, Unsqueeze, Squeeze, Identity, and a Cast to
        another float type: how exporters lay out a quantized weight), each with constant
        arguments and read once; the steps in order from ``dq``. None otherwise."""
        steps: list[tuple[str, tuple[int, ...]]] = []
        if name not in self._dq and self.readers(name) != 1:  # a view two layers read
            return None
        while name not in self._dq:
            node = self._producer.get(name)
            if node is None or node.op_type not in _VIEWS or self.readers(node.input[0]) != 1:
                return None
            a = attrs_of(node)
            if node.op_type == "Reshape":  # moving axes of size 1 only: read as a Transpose
                target = self._consts.get(node.input[1])
                perm = None if target is None else unit_axes_perm(
                    self.shape(node.input[0]), tuple(int(d) for d in target))  # fmt: skip
                if perm is None:
                    return None
                steps.insert(0, ("Transpose", perm))
                name = node.input[0]
                continue
            if node.op_type == "Cast" and a.get("to") not in _FLOAT_TYPES:
                return None  # to integers: other values (to float16: zeros stay zeros)
            if node.op_type == "Transpose":
                rank = len(self.shape(node.input[0]) or ())
                arg = tuple(int(x) for x in a.get("perm", range(rank)[::-1]))
            elif node.op_type in ("Unsqueeze", "Squeeze"):
                axes = a.get("axes")
                if axes is None and len(node.input) > 1 and node.input[1]:
                    axes = self._consts.get(node.input[1])
                if axes is None:  # a Squeeze of every size-1 axis: not followed
                    return None
                arg = tuple(int(x) for x in np.ravel(axes))
            else:
                arg = ()
            steps.insert(0, (node.op_type, arg))
            name = node.input[0]
        return (name, steps) if steps else None

    def value(self, name: str) -> np.ndarray | None:
        """A constant's float value, dequantized if it is a DequantizeLinear of constants."""
        if name in self._consts:
            return self._consts[name]
        if name not in self._dq:
            return None
        node = self._model.graph.node[self._dq[name]]
        x = self._consts[node.input[0]].astype(np.float64)
        scale = self._consts[node.input[1]].astype(np.float64)
        zp = self._consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        axis = int(attrs_of(node).get("axis", 1)) % max(x.ndim, 1)
        view = [1] * x.ndim
        if scale.size > 1:
            view[axis] = scale.size
        zero = 0.0 if zp is None else zp.astype(np.float64).reshape(view)
        return (x - zero) * scale.reshape(view)

    def node(self, index: int) -> onnx.NodeProto:
        """The ONNX node at ``index`` in graph order."""
        return self._model.graph.node[index]

    def producer(self, name: str) -> onnx.NodeProto | None:
        """The node that computes tensor ``name`` (None for inputs and initializers)."""
        return self._producer.get(name)

    def readers(self, name: str) -> int:
        """How many node inputs read tensor ``name``."""
        return self._readers.get(name, 0)


_MAX_FOLDS = 8  # rounds of folding and shape inference (each round makes more known)


class _Folder:
    """The mutable work behind :func:`read_facts`: folds constants, infers shapes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = self.shape_model = model
        self.opset = opset_of(model)
        self.static = infer_shapes(model)
        self.consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.readers: dict[str, int] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        for n in model.graph.node:
            for i in n.input:
                self.readers[i] = self.readers.get(i, 0) + 1
            self.producer.update((o, n) for o in n.output if o)
        self.batch = BatchShapes(model, self.producer, self.opset)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for i in dict.fromkeys(n.input):
                self.consumers.setdefault(i, []).append(n)
        self.dq_nodes: dict[str, int] = {}  # output of a DequantizeLinear of constants
        self.q_nodes: dict[str, int] = {}  # output of a QuantizeLinear of constants
        self.consts_at_fold: dict[str, np.ndarray] = {}
        self.elem_types: dict[str, int] | None = None  # read when a CastLike needs them
        # a Shape with some dims free (a dynamic batch): the others, read by a Gather or a
        # Slice (torch.chunk's bounds at opset 11 read the channel count so)
        self.partial: dict[str, np.ndarray] = {}

    def prefold(self) -> None:
        """Fold constants, then infer shapes again with them known (computed Pad widths...);
        again while that makes more known: a Reshape target read from the shape of another
        computed reshape (tf2onnx's UpSampling2D at opset 13) is known only then."""
        initial = set(self.consts)
        self.consts_at_fold = dict(self.consts)
        for _ in range(_MAX_FOLDS):
            known = len(self.consts)
            for node in self.model.graph.node:
                self.fold(node)
            for node in self.model.graph.node:
                self.fixed_target(node)
            if len(self.consts) == known:
                return
            self.consts_at_fold = dict(self.consts)
            self.shape_model = m = onnx.ModelProto()
            m.CopyFrom(self.model)
            keep = [n for n in m.graph.node if not all(o in self.consts for o in n.output if o)]
            del m.graph.node[:]
            m.graph.node.extend(keep)
            for name, value in self.consts.items():
                if name not in initial and value.dtype != object:
                    m.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
            self.static = infer_shapes(m)
            self.batch = BatchShapes(m, self.producer, self.opset)  # its targets now known

    def refold(self) -> None:
        """Fold again with the new shapes (a Shape of a tensor now known), in graph order;
        note the DequantizeLinear nodes of constants (quantized weights)."""
        for idx, node in enumerate(self.model.graph.node):
            outs = [o for o in node.output if o]
            if not outs:
                continue
            if self.fold(node):
                if node.op_type == "QuantizeLinear":
                    self.q_nodes[outs[0]] = idx  # a float weight quantized in the graph
                continue
            blocked = any(a.name == "block_size" and a.i for a in node.attribute)
            if node.op_type == "DequantizeLinear" and node.input[0] in self.consts and \
                    all(i in self.consts for i in node.input[1:] if i) and not blocked:
                self.dq_nodes[outs[0]] = idx  # (blocked scales: not read as a weight)

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
            return self._fold_shape(node)
        if node.op_type in ("Gather", "Slice") and node.input[0] in self.partial:
            return self._pick_known(node)
        if node.op_type == "CastLike" and node.input[0] in self.consts:
            return self._cast_like(node)
        ins = [i for i in node.input if i]
        if node.op_type in _NO_FOLD or not ins or node.domain not in ("", "ai.onnx"):
            return False
        if not all(i in self.consts for i in [*ins, *subgraph_inputs(node)]):
            return False
        return self._evaluate(node)

    def _fold_shape(self, node: onnx.NodeProto) -> bool:
        value = self.consts.get(node.input[0])  # a constant's own shape (an initializer
        # that is no graph input has none in the inferred shapes)
        dims = tuple(np.shape(value)) if value is not None else self.static.get(node.input[0])
        if dims is None:
            return False
        a = attrs_of(node)
        picked = dims[slice(a.get("start", 0), a.get("end", len(dims)))]
        if node.op_type == "Shape" and None in picked:
            self.partial[node.output[0]] = np.array(picked, dtype=object)
        if any(d is None for d in dims):
            return False
        if node.op_type == "Size":
            self.consts[node.output[0]] = np.array(math.prod(dims), np.int64)
            return True
        self.consts[node.output[0]] = np.array(picked, dtype=np.int64)
        return True

    def _pick_known(self, node: onnx.NodeProto) -> bool:
        """A Gather or Slice of constant indices from a partly known shape: a constant
        where it picks known dims only."""
        dims, a = self.partial[node.input[0]], attrs_of(node)
        # by position: an optional input left empty (a Slice's axes) keeps its place
        rest = [self.consts.get(i) if i else np.array([0]) for i in node.input[1:]]
        if any(r is None for r in rest):
            return False
        if node.op_type == "Gather":
            if a.get("axis", 0) not in (0, -1):
                return False
            index = np.asarray(rest[0], dtype=np.int64)
            if np.any((index >= len(dims)) | (index < -len(dims))):
                return False
            picked = dims[index]
        else:
            bounds = [np.asarray(r).reshape(-1) for r in rest] if rest else [  # opset < 10
                np.asarray(a.get(k, [0]), dtype=np.int64) for k in ("starts", "ends", "axes")]
            if any(b.size != 1 for b in bounds) or (len(bounds) > 2 and bounds[2][0] not in
                                                    (0, -1)):  # fmt: skip
                return False
            step = int(bounds[3][0]) if len(bounds) > 3 else 1
            picked = dims[int(bounds[0][0]):int(bounds[1][0]):step]  # clamped as ONNX does
        if any(d is None for d in np.ravel(picked)):
            return False
        self.consts[node.output[0]] = np.asarray(picked, dtype=np.int64)
        return True

    def _cast_like(self, node: onnx.NodeProto) -> bool:
        """A constant cast to the type of a computed tensor, which gives only its type (the
        current exporter writes a conv without bias as one given ``Expand`` of a zero
        ``CastLike`` the input: a constant, so the conv is cut)."""
        if self.elem_types is None:
            self.elem_types = infer_elem_types(self.model)
        elem = self.elem_types.get(node.input[1])
        if not elem:
            return False
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        self.consts[node.output[0]] = np.asarray(self.consts[node.input[0]]).astype(dtype)
        return True

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

    def fixed_target(self, node: onnx.NodeProto) -> bool:
        """Read a Reshape target computed from the dynamic batch size as a constant."""
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] in self.consts:
            return False
        if self.readers.get(node.input[1]) != 1:
            return False
        value = self.batch.free_target(node, self.consts, self.static)
        if value is not None:
            self.consts[node.input[1]] = value
        return value is not None


def read_facts(model: onnx.ModelProto) -> ModelFacts:
    """Infer shapes and fold constants of ``model`` (a checked ``ModelProto``)."""
    folder = _Folder(model)
    folder.prefold()
    folder.refold()
    return ModelFacts(folder)


def has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute)  # fmt: skip


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Every outer tensor name the node's subgraphs read (an If or Loop body reads the
    graph around it by name), nested subgraphs included."""
    names: set[str] = set()
    for a in node.attribute:
        for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            defined = {v.name for v in sub.input} | {i.name for i in sub.initializer}
            read: set[str] = set()
            for n in sub.node:
                read.update(n.input)
                read |= subgraph_inputs(n)
                defined.update(n.output)
            names |= read - defined - {""}
    return names
