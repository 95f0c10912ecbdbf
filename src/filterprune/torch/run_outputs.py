"""The outputs of a fine-tuning run: the dense baseline before it, the results after it.

After the last epoch :func:`finish` writes the stripped model, the ONNX export with
pruned filters zeroed and that export converted (zero filters removed), measures both
ONNX models with onnxruntime, and writes ``summary.json`` and the report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import atomic_torch_save, atomic_write_text
from ..cli_common import pruning_child
from ..datasets.image_folder import Data
from ..examples._training import evaluate
from .controller import export_onnx
from .finetune import RUN_FILE, OnDevice

__all__ = ["dense_baseline", "finish", "load_snippet"]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dense_baseline(model: nn.Module, data: Data, folder: Path, device: torch.device,
                   ) -> dict[str, Any]:  # fmt: skip
    """Epoch 0 of the history: the dense model's accuracy; writes ``dense.onnx``."""
    model.to(device).eval()
    sample = torch.zeros(data.sample_size, device=device)
    export_onnx(model, (sample,), str(folder / "dense.onnx"))
    accuracy = evaluate(model, OnDevice(data.val, device))
    print(f"dense model: val acc {accuracy:.4f}, {_params(model):,} parameters")
    return {"epoch": 0, "train_loss": None, "train_accuracy": None, "val_accuracy": accuracy,
            "level": 0.0, "flops_kept": 1.0, "params_kept": 1.0, "lr": None, "seconds": 0.0,
            "params": _params(model)}  # fmt: skip


def _convert(zeroed: Path, out: Path, notes: list[str]) -> bool:
    from ..errors import ConversionError
    from ..onnx import remove_zero_filters, save_model

    try:
        small, report = remove_zero_filters(str(zeroed))
    except ConversionError as err:
        notes.append(f"converting {zeroed.name} failed: {err}")
        return False
    save_model(small, str(out))
    notes.append(f"{out.name}: {report.removed} zero filters removed from {zeroed.name}, "
                 f"FLOPs kept {report.flops_kept:.3f}")  # fmt: skip
    return True


