"""Time graph capture + channel grouping at 224x224, one thread (median of 5 runs), with
torch.fx (the default) and with the torch.export capture (the fallback where fx fails).

    python benchmarks/analysis_speed.py [model ...]

Writes benchmarks/results/analysis_speed.md. Peers measured here (one thread):
Torch-Pruning 0.7 / 42.5 / 2.9 s and NNCF 2.2 / 14.9 / 23.5 s for
resnet50 / densenet201 / efficientnet_b7.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

from filterprune.core.analysis import analyze
from filterprune.torch.capture import capture_fx
from filterprune.torch.export_capture import capture_export

PEERS = {"resnet50": (0.70, 2.18), "densenet201": (42.45, 14.89), "efficientnet_b7": (2.92, 23.46)}


def time_model(name: str, capture=capture_fx, repeats: int = 5) -> tuple[float, float, int]:
    model = torchvision.models.get_model(name, weights=None).eval()
    sample = (torch.zeros(1, 3, 224, 224),)
    capture_s, total_s = [], []
    groups = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        graph = capture(model, sample).graph
        t1 = time.perf_counter()
        groups = len(analyze(graph).groups)
        t2 = time.perf_counter()
        capture_s.append(t1 - t0)
        total_s.append(t2 - t0)
    return statistics.median(capture_s), statistics.median(total_s), groups


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    names = names or list(PEERS)
    lines = [
        "# Analysis speed (capture + shape pass + grouping), 224x224, 1 thread, median of 5",
        "",
        "fx: torch.fx capture (the default); export: the torch.export capture (the fallback "
        "where fx cannot trace), on the same model.",
        "",
        "| model | fx capture s | fx capture + grouping s | export capture s | "
        "export capture + grouping s | groups (fx / export) | Torch-Pruning s | NNCF s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        cap, total, groups = time_model(name)
        ecap, etotal, egroups = time_model(name, capture_export)
        tp, nncf = PEERS.get(name, ("", ""))
        lines.append(f"| {name} | {cap:.2f} | {total:.2f} | {ecap:.2f} | {etotal:.2f} | "
                     f"{groups} / {egroups} | {tp} | {nncf} |")  # fmt: skip
        print(lines[-1], flush=True)
    out = Path(__file__).parent / "results" / "analysis_speed.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
