"""Does ``overflow_fix`` cost the Keras demo accuracy? Pruned FP32, pruned INT8 with
``disable`` and with ``enable``, each over several shuffles of the training data.

Each run is the Keras demo's fine-tuning (``make demo-keras``: SmallCNN from the cached
2-epoch baseline, 3 epochs of ``model.fit``, AdamW 1e-3 with cosine decay, half the FLOPs
pruned at the start, distillation from the dense model, 8-bit QAT after it; the FP32 run
drops the quantization entry only) with the training set shuffled by ``seed``. For the INT8
runs the trained model is also evaluated with its weight ranges refreshed over all and
over half the integers, with the weight quantizers off, and with every quantizer off:
if those agree with the QAT accuracy, the points a setting gains or loses come from
the training it led to, not from rounding at inference.

    .venv/bin/python benchmarks/keras_overflow_seeds.py                 # seeds 1 2 3, ~20 min
    .venv/bin/python benchmarks/keras_overflow_seeds.py --seeds 4 --runs enable

Each run is its own process (TensorFlow state does not leak from one to the next).
Writes ``benchmarks/results/keras_overflow_seeds.md`` and ``.json``; rows already there
for a (run, seed) are kept, so an interrupted study resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
RUNS = ("fp32", "disable", "enable")


def measure(run: str, shuffle_seed: int, demo_argv: list[str]) -> dict:
    """One fine-tuning run in this process; its accuracies on the 10,000 test images."""
    import dataclasses

    from filterprune.examples import fashion_mnist_keras as demo
    from filterprune.examples._config import demo_arguments
    from filterprune.tensorflow.controller import reset_traced_functions

    stock = demo.dataset

    def dataset(split, limit=None, batch_size=128, shuffle=False, seed=0):
        return stock(split, limit, batch_size=batch_size, shuffle=shuffle,
                     seed=shuffle_seed if shuffle else seed)  # fmt: skip

    args = demo_arguments("", demo_argv, **demo.DEFAULTS)
    demo.limit_threads()
    test = demo.dataset("test")
    dense, _ = demo.baseline(args.cache, args.baseline_epochs, args.train_limit)
    demo.dataset = dataset  # after the baseline: one baseline for every seed
    config = demo.demo_config(args)
    algos = config.algorithms()
    for a in algos:
        if a["algorithm"] == "quantization":
            a["overflow_fix"] = run
    config["compression"] = [a for a in algos
                             if run != "fp32" or a["algorithm"] != "quantization"]  # fmt: skip
    start = time.time()
    ctrl, _ = demo.train_compressed(args, dense, test, config)
    row = {"run": run, "seed": shuffle_seed, "train_limit": args.train_limit,
           "seconds": round(time.time() - start, 1)}
    if run == "fp32":
        return {**row, "accuracy": demo.evaluate(ctrl.model, test)}
    q = ctrl.get("quantization")
    row["accuracy"] = demo.evaluate(q.model, test)
    specs = q.specs
    for half in (False, True):  # the same weights, ranges over all or half the integers
        q.specs = [dataclasses.replace(s, settings=dataclasses.replace(s.settings,
                                                                       half_range=half))
                   if s.kind == "weight" else s for s in specs]  # fmt: skip
        q._refresh_weights()
        row["full_range" if not half else "half_range"] = demo.evaluate(q.model, test)
    q.specs = specs
    for kinds, key in ((("weight",), "float_weights"), (("weight", "activation"), "float")):
        for quantizer in q.quantizers.values():
            quantizer.paused = quantizer.spec.kind in kinds
        reset_traced_functions(q.model)
        row[key] = demo.evaluate(q.model, test)
    return row


def write(rows: list[dict], out: Path) -> None:
    from filterprune._atomic import atomic_write_text

    rows = sorted(rows, key=lambda r: (r["seed"], RUNS.index(r["run"])))
    atomic_write_text(out / "keras_overflow_seeds.json", json.dumps(rows, indent=2))
    seeds = sorted({r["seed"] for r in rows})
    acc = {(r["run"], r["seed"]): r["accuracy"] for r in rows}
    lines = [
        "# Keras demo: pruned FP32 and INT8 with and without `overflow_fix`, by shuffle",
        "",
        "Produced by `benchmarks/keras_overflow_seeds.py`; every number is measured. Test "
        "accuracy (10,000 images) of the Keras demo's fine-tuning (SmallCNN, 3 epochs, "
        "half the FLOPs pruned at the start, distillation, 8-bit QAT) with the training "
        "data shuffled "
        f"by each seed; float32 CPU, 2 threads. Machine: {platform.machine()}, "
        f"{os.cpu_count()} cores.",
        "",
        "| seed | pruned FP32 | INT8 `disable` | INT8 `enable` | enable - disable |",
        "|---|---|---|---|---|",
    ]
    for s in seeds:
        cells = [acc.get((r, s)) for r in RUNS]
        gap = (f"{100 * (cells[2] - cells[1]):+.2f}" if None not in cells[1:] else "-")
        lines.append(f"| {s} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells)
                     + f" | {gap} |")
    both = [s for s in seeds if all((r, s) in acc for r in RUNS)]
    if both:
        def mean_gap(a: str, b: str) -> str:
            return f"{100 * sum(acc[a, s] - acc[b, s] for s in both) / len(both):+.2f}"

        lines += ["", f"Mean over the {len(both)} seeds with all three runs, in points: "
                  f"INT8 `disable` - FP32 {mean_gap('disable', 'fp32')}, INT8 `enable` - "
                  f"FP32 {mean_gap('enable', 'fp32')}, `enable` - `disable` "
                  f"{mean_gap('enable', 'disable')}."]  # fmt: skip
    lines += ["", "The INT8 models evaluated again (same weights): weight ranges refreshed "
              "over all and over half the integers, weight quantizers off, every quantizer "
              "off.", "", "| run | seed | QAT | full range | half range | float weights "
              "| float |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["run"] != "fp32":
            lines.append(f"| {r['run']} | {r['seed']} | {r['accuracy']:.4f} | "
                         f"{r['full_range']:.4f} | {r['half_range']:.4f} | "
                         f"{r['float_weights']:.4f} | {r['float']:.4f} |")
    atomic_write_text(out / "keras_overflow_seeds.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--cache", default=".cache", help="the demo's baseline cache")
    parser.add_argument("--train-limit", help="training images (a quick check; all: 60,000)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--one", nargs=2, metavar=("RUN", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    demo_argv = ["--cache", args.cache]
    if args.train_limit:
        demo_argv += ["--train-limit", args.train_limit]
    if args.one:  # a child process: one run, its row on stdout
        print("ROW " + json.dumps(measure(args.one[0], int(args.one[1]), demo_argv)))
        return
    path = args.out / "keras_overflow_seeds.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    for seed in args.seeds:
        for run in args.runs:
            if any(r["run"] == run and r["seed"] == seed for r in rows):
                continue
            child = [sys.executable, __file__, "--one", run, str(seed), "--cache", args.cache]
            if args.train_limit:
                child += ["--train-limit", args.train_limit]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            row = json.loads(next(line[4:] for line in done.stdout.splitlines()
                                  if line.startswith("ROW ")))  # fmt: skip
            print(row, flush=True)
            rows.append(row)
            args.out.mkdir(parents=True, exist_ok=True)
            write(rows, args.out)


if __name__ == "__main__":
    main()
