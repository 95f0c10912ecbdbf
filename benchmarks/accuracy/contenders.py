"""The contenders of the accuracy benchmark.

``ours-default``: the seed's defaults (geometric median, exponential schedule) with the
FLOPs target; ``ours-best``: the committed recipe (``fmnist_recipe.json``, the target
substituted). They run in this interpreter.

The peers run in their own venvs (``.venv-peers/<venv>/``, made by
``benchmarks/accuracy/peers/setup.sh`` with exact pins): :func:`run_peer` starts
``peers/run_<venv>.py`` with that venv's python on the cached baseline and reads back the
one ``RESULT {json}`` line it prints (the protocol is in ``peers/peer_common.py``). Every peer
gets the same data, data order, optimizer, learning-rate schedule and FLOPs counter as
ours. A peer whose venv is missing is refused with :class:`NotMeasured`, naming the setup
command; a peer that fails raises :class:`PeerFailed`.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from harness import Budget, baseline_path, default_entries, evaluate, finetune, loader, measure

from filterprune import NNCFConfig
from filterprune.torch import create_compressed_model, register_default_init_args

sys.path.insert(0, str(Path(__file__).parent / "peers"))
from peer_common import RESULT_PREFIX, runner_argv  # noqa: E402  (the runners' half of the protocol)

HERE = Path(__file__).parent
RECIPE = HERE / "fmnist_recipe.json"
PEER_DIR = HERE / "peers"
VENVS = HERE.parents[1] / ".venv-peers"
SETUP = "bash benchmarks/accuracy/peers/setup.sh"
PEERS = {
    "nncf-group": "nncf==2.19.0 (filter pruning, per group)",
    "nncf-global": "nncf==2.19.0 (filter pruning, all_weights)",
    "tp-oneshot": "torch-pruning==1.6.1 (magnitude, one-shot)",
    "tp-iterative": "torch-pruning==1.6.1 (magnitude, iterative)",
    "modelopt-fastnas": "nvidia-modelopt==0.47.0 (FastNAS pruning)",
}
# contender: (venv under VENVS, runner under PEER_DIR, extra environment)
PEER_RUNS = {
    "nncf-group": ("nncf", "run_nncf.py", {"NNCF_TORCH_LEGACY_TRACING": "1"}),
    "nncf-global": ("nncf", "run_nncf.py", {"NNCF_TORCH_LEGACY_TRACING": "1"}),
    "tp-oneshot": ("torch-pruning", "run_torch_pruning.py", {}),
    "tp-iterative": ("torch-pruning", "run_torch_pruning.py", {}),
    "modelopt-fastnas": ("modelopt", "run_modelopt.py", {}),
}
# Not a contender: the dense baseline given the same fine-tuning, nothing pruned. It shows how
# much of every row's gain over the baseline is the extra training, not the pruning.
REFERENCE = {"dense-finetune": "the dense baseline fine-tuned with the same budget, unpruned"}
# ours-l2 is one-shot, L2, no rounding: what "ours-oneshot-m1" would be, so no such name
OURS = ("ours-default", "ours-best", "ours-oneshot", "ours-oneshot-kd", "ours-oneshot-kd-m1",
        "ours-oneshot-m1-inner", "ours-legr", "ours-l2", "ours-best-kd", "ours-best-cl",
        "ours-best-cl-refit", "ours-best-cl-refit-kd")


class NotMeasured(RuntimeError):
    """A contender that cannot run in this environment."""


class PeerFailed(RuntimeError):
    """A peer's runner ended without a result."""


def recipe(target: float) -> list[dict]:
    """The committed recipe with ``pruning_flops_target`` set to ``target``."""
    entries = json.loads(RECIPE.read_text())
    for entry in entries:
        if entry["algorithm"] == "filter_pruning":
            entry["params"]["pruning_flops_target"] = target
    return entries


def l2_entries(target: float) -> list[dict]:
    """``ours-best`` with channels scored by their filters' L2 norm (``ours-best`` until
    ``coupled_L2`` did better)."""
    entries = recipe(target)
    entries[0]["params"]["filter_importance"] = "L2"
    return entries


