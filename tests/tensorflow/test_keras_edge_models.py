"""Keras models at the edges of the channel analysis: a layer shared by an outer and a nested
model, activations that act across channels, LoRA, Python code in the model, comparisons,
GroupNormalization.

Every weight (biases, LoRA factors, BatchNorm statistics) is redrawn before comparing, so
no branch hides behind a zero.
"""

import numpy as np
import pytest
from keras_helpers import assert_strip_equal, keras, layers, make_config, randomize_bn

from filterprune.core.finite import NONFINITE
from filterprune.errors import AnalysisError
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
    x = conv(16, "c5", activation="softmax")(conv(16, "c4", activation="gelu")(x))
    _, _, held = prune(keras.Model(inp, head(x)))
    assert held["c5"] == "Conv2D activation softmax: acts across channels"  # said "Conv2D: ..."
    assert "activation chan_softmax is not known" in held["c2"]
    assert "activation sparsemax is not known" in held["c3"]
    assert "c1" not in held and "c4" not in held


@keras.saving.register_keras_serializable(package="filterprune_tests")
def half_relu(t):
    """relu on the first 8 channels, tanh on the rest: each channel alone, by position."""
    return ops.concatenate([ops.relu(t[..., :8]), ops.tanh(t[..., 8:])], axis=-1)


@keras.saving.register_keras_serializable(package="filterprune_tests")
def softmax_axis1(t):
    return ops.softmax(t, axis=1)


def test_activations_by_position_or_over_another_axis_keep_their_channels():
    """The test tried one slice of channels on the last axis: an activation treating
    channels by position passed (0.72 relative off once cut), and so did an Activation
    layer mixing axis 1, where channels first put the channels (0.33 off)."""
    inp = keras.Input((32, 32, 3))
    x = conv(16, "c1", activation=half_relu)(inp)
    x = layers.Activation(half_relu, name="act")(conv(16, "c2")(x))
    _, _, held = prune(keras.Model(inp, head(x)))
    assert "activation half_relu is not known" in held["c1"]
    assert "activation half_relu is not known" in held["c2"]
    inp = keras.Input((3, 32, 32))
    kw = {"padding": "same", "data_format": "channels_first"}
    x = layers.Activation(softmax_axis1)(layers.Conv2D(16, 3, name="c1", **kw)(inp))
    x = layers.Conv2D(4, 1, name="head", **kw)(x)
    config = make_config(sample=(1, 3, 32, 32), prune_first_conv=True)
    ctrl, model = create_compressed_model(redrawn(keras.Model(inp, x)), config)
    assert_strip_equal(ctrl, model, np.random.default_rng(1).normal(size=(2, 3, 32, 32)),
                       tol=1e-5)  # fmt: skip
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert "activation softmax_axis1 is not known" in held["c1"]


@keras.saving.register_keras_serializable(package="filterprune_tests")
def softmax_axis2(t):
    return ops.softmax(t, axis=2)


def _sequence_model(activation, name="c1"):
    inp = keras.Input((32, 3))
    x = layers.Conv1D(16, 3, padding="same", name=name, activation=activation)(inp)
    x = layers.Dense(16, name="d", activation=activation)(x)
    return keras.Model(inp, layers.Conv1D(4, 1, name="head")(x))


def test_sparsemax_on_a_dense_keeps_its_units():
    """Tried on all but the first unit alone, sparsemax on a batch of two passed by chance
    and the Dense was cut (0.25 off)."""
    inp = keras.Input((16,))
    x = layers.Dense(16, name="d", activation="sparsemax")(inp)
    model = keras.Model(inp, layers.Dense(4, name="head")(x))
    config = make_config(sample=(1, 16))
    ctrl, model = create_compressed_model(redrawn(model), config)
    assert_strip_equal(ctrl, model, np.random.default_rng(1).normal(size=(8, 16)), tol=1e-5)
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert "activation sparsemax is not known" in held["d"]


def test_an_activation_over_the_channels_of_a_sequence_keeps_them_whole():
    """The activation is tried at the layer's own rank, sliced along its channels (axis
    2 of a Conv1D's or Dense's output): 0.21 relative off once cut before."""
    config = make_config(sample=(1, 32, 3), prune_first_conv=True)
    ctrl, model = create_compressed_model(redrawn(_sequence_model(softmax_axis2)), config)
    x = np.random.default_rng(1).normal(size=(2, 32, 3)).astype("float32")
    assert_strip_equal(ctrl, model, x, tol=1e-5)
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert "activation softmax_axis2 is not known" in held["c1"]
    assert "activation softmax_axis2 is not known" in held["d"]


