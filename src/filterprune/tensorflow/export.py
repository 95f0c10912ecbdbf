"""Write a Keras model as a frozen GraphDef, a SavedModel, a ``.keras`` file or ONNX.

Every format is written next to its destination first and moved into place, so a
failed export never leaves half a file; a SavedModel never replaces a folder that has
files in it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf

from .._atomic import atomic_dir, atomic_write
from ._graphdef import prepare_for_onnx
from ._inputs import as_model_inputs
from ._qdq import weight_qdq

__all__ = ["FORMATS", "export", "resolve_format", "serving_function"]

log = logging.getLogger("filterprune")
FORMATS = ("frozen_graph", "saved_model", "keras", "onnx")
_BY_SUFFIX = {".pb": "frozen_graph", ".keras": "keras", ".onnx": "onnx"}


_OTHER_FORMATS = {".tflite": "TensorFlow Lite", ".h5": "Keras HDF5", ".hdf5": "Keras HDF5"}


def resolve_format(path: str, save_format: str | None) -> str:
    """``save_format``, or the one the file suffix names (``.pb``, ``.keras``, ``.onnx``;
    a path without a suffix is a SavedModel folder).

    Raises:
        ValueError: For an unknown format, a suffix that names none of :data:`FORMATS`
            (``.tflite``, ``.h5``: a file named so would not hold what its name says), or
            ``keras`` with a path not ending in ``.keras``.
    """
    suffix = os.path.splitext(str(path))[1].lower()
    if save_format is not None and save_format not in FORMATS:
        raise ValueError(
            f"`save_format` must be one of {', '.join(map(repr, FORMATS))}. "
            f"Received: save_format={save_format!r}."
        )
    if suffix in _OTHER_FORMATS or (save_format is None and suffix and suffix not in _BY_SUFFIX):
        kind = _OTHER_FORMATS.get(suffix)
        what = f"a {kind} file" if kind else f"the suffix {suffix!r}"
        raise ValueError(
            "`save_path` must end in .pb (frozen GraphDef), .keras or .onnx, or have no "
            f"suffix (a SavedModel folder). Received: save_path={str(path)!r}, which names "
            f"{what}: not a format export_model writes. Supported formats: "
            f"{', '.join(map(repr, FORMATS))}."
        )
    if save_format is None:
        return _BY_SUFFIX.get(suffix, "saved_model")
    if save_format == "keras" and suffix != ".keras":
        raise ValueError(
            "`save_path` must end in '.keras' for save_format='keras' (Keras 3 requires it). "
            f"Received: save_path={str(path)!r}."
        )
    named = _BY_SUFFIX.get(suffix, "saved_model" if not suffix else None)
    if named is not None and named != save_format:  # m.keras holding a GraphDef, m.pb a folder
        wanted = {v: k for k, v in _BY_SUFFIX.items()}.get(save_format)
        raise ValueError(
            f"`save_path` must fit save_format={save_format!r}: "
            + (f"end in {wanted!r}" if wanted else "no suffix (a SavedModel folder)")
            + f". Received: save_path={str(path)!r}, whose suffix names {named!r}."
        )
    return save_format


def serving_function(model: Any) -> tuple[Any, list[tf.TensorSpec]]:
    """A ``tf.function`` of ``model`` in inference mode and its input signature."""
    specs = []
    for i, kt in enumerate(model.inputs):
        name = kt._keras_history.operation.name if hasattr(kt, "_keras_history") else f"x{i}"
        specs.append(tf.TensorSpec((None, *kt.shape[1:]), kt.dtype, name=name))

    @tf.function(input_signature=specs)
    def serve(*xs: tf.Tensor) -> Any:
        return model(as_model_inputs(model, list(xs)), training=False)

    return serve, specs


def _frozen(model: Any) -> Any:
    """The serving function with every variable and captured tensor as a constant."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    serve, _ = serving_function(model)
    concrete = serve.get_concrete_function()
    _refuse_writes(concrete, {layer.name for layer in model._flatten_layers()})
    with _quiet_tf():
        frozen = convert_variables_to_constants_v2(concrete)
    frozen.output_structure = concrete.structured_outputs  # freezing flattens it
    return frozen


