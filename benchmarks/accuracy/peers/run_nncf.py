"""Peer runner: NNCF 2.19.0 legacy PyTorch filter pruning (``nncf-group``, ``nncf-global``).
Arguments and output: see ``peer_common.py``. Needs ``NNCF_TORCH_LEGACY_TRACING=1``.

Both run ``ours-default``'s entries (:func:`harness.default_entries`: geometric median,
exponential schedule in two steps to ``pruning_flops_target``, first and downsampling convs
pruned, BatchNorm adaptation on ``budget.bn_samples`` training images) through NNCF's own
``create_compressed_model``; ``nncf-group`` ranks filters within each group (NNCF's
default), ``nncf-global`` across the network (``"all_weights": true``). Fine-tuning is the
shared loop with ``ctrl.loss`` and NNCF's scheduler (``epoch_step``, ``step``).

NNCF's PyTorch pruning only zeroes filters (they are cut when exporting to OpenVINO IR):
``ctrl.strip()`` returns the model with pruned filters and their BatchNorm channels zeroed.
Its FLOPs and parameters are counted by :func:`harness.count_live_flops` (the harness
counter as if the zeroed channels were removed); NNCF's own count of the kept FLOPs goes
into ``flops_kept_nncf``.
"""

from __future__ import annotations

import copy
import tempfile

import peer_common as common
import torch
from harness import count_live_flops, default_entries, finetune, loader, measure, splits
from nncf import NNCFConfig
from nncf.torch import create_compressed_model, register_default_init_args

PROBE_IMAGES = 512  # validation images that tell zeroed channels from live ones


def config_for(contender: str, target: float, budget, bn_loader, log_dir: str) -> NNCFConfig:
    entries = default_entries(target, budget.bn_samples)
    if contender == "nncf-global":
        entries[0]["params"]["all_weights"] = True
    elif contender != "nncf-group":
        raise SystemExit(f"`contender` must be nncf-group or nncf-global. "
                         f"Received: contender={contender}.")
    # log_dir: NNCF writes its graphs (.dot) there, by default into the working directory
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 28, 28]},
                                   "compression": entries, "log_dir": log_dir})  # fmt: skip
    return register_default_init_args(config, bn_loader)


def main() -> None:
    args = common.parse_args()
    budget, data = args.budget, splits(args.budget)
    dense = common.load_baseline(args)
    # The same BatchNorm-adaptation loader and seeding as run_ours.
    with tempfile.TemporaryDirectory() as log_dir:
        config = config_for(args.contender, args.target, budget,
                            loader(data["train"], budget, seed=args.seed + 100), log_dir)
        torch.manual_seed(args.seed)
        ctrl, model = create_compressed_model(copy.deepcopy(dense), config)

    def on_epoch(epoch, opt, sched):
        ctrl.scheduler.epoch_step()
        return opt, sched

    seconds = finetune(model, data, budget, args.seed, extra_loss=ctrl.loss,
                       on_step=ctrl.scheduler.step, on_epoch=on_epoch)  # fmt: skip
    stats = ctrl.statistics().filter_pruning.model_statistics
    nncf_kept = stats.current_flops / stats.full_flops
    stripped = ctrl.strip()
    probe = data["val"].tensors[0][:PROBE_IMAGES]
    common.emit(measure(stripped, data, budget, seconds,
                        flops_params=count_live_flops(stripped, probe),
                        flops_source="harness live counter on NNCF's zeroed model",
                        flops_kept_nncf=nncf_kept))  # fmt: skip


if __name__ == "__main__":
    main()