def test_a_lambda_activation_strips():
    config = make_config(sample=(1, 32, 3), prune_first_conv=True)
    ctrl, model = create_compressed_model(redrawn(_sequence_model(lambda t: t * 0.5)), config)
    x = np.random.default_rng(1).normal(size=(2, 32, 3)).astype("float32")
    small = assert_strip_equal(ctrl, model, x, tol=1e-5)
    assert small.get_layer("c1").filters == 8


def test_a_prelu_with_a_slope_per_position_and_a_channels_first_softmax_are_cut():
    inp = keras.Input((32, 32, 3))
    x = layers.PReLU(name="p")(conv(16, "a")(inp))  # alpha (32, 32, 16)
    _, small, held = prune(keras.Model(inp, head(conv(16, "c")(x))))
    assert "a" not in held and small.get_layer("p").get_weights()[0].shape == (32, 32, 8)
    inp = keras.Input((4, 20))
    kw = {"padding": "same", "data_format": "channels_first"}
    x = layers.Conv1D(16, 3, name="a", activation="softmax", **kw)(inp)  # over the length
    model = keras.Model(inp, layers.Conv1D(4, 1, name="head", **kw)(layers.Conv1D(16, 3, **kw)(x)))
    config = make_config(sample=(1, 4, 20), prune_first_conv=True)
    ctrl, model = create_compressed_model(redrawn(model), config)
    small = assert_strip_equal(ctrl, model, np.ones((2, 4, 20), "float32"), tol=1e-5)
    assert small.get_layer("a").filters == 8


def test_a_repeat_vector_passes_the_features():
    inp = keras.Input((8,))
    x = layers.RepeatVector(4)(layers.Dense(16, name="a")(inp))
    model = keras.Model(inp, layers.Dense(4, name="head")(layers.Dense(16, name="b")(x)))
    config = make_config(sample=(1, 8), prune_first_conv=True)
    ctrl, model = create_compressed_model(redrawn(model), config)
    small = assert_strip_equal(ctrl, model, np.ones((2, 8), "float32"), tol=1e-5)
    assert small.get_layer("a").units == 8


def test_a_lora_layer_is_left_whole():
    inp = keras.Input((32, 32, 3))
    x = conv(16, "c2")(conv(16, "c1")(inp))
    model = keras.Model(inp, head(conv(16, "c3")(x)))
    model.get_layer("c2").enable_lora(4)
    _, _, held = prune(model)
    assert held["c1"] == "Conv2D: Conv2D has LoRA enabled"
    assert "c3" not in held


@pytest.mark.parametrize("shape", [None, (32, 32, 16)], ids=["inferred", "given"])
def test_a_model_with_a_lambda_strips(shape):
    inp = keras.Input((32, 32, 3))
    # it reads a module name: rebuilt from its bytecode it lost them (a NameError)
    x = layers.Lambda(lambda t: ops.relu(t) * 2.0, output_shape=shape, name="double")(
        conv(16, "c1")(inp))  # fmt: skip
    _, small, held = prune(keras.Model(inp, head(conv(16, "c2")(x))))
    assert "c1" not in held and "c2" not in held  # its keras.ops read through
    c1 = small.get_layer("c1").filters
    assert c1 < 16 and small.get_layer("double")._output_shape in (None, (32, 32, c1))


def test_comparisons_where_and_stack_follow_channels():
    inp = keras.Input((32, 32, 3))
    a, b = conv(16, "a")(inp), conv(16, "b")(inp)
    x = ops.where(ops.greater(a, 0.0), a, 0.1 * a) * ops.cast(ops.less(a, 3.0), "float32")
    x = ops.sum(ops.stack([x, b], axis=1), axis=1)
    _, _, held = prune(keras.Model(inp, head(conv(16, "c")(x))))
    assert "a" not in held and "c" not in held


