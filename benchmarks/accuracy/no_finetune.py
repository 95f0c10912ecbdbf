"""Accuracy right after a one-shot cut, before any fine-tuning: what each recovery keeps.

For users who cannot fine-tune (no training loop, no labels at hand): the benchmark's
cached baseline is pruned once by the committed recipe at each FLOPs target and
validated as cut, with BatchNorm re-estimated, with the kept weights refit
(``reconstruction_after_mask_change``), and with both (refit, then BatchNorm). Every
recovery reads the same registered training images; the split is the benchmark's
(validation: 5,000 training images held out). Float32, this process's threads.

    PYTHONPATH=src .venv/bin/python benchmarks/accuracy/no_finetune.py --targets 0.3 0.5 0.7
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from contenders import recipe
from harness import Budget, baseline, count_flops, evaluate, loader, splits

from filterprune import NNCFConfig
from filterprune.torch import create_compressed_model, register_default_init_args

RECOVERIES = {"none": {}, "bn": {"bn_adaptation_after_mask_change": True},
              "refit": {"reconstruction_after_mask_change": True},
              "refit+bn": {"reconstruction_after_mask_change": True,
                           "bn_adaptation_after_mask_change": True}}  # fmt: skip


def cut(dense, target: float, recovery: str, data, budget: Budget, samples: int):
    """The baseline pruned once at ``target`` with ``recovery``; the controller and seconds."""
    entries = recipe(target)
    params = entries[0]["params"]
    params.update(RECOVERIES[recovery], num_reconstruction_samples=samples,
                  shrink_when_frozen=False)  # fmt: skip
    entries[0]["pruning_init"] = target  # cut at creation
    entries[0]["initializer"] = {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}
    if "bn" in recovery:
        entries[0]["initializer"]["batchnorm_adaptation"]["num_bn_adaptation_samples"] = samples
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 28, 28]},
                                   "compression": entries})  # fmt: skip
    config = register_default_init_args(config, loader(data["train"], budget, seed=100))
    start = time.perf_counter()
    ctrl, _ = create_compressed_model(copy.deepcopy(dense), config)
    return ctrl, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--samples", type=int, default=512,
                        help="training images each recovery reads (default 512)")
    args = parser.parse_args(argv)
    budget = Budget()
    data = splits(budget)
    dense = baseline(args.model, budget, data)
    val = loader(data["val"], budget, None)
    full = count_flops(dense)[0]
    print(f"{args.model} baseline: validation {evaluate(dense, val):.4f}; {args.samples} "
          f"training images per recovery; float32, {torch.get_num_threads()} thread(s)")
    print("\n| FLOPs removed (kept) | recovery | validation | seconds |")
    print("|---|---|---|---|")
    for target in args.targets:
        for recovery in RECOVERIES:
            ctrl, seconds = cut(dense, target, recovery, data, budget, args.samples)
            small = ctrl.strip()
            kept = count_flops(small)[0] / full
            print(f"| {target:.0%} ({kept:.3f}) | {recovery} | {evaluate(small, val):.4f} | "
                  f"{seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
