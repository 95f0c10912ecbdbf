"""Check one model end to end: prune, strip, compare masked and stripped, export.

Random-init models hide mistakes: a zero-initialised head, a zero last-BN gamma in a
residual branch (timm's default) or a 1e-6 layer scale (ConvNeXt) makes a branch
contribute nothing, so a wrong cut inside it still compares equal. :func:`nondegenerate`
gives every such tensor a seeded value that counts before anything is compared.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SIZES", "smallest_input", "nondegenerate", "check_model", "check_timm",
           "check_module", "flat_tensors", "relative_diff"]  # fmt: skip

SIZES = (32, 64, 96, 128, 160, 224, 299, 384, 518)
TOLERANCE = 1e-4  # relative: stripped == masked, ONNX Runtime == stripped (float32)
FLOAT64_EXACT = 1e-9  # stripped == masked in float64: an exact cut leaves only rounding


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


def nondegenerate(model, seed: int = 0):
    """Give every parameter and normalisation statistic of ``model`` a value that counts.

    Every trainable floating-point parameter is redrawn (seeded): a matrix or kernel as a
    normal draw scaled by its fan-in, so that each branch of the model contributes at the
    scale of the others (timm's ViTs draw weights with std 0.02 and tokens near zero, so
    the output hardly depends on the blocks); a per-channel vector or a scalar uniformly
    around its mean, within half its scale (at least 1), so zero gammas, 1e-6
    layer scales and zero biases get values that count while a prior bias keeps its sign.
    Running statistics get a real scale (fresh ones are 0 and 1). Frozen parameters
    (``requires_grad=False``, fixed by design) are left alone.

    Returns:
        ``model``.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            mean, var = getattr(m, "running_mean", None), getattr(m, "running_var", None)
            if isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor):
                mean.copy_(torch.randn(mean.shape, generator=g) * 0.1)
                var.copy_(torch.rand(var.shape, generator=g) * 0.5 + 0.5)
        for p in model.parameters():
            if p.numel() and p.is_floating_point() and p.requires_grad:
                p.copy_(_redraw(p, g).to(p.dtype))
    return model