SPATIAL_OPS = {
    "pad": lambda x: ops.pad(x, [[0, 0], [1, 1], [2, 0], [0, 0]], mode="reflect"),
    "resize": lambda x: ops.image.resize(x, (20, 24)),
    "crop and pad images": lambda x: ops.image.pad_images(ops.image.crop_images(
        x, 1, 0, target_height=31, target_width=32), 0, 1, target_height=31, target_width=33),
    "pools": lambda x: ops.max_pool(ops.average_pool(x, 2, 2), 3, 1, padding="same"),
    "adaptive pool": lambda x: layers.AdaptiveAveragePooling2D((8, 8))(x),
    "flip, roll, cumsum": lambda x: ops.cumsum(ops.roll(ops.flip(x, axis=1), 3, axis=2), axis=1),
    "moveaxis, swapaxes": lambda x: ops.moveaxis(ops.swapaxes(ops.moveaxis(x, 3, 1), 1, 2), 2, 3),
    "tile": lambda x: ops.tile(x, [1, 1, 1, 2]),
    "std": lambda x: x * ops.std(x, axis=(1, 2), keepdims=True) + ops.log1p(ops.abs(x)),
    "layer norm over height and width": lambda x: layers.LayerNormalization(axis=(1, 2))(x),
    "normalize over the height": lambda x: ops.normalize(ops.sigmoid(x), axis=1),
    "a constant per position": lambda x: x * np.linspace(0.5, 1.5, 32 * 32).reshape(
        1, 32, 32, 1).astype("float32"),
    "zeros_like, ones_like": lambda x: ops.where(x > 0, x, ops.zeros_like(x)) + ops.ones_like(x),
    "repeat, take along the height": lambda x: ops.take(
        ops.repeat(x, 2, axis=1), np.arange(63, -1, -2), axis=1),
    "normalization by scalars": lambda x: layers.Normalization(mean=0.3, variance=2.0)(x),
    "einsum keeping the channels": lambda x: ops.einsum(
        "bhwc,bc->bhwc", x, ops.mean(x, axis=(1, 2))) + ops.einsum("bhwc,bhwc->bhwc", x, x),
    # instance statistics (AdaIN) and values over positions (PointNet)
    "moments, logsumexp over height and width": lambda x: (x - ops.moments(
        x, axes=(1, 2), keepdims=True)[0]) + ops.logsumexp(x, axis=(1, 2), keepdims=True),
    "argmax, argsort over the height": lambda x: x * ops.cast(ops.argmax(
        x, axis=1, keepdims=True), "float32") + ops.cast(ops.argsort(x, axis=1), "float32"),
    "top_k over the height": lambda x: ops.moveaxis(ops.top_k(ops.moveaxis(x, 1, -1), 32)[0],
                                                    -1, 1),
    # a cut by whole pairs leaves each slice its own channels
    "every other channel": lambda x: ops.concatenate([x[..., ::2] * 2, x[..., 1::2]], -1),
    # each had no channel rule
    "inverse trigonometry, erfinv, sinc": lambda x: ops.arcsin(ops.tanh(x) * 0.9) + ops.sinc(
        x) + ops.arctanh(ops.tanh(x) * 0.5) + ops.erfinv(ops.tanh(x) * 0.5),
    "fliplr, flipud, diff": lambda x: ops.fliplr(ops.flipud(x)) + ops.pad(
        ops.diff(x, axis=2), [[0, 0], [0, 0], [0, 1], [0, 0]]),
    "median, ptp, nanmean over the positions": lambda x: x * ops.median(
        x, axis=(1, 2), keepdims=True) + ops.ptp(x, axis=1, keepdims=True) + ops.nanmean(
        x, axis=(1, 2), keepdims=True),
}
CHANNEL_OPS = {
    "argmax over the channels": lambda x: x * ops.cast(ops.argmax(x, axis=-1, keepdims=True),
                                                       "float32"),
    "moments over the channels": lambda x: x - ops.moments(x, axes=-1, keepdims=True)[0],
    "top_k over the channels": lambda x: ops.concatenate([ops.top_k(x, 8)[0], x[..., :8]], -1),
    "max_pool over the channels": lambda x: ops.moveaxis(ops.max_pool(
        ops.moveaxis(x, 3, 2), (1, 3), 1, padding="same"), 2, 3),
    "MaxPooling1D over the channels": lambda x: layers.Reshape((32, 32, 16))(layers.Permute(
        (2, 1))(layers.MaxPooling1D(3, 1, "same")(layers.Permute((2, 1))(layers.Reshape(
            (1024, 16))(x))))),
    "reflect pad of the channels": lambda x: ops.pad(x, [[0, 0], [0, 0], [0, 0], [1, 1]],
                                                     mode="reflect")[..., 1:-1] * 2,
}


@pytest.mark.parametrize("fn", CHANNEL_OPS.values(), ids=CHANNEL_OPS)
def test_the_same_ops_over_the_channels_keep_them_whole(fn):
    inp = keras.Input((32, 32, 3))
    x = fn(conv(16, "a")(inp))
    _, _, held = prune(keras.Model(inp, head(conv(16, "c")(x))))
    assert "a" in held and "c" not in held


def test_a_dropout_noise_shape_written_with_the_width_follows_the_cut():
    """The stripped model kept ``noise_shape`` (None, 1, 1, 16): it failed in training
    ("mask [2,1,1,16] vs [2,32,32,8]")."""
    inp = keras.Input((32, 32, 3))
    x = layers.Dropout(0.3, noise_shape=(None, 1, 1, 16), seed=1)(conv(16, "a")(inp))
    _, small, held = prune(keras.Model(inp, head(conv(16, "c")(x))))
    assert "a" not in held and small.get_layer("a").filters == 8
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype("float32")
    assert small(x, training=True).shape == (2, 32, 32, 8)


