"""End-to-end demo: load (or train) a small CNN on Fashion-MNIST, prune it to half its
FLOPs and quantize it (8-bit QAT) while fine-tuning, strip the pruned filters and compare
accuracy (FP32 baseline, pruned FP32, pruned INT8), FLOPs and latency.

    python -m filterprune.examples.fashion_mnist [--epochs 3] [--flops-target 0.5]

The baseline (2 epochs) ships with the package (``scripts/train_demo_baseline.py`` trained
it); other ``--baseline-epochs`` or ``--train-limit`` train one and cache it. The config
lists ``filter_pruning`` (``pruning_flops_target`` 0.5: the masks are chosen once, at the
start, and the model is cut at once with ``shrink_when_frozen``, so fine-tuning runs at
pruned cost), ``knowledge_distillation`` from the dense model, and
``{"algorithm": "quantization"}`` with its defaults, as in the reference "Filter Pruning +
QAT" config. Fine-tuning: AdamW, learning rate 1e-3 with cosine decay.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from filterprune import NNCFConfig
from filterprune._atomic import atomic_write_text
from filterprune.examples._config import DEFAULTS, LR, demo_arguments
from filterprune.examples._config import demo_config as _recipe_config
from filterprune.examples._training import (
    baseline,
    compare_latency,
    evaluate,
    fashion_mnist_loaders,
    limit_threads,
    train_one_epoch,
)
from filterprune.torch import create_compressed_model, register_default_init_args
from filterprune.torch.quantization import set_quantizers_enabled


def demo_config(args: argparse.Namespace) -> NNCFConfig:
    """The demos' recipe (:func:`~filterprune.examples._config.demo_config`) with
    ``shrink_when_frozen``: the masks are chosen at once and the model is cut, so every
    fine-tuning epoch runs at pruned cost and distillation recovers the accuracy."""
    return _recipe_config(args, shrink_when_frozen=True)


def _pruning(ctrl):
    return ctrl.get("filter_pruning") if hasattr(ctrl, "child_ctrls") else ctrl


def fine_tune(ctrl, model, train_loader, test_loader, epochs: int, lr: float = LR) -> None:
    """Train under ``ctrl`` for ``epochs`` epochs (AdamW, cosine decay per step), reporting
    each one."""
    pruning = _pruning(ctrl)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    pruning.register_optimizer(optimizer)  # followed when shrink_when_frozen cuts the model
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(train_loader))

    def on_step(*_) -> None:
        ctrl.scheduler.step()
        decay.step()

    for epoch in range(epochs):
        ctrl.scheduler.epoch_step()
        result = train_one_epoch(model, train_loader, optimizer, desc=f"fine-tune {epoch + 1}",
                                 extra_loss=lambda _m: ctrl.loss(), on_step=on_step)  # fmt: skip
        acc = evaluate(model, test_loader)
        print(f"epoch {epoch + 1}/{epochs}: level {pruning.pruning_level:.3f}  "
              f"train loss {result['loss']:.4f}  test accuracy {acc:.4f}  "
              f"({result['seconds']:.0f}s)", flush=True)  # fmt: skip


def compress(dense, config: NNCFConfig, train_loader, test_loader, epochs: int):
    """Fine-tune a copy of ``dense`` under ``config``; returns the controller."""
    config = register_default_init_args(config, train_loader)
    ctrl, model = create_compressed_model(copy.deepcopy(dense).train(), config)
    fine_tune(ctrl, model, train_loader, test_loader, epochs)
    return ctrl


def load_baseline(args: argparse.Namespace):
    """The dense baseline: shipped with the package for the default settings, cached under
    ``--cache`` or trained (see :func:`~filterprune.examples._training.baseline`)."""
    limit_threads()
    # --test-limit is left out: it limits the demo's evaluation, not the baseline's
    # training (it made the shipped baseline miss and be trained again)
    base = baseline(args.cache, epochs=args.baseline_epochs, train_limit=args.train_limit)
    origin = "shipped" if base.shipped else "cached" if base.from_cache else "trained"
    print(f"baseline: {origin}")
    return base.model.eval()


def onnx_accuracy(ctrl, test_loader) -> float | None:
    """Accuracy of the exported int8 model (pruned filters removed) in ONNX Runtime, or
    ``None`` without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        ctrl.export_model(path, shrink=True)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = seen = 0
    for images, labels in test_loader:
        for image, label in zip(images.numpy(), labels.numpy(), strict=True):
            logits = sess.run(None, {name: image[None]})[0]
            correct += int(np.argmax(logits) == label)
            seen += 1
    return correct / max(seen, 1)


