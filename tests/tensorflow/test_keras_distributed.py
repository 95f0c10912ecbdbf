"""distributed(): under tf.distribute.MirroredStrategy every replica reads the same masks.

Runs in a subprocess: two logical CPU devices must be configured before TensorFlow
initialises, which the other tests of the session have done already.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("tensorflow")

_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from keras_helpers import keras, make_config, randomize_bn, small_resnet
    from filterprune.tensorflow import create_compressed_model, create_compression_callbacks

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = randomize_bn(small_resnet(dropout=0.0))
        config = make_config(pruning_init=0.0, pruning_target=0.5, pruning_steps=2,
                             prune_first_conv=True)
        ctrl, model = create_compressed_model(model, config)
        ctrl.distributed()
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 32, 32, 3)).astype("float32")
    y = rng.normal(size=(32, 10)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model.fit(data, epochs=3, verbose=0, callbacks=create_compression_callbacks(ctrl))
    masks = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for key in ("_fp_weight_masks", "_fp_channel_tables"):
            for attr, var in layer.__dict__.get(key, {}).items():
                masks[f"{layer.name}.{attr}"] = [v.numpy().ravel().tolist() for v in var.values]
    kernel = model.get_layer("b").kernel
    print("RESULT " + json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "masks": masks,
        "level": ctrl.pruning_level,
        "kernel_replicas": [v.numpy().ravel().tolist() for v in kernel.value.values],
    }))
    """
)


def test_masks_identical_on_every_replica(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "mirrored.py"
    script.write_text(_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), here], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][7:])
    assert result["replicas"] == 2
    assert result["level"] == pytest.approx(0.5)
    masks = result["masks"]
    assert masks and any(0.0 in replicas[0] for replicas in masks.values())
    for name, replicas in masks.items():
        assert len(replicas) == 2, name  # a mirrored variable: one copy per replica
        assert replicas[0] == replicas[1], name
    first, second = result["kernel_replicas"]
    assert first == second  # the replicas trained in lockstep
