"""``remove_zero_filters``: the ONNX conversion as one call, checked before it returns."""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import onnx

from ..errors import ConversionError
from ._io import load_model
from ._ops import foreign_ops
from ._shapes import opset_of
from .capture import capture
from .facts import attrs_of
from .int8_weights import store_int8_weights, wide_int8_weights
from .report import ConversionReport, build_report
from .rewrite import rewrite
from .zero_filters import find_removable

__all__ = ["remove_zero_filters", "compare_outputs", "max_rel_diff", "random_inputs",
           "run_onnxruntime"]

_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
       onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64,
       onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_,
       onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8}  # fmt: skip


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)


def random_inputs(model: onnx.ModelProto, batch: int = 1, seed: int = 0,
                  leading: int | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """One random feed per graph input; symbolic dimensions become ``batch``, a symbolic
    first one ``leading`` where given."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else leading if i == 0 and leading
                 else batch for i, d in enumerate(t.shape.dim)]  # fmt: skip
        dtype = _NP.get(t.elem_type)
        if dtype is None:
            raise ConversionError(
                f"Input {v.name!r} has element type {t.elem_type}; expected a float, int or "
                "bool tensor."
            )
        if np.issubdtype(dtype, np.floating):
            feeds[v.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[v.name] = np.zeros(shape, dtype=dtype)
    return feeds


def reference_run(model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Random feeds for checking a conversion of ``model``, and its outputs in onnxruntime.

    A symbolic batch dimension gets two samples: a runtime may run one sample on other
    kernels (OpenVINO 2025 ran a Gemm after per-channel Q/DQ wrongly only for more than
    one). A graph that cannot run two is checked on one. Other symbolic dimensions are 1,
    or 32 or 224 where the model cannot run 1 (a text model's valid convolutions).
    """
    sizes = (1, 32, 224)  # of other symbolic dimensions: 1, unless the model cannot run it
    dynamic = any(not d.HasField("dim_value") for v in model.graph.input
                  for d in v.type.tensor_type.shape.dim[1:])  # fmt: skip
    error: Exception | None = None
    for size in sizes if dynamic else sizes[:1]:
        feeds = random_inputs(model, batch=size, leading=2)
        single = random_inputs(model, batch=size, leading=1)
        same = all(a.shape == b.shape for a, b in zip(feeds.values(), single.values(),
                                                       strict=True))  # fmt: skip
        for chosen in [single] if same else [feeds, single]:  # two samples, else one
            try:
                return chosen, run_onnxruntime(model, chosen)
            except Exception as err:  # noqa: BLE001  (the runtime refuses these inputs)
                error = err
    raise ConversionError(
        f"onnxruntime cannot run the model on random inputs to check the conversion"
        f"{' (dynamic dimensions tried at 1, 32 and 224)' if dynamic else ''}: {error} "
        "Convert with --no-verify (verify=False) to skip the check."
    ) from error


def run_onnxruntime(
    model: Any, feeds: dict[str, np.ndarray], threads: int = 1, fused: bool = False
) -> list[np.ndarray]:
    """Outputs of ``model`` in onnxruntime's CPU provider, in model output order.

    Args:
        model: An ``onnx.ModelProto``, or a path or bytes (read with :func:`load_model`).
        feeds: Input name -> array, as :func:`random_inputs` makes them.
        threads: Intra-op threads (1 by default, so results do not depend on the machine).
        fused: Every optimization, Q/DQ pairs fused into int8 kernels (what a
            deployment runs); by default the arithmetic the model defines.
    """
    import onnxruntime as ort

    if not isinstance(model, onnx.ModelProto):
        model = load_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 4  # none: its errors are raised, its warnings came coloured into logs
    # Basic optimizations only: no fusion of QuantizeLinear/DequantizeLinear pairs into int8
    # kernels. On x86 CPUs without VNNI those add pairs of u8 x s8 products in 16 bits with
    # saturation, so a model's result would depend on the CPU and on where its zero
    # channels sat; unfused, the runtime computes the arithmetic the model defines. Basic
    # also quantizes a float bias after Q/DQ weights to int32 (WeightBiasQuantization),
    # which moves the result by up to a step: that one is turned off too.
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if fused else level.ORT_ENABLE_BASIC
    off = [] if fused else ["WeightBiasQuantization"]
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=off)  # fmt: skip
    return sess.run(None, feeds)


