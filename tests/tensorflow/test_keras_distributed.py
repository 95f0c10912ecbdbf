"""distributed(): under tf.distribute.MirroredStrategy every replica reads the same masks.

Runs in a subprocess: two logical CPU devices must be configured before TensorFlow
initialises, which the other tests of the session have done already.
"""

import pytest

pytest.importorskip("tensorflow")

from keras_helpers import run_on_two_cpus  # noqa: E402

_SCRIPT = """
    from keras_helpers import keras, make_config, randomize_bn, regression_batches, small_resnet
    from filterprune.tensorflow import create_compressed_model, create_compression_callbacks

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = randomize_bn(small_resnet(dropout=0.0))
        config = make_config(pruning_init=0.0, pruning_target=0.5, pruning_steps=2,
                             prune_first_conv=True)
        ctrl, model = create_compressed_model(model, config)
        ctrl.distributed()
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x, y, data = regression_batches(32)
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


_SIGNALS = """
    from keras_helpers import NNCFConfig, keras, layers, regression_batches
    from filterprune.tensorflow import create_compressed_model, create_compression_callbacks

    def net():  # no BatchNorm: a replica's outputs equal the single-device ones
        inp = keras.Input((16, 16, 3))
        x = layers.Conv2D(8, 3, activation="relu", name="c1")(inp)
        x = layers.Conv2D(16, 3, activation="relu", name="c2")(x)
        x = layers.Conv2D(16, 3, name="c3")(x)
        return keras.Model(inp, layers.Dense(10, name="fc")(layers.GlobalAveragePooling2D()(x)))

    with strategy.scope():
        keras.utils.set_random_seed(0)
        config = NNCFConfig.from_dict({
            "input_info": {"sample_size": [1, 16, 16, 3]},
            "compression": [
                {"algorithm": "filter_pruning", "pruning_init": 0.0,
                 "params": {"pruning_target": 0.5, "pruning_steps": 2,
                            "filter_importance": "taylor"}},
                {"algorithm": "knowledge_distillation", "type": "mse", "scale": 100.0}]})
        ctrl, model = create_compressed_model(net(), config)
        ctrl.distributed()
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x, y, data = regression_batches(16)
    history = model.fit(data, epochs=3, verbose=0, callbacks=create_compression_callbacks(ctrl))
    teacher = ctrl.get("knowledge_distillation").teacher
    task, kd = [], []
    for i in range(0, 32, 8):  # the last epoch's steps, by hand on one device
        out = model(x[i:i + 8], training=True).numpy()
        task.append(np.mean((out - y[i:i + 8]) ** 2))
        kd.append(np.mean((out - teacher(x[i:i + 8], training=False).numpy()) ** 2))
    taylor = ctrl.get("filter_pruning").taylor
    print("RESULT " + json.dumps({
        "level": ctrl.get("filter_pruning").pruning_level,
        "passes": {k: [int(v.numpy()) for v in p.values] for k, p in taylor.passes.items()},
        "totals": {k: [v.numpy().tolist() for v in t.values] for k, t in taylor.totals.items()},
        "loss": history.history["loss"][-1], "task": float(np.mean(task)),
        "kd": float(np.mean(kd)),
    }))
    """


def test_taylor_and_distillation_under_mirrored_strategy(tmp_path):
    """Taylor totals are mirrored and identical on both replicas; ``fit`` reports the task
    loss plus the distillation term counted once, as on one device."""
    result = run_on_two_cpus(_SIGNALS, tmp_path)
    assert result["level"] == pytest.approx(0.5)
    for name, passes in result["passes"].items():
        assert passes[0] == passes[1] == 12, name  # 4 batches x 3 epochs
        first, second = result["totals"][name]
        assert first == second and max(first) > 0, name
    assert 100.0 * result["kd"] > 0.2 * result["task"]  # a term the check can see
    assert result["loss"] == pytest.approx(result["task"] + 100.0 * result["kd"], rel=1e-4)


_REFIT = """
    import numpy as np
    from keras_helpers import keras, make_config, randomize_bn, regression_batches, small_resnet
    from filterprune.tensorflow import create_compressed_model, register_default_init_args

    x, y, data = regression_batches(32)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = randomize_bn(small_resnet(dropout=0.0))
        config = make_config(pruning_init=0.0, pruning_target=0.5, schedule="baseline",
                             prune_first_conv=True, reconstruction_after_mask_change=True,
                             num_reconstruction_samples=32)
        config = register_default_init_args(config, data.map(lambda a, b: a))
        ctrl, model = create_compressed_model(model, config)
        ctrl.distributed()
    before = model.get_layer("down").kernel.numpy()
    ctrl.scheduler.epoch_step()  # the cut, then the refit from the cross-replica context
    kernel = model.get_layer("down").kernel
    print("RESULT " + json.dumps({
        "level": ctrl.pruning_level,
        "changed": bool(np.abs(kernel.numpy() - before).max() > 1e-4),
        "kernel_replicas": [v.numpy().ravel().tolist() for v in kernel.value.values],
    }))
    """


def test_refit_under_mirrored_strategy_writes_every_replica(tmp_path):
    result = run_on_two_cpus(_REFIT, tmp_path)
    assert result["level"] == pytest.approx(0.5)
    assert result["changed"]
    first, second = result["kernel_replicas"]
    assert first == second
