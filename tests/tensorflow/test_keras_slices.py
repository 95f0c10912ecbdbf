"""Keras slices written as numbers over the channels (``h[..., :16]``): cut where the
bounds fall on equal parts of the width, the stripped model's bounds rewritten. ``Lambda``
layers read through: their ``keras.ops`` calls are cut through as the same ops in the model
would be; a slice in one is cut only where its code computes the bounds from the width, as
the rebuilt Lambda runs the same code at the cut width.

Every weight and BatchNorm statistic is redrawn before comparing, so no branch hides
behind a zero.
"""

import numpy as np
import pytest
import tensorflow as tf
from keras_helpers import assert_strip_equal, keras, layers, make_config, randomize_bn

from filterprune.tensorflow import create_compressed_model

ops = keras.ops

GATES = {
    "halves": lambda h: ops.tanh(h[..., :16]) * ops.sigmoid(h[..., 16:]),
    "halves from the end": lambda h: ops.tanh(h[:, :, :, :-16]) * ops.sigmoid(h[..., -16:]),
    "quarters": lambda h: ops.concatenate([h[..., 8:24] * 2, h[..., :8], h[..., 24:]], -1),
    "cropped halves": lambda h: h[:, 1:-1, 1:-1, :16] + h[:, 2:, 2:, 16:],
}


def _side(h):
    return layers.Conv2D(32, 1, name="side")(h)