_WRITES = ("AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp")


def _refuse_writes(concrete: Any, names: set[str]) -> None:
    """A model whose call writes variables (a stateful RNN, a layer keeping a stream's
    state) has no frozen form: its variables become constants.

    Raises:
        ValueError: Naming the layers that write, and what to export instead.
    """
    ops = [op.name for op in concrete.graph.get_operations() if op.type in _WRITES]
    for fn in getattr(concrete.graph, "_functions", {}).values():  # a loop body's writes
        ops += [n.name for n in fn.definition.node_def if n.op in _WRITES]
    if ops:
        scopes = {name.split("/")[1] if "/" in name else name for name in ops}
        # tf names a layer's scope ``memory_1`` on a second trace: the layer is ``memory``
        layers = sorted({s if s in names else re.sub(r"_\d+$", "", s) for s in scopes})
        raise ValueError(
            f"The model writes variables in its call ({', '.join(layers)}: a stateful "
            "recurrent layer, or a layer keeping state across calls), which a frozen graph "
            "(.pb) or an ONNX file cannot hold. Export a SavedModel (a path without "
            "those suffixes), or build the model without that state for export."
        )


@contextlib.contextmanager
def _quiet_tf() -> Iterator[None]:
    """Hide the deprecation notices that TF1 graph utilities log on every call, and the
    tracebacks tf2onnx logs when one of its optional graph optimizers does not apply (it
    goes on without it; the file is checked after)."""
    loggers = [tf.get_logger(), logging.getLogger("tf2onnx.optimizer")]
    levels = [one.level for one in loggers]
    for one in loggers:
        one.setLevel("ERROR")
    try:
        yield
    finally:
        for one, level in zip(loggers, levels, strict=True):
            one.setLevel(level)


def _frozen_graph(model: Any, path: str) -> None:
    frozen = _frozen(model)
    graph_def = frozen.graph.as_graph_def()
    with open(path, "wb") as f:
        f.write(graph_def.SerializeToString())
    log.info("frozen graph: inputs %s, outputs %s", [t.name for t in frozen.inputs],
             [t.name for t in frozen.outputs])  # fmt: skip


def _onnx(model: Any, path: str) -> None:
    try:
        import onnx
        import tf2onnx
    except ImportError as err:
        raise ImportError(
            "save_format='onnx' needs tf2onnx (`pip install tf2onnx`). Received: it cannot be "
            f"imported ({err}). Use save_format='saved_model' and convert that instead."
        ) from err
    # Frozen first: from_function would turn tensors the model captures (a Normalization
    # layer's mean and variance) into extra graph inputs.
    frozen = _frozen(model)
    graph_def = weight_qdq(prepare_for_onnx(frozen.graph.as_graph_def()), frozen.graph)
    try:
        with _quiet_tf():
            proto, _ = tf2onnx.convert.from_graph_def(
                graph_def,
                input_names=[t.name for t in frozen.inputs],
                output_names=[t.name for t in frozen.outputs], opset=17)  # fmt: skip
    except Exception as err:  # noqa: BLE001 - any converter failure is reported the same way
        raise RuntimeError(
            f"tf2onnx {tf2onnx.__version__} could not convert this model under TensorFlow "
            f"{tf.__version__}: {err}. tf2onnx may not support this TensorFlow version; use "
            "save_format='saved_model' and convert it with a tf2onnx release that does."
        ) from err
    _plain_input_names(proto)
    _name_outputs(proto, _output_names(model, frozen))
    _conv_groups(proto)
    from ..onnx.fold_affine import fold_channel_affine
    from ..onnx.quantize_pad import quantize_before_pad

    fold_channel_affine(proto)  # BatchNorms as Mul and Add: ONNX Runtime fuses int8 then
    quantize_before_pad(proto)  # and a conv before a ZeroPadding2D
    try:  # the full check infers shapes too: tf2onnx writes negative ConvTranspose pads
        onnx.checker.check_model(proto, full_check=True)  # that ONNX Runtime refuses
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        bf16 = any(getattr(layer, "compute_dtype", None) == "bfloat16"
                   for layer in model._flatten_layers(include_self=False))  # fmt: skip
        raise RuntimeError(
            f"tf2onnx {tf2onnx.__version__} wrote an invalid ONNX model for {model.name!r}: "
            f"{str(err).splitlines()[0]}. Nothing was written; export a SavedModel instead "
            "(save_format='saved_model')"
            + (". Its layers compute in bfloat16, which ONNX convolutions do not take: for "
               "an ONNX file, build the model again under the 'float32' or 'mixed_float16' "
               "policy and load these weights into it" if bf16 else "") + "."
        ) from err
    problem = _differs(model, proto)
    if problem:
        # a quantized file's roundings may flip where float order differs, and a flip grows
        # through a deep net: that alone can pass the check's 5e-2
        why = ("int8 rounding flips carried through the model's depth, or tf2onnx %s "
               "converted an op otherwise than Keras computes it (exported without "
               "quantization, a right conversion agrees within 1e-4)"
               if any(n.op_type == "QuantizeLinear" for n in proto.graph.node) else
               "tf2onnx %s converted an op otherwise than Keras computes it")  # fmt: skip
        log.warning("The ONNX file of %r %s: " + why + ". Do not deploy it unchecked; a "
                    "SavedModel (save_format='saved_model') computes as the model does.",
                    model.name, problem, tf2onnx.__version__)  # fmt: skip
    onnx.save(proto, path)