def max_rel_diff(reference: list[np.ndarray], other: list[np.ndarray]) -> float:
    """max |a - b| / max |a| over all outputs (absolute where the reference is all zero).

    ``inf`` when shapes differ or any output holds NaN or infinity: such outputs cannot be
    compared, so they must fail a check rather than count as equal.
    """
    worst = 0.0
    for a, b in zip(reference, other, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
            return float("inf")
        scale = float(np.abs(a).max()) if a.size else 0.0
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def _check(new: onnx.ModelProto, old: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(new, full_check=True)
    except Exception as err:  # noqa: BLE001 - the checker's error types vary by version
        try:
            onnx.checker.check_model(old, full_check=True)
        except Exception:  # noqa: BLE001 - the input itself fails the strict check
            onnx.checker.check_model(new)
            return
        raise ConversionError(f"The rewritten model fails onnx.checker: {err}") from err


_SUMS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def default_tolerance(model: onnx.ModelProto) -> float:
    """1e-4 relative; 1e-2 where a layer sums in float16 or bfloat16 (a weight, input or
    cast of that type reaches a Conv, Gemm or MatMul directly or through a
    DequantizeLinear), whose rounding a narrower layer's other order of sums shows."""
    half = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    names = {i.name for i in model.graph.initializer if i.data_type in half}
    names |= {i.name for i in model.graph.input if i.type.tensor_type.elem_type in half}
    for node in model.graph.node:  # in graph order: a cast's output, or passed on
        if node.op_type == "Cast" and attrs_of(node).get("to") in half or \
                node.op_type in ("Identity", "DequantizeLinear", "Transpose", "Reshape") \
                and node.input and node.input[0] in names:  # fmt: skip
            names.update(node.output)
    layers = [n for n in model.graph.node if n.op_type in _SUMS]
    return 1e-2 if any(name in names for n in layers for name in n.input[:2]) else 1e-4


def remove_zero_filters(
    model: Any, *, verify: bool = True, tolerance: float | None = None
) -> tuple[onnx.ModelProto, ConversionReport]:
    """Remove the zero filters of an ONNX model and every channel that depends on them.

    In a quantized (QDQ) model the per-channel scales and zero points are cut with the
    filters, and weights quantized by a QuantizeLinear of constants are stored as the
    8-bit integers it computes (:func:`store_int8_weights`): a file about a quarter of
    the float size.

    Args:
        model: A path, bytes or ``onnx.ModelProto`` (not modified).
        verify: Run both models in onnxruntime on random inputs and fail if the outputs
            differ by more than ``tolerance`` (relative to the largest output value); a
            quantized (QDQ) model may differ by one quantization step of its output.
        tolerance: Allowed relative difference (default :func:`default_tolerance`:
            1e-4, 1e-2 for a model computing in float16 or bfloat16).

    Returns:
        ``(new_model, report)``; ``new_model`` is an unchanged copy when nothing can go
        (``report.changed`` is False and ``report.notes`` says why).

    Raises:
        ConversionError: The input is not a valid ONNX model, or the result failed the
            checks (a bug: nothing broken is ever returned).

    Example:
        >>> small, report = remove_zero_filters("masked.onnx")  # doctest: +SKIP
        >>> print(report)  # doctest: +SKIP
    """
    if tolerance is not None and (not isinstance(tolerance, (int, float)) or tolerance < 0):
        raise ValueError(f"`tolerance` must be a number >= 0. Received: tolerance={tolerance!r}.")
    t0 = time.perf_counter()
    proto = load_model(model)
    tolerance = default_tolerance(proto) if tolerance is None else tolerance
    t1 = time.perf_counter()
    standard, contrib = _standard_qdq(proto)
    try:
        cap = capture(standard)
        decision = find_removable(cap)
    except Exception as err:  # noqa: BLE001 - a graph the analysis misreads stays as it is
        report = ConversionReport(0, 0, 0, 0)
        report.notes.append(f"the analysis failed ({type(err).__name__}: {err}); the model is "
                            "unchanged. Please report this model.")  # fmt: skip
        return proto, report
    report = build_report(cap, decision)
    t2 = time.perf_counter()
    report.seconds = {"load": t1 - t0, "analyze": t2 - t1}
    try:
        rewritten = rewrite(cap, decision) if report.changed else standard
    except Exception as err:  # noqa: BLE001 - as for the analysis: the model stays as it is
        report = ConversionReport(0, 0, 0, 0)
        report.notes.append(f"the rewrite failed ({type(err).__name__}: {err}); the model is "
                            "unchanged. Please report this model.")  # fmt: skip
        return proto, report
    new, stored = store_int8_weights(rewritten)
    _restore_domain(new, contrib)
    if not report.changed:
        zeros = sum(s.zero_filters for s in report.layers)
        found = f"{zeros} zero filters found, none removable" if zeros else "no zero filters found"
        foreign = foreign_ops(standard)
        if foreign:  # the zeros may be inside them (the report's note says what to do)
            found += (f" outside the unsupported ops {', '.join(foreign)} (the report's notes "
                      "say what to do)")
        if not stored:
            report.notes.append(f"{found}; the model is unchanged")
            return proto, report
        report.notes.append(found)
    wide = _saturating(new)
    if wide:
        report.notes.append(wide)
    if stored:
        report.notes.append(f"{stored} quantized weights stored as 8-bit integers")
    _check(new, proto)
    t3 = time.perf_counter()
    report.seconds["rewrite"] = t3 - t2
    if verify:
        _verify(proto, new, tolerance, report)
        report.seconds["verify"] = time.perf_counter() - t3
    return new, report


_CONTRIB = "com.microsoft"
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_EIGHT_BIT = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


def _standard_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, set[str]]:
    """``model`` with its com.microsoft QuantizeLinear/DequantizeLinear nodes of 8-bit
    integers in the default domain (quantize_static's ``UseQDQContribOps`` writes them;
    the arithmetic is the standard ops' from opset 13 on), and the first output of each
    node moved, to move them back after the rewrite. Shape inference and the op table
    know only the standard ops."""
    nodes = [n for n in model.graph.node if n.domain == _CONTRIB and n.op_type in _QDQ]
    if not nodes or opset_of(model) < 13:
        return model, set()
    types = {i.name: i.data_type for i in model.graph.initializer}
    if not all(_eight_bit(n, types) for n in nodes):
        return model, set()
    moved = {n.output[0] for n in nodes}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for n in out.graph.node:
        if n.output and n.output[0] in moved and n.op_type in _QDQ:
            n.domain = ""
    return out, moved


def _eight_bit(node: onnx.NodeProto, types: dict[str, int]) -> bool:
    """Whether Q/DQ ``node`` works on 8-bit integers, or a DQ on int32 (its zero point's
    type, or its quantized constant's): types the standard ops take at opset 13; a Q
    without a zero point makes uint8."""
    names = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
    allowed = _EIGHT_BIT
    if node.op_type == "DequantizeLinear":
        names.append(node.input[0])
        allowed = (*_EIGHT_BIT, onnx.TensorProto.INT32)  # a quantized bias
    return all(types[n] in allowed for n in names if n in types)


def _restore_domain(model: onnx.ModelProto, moved: set[str]) -> None:
    """Put the Q/DQ nodes :func:`_standard_qdq` moved back in the com.microsoft domain."""
    for n in model.graph.node:
        if n.output and n.output[0] in moved and n.op_type in _QDQ:
            n.domain = _CONTRIB


def _saturating(model: onnx.ModelProto) -> str:
    """A warning when int8 weights go beyond +-64: x86 int8 kernels without VNNI add
    pairs of u8 x s8 products in 16 bits, which saturate beyond that (2 * 255 * 64 fits)."""
    wide = wide_int8_weights(model)
    if not wide:
        return ""
    return (f"{wide} int8 weights use integers beyond +-64, which x86 int8 kernels "
            "without VNNI may saturate (quantization `overflow_fix` keeps them within)")


def _max_abs(a: np.ndarray, b: Any) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max()) if np.size(a) else 0.0


