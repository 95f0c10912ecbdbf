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
FIELDS = ["model", "ok", "input", "flops_kept", "params_kept", "analysis_s", "max_rel_diff",
          "onnx_rel_diff", "unpruned_groups", "reason"]  # fmt: skip


def run_one(name: str) -> dict:
    import torch

    from filterprune.testing.zoo import check_model

    torch.set_num_threads(1)
    return check_model(name)


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
