"""INT8 deploy benchmark: pruning and 8-bit quantization, alone and together, on CPU.

For ResNet-50 and MobileNetV2 (torchvision, random weights, seeded BatchNorm
statistics) four models are made with the PyTorch frontend and the ONNX converter:

* dense FP32: the model as it is;
* pruned FP32: ``filter_pruning`` at about half the FLOPs, exported with zero
  filters, converted (``remove_zero_filters``);
* dense INT8: ``quantization`` alone (ranges from a few random batches), QDQ export;
* pruned INT8: ``filter_pruning`` then ``quantization`` in one config, QDQ export,
  converted (the per-channel scales and zero points cut with the filters).

Each is checked (outputs of the converted model against its input, int8 layers in
ONNX Runtime's optimised graph and in OpenVINO's compiled model), then timed side
by side in turns (:mod:`filterprune.onnx.bench`) in ONNX Runtime and OpenVINO at
batch 1 and 8, 1 and 2 threads. The goals: pruned INT8 at least 1.5x faster than
pruned FP32 in OpenVINO; pruned INT8's speed-up over dense INT8 at least 0.9 of
its FLOPs ratio.

    python benchmarks/deploy_int8.py              # everything (about 15 minutes)
    python benchmarks/deploy_int8.py --quick      # short timings, for a smoke run
    python benchmarks/deploy_int8.py mobilenet_v2 --threads 1
    python benchmarks/deploy_int8.py --workdir .cache/int8   # keep the models for a rerun

Writes ``benchmarks/results/deploy_int8.md`` and ``deploy_int8.json`` (rows of an
earlier run for other models or threads are kept, so a run may be split).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ARCHS = ("resnet50", "mobilenet_v2")
LABELS = ("dense FP32", "pruned FP32", "dense INT8", "pruned INT8")
SAMPLE = [1, 3, 224, 224]
ORT_LEVEL = "ORT_ENABLE_ALL"  # onnx/bench.py sets it explicitly
OV_PRECISION = "f32"  # INFERENCE_PRECISION_HINT of every OpenVINO row (onnx/bench.py)


def base_model(arch: str):
    """``arch`` with seeded random weights and BatchNorm statistics of a real scale."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def _config(prune: bool, quantize: bool, batches: list):
    from filterprune import NNCFConfig
    from filterprune.torch import register_default_init_args

    algos = []
    if prune:
        algos.append({"algorithm": "filter_pruning", "pruning_init": 0.5,
                      "params": {"schedule": "baseline", "pruning_flops_target": 0.5,
                                 "prune_first_conv": True, "prune_downsample_convs": True}})
    if quantize:
        algos.append({"algorithm": "quantization",
                      "initializer": {"range": {"num_init_samples": 8},
                                      "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}})
    config = NNCFConfig.from_dict({"input_info": {"sample_size": SAMPLE}, "compression": algos})
    return register_default_init_args(config, batches)  # fmt: skip


def make_models(arch: str, out: Path) -> dict:
    """The four ONNX models of ``arch`` in ``out`` and what was checked on them."""
    import torch

    from filterprune.onnx import remove_zero_filters, save_model
    from filterprune.torch import create_compressed_model
    from filterprune.torch.controller import export_onnx

    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, *SAMPLE[1:], generator=g), torch.zeros(4)) for _ in range(2)]
    export_onnx(base_model(arch), [torch.zeros(SAMPLE)], str(out / "dense_fp32.onnx"))
    info: dict = {"conversions": {}}
    for name, prune, quantize in (("pruned_fp32", True, False), ("dense_int8", False, True),
                                  ("pruned_int8", True, True)):  # fmt: skip
        t = time.perf_counter()
        ctrl, _ = create_compressed_model(base_model(arch), _config(prune, quantize, batches))
        path = out / f"{name}.onnx"
        ctrl.export_model(str(path.with_suffix(".masked.onnx") if prune else path))
        info.setdefault("export_s", {})[name] = time.perf_counter() - t
        if prune:
            t = time.perf_counter()
            small, report = remove_zero_filters(str(path.with_suffix(".masked.onnx")))
            save_model(small, path)
            info["conversions"][name] = {"seconds": time.perf_counter() - t,
                                         "flops_kept": report.flops_kept,
                                         "filters_removed": report.removed,
                                         "max_rel_diff": report.max_rel_diff}  # fmt: skip
    return info


