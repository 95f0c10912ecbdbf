"""Keras slices written as numbers over the channels (``h[..., :16]``): cut where the
bounds fall on equal parts of the width, the stripped model's bounds rewritten.

Every weight and BatchNorm statistic is redrawn before comparing, so no branch hides
behind a zero.
"""

import numpy as np
import pytest
from keras_helpers import assert_strip_equal, keras, layers, make_config, randomize_bn

from filterprune.tensorflow import create_compressed_model

ops = keras.ops

GATES = {
    "halves": lambda h: ops.tanh(h[..., :16]) * ops.sigmoid(h[..., 16:]),
    "halves from the end": lambda h: ops.tanh(h[:, :, :, :-16]) * ops.sigmoid(h[..., -16:]),
    "quarters": lambda h: ops.concatenate([h[..., 8:24] * 2, h[..., :8], h[..., 24:]], -1),
    "cropped halves": lambda h: h[:, 1:-1, 1:-1, :16] + h[:, 2:, 2:, 16:],
}


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


@pytest.mark.parametrize("gate", GATES.values(), ids=GATES)
def test_a_slice_on_equal_parts_is_cut_and_its_bounds_follow(gate, tmp_path):
    """Such a slice held the conv before it ("indexes into channels")."""
    ctrl, model, x, held = _prune(_model(gate))
    assert "a" not in held, held
    small = assert_strip_equal(ctrl, model, x, tol=1e-5)
    assert small.get_layer("a").filters < 32
    small.save(tmp_path / "small.keras")
    again = keras.models.load_model(tmp_path / "small.keras")
    np.testing.assert_allclose(again(x), small(x), rtol=0, atol=1e-6)


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
    assert held["a"].endswith("indexes into channels")
    assert_strip_equal(ctrl, model, x, tol=1e-5)
