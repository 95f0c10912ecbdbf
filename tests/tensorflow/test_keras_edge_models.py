"""Keras models at the edges of the channel analysis: a layer shared by an outer and a nested
model, activations that act across channels, LoRA, Python code in the model, comparisons.

Every weight (biases, LoRA factors, BatchNorm statistics) is redrawn before comparing, so
no branch hides behind a zero.
"""

import numpy as np
from keras_helpers import assert_strip_equal, keras, layers, make_config, randomize_bn

from filterprune.tensorflow import create_compressed_model

ops = keras.ops


@keras.saving.register_keras_serializable(package="filterprune_tests")
def chan_softmax(t):
    return ops.softmax(t, axis=-1)


def redrawn(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(0, 0.3, v.shape).astype(v.dtype))
    return randomize_bn(model, seed)


def prune(model):
    config = make_config(prune_first_conv=True, prune_downsample_convs=True)
    ctrl, model = create_compressed_model(redrawn(model), config)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    small = assert_strip_equal(ctrl, model, x, tol=1e-5)
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    return ctrl, small, held


def conv(filters, name, **kw):
    return layers.Conv2D(filters, 3, padding="same", name=name, **kw)


def head(x):
    return layers.Conv2D(8, 1, name="head")(layers.ReLU()(x))


def test_a_layer_called_inside_a_nested_model_and_outside_it_is_cut_once():
    shared = conv(16, "shared")
    sub_in = keras.Input((32, 32, 16))
    sub = keras.Model(sub_in, layers.ReLU()(shared(sub_in)), name="sub")
    inp = keras.Input((32, 32, 3))
    y = sub(conv(16, "c1")(inp))
    z = shared(conv(16, "c2")(inp))
    ctrl, small, held = prune(keras.Model(inp, head(layers.Concatenate()([y, z]))))
    assert not any("shared" in p for p in held) and "c1" not in held
    names = [n for n in ctrl.capture.graph.layers if n.endswith("shared")]
    assert len(names) == 1  # one core layer for one Keras layer, cut once
    assert small.get_layer("shared").filters < 16


def test_an_activation_not_known_to_act_channel_by_channel_keeps_its_channels():
    inp = keras.Input((32, 32, 3))
    x = conv(16, "c1", activation=ops.relu)(inp)  # not keras.activations.relu: tried
    x = conv(16, "c2", activation=chan_softmax)(x)
    x = layers.Activation("sparsemax", name="act")(conv(16, "c3")(x))
    _, _, held = prune(keras.Model(inp, head(conv(16, "c4", activation="gelu")(x))))
    assert "activation chan_softmax is not known" in held["c2"]
    assert "activation sparsemax is not known" in held["c3"]
    assert "c1" not in held and "c4" not in held


def test_a_lora_layer_is_left_whole():
    inp = keras.Input((32, 32, 3))
    x = conv(16, "c2")(conv(16, "c1")(inp))
    model = keras.Model(inp, head(conv(16, "c3")(x)))
    model.get_layer("c2").enable_lora(4)
    _, _, held = prune(model)
    assert held["c1"] == "Conv2D: Conv2D has LoRA enabled"
    assert "c3" not in held


def test_a_model_with_a_lambda_strips():
    inp = keras.Input((32, 32, 3))
    x = layers.Lambda(lambda t: t * 2.0, name="double")(conv(16, "c1")(inp))
    _, _, held = prune(keras.Model(inp, head(conv(16, "c2")(x))))
    assert "Lambda" in held["c1"] and "c2" not in held


def test_comparisons_where_and_stack_follow_channels():
    inp = keras.Input((32, 32, 3))
    a, b = conv(16, "a")(inp), conv(16, "b")(inp)
    x = ops.where(ops.greater(a, 0.0), a, 0.1 * a) * ops.cast(ops.less(a, 3.0), "float32")
    x = ops.sum(ops.stack([x, b], axis=1), axis=1)
    _, _, held = prune(keras.Model(inp, head(conv(16, "c")(x))))
    assert "a" not in held and "c" not in held
