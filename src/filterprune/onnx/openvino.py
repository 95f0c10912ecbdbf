"""OpenVINO IR output, and OpenVINO's own pruning pass for comparison.

Needs the ``openvino`` package (``pip install filterprune[openvino]``).

Example::

    small, report = remove_zero_filters("masked.onnx")
    save_openvino(small, "pruned.xml")
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .._atomic import move_into_place, staging_dir
from ..errors import ConversionError
from ._io import load_model
from ._ops import foreign_fix, foreign_ops
from .int8_weights import wide_int8_weights

__all__ = ["save_openvino", "run_openvino", "check_openvino", "openvino_pruning_pass",
           "ov_layers", "ov_flops"]

_WEIGHTED = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData")


def _ov() -> Any:
    try:
        import openvino as ov
    except ImportError as err:
        raise ConversionError(
            "OpenVINO output needs the `openvino` package: pip install openvino."
        ) from err
    return ov


def read_openvino(model: Any) -> Any:
    """An ``openvino.Model`` from an ONNX ModelProto, an .onnx or an .xml path."""
    ov = _ov()
    if isinstance(model, ov.Model):
        return model
    if isinstance(model, (str, os.PathLike)) and str(model).endswith(".xml"):
        return ov.Core().read_model(str(model))
    proto = load_model(model)
    with tempfile.TemporaryDirectory() as tmp:  # the converter reads files, not protos
        path = os.path.join(tmp, "model.onnx")
        onnx.save(proto, path)
        ops = foreign_ops(proto)
        fix = (f"The model holds {', '.join(ops)} (quantized-operator format or onnxruntime "
               f"optimizations): {foreign_fix(ops)}." if ops else "")  # fmt: skip
        with _openvino_errors("read", fix):
            return ov.convert_model(path)


def _is_openvino_error(err: Exception) -> bool:
    # the frontend's OpConversionFailure and GeneralFailure are not RuntimeErrors
    return isinstance(err, RuntimeError) or type(err).__module__.startswith("openvino")


@contextlib.contextmanager
def _openvino_errors(step: str, fix: str = "") -> Iterator[None]:
    """OpenVINO's own failures as a :class:`ConversionError` that says what to do
    (``fix`` when the model itself is the cause)."""
    try:
        yield
    except Exception as err:
        if not _is_openvino_error(err):
            raise
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        detail = next((ln for ln in reversed(lines) if "Exception from" not in ln), "")
        advice = fix or ("This is OpenVINO's limit, not the cut: write ONNX instead "
                         "(-o model.onnx) and run it in onnxruntime, or try another OpenVINO "
                         "version.")  # fmt: skip
        raise ConversionError(
            f"OpenVINO could not {step} the model ({detail.strip()[:300]}). {advice}"
        ) from err


def save_openvino(model: Any, path: str | os.PathLike, *, compress_to_fp16: bool = False,
                  check: Any = None) -> None:  # fmt: skip
    """Write ``model`` (ONNX proto/path or ``openvino.Model``) as IR: ``path`` and its .bin.

    Both files are written to a hidden folder beside ``path`` first and renamed into
    place, the weights before the graph, so a reader never sees a half-written pair.
    ``check(xml)`` runs on the written IR before that (saving transforms the model: it
    stores quantized weights as integers), and nothing is written if it raises.
    """
    ov = _ov()
    target = Path(path)
    if target.suffix != ".xml":
        raise ValueError(f"`path` must end in .xml. Received: path={str(path)!r}.")
    ov_model = read_openvino(model)
    with staging_dir(target) as tmp:
        xml = os.path.join(tmp, "model.xml")
        ov.save_model(ov_model, xml, compress_to_fp16=compress_to_fp16)
        if check is not None:
            check(xml)
        move_into_place(xml[:-4] + ".bin", target.with_suffix(".bin"))
        move_into_place(xml, target)


def run_openvino(model: Any, feeds: dict[str, np.ndarray], threads: int = 1) -> list[np.ndarray]:
    """Outputs of ``model`` in the OpenVINO CPU runtime, in model output order."""
    ov = _ov()
    with _openvino_errors("compile"):
        compiled = ov.Core().compile_model(read_openvino(model), "CPU",
                                           {"INFERENCE_NUM_THREADS": threads,
                                            "INFERENCE_PRECISION_HINT": "f32"})  # fmt: skip
    result = compiled(list(feeds.values()))
    return [np.asarray(result[o]) for o in compiled.outputs]


def check_openvino(original: Any, ov_model: Any, tolerance: float,
                   converted: Any = None) -> tuple[str, str | None]:  # fmt: skip
    """Compare a converted model in OpenVINO with the input model; returns a note and a
    warning (``None`` unless OpenVINO runs int8 off the model's arithmetic).

    The reference is onnxruntime's run of the input model (Q/DQ unfused: the arithmetic
    the model defines), also for a quantized model (QuantizeLinear nodes) whose int8
    weights stay within +-64 (``overflow_fix``), so a runtime that runs an op wrongly
    (OpenVINO 2025 with per-channel activation scales before a Gemm) is caught. Wider
    weights are compared with OpenVINO's run of ``converted``, the ONNX model the IR was
    read from: x86 int8 kernels without VNNI saturate them, and then OpenVINO and the
    model's arithmetic differ by more than a step (the cut itself is checked in
    onnxruntime, without int8 fusion, before this). Where OpenVINO runs the input model
    itself a little off onnxruntime (its int8 arithmetic, up to ``_INT8_DRIFT``), the IR is
    compared with OpenVINO's run of the input model, with a warning.

    Raises:
        ConversionError: The outputs differ by more than ``tolerance`` (relative), or
            more than one output quantization step for a quantized model.
    """
    from .convert import compare_outputs, max_rel_diff, reference_run

    proto = load_model(original)
    feeds, exact = reference_run(proto)
    quantized = any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    wide = quantized and converted is not None and wide_int8_weights(proto) > 0
    reference = load_model(converted) if wide else proto
    out = run_openvino(ov_model, feeds)
    ref = run_openvino(reference, feeds) if wide else exact
    try:
        diff, within_step = compare_outputs(proto, ref, out, tolerance, what="OpenVINO model")
    except ConversionError as err:
        itself = _input_model_off(proto, feeds, exact, tolerance)
        drift = quantized and max_rel_diff(exact, out) <= _INT8_DRIFT
        if itself and drift:
            return _drifting(proto, feeds, out, tolerance, itself)
        if itself:
            raise _not_written(itself) from err
        elsewhere = _input_model_off_elsewhere(proto, ov_model, feeds, tolerance) if drift \
            else ""  # fmt: skip
        if elsewhere:  # its int8 steps fall on other values for the cut model: not the cut
            return (f"OpenVINO outputs vs the input model in onnxruntime: "
                    f"{max_rel_diff(exact, out):.2e}"), f"{elsewhere} {_DRIFT_SAID}"
        raise
    against = ("the input model converted, in OpenVINO (int8 weights beyond +-64; the cut "
               "was checked in onnxruntime)" if wide else "the input model in onnxruntime")
    note = f"OpenVINO outputs vs {against}: {within_step or f'{diff:.2e}'}"
    if not wide:
        return note, None
    try:
        compare_outputs(proto, exact, out, tolerance, what="OpenVINO model")
    except ConversionError as err:
        itself = _input_model_off(proto, feeds, exact, tolerance)
        if itself and max_rel_diff(exact, out) > _FAR_OFF:
            raise _not_written(itself) from err
        if itself:
            return note, f"{itself} The IR is written."
        return note, (
            f"OpenVINO differs from the model's arithmetic (onnxruntime, Q/DQ unfused) by "
            f"{max_rel_diff(exact, out):.3g} (relative), more than one output quantization "
            "step. Its int8 kernels saturate weights beyond +-64 on CPUs without VNNI "
            "(quantization `overflow_fix: enable` avoids that); far more than a step may be "
            "OpenVINO running an op wrongly: check the IR's accuracy on your data."
        )
    return note, None


def _not_written(itself: str) -> ConversionError:
    return ConversionError(f"{itself} Nothing was written; write ONNX instead (--to onnx), or "
                           "check the IR on your data with --no-verify.")


# OpenVINO's int8 arithmetic of a quantized model (an Add of two quantized tensors) moves
# activations by a step here and there: about 1e-2 of the outputs seen; an op it runs wrongly
# moved them by 0.97 (OpenVINO 2025, per-channel activation scales before a Gemm)
_INT8_DRIFT = 0.05
# int8 kernels saturating weights beyond +-64 (CPUs without VNNI) moved outputs 0.13 to
# 0.35; an op OpenVINO runs wrongly (a LayerNorm after a quantized conv) zeroed them: 1.0
_FAR_OFF = 0.5


def _drifting(proto: Any, feeds: Any, out: Any, tolerance: float,
              itself: str) -> tuple[str, str]:  # fmt: skip
    """The IR checked against OpenVINO's own run of the input model, where OpenVINO's int8
    arithmetic drifts from onnxruntime's by a little (the cut was checked in onnxruntime)."""
    from .convert import compare_outputs

    own = run_openvino(read_openvino(proto), feeds)
    diff, within_step = compare_outputs(proto, own, out, tolerance, what="OpenVINO model")
    note = f"OpenVINO outputs vs the input model in OpenVINO: {within_step or f'{diff:.2e}'}"
    return note, f"{itself} {_DRIFT_SAID}"