def check_models(out: Path) -> dict:
    """Per model: FLOPs, file size, int8 layers per runtime; OpenVINO IR written beside."""
    from filterprune.onnx.bench import model_flops
    from filterprune.onnx.int8 import int8_layers
    from filterprune.onnx.openvino import save_openvino

    checks = {}
    for label in LABELS:
        stem = label.lower().replace(" ", "_")
        onnx_path = out / f"{stem}.onnx"
        save_openvino(str(onnx_path), out / f"{stem}.xml")
        checks[label] = {"flops": model_flops(str(onnx_path)),
                         "onnx_mb": onnx_path.stat().st_size / 1e6,
                         "layers": int8_layers(str(onnx_path))}  # fmt: skip
    return checks


def prepared(out: Path) -> tuple[dict, dict]:
    """Models and checks in ``out``: made there, or read back from an earlier run."""
    saved = out / "prepared.json"
    if saved.exists():
        data = json.loads(saved.read_text())
        return data["info"], data["checks"]
    out.mkdir(parents=True, exist_ok=True)
    info = make_models(out.name, out)
    checks = check_models(out)
    saved.write_text(json.dumps({"info": info, "checks": checks}))
    return info, checks


def bench(out: Path, threads: list[int], seconds: float) -> list[dict]:
    from filterprune.onnx.bench import benchmark

    rows = []
    for runtime, ext in (("onnxruntime", "onnx"), ("openvino", "xml")):
        models = {label: str(out / f"{label.lower().replace(' ', '_')}.{ext}")
                  for label in LABELS}  # fmt: skip
        for n in threads:
            rows += benchmark(models, runtime=runtime, batches=(1, 8), threads=n,
                              warmup=2, seconds=seconds, min_runs=10)  # fmt: skip
    return [r.to_dict() for r in rows]


def goals(rows: list[dict]) -> list[dict]:
    """The two goal ratios per runtime, threads and batch."""
    by = {}
    for r in rows:
        by.setdefault((r["runtime"], r["threads"], r["batch"]), {})[r["label"]] = r
    out = []
    for (runtime, threads, batch), m in sorted(by.items()):
        p8, d8, p32 = m["pruned INT8"], m["dense INT8"], m["pruned FP32"]
        speedup = d8["median_ms"] / p8["median_ms"]
        flops_ratio = d8["flops"] / p8["flops"]
        out.append({"runtime": runtime, "threads": threads, "batch": batch,
                    "int8_over_fp32_pruned": p32["median_ms"] / p8["median_ms"],
                    "pruned_int8_speedup": speedup, "flops_ratio": flops_ratio,
                    "of_flops_ratio": speedup / flops_ratio})  # fmt: skip
    return out


def _layers_cell(layers: dict) -> str:
    return f"{layers['int8']} / {layers['int8'] + layers['float']}"


