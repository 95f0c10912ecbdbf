"""Shared helpers of the Keras tests: configs, a small Functional ResNet, comparisons."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
layers = keras.layers

from filterprune import NNCFConfig  # noqa: E402

try:  # the machine is small and shared
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
except RuntimeError:  # the runtime was initialised already
    pass


def make_config(sample=(1, 32, 32, 3), **params):
    init = params.pop("pruning_init", 0.5)
    extra = params.pop("extra", {})
    algo = {"algorithm": "filter_pruning", "pruning_init": init, "params": params, **extra}
    return NNCFConfig.from_dict({"input_info": {"sample_size": list(sample)}, "compression": algo})


def compression_config(*algos, register=True, sample=(1, 32, 32, 3), **top):
    """A config running ``algos`` in order; ``register``: with 16 random init images."""
    from filterprune.tensorflow import register_default_init_args

    config = NNCFConfig.from_dict({"input_info": {"sample_size": list(sample)},
                                   "compression": list(algos), **top})  # fmt: skip
    if register:
        dataset = tf.data.Dataset.from_tensor_slices(regression_data(0)[0]).batch(8)
        config = register_default_init_args(config, dataset)
    return config


def conv_bn_net():
    """stem conv -> mid conv (16 filters) -> BatchNorm "bn" -> ReLU -> head, 16x16 input."""
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", name="stem")(inp)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="mid")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="bn")(x))
    x = layers.Conv2D(4, 1, name="head")(x)
    return keras.Model(inp, layers.GlobalAveragePooling2D()(x))


def regression_batches(side, seed=0, n=32, batch=8):
    """``(x, y, dataset)``: ``n`` random ``side`` x ``side`` RGB images, 10 targets each,
    and the pairs batched."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, side, side, 3)).astype("float32")
    y = rng.normal(size=(n, 10)).astype("float32")
    return x, y, tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def randomize_bn(model, seed=0):
    """Give BatchNorms non-trivial statistics so inference outputs have a real scale."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.0, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, n).astype("float32"))
    return model


def assert_strip_equal(ctrl, model, x, tol=1e-4, shrink=True):
    ref = model(x, training=False).numpy()
    small = ctrl.strip(shrink=shrink)
    out = small(x, training=False).numpy()
    assert out.shape == ref.shape
    scale = max(float(np.abs(ref).max()), 1e-6)
    assert float(np.abs(ref - out).max()) / scale <= tol
    return small


def small_resnet(name="small_resnet", dropout=0.1):
    """Residual add, concat, depthwise conv, SE gate, separable conv, flatten -> dense."""
    inp = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inp)
    x = layers.ReLU()(layers.BatchNormalization(name="bn0")(x))
    y = layers.Conv2D(16, 3, padding="same", use_bias=False, name="a")(x)
    y = layers.ReLU()(layers.BatchNormalization(name="bna")(y))
    x = layers.Add(name="residual")([x, y])
    x = layers.Concatenate(name="cat")([x, layers.Conv2D(24, 1, name="b")(x)])
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    gate = layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = layers.Conv2D(8, 1, activation="relu", name="se1")(gate)
    gate = layers.Conv2D(40, 1, activation="sigmoid", name="se2")(gate)
    x = layers.Multiply(name="gate")([x, gate])
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="down")(x)
    x = layers.SeparableConv2D(32, 3, padding="same", name="sep")(x)
    x = layers.AveragePooling2D(4)(x)
    x = layers.Dense(64, activation="relu", name="fc1")(layers.Flatten()(x))
    out = layers.Dense(10, name="fc2")(layers.Dropout(dropout)(x))
    return keras.Model(inp, out, name=name)


def regression_data(seed, n=16):
    """``n`` random 32x32 RGB images and 10 regression targets."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 32, 32, 3)).astype("float32")
    return x, rng.normal(size=(n, 10)).astype("float32")


def fit_epochs(ctrl, model, data, first, last, extra=()):
    """``model.fit`` over epochs ``first``..``last`` with the compression callbacks."""
    from filterprune.tensorflow import create_compression_callbacks

    callbacks = create_compression_callbacks(ctrl) + list(extra)
    return model.fit(*data, batch_size=8, epochs=last, initial_epoch=first, shuffle=False,
                     verbose=0, callbacks=callbacks)  # fmt: skip


def train_and_resume(build, config, ckpt_dir):
    """Four epochs with a checkpoint after the second, then the reference's resume from it.

    Returns:
        ``(ctrl, model)`` trained without a break, and ``(ctrl, model)`` resumed from the
        checkpoint (a fresh ``build()``, epochs 2-4 still to run).
    """
    from filterprune.tensorflow import (
        CheckpointManagerCallback,
        TFCompressionState,
        TFCompressionStateLoader,
        create_compressed_model,
    )

    ctrl, model = create_compressed_model(build(), config)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    checkpoint = tf.train.Checkpoint(model=model, compression_state=TFCompressionState(ctrl))
    fit_epochs(ctrl, model, regression_data(1), 0, 2,
               [CheckpointManagerCallback(checkpoint, ckpt_dir)])  # fmt: skip
    path = tf.train.latest_checkpoint(ckpt_dir)
    fit_epochs(ctrl, model, regression_data(2), 2, 4)
    # resume, as in the reference
    checkpoint = tf.train.Checkpoint(compression_state=TFCompressionStateLoader())
    checkpoint.restore(path).expect_partial()
    state = checkpoint.compression_state.state
    ctrl2, model2 = create_compressed_model(build(), config, state)
    model2.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    tf.train.Checkpoint(model=model2).restore(path).expect_partial()
    return (ctrl, model), (ctrl2, model2)


_TWO_CPUS = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, sys.argv[1])
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
"""


def run_on_two_cpus(body, tmp_path):
    """Run ``body`` in a subprocess that has ``strategy``, a MirroredStrategy over two
    logical CPU devices (they must be set before TensorFlow initialises, which this
    process has done); returns the JSON it prints after ``RESULT ``."""
    import json
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "mirrored.py"
    script.write_text(_TWO_CPUS + textwrap.dedent(body))
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, str(script), here], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1][7:])
