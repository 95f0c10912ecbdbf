"""Keras: accuracy right after a one-shot cut, before any fine-tuning, per recovery.

The Keras twin of ``no_finetune.py``, on the Keras demo's small CNN (its cached 2-epoch
Fashion-MNIST baseline, trained here if missing): the model is pruned once at each FLOPs
target by the committed recipe's settings and tested as cut, with BatchNorm re-estimated,
with the kept weights refit (``reconstruction_after_mask_change``), and with both. Every
recovery reads the same registered training images. The baseline was trained on the
whole training set, so accuracy is on the test set. Float32, two TensorFlow threads.

    PYTHONPATH=src .venv/bin/python benchmarks/accuracy/no_finetune_keras.py
"""

from __future__ import annotations

import argparse
import time

from filterprune import NNCFConfig
from filterprune.examples.fashion_mnist_keras import baseline, dataset, evaluate, limit_threads
from filterprune.tensorflow import create_compressed_model, register_default_init_args

RECOVERIES = {"none": {}, "bn": {"bn_adaptation_after_mask_change": True},
              "refit": {"reconstruction_after_mask_change": True},
              "refit+bn": {"reconstruction_after_mask_change": True,
                           "bn_adaptation_after_mask_change": True}}  # fmt: skip


def cut(weights, target: float, recovery: str, samples: int, cache: str):
    """The baseline pruned once at ``target`` with ``recovery``; the controller and seconds."""
    dense, _ = baseline(cache, 2, None)
    dense.set_weights(weights)
    params = {"schedule": "baseline", "pruning_flops_target": target, "filters_multiple_of": 1,
              "filter_importance": "coupled_L2", "prune_first_conv": True,
              "prune_downsample_convs": True, "num_reconstruction_samples": samples,
              **RECOVERIES[recovery]}  # fmt: skip
    bn = samples if "bn" in recovery else 0
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 28, 28, 1]}, "compression": {
        "algorithm": "filter_pruning", "pruning_init": target, "params": params,
        "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": bn}}}})  # fmt: skip
    train = dataset("train", samples, batch_size=128)
    config = register_default_init_args(config, train.map(lambda x, y: x))
    start = time.perf_counter()
    ctrl, _ = create_compressed_model(dense, config)
    return ctrl, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--samples", type=int, default=512,
                        help="training images each recovery reads (default 512)")
    parser.add_argument("--cache", default=".cache")
    args = parser.parse_args(argv)
    limit_threads()
    test = dataset("test")
    dense, cached = baseline(args.cache, 2, None)
    weights = dense.get_weights()
    print(f"small_cnn baseline ({'cached' if cached else 'trained'}): test "
          f"{evaluate(dense, test):.4f}; {args.samples} training images per recovery; "
          "float32, 2 TensorFlow threads")  # fmt: skip
    print("\n| FLOPs removed (kept) | recovery | test | seconds |")
    print("|---|---|---|---|")
    for target in args.targets:
        for recovery in RECOVERIES:
            ctrl, seconds = cut(weights, target, recovery, args.samples, args.cache)
            kept = ctrl.statistics().flops_kept
            print(f"| {target:.0%} ({kept:.3f}) | {recovery} | {evaluate(ctrl.strip(), test):.4f} "
                  f"| {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