def _output_steps(model: onnx.ModelProto, outputs: list[np.ndarray]) -> list[float] | None:
    """One quantization step of each output of a quantized model (None: not quantized).

    An output made by a DequantizeLinear with a constant per-tensor scale steps by that
    scale; any other output by an 8-bit step of its range, ``max |y| / 127``.
    """
    if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        return None
    inits = {i.name: i for i in model.graph.initializer}
    made_by = {o: n for n in model.graph.node for o in n.output}
    steps = []
    for v, y in zip(model.graph.output, outputs, strict=True):
        node = made_by.get(v.name)
        scale = inits.get(node.input[1]) if node is not None and \
            node.op_type == "DequantizeLinear" else None  # fmt: skip
        value = onnx.numpy_helper.to_array(scale) if scale is not None else None
        if value is not None and value.size == 1:
            steps.append(float(value))
        else:
            steps.append(float(np.abs(y).max()) / 127 if y.size else 0.0)
    return steps


def compare_outputs(model: onnx.ModelProto, before: list[np.ndarray],
                    after: list[np.ndarray], tolerance: float,
                    what: str = "converted model") -> tuple[float, str]:  # fmt: skip
    """Check the outputs of a conversion of ``model`` against the model's own.

    Removing zero channels changes no arithmetic, so outputs agree to float rounding.
    In a quantized model a float difference that small can still move a value across a
    rounding boundary of a later QuantizeLinear (where a runtime leaves a layer in
    float); such a model may differ by up to one quantization step of its output.

    Args:
        model: The input model (its outputs tell the quantization step).
        before: Its outputs; ``after``: the converted model's, on the same inputs.
        tolerance: Allowed difference relative to the largest output value.
        what: The converted model's name in the error message.

    Returns:
        ``(max relative difference, note)``; the note is empty unless the difference
        is within one quantization step only.

    Raises:
        ConversionError: The outputs differ by more.
    """
    diff = max_rel_diff(before, after)
    if diff <= tolerance:
        return diff, ""
    steps = _output_steps(model, before)
    if steps is not None and all(  # one step, plus the float rounding of the step itself
        a.shape == b.shape and _max_abs(a, b) <= step + tolerance * _max_abs(a, 0)
        for a, b, step in zip(before, after, steps, strict=True)
    ):  # fmt: skip
        return diff, (f"{what}: outputs differ by {diff:.3g} (relative), within one "
                      "quantization step of the output: a rounding boundary crossed in a "
                      "quantized model")  # fmt: skip
    raise ConversionError(
        f"The {what}'s outputs differ from the input model's by {diff:.3g} (relative), "
        f"more than tolerance={tolerance} (inf: an output is NaN or infinite, or shapes "
        "differ). Nothing was written; please report this model."
    )


