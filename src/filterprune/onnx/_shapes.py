"""Tensor shapes of an ONNX model, from ``onnx.shape_inference``."""

from __future__ import annotations

import math
from typing import Any

import onnx

__all__ = ["Shapes", "infer_shapes", "infer_elem_types", "opset_of", "type_dims"]

Shapes = dict[str, tuple[Any, ...] | None]  # tensor name -> dims, None for a symbolic one


def opset_of(model: onnx.ModelProto) -> int:
    """The model's default-domain opset (1 if it names none)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def type_dims(t: onnx.TypeProto) -> tuple[Any, ...] | None:
    """A tensor type's dimensions, None where symbolic; None for no shape at all."""
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


def infer_shapes(model: onnx.ModelProto, batch: int | None = None) -> Shapes:
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
    for _ in range(4):  # again while an op onnx does not infer gets its input's shape
        try:
            inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
        except Exception:  # noqa: BLE001 - partial shapes are still useful; unknown ones block
            inferred = model
        g = inferred.graph
        known = {v.name: v for v in [*g.input, *g.value_info, *g.output]}
        given = [_like(known[n.input[0]], n.output[0]) for n in g.node
                 if n.op_type in _SAME_SHAPE and n.input[0] in known
                 and (n.output[0] not in known or type_dims(known[n.output[0]].type) is None)]
        if not given:
            break
        skeleton.graph.value_info.extend(given)
    return {v.name: type_dims(v.type) for v in [*g.input, *g.value_info, *g.output]}


def infer_elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Each tensor's element type (``onnx.TensorProto`` enum) where inference knows it."""
    try:
        g = onnx.shape_inference.infer_shapes(_skeleton(model)).graph
    except Exception:  # noqa: BLE001 - the types the model itself declares
        g = model.graph
    types = {i.name: i.data_type for i in model.graph.initializer}
    for v in [*g.input, *g.value_info, *g.output]:
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    return types


# ops whose output has their input's shape, which onnx's inference may not know
# (GroupNormalization at opset 21 in onnx 1.17)
_SAME_SHAPE = {"GroupNormalization"}


def _like(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    out.name = name
    return out