def test_a_keras_layer_its_config_cannot_rebuild_is_named_with_a_fix_for_it():
    """RandomShear's config holds factors its __init__ refuses: the message told the user
    to fix the layer's __init__, as for a layer of their own."""
    inp = keras.Input((32, 32, 3))
    x = layers.RandomShear(0.2, 0.2)(conv(16, "a")(inp))
    ctrl, _ = create_compressed_model(keras.Model(inp, head(conv(16, "c")(x))), make_config())
    with pytest.raises(AnalysisError, match="Keras's own config does not rebuild this layer"):
        ctrl.strip()


@pytest.mark.parametrize("axis", [-1, (1, 2)])
def test_an_rms_norm_holds_the_channels_its_scale_meets(axis):
    """It said "no channel rule for layer RMSNormalization". Keras multiplies its scale
    against the last axes whatever the axis: over height and width it runs where the width
    is the channel count, and a cut would break it."""
    inp = keras.Input((16, 16, 3))
    x = layers.RMSNormalization(axis=axis, name="rms")(conv(16, "a")(inp))
    model = keras.Model(inp, head(conv(16, "c")(x)))
    ctrl, _ = create_compressed_model(model, make_config((1, 16, 16, 3), prune_first_conv=True))
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert held["a"] == ("RMSNormalization normalises over these channels" if axis == -1 else
                         "RMSNormalization: Keras scales the last axes whatever its axis, "
                         "so its scale meets the channels")  # fmt: skip


@pytest.mark.parametrize("fn", SPATIAL_OPS.values(), ids=SPATIAL_OPS)
def test_ops_that_keep_each_channel_apart_are_cut_through(fn):
    inp = keras.Input((32, 32, 3))
    x = fn(conv(16, "a")(inp))
    _, _, held = prune(keras.Model(inp, head(conv(16, "c")(x))))
    assert "a" not in held and "c" not in held


@pytest.mark.parametrize("axis", [1, 3], ids=["rows", "channels"])
def test_take_by_computed_indices_passes_the_other_axes(axis):
    """Indices computed in the model (a PointNet's neighbours) had no rule: "no channel
    rule for keras.ops Take" held the conv. Picking channels keeps them whole."""
    inp = keras.Input((32, 32, 3))
    order = ops.argsort(ops.mean(inp, axis=(0, 2, 3)))  # 32 rows, sorted by the input
    x = conv(32 if axis == 3 else 16, "a")(inp)
    x = ops.take(x, order, axis=axis)[..., :16] if axis == 3 else ops.take(x, order, axis=1)
    _, _, held = prune(keras.Model(inp, head(conv(16, "c")(x))))
    assert ("a" in held) == (axis == 3) and "c" not in held


def test_a_cumsum_across_the_channels_keeps_them_whole():
    inp = keras.Input((32, 32, 3))
    y = ops.cumsum(conv(18, "b")(inp), axis=-1)
    z = ops.reshape(ops.cumsum(conv(18, "d")(inp)), (-1, 32, 32, 18))  # over the flattened
    _, _, held = prune(keras.Model(inp, head(conv(16, "c")(y + z))))
    assert "acts across channels" in held["b"] and "flattened" in held["d"]


def test_a_constant_pad_of_the_channels_keeps_only_the_ones_it_adds():
    inp = keras.Input((32, 32, 3))
    x = ops.pad(conv(16, "a")(inp), [[0, 0], [0, 0], [0, 0], [1, 2]]) + conv(19, "e")(inp)
    _, small, held = prune(keras.Model(inp, head(conv(16, "c")(x))))
    assert "a" not in held and small.get_layer("a").filters < 16
    assert small.get_layer("e").filters == small.get_layer("a").filters + 3
    assert "channels it adds" in held["e"]


def test_per_channel_constants_keep_their_channels_whole():
    inp = keras.Input((32, 32, 3))
    scale = np.linspace(0.5, 1.5, 16).reshape(1, 1, 1, 16).astype("float32")
    x = ops.multiply(conv(16, "a")(inp), scale)
    norm = layers.Normalization(mean=np.linspace(0, 1, 16), variance=np.ones(16))
    y = ops.repeat(conv(8, "d")(inp), 2, axis=-1)
    _, _, held = prune(keras.Model(inp, head(conv(16, "c")(x + norm(conv(16, "b")(inp)) + y))))
    assert held["a"].startswith("Multiply reads multiply") and "cannot be cut" in held["a"]
    assert held["b"] == "Normalization: Normalization by per-channel statistics"
    assert held["d"] == "Repeat: acts across channels"