def _verify(old: onnx.ModelProto, new: onnx.ModelProto, tolerance: float,
            report: ConversionReport) -> None:  # fmt: skip
    """Run both models in onnxruntime on the same random input (:func:`reference_run`);
    see :func:`compare_outputs`."""
    feeds, before = reference_run(old)
    if not all(np.isfinite(y).all() for y in before):
        bad = [i.name for i in old.graph.initializer if i.data_type in _FLOATS
               and not np.isfinite(onnx.numpy_helper.to_array(i)).all()]  # fmt: skip
        raise ConversionError(
            "The input model's own outputs are NaN or infinite on random inputs, so the "
            "conversion cannot be checked"
            + (f": its weights {', '.join(bad[:5])} hold NaN or infinite values (a diverged "
               "training run?)." if bad else ".")
            + " Pass verify=False (--no-verify) to convert it unchecked."
        )
    try:
        after = run_onnxruntime(new, feeds)
    except Exception as err:  # noqa: BLE001 - onnxruntime's own errors: the rewrite is wrong
        said = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ConversionError(
            f"The rewritten model fails in onnxruntime ({said}): a cut this converter does "
            "not follow through some op. Nothing was written; please report the model."
        ) from err
    try:
        report.max_rel_diff, note = compare_outputs(old, before, after, tolerance)
    except ConversionError:
        if not any(n.op_type == "QuantizeLinear" for n in old.graph.node):
            raise
        # a narrower layer sums in another order: activations near a rounding boundary
        # round the other way, and in a deep network the steps add up. The cut itself is
        # checked with the activations' Q/DQ pairs taken out of both models.
        exact = max_rel_diff(run_onnxruntime(activations_in_float(old), feeds),
                             run_onnxruntime(activations_in_float(new), feeds))  # fmt: skip
        if exact > tolerance:
            raise
        report.max_rel_diff = max_rel_diff(before, after)
        note = (f"outputs differ by {report.max_rel_diff:.3g} (relative): quantized "
                "activations crossed rounding boundaries, as layers cut sum in another "
                "order; with the activations' quantize/dequantize pairs taken out of both "
                f"models they agree to {exact:.2g}")  # fmt: skip
    if note:
        report.notes.append(note)


def activations_in_float(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose activations skip their QuantizeLinear/DequantizeLinear
    pairs (each DequantizeLinear of a computed tensor passes its QuantizeLinear's input);
    weights stay quantized."""
    model = copy.deepcopy(model)
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    made_by = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        q = made_by.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in consts:
            node.op_type, node.domain = "Identity", ""
            node.input[:] = [q.input[0]]
            del node.attribute[:]
    return model
