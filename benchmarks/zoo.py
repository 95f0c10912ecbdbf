"""Prune every torchvision classification model: create, strip, compare, export.

One subprocess per model, so a crash or a timeout is one row. Writes
``benchmarks/results/zoo.csv`` and ``zoo.md``.

    python benchmarks/zoo.py                 # every model
    python benchmarks/zoo.py resnet18 vgg11  # some
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SIZES = (32, 64, 96, 128, 160, 224, 299, 384, 518)
FIELDS = ["model", "ok", "input", "flops_kept", "params_kept", "analysis_s", "max_rel_diff",
          "onnx_rel_diff", "unpruned_groups", "reason"]  # fmt: skip


def run_one(name: str) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch
    import torchvision

    from filterprune import NNCFConfig
    from filterprune.core.analysis import analyze
    from filterprune.torch import create_compressed_model
    from filterprune.torch.capture import capture
    from filterprune.torch.controller import export_onnx

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    size = None
    for s in SIZES:
        try:
            with torch.no_grad():
                ref_shape = model(torch.zeros(1, 3, s, s)).shape
            size = s
            break
        except Exception:  # noqa: BLE001 - too small for this model, try the next size
            continue
    sample = (torch.zeros(1, 3, size, size),)
    t0 = time.perf_counter()
    graph, _ = capture(model, sample)
    analyze(graph)
    analysis_s = time.perf_counter() - t0
    for m in model.modules():  # real-scale BN statistics for a meaningful comparison
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_var.uniform_(0.5, 1.0)
            m.running_mean.normal_(0, 0.1)
    config = NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, 3, size, size]},
        "compression": {"algorithm": "filter_pruning", "pruning_init": 0.5,
                        "params": {"schedule": "baseline", "prune_first_conv": True,
                                   "prune_downsample_convs": True}},
    })  # fmt: skip
    ctrl, model = create_compressed_model(model, config)
    stats = ctrl.statistics()
    x = torch.randn(2, 3, size, size)
    small = ctrl.strip().eval()
    with torch.no_grad():
        ref, out = model.eval()(x), small(x)
    scale = float(ref.abs().max()) or 1.0
    rel = float((ref - out).abs().max()) / scale
    path = RESULTS / f".{name}.onnx"
    try:
        export_onnx(small, (x,), str(path))
        x_onnx, ref_onnx = x, out
    except Exception:  # noqa: BLE001 - the exporter rejects some pool sizes at small inputs
        x_onnx = torch.randn(2, 3, 224, 224)
        export_onnx(small, (x_onnx,), str(path))
        with torch.no_grad():
            ref_onnx = small(x_onnx)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: x_onnx.numpy()})[0]
    path.unlink()
    scale_onnx = float(ref_onnx.abs().max()) or 1.0
    onnx_rel = float(np.abs(onnx_out - ref_onnx.numpy()).max()) / scale_onnx
    width_ok = tuple(out.shape) == (2, *ref_shape[1:])
    ok = rel <= 1e-4 and onnx_rel <= 1e-4 and width_ok and stats.flops_kept < 1.0
    reason = "" if ok else f"rel={rel:.1e} onnx={onnx_rel:.1e} width_ok={width_ok}"
    return {
        "model": name, "ok": ok, "input": size, "flops_kept": round(stats.flops_kept, 3),
        "params_kept": round(stats.params_kept, 3), "analysis_s": round(analysis_s, 3),
        "max_rel_diff": f"{rel:.1e}", "onnx_rel_diff": f"{onnx_rel:.1e}",
        "unpruned_groups": len(stats.unpruned), "reason": reason,
    }  # fmt: skip


def main(argv: list[str]) -> None:
    if argv[:1] == ["--one"]:
        print("RESULT " + json.dumps(run_one(argv[1])))
        return
    import torchvision

    names = argv or sorted(torchvision.models.list_models(module=torchvision.models))
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        start = time.time()
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True,
                                  text=True, timeout=int(os.environ.get("ZOO_TIMEOUT", 900)))  # fmt: skip
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if line:
                row = json.loads(line[-1][7:])
            else:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                row = {"model": name, "ok": False, "reason": tail[:160]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "ok": False, "reason": "timeout"}
        rows.append(row)
        print(f"{name:24} {'ok' if row['ok'] else 'FAIL'} {row.get('flops_kept', '')} "
              f"{time.time() - start:.0f}s {row.get('reason', '')}", flush=True)  # fmt: skip
    write(rows, partial=bool(argv))


def write(rows: list[dict], partial: bool) -> None:
    stem = "zoo-partial" if partial else "zoo"
    with open(RESULTS / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    ok = [r for r in rows if r["ok"]]
    over30 = [r for r in ok if r["flops_kept"] <= 0.7]
    lines = [
        "# torchvision zoo: filter_pruning level 0.5 (baseline), first/downsample convs on",
        "",
        f"{len(ok)}/{len(rows)} models pass (strip == masked within 1e-4 relative, ONNX Runtime "
        f"== stripped, classifier width unchanged); {len(over30)} remove more than 30% of FLOPs.",
        "Random init, eval mode, batch 2, smallest accepted square input; analysis = fx capture "
        "+ grouping, 1 thread.",
        "",
        "| " + " | ".join(FIELDS) + " |",
        "|" + "---|" * len(FIELDS),
    ]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k in FIELDS) + " |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
