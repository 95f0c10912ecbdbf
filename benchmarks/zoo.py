"""Prune every torchvision classification model: create, strip, compare, export.

One subprocess per model, so a crash or a timeout is one row. Writes
``benchmarks/results/zoo.csv`` and ``zoo.md``.

    python benchmarks/zoo.py                 # every model
    python benchmarks/zoo.py resnet18 vgg11  # some (zoo-partial.csv/.md)
    python benchmarks/zoo.py --merge         # put zoo-partial rows into zoo.csv/.md
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
FIELDS = ["model", "ok", "input", "flops_kept", "flops_kept_x1", "params_kept", "analysis_s",
          "max_rel_diff", "onnx_rel_diff", "unpruned_groups", "reason"]  # fmt: skip
PEERS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "peers-zoo.md"


def load_peers() -> dict[str, tuple[str, str]]:
    """model -> (Torch-Pruning MACs kept, NNCF MACs kept) from the shared reference table."""
    peers: dict[str, tuple[str, str]] = {}
    if not PEERS.exists():
        return peers
    for line in PEERS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6 or not cells[1].startswith(("✔", "✘")):
            continue
        tp = cells[2] if cells[1] == "✔" else "fail"
        nncf = cells[5] if cells[4] == "✔" else "fail"
        peers[cells[0]] = (tp, nncf)
    return peers


def run_one(name: str) -> dict:
    import torch

    from filterprune.testing.zoo import check_model

    torch.set_num_threads(1)
    return check_model(name, unrounded=True)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--one"]:
        print("RESULT " + json.dumps(run_one(argv[1])))
        return
    if argv[:1] == ["--merge"]:
        merge_partial()
        return
    import torchvision

    names = argv or sorted(torchvision.models.list_models(module=torchvision.models))
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        start = time.time()
        try:
            cmd = [sys.executable, __file__, "--one", name]
            limit = int(os.environ.get("ZOO_TIMEOUT", 900))
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
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


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["ok"] = r["ok"] == "True"
        r["flops_kept"] = float(r["flops_kept"]) if r.get("flops_kept") else ""
    return rows


def merge_partial() -> None:
    """Put the rows of ``zoo-partial.csv`` (a run of some models) into ``zoo.csv``/``.md``."""
    rows = {r["model"]: r for r in _read(RESULTS / "zoo.csv")}
    rows.update((r["model"], r) for r in _read(RESULTS / "zoo-partial.csv"))
    write([rows[k] for k in sorted(rows)], partial=False)


def write(rows: list[dict], partial: bool) -> None:
    stem = "zoo-partial" if partial else "zoo"
    with open(RESULTS / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    ok = [r for r in rows if r["ok"]]
    over30 = [r for r in ok if r["flops_kept"] <= 0.7]
    peers = load_peers()
    fields = FIELDS[:5] + ["TP", "NNCF"] + FIELDS[5:]
    for r in rows:
        r["TP"], r["NNCF"] = peers.get(r["model"], ("", ""))
    lines = [
        "# torchvision zoo: filter_pruning level 0.5 (baseline), first/downsample convs on",
        "",
        f"{len(ok)}/{len(rows)} models pass (strip == masked within 1e-4 relative, ONNX Runtime "
        f"== stripped, classifier width unchanged); {len(over30)} remove more than 30% of FLOPs.",
        "Random init, eval mode, batch 2, smallest accepted square input; analysis = fx capture "
        "+ grouping, 1 thread.",
        "",
        "Peers (TP = Torch-Pruning 1.6.1, NNCF 2.19.0): MACs kept at level 0.5 from "
        "../shared/reference/peers-zoo.md (NNCF with its defaults: first/downsample convs off).",
        "flops_kept_x1: the same with `filters_multiple_of` 1 (no rounding to multiples of 8).",
        "",
        "| " + " | ".join(fields) + " |",
        "|" + "---|" * len(fields),
    ]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k in fields) + " |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
