"""Check the zero-filter converter on a pruned PyTorch model's ONNX export.

The model is pruned, exported masked (pruned filters zero, as ``ctrl.export_model``
writes it) with the chosen ONNX exporter, and converted with
:func:`filterprune.onnx.remove_zero_filters`. The two exporters write different graphs
(the current one names nodes after the code, folds constants and may wrap ops in
functions; the TorchScript one names them after the modules), and the converter has to
read both. Used by ``benchmarks/convert_exports.py`` and the tests.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["WEIGHTED", "weight_shapes", "check_convert"]

WEIGHTED = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def weight_shapes(model) -> list[tuple[int, ...]]:
    """The shapes of the constant weights of every Conv/Gemm/MatMul/ConvTranspose, sorted."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in WEIGHTED and len(n.input) > 1]
    return sorted(inits[n.input[1]] for n in nodes if n.input[1] in inits)


def check_convert(model, size: int, exporter: str = "auto", level: float = 0.5) -> dict:
    """Prune ``model`` (made non-degenerate first), export it masked, convert, compare.

    Args:
        model: A PyTorch image model taking ``(1, 3, size, size)``.
        exporter: ``"auto"``, ``"dynamo"`` or ``"torchscript"`` (see
            :func:`filterprune.torch.onnx_export.export_onnx`).

    Returns:
        A row: ``exporter`` (the one that wrote the files), ``same_weights`` (every
        weight has the shape it has in the shrunk export), ``rel_diff`` (converted model
        against the masked PyTorch model, relative to the largest output),
        ``flops_kept`` (the converter's count), ``strip_flops_kept`` (the frontend's),
        ``kept_zero`` (zero filters the converter left) and ``seconds`` (converter time).
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from filterprune.onnx import remove_zero_filters
    from filterprune.testing.zoo import _config, nondegenerate
    from filterprune.torch import create_compressed_model

    torch.manual_seed(0)
    ctrl, model = create_compressed_model(nondegenerate(model.eval()), _config(size, level))
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    with tempfile.TemporaryDirectory() as folder:
        masked, small = Path(folder) / "masked.onnx", Path(folder) / "small.onnx"
        used = _export(ctrl, masked, exporter, shrink=False)
        _export(ctrl, small, used, shrink=True)
        start = time.perf_counter()
        converted, report = remove_zero_filters(str(masked))
        seconds = time.perf_counter() - start
        same = weight_shapes(converted) == weight_shapes(onnx.load(str(small)))
    sess = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    scale = float(np.abs(ref).max()) or 1.0
    return {"exporter": used, "same_weights": same,
            "rel_diff": float(np.abs(out - ref).max()) / scale,
            "flops_kept": report.flops_kept, "strip_flops_kept": ctrl.statistics().flops_kept,
            "kept_zero": sum(s.kept_zero for s in report.layers), "seconds": seconds}  # fmt: skip


def _export(ctrl: Any, path: Path, exporter: str, shrink: bool) -> str:
    """What ``ctrl.export_model(path, shrink=shrink)`` writes, with a chosen exporter."""
    from filterprune.torch.fold import fold_batchnorms
    from filterprune.torch.onnx_export import export_onnx

    model = fold_batchnorms(ctrl.strip(shrink=shrink).eval(), ctrl.captured.graph)
    return export_onnx(model, ctrl.captured.sample, str(path), exporter=exporter)
