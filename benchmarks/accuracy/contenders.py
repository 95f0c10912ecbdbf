"""The contenders of the accuracy benchmark.

``ours-default``: the seed's defaults (geometric median, exponential schedule) with the
FLOPs target; ``ours-best``: the committed recipe (``fmnist_recipe.json``, the target
substituted). The peers (NNCF, Torch-Pruning, Model Optimizer) each need their own venv
from the package index; they are listed so the grid and the results file name them, and
:func:`run_contender` refuses them with :class:`NotMeasured` where their venv is absent.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from harness import Budget, count_flops, evaluate, loader, sgd, train_epoch

from filterprune import NNCFConfig
from filterprune.torch import create_compressed_model, register_default_init_args

RECIPE = Path(__file__).parent / "fmnist_recipe.json"
PEERS = {
    "nncf-group": "nncf==2.19 (filter pruning, per group)",
    "nncf-global": "nncf==2.19 (filter pruning, all_weights)",
    "tp-oneshot": "torch-pruning==1.6.1 (magnitude, one-shot)",
    "tp-iterative": "torch-pruning==1.6.1 (magnitude, iterative)",
    "modelopt-fastnas": "nvidia-modelopt (FastNAS pruning)",
}
OURS = ("ours-default", "ours-best")


class NotMeasured(RuntimeError):
    """A contender that cannot run in this environment."""


def recipe(target: float) -> list[dict]:
    """The committed recipe with ``pruning_flops_target`` set to ``target``."""
    entries = json.loads(RECIPE.read_text())
    for entry in entries:
        if entry["algorithm"] == "filter_pruning":
            entry["params"]["pruning_flops_target"] = target
    return entries


def default_entries(target: float) -> list[dict]:
    return [{"algorithm": "filter_pruning", "pruning_init": 0.0,
             "params": {"schedule": "exponential", "pruning_flops_target": target,
                        "pruning_steps": 2, "filter_importance": "geometric_median",
                        "prune_first_conv": True, "prune_downsample_convs": True},
             "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 2048}}}]


def run_ours(name: str, dense, target: float, seed: int, budget: Budget, data) -> dict:
    """Prune and fine-tune with our library; the row's numbers."""
    entries = recipe(target) if name == "ours-best" else default_entries(target)
    for e in entries:
        if e["algorithm"] == "filter_pruning":
            bn = e["initializer"]["batchnorm_adaptation"]
            bn["num_bn_adaptation_samples"] = budget.bn_samples
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 28, 28]},
                                   "compression": entries})  # fmt: skip
    train = loader(data["train"], budget, seed=seed)
    config = register_default_init_args(config, loader(data["train"], budget, seed=seed + 100))
    torch.manual_seed(seed)
    ctrl, model = create_compressed_model(copy.deepcopy(dense), config)
    opt, sched = sgd(model, 0.01, budget.finetune_epochs * len(train))
    pruning = ctrl.get("filter_pruning") if hasattr(ctrl, "get") else ctrl
    pruning.register_optimizer(opt)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(budget.finetune_epochs):
        ctrl.scheduler.epoch_step()
        train_epoch(model, train, opt, sched, gen, extra_loss=ctrl.loss,
                    on_step=ctrl.scheduler.step)  # fmt: skip
    seconds = time.perf_counter() - start
    small = ctrl.strip()
    return {"val": evaluate(small, loader(data["val"], budget, None)),
            "test": evaluate(small, loader(data["test"], budget, None)),
            "finetune_seconds": round(seconds, 1), "flops_params": count_flops(small)}


def run_contender(name: str, dense, target: float, seed: int, budget: Budget, data) -> dict:
    if name in OURS:
        return run_ours(name, dense, target, seed, budget, data)
    raise NotMeasured(f"{name}: needs its own venv with {PEERS[name]}; not set up here")
