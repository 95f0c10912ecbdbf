"""Deploy benchmark: zero-filter removal on exported models, real CPU speed-ups.

For each case a torchvision model is pruned with the PyTorch frontend, exported
with its pruned filters zeroed (``ctrl.export_model``), converted with
``filterprune.onnx.remove_zero_filters`` and compared with OpenVINO's own
pruning pass on the same masked file: filters removed, FLOPs, equal outputs,
and latency (median, p90, models in turns) in ONNX Runtime and OpenVINO, batch
1 and 8, 1 and 2 threads. Also times the converter on a 100 MB+ model (ResNet-152).

    python benchmarks/deploy.py                # everything (several minutes)
    python benchmarks/deploy.py --quick        # short timings, for a smoke run

Writes ``benchmarks/results/deploy.md`` and ``deploy.json``.
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
CASES = [  # name, model, how it is pruned
    ("resnet50-half-filters", "resnet50", {"pruning_init": 0.5}),
    ("resnet50-flops50", "resnet50", {"pruning_init": 0.5, "pruning_flops_target": 0.5}),
    ("mobilenet_v2-flops50", "mobilenet_v2", {"pruning_init": 0.5, "pruning_flops_target": 0.5}),
]
BIG = ("resnet152-half-filters", "resnet152", {"pruning_init": 0.5})


def masked_model(arch: str, prune: dict, path: Path) -> float:
    """Prune ``arch`` (random weights, real-scale BN) with our frontend; export with zeros."""
    import torch
    import torchvision

    from filterprune import NNCFConfig
    from filterprune.torch import create_compressed_model

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.0)
            m.running_mean.normal_(0, 0.1)
            m.bias.data.normal_(0, 0.1)
    params = {"schedule": "baseline", "prune_first_conv": True, "prune_downsample_convs": True}
    if "pruning_flops_target" in prune:
        params["pruning_flops_target"] = prune["pruning_flops_target"]
    config = NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, 3, 224, 224]},
        "compression": {"algorithm": "filter_pruning", "pruning_init": prune["pruning_init"],
                        "params": params},
    })  # fmt: skip
    ctrl, model = create_compressed_model(model, config)
    ctrl.export_model(str(path))
    return float(ctrl.statistics().flops_kept)


def convert_case(masked: Path, out: Path) -> dict:
    """Ours and OpenVINO's pass on ``masked``: times, FLOPs, per-layer filters, equality."""
    from filterprune.onnx import (
        max_rel_diff,
        random_inputs,
        remove_zero_filters,
        run_onnxruntime,
        save_model,
    )
    from filterprune.onnx.openvino import (
        openvino_pruning_pass,
        ov_layers,
        read_openvino,
        run_openvino,  # fmt: skip
        save_openvino,
    )

    t = time.perf_counter()
    ours, report = remove_zero_filters(str(masked))
    convert_s = time.perf_counter() - t
    save_model(ours, out / "ours.onnx")
    save_openvino(ours, out / "ours.xml")
    t = time.perf_counter()
    ov_pass = openvino_pruning_pass(str(masked))
    ov_pass_s = time.perf_counter() - t
    save_openvino(ov_pass, out / "ovpass.xml")
    dense_l, ours_l = ov_layers(read_openvino(str(masked))), ov_layers(read_openvino(ours))
    pass_l = ov_layers(ov_pass)
    masked_proto = read_onnx(masked)
    feeds = random_inputs(masked_proto)
    ref = run_onnxruntime(masked_proto, feeds)
    more = [n for n in dense_l if ours_l.get(n, (0,))[0] < pass_l.get(n, (0,))[0]]
    fewer = [n for n in dense_l if ours_l.get(n, (0,))[0] > pass_l.get(n, (0,))[0]]
    return {
        "converter_s": convert_s, "converter_stages_s": report.seconds,
        "openvino_pass_s": ov_pass_s,
        "filters_removed": report.removed,
        "flops_dense": sum(f for _, f in dense_l.values()),
        "flops_ours": sum(f for _, f in ours_l.values()),
        "flops_openvino_pass": sum(f for _, f in pass_l.values()),
        "flops_kept_core": report.flops_kept,
        "layers": len(dense_l),
        "layers_ours_removes_more": len(more), "layers_ours_removes_fewer": len(fewer),
        "filters_ours": sum(c for c, _ in ours_l.values()),
        "filters_openvino_pass": sum(c for c, _ in pass_l.values()),
        "rel_diff_ours_ort": max_rel_diff(ref, run_onnxruntime(ours, feeds)),
        "rel_diff_ours_openvino": max_rel_diff(ref, run_openvino(ours, feeds)),
        "rel_diff_openvino_pass": max_rel_diff(ref, run_openvino(ov_pass, feeds)),
        "kept_zero_filters": sum(s.kept_zero for s in report.layers),
    }  # fmt: skip


def read_onnx(path: Path):
    import onnx

    return onnx.load(str(path))