def main(argv: list[str] | None = None) -> dict:
    args = demo_arguments(__doc__.split("\n\n")[0], argv, **DEFAULTS)
    start = time.perf_counter()
    torch.manual_seed(0)
    dense = load_baseline(args)
    train_loader, test_loader = fashion_mnist_loaders(train_limit=args.train_limit,
                                                      test_limit=args.test_limit)  # fmt: skip
    dense_acc = evaluate(dense, test_loader)
    print(f"baseline: test accuracy {dense_acc:.4f}")

    ctrl = compress(dense, demo_config(args), train_loader, test_loader, args.epochs)
    stats = ctrl.statistics()
    print()
    print(stats)

    small = ctrl.strip().eval()  # pruned filters removed, fake-quant in place
    fp32 = set_quantizers_enabled(copy.deepcopy(small), False)
    accuracy = {"baseline_fp32": dense_acc, "pruned_fp32": evaluate(fp32, test_loader),
                "pruned_int8": evaluate(small, test_loader),
                "pruned_int8_onnxruntime": onnx_accuracy(ctrl, test_loader)}  # fmt: skip
    report = _report(ctrl, dense, fp32, accuracy, stats)
    report.update(test_images=len(test_loader.dataset), seconds=time.perf_counter() - start)
    _print_report(report, stats)
    atomic_write_text(Path(args.cache) / "demo-results.json", json.dumps(report, indent=2))
    return report


def _report(ctrl, dense, small, accuracy: dict, stats) -> dict:
    n_dense = sum(p.numel() for p in dense.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    lat1 = compare_latency(dense, small, torch.randn(1, 1, 28, 28), rounds=200, threads=1)
    lat64 = compare_latency(dense, small, torch.randn(64, 1, 28, 28), rounds=40)
    return {
        **{f"accuracy_{k}": v for k, v in accuracy.items()},
        "pruning_level": _pruning(ctrl).pruning_level,
        "flops_kept": stats.flops_kept,
        "params_kept": n_small / n_dense,
        "dense_params": n_dense,
        "pruned_params": n_small,
        "quantizers": stats.quantization.num_quantizers,
        "latency_batch1_ms": [lat1["a_median_ms"], lat1["b_median_ms"]],
        "latency_batch64_ms": [lat64["a_median_ms"], lat64["b_median_ms"]],
        "speedup_batch1": 1 / lat1["ratio"],
        "speedup_batch64": 1 / lat64["ratio"],
    }


def _print_report(report: dict, stats) -> None:
    print()
    print(f"Result (Fashion-MNIST test set, {report['test_images']:,} images)")
    ort_acc = report["accuracy_pruned_int8_onnxruntime"]
    print(f"  accuracy      : baseline FP32 {report['accuracy_baseline_fp32']:.4f} | "
          f"pruned FP32 {report['accuracy_pruned_fp32']:.4f} | "
          f"pruned INT8 {report['accuracy_pruned_int8']:.4f} (torch)"
          + (f", {ort_acc:.4f} (ONNX Runtime)" if ort_acc is not None else ""))  # fmt: skip
    print("                  (pruned FP32: the same stripped model with its quantizers off)")
    print(f"  FLOPs kept    : {stats.flops_kept:.3f} ({stats.current_flops / 1e6:.2f}M "
          f"of {stats.full_flops / 1e6:.2f}M)")  # fmt: skip
    print(f"  params kept   : {report['params_kept']:.3f} ({report['pruned_params']:,} of "
          f"{report['dense_params']:,})")  # fmt: skip
    for label, key in (("batch 1, 1 thread", "1"), ("batch 64", "64")):
        a, b = report[f"latency_batch{key}_ms"]
        print(f"  latency {label:<17}: dense {a:.3f} ms -> stripped FP32 {b:.3f} ms "
              f"({report[f'speedup_batch{key}']:.2f}x faster)")  # fmt: skip
    print(f"  total time    : {report['seconds']:.0f}s")


if __name__ == "__main__":
    main()
