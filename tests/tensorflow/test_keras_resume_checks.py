"""Keras resume: Taylor totals travel in the compression state, and quantizers keyed by
auto-generated layer names match a model built a second time in the same process."""

import json

import numpy as np
import pytest
from keras_helpers import keras, layers, randomize_bn, tf

from filterprune import ConfigError, NNCFConfig
from filterprune.tensorflow import create_compressed_model

PRUNING = {"algorithm": "filter_pruning", "pruning_init": 0.1,
           "params": {"pruning_target": 0.6, "pruning_steps": 4, "prune_first_conv": True,
                      "filters_multiple_of": 1}}  # fmt: skip
QUANT = {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 8}}}
SIDE = 12


def _tiny(extra_dense=False, named=True):
    """Named convs (unless not ``named``); the Flatten and Dropout are named by Keras
    (``flatten_3``...)."""
    keras.utils.set_random_seed(0)
    name = (lambda n: n) if named else (lambda n: None)
    inp = keras.Input((SIDE, SIDE, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name=name("c1"))(inp)
    x = layers.ReLU()(layers.BatchNormalization(name=name("bn1"))(x))
    x = layers.Conv2D(8, 3, padding="same", name=name("c2"))(x)
    x = layers.Flatten()(layers.AveragePooling2D(4)(x))
    if extra_dense:
        x = layers.Dense(6)(x)
    out = layers.Dense(4, name="head")(layers.Dropout(0.0)(x))
    return randomize_bn(keras.Model(inp, out))


def _data(seed, n=8):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, SIDE, SIDE, 3)).astype("float32"),
            rng.normal(size=(n, 4)).astype("float32"))  # fmt: skip


def _config(*algos):
    from filterprune.tensorflow import register_default_init_args

    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, SIDE, SIDE, 3]},
                                   "compression": list(algos)})  # fmt: skip
    return register_default_init_args(config, tf.data.Dataset.from_tensor_slices(
        _data(0)[0]).batch(4))  # fmt: skip


def _fit(ctrl, model, seed, first, last):
    from filterprune.tensorflow import create_compression_callbacks

    model.fit(*_data(seed), batch_size=4, epochs=last, initial_epoch=first, shuffle=False,
              verbose=0, callbacks=create_compression_callbacks(ctrl))  # fmt: skip


def _resume_pair(algos, named=True):
    """Uninterrupted: 2 epochs, save (the state through JSON, the weights), 2 more.
    Resumed: the model built again in this process (other auto-generated names), then
    the same 2 epochs."""
    keras.utils.set_random_seed(1)
    ctrl, model = create_compressed_model(_tiny(named=named), _config(*algos))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    _fit(ctrl, model, 1, 0, 2)
    state = json.loads(json.dumps(ctrl.get_compression_state()))
    weights = [w.numpy() for w in model.weights]
    _fit(ctrl, model, 2, 2, 4)
    keras.utils.set_random_seed(1)
    ctrl2, model2 = create_compressed_model(_tiny(named=named), _config(*algos), state)
    model2.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    for w, value in zip(model2.weights, weights, strict=True):
        w.assign(value)
    _fit(ctrl2, model2, 2, 2, 4)
    return (ctrl, model), (ctrl2, model2)


def _assert_same(model, model2):
    for a, b in zip(model.weights, model2.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    x = _data(9, n=2)[0]
    np.testing.assert_array_equal(model(x, training=False).numpy(),
                                  model2(x, training=False).numpy())  # fmt: skip


TAYLOR = {**PRUNING, "params": {**PRUNING["params"], "filter_importance": "taylor"}}


def test_taylor_resume_equals_uninterrupted_run():
    taylor = TAYLOR
    (ctrl, model), (ctrl2, model2) = _resume_pair([taylor])
    _assert_same(model, model2)
    state = ctrl.get_compression_state()
    assert set(state["taylor"]["totals"]) == {"c1", "c2"}
    assert state == ctrl2.get_compression_state()  # masks, level and totals


def test_quantized_model_built_twice_resumes():
    (ctrl, model), (ctrl2, model2) = _resume_pair([PRUNING, QUANT])
    saved = ctrl.get_compression_state()["children"][1]["quantizers"]
    resumed = ctrl2.get_compression_state()["children"][1]["quantizers"]
    assert list(saved) != list(resumed)  # flatten_3 and flatten_4, say
    assert list(saved.values()) == list(resumed.values())
    _assert_same(model, model2)


def test_unnamed_model_built_twice_resumes():
    (ctrl, model), (ctrl2, model2) = _resume_pair([TAYLOR, QUANT], named=False)
    saved = ctrl.get_compression_state()["children"][0]["taylor"]["totals"]
    resumed = ctrl2.get_compression_state()["children"][0]["taylor"]["totals"]
    assert list(saved) != list(resumed)  # conv2d_4 and conv2d_6, say
    assert list(saved.values()) == list(resumed.values())
    _assert_same(model, model2)


def test_quantizers_of_another_model_name_clear_session():
    ctrl, _ = create_compressed_model(_tiny(), _config(QUANT))
    state = ctrl.get_compression_state()
    with pytest.raises(ConfigError, match=r"missing.*unexpected.*|clear_session") as err:
        create_compressed_model(_tiny(extra_dense=True), _config(QUANT), state)
    assert "keras.backend.clear_session()" in str(err.value)
    assert "names" in str(err.value)


def test_changed_quantizer_settings_are_refused():
    ctrl, _ = create_compressed_model(_tiny(), _config(QUANT))
    state = ctrl.get_compression_state()
    changed = {**QUANT, "weights": {"per_channel": False}}
    with pytest.raises(ConfigError, match=r"weight:c1.*per_channel=True.*weights.per_channel"):
        create_compressed_model(_tiny(), _config(changed), state)
