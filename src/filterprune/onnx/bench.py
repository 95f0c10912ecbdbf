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
    # "f32", or "int8" where the model's quantize/dequantize pairs run as int8 kernels;
    # OpenVINO is held to f32 (it would pick bf16 on CPUs that have it)
    precision: str = "f32"

    def to_dict(self) -> dict:
        return asdict(self)


def model_flops(model: Any) -> int:
    """FLOPs per sample of the conv/linear layers (core count for ONNX, OpenVINO's for IR)."""
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


def _with_batch(proto: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for v in [*out.graph.input, *out.graph.output]:
        dims = v.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = batch
    del out.graph.value_info[:]
    return out


def _prepared(model: Any, runtime: str, batch: int) -> Any:
    """``model`` read once and fixed to ``batch``: ONNX bytes, or an ``openvino.Model``."""
    if runtime == "openvino":
        import openvino as ov

        from .openvino import read_openvino

        m = read_openvino(model)
        shapes = {}
        for port in m.inputs:  # the batch axis set, the others as the model has them
            shape = port.get_partial_shape()
            shapes[port.get_any_name()] = ov.PartialShape(
                [ov.Dimension(batch), *(shape[i] for i in range(1, len(shape)))])
        m.reshape(shapes)
        return m
    return _with_batch(load_model(model), batch).SerializeToString()


def _session(model: Any, runtime: str, batch: int, threads: int) -> Callable[[], Any]:
    """Load a prepared model; returns a function that runs it once on random inputs."""
    rng = np.random.default_rng(0)
    if runtime == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"})  # fmt: skip
        feeds = [rng.standard_normal(list(p.get_shape())).astype(np.float32)
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
              min_runs: int = 20, seconds: float = 10.0,
              turn_seconds: float = 1.0) -> list[BenchRow]:  # fmt: skip
    """Time every model in ``models`` (label -> ONNX/IR path, proto or openvino.Model).

    Args:
        runtime: ``onnxruntime`` or ``openvino`` (CPU).
        batches: Batch sizes; each is timed separately.
        threads: Intra-op threads of each runtime.
        warmup: Untimed runs each time a model is loaded.
        min_runs: At least this many timed runs per model.
        seconds: Stop after this long (per batch size) once ``min_runs`` are done.
        turn_seconds: Timed seconds per model per turn.

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
    flops = {label: model_flops(m) for label, m in models.items()}
    precision = {label: _precision(m) for label, m in models.items()}
    rows: list[BenchRow] = []
    for batch in map(int, batches):
        try:
            prepared = {label: _prepared(m, runtime, batch) for label, m in models.items()}
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
        rows += _rows(times, flops, precision, runtime, batch, int(threads))
    return rows


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


def _precision(model: Any) -> str:
    """``int8`` for a model with quantize/dequantize pairs (FakeQuantize in an IR)."""
    if _is_openvino(model):
        from .openvino import read_openvino

        kinds = {op.get_type_name() for op in read_openvino(model).get_ops()}
        return "int8" if "FakeQuantize" in kinds else "f32"
    kinds = {n.op_type for n in load_model(model).graph.node}
    return "int8" if {"QuantizeLinear", "DequantizeLinear"} & kinds else "f32"


def _rows(times, flops, precision, runtime, batch, threads) -> list[BenchRow]:
    out = []
    for label, t in times.items():
        ms = np.asarray(t) * 1e3
        out.append(BenchRow(label, runtime, batch, threads, len(t), float(np.median(ms)),
                            float(np.percentile(ms, 90)), batch * 1e3 / float(np.median(ms)),
                            flops[label], precision=precision[label]))  # fmt: skip
    base = out[0]
    for row in out:
        row.speedup = base.median_ms / row.median_ms
        row.flops_ratio = base.flops / row.flops if row.flops else float("nan")
        row.of_flops_ratio = row.speedup / row.flops_ratio if row.flops else float("nan")
    return out


def format_table(rows: Sequence[BenchRow]) -> str:
    """A plain-text table of ``rows``, with a note where their precisions differ."""
    w = max([5, *(len(r.label) for r in rows)])
    head = (f"{'model':<{w}} {'runtime':<11} {'prec':<4} {'batch':>5} {'thr':>3} "
            f"{'median ms':>10} {'p90 ms':>8} {'samples/s':>10} {'speed-up':>8} "
            f"{'FLOPs x':>8} {'of FLOPs':>8}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.label:<{w}} {r.runtime:<11} {r.precision:<4} {r.batch:>5} "
                     f"{r.threads:>3} {r.median_ms:>10.2f} {r.p90_ms:>8.2f} "
                     f"{r.throughput:>10.1f} {r.speedup:>7.2f}x {r.flops_ratio:>7.2f}x "
                     f"{r.of_flops_ratio:>8.2f}")  # fmt: skip
    if len({r.precision for r in rows}) > 1:
        lines.append("note: the rows run at different precisions, so their speed-up is "
                     "the cut's and int8 kernels' together, and 'of FLOPs' is not the cut's.")
    return "\n".join(lines)