def bench_case(masked: Path, out: Path, batches, threads: list[int], seconds: float) -> list[dict]:
    from filterprune.onnx.bench import benchmark

    rows = []
    for n in threads:
        rows += benchmark({"dense": str(masked), "ours": str(out / "ours.onnx")},
                          runtime="onnxruntime", batches=batches, threads=n,
                          seconds=seconds, min_runs=10)  # fmt: skip
        rows += benchmark({"dense": str(masked), "ours": str(out / "ours.xml"),
                           "openvino-pass": str(out / "ovpass.xml")},
                          runtime="openvino", batches=batches, threads=n,
                          seconds=seconds, min_runs=10)  # fmt: skip
    return [r.to_dict() for r in rows]


def big_model(tmp: Path) -> dict:
    name, arch, prune = BIG
    masked = tmp / f"{name}.onnx"
    masked_model(arch, prune, masked)
    from filterprune.onnx import remove_zero_filters

    t = time.perf_counter()
    _, report = remove_zero_filters(str(masked))
    total = time.perf_counter() - t
    return {"case": name, "size_mb": masked.stat().st_size / 1e6, "converter_s": total,
            "stages_s": report.seconds, "flops_kept": report.flops_kept,
            "rel_diff": report.max_rel_diff}  # fmt: skip


def write_markdown(data: dict) -> str:
    lines = ["# Deploy: zero-filter removal on exported models", "",
             f"Machine: {data['machine']}; 1-minute load average {data['load_before']:.1f} "
             f"at the start, {data.get('load_after', float('nan')):.1f} at the end. "
             "Latency: median of runs in turns of about a second per model (dense, ours, "
             "OpenVINO pass, dense, ...), one model loaded at a time; ratios come from "
             "models measured side by side in one run.", ""]  # fmt: skip
    lines += ["## Conversion", "",
              "| case | torch FLOPs kept | ours FLOPs kept | OV pass FLOPs kept "
              "| filters ours / OV pass "
              "| layers ours removes more / fewer | max rel diff ours ORT / OV, OV pass | "
              "converter s | OV pass s |", "|" + "---|" * 9]  # fmt: skip
    for c in data["cases"]:
        v = c["convert"]
        lines.append(
            f"| {c['case']} | {c['torch_flops_kept']:.3f} "
            f"| {v['flops_ours'] / v['flops_dense']:.3f} "
            f"| {v['flops_openvino_pass'] / v['flops_dense']:.3f} "
            f"| {v['filters_ours']} / {v['filters_openvino_pass']} "
            f"| {v['layers_ours_removes_more']} / {v['layers_ours_removes_fewer']} "
            f"of {v['layers']} "
            f"| {v['rel_diff_ours_ort']:.1e} / {v['rel_diff_ours_openvino']:.1e}, "
            f"{v['rel_diff_openvino_pass']:.1e} | {v['converter_s']:.2f} "
            f"| {v['openvino_pass_s']:.2f} |"
        )  # fmt: skip
    lines += ["", "## Latency", "",
              "| case | runtime | threads | batch | model | median ms | p90 ms | samples/s "
              "| speed-up | FLOPs ratio | speed-up / FLOPs ratio |", "|" + "---|" * 11]  # fmt: skip
    for c in data["cases"]:
        for r in c["bench"]:
            lines.append(
                f"| {c['case']} | {r['runtime']} | {r['threads']} | {r['batch']} | {r['label']} | "
                f"{r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['throughput']:.1f} | "
                f"{r['speedup']:.2f}x | {r['flops_ratio']:.2f}x | {r['of_flops_ratio']:.2f} |"
            )  # fmt: skip
    if data.get("big"):
        b = data["big"]
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in b["stages_s"].items())
        lines += ["", "## Converter time on a large model", "",
                  f"{b['case']}: {b['size_mb']:.0f} MB ONNX, converted in {b['converter_s']:.1f} s "
                  f"({stages}); FLOPs kept {b['flops_kept']:.3f}; max rel diff "
                  f"{b['rel_diff']:.1e}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short timings")
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    parser.add_argument("--no-big", action="store_true", help="skip the ResNet-152 timing")
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    args = parser.parse_args()
    import torch

    threads = [int(t) for t in args.threads.split(",")]
    torch.set_num_threads(max(threads))
    os.environ.setdefault("FILTERPRUNE_NO_PROGRESS", "1")
    seconds = 3.0 if args.quick else 20.0
    data = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "threads": threads, "load_before": os.getloadavg()[0], "cases": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, arch, prune in CASES:
            if args.cases and name not in args.cases:
                continue
            out = tmp / name
            out.mkdir()
            kept = masked_model(arch, prune, out / "masked.onnx")
            conv = convert_case(out / "masked.onnx", out)
            print(name, json.dumps(conv, indent=1), flush=True)
            rows = bench_case(out / "masked.onnx", out, (1, 8), threads, seconds)
            data["cases"].append({"case": name, "torch_flops_kept": kept, "convert": conv,
                                  "bench": rows})  # fmt: skip
            print(write_markdown(data), flush=True)
        if not args.no_big:
            data["big"] = big_model(tmp)
    data["load_after"] = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    from filterprune._atomic import atomic_write_text

    atomic_write_text(RESULTS / "deploy.json", json.dumps(data, indent=2))
    atomic_write_text(RESULTS / "deploy.md", write_markdown(data))
    print(write_markdown(data))


if __name__ == "__main__":
    main()