def _differs(model: Any, proto: Any) -> str | None:
    """What the file computes otherwise than ``model`` on a random input (a batch of 2
    where the model leaves it free), as a phrase; None where they agree within 1e-4
    relative to the largest output (5e-2 for a quantized file, whose roundings may flip;
    1e-2 for a model not computing in float32), or where the check cannot run (sizes or
    dtypes it cannot draw, a model refusing the drawn input)."""
    import numpy as np

    from ..onnx.convert import max_rel_diff, run_onnxruntime

    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    named = {i.name: i for i in inputs}  # the file's inputs bear the Keras inputs' names
    if all(t.name in named for t in model.inputs):
        inputs = [named[t.name] for t in model.inputs]
    shapes = [(t.shape[0] or 2, *t.shape[1:]) for t in model.inputs]  # a fixed batch kept
    if len(inputs) != len(shapes) or any(None in s for s in shapes) or any(
            t.dtype != "float32" for t in model.inputs):  # fmt: skip
        return None
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=s).astype("float32") for s in shapes]
    try:
        out = model(as_model_inputs(model, xs), training=False)
    except Exception:  # noqa: BLE001 - a model that refuses the drawn input: not checked
        return None
    expected = [np.asarray(y) for y in keras.tree.flatten(out)]
    try:
        got = run_onnxruntime(proto, {i.name: x for i, x in zip(inputs, xs, strict=True)})
    except Exception as err:  # noqa: BLE001 - the runtime's own error, said in the warning
        said = str(err).strip().splitlines()[0][:200]
        # no CPU kernel (a float16 conv): the file may run elsewhere, and cannot be checked
        return None if "NOT_IMPLEMENTED" in said else f"fails in ONNX Runtime ({said})"
    if len(got) != len(expected):
        return None
    quantized = any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    tol = 5e-2 if quantized else 1e-4 if model.dtype_policy.compute_dtype == "float32" else 1e-2
    for ref, value in zip(expected, got, strict=True):
        if ref.shape != value.shape:
            return f"returns shape {list(value.shape)} where the model returns {list(ref.shape)}"
        if ref.dtype.kind != "f" or not np.isfinite(ref).all():  # a mask, an index: not
            continue  # compared; nor a model's own NaN on a random input
        diff = max_rel_diff([ref], [value])
        if diff > tol:
            return f"computes other values than the model (max relative difference {diff:.2g})"
    return None