def channels_last(entries: list[dict]) -> list[dict]:
    """``entries`` with the cut model laid out channels last (``shrunk_memory_format``)."""
    for entry in entries:
        if entry["algorithm"] == "filter_pruning":
            entry["params"]["shrunk_memory_format"] = "channels_last"
    return entries


def refit(entries: list[dict]) -> list[dict]:
    """``entries`` with the kept weights refit by least squares at the cut
    (``reconstruction_after_mask_change``, 512 registered images)."""
    for entry in entries:
        if entry["algorithm"] == "filter_pruning":
            entry["params"]["reconstruction_after_mask_change"] = True
    return entries


def distilled(entries: list[dict]) -> list[dict]:
    """``entries`` plus softmax distillation from the dense model at T=4."""
    return [*entries, {"algorithm": "knowledge_distillation", "type": "softmax",
                       "temperature": 4.0, "scale": 1.0}]  # fmt: skip


def oneshot_entries(target: float, distill: bool, multiple_of: int = 8,
                    stream: bool = True) -> list[dict]:  # fmt: skip
    """Masks chosen once before fine-tuning (the ``baseline`` schedule) by L2 magnitude, BN
    re-estimated, the model shrunk at once; with ``distill``, softmax distillation at T=4;
    ``multiple_of``: the kept counts' rounding (8, the default, or 1: none, and then the
    FLOPs target is met by the uniform level just short of it, topped up channel by channel);
    ``stream=False``: the residual stream (the groups holding the first conv and the 1x1
    shortcut convs) stays whole, only the blocks' inner channels are cut."""
    params = {"schedule": "baseline", "pruning_flops_target": target, "filter_importance": "L2",
              "prune_first_conv": stream, "prune_downsample_convs": True,
              "bn_adaptation_after_mask_change": True, "shrink_when_frozen": True,
              "filters_multiple_of": multiple_of}  # fmt: skip
    entries = [{"algorithm": "filter_pruning", "pruning_init": 0.0, "params": params,
                "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 2048}}}]
    if not stream:
        entries[0]["ignored_scopes"] = ["{re}.*shortcut.*"]
    return distilled(entries) if distill else entries


def legr_entries(target: float, generations: int = 60, train_steps: int = 20) -> list[dict]:
    """``ours-l2``'s pruning (one-shot, L2, no rounding) with the groups' levels from a
    LeGR search: each candidate is pruned to ``target``, trained ``train_steps`` steps
    (lr 0.01) and scored on 1,000 validation images; the search's seconds are the row's
    ``init_seconds``."""
    entries = oneshot_entries(target, distill=False, multiple_of=1)
    entries[0]["params"].update(
        interlayer_ranking_type="learned_ranking",
        legr_params={"generations": generations, "train_steps": train_steps,
                     "max_pruning": target, "population_size": 16, "num_samples": 4})
    return entries


def _legr_args(budget: Budget, data, seed: int) -> dict:
    """The LeGR search's inputs for :func:`register_default_init_args`."""
    val = torch.utils.data.TensorDataset(*data["val"][:1000])

    def train_steps(train_loader, model, optimizer, ctrl, steps):
        model.train()
        for _, (x, y) in zip(range(steps), train_loader, strict=False):
            loss = torch.nn.functional.cross_entropy(model(x), y) + ctrl.loss()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return {"val_loader": loader(val, budget, None), "validate_fn": evaluate,
            "train_steps_fn": train_steps}  # fmt: skip


def run_ours(name: str, dense, target: float, seed: int, budget: Budget, data) -> dict:
    """Prune and fine-tune with our library; the row's numbers."""
    entries = {"ours-best": lambda: recipe(target), "ours-default": lambda: default_entries(target),
               "ours-oneshot": lambda: oneshot_entries(target, distill=False),
               "ours-oneshot-kd": lambda: oneshot_entries(target, distill=True),
               "ours-oneshot-kd-m1": lambda: oneshot_entries(target, True, multiple_of=1),
               "ours-oneshot-m1-inner": lambda: oneshot_entries(target, False, 1, stream=False),
               "ours-legr": lambda: legr_entries(target),
               "ours-l2": lambda: l2_entries(target),
               "ours-best-kd": lambda: distilled(recipe(target)),
               "ours-best-cl": lambda: channels_last(recipe(target)),
               "ours-best-cl-refit": lambda: refit(channels_last(recipe(target))),
               "ours-best-cl-refit-kd": lambda: distilled(refit(channels_last(recipe(target)))),
               }[name]()  # fmt: skip
    for e in entries:
        if e["algorithm"] == "filter_pruning" and "initializer" in e:
            bn = e["initializer"]["batchnorm_adaptation"]
            bn["num_bn_adaptation_samples"] = budget.bn_samples
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 28, 28]},
                                   "compression": entries})  # fmt: skip
    model = copy.deepcopy(dense)
    legr = {}
    if name == "ours-legr":
        legr = _legr_args(budget, data, seed)
        legr["legr_train_optimizer"] = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    config = register_default_init_args(config, loader(data["train"], budget, seed=seed + 100),
                                        **legr)  # fmt: skip
    torch.manual_seed(seed)
    start = time.perf_counter()
    ctrl, model = create_compressed_model(model, config)
    init_seconds = time.perf_counter() - start
    pruning = ctrl.get("filter_pruning") if hasattr(ctrl, "get") else ctrl

    def on_epoch(epoch, opt, sched):
        if epoch == 0:
            pruning.register_optimizer(opt)
        ctrl.scheduler.epoch_step()
        return opt, sched

    seconds = finetune(model, data, budget, seed, extra_loss=ctrl.loss,
                       on_step=ctrl.scheduler.step, on_epoch=on_epoch)  # fmt: skip
    return measure(ctrl.strip(), data, budget, seconds, init_seconds=round(init_seconds, 1))


