"""End-to-end Keras demo: train a small CNN on Fashion-MNIST, prune it to half its FLOPs
and train it for 8-bit inference with ``model.fit`` and the compression callbacks, strip
the pruned filters and compare accuracy (FP32 baseline, pruned FP32, pruned INT8), FLOPs and
latency.

    python -m filterprune.examples.fashion_mnist_keras [--epochs 3] [--flops-target 0.5]

The same network and the same JSON config as the PyTorch demo
(:mod:`filterprune.examples.fashion_mnist`, :func:`~filterprune.examples._config.demo_config`):
``filter_pruning`` to ``pruning_flops_target`` 0.5 (the masks chosen once, at the start,
BatchNorm statistics re-estimated), ``knowledge_distillation`` from the dense model and
``quantization`` with its defaults, ``input_info`` in NCHW. Keras has no
``shrink_when_frozen``: the model trains masked and :meth:`strip` cuts it at the end.
Fine-tuning: AdamW, learning rate 1e-3 with cosine decay per step. Pruned FP32 is the
trained model with its quantizers left out; pruned INT8 is the same model with them, in
Keras and as int8 ONNX in ONNX Runtime."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from filterprune._atomic import atomic_write, atomic_write_text  # noqa: E402
from filterprune.datasets import load_fashion_mnist  # noqa: E402
from filterprune.examples._config import DEFAULTS, LR, demo_arguments
from filterprune.examples._config import demo_config as _recipe_config

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training pixels in [0, 1]
_CACHE_FORMAT = 2  # bump when small_cnn or the baseline recipe changes
layers = keras.layers


def limit_threads(threads: int = 2) -> None:
    """Cap TensorFlow's threads (the demo machine is small and shared)."""
    n = max(1, min(threads, os.cpu_count() or 1))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # the runtime was initialised already
        pass


def dataset(split: str, limit: int | None = None, batch_size: int = 128,
            shuffle: bool = False, seed: int = 0) -> tf.data.Dataset:  # fmt: skip
    """Fashion-MNIST as normalised NHWC float batches with int64 labels."""
    images, labels = load_fashion_mnist(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = ((images.astype("float32") / 255.0 - MEAN) / STD)[..., None]
    data = tf.data.Dataset.from_tensor_slices((x, labels))
    if shuffle:
        data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(2)


def _conv_bn_relu(x: Any, filters: int, name: str, strides: int = 1) -> Any:
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)  # PyTorch's 0.1
    return layers.ReLU(name=f"{name}_relu")(x)


def small_cnn(num_classes: int = 10, width: int = 32) -> keras.Model:
    """The Keras twin of the PyTorch demo's ``SmallCNN``: stride-2 stem conv, conv,
    max-pool, residual block, head conv, global average pool, dense (about 168k params)."""
    inp = keras.Input((28, 28, 1), name="image")
    x = _conv_bn_relu(inp, width, "stem", strides=2)  # the stride in the never-pruned stem
    x = layers.MaxPooling2D(2, name="pool")(_conv_bn_relu(x, 2 * width, "down"))
    y = _conv_bn_relu(x, 2 * width, "block_conv1")
    y = layers.Conv2D(2 * width, 3, padding="same", use_bias=False, name="block_conv2")(y)
    y = layers.BatchNormalization(momentum=0.9, name="block_bn2")(y)
    x = layers.ReLU(name="block_relu2")(layers.Add(name="block_add")([y, x]))
    x = _conv_bn_relu(x, 4 * width, "head")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, layers.Dense(num_classes, name="fc")(x), name="small_cnn")


