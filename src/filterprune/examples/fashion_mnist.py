"""End-to-end demo: train a small CNN on Fashion-MNIST, prune it while fine-tuning,
strip the pruned filters and compare accuracy, FLOPs and latency.

    python -m filterprune.examples.fashion_mnist [--epochs 3] [--target 0.4]

Uses the seed's filter pruning config (pruning_init 0.1 -> pruning_target 0.4),
with ``pruning_steps`` shortened to the number of fine-tuning epochs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from filterprune._atomic import atomic_write_text
from filterprune.examples._config import demo_arguments, pruning_config
from filterprune.examples._training import (
    baseline,
    compare_latency,
    evaluate,
    fashion_mnist_loaders,
    limit_threads,
    train_one_epoch,
)
from filterprune.torch import create_compressed_model, register_default_init_args


def main(argv: list[str] | None = None) -> dict:
    args = demo_arguments(__doc__.split("\n\n")[0], argv)
    start = time.perf_counter()
    limit_threads()
    torch.manual_seed(0)

    base = baseline(args.cache, epochs=args.baseline_epochs, train_limit=args.train_limit)
    train_loader, test_loader = fashion_mnist_loaders(train_limit=args.train_limit)
    dense = base.model.eval()
    dense_acc = evaluate(dense, test_loader)
    print(f"baseline: test accuracy {dense_acc:.4f} "
          f"({'cached' if base.from_cache else 'trained'}, {base.path})")  # fmt: skip

    model = type(dense)()
    model.load_state_dict(dense.state_dict())
    config = register_default_init_args(
        pruning_config(args.epochs, args.init, args.target), train_loader
    )
    ctrl, model = create_compressed_model(model, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for epoch in range(args.epochs):
        ctrl.scheduler.epoch_step()
        result = train_one_epoch(model, train_loader, optimizer, desc=f"fine-tune {epoch + 1}",
                                 extra_loss=lambda _m: ctrl.loss(),
                                 on_step=lambda *_: ctrl.scheduler.step())  # fmt: skip
        acc = evaluate(model, test_loader)
        print(f"epoch {epoch + 1}/{args.epochs}: level {ctrl.pruning_level:.3f}  "
              f"train loss {result['loss']:.4f}  test accuracy {acc:.4f}  "
              f"({result['seconds']:.0f}s)")  # fmt: skip
    stats = ctrl.statistics()
    print()
    print(stats)

    small = ctrl.strip().eval()
    small_acc = evaluate(small, test_loader)
    n_dense = sum(p.numel() for p in dense.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    lat1 = compare_latency(dense, small, torch.randn(1, 1, 28, 28), rounds=200, threads=1)
    lat64 = compare_latency(dense, small, torch.randn(64, 1, 28, 28), rounds=40)
    report = {
        "baseline_accuracy": dense_acc,
        "pruned_accuracy": small_acc,
        "pruning_level": ctrl.pruning_level,
        "flops_kept": stats.flops_kept,
        "params_kept": n_small / n_dense,
        "dense_params": n_dense,
        "pruned_params": n_small,
        "latency_batch1_ms": [lat1["a_median_ms"], lat1["b_median_ms"]],
        "latency_batch64_ms": [lat64["a_median_ms"], lat64["b_median_ms"]],
        "speedup_batch1": 1 / lat1["ratio"],
        "speedup_batch64": 1 / lat64["ratio"],
        "seconds": time.perf_counter() - start,
    }
    print()
    print("Result (Fashion-MNIST test set, 10,000 images)")
    print(f"  accuracy      : dense {dense_acc:.4f} -> pruned and stripped {small_acc:.4f}")
    print(f"  FLOPs kept    : {stats.flops_kept:.3f} ({stats.current_flops / 1e6:.2f}M "
          f"of {stats.full_flops / 1e6:.2f}M)")  # fmt: skip
    print(f"  params kept   : {n_small / n_dense:.3f} ({n_small:,} of {n_dense:,})")
    for label, lat in (("batch 1, 1 thread", lat1), ("batch 64", lat64)):
        print(f"  latency {label:<17}: dense {lat['a_median_ms']:.3f} ms -> stripped "
              f"{lat['b_median_ms']:.3f} ms ({1 / lat['ratio']:.2f}x faster)")  # fmt: skip
    print(f"  total time    : {report['seconds']:.0f}s")
    atomic_write_text(Path(args.cache) / "demo-results.json", json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