THROUGH = {
    "a residual scale": lambda h: layers.Lambda(lambda t: t * 0.1)(h),
    "two inputs": lambda h: layers.Lambda(lambda t: t[0] + 0.2 * t[1])([h, _side(h)]),
    "arguments": lambda h: layers.Lambda(lambda t, s: ops.relu(t) * s, arguments={"s": 0.5})(h),
    "two outputs": lambda h: layers.Add()(layers.Lambda(lambda t: [t * 2, t + 1])(h)),
    "halves from the width": lambda h: layers.Lambda(lambda t: ops.tanh(
        t[..., : t.shape[-1] // 2]) * ops.sigmoid(t[..., t.shape[-1] // 2 :]))(h),  # fmt: skip
}
class DepthToSpace(layers.Layer):
    """keras.io's super-resolution example's layer: a reshape to a count it computes."""

    def call(self, t):
        batch, height, width, depth = ops.shape(t)
        t = ops.reshape(t, [batch, height, width, 2, 2, depth // 4])
        t = ops.transpose(t, [0, 1, 3, 2, 4, 5])
        return ops.reshape(t, [batch, height * 2, width * 2, depth // 4])


_SIZES = "takes numbers from its input's sizes (a reshape to a count it computes, a " \
    "branch, a scale), which a cut would change"  # fmt: skip
HELD = {
    "halves written as numbers, which fail at other widths": (lambda h: layers.Lambda(
        lambda t: ops.tanh(t[..., :16]) * ops.sigmoid(t[..., 16:]), name="gate")(h),
        "so whether its numbers follow a cut cannot be checked"),  # fmt: skip
    "a crop written as a number": (lambda h: layers.Lambda(
        lambda t: ops.concatenate([t[..., :16], t], -1), name="crop")(h),
        "GetItem in Lambda crop: indexes into channels 0:16 of 32"),  # fmt: skip
    "a TensorFlow function": (lambda h: layers.Lambda(lambda t: tf.nn.relu6(t))(h),
                              "written with keras.ops only, it can be read and cut"),
    "a number read from the width": (lambda h: layers.Lambda(
        lambda t: t / float(t.shape[-1]))(h), _SIZES),
    "a constant tensor made from the width": (lambda h: layers.Lambda(
        lambda t: t / ops.cast(ops.shape(t)[-1], "float32"))(h), _SIZES),
    "a layer of one's own reshaping to a count it computes": (
        lambda h: DepthToSpace()(h), _SIZES),
    "two outputs of given shapes": (lambda h: layers.Add()(layers.Lambda(
        lambda t: [t * 2, t + 1], output_shape=[(16, 16, 32)] * 2)(h)),
        "is given one output_shape for several outputs or calls"),  # fmt: skip
    "a mean over the channels": (lambda h: layers.Lambda(
        lambda t: t - ops.mean(t, axis=-1, keepdims=True), name="centre")(h),
        "Mean in Lambda centre: reduces over channels"),  # fmt: skip
}


def test_a_reshape_in_a_lambda_to_a_channel_count_written_as_a_number_holds_it():
    """It was cut, and the strip failed (the next conv's "weight shape ... is not compatible"):
    a -1 takes up the change at other sizes, and the 32 runs as written."""
    pool = layers.Lambda(lambda t: ops.reshape(ops.mean(t, axis=(1, 2)), (-1, 1, 1, 32)),
                         name="pool")  # fmt: skip
    config = make_config((2, 16, 16, 3), prune_first_conv=True, filters_multiple_of=1)
    ctrl, _ = create_compressed_model(_model(pool), config)
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert held["a"] == "Reshape in Lambda pool: reshape fixes the channel count in code"


def _model(gate):
    inp = keras.Input((16, 16, 3))
    h = layers.BatchNormalization()(layers.Conv2D(32, 3, padding="same", name="a")(inp))
    y = layers.Conv2D(16, 3, padding="same", name="b")(gate(h))
    model = keras.Model(inp, layers.Conv2D(4, 1, name="head")(layers.ReLU()(y)))
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.normal(0, 0.3, v.shape).astype(v.dtype))
    return randomize_bn(model)


def _prune(model):
    config = make_config((1, 16, 16, 3), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(model, config)
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype("float32")
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    return ctrl, model, x, held


@pytest.mark.parametrize("gate", [*GATES.values(), *THROUGH.values()], ids=[*GATES, *THROUGH])
def test_slices_on_equal_parts_and_lambdas_of_keras_ops_are_cut_through(gate, tmp_path):
    """Such a slice held the conv before it ("indexes into channels"), and so did every
    Lambda ("no channel rule for layer Lambda")."""
    ctrl, model, x, held = _prune(_model(gate))
    assert "a" not in held, held
    assert ctrl.statistics().flops_kept < 0.6
    small = assert_strip_equal(ctrl, model, x, tol=1e-5)
    assert small.get_layer("a").filters < 32
    if gate in GATES.values():  # a Lambda reading `ops` loses it in a file (Keras' own)
        small.save(tmp_path / "small.keras")
        again = keras.models.load_model(tmp_path / "small.keras")
        np.testing.assert_allclose(again(x), small(x), rtol=0, atol=1e-6)


def test_a_lambda_drawing_a_random_number_is_read_through():
    """Its number differs from call to call, which the check that a Lambda takes no
    number from its input's sizes read as one: it was held ("takes numbers from its
    input's sizes")."""
    gate = lambda h: layers.Lambda(lambda t: t * keras.random.uniform(()) + t)(h)  # noqa: E731
    ctrl, _, _, held = _prune(_model(gate))
    assert "a" not in held and ctrl.statistics().flops_kept < 0.6, held


def test_a_slice_cut_as_a_split_is_counted_as_the_split():
    sliced = _prune(_model(GATES["halves"]))[0].statistics()
    split = _prune(_model(lambda h: ops.tanh(ops.split(h, 2, -1)[0]) * ops.sigmoid(
        ops.split(h, 2, -1)[1])))[0].statistics()  # fmt: skip
    assert sliced.flops_kept == split.flops_kept < 0.6
    assert sliced.current_params == split.current_params


def test_a_slice_of_pairs_of_channels_is_cut_by_whole_pairs():
    """``h[..., :10]`` of 32 channels takes 5 of 16 pairs: a cut keeps the same member of
    every pair, so the slice keeps 5 of the kept 16."""
    ctrl, model, x, held = _prune(_model(lambda h: ops.concatenate([h[..., :10], h], -1)))
    assert "a" not in held, held
    small = assert_strip_equal(ctrl, model, x, tol=1e-5)
    assert small.get_layer("a").filters == 16
    assert small.get_layer("b").kernel.shape[2] == 5 + 16


def test_a_slice_of_single_channels_keeps_them_whole():
    ctrl, model, x, held = _prune(_model(lambda h: ops.concatenate([h[..., 3:], h], -1)))
    assert held["a"].endswith("indexes into channels 3:32 of 32")
    assert_strip_equal(ctrl, model, x, tol=1e-5)


def test_a_negative_stride_over_the_channels_is_named_as_written():
    """``h[..., ::-2]`` was said to index "channels 31:-1 of 32", its step left out."""
    ctrl, model, x, held = _prune(_model(lambda h: ops.concatenate([h[..., ::-2], h[..., 1::2]],
                                                                    -1)))  # fmt: skip
    assert held["a"].endswith("indexes into channels ::-2 of 32")
    assert_strip_equal(ctrl, model, x, tol=1e-5)


@pytest.mark.parametrize(("body", "reason"), HELD.values(), ids=HELD)
def test_a_lambda_that_mixes_channels_or_fixes_them_in_code_keeps_them_whole(body, reason):
    ctrl, model, x, held = _prune(_model(body))
    assert held["a"].endswith(reason), held
    assert assert_strip_equal(ctrl, model, x, tol=1e-5).get_layer("a").filters == 32


def test_a_lambda_is_counted_as_its_ops_written_in_the_model():
    ops_in_model = _prune(_model(lambda h: h * 0.1 + ops.relu(h)))[0].statistics()
    in_lambda = _prune(_model(lambda h: layers.Lambda(lambda t: t * 0.1 + ops.relu(t))(
        h)))[0].statistics()  # fmt: skip
    assert in_lambda.flops_kept == ops_in_model.flops_kept
    assert in_lambda.current_params == ops_in_model.current_params


def _two_calls(inner):
    """``inner`` called on two convs; ``c`` feeds an output too, so it stays whole while
    ``a`` is cut."""
    inp = keras.Input((16, 16, 3))
    a = layers.Conv2D(32, 3, padding="same", name="a")(inp)
    c = layers.Conv2D(32, 3, padding="same", name="c")(inp)
    y = layers.Conv2D(8, 1, name="b")(layers.Concatenate()([inner(a), inner(c)]))
    model = keras.Model(inp, [layers.Conv2D(4, 1, name="head")(y), c])
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.normal(0, 0.3, v.shape).astype(v.dtype))
    return model


def _nested(fn):
    i = keras.Input((None, None, 32))
    return keras.Model(i, fn(i), name="inner")


def test_a_model_without_weights_called_on_tensors_cut_otherwise_strips():
    """Rebuilt at its first call's widths, it refused the other call's tensor."""
    config = make_config((1, 16, 16, 3), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(_two_calls(_nested(ops.relu)), config)
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype("float32")
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert "a" not in held and held["c"] == "feeds a model output"
    small = ctrl.strip()
    for got, ref in zip(small(x), model(x), strict=True):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_a_slice_called_on_two_tensors_keeps_their_channels():
    """One rebuilt slice takes one width: a nested gate called on a cut tensor and on a
    whole one failed at strip."""
    gate = _nested(lambda i: ops.tanh(i[..., :16]) * ops.sigmoid(i[..., 16:]))
    config = make_config((1, 16, 16, 3), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(_two_calls(gate), config)
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert held["a"] == "GetItem: indexes into channels 16:32 of 32"
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype("float32")
    for got, ref in zip(ctrl.strip()(x), model(x), strict=True):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def _squeeze_excite(h):  # MIRNet's channel attention as keras.io writes it
    g = ops.reshape(layers.GlobalAveragePooling2D()(h), (-1, 1, 1, 32))
    g = layers.Conv2D(32, 1, activation="sigmoid")(layers.Conv2D(8, 1, activation="relu")(g))
    return h * g


def _tokens(h):  # a tokenizer written with the token count and the width in code
    t = layers.Dense(32)(ops.reshape(h, (-1, 256, 32)))
    return ops.reshape(t, (-1, 16, 16, 32))


def _shifted(h):  # ShiftViT's shift: quarters split at points written in code
    parts = ops.split(h, [8, 16, 24], axis=-1)
    return ops.concatenate([ops.roll(parts[0], 1, 1), parts[2], parts[1], parts[3] * 2], -1)


@pytest.mark.parametrize("gate", [_squeeze_excite, _tokens, _shifted],
                         ids=["gate", "tokens", "split"])  # fmt: skip
def test_a_keras_ops_reshape_is_rewritten_as_a_reshape_layer_is(gate, tmp_path):
    """``ops.reshape(g, (-1, 1, 1, 32))`` held the conv before it ("reshape fixes the
    channel count in code"), where ``layers.Reshape((1, 1, 32))`` was cut; so did
    ``ops.split(h, [8, 16, 24])`` ("split sizes are fixed in code"), where the same
    bounds as slices were cut."""
    ctrl, model, x, held = _prune(_model(gate))
    assert "a" not in held, held
    small = assert_strip_equal(ctrl, model, x, tol=1e-5)
    assert small.get_layer("a").filters == 16
    small.save(tmp_path / "small.keras")
    again = keras.models.load_model(tmp_path / "small.keras")
    np.testing.assert_allclose(again(x), small(x), rtol=0, atol=1e-6)


def test_a_reshape_in_a_lambda_keeps_the_count_its_code_writes():
    gate = lambda h: layers.Lambda(lambda t: ops.reshape(t, (-1, 16, 16, 32)) * 2)(h)  # noqa: E731
    ctrl, model, x, held = _prune(_model(gate))
    assert "a" in held  # the Lambda's code is not rewritten
    assert assert_strip_equal(ctrl, model, x, tol=1e-5).get_layer("a").filters == 32


def test_a_reshape_layer_called_on_two_tensors_keeps_their_channels():
    """One rebuilt layer takes one target shape: with the second call's tensor left whole
    (``side`` ignored), the strip wrote the first call's cut width and the stripped model
    failed on the second call."""
    shared = layers.Reshape((16, 16, 32))
    gate = lambda h: ops.concatenate(  # noqa: E731
        [shared(h), shared(layers.Conv2D(32, 1, name="side")(h))], -1)
    config = make_config((1, 16, 16, 3), prune_first_conv=True, filters_multiple_of=1,
                         extra={"ignored_scopes": ["side"]})  # fmt: skip
    ctrl, model = create_compressed_model(_model(gate), config)
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert "reshape fixes the channel count in code" in held["a"], held
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype("float32")
    assert_strip_equal(ctrl, model, x, tol=1e-5)
