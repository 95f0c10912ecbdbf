"""Fine-tuning wall time of ours (shrunk when the masks freeze) against a peer, side by side.

Machines are noisy, so the contenders alternate in one run (ours, peer, ours, peer, ...)
on the same baseline, data order and threads, and the script prints each run's seconds,
the ratio of the medians and the median of the per-rep ratios (each rep's two runs are
neighbours in time, so a load that drifts over the run cancels in their ratio), then
their geometric mean with a 95% interval: ours is called slower or faster only where the
whole interval is on one side of 1. Each run
is the benchmark's fine-tuning (full training set) for ``--epochs`` epochs in a fresh
process: ours in this venv (``--child``), the peer in its own venv as in ``run.py``, so
neither inherits the other's heap or the baseline's.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/accuracy/walltime.py \\
        --ours ours-best --peer tp-oneshot --epochs 1 --reps 2

``--layout channels_last`` fine-tunes both contenders' models channels last: a control
that shows what the memory layout alone is worth, apart from the pruning.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys

import torch
from contenders import OURS, PEERS, run_contender
from harness import LAYOUT, Budget, baseline, splits
from paired import interval, verdict


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours", default="ours-best", choices=OURS)
    parser.add_argument("--peer", default="tp-oneshot", choices=sorted(PEERS))
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--layout", choices=("as-run", "channels_last"), default="as-run",
                        help="channels_last: every contender's model is fine-tuned channels "
                             "last (a control: what the layout alone is worth)")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)  # run this contender once, print row
    args = parser.parse_args(argv)
    if args.layout == "channels_last":  # read by harness.finetune, here and in the children
        os.environ[LAYOUT] = args.layout
    budget = Budget(finetune_epochs=args.epochs)  # the full budget's baseline, fewer epochs
    data = splits(budget)
    dense = baseline(args.model, budget, data)
    if args.child:
        row = run_contender(args.child, args.model, dense, args.target, 0, budget, data)
        print("ROW " + json.dumps({"finetune_seconds": row["finetune_seconds"],
                                   "flops": row["flops_params"][0]}))  # fmt: skip
        return
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"{args.model}, target {args.target}, {args.epochs} fine-tuning epoch(s) on "
          f"{len(data['train'])} images, float32 on CPU, OMP_NUM_THREADS={threads}, "
          f"torch threads {torch.get_num_threads()}, layout {args.layout}")  # fmt: skip
    seconds: dict[str, list[float]] = {args.ours: [], args.peer: []}
    for rep in range(args.reps):
        for name in (args.ours, args.peer):
            if name in OURS:
                row = _ours_in_child(name, args)
            else:
                row = run_contender(name, args.model, dense, args.target, 0, budget, data)
                row["flops"] = row["flops_params"][0]
            seconds[name].append(row["finetune_seconds"])
            print(f"rep {rep + 1} {name}: {row['finetune_seconds']:.1f} s "
                  f"(FLOPs {row['flops']:,})", flush=True)  # fmt: skip
    ours, peer = (statistics.median(seconds[n]) for n in (args.ours, args.peer))
    pairs = [a / b for a, b in zip(seconds[args.ours], seconds[args.peer], strict=True)]
    shown = ", ".join(f"{r:.3f}" for r in pairs)
    print(f"median {args.ours} {ours:.1f} s, {args.peer} {peer:.1f} s: "
          f"ratio {ours / peer:.3f} (below 1: ours faster); per-rep ratios {shown}, "
          f"median {statistics.median(pairs):.3f}")  # fmt: skip
    # On log ratios, so 0.9 and 1.111 weigh alike; back on the ratio scale to print.
    mean, half = interval([math.log(r) for r in pairs])
    if math.isnan(half):
        print(f"per-rep ratio {math.exp(mean):.3f}: one rep, no interval")
        return
    word = {"ahead": "slower", "behind": "faster"}.get(verdict(mean, half), "level")
    print(f"geometric mean of the per-rep ratios {math.exp(mean):.3f}, 95% interval "
          f"{math.exp(mean - half):.3f} to {math.exp(mean + half):.3f}: ours {word}"
          + (" within the reps' spread" if word == "level" else ""))  # fmt: skip


def _ours_in_child(name: str, args: argparse.Namespace) -> dict:
    """Run ``name`` once in a fresh interpreter of this venv; its seconds and FLOPs."""
    command = [sys.executable, __file__, "--child", name, "--model", args.model,
               "--target", str(args.target), "--epochs", str(args.epochs)]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    rows = [line[4:] for line in out.stdout.splitlines() if line.startswith("ROW ")]
    if out.returncode or not rows:
        raise SystemExit(f"{name} failed in its process (exit {out.returncode}):\n"
                         + out.stderr[-2000:])  # fmt: skip
    return json.loads(rows[-1])


if __name__ == "__main__":
    main()
