"""distributed(): under tf.distribute.MirroredStrategy every replica reads the same masks.

Runs in a subprocess: two logical CPU devices must be configured before TensorFlow
initialises, which the other tests of the session have done already.
"""

import pytest

pytest.importorskip("tensorflow")

from keras_helpers import run_on_two_cpus  # noqa: E402

_SCRIPT = """
    from keras_helpers import keras, make_config, randomize_bn, small_resnet
    from filterprune.tensorflow import create_compressed_model, create_compression_callbacks

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


def test_masks_identical_on_every_replica(tmp_path):
    result = run_on_two_cpus(_SCRIPT, tmp_path)
    assert result["replicas"] == 2
    assert result["level"] == pytest.approx(0.5)
    masks = result["masks"]
    assert masks and any(0.0 in replicas[0] for replicas in masks.values())
    for name, replicas in masks.items():
        assert len(replicas) == 2, name  # a mirrored variable: one copy per replica
        assert replicas[0] == replicas[1], name
    first, second = result["kernel_replicas"]
    assert first == second  # the replicas trained in lockstep