def write_markdown(data: dict) -> str:
    lines = ["# Deploy INT8: pruning + 8-bit quantization on CPU", "",
             f"Machine: {data['machine']}. Latency: median of runs in turns of about a "
             "second per model (the four models of a row group take turns, one loaded at a "
             "time), so ratios come from models measured side by side.", "",
             f"Settings: OpenVINO `INFERENCE_PRECISION_HINT` = **{OV_PRECISION}** on every "
             "row, FP32 and INT8 alike (set explicitly: the CPU plugin would pick bf16 by "
             "itself on this AVX512-BF16 machine); quantized layers of the INT8 models run "
             "in u8/i8 regardless. ONNX Runtime: CPU provider, graph optimisation level "
             f"`{ORT_LEVEL}`, sequential execution, `intra_op_num_threads` = the threads "
             "column, `inter_op_num_threads` = 1. OpenVINO: `INFERENCE_NUM_THREADS` = "
             "threads, `NUM_STREAMS` = 1, `PERFORMANCE_HINT` = LATENCY.", "",
             "Models: torchvision, random weights with seeded BatchNorm statistics; pruned "
             "with our PyTorch frontend (`filter_pruning`, `pruning_flops_target` 0.5); "
             "INT8 = our QAT export (`quantization`, ranges from 8 random samples), QDQ, "
             "BatchNorm folded; pruned models converted by `remove_zero_filters` (zero "
             "filters and their per-channel scales / zero points cut).", ""]  # fmt: skip
    for arch, a in data["archs"].items():
        lines += [f"## {arch}", "", f"Runs: {a['when']}; 1-minute load average "
                  f"{a['load_before']:.2f} before, {a['load_after']:.2f} after.", "",
                  "| model | GFLOPs | ONNX MB | int8 layers ORT | int8 layers OpenVINO "
                  "| converter max rel diff |", "|" + "---|" * 6]  # fmt: skip
        for label, c in a["checks"].items():
            conv = a["info"]["conversions"].get(label.lower().replace(" ", "_"))
            diff = f"{conv['max_rel_diff']:.1e}" if conv else ""
            lines.append(f"| {label} | {c['flops'] / 1e9:.2f} | {c['onnx_mb']:.1f} "
                         f"| {_layers_cell(c['layers']['onnxruntime'])} "
                         f"| {_layers_cell(c['layers']['openvino'])} | {diff} |")  # fmt: skip
        lines += ["", "| runtime | threads | batch | " + " | ".join(f"{x} ms" for x in LABELS)
                  + " | INT8 / FP32 pruned | pruned INT8 speed-up | FLOPs ratio | of FLOPs |",
                  "|" + "---|" * 11]  # fmt: skip
        med = {(r["runtime"], r["threads"], r["batch"], r["label"]): r["median_ms"]
               for r in a["rows"]}  # fmt: skip
        for gl in a["goals"]:
            key = (gl["runtime"], gl["threads"], gl["batch"])
            times = " | ".join(f"{med[(*key, x)]:.1f}" for x in LABELS)
            lines.append(f"| {gl['runtime']} | {gl['threads']} | {gl['batch']} | {times} "
                         f"| {gl['int8_over_fp32_pruned']:.2f}x "
                         f"| {gl['pruned_int8_speedup']:.2f}x | {gl['flops_ratio']:.2f}x "
                         f"| {gl['of_flops_ratio']:.2f} |")  # fmt: skip
        lines.append("")
    lines += _summary(data)
    return "\n".join(lines) + "\n"


def _summary(data: dict) -> list[str]:
    lines = ["## Goals", "",
             "| model | OpenVINO pruned INT8 vs pruned FP32 (goal >= 1.5x) "
             "| pruned INT8 speed-up / FLOPs ratio, ORT | same, OpenVINO (goal >= 0.9) |",
             "|---|---|---|---|"]  # fmt: skip
    for arch, a in data["archs"].items():
        ov = [g for g in a["goals"] if g["runtime"] == "openvino"]
        ort = [g for g in a["goals"] if g["runtime"] == "onnxruntime"]

        def span(rows, key):
            vals = [g[key] for g in rows]
            return f"{min(vals):.2f}-{max(vals):.2f}" if vals else "-"

        lines.append(f"| {arch} | {span(ov, 'int8_over_fp32_pruned')}x | "
                     f"{span(ort, 'of_flops_ratio')} | {span(ov, 'of_flops_ratio')} |")
    return lines + ["", "Ranges are over batch 1 and 8, 1 and 2 threads."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="*", default=list(ARCHS), help="models (default: all)")
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    parser.add_argument("--quick", action="store_true", help="short timings, nothing written")
    parser.add_argument("--workdir", help="keep the models here and reuse them on a rerun")
    args = parser.parse_args()
    import torch

    threads = [int(t) for t in args.threads.split(",")]
    torch.set_num_threads(max(threads))
    os.environ.setdefault("FILTERPRUNE_NO_PROGRESS", "1")
    seconds = 2.0 if args.quick else 8.0
    json_path = RESULTS / "deploy_int8.json"
    data = json.loads(json_path.read_text()) if json_path.exists() and not args.quick else {}
    data["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    data.setdefault("archs", {})
    for arch in args.archs:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(args.workdir or tmp) / arch
            info, checks = prepared(out)
            print(arch, json.dumps({"info": info, "checks": checks}, indent=1), flush=True)
            load_before, when = os.getloadavg()[0], time.strftime("%Y-%m-%d %H:%M")
            rows = bench(out, threads, seconds)
            data["archs"][arch] = {"when": when, "info": info,
                                   "checks": checks, "rows": rows, "goals": goals(rows),
                                   "load_before": load_before,
                                   "load_after": os.getloadavg()[0]}  # fmt: skip
        print(write_markdown(data), flush=True)
    if not args.quick:
        from filterprune._atomic import atomic_write_text

        RESULTS.mkdir(exist_ok=True)
        atomic_write_text(json_path, json.dumps(data, indent=2))
        atomic_write_text(RESULTS / "deploy_int8.md", write_markdown(data))


if __name__ == "__main__":
    main()