_DRIFT_SAID = ("Its int8 arithmetic moves activations by a quantization step here and there; "
               "check the IR's accuracy on your data. The IR is written.")


def _input_model_off(proto: Any, feeds: Any, exact: Any, tolerance: float) -> str:
    """Where OpenVINO runs the input model itself off onnxruntime, a sentence saying so
    (then the runtime is at fault, not the cut, which was checked in onnxruntime); else
    an empty string, also where the input model does not load or run there."""
    from .convert import compare_outputs, max_rel_diff

    try:
        itself = run_openvino(read_openvino(proto), feeds)
    except Exception:  # noqa: BLE001 - it does not load or run there: nothing to say
        return ""
    try:
        compare_outputs(proto, exact, itself, tolerance, what="OpenVINO model")
    except ConversionError:
        off = max_rel_diff(exact, itself)
        half = any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
        return (f"OpenVINO runs the input model itself {off:.3g} (relative) off onnxruntime, "
                "before any cut: an op of this file that OpenVINO runs differently, not the "
                "conversion (checked in onnxruntime)."
                + (f" The file holds float16 weights, which round at about 1e-3: a --tolerance "
                   f"of {max(2 * off, 1e-3):.2g} takes that rounding." if half else ""))
    return ""


def _input_model_off_elsewhere(proto: Any, ov_model: Any, feeds: Any, tolerance: float,
                               tries: int = 3) -> str:  # fmt: skip
    """:func:`_input_model_off` on ``tries`` other random feeds of the same shapes (an int8
    rounding step OpenVINO takes otherwise than onnxruntime falls on some inputs only),
    where the IR stays within that drift on each of them; else an empty string."""
    from .convert import max_rel_diff, run_onnxruntime

    found = ""
    for seed in range(1, tries + 1):
        rng = np.random.default_rng(seed)
        other = {k: rng.standard_normal(v.shape).astype(v.dtype)
                 if np.issubdtype(v.dtype, np.floating) else v for k, v in feeds.items()}
        try:
            exact = run_onnxruntime(proto, other)
        except Exception:  # noqa: BLE001 - it needs its own inputs: nothing to say
            return ""
        if max_rel_diff(exact, run_openvino(ov_model, other)) > _INT8_DRIFT:
            return ""
        found = found or _input_model_off(proto, other, exact, tolerance)
    return found.replace("before any cut", "before any cut, on other random inputs")


