"""The weight refit on a deep net with few samples: how many layers it refits, how close
their outputs come back to the dense model's, and how long it takes.

ResNet-50 (torchvision or ``keras.applications``), random init with every BatchNorm given
seeded non-degenerate statistics, 128x128 random inputs, one-shot cut at a FLOPs target
with ``reconstruction_after_mask_change``, reading ``--samples`` registered images.
Float32, one thread. The logits of a random 50-layer net are no measure here: a 30% cut
changes them entirely (relative error about 1 with or without the refit), so the refit is
judged by its layers' outputs on the recorded images, as its log line gives them.

    PYTHONPATH=src .venv/bin/python benchmarks/accuracy/refit_deep.py --frontend torch
    PYTHONPATH=src .venv/bin/python benchmarks/accuracy/refit_deep.py --frontend keras
"""

from __future__ import annotations

import argparse
import logging
import re
import time

import numpy as np

from filterprune import NNCFConfig


class _Notes(logging.Handler):
    """Counts the refit's log lines: layers left for too few samples, layers refit."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.too_few = 0
        self.summary = ""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.too_few += "raise num_reconstruction_samples" in text
        if text.startswith("reconstruction:"):
            self.summary = text


def _config(sample: list[int], target: float, samples: int) -> NNCFConfig:
    params = {"schedule": "baseline", "pruning_flops_target": target, "filters_multiple_of": 1,
              "filter_importance": "coupled_L2", "prune_first_conv": True,
              "prune_downsample_convs": True, "num_reconstruction_samples": samples,
              "reconstruction_after_mask_change": True}  # fmt: skip
    return NNCFConfig.from_dict({"input_info": {"sample_size": sample}, "compression": {
        "algorithm": "filter_pruning", "pruning_init": target, "params": params}})


def _torch(args) -> float:
    import torch
    import torchvision

    from filterprune.torch import create_compressed_model, register_default_init_args

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dense = torchvision.models.resnet50(num_classes=10)
    g = torch.Generator().manual_seed(0)
    for m in dense.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # zero-init last gammas would hide branches
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    dense.eval()
    side = args.side
    data = torch.utils.data.TensorDataset(torch.randn(args.samples, 3, side, side, generator=g))
    config = _config([1, 3, side, side], args.target, args.samples)
    config = register_default_init_args(config, torch.utils.data.DataLoader(data, batch_size=32))
    start = time.perf_counter()
    create_compressed_model(dense, config)
    return time.perf_counter() - start


def _keras(args) -> float:
    import keras
    import tensorflow as tf

    from filterprune.tensorflow import create_compressed_model, register_default_init_args

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(0)
    side = args.side

    dense = keras.applications.ResNet50(weights=None, input_shape=(side, side, 3), classes=10)
    rng = np.random.default_rng(0)
    for layer in dense.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.0, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, n).astype("float32"))
    images = rng.normal(size=(args.samples, side, side, 3)).astype("float32")
    config = _config([1, side, side, 3], args.target, args.samples)
    data = tf.data.Dataset.from_tensor_slices(images).batch(32)
    config = register_default_init_args(config, data)
    start = time.perf_counter()
    create_compressed_model(dense, config)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frontend", choices=["torch", "keras"], default="torch")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--target", type=float, default=0.3)
    args = parser.parse_args(argv)
    notes = _Notes()
    log = logging.getLogger("filterprune")
    log.addHandler(notes)
    log.setLevel(logging.INFO)
    run = _torch if args.frontend == "torch" else _keras
    seconds = run(args)
    found = re.search(r"(\d+) layers refit.*error ([\d.]+) -> ([\d.]+)", notes.summary)
    refit, before, after = found.groups() if found else ("0", "-", "-")
    print(f"{args.frontend} ResNet-50, {args.side}x{args.side}, {args.samples} samples, FLOPs "
          f"target {args.target}: {refit} layers refit, {notes.too_few} left for too few "
          f"samples; their outputs' mean relative error {before} -> {after}; pruning with "
          f"the refit took {seconds:.0f} s (float32, one thread)")  # fmt: skip


if __name__ == "__main__":
    main()
