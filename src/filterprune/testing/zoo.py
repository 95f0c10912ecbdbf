"""Check one torchvision classifier end to end: prune, strip, compare, export."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

__all__ = ["SIZES", "smallest_input", "real_scale_bn", "check_model"]

SIZES = (32, 64, 96, 128, 160, 224, 299, 384, 518)


def smallest_input(model, sizes=SIZES) -> int:
    """The smallest square input (from ``sizes``) the model runs on."""
    import torch

    for s in sizes:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, s, s))
            return s
        except Exception:  # noqa: BLE001 - too small for this model: try the next size
            continue
    raise ValueError(f"{type(model).__name__} accepts none of the input sizes {sizes}.")


def real_scale_bn(model) -> None:
    """Give a random-init model outputs worth comparing: real-scale BatchNorm statistics
    (fresh ones are 0 and 1) and nonzero weights where init leaves zeros (ViT's head)."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_var.uniform_(0.5, 1.0)
            m.running_mean.normal_(0, 0.1)
        elif isinstance(m, torch.nn.Linear) and not m.weight.detach().any():
            torch.nn.init.normal_(m.weight, std=0.02)


def check_model(name: str, level: float = 0.5, size: int | None = None,
                unrounded: bool = False) -> dict:
    """Run the zoo checks on torchvision model ``name`` (random init); returns a result row.

    With ``unrounded``, also report the FLOPs kept with ``filters_multiple_of`` 1.
    """
    import numpy as np
    import onnxruntime as ort
    import torch
    import torchvision

    from filterprune import NNCFConfig
    from filterprune.core.analysis import analyze
    from filterprune.torch import create_compressed_model
    from filterprune.torch.capture import capture
    from filterprune.torch.controller import export_onnx

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    size = size or smallest_input(model)
    with torch.no_grad():
        ref_shape = tuple(model(torch.zeros(1, 3, size, size)).shape)
    sample = (torch.zeros(1, 3, size, size),)
    t0 = time.perf_counter()
    graph = capture(model, sample).graph
    analyze(graph)
    analysis_s = time.perf_counter() - t0
    real_scale_bn(model)
    config = NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, 3, size, size]},
        "compression": {"algorithm": "filter_pruning", "pruning_init": level,
                        "params": {"schedule": "baseline", "pruning_target": level,
                                   "prune_first_conv": True,
                                   "prune_downsample_convs": True}},
    })  # fmt: skip
    plain = copy.deepcopy(model) if unrounded else None
    ctrl, model = create_compressed_model(model, config)
    stats = ctrl.statistics()
    row_extra = {}
    if unrounded:
        config["compression"]["params"]["filters_multiple_of"] = 1
        ctrl1, _ = create_compressed_model(plain, config)
        row_extra["flops_kept_x1"] = round(ctrl1.statistics().flops_kept, 3)
    x = torch.randn(2, 3, size, size)
    small = ctrl.strip().eval()
    with torch.no_grad():
        ref, out = model.eval()(x), small(x)
    scale = float(ref.abs().max()) or 1.0
    rel = float((ref - out).abs().max()) / scale
    onnx_rel = _onnx_diff(small, x, out, export_onnx, ort, np, torch)
    width_ok = tuple(out.shape[1:]) == ref_shape[1:]
    ok = rel <= 1e-4 and onnx_rel <= 1e-4 and width_ok and stats.flops_kept < 1.0
    reason = "" if ok else f"rel={rel:.1e} onnx={onnx_rel:.1e} width_ok={width_ok}"
    return {
        "model": name, "ok": ok, "input": size, "flops_kept": round(stats.flops_kept, 3),
        "params_kept": round(stats.params_kept, 3), "analysis_s": round(analysis_s, 3),
        "max_rel_diff": f"{rel:.1e}", "onnx_rel_diff": f"{onnx_rel:.1e}",
        "unpruned_groups": len(stats.unpruned), "reason": reason, **row_extra,
    }  # fmt: skip


def _onnx_diff(small, x, out, export_onnx, ort, np, torch) -> float:
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "model.onnx")
        try:
            export_onnx(small, (x,), path)
            x_onnx, ref = x, out
        except Exception:  # noqa: BLE001 - the exporter rejects some pool sizes at small inputs
            x_onnx = torch.randn(2, 3, 224, 224)
            export_onnx(small, (x_onnx,), path)
            with torch.no_grad():
                ref = small(x_onnx)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x_onnx.numpy()})[0]
    scale = float(ref.abs().max()) or 1.0
    return float(np.abs(got - ref.numpy()).max()) / scale