def _redraw(p, g):
    import torch

    sizes = [n for n in p.shape if n > 1]
    if len(sizes) >= 2:  # a matrix or kernel (not a (C, 1, 1) scale)
        fan_in = max(1, p.numel() // sizes[0])
        return torch.randn(p.shape, generator=g) / fan_in**0.5
    c = float(p.detach().float().mean())
    scale = max(abs(c), 1.0)
    return c + scale * (torch.rand(p.shape, generator=g) - 0.5)


def flat_tensors(value: Any) -> list:
    """The tensors in a nested output (tuple, list, dict), in order."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flat_tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in flat_tensors(v)]
    return []


def relative_diff(ref: Any, out: Any, floor: float = 0.0) -> float:
    """Largest difference over every output tensor, relative to that tensor's largest
    value (or ``floor``, if larger); ``inf`` where the outputs differ in number or shape,
    or in where they are not finite (a NaN in either counts as a difference)."""
    refs, outs = flat_tensors(ref), flat_tensors(out)
    if len(refs) != len(outs) or any(a.shape != b.shape for a, b in zip(refs, outs, strict=True)):
        return float("inf")
    worst = 0.0
    for a, b in zip(refs, outs, strict=True):
        if a.numel() and a.is_floating_point():
            finite = a.isfinite()
            if not bool((finite == b.isfinite()).all()):  # NaN would compare as no difference
                return float("inf")
            if not bool((a[~finite] == b[~finite]).all()):  # infinities of other signs
                return float("inf")
            a, b = a[finite], b[finite]
            if not a.numel():
                continue
            scale = max(float(a.abs().max()), floor) or 1.0
            worst = max(worst, float((a - b).abs().max()) / scale)
        elif a.numel() and not bool((a == b).all()):
            return float("inf")
    return worst


def check_model(name: str, level: float = 0.5, size: int | None = None,
                unrounded: bool = False) -> dict:  # fmt: skip
    """Run the zoo checks on torchvision classifier ``name`` (random init)."""
    import torchvision

    return check_module(lambda: torchvision.models.get_model(name, weights=None), name,
                        level=level, size=size, unrounded=unrounded)  # fmt: skip


def check_timm(name: str, level: float = 0.5, size: int | None = None) -> dict:
    """Run the zoo checks on timm model ``name`` (``pretrained=False``).

    Args:
        size: Input side; default: the model's own (its pretrained config), where its
            windows, strides and token grids are what the architecture is made for (at
            32 px a CNN ends on a 1x1 map and windowed attention pads 1x1 maps to 7x7).
    """
    import timm

    if size is None:
        cfg = timm.get_pretrained_cfg(name)
        size = (getattr(cfg, "input_size", None) or (3, 224, 224))[-1]
    return check_module(lambda: timm.create_model(name, pretrained=False), name, level=level,
                        size=size)  # fmt: skip


def check_module(build: Callable[[], Any], name: str, level: float = 0.5,
                 size: int | None = None, unrounded: bool = False, onnx: bool = True,
                 detector: bool = False) -> dict:  # fmt: skip
    """Prune ``build()`` at ``level`` (first and downsampling convs allowed) and check it.

    Checks: the stripped model equals the masked one (1e-4 relative, every output, on
    non-degenerate parameters), ONNX Runtime equals the stripped model, the output shape
    stays, and FLOPs went down. Where float32 rounding alone exceeds 1e-4, the
    comparisons are made again in float64 (:func:`_float64_check`, column ``float64``).
    With ``unrounded``, also report the FLOPs kept with ``filters_multiple_of`` 1. A
    ``detector``'s outputs (boxes after score thresholds and NMS) may differ in number
    from the unpruned model's, so its output shapes are compared with the masked model's,
    and so is the output of every conv and linear layer whose shape the cut leaves (the
    heads' tensors before post-processing).

    Returns:
        A result row: ``ok``, ``flops_kept``, ``capture`` (torch.fx or torch.export),
        ``exporter``, differences and, when not ok, the reason.
    """
    import torch

    from filterprune.core.analysis import analyze
    from filterprune.torch.capture import capture

    torch.manual_seed(0)
    model = build().eval()
    size = size or smallest_input(model)
    sample = (torch.zeros(1, 3, size, size),)
    t0 = time.perf_counter()
    captured = capture(model, sample)
    analyze(captured.graph)
    analysis_s = time.perf_counter() - t0
    nondegenerate(model)
    specialised = sum("specialised to the sample" in note for note in captured.graph.notes)
    row = {"model": name, "input": size, "capture": captured.extra["capture"],
           "analysis_s": round(analysis_s, 3), "specialised": specialised}  # fmt: skip
    row.update(_prune_and_compare(model, size, level, unrounded, onnx, detector))
    return row


def _config(size: int, level: float, multiple: int | None = None):
    from filterprune import NNCFConfig

    params = {"schedule": "baseline", "pruning_target": level, "prune_first_conv": True,
              "prune_downsample_convs": True}
    if multiple is not None:
        params["filters_multiple_of"] = multiple
    return NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, 3, size, size]},
        "compression": {"algorithm": "filter_pruning", "pruning_init": level, "params": params},
    })  # fmt: skip


def _prune_and_compare(model, size: int, level: float, unrounded: bool, onnx: bool,
                       detector: bool) -> dict:  # fmt: skip
    import torch

    from filterprune.torch import create_compressed_model

    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref_shapes = [t.shape[1:] for t in flat_tensors(model(x))]
    plain = copy.deepcopy(model) if unrounded else None
    ctrl, model = create_compressed_model(model, _config(size, level))
    stats = ctrl.statistics()
    row: dict[str, Any] = {"flops_kept": round(stats.flops_kept, 3),
                           "params_kept": round(stats.params_kept, 3)}  # fmt: skip
    if unrounded:
        ctrl1, _ = create_compressed_model(plain, _config(size, level, multiple=1))
        row["flops_kept_x1"] = round(ctrl1.statistics().flops_kept, 3)
    small = ctrl.strip().eval()
    with torch.no_grad():
        ref, out = model.eval()(x), small(x)
    if detector:
        ref_shapes = [t.shape[1:] for t in flat_tensors(ref)]
        row.update(_layer_diff(model, small, x))
    rel = max(relative_diff(ref, out), float(row.get("layer_rel_diff", 0)))
    shape_ok = [t.shape[1:] for t in flat_tensors(out)] == ref_shapes
    onnx_rel, exporter, onnx_out = _onnx_diff(small, x, out) if onnx else (0.0, "", None)
    f64 = (_float64_check(model, small, x, onnx_out, detector)
           if max(rel, onnx_rel) > TOLERANCE else {})  # fmt: skip
    row["float64"] = f64.get("float64", "")
    problems = [what for what, bad in [
        (f"stripped != masked (rel {rel:.1e})", rel > TOLERANCE and not f64.get("strip_ok")),
        (f"ONNX != stripped (rel {onnx_rel:.1e})",
         onnx_rel > TOLERANCE and not f64.get("onnx_ok")),
        ("output shape changed", not shape_ok),
        ("masked model's output not finite", not all(bool(t.isfinite().all())
                                                     for t in flat_tensors(ref)
                                                     if t.is_floating_point())),
        ("nothing pruned", stats.flops_kept >= 1.0),
    ] if bad]  # fmt: skip
    row.update({
        "ok": not problems, "reason": "; ".join(problems), "max_rel_diff": f"{rel:.1e}",
        "onnx_rel_diff": f"{onnx_rel:.1e}",
        "exporter": exporter, "unpruned_groups": len(stats.unpruned),
        "top_reason": _top_reason(stats),
    })  # fmt: skip
    return row


def _layer_diff(model, small, x) -> dict:
    """The largest relative difference between the masked and stripped outputs of every
    conv and linear layer whose output shape the cut leaves, and how many there are."""
    import torch

    def outputs(net) -> dict[str, list]:
        found: dict[str, list] = {}
        hooks = [m.register_forward_hook(lambda mod, args, out, n=n: found.setdefault(n, [])
                                         .append(out.detach().clone()))
                 for n, m in net.named_modules()
                 if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))]  # fmt: skip
        try:
            with torch.no_grad():
                net(x)
        finally:
            for h in hooks:
                h.remove()
        return found

    ref, got = outputs(model), outputs(small)
    same = [n for n in ref if n in got and [t.shape for t in ref[n]] == [t.shape for t in got[n]]]
    worst = max((relative_diff(ref[n], got[n]) for n in same), default=0.0)
    return {"layers_compared": len(same), "layer_rel_diff": f"{worst:.1e}"}


def _top_reason(stats) -> str:
    """The most frequent reason a group stays whole (what to fix next)."""
    from collections import Counter

    counts = Counter(reason for _, reason in stats.unpruned if reason != "feeds a model output")
    if not counts:
        return ""
    reason, n = counts.most_common(1)[0]
    return f"{n}x {reason}"[:120]


def _onnx_diff(small, x, out) -> tuple[float, str, list]:
    """ONNX Runtime against the stripped model, which exporter wrote the file, and the
    ONNX Runtime outputs."""
    import onnxruntime as ort
    import torch

    from filterprune.torch.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "model.onnx")
        exporter = export_onnx(small, (x,), path)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = [torch.from_numpy(a) for a in sess.run(None, {sess.get_inputs()[0].name: x.numpy()})]
    return relative_diff(out, got), exporter, got


def _float64_check(model, small, x, onnx_out: list | None, detector: bool = False) -> dict:
    """The comparisons again in float64, for a model whose float32 rounding alone exceeds
    the tolerance.

    Some random-init models amplify rounding (deep products of scales, softmax on large
    logits): their own float32 output is 1e-4 away from their float64 one, so a float32
    comparison cannot tell a wrong cut from rounding. In float64 the stripped model must
    equal the masked one within :data:`FLOAT64_EXACT` (an exact cut leaves only rounding),
    and ONNX Runtime (float32) must be no further from the float64 stripped model than
    PyTorch's own float32 run is (4x: two float32 implementations of the same graph).
    A detector's layer outputs are compared in float64 too: in float32, near-equal random
    scores can come out of top-k in another order, which permutes the proposals a box
    head sees (its outputs then differ row by row, its detections do not).

    Returns:
        ``strip_ok``, ``onnx_ok`` and ``float64`` (what was measured, for the table);
        empty where the model does not run in float64.
    """
    import torch

    try:
        masked64, small64 = copy.deepcopy(model).double(), copy.deepcopy(small).double()
        with torch.no_grad():
            ref64, out64, out32 = masked64(x.double()), small64(x.double()), small(x)
    except Exception:  # noqa: BLE001 - float32-only code (fixed-dtype buffers or casts)
        return {}
    strip64, noise = relative_diff(ref64, out64), relative_diff(out64, out32)
    if detector:
        layers = _layer_diff(masked64, small64, x.double())["layer_rel_diff"]
        strip64 = max(strip64, float(layers))
    found = {"strip_ok": strip64 <= FLOAT64_EXACT}
    text = f"float32 vs float64 {noise:.1e}; stripped vs masked in float64 {strip64:.1e}"
    if onnx_out is not None:
        onnx64 = relative_diff(out64, onnx_out)
        found["onnx_ok"] = onnx64 <= max(TOLERANCE, 4 * noise)
        text += f"; ONNX vs float64 {onnx64:.1e}"
    return {**found, "float64": text}