def test_an_einsum_over_the_channels_keeps_them_whole():
    inp = keras.Input((32, 32, 3))
    x, y = conv(16, "a")(inp), conv(16, "b")(inp)
    mixed = ops.einsum("bhwc,bhwd->bhwd", x, y)  # sums over a's channels, b's pass
    const = ops.einsum("bhwc,c->bhwc", conv(16, "d")(inp), np.ones(16, "float32"))
    _, small, held = prune(keras.Model(inp, head(conv(16, "c")(mixed) + conv(16, "e")(const))))
    assert held["a"] == "Einsum: sums over these channels" and "b" not in held
    assert held["d"] == "Einsum: keras.ops einsum with a constant operand"


def test_a_dense_along_the_tokens_is_cut_and_keeps_the_channels_whole():
    inp = keras.Input((32, 32, 3))
    t = layers.Reshape((64, 16))(layers.Conv2D(16, 4, strides=4, name="patch")(inp))
    y = layers.Dense(64, name="tok2")(layers.Dense(32, name="tok1", activation="gelu")(
        layers.Permute((2, 1))(t)))
    x = layers.Reshape((8, 8, 16))(t + layers.Permute((2, 1))(y))
    _, small, held = prune(keras.Model(inp, head(conv(16, "c")(x))))
    assert small.get_layer("tok1").units == 16
    assert held["patch"] == "Dense: applied along another axis than these channels"


def test_a_grouped_conv_that_widens_cuts_its_inputs_and_outputs_by_group():
    inp = keras.Input((32, 32, 3))
    x = layers.BatchNormalization()(conv(16, "a")(inp))
    x = layers.BatchNormalization()(conv(32, "g", groups=2)(x))
    _, small, held = prune(keras.Model(inp, head(x)))
    assert "a" not in held and "g" not in held
    assert small.get_layer("a").filters == 8
    assert (small.get_layer("g").filters, small.get_layer("g").groups) == (16, 2)


def test_a_strided_transposed_conv_upsamples_and_is_pruned_by_default():
    inp = keras.Input((32, 32, 3))
    x = layers.Conv2DTranspose(16, 2, strides=2, name="up")(conv(16, "a")(inp))
    model = keras.Model(inp, head(conv(16, "c", strides=2)(layers.ReLU()(x))))
    config = make_config(prune_first_conv=True)  # prune_downsample_convs off: c is held
    ctrl, model = create_compressed_model(redrawn(model), config)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    small = assert_strip_equal(ctrl, model, x, tol=1e-5)
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert "up" not in held and small.get_layer("up").filters == 8
    assert held["c"].startswith("downsampling convolution c")


@pytest.mark.parametrize("axis", [-1, None])
def test_an_adapted_normalization_strips_with_its_statistics(axis):
    """Its statistics are weights the rebuilt layer must read (``finalize_state``)."""
    inp = keras.Input((32, 32, 3))
    features = conv(16, "a")
    norm = layers.Normalization(axis=axis, name="norm")
    model = redrawn(keras.Model(inp, head(conv(16, "c")(norm(features(inp))))))
    x = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype("float32")
    norm.adapt(np.asarray(keras.Model(inp, features(inp))(x)))
    ctrl, model = create_compressed_model(model, make_config(prune_first_conv=True))
    small = assert_strip_equal(ctrl, model, x[:2], tol=1e-5)
    assert float(np.abs(np.asarray(small.get_layer("norm").mean)).max()) > 0


def test_an_op_keras_cannot_rebuild_is_a_clear_error_at_strip():
    inp = keras.Input((32, 32, 3))
    x = ops.repeat(conv(16, "a")(inp), np.array([2] * 16 + [0] * 16), axis=1)
    ctrl, _ = create_compressed_model(redrawn(keras.Model(inp, head(conv(16, "c")(x)))),
                                      make_config(prune_first_conv=True))  # fmt: skip
    with pytest.raises(AnalysisError, match=r"^Repeat '.*' cannot be rebuilt: Keras has no "
                       r"config for it .*Wrap the call in a Layer subclass"):
        ctrl.strip()


def test_a_layer_norm_over_the_channels_keeps_them_whole():
    inp = keras.Input((32, 32, 3))
    x = layers.LayerNormalization(axis=(2, 3), name="ln")(conv(16, "a")(inp))
    _, _, held = prune(keras.Model(inp, head(conv(16, "c")(x))))
    assert "normalises over these channels" in held["a"] and "c" not in held


