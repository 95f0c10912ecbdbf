"""Peer runner: Torch-Pruning 1.6.1, L2-magnitude pruning per layer (``tp-oneshot``,
``tp-iterative``). Arguments and output: see ``peer_common.py``.

The pruner is ``tp.pruner.BasePruner`` (``MagnitudePruner`` is its deprecated alias)
with ``tp.importance.MagnitudeImportance(p=2)``, ``global_pruning=False`` and the final
Linear ignored. Torch-Pruning takes a channel ratio, not a FLOPs target, so the ratio is
found by bisection on copies of the baseline until the kept FLOPs (the harness's counter)
lie within ``TOLERANCE`` of ``1 - target``. One ratio sets every layer, so the kept FLOPs
move in steps (on ResNet-20 at 70%: 0.3173, then 0.2764): the step nearest the target is
taken, even above it, and ``run.py`` runs ours at that step's FLOPs too.

* ``tp-oneshot``: prunes once to that ratio at the start of the first fine-tuning epoch
  (inside the clock, where ours and ``tp-iterative`` cut too), then the shared
  fine-tuning.
* ``tp-iterative``: ``iterative_steps=2`` (Torch-Pruning's linear ratio schedule), one
  step at the start of each of the first two fine-tuning epochs, as ours' schedule has
  two steps. Pruning replaces parameters, so the optimizer is rebuilt after each step
  (momentum restarts) and its cosine schedule fast-forwarded to where it was.
"""

from __future__ import annotations

import copy
import warnings

import peer_common as common
import torch
import torch_pruning as tp
from harness import count_flops, finetune, loader, measure, sgd, splits

TOLERANCE = 0.02
ITERATIVE_STEPS = 2
EXAMPLE = torch.zeros(1, 1, 28, 28)


def make_pruner(model, ratio: float, steps: int = 1):
    return tp.pruner.BasePruner(
        model, EXAMPLE, importance=tp.importance.MagnitudeImportance(p=2),
        global_pruning=False, pruning_ratio=ratio, iterative_steps=steps,
        ignored_layers=[model.fc])  # fmt: skip


def kept_at(dense, ratio: float) -> float:
    """FLOPs kept when a copy of ``dense`` is pruned to ``ratio`` in one step."""
    model = copy.deepcopy(dense)
    make_pruner(model, ratio).step()
    return count_flops(model)[0] / count_flops(dense)[0]


def search_ratio(dense, target: float) -> tuple[float, float]:
    """``(ratio, kept)``: the channel ratio whose kept FLOPs are nearest ``1 - target``."""
    low, high, best = 0.0, 0.95, (0.0, 1.0)
    for _ in range(30):
        ratio = (low + high) / 2
        kept = kept_at(dense, ratio)
        if abs(kept - (1 - target)) < abs(best[1] - (1 - target)):
            best = (ratio, kept)
        if abs(kept - (1 - target)) <= TOLERANCE / 4:
            break
        low, high = (ratio, high) if kept > 1 - target else (low, ratio)
    if abs(best[1] - (1 - target)) > TOLERANCE:
        raise RuntimeError(f"no pruning ratio keeps {1 - target:.3f} of the FLOPs within "
                           f"{TOLERANCE}; nearest: ratio {best[0]:.4f} keeps {best[1]:.4f}")
    return best


def iterative_step(pruner, model, steps: int, total_steps: int):
    """An ``on_epoch`` callback: one pruner step in each of the first ``steps`` epochs."""

    def on_epoch(epoch: int, opt, sched):
        if epoch >= steps:
            return opt, sched
        pruner.step()
        done = sched.last_epoch
        opt, sched = sgd(model, 0.01, total_steps)
        with warnings.catch_warnings():  # stepping before the first optimizer step is the point
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(done):
                sched.step()
        return opt, sched

    return on_epoch


def main() -> None:
    args = common.parse_args()
    budget, data = args.budget, splits(args.budget)
    dense = common.load_baseline(args)
    ratio, searched = search_ratio(dense, args.target)
    model = copy.deepcopy(dense)
    torch.manual_seed(args.seed)
    if args.contender == "tp-oneshot":
        total = budget.finetune_epochs * len(loader(data["train"], budget, args.seed))
        on_epoch, steps = iterative_step(make_pruner(model, ratio), model, 1, total), 1
    elif args.contender == "tp-iterative":
        steps = min(ITERATIVE_STEPS, budget.finetune_epochs)
        pruner = make_pruner(model, ratio, steps)
        total = budget.finetune_epochs * len(loader(data["train"], budget, args.seed))
        on_epoch = iterative_step(pruner, model, steps, total)
    else:
        raise SystemExit(f"`contender` must be tp-oneshot or tp-iterative. "
                         f"Received: contender={args.contender}.")
    seconds = finetune(model, data, budget, args.seed, on_epoch=on_epoch)
    tp_flops = tp.utils.count_ops_and_params(model, EXAMPLE)[0]
    tp_dense = tp.utils.count_ops_and_params(dense, EXAMPLE)[0]
    common.emit(measure(
        model, data, budget, seconds, flops_source="harness counter on the pruned model",
        pruning_ratio=round(ratio, 4), pruning_steps=steps, searched_flops_kept=searched,
        flops_kept_tp=tp_flops / tp_dense))  # fmt: skip


if __name__ == "__main__":
    main()