def _conv_groups(proto: Any) -> None:
    """Set each Conv's ``group`` from its input and kernel channels: tf2onnx 1.16 writes
    a grouped Conv3D with ``group`` 1, which ONNX Runtime refuses."""
    import onnx

    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}  # fmt: skip
    shapes.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                   for v in proto.graph.input})  # fmt: skip
    shapes.update({i.name: list(i.dims) for i in proto.graph.initializer})
    for node in proto.graph.node:
        kernel = shapes.get(node.input[1]) if node.op_type == "Conv" else None
        if not kernel or len(kernel) < 2 or not kernel[1]:  # (a quantized one: its Q/DQ's)
            continue
        shape, per_group = shapes.get(node.input[0]), kernel[1]
        if not shape or len(shape) < 2 or not shape[1] or shape[1] % per_group:
            continue
        group = next((a for a in node.attribute if a.name == "group"), None)
        if group is None:
            node.attribute.append(onnx.helper.make_attribute("group", shape[1] // per_group))
        else:
            group.i = shape[1] // per_group


def _plain_input_names(proto: Any) -> None:
    """Inputs named as the Keras inputs (``image``), not as graph tensors (``image:0``)."""
    for value in proto.graph.input:
        if not value.name.endswith(":0"):
            continue
        old, value.name = value.name, value.name[:-2]
        for node in proto.graph.node:
            node.input[:] = [value.name if i == old else i for i in node.input]


def _output_names(model: Any, frozen: Any) -> list[str]:
    """Names for the outputs, in the order the graph has them: a dict's keys (flattened in
    sorted order, not the order the model was built with), else the Keras output names."""
    paths = [p for p, _ in keras.tree.flatten_with_path(frozen.output_structure)]
    keras_names = list(getattr(model, "output_names", None) or [])
    names = []
    for i, path in enumerate(paths):
        if path and all(isinstance(p, str) for p in path):
            names.append("/".join(path))
        elif len(path) <= 1 and len(keras_names) == len(paths):
            names.append(keras_names[i])
        else:
            names.append("output_" + "_".join(map(str, path or (i,))))
    return names


def _name_outputs(proto: Any, names: list[str]) -> None:
    """Graph outputs named ``names`` (tf2onnx names them ``Identity:0``), where the names
    are distinct and free in the graph."""
    taken = {v.name for v in proto.graph.input} | {i.name for i in proto.graph.initializer}
    taken |= {o for node in proto.graph.node for o in node.output}
    olds = [v.name for v in proto.graph.output]
    if len(names) != len(olds) or len(set(names)) != len(names) or set(names) & (taken - set(
            olds)):  # fmt: skip
        return
    renamed = dict(zip(olds, names, strict=True))
    for value in proto.graph.output:
        value.name = renamed[value.name]
    for node in proto.graph.node:
        node.output[:] = [renamed.get(o, o) for o in node.output]
        node.input[:] = [renamed.get(i, i) for i in node.input]


def _write(fmt: str, model: Any, path: str) -> None:
    if fmt == "frozen_graph":
        _frozen_graph(model, path)
    elif fmt == "keras":
        model.save(path)
    elif fmt == "onnx":
        _onnx(model, path)
    else:
        model.export(path, format="tf_saved_model", verbose=False)


def export(model: Any, save_path: str, save_format: str | None = None) -> str:
    """Write ``model`` to ``save_path``; returns the format used.

    Args:
        model: A Functional or Sequential ``keras.Model`` (no masks).
        save_path: File (``.pb``, ``.keras``, ``.onnx``) or SavedModel folder.
        save_format: One of :data:`FORMATS`; by default taken from the suffix.

    Raises:
        ValueError: For an unknown format or a path that does not fit it.
        FileExistsError: For a SavedModel, when ``save_path`` is a file or a folder that
            is not empty (it is left as it is).
    """
    fmt = resolve_format(save_path, save_format)
    target = os.path.abspath(str(save_path))
    if fmt == "saved_model":
        atomic_dir(target, lambda tmp: _write(fmt, model, tmp))
    else:
        suffix = os.path.splitext(target)[1]
        atomic_write(target, lambda tmp: _write(fmt, model, tmp), suffix=suffix)
    return fmt
