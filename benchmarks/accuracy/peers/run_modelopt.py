"""Peer runner: NVIDIA Model Optimizer 0.47.0 FastNAS pruning (``modelopt-fastnas``), on
CPU. Arguments and output: see ``peer_common.py``.

``modelopt.torch.prune.prune(mode="fastnas")`` searches for the subnet with at most
``1 - target`` of the FLOPs (Model Optimizer's own count, through torchprofile) that
scores best, and exports it in place (physically smaller layers), which then gets the
shared fine-tuning. Its inputs:

* ``data_loader``: the training loader of ``run_ours``'s BatchNorm adaptation, for
  ``budget.bn_samples`` images (``max_iter_data_loader``), which FastNAS uses to
  re-estimate BatchNorm statistics of each candidate.
* ``score_func``: accuracy on the first ``SCORE_IMAGES`` validation images (a subset,
  so that the search, one score per channel choice of every layer, stays in minutes).
"""

from __future__ import annotations

import copy
import math
import time

import modelopt.torch.prune as mtp
import peer_common as common
import torch
from harness import evaluate, finetune, loader, measure, splits
from torch.utils.data import TensorDataset

SCORE_IMAGES = 1000
# FastNAS's default rules keep channel counts multiples of 32, which leaves ResNet-20's
# 16- and 32-wide layers nothing to prune (no subnet meets a 50% FLOPs target); multiples
# of 8 are NNCF's granularity too. The ratios are FastNAS's defaults (5% steps).
DIVISOR = 8
RATIOS = tuple(0.05 * i for i in range(1, 21))
MODE = [("fastnas", {
    "nn.Conv2d": {"channels_ratio": RATIOS, "kernel_size": (), "channel_divisor": DIVISOR},
    "nn.BatchNorm2d": {"features_ratio": RATIOS, "feature_divisor": DIVISOR},
    "nn.Linear": {"features_ratio": RATIOS, "feature_divisor": DIVISOR}})]  # fmt: skip


def main() -> None:
    args = common.parse_args()
    if args.contender != "modelopt-fastnas":
        raise SystemExit(f"`contender` must be modelopt-fastnas. "
                         f"Received: contender={args.contender}.")
    budget, data = args.budget, splits(args.budget)
    dense = common.load_baseline(args)
    val = data["val"].tensors
    score_loader = loader(TensorDataset(val[0][:SCORE_IMAGES], val[1][:SCORE_IMAGES]),
                          budget, None)  # fmt: skip
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model, _ = mtp.prune(
        copy.deepcopy(dense), mode=MODE,
        constraints={"flops": f"{100 * (1 - args.target):g}%"},
        dummy_input=torch.zeros(1, 1, 28, 28),
        config={"data_loader": loader(data["train"], budget, seed=args.seed + 100),
                "max_iter_data_loader": math.ceil(budget.bn_samples / budget.batch_size),
                "collect_func": lambda batch: batch[0],
                "score_func": lambda m: evaluate(m, score_loader)})  # fmt: skip
    search_seconds = time.perf_counter() - start
    seconds = finetune(model, data, budget, args.seed)
    common.emit(measure(model, data, budget, seconds,
                        flops_source="harness counter on the exported subnet",
                        score_images=SCORE_IMAGES, channel_divisor=DIVISOR,
                        search_seconds=round(search_seconds, 1)))  # fmt: skip


if __name__ == "__main__":
    main()