def peer_command(name: str, model: str, target: float, seed: int, budget: Budget,
                 venvs: Path = VENVS) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """The command line and environment that run peer ``name`` in its venv.

    Raises:
        NotMeasured: If the peer's venv is not installed.
    """
    venv, runner, env = PEER_RUNS[name]
    if not (venvs / venv / ".installed").exists():
        raise NotMeasured(f"{name}: needs {PEERS[name]} in {venvs / venv}, which is not "
                          f"installed; run `{SETUP} {venv}`")  # fmt: skip
    argv = runner_argv(name, model, target, seed, budget, baseline_path(model, budget))
    # Without PYTHONPATH: the peer venv must not import this interpreter's packages.
    inherited = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return [str(venvs / venv / "bin" / "python"), str(PEER_DIR / runner), *argv], \
        {**inherited, **env}  # fmt: skip


def run_peer(name: str, model: str, target: float, seed: int, budget: Budget,
             venvs: Path = VENVS, log=print) -> dict:  # fmt: skip
    """Run peer ``name`` in its venv on the cached baseline; its ``RESULT`` line as a dict.

    Raises:
        NotMeasured: If the peer's venv is not installed.
        PeerFailed: If the runner exits with an error or prints no ``RESULT`` line.
    """
    command, env = peer_command(name, model, target, seed, budget, venvs)
    result, tail = None, []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env) as proc:  # fmt: skip
        for line in proc.stdout:
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX):])
            else:
                log(f"  [{name}] {line.rstrip()}")
                tail = (tail + [line.rstrip()])[-20:]
    if proc.returncode or result is None:
        missing = "" if result else " and printed no RESULT line"
        raise PeerFailed(f"{name}: the runner exited with code {proc.returncode}{missing}; "
                         "its last output:\n" + "\n".join(tail))  # fmt: skip
    result["flops_params"] = tuple(result["flops_params"])
    return result


def run_contender(name: str, model: str, dense, target: float, seed: int, budget: Budget,
                  data) -> dict:  # fmt: skip
    """The row's numbers for one contender (``dense``: the baseline of ``model``)."""
    if name in REFERENCE:
        tuned = copy.deepcopy(dense)
        return measure(tuned, data, budget, finetune(tuned, data, budget, seed))
    if name in OURS:
        return run_ours(name, dense, target, seed, budget, data)
    return run_peer(name, model, target, seed, budget)
