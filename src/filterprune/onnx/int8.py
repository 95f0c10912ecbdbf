"""Which layers a runtime really runs in 8 bits.

A QDQ model only says where values are rounded; each runtime decides by itself
whether a Conv between DequantizeLinear and QuantizeLinear becomes an int8
kernel or stays in float. These helpers ask the runtimes: ONNX Runtime's
optimised graph (``QLinearConv``, ``ConvInteger``, ``QGemm``... against ``Conv``,
``Gemm``...) and OpenVINO's compiled model (the runtime precision of each
convolution and fully connected node, compiled with ``INFERENCE_PRECISION_HINT``
f32 so that float parts stay f32 and only quantized ones change).

Example:
    >>> int8_layers("small.onnx")  # doctest: +SKIP
    {'onnxruntime': {'int8': 52, 'float': 1}, 'openvino': {'int8': 53, 'float': 0}}
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from typing import Any

import onnx

from ._io import load_model

__all__ = ["onnxruntime_ops", "openvino_layers", "int8_layers"]

ORT_INT8 = ("QLinearConv", "ConvInteger", "QGemm", "QLinearMatMul", "MatMulInteger",
            "DynamicQuantizeMatMul", "MatMulIntegerToFloat")  # fmt: skip
ORT_FLOAT = ("Conv", "FusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")
_OV_LAYERS = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution")


def onnxruntime_ops(model: Any) -> Counter:
    """Op types (with their counts) of the graph ONNX Runtime runs for ``model``.

    The graph is the one ONNX Runtime writes after its extended optimisations (the
    QDQ fusions; the level above adds only layout changes for float convolutions).
    """
    import onnxruntime as ort

    proto = load_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = path
        ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(path, load_external_data=False)
    return Counter(n.op_type for n in optimized.graph.node)


def openvino_layers(model: Any) -> Counter:
    """``(layer type, runtime precision)`` counts of the convolution and fully connected
    nodes of ``model`` compiled for the OpenVINO CPU plugin (f32 inference precision)."""
    from .openvino import _ov, read_openvino

    ov = _ov()
    compiled = ov.Core().compile_model(read_openvino(model), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32",
                                        "INFERENCE_NUM_THREADS": 1})  # fmt: skip
    out: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        if kind in _OV_LAYERS:
            out[(kind, info["runtimePrecision"].astype(str))] += 1
    return out


def int8_layers(model: Any, runtimes: tuple[str, ...] = ("onnxruntime", "openvino")) -> dict:
    """Convolution and linear layers each runtime runs in int8 and in float.

    Args:
        model: An ONNX path, bytes or ``ModelProto`` (OpenVINO also takes an .xml path).
        runtimes: ``onnxruntime`` and/or ``openvino``.

    Returns:
        Runtime -> ``{"int8": n, "float": m}``.
    """
    out = {}
    if "onnxruntime" in runtimes:
        ops = onnxruntime_ops(model)
        out["onnxruntime"] = {"int8": sum(ops[k] for k in ORT_INT8),
                              "float": sum(ops[k] for k in ORT_FLOAT)}  # fmt: skip
    if "openvino" in runtimes:
        layers = openvino_layers(model)
        low = sum(n for (_, p), n in layers.items() if p in ("u8", "i8"))
        out["openvino"] = {"int8": low, "float": sum(layers.values()) - low}
    return out
