"""Latency and throughput of several models, measured side by side.

Models take turns (A, B, A, B...) of about a second each, so that load from
other processes and frequency changes hit every model alike. Only one model is
loaded at a time: an idle runtime's worker threads keep spinning for a while
after each run, and on a small machine they would steal a core from the model
being timed. The first model is the baseline: each row reports its speed-up over
it, its FLOPs ratio, and how much of the FLOPs ratio the speed-up achieves
(1.0: latency fell exactly as FLOPs did).

Example::

    rows = benchmark({"dense": "d.onnx", "pruned": "p.onnx"}, batches=(1, 8))
    print(format_table(rows))
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx

from ..errors import ConversionError
from ..progress import progress
from ._io import load_model
from ._shapes import type_dims

__all__ = ["BenchRow", "benchmark", "format_table", "model_flops"]

RUNTIMES = ("onnxruntime", "openvino")
log = logging.getLogger("filterprune")


@dataclass
class BenchRow:
    label: str
    runtime: str
    batch: int
    threads: int
    runs: int
    median_ms: float
    p90_ms: float
    throughput: float  # samples per second at the median latency (batch / median)
    flops: int
    speedup: float = 1.0  # baseline median / this median
    flops_ratio: float = 1.0  # baseline FLOPs / this FLOPs
    of_flops_ratio: float = 1.0  # speedup / flops_ratio
    # "f32"; for a model with quantize/dequantize pairs, "int8" where the runtime runs
    # every conv/linear layer in int8, "mixed" where some, "f32" where none (the pairs
    # only round). OpenVINO is held to f32 (it would pick bf16 on CPUs that have it)
    precision: str = "f32"
    int8_layers: str = ""  # "k/n": conv/linear layers the runtime runs in int8, of all
    inputs: str = ""  # each input's name and the shape fed, e.g. "x 8x3x224x224"
    runtime_version: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def model_flops(model: Any, shapes: Mapping[str, Sequence[int]] | None = None) -> int:
    """FLOPs per sample of the conv/linear layers (core count for ONNX, OpenVINO's for IR),
    at ``shapes`` (input name -> shape at batch 1) where the file leaves sizes free."""
    if shapes is not None:
        model = _prepared(model, "openvino" if _is_openvino(model) else "onnxruntime", shapes)
    if _is_openvino(model):
        from .openvino import ov_flops, read_openvino

        return ov_flops(read_openvino(model))
    from ..core.flops import count_flops
    from .capture import capture

    return count_flops(capture(load_model(model)).graph)


def _is_openvino(model: Any) -> bool:
    if isinstance(model, (str, os.PathLike)):
        return str(model).lower().endswith(".xml")
    return type(model).__module__.startswith("openvino")


def _inputs(model: Any) -> list[tuple[str, list[int | str | None]]]:
    """Each input's name and dimensions: a number where fixed, else its symbol (or None)."""
    if _is_openvino(model):
        from .openvino import read_openvino

        return [(p.get_any_name(), [d.get_length() if d.is_static else None
                                    for d in p.get_partial_shape()])
                for p in read_openvino(model).inputs]  # fmt: skip
    graph = load_model(model).graph
    inits = {i.name for i in graph.initializer}
    return [(v.name, [d.dim_value if d.HasField("dim_value") else d.dim_param or None
                      for d in v.type.tensor_type.shape.dim])
            for v in graph.input if v.name not in inits]  # fmt: skip


def _show(dims: Sequence[Any]) -> str:
    return "x".join(str(d) if d is not None else "?" for d in dims) or "a scalar"


def feed_shapes(model: Any, batch: int, input_size: Sequence[int] | None = None,
                label: str = "the model") -> dict[str, list[int]]:  # fmt: skip
    """The shape each input of ``model`` is fed at ``batch``.

    The first axis is the batch where it is free; where no input's is, it is in inputs of
    two or more axes whose first axis is the first input's (a file exported at a fixed
    batch). Other free sizes: the first input's from ``input_size`` (its batch ignored),
    another input's where its symbol is one of those.

    Raises:
        ConversionError: A size is free and not given, or ``input_size`` does not fit.
    """
    inputs = _inputs(model)
    if not inputs:
        return {}
    first_name, first = inputs[0]
    fixed_batch = all(dims and isinstance(dims[0], int) for _, dims in inputs)
    given: dict[Any, int] = {}
    if input_size is not None:
        pairs = enumerate(zip(first, input_size, strict=False))
        clash = [i for i, (d, n) in pairs if i and isinstance(d, int) and d != n]
        if len(input_size) != len(first) or clash:
            why = (f"it has {len(first)} sizes" if len(input_size) != len(first)
                   else f"size {clash[0]} is fixed at {first[clash[0]]}")  # fmt: skip
            raise ConversionError(
                f"--input-size {','.join(map(str, input_size))} does not fit {label}'s input "
                f"{first_name!r}, which is {_show(first)}: {why}. Give a shape of "
                f"{len(first)} sizes that keeps the file's fixed ones.")  # fmt: skip
        given = {d: n for d, n in zip(first[1:], input_size[1:], strict=True) if isinstance(d, str)}
    if isinstance(first[0], str):  # the batch's symbol, wherever another input has it
        given[first[0]] = batch
    out: dict[str, list[int]] = {}
    for k, (name, dims) in enumerate(inputs):
        shape = []
        for i, d in enumerate(dims):
            if i == 0 and (not isinstance(d, int) or (
                    fixed_batch and len(dims) > 1 and d == first[0])):  # fmt: skip
                shape.append(batch)
            elif isinstance(d, int):
                shape.append(d)
            elif k == 0 and input_size is not None:
                shape.append(int(input_size[i]))
            elif d in given:
                shape.append(given[d])
            else:
                sizes = ",".join(["1", *(str(n) if isinstance(n, int) else str(n or "N").upper()
                                         for n in first[1:])])  # fmt: skip
                fix = (f"give them with --input-size {sizes} (your sizes; `input_size=` in "
                       "Python)" if k == 0 else "export the model with those sizes fixed")
                raise ConversionError(
                    f"{label}'s input {name!r} is {_show(dims)}: its sizes past the batch axis "
                    f"are free, and the times and FLOPs depend on them; {fix}.")  # fmt: skip
        out[name] = shape
    return out


def _prepared(model: Any, runtime: str, shapes: Mapping[str, Sequence[int]]) -> Any:
    """``model`` read once with its inputs fixed to ``shapes``: ONNX bytes, or an
    ``openvino.Model``."""
    if runtime == "openvino":
        import openvino as ov

        from .openvino import read_openvino

        m = read_openvino(model)
        m.reshape({port.get_any_name(): ov.PartialShape(list(shapes[port.get_any_name()]))
                   for port in m.inputs})  # fmt: skip
        return m
    proto = onnx.ModelProto()
    proto.CopyFrom(load_model(model))
    for v in proto.graph.input:
        if v.name in shapes:
            for d, n in zip(v.type.tensor_type.shape.dim, shapes[v.name], strict=True):
                d.Clear()
                d.dim_value = int(n)
    for v in proto.graph.output:  # inferred again by the runtime
        for d in v.type.tensor_type.shape.dim:
            d.Clear()
    del proto.graph.value_info[:]
    return proto.SerializeToString()


def _session(model: Any, runtime: str, batch: int, threads: int) -> Callable[[], Any]:
    """Load a prepared model; returns a function that runs it once on random inputs."""
    rng = np.random.default_rng(0)
    if runtime == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"})  # fmt: skip
        feeds = [_random(rng, list(p.get_shape()), p.get_element_type().to_dtype())
                 for p in compiled.inputs]  # fmt: skip
        request = compiled.create_infer_request()
        return lambda: request.infer(feeds)
    import onnxruntime as ort

    from .convert import random_inputs

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: its warnings come coloured into users' logs
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # the default, stated
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feeds = random_inputs(onnx.load_from_string(model), batch)
    return lambda: sess.run(None, feeds)


def _random(rng: np.random.Generator, shape: list[int], dtype: Any) -> np.ndarray:
    """Normal values for a float input, zeros for an integer or bool one (indices)."""
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def _turn(model: Any, runtime: str, batch: int, threads: int, warmup: int,
          seconds: float) -> list[float]:  # fmt: skip
    """Load ``model``, run it ``warmup`` times, then time runs for ``seconds`` (at least one)."""
    run = _session(model, runtime, batch, threads)
    for _ in range(warmup):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while not times or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    del run
    gc.collect()  # frees the session and its threads before the next model loads
    return times


def benchmark(models: Mapping[str, Any], *, runtime: str = "onnxruntime",
              batches: Sequence[int] = (1,), threads: int = 1, warmup: int = 3,
              min_runs: int = 20, seconds: float = 10.0, turn_seconds: float = 1.0,
              input_size: Sequence[int] | None = None) -> list[BenchRow]:  # fmt: skip
    """Time every model in ``models`` (label -> ONNX/IR path, proto or openvino.Model).

    Args:
        runtime: ``onnxruntime`` or ``openvino`` (CPU).
        batches: Batch sizes; each is timed separately.
        threads: Intra-op threads of each runtime.
        warmup: Untimed runs each time a model is loaded.
        min_runs: At least this many timed runs per model.
        seconds: Stop after this long (per batch size) once ``min_runs`` are done.
        turn_seconds: Timed seconds per model per turn.
        input_size: The first input's shape (its batch is replaced by each of
            ``batches``), for files that leave sizes past the batch free.

    Returns:
        One :class:`BenchRow` per model and batch size, the first model as baseline.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"`runtime` must be one of {RUNTIMES}. Received: runtime={runtime!r}.")
    if not models:
        raise ValueError("`models` must name at least one model. Received: models={}.")
    if any(int(b) < 1 for b in batches) or int(threads) < 1:
        raise ValueError(f"`batches` and `threads` must be >= 1. Received: {batches}, {threads}.")
    shapes = {label: _io_shapes(m) for label, m in models.items()}
    _check_comparable(shapes)
    feeds = {(label, b): feed_shapes(m, b, input_size, label)
             for b in map(int, batches) for label, m in models.items()}  # fmt: skip
    flops, precision = {}, {}
    for label, m in models.items():  # at the file's batch where it fixes one
        own = shapes[label][0][0][0] if shapes[label][0] and shapes[label][0][0] else None
        at_own = feed_shapes(m, own or 1, input_size, label)
        flops[label] = model_flops(m, at_own)  # per sample
        precision[label] = _precision(m, runtime, at_own)
    version = _runtime_version(runtime)
    rows: list[BenchRow] = []
    for batch in map(int, batches):
        try:
            prepared = {label: _prepared(m, runtime, feeds[label, batch])
                        for label, m in models.items()}  # fmt: skip
            for model in prepared.values():  # fail early, before any timing
                _session(model, runtime, batch, int(threads))()
        except Exception as err:  # noqa: BLE001 - the runtime rejects the model or batch size
            message = f"{runtime} could not run the models at batch {batch}: {err}"
            raise ConversionError(_fixed_batch(shapes, batch) or message) from err
        times: dict[str, list[float]] = {label: [] for label in prepared}
        start = time.perf_counter()
        with progress(desc=f"bench batch {batch}") as bar:
            while (min(map(len, times.values())) < min_runs
                   or time.perf_counter() - start < seconds):  # fmt: skip
                for label, model in prepared.items():
                    times[label] += _turn(model, runtime, batch, int(threads), warmup,
                                          turn_seconds)  # fmt: skip
                bar.update(1)
        batch_rows = _rows(times, flops, precision, runtime, batch, int(threads))
        for row in batch_rows:
            row.inputs = ", ".join(f"{name} {_show(shape)}"
                                   for name, shape in feeds[row.label, batch].items())  # fmt: skip
            row.runtime_version = version
        rows += batch_rows
    return rows


def _runtime_version(runtime: str) -> str:
    if runtime == "openvino":
        import openvino as ov

        return ov.get_version()
    import onnxruntime as ort

    return ort.__version__


def _io_shapes(model: Any) -> tuple[list[tuple], list[tuple]]:
    """The shapes of ``model``'s inputs and outputs, None for a dimension not fixed."""
    if _is_openvino(model):
        from .openvino import read_openvino

        m = read_openvino(model)
        return tuple([tuple(d.get_length() if d.is_static else None
                            for d in p.get_partial_shape()) for p in ports]
                     for ports in (m.inputs, m.outputs))  # fmt: skip
    graph = load_model(model).graph
    inits = {i.name for i in graph.initializer}
    return tuple([type_dims(v.type) or () for v in values]
                 for values in ([i for i in graph.input if i.name not in inits], graph.output))


def _check_comparable(shapes: Mapping[str, tuple[list[tuple], list[tuple]]]) -> None:
    """Warn where a model takes or returns other shapes than the baseline (past the batch):
    its speed-up would compare different work."""
    labels = list(shapes)
    base = [[s[1:] for s in side] for side in shapes[labels[0]]]
    for label in labels[1:]:
        mine = [[s[1:] for s in side] for side in shapes[label]]
        for side, name in ((0, "inputs"), (1, "outputs")):
            if mine[side] != base[side]:
                log.warning("bench: %s has %s %s where the baseline %s has %s (past the batch "
                            "axis): its speed-up compares different work.", label, name,
                            mine[side], labels[0], base[side])  # fmt: skip


def _fixed_batch(shapes: Mapping[str, tuple[list[tuple], list[tuple]]], batch: int) -> str:
    """Why a model exported with another fixed batch fails at ``batch`` (a Reshape to a
    size written for its batch), or an empty string."""
    for label, (inputs, _) in shapes.items():
        fixed = {s[0] for s in inputs if len(s) > 1 and s[0] is not None}  # a batch axis
        if fixed and fixed != {batch}:
            return (f"{label} was exported with a fixed batch of {min(fixed)} (its inputs "
                    f"{[list(s) for s in inputs]}), and does not run at batch {batch}. Give "
                    f"--batch {min(fixed)} (batches={min(fixed)}), or export the model with "
                    "a free batch axis.")  # fmt: skip
    return ""


def _precision(model: Any, runtime: str, shapes: Mapping[str, Sequence[int]]) -> tuple[str, str]:
    """``(precision, int8 layers)`` of ``model`` as ``runtime`` runs it: a quantize/dequantize
    pair (FakeQuantize in an IR) says where values are rounded, the runtime decides which
    layers become int8 kernels (:func:`~filterprune.onnx.int8.int8_layers`)."""
    if _is_openvino(model):
        from .openvino import read_openvino

        kinds = {op.get_type_name() for op in read_openvino(model).get_ops()}
        quantized = "FakeQuantize" in kinds
    else:
        kinds = {n.op_type for n in load_model(model).graph.node}
        quantized = bool({"QuantizeLinear", "DequantizeLinear"} & kinds)
    if not quantized:
        return "f32", ""
    from .int8 import int8_layers

    counts = int8_layers(_prepared(model, runtime, shapes), (runtime,))[runtime]
    low, total = counts["int8"], counts["int8"] + counts["float"]
    label = "int8" if total and low == total else "f32" if low == 0 else "mixed"
    return label, f"{low}/{total}"


def _rows(times, flops, precision, runtime, batch, threads) -> list[BenchRow]:
    out = []
    for label, t in times.items():
        ms = np.asarray(t) * 1e3
        out.append(BenchRow(label, runtime, batch, threads, len(t), float(np.median(ms)),
                            float(np.percentile(ms, 90)), batch * 1e3 / float(np.median(ms)),
                            flops[label], precision=precision[label][0],
                            int8_layers=precision[label][1]))  # fmt: skip
    base = out[0]
    for row in out:
        row.speedup = base.median_ms / row.median_ms
        row.flops_ratio = base.flops / row.flops if row.flops else float("nan")
        row.of_flops_ratio = row.speedup / row.flops_ratio if row.flops else float("nan")
    return out


def format_table(rows: Sequence[BenchRow]) -> str:
    """A plain-text table of ``rows``, with a note where their precisions differ."""
    w = max([5, *(len(r.label) for r in rows)])
    head = (f"{'model':<{w}} {'runtime':<11} {'prec':<5} {'batch':>5} {'thr':>3} "
            f"{'median ms':>10} {'p90 ms':>8} {'samples/s':>10} {'speed-up':>8} "
            f"{'FLOPs x':>8} {'of FLOPs':>8}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.label:<{w}} {r.runtime:<11} {r.precision:<5} {r.batch:>5} "
                     f"{r.threads:>3} {r.median_ms:>10.2f} {r.p90_ms:>8.2f} "
                     f"{r.throughput:>10.1f} {r.speedup:>7.2f}x {r.flops_ratio:>7.2f}x "
                     f"{r.of_flops_ratio:>8.2f}")  # fmt: skip
    shown = dict.fromkeys((r.batch, r.inputs) for r in rows if r.inputs)
    lines += [f"batch {batch} feeds {inputs}" for batch, inputs in shown]
    versions = dict.fromkeys(f"{r.runtime} {r.runtime_version}" for r in rows
                             if r.runtime_version)  # fmt: skip
    if versions:
        lines.append(f"measured with {', '.join(versions)}")
    for r in dict((r.label, r) for r in rows if r.int8_layers).values():
        low, total = map(int, r.int8_layers.split("/"))
        if low < total:
            lines.append(f"note: {r.label} has quantize/dequantize pairs, but {r.runtime} runs "
                         f"{total - low} of its {total} conv/linear layers in float (the "
                         "pairs only round there; filterprune.onnx.int8.int8_layers counts "
                         "them).")  # fmt: skip
    if len({r.precision for r in rows}) > 1:
        lines.append("note: the rows run at different precisions, so their speed-up is "
                     "the cut's and int8 kernels' together, and 'of FLOPs' is not the cut's.")
    return "\n".join(lines)