def test_group_normalization_is_cut_by_whole_groups(tmp_path):
    inp = keras.Input((32, 32, 3))
    x = layers.GroupNormalization(groups=4, name="g1")(conv(32, "c1")(inp))
    y = layers.GroupNormalization(groups=8, name="g2")(conv(32, "c2")(layers.ReLU()(x)))
    x = layers.Add()([x, layers.ReLU()(y)])
    plain = layers.GroupNormalization(groups=16, center=False, scale=False, name="g3")
    z = plain(conv(16, "c3")(x))
    one = layers.GroupNormalization(groups=1, name="one")(conv(16, "c4")(layers.ReLU()(z)))
    ctrl, small, held = prune(keras.Model(inp, head(one)))
    assert "c1" not in held and "c3" not in held
    assert "statistics span channels" in held["c4"]
    assert small.get_layer("c1").filters == 16  # g1's groups of 8 go whole
    assert small.get_layer("g1").groups == 2 and small.get_layer("g2").groups == 4
    assert small.get_layer("g3").groups == small.get_layer("c3").filters == 8
    small.save(tmp_path / "m.keras")
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype("float32")
    back = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(back(x).numpy(), small(x).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_a_division_by_a_pruned_channel_keeps_its_group_whole(eps):
    """A pruned channel's spatial norm is zero: without ``eps`` the masked model would
    divide 0 by 0 (NaN, and NaN through the next conv's zeroed weights)."""
    inp = keras.Input((32, 32, 3))
    y = layers.BatchNormalization()(conv(16, "c1", use_bias=False)(inp))
    y = y / (ops.sqrt(ops.sum(ops.square(y), axis=(1, 2), keepdims=True)) + eps)
    y = layers.BatchNormalization()(conv(16, "c2")(layers.ReLU()(y)))
    ctrl, small, held = prune(keras.Model(inp, head(y)))
    assert "c2" not in held and small.get_layer("c2").filters < 16
    if eps:
        assert "c1" not in held and small.get_layer("c1").filters < 16
    else:
        assert held["c1"] == NONFINITE and small.get_layer("c1").filters == 16



def test_a_dry_run_holds_a_non_finite_cut_and_leaves_the_model_as_it_was():
    from filterprune.core.workflow import dry_run
    from filterprune.tensorflow.frontend import KerasFrontend

    inp = keras.Input((32, 32, 3))
    y = layers.BatchNormalization()(conv(16, "c1", use_bias=False)(inp))
    y = y / ops.sqrt(ops.sum(ops.square(y), axis=(1, 2), keepdims=True))
    model = redrawn(keras.Model(inp, head(layers.ReLU()(y))))
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    ref, n_weights = model(x).numpy(), len(model.weights)
    classes = [type(layer) for layer in model.layers]
    dry = dry_run(KerasFrontend(), model, make_config(prune_first_conv=True))
    held = {p: r for producers, r in dry.statistics().unpruned for p in producers}
    assert held["c1"] == NONFINITE
    assert [type(layer) for layer in model.layers] == classes and len(model.weights) == n_weights
    np.testing.assert_array_equal(model(x).numpy(), ref)


@pytest.mark.parametrize("up", [True, False], ids=["depth_to_space", "space_to_depth"])
def test_depth_to_space_and_back_are_cut_through(up):
    """tf.nn's order: output channel c of depth_to_space is input channels c, c+C, ...;
    space_to_depth writes input channel c at c, c+C, ... of its output."""
    inp = keras.Input((32, 32, 3))
    y = layers.BatchNormalization()(conv(32 if up else 16, "c1")(inp))
    y = ops.depth_to_space(y, 2) if up else ops.space_to_depth(y, 2)
    y = layers.BatchNormalization()(conv(16, "c2")(layers.ReLU()(y)))
    ctrl, small, held = prune(keras.Model(inp, head(y)))
    assert "c1" not in held and "c2" not in held
    c1 = small.get_layer("c1").filters
    assert c1 < (32 if up else 16)
    assert small.get_layer("c2").kernel.shape[2] == (c1 // 4 if up else c1 * 4)



@pytest.mark.parametrize("scale", [False, True])
def test_a_lambda_shuffling_depth_whose_half_width_is_no_multiple_is_cut(scale):
    """12 channels into ``depth_to_space(t, 2)`` in a Lambda: read again at half the sizes
    (6, no multiple of 4) it failed, and the conv was held as "fails at other input
    sizes"; a cut by whole blocks of 4 was possible. One dividing by ``min(c, 8)`` takes
    a number from its sizes: read at 8 only it passed, and a cut to 4 computed otherwise."""
    inp = keras.Input((32, 32, 3))
    y = layers.BatchNormalization()(conv(12, "c1")(inp))
    y = layers.Lambda(lambda t: ops.depth_to_space(t, 2) / (min(t.shape[-1], 8) if scale
                                                             else 1))(y)  # fmt: skip
    y = layers.BatchNormalization()(conv(16, "c2")(layers.ReLU()(y)))
    ctrl, small, held = prune(keras.Model(inp, head(y)))
    if scale:
        assert held["c1"].startswith("Lambda: takes numbers from its input's sizes")
        return
    assert "c1" not in held
    c1 = small.get_layer("c1").filters
    assert c1 in (4, 8) and small.get_layer("c2").kernel.shape[2] == c1 // 4


def test_a_glu_over_the_channels_ties_its_halves():
    inp = keras.Input((32, 32, 3))
    y = ops.glu(layers.BatchNormalization()(conv(32, "c1")(inp)), axis=-1)
    y = layers.BatchNormalization()(conv(16, "c2")(y))
    ctrl, small, held = prune(keras.Model(inp, head(y)))
    assert "c1" not in held and "c2" not in held
    c1 = small.get_layer("c1").filters
    assert c1 < 32 and small.get_layer("c2").kernel.shape[2] == c1 // 2


def test_stacked_convs_interleaved_by_a_reshape_are_cut_alike():
    """stack then Reshape interleaves the channels (a0 b0 a1 b1 ...): a and b must lose
    the same channels, or the next conv's columns pair the wrong ones."""
    inp = keras.Input((32, 32, 3))
    a, b = conv(16, "a")(inp), conv(16, "b")(inp)
    y = layers.Reshape((32, 32, 32))(ops.stack([a, b], axis=-1))
    ctrl, small, held = prune(keras.Model(inp, head(conv(16, "c")(y))))
    assert "a" not in held and small.get_layer("a").filters < 16



def test_a_one_channel_gate_over_the_channels_leaves_them_free():
    inp = keras.Input((32, 32, 3))
    x = layers.BatchNormalization()(conv(16, "a")(inp))
    gate = ops.sigmoid(layers.Conv2D(1, 7, padding="same", name="sp")(x))
    ctrl, small, held = prune(keras.Model(inp, head(conv(16, "c")(x * gate))))
    assert "a" not in held and small.get_layer("a").filters < 16
    assert "broadcast over another operand's channels" in held["sp"]


def test_normalize_over_the_channels_keeps_them_whole():
    """A pruned channel is 0.5 after the sigmoid and counts in the masked model's norm."""
    inp = keras.Input((32, 32, 3))
    y = ops.normalize(ops.sigmoid(conv(16, "c1")(inp)), axis=-1)
    ctrl, small, held = prune(keras.Model(inp, head(conv(16, "c2")(y))))
    assert "acts across channels" in held["c1"] and small.get_layer("c1").filters == 16


def test_a_layer_whose_output_spec_keeps_none_is_read_from_a_run():
    """``EinsumDense(output_shape=(None, None, 16))``: Keras's output spec keeps the Nones
    it was given, and the capture failed with a bare TypeError."""
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(16, 3, padding="same", name="conv")(inp)
    x = layers.EinsumDense("bhwc,cd->bhwd", output_shape=(None, None, 16), name="ed")(x)
    model = keras.Model(inp, layers.Conv2D(4, 1)(x))
    ctrl, _ = create_compressed_model(model, make_config((1, 8, 8, 3)))
    held = {tuple(k): v for k, v in ctrl.statistics().unpruned}
    assert held[("conv",)] == "EinsumDense: no channel rule for layer EinsumDense"


class _NoKwargs(layers.Layer):
    """A custom layer whose __init__ takes no **kwargs: its config cannot rebuild it."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def call(self, x):
        return x * self.factor


def test_a_layer_its_config_cannot_rebuild_is_said_at_creation(caplog):
    """strip() and export_model failed only after training, with Keras's own error."""
    caplog.set_level("WARNING", logger="filterprune")
    inp = keras.Input((8, 8, 3))
    x = _NoKwargs(2.0)(layers.Conv2D(8, 3, padding="same")(inp))
    create_compressed_model(keras.Model(inp, layers.Conv2D(4, 1)(x)), make_config((1, 8, 8, 3)))
    assert "these cannot be: __no_kwargs (_NoKwargs: Exception encountered: _NoKwargs." \
           "__init__() got an unexpected keyword argument 'trainable')" in caplog.text
    assert "Give layers of your own an __init__ taking **kwargs passed to" in caplog.text


class _Applied(layers.Layer):
    """A layer of the user's own taking a function: Keras's default get_config refuses."""

    def __init__(self, fn=None, **kwargs):
        super().__init__(**kwargs)
        self.fn = fn

    def call(self, x):
        return self.fn(x)


def test_a_layer_without_a_config_of_its_own_is_said_so(caplog):
    """Its warning quoted Keras's source ("apply (Apply:         return config)") and
    strip() said "a keras.ops call with an array argument has none"."""
    caplog.set_level("WARNING", logger="filterprune")
    inp = keras.Input((8, 8, 3))
    x = _Applied(lambda t: t * 2, name="applied")(layers.Conv2D(8, 3, padding="same")(inp))
    ctrl, _ = create_compressed_model(keras.Model(inp, layers.Conv2D(4, 1)(x)),
                                      make_config((1, 8, 8, 3)))  # fmt: skip
    assert "applied (_Applied: it has no get_config() of its own, and Keras's refuses an " \
           "__init__ with arguments it cannot put in a config)" in caplog.text, caplog.text
    with pytest.raises(AnalysisError, match="Give it a get_config"):
        ctrl.strip()


class _Orthogonal(keras.regularizers.Regularizer):  # not registered: no config rebuilds it
    def __call__(self, w):
        return 0.001 * ops.sum(ops.square(w))

    def get_config(self):
        return {}


def test_a_stock_layer_with_an_unregistered_regularizer_is_told_to_register_it(caplog):
    """The warning cut Keras' cause at 160 characters (before the class's name, or the
    word "register"), and told the user to give a stock Dense an __init__ of its own."""
    caplog.set_level("WARNING", logger="filterprune")
    inp = keras.Input((8, 8, 3))
    x = layers.Dense(8, kernel_regularizer=_Orthogonal())(layers.Conv2D(8, 3)(inp))
    create_compressed_model(keras.Model(inp, layers.Conv2D(4, 1)(x)), make_config((1, 8, 8, 3)))
    assert "Could not interpret regularizer identifier: {'module': 'test_keras_edge_models'" \
        ", 'class_name': '_Orthogonal'" in caplog.text
    assert "Register the classes named with @keras" in caplog.text
    assert "__init__" not in caplog.text


def test_one_prelu_slope_for_every_entry_leaves_the_channels_free():
    """``shared_axes=[1, 2, 3]``: one slope in all, held before with the others."""
    inp = keras.Input((32, 32, 3))
    x = layers.PReLU(shared_axes=[1, 2, 3], name="p")(conv(16, "a")(inp))
    _, small, held = prune(keras.Model(inp, head(conv(16, "c")(x))))
    assert "a" not in held and small.get_layer("a").filters < 16


ARRANGED = {
    "hstack": lambda h: ops.hstack([h, h * 0.5]),
    "rot90": lambda h: ops.rot90(h, 1, axes=(1, 2)),
    "sorted by its argsort": lambda h: ops.take_along_axis(h, ops.argsort(h, axis=1), axis=1),
    "channels flipped": lambda h: ops.flip(h, axis=-1) + h,
    "a spatial slice": lambda h: ops.slice(h, (0, 2, 2, 0), (2, 28, 28, 16)),
}


@pytest.mark.parametrize("body", ARRANGED.values(), ids=ARRANGED)
def test_keras_ops_that_move_entries_keep_channels_apart(body):
    """Each held the conv before it ("no channel rule for keras.ops Hstack", Rot90,
    TakeAlongAxis; Flip "acts across channels"); a spatial ``ops.slice`` is cut but its
    shape writes the channel count, which stays whole with that reason."""
    inp = keras.Input((32, 32, 3))
    y = body(layers.ReLU()(conv(16, "c1")(inp)))
    ctrl, small, held = prune(keras.Model(inp, head(conv(16, "c2")(y))))
    if body is ARRANGED["a spatial slice"]:
        assert "its shape is written in code" in held["c1"], held
    else:
        assert "c1" not in held and small.get_layer("c1").filters == 8, held


def test_keras_applications_layer_scale_is_cut_with_its_channels():
    """ConvNeXt's LayerScale had no rule: the branch before it stayed whole."""
    from keras.src.applications.convnext import LayerScale

    inp = keras.Input((32, 32, 3))
    x = layers.BatchNormalization()(conv(16, "stem")(inp))
    h = layers.Conv2D(16, 1, name="branch")(layers.ReLU()(conv(32, "expand")(x)))
    x = layers.Add()([x, LayerScale(0.5, 16, name="scale")(h)])
    ctrl, small, held = prune(keras.Model(inp, head(x)))
    assert not held.keys() & {"stem", "expand", "branch", "scale"}
    scale = small.get_layer("scale")
    assert scale.projection_dim == small.get_layer("stem").filters < 16
    assert tuple(scale.weights[0].shape) == (scale.projection_dim,)


class _RematActivation(layers.Layer):
    """A weightless layer of the user's own recomputing its function in the backward pass
    (``keras.remat``, Keras's memory saver)."""

    def call(self, x):
        return keras.remat(lambda t: ops.relu(t) * 2.0)(x)


def test_a_layer_using_keras_remat_is_read_through():
    """TensorFlow's recompute wrapper refuses symbolic tensors: the conv before it was held
    and told to write the layer "with keras.ops only", which it was."""
    inp = keras.Input((32, 32, 3))
    x = _RematActivation()(conv(16, "a")(inp))
    ctrl, small, held = prune(keras.Model(inp, head(conv(16, "b")(x))))
    assert set(held) == {"head"}
    assert small.get_layer("a").filters == 8
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    small.compile(optimizer="sgd", loss="mse")
    small.fit(x, small(x).numpy() + 1.0, epochs=1, verbose=0)  # recomputes in training
