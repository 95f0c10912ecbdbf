"""End-to-end demo: train a small CNN on Fashion-MNIST, prune and quantize it (8-bit QAT)
while fine-tuning, strip the pruned filters and compare accuracy, FLOPs and latency.

    python -m filterprune.examples.fashion_mnist [--epochs 3] [--target 0.4]

Uses the reference config: ``filter_pruning`` (the seed's pruning_init 0.1 ->
pruning_target 0.4, ``pruning_steps`` shortened to the fine-tuning epochs) followed by
``{"algorithm": "quantization"}`` with its defaults.
"""

from __future__ import annotations

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
from filterprune.torch.quantization import set_quantizers_enabled


def demo_config(epochs: int, init: float, target: float) -> NNCFConfig:
    """The seed's pruning settings, then 8-bit quantization with defaults."""
    config = pruning_config(epochs, init, target)
    return NNCFConfig.from_dict({**config, "compression": [
        config["compression"], {"algorithm": "quantization"}]})  # fmt: skip


def fine_tune(ctrl, model, train_loader, test_loader, epochs: int) -> None:
    """Train with pruning and QAT for ``epochs`` epochs, reporting each one."""
    pruning = ctrl.get("filter_pruning")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for epoch in range(epochs):
        ctrl.scheduler.epoch_step()
        result = train_one_epoch(model, train_loader, optimizer, desc=f"fine-tune {epoch + 1}",
                                 extra_loss=lambda _m: ctrl.loss(),
                                 on_step=lambda *_: ctrl.scheduler.step())  # fmt: skip
        acc = evaluate(model, test_loader)
        print(f"epoch {epoch + 1}/{epochs}: level {pruning.pruning_level:.3f}  "
              f"train loss {result['loss']:.4f}  test accuracy (int8) {acc:.4f}  "
              f"({result['seconds']:.0f}s)")  # fmt: skip


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
    config = register_default_init_args(demo_config(args.epochs, args.init, args.target),
                                        train_loader)  # fmt: skip
    ctrl, model = create_compressed_model(model, config)
    fine_tune(ctrl, model, train_loader, test_loader, args.epochs)
    stats = ctrl.statistics()
    print()
    print(stats)

    small = ctrl.strip().eval()  # pruned filters removed, fake-quant in place
    fp32 = set_quantizers_enabled(copy.deepcopy(small), False)
    accuracy = {"baseline_fp32": dense_acc, "pruned_fp32": evaluate(fp32, test_loader),
                "pruned_int8": evaluate(small, test_loader),
                "pruned_int8_onnxruntime": onnx_accuracy(ctrl, test_loader)}  # fmt: skip
    report = _report(ctrl, dense, fp32, accuracy, stats)
    report["seconds"] = time.perf_counter() - start
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
        "pruning_level": ctrl.get("filter_pruning").pruning_level,
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
    print("Result (Fashion-MNIST test set, 10,000 images)")
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