def _latency(folder: Path, settings: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    from ..errors import ConversionError
    from ..onnx.bench import benchmark

    threads = settings["bench_threads"]
    seconds = settings["bench_seconds"]
    try:
        models = {"before": str(folder / "dense.onnx"), "after": str(folder / "model.onnx")}
        rows = benchmark(models, batches=[1], threads=threads, warmup=3, min_runs=10,
                         seconds=seconds, turn_seconds=max(0.05, min(1.0, seconds / 6)))
    except (ConversionError, ImportError) as err:
        notes.append(f"latency not measured: {err}")
        return {}
    return {"runtime": "onnxruntime", "threads": threads, "batch": 1,
            "before_ms": rows[0].median_ms, "after_ms": rows[1].median_ms,
            "runs": [rows[0].runs, rows[1].runs], "flops": [rows[0].flops, rows[1].flops],
            "precision": [rows[0].precision, rows[1].precision]}


def load_snippet(settings: dict[str, Any], classes: int, quantized: bool = False) -> str:
    """Python that rebuilds the pruned model from ``model_stripped.pt``; a quantized one
    from the checkpoint and the run's config (a plain architecture cannot hold its
    quantizers)."""
    from ..cli_models import parse_spec

    spec = parse_spec(settings["model"])
    if spec.kind == "torchvision":
        extra = "" if settings.get("weights") else f", num_classes={classes}"
        build = f"import torchvision\nmodel = torchvision.models.get_model({spec.name!r}{extra})"
    elif spec.kind == "timm":
        extra = "" if settings.get("weights") else f", num_classes={classes}"
        build = f"import timm\nmodel = timm.create_model({spec.name!r}{extra})"
    elif spec.kind == "factory" and not spec.text.rpartition(":")[0].endswith(".py"):
        module, _, attr = spec.text.rpartition(":")
        build = f"from {module} import {attr}\nmodel = {attr}()"
    else:
        build = f"model = ...  # build the architecture of {spec.text}"
    if quantized:
        load = ("import json\nfrom filterprune.torch import create_compressed_model\n"
                "checkpoint = torch.load('checkpoint.pt', weights_only=True)\n"
                "config = json.load(open('run.json'))['config']\n"
                "ctrl, model = create_compressed_model(\n"
                "    model, config, compression_state=checkpoint['compression_state'])\n"
                "model.load_state_dict(checkpoint['state_dict'])\n"
                "model = ctrl.strip().eval()  # quantizers at the trained ranges\n\n")
    else:
        load = ("from filterprune.torch import resize_to_state_dict\n"
                "state = torch.load('model_stripped.pt', weights_only=True)\n"
                "model = resize_to_state_dict(model, state).eval()\n\n")
    return (f"import torch\n{build}\n{load}"
            "# or, without torch:\nimport onnxruntime\n"
            "session = onnxruntime.InferenceSession(\n"
            '    "model.onnx", providers=["CPUExecutionProvider"])')


def finish(folder: Path, run: dict[str, Any], ctrl: Any, model: nn.Module, data: Data,
           device: torch.device, history: list[dict[str, Any]],
           notes: list[str] | None = None) -> None:  # fmt: skip
    """Write the pruned model in every form, measure it, and write the report (``notes``:
    lines for the summary)."""

    notes = list(notes or [])
    settings = run["settings"]
    small = ctrl.strip().eval()
    accuracy = evaluate(small, OnDevice(data.val, device))
    state = {k: v.cpu() for k, v in small.state_dict().items()}
    atomic_torch_save(folder / "model_stripped.pt", state)
    ctrl.export_model(str(folder / "model_zeroed.onnx"))
    converted = _convert(folder / "model_zeroed.onnx", folder / "model.onnx", notes)
    latency = _latency(folder, settings, notes) if converted else {}
    pruning = pruning_child(ctrl)
    stats = pruning.statistics() if pruning is not None else None
    files = {name: (folder / name).stat().st_size for name in
             ("dense.onnx", "model_zeroed.onnx", "model.onnx", "model_stripped.pt")
             if (folder / name).is_file()}  # fmt: skip
    summary = {
        "accuracy": [history[0]["val_accuracy"], accuracy],
        "params": [history[0].get("params"), _params(small)],
        "flops": latency.get("flops") or ([stats.full_flops, stats.current_flops] if stats
                                          else None),
        "onnx_bytes": [files.get("dense.onnx"), files.get("model.onnx")],
        "files": files, "latency": latency, "notes": notes,
        "layers": [[s.name, s.filters, s.kept] for s in stats.layers] if stats else [],
        "unpruned": [[list(p), why] for p, why in stats.unpruned] if stats else [],
        "level": float(pruning.pruning_level) if pruning is not None else None,
        "algorithms": [c.name for c in getattr(ctrl, "child_ctrls", [ctrl])],
        "load": load_snippet(settings, len(data.classes), any(
            c.name == "quantization" for c in getattr(ctrl, "child_ctrls", [ctrl]))),
    }  # fmt: skip
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2))
    print(_summary_text(summary))
    for note in notes:
        print(f"note: {note}")
    html, md = close_run(folder, run)
    print(f"wrote {folder}/model_stripped.pt, model_zeroed.onnx, model.onnx, {html.name}, "
          f"{md.name}")


def close_run(folder: Path, run: dict[str, Any]) -> tuple[Path, Path]:
    """Mark the run done (after its summary.json) and write its report pages."""
    from ..report import write_report

    run.update(status="done", finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    atomic_write_text(folder / RUN_FILE, json.dumps(run, indent=2))
    return write_report(folder)


def _summary_text(s: dict[str, Any]) -> str:
    acc, params = s["accuracy"], s["params"]
    lines = [f"accuracy {acc[0]:.4f} -> {acc[1]:.4f}"]
    if s["flops"]:
        lines.append(f"FLOPs {s['flops'][0] / 1e6:.2f}M -> {s['flops'][1] / 1e6:.2f}M "
                     f"({s['flops'][1] / max(s['flops'][0], 1):.3f} kept)")  # fmt: skip
    if params[0]:
        lines.append(f"parameters {params[0]:,} -> {params[1]:,} "
                     f"({params[1] / params[0]:.3f} kept)")  # fmt: skip
    lat = s["latency"]
    if lat:
        from ..report.page import precision_label

        lines.append(f"latency (onnxruntime{precision_label(lat)}, batch 1, {lat['threads']} thread"
                     f"{'s' if lat['threads'] > 1 else ''}) {lat['before_ms']:.3f} ms -> "
                     f"{lat['after_ms']:.3f} ms ({lat['before_ms'] / lat['after_ms']:.2f}x)")
    return "\n".join(lines)