def openvino_pruning_pass(model: Any) -> Any:
    """OpenVINO's own zero-filter pruning (``apply_pruning_transformation``) on ``model``."""
    from openvino._offline_transformations import apply_pruning_transformation

    ov_model = read_openvino(model)
    apply_pruning_transformation(ov_model)
    return ov_model


def _name(op: Any) -> str:
    name = op.get_friendly_name()
    return name[: -len("/WithoutBiases")] if name.endswith("/WithoutBiases") else name


def ov_layers(ov_model: Any) -> dict[str, tuple[int, int]]:
    """Weighted op name -> (output channels, FLOPs) of an ``openvino.Model`` (at batch 1
    where the batch axis is free)."""
    out = {}
    for op in _at_batch_one(ov_model).get_ordered_ops():
        kind = op.get_type_name()
        if kind not in _WEIGHTED:
            continue
        w = op.input(1).get_partial_shape()
        y = op.get_output_partial_shape(0)
        if not (w.is_static and y.is_static):
            continue
        w, y = [int(d) for d in w.to_shape()], [int(d) for d in y.to_shape()]
        if kind == "MatMul":
            x = [int(d) for d in op.input(0).get_partial_shape().to_shape()]
            flops = 2 * int(np.prod(y)) * (x[-1] if x else 1)
            out[_name(op)] = (y[-1], flops)
        elif kind == "ConvolutionBackpropData":
            x = [int(d) for d in op.input(0).get_partial_shape().to_shape()]
            out[_name(op)] = (y[1], 2 * int(np.prod(w)) * int(np.prod(x[2:])))
        else:
            out[_name(op)] = (y[1], 2 * int(np.prod(w)) * int(np.prod(y[2:])))
    return out


def _at_batch_one(ov_model: Any) -> Any:
    """A copy with free leading axes of the inputs set to 1, or the model itself."""
    shapes = {}
    for port in ov_model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_static and len(shape) and shape[0].is_dynamic:
            shapes[port.get_any_name()] = [1, *(shape[i] for i in range(1, len(shape)))]
    if not shapes:
        return ov_model
    model = ov_model.clone()
    model.reshape(shapes)
    return model


def ov_flops(ov_model: Any) -> int:
    """FLOPs of the Convolution, GroupConvolution and MatMul ops of an ``openvino.Model``."""
    return sum(f for _, f in ov_layers(ov_model).values())