def _compile(model: keras.Model, optimizer: Any) -> keras.Model:
    model.compile(optimizer=optimizer, metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    return model


def evaluate(model: keras.Model, data: tf.data.Dataset) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (in [0, 1])."""
    correct = seen = 0
    run = tf.function(lambda x: model(x, training=False))
    for x, y in data:
        correct += int(tf.reduce_sum(tf.cast(tf.argmax(run(x), 1) == y, tf.int32)))
        seen += int(y.shape[0])
    return correct / max(seen, 1)


def baseline(cache: str, epochs: int, train_limit: int | None) -> tuple[keras.Model, bool]:
    """Train :func:`small_cnn` once (AdamW, warm-up + cosine decay) and cache its weights."""
    recipe = {"format": _CACHE_FORMAT, "epochs": epochs, "lr": 3e-3, "wd": 1e-4,
              "batch": 128, "seed": 0, "train_limit": train_limit}  # fmt: skip
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(cache) / f"keras_smallcnn_e{epochs}_{digest}.weights.h5"
    keras.utils.set_random_seed(0)
    model = small_cnn()
    if path.is_file():
        model.load_weights(path)
        return model, True
    train = dataset("train", train_limit, shuffle=True)
    steps = epochs * int(train.cardinality())
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps - steps // 4, warmup_target=recipe["lr"], warmup_steps=steps // 4)
    _compile(model, keras.optimizers.AdamW(schedule, weight_decay=recipe["wd"]))
    model.fit(train, epochs=epochs, verbose=2, shuffle=False)  # the dataset shuffles
    atomic_write(path, lambda tmp: model.save_weights(tmp, overwrite=True), suffix=".weights.h5")
    return model, False


def compare_latency(model_a: keras.Model, model_b: keras.Model, x: np.ndarray,
                    rounds: int = 50, warmup: int = 5) -> dict[str, float]:  # fmt: skip
    """Median milliseconds of two models' graph-mode inference, timed interleaved."""
    fns = [tf.function(lambda t, m=m: m(t, training=False)) for m in (model_a, model_b)]
    t = tf.constant(x)
    for _ in range(warmup):
        for fn in fns:
            fn(t).numpy()
    times: list[list[float]] = [[], []]
    for r in range(rounds):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            start = time.perf_counter()
            fns[i](t).numpy()
            times[i].append((time.perf_counter() - start) * 1000.0)
    a, b = statistics.median(times[0]), statistics.median(times[1])
    return {"a_median_ms": a, "b_median_ms": b, "ratio": b / a}


def demo_config(args: Any) -> Any:
    """The demos' recipe (:func:`~filterprune.examples._config.demo_config`): pruning to
    ``--flops-target``, distillation, then 8-bit quantization."""
    return _recipe_config(args)


def onnx_accuracy(ctrl: Any, data: tf.data.Dataset, folder: str) -> tuple[float, int] | None:
    """Accuracy of the exported int8 ONNX model in ONNX Runtime, and the file's size
    (``None`` without tf2onnx or onnxruntime)."""
    try:
        import onnxruntime as ort
        import tf2onnx  # noqa: F401
    except ImportError:
        return None
    path = Path(folder) / "keras_pruned_int8.onnx"
    ctrl.export_model(str(path), shrink=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = seen = 0
    for x, y in data:
        logits = sess.run(None, {name: x.numpy()})[0]
        correct += int((logits.argmax(1) == y.numpy()).sum())
        seen += int(y.shape[0])
    return correct / max(seen, 1), path.stat().st_size


def train_compressed(args: Any, dense: keras.Model, test: tf.data.Dataset,
                     config: Any = None) -> tuple[Any, Any]:  # fmt: skip
    """Fine-tune a copy of ``dense`` under ``config`` (:func:`demo_config` by default) with
    ``model.fit`` and the callbacks: AdamW at :data:`LR`, cosine decay per step.

    Returns:
        ``(controller, its filter_pruning controller)``.
    """
    from filterprune.tensorflow import (
        create_compressed_model,
        create_compression_callbacks,
        register_default_init_args,
    )

    model = small_cnn()
    model.set_weights(dense.get_weights())
    train = dataset("train", args.train_limit, shuffle=True, seed=1)
    if config is None:
        config = demo_config(args)
    ctrl, model = create_compressed_model(model, register_default_init_args(config, train))
    decay = keras.optimizers.schedules.CosineDecay(LR, args.epochs * int(train.cardinality()))
    _compile(model, keras.optimizers.AdamW(decay, weight_decay=1e-4))
    log_dir = str(Path(args.cache) / "keras_compression_log")
    callbacks = create_compression_callbacks(ctrl, log_dir=log_dir)
    pruning = ctrl.get("filter_pruning") if hasattr(ctrl, "child_ctrls") else ctrl
    precision = "INT8" if any(a["algorithm"] == "quantization" for a in config.algorithms()) \
        else "FP32"  # fmt: skip
    callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: print(
        f"epoch {epoch + 1}/{args.epochs}: level {pruning.pruning_level:.3f}  train loss "
        f"{logs['loss']:.4f}  test accuracy ({precision}) {evaluate(model, test):.4f}")))
    model.fit(train, epochs=args.epochs, callbacks=callbacks, verbose=0, shuffle=False)
    return ctrl, pruning


