"""Read a Keras 3 Functional or Sequential model into the core graph.

Why the Functional graph: every call of a layer is a Keras ``Node`` that names the
layer object and its input and output ``KerasTensor`` s, so each core node maps
straight back to the variables we mask and cut, without tracing any TensorFlow code.
Nodes are read in reverse depth order (a topological order); nested Functional and
Sequential models are inlined, their layers named ``outer/inner``. Shapes are the
static Keras shapes with the batch axis from ``input_info``; where a model leaves
spatial axes open (``Input((None, None, 3))``) they are computed from the sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from ..core.graph import Graph, Node
from ..core.workflow import Captured
from ..errors import AnalysisError, ConfigError
from ._lambda import lambda_graph
from ._ops import Step, layer_steps, op_steps
from ._rebuild import rebuilt_whole
from ._slices import split_parts

__all__ = ["Capture", "LayerRef", "capture", "functional_of", "input_shapes"]

Shape = tuple[int, ...]


@dataclass
class LayerRef:
    """The Keras layer behind a core layer name, and which of its variables it owns."""

    layer: Any
    variables: tuple[str, ...]


@dataclass
class Capture(Captured):
    """The core graph of a Keras model and the links back to the model.

    Attributes:
        graph: The core graph.
        sample: Arrays of ``input_shapes`` (the model's own layout), zeros here; the
            frontend fills them as ``input_info.filler`` says.
        refs: Core layer name -> Keras layer and variable names (masks and cuts use it).
        reshapes: Core node name -> the ``Reshape`` layer or ``keras.ops.reshape`` it came
            from (cut rewrites it).
        splits: Core node name -> the ``keras.ops.split`` at points written in code on
            equal parts (cut scales them).
        nested: ``id`` of a nested model -> the core nodes feeding its inputs (first call).
        input_shapes: One sample shape per model input, in the model's own layout.
        layouts: Per input, ``"as given"`` or ``"NCHW->NHWC"`` (how input_info was read).
        calls: Core node name -> the Keras layer or ``keras.ops`` operation it came from and
            the core names of that call's tensor inputs (quantizers go on those inputs).
        lambdas: ``id`` of each ``Lambda`` (or layer of the user's) read through (its ops
            are nodes of the graph) -> the layer and the core nodes of its outputs (first
            call).
    """

    reshapes: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, Any] = field(default_factory=dict)
    nested: dict[int, list[str]] = field(default_factory=dict)
    input_shapes: list[Shape] = field(default_factory=list)
    layouts: list[str] = field(default_factory=list)
    calls: dict[str, tuple[Any, list[str]]] = field(default_factory=dict)
    lambdas: dict[int, tuple[Any, list[str]]] = field(default_factory=dict)


def functional_of(model: Any) -> Any:
    """The Functional graph of ``model`` (a Sequential's inner one).

    Raises:
        AnalysisError: For a subclassed model, an unbuilt Sequential, or a model that
            overrides ``call``.
    """
    from keras.src.models.functional import Functional

    if isinstance(model, keras.Sequential):
        inner = getattr(model, "_functional", None)
        if inner is None:
            raise AnalysisError(
                f"Sequential model {model.name!r} is not built, so its input shape is "
                "unknown. Start it with keras.Input(shape=...) or call model.build(input_shape) "
                "before create_compressed_model."
            )
        return inner
    if isinstance(model, Functional) and type(model).call is Functional.call:
        return model
    raise AnalysisError(
        f"{type(model).__name__} is a subclassed keras.Model: its call() is Python code that "
        "filterprune cannot read as a graph. Build the same network with the Functional API "
        "(keras.Model(inputs, outputs)) or keras.Sequential, load the weights into it, and "
        "pass that model."
    )


def _fits(shape: Shape, model_shape: tuple) -> bool:
    return len(shape) == len(model_shape) and all(
        m is None or int(m) == s for s, m in zip(shape[1:], model_shape[1:], strict=True)
    )


def input_shapes(functional: Any, sizes: list[list[int]]) -> tuple[list[Shape], list[str]]:
    """Read ``input_info`` sizes in NHWC or NCHW against the model's input shapes.

    Raises:
        ConfigError: If the counts differ or a size fits the input in neither layout.
    """
    inputs = functional.inputs
    if len(sizes) != len(inputs):
        raise ConfigError(
            f"`input_info` must give one sample_size per model input ({len(inputs)}). "
            f"Received: {len(sizes)} sample sizes."
        )
    shapes, layouts = [], []
    order = ""
    if isinstance(getattr(functional, "_inputs_struct", None), dict) and len(inputs) > 1:
        order = (" The model takes a dict: entries without a `keyword` follow its inputs in "
                 f"sorted key order ({', '.join(repr(t.name) for t in inputs)}); give each "
                 "entry the `keyword` of its input.")  # fmt: skip
    for size, kt in zip(sizes, inputs, strict=True):
        given = tuple(int(d) for d in size)
        model_shape = tuple(kt.shape)
        moved = (given[0], *given[2:], given[1]) if len(given) >= 3 else given
        if _fits(given, model_shape):
            shapes.append(given)
            layouts.append("as given")
        elif _fits(moved, model_shape):
            shapes.append(moved)
            layouts.append("NCHW->NHWC")
        else:
            raise ConfigError(
                f"`input_info.sample_size` must fit the model input {kt.name!r} of shape "
                f"{model_shape} (batch first), as NHWC or NCHW. Received: {list(given)}.{order}"
            )
    return shapes, layouts


class _Walker:
    """Emits core nodes for the Keras nodes of one model, recursing into sub-models."""

    def __init__(self, cap: Capture, batch: int) -> None:
        self.cap = cap
        self.batch = batch
        self.tensors: dict[int, str] = {}  # id(KerasTensor) -> core node name
        self.shapes: dict[int, Shape] = {}
        self.calls: dict[str, int] = {}
        self.layer_names: dict[tuple[int, int], str] = {}  # (id(layer), step) -> core layer
        self.owner: tuple[Any, list[str]] | None = None  # the layer being read, its inputs
        self.follows: dict[int, set[int]] = {}  # its slices' axes whose bounds follow widths
        self.sliced: dict[int, str] = {}  # id of a slice the strip rewrites -> its first node

    def unique(self, name: str) -> str:
        n = self.calls.get(name, 0)
        self.calls[name] = n + 1
        return name if n == 0 else f"{name}#{n}"

    def walk(self, functional: Any, prefix: str) -> None:
        by_depth = functional._nodes_by_depth
        for depth in sorted(by_depth, reverse=True):
            for node in by_depth[depth]:
                if not node.is_input:
                    self.node(node, prefix)

    def out_shapes(self, node: Any) -> list[Shape]:
        """The output shapes of ``node`` at the sample's sizes. A layer keeps its input's
        batch; a ``keras.ops`` call may change it (two views joined on the batch axis,
        ``ops.split(h, 2, axis=0)``), so it is computed."""
        given = [shape[0] for shape in (self.shapes[id(t)] for t in node.input_tensors[:1])
                 if shape]  # fmt: skip
        batch = given[0] if given and isinstance(node.operation, keras.Layer) else None
        shapes = [tuple(batch if d is None and i == 0 else d for i, d in enumerate(t.shape))
                  for t in node.outputs]  # fmt: skip
        if all(d is not None for s in shapes for d in s):
            return shapes
        fill = {id(t): keras.KerasTensor(self.shapes[id(t)], dtype=t.dtype)
                for t in node.input_tensors}  # fmt: skip
        args, kwargs = node.arguments.fill_in(fill)
        spec = keras.tree.flatten(node.operation.compute_output_spec(*args, **kwargs))
        if any(d is None for s in spec for d in s.shape):  # EinsumDense keeps a None given
            real = {id(t): keras.ops.zeros(self.shapes[id(t)], dtype=t.dtype)
                    for t in node.input_tensors}  # fmt: skip
            args, kwargs = node.arguments.fill_in(real)
            spec = keras.tree.flatten(node.operation(*args, **kwargs))
        return [tuple(int(d) for d in s.shape) for s in spec]

    def node(self, node: Any, prefix: str) -> None:
        op = node.operation
        ins = [self.tensors[id(t)] for t in node.input_tensors]
        in_shapes = [self.shapes[id(t)] for t in node.input_tensors]
        outs = self.out_shapes(node)
        whole = None
        if isinstance(op, keras.Model) and _inner_functional(op) is not None:
            whole = rebuilt_whole(op)
            if whole is None:
                self.cap.nested.setdefault(id(op), ins)
                self.nested(_inner_functional(op), node, f"{prefix}{op.name}/")
                return
        found = lambda_graph(op, node, self.shapes) if self.owner is None else None
        if isinstance(found, tuple):  # its keras.ops, read as a nested model's layers are
            self.owner, self.follows = (op, ins), found[1]
            try:
                self.nested(found[0], node, f"{prefix}{op.name}/")
            finally:
                self.owner, self.follows = None, {}
            self.cap.lambdas.setdefault(id(op), (op, [self.tensors[id(t)] for t in node.outputs]))
            return
        name = f"{prefix}{op.name}"
        if isinstance(op, keras.Layer):
            steps = layer_steps(op, name, in_shapes, outs)
            if isinstance(found, str) and steps[0].kind == "stop":  # why not read through
                steps[0].attrs["reason"] = found
            if whole is not None:  # one layer: a strip rebuilds it by its own from_config
                steps[0].attrs["reason"] = f"nested model {op.name} is kept whole: {whole}"
        else:
            steps = op_steps(op, list(node.arguments.args), in_shapes,
                             outs[0] if len(outs) == 1 else outs)  # fmt: skip
            if type(op).__name__ == "Reshape" and steps[0].kind == "reshape" \
                    and self.owner is None:  # (in a Lambda, its numbers run as written)
                steps[0].attrs["rewritable"] = True  # the strip rewrites its ``newshape``
            if type(op).__name__ == "Split" and steps[0].kind == "split":
                axis = int(op.axis) % len(in_shapes[0])
                k = split_parts(op.indices_or_sections, in_shapes[0][axis])
                if k is not None:  # points in code on equal parts: the strip scales them
                    steps[0].attrs["equal_parts"] = (axis, k)
        self.emit(node, op, name, steps, ins, outs)

    def nested(self, inner: Any, node: Any, prefix: str) -> None:
        for src, dst in zip(node.input_tensors, inner.inputs, strict=True):
            self.tensors[id(dst)] = self.tensors[id(src)]
            self.shapes[id(dst)] = self.shapes[id(src)]
        self.walk(inner, prefix)
        for src, dst in zip(inner.outputs, node.outputs, strict=True):
            self.tensors[id(dst)] = self.tensors[id(src)]
            self.shapes[id(dst)] = self.shapes[id(src)]

    def emit(self, node, op, name: str, steps: list[Step], ins: list[str], outs) -> None:
        graph = self.cap.graph
        node_name = self.unique(name)
        label = type(op).__name__
        if self.owner is not None:
            label = f"{label} in {type(self.owner[0]).__name__} {self.owner[0].name}"
        current = ins
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            shape = step.shape if step.shape is not None else (outs[0] if len(outs) == 1 else outs)
            layer = None
            if step.info is not None:
                # one Keras layer is one core layer, also when called from inside a nested
                # model and outside it (its calls then share their cut)
                layer = self.layer_names.setdefault((id(op), i), step.info.name)
                graph.layers.setdefault(layer, step.info)
                self.cap.refs.setdefault(layer, LayerRef(op, step.variables))
            core = node_name + ("" if last else step.suffix or f"/{i}")
            for k, const in enumerate(step.constants):
                graph.add(Node(f"{core}/constant{k}", "param", [], const,
                               attrs={"target": f"{core}'s constant"}))  # fmt: skip
                current = [*current, f"{core}/constant{k}"]
            attrs = dict(step.attrs)
            if self.owner is not None and "equal_parts" in attrs:
                # a Lambda's slice: cut only where its code computes the bounds from the
                # width (no strip rewrites a number written in it)
                follows = self.follows.get(id(op), set())
                attrs["equal_parts"] = [p for p in attrs["equal_parts"] if p[0] in follows]
            elif attrs.get("equal_parts") or step.kind == "reshape" and attrs.get("rewritable"):
                first = self.sliced.setdefault(id(op), core)
                if first != core:  # a slice, split or reshape called again (a shared
                    # layer, a nested model's): one rebuilt op takes one size, and each
                    # call's tensor may be cut otherwise
                    for key in ("equal_parts", "rewritable"):
                        attrs.pop(key, None)
                        graph[first].attrs.pop(key, None)
            graph.add(Node(core, step.kind, list(current), shape, layer=layer, attrs=attrs,
                           label=f"{label} {step.label}" if step.label else label))  # fmt: skip
            self.cap.calls[core] = self.owner or (op, ins)
            if step.kind == "reshape" and attrs.get("rewritable"):
                self.cap.reshapes[core] = op
            if step.kind == "split" and attrs.get("equal_parts") and self.owner is None:
                self.cap.splits[core] = op
            current = [core]
        if len(outs) == 1:
            self.tensors[id(node.outputs[0])] = current[0]
            self.shapes[id(node.outputs[0])] = outs[0]
            return
        for k, (kt, shape) in enumerate(zip(node.outputs, outs, strict=True)):
            item = f"{current[0]}:{k}"
            graph.add(Node(item, "getitem", list(current), shape, attrs={"index": k}))
            self.tensors[id(kt)] = item
            self.shapes[id(kt)] = shape


def _inner_functional(model: Any) -> Any:
    try:
        return functional_of(model)
    except AnalysisError:
        return None


def capture(model: Any, sizes: list[list[int]]) -> Capture:
    """Build the core graph of ``model`` with ``input_info`` sample sizes ``sizes``.

    Raises:
        AnalysisError: For a model that is not Functional or Sequential.
        ConfigError: If ``sizes`` do not fit the model inputs.
    """
    functional = functional_of(model)
    shapes, layouts = input_shapes(functional, sizes)
    cap = Capture(Graph(), input_shapes=shapes, layouts=layouts)
    walker = _Walker(cap, batch=shapes[0][0])
    for kt, shape in zip(functional.inputs, shapes, strict=True):
        name = walker.unique(kt._keras_history.operation.name)
        cap.graph.add(Node(name, "input", shape=shape, label="Input"))
        walker.tensors[id(kt)] = name
        walker.shapes[id(kt)] = shape
    walker.walk(functional, "")
    cap.graph.outputs = list(dict.fromkeys(walker.tensors[id(t)] for t in functional.outputs))
    cap.graph.shared = _shared_variables(cap)
    cap.sample = [np.zeros(shape, "float32") for shape in shapes]
    return cap


def _shared_variables(cap: Capture) -> list[tuple[str, ...]]:
    """The layers' variables that are one (a layer of the user's reading another layer's
    kernel lists it among its own weights)."""
    holders: dict[int, list[str]] = {}
    for name, info in cap.graph.layers.items():
        ref = cap.refs.get(name)
        keys = {} if ref is None else {
            k: v for i, v in enumerate(ref.layer.weights)
            for k in (v.name, f"{i}.{v.name}".replace(":", "_"))}  # an opaque layer's form too
        for key in info.params:
            if key in keys:
                holders.setdefault(id(keys[key]), []).append(f"{name}.{key}")
    return [tuple(names) for names in holders.values() if len(names) > 1]