def main(argv: list[str] | None = None) -> dict:
    args = demo_arguments(__doc__.split("\n\n")[0], argv, **DEFAULTS)
    start = time.perf_counter()
    limit_threads()
    test = dataset("test", args.test_limit)
    dense, cached = baseline(args.cache, args.baseline_epochs, args.train_limit)
    dense_acc = evaluate(dense, test)
    print(f"baseline: test accuracy {dense_acc:.4f} ({'cached' if cached else 'trained'})")

    ctrl, pruning = train_compressed(args, dense, test)
    stats = ctrl.statistics()
    print()
    print(stats)

    small = pruning.strip()  # pruned FP32: the trained weights, quantizers left out
    small_int8 = ctrl.strip()
    small_acc, int8_acc = evaluate(small, test), evaluate(small_int8, test)
    onnx = onnx_accuracy(ctrl, test, args.cache)
    n_dense, n_small = dense.count_params(), small.count_params()
    lat1 = compare_latency(dense, small, np.random.rand(1, 28, 28, 1).astype("float32"), 200)
    lat64 = compare_latency(dense, small, np.random.rand(64, 28, 28, 1).astype("float32"), 40)
    report = {
        "baseline_accuracy": dense_acc, "pruned_accuracy": small_acc,
        "pruned_int8_accuracy": int8_acc,
        "pruned_int8_onnxruntime_accuracy": onnx[0] if onnx else None,
        "pruned_int8_onnx_bytes": onnx[1] if onnx else None,
        "pruning_level": pruning.pruning_level, "flops_kept": stats.flops_kept,
        "params_kept": n_small / n_dense, "dense_params": n_dense, "pruned_params": n_small,
        "latency_batch1_ms": [lat1["a_median_ms"], lat1["b_median_ms"]],
        "latency_batch64_ms": [lat64["a_median_ms"], lat64["b_median_ms"]],
        "speedup_batch1": 1 / lat1["ratio"], "speedup_batch64": 1 / lat64["ratio"],
        "test_images": sum(int(y.shape[0]) for _, y in test),
        "seconds": time.perf_counter() - start,
    }  # fmt: skip
    _print_report(report, stats)
    atomic_write_text(Path(args.cache) / "demo-keras-results.json", json.dumps(report, indent=2))
    return report


def _print_report(report: dict, stats: Any) -> None:
    onnx = report["pruned_int8_onnxruntime_accuracy"]
    print()
    print(f"Result (Fashion-MNIST test set, {report['test_images']:,} images, Keras)")
    print(f"  accuracy      : FP32 baseline {report['baseline_accuracy']:.4f} | pruned FP32 "
          f"{report['pruned_accuracy']:.4f} | pruned INT8 {report['pruned_int8_accuracy']:.4f}"
          + (f" (ONNX file in ONNX Runtime {onnx:.4f})" if onnx is not None else ""))  # fmt: skip
    print(f"  FLOPs kept    : {stats.flops_kept:.3f} ({stats.current_flops / 1e6:.2f}M "
          f"of {stats.full_flops / 1e6:.2f}M)")  # fmt: skip
    print(f"  params kept   : {report['params_kept']:.3f} ({report['pruned_params']:,} of "
          f"{report['dense_params']:,})")  # fmt: skip
    for label, key in (("batch 1", "latency_batch1_ms"), ("batch 64", "latency_batch64_ms")):
        dense_ms, small_ms = report[key]
        print(f"  latency {label:<9}: dense {dense_ms:.3f} ms -> stripped FP32 {small_ms:.3f} ms "
              f"({dense_ms / small_ms:.2f}x faster)")  # fmt: skip
    print(f"  total time    : {report['seconds']:.0f}s")


if __name__ == "__main__":
    main()
