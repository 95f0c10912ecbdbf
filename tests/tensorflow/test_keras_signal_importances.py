"""Keras: the ``taylor`` importance accumulates gradient x weight through weight taps;
``bn_scale`` reads the BatchNorm gammas.

The Taylor tests here use a net without BatchNorm, where the weight's ``sum g*w``
scores; ``test_keras_taylor_batchnorm`` covers a conv followed by a BatchNorm.
"""

import numpy as np
import pytest
from keras_helpers import conv_bn_net, keras, layers, make_config, tf

from filterprune.tensorflow import analyze_model, create_compressed_model

SILENT = [0, 3, 5, 6, 9, 10, 12, 15]
LIVE = sorted(set(range(16)) - set(SILENT))


def plain_net(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
    x = layers.Conv2D(16, 3, padding="same", name="mid")(x)
    x = layers.Conv2D(4, 1, name="head")(layers.LeakyReLU(0.2)(x))
    return keras.Model(inp, layers.GlobalAveragePooling2D()(x))


def kept_out(ctrl, layer="mid"):
    return np.flatnonzero(ctrl.keeps()[layer]["out"]).tolist()


def config(importance, init=0.0):
    return make_config((1, 16, 16, 3), filter_importance=importance, schedule="baseline",
                       pruning_init=init)  # fmt: skip


def silenced_net():
    """The largest ``mid`` filters feed nothing (``head`` reads them with zero weights):
    no gradient reaches them."""
    model = plain_net()
    mid, head = model.get_layer("mid").kernel, model.get_layer("head").kernel
    kernel = mid.numpy()
    kernel[..., SILENT] *= 10.0
    mid.assign(kernel)
    kernel = head.numpy()
    kernel[:, :, SILENT, :] = 0.0
    head.assign(kernel)
    return model


def data(seed=1, n=16):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 16, 16, 3)).astype("float32"),
            rng.normal(size=(n, 4)).astype("float32"))  # fmt: skip


def taylor_by_hand(model, batches):
    """``(sum over a filter of dL/dW * W)^2`` of ``mid``, summed over MSE steps."""
    kernel = model.get_layer("mid").kernel
    total = np.zeros(16)
    for x, y in batches:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grad = tape.gradient(loss, kernel).numpy().astype(np.float64)
        total += np.square((grad * kernel.numpy()).sum(axis=(0, 1, 2)))
    return total


def test_bn_scale_keeps_the_largest_gammas():
    keras.utils.set_random_seed(0)
    model = conv_bn_net()
    gamma = np.random.default_rng(3).permutation(np.linspace(0.1, 1.6, 16)).astype("float32")
    model.get_layer("bn").gamma.assign(gamma)
    ctrl, _ = create_compressed_model(model, config("bn_scale", 0.5))
    assert kept_out(ctrl) == np.sort(np.argsort(-gamma)[:8]).tolist()


def test_bn_scale_ranks_by_magnitude():
    """Large negative gammas are kept: ``|gamma|`` counts, not its sign."""
    keras.utils.set_random_seed(0)
    model = conv_bn_net()
    magnitude = np.random.default_rng(4).permutation(np.linspace(0.1, 1.6, 16))
    gamma = (magnitude * np.where(np.arange(16) % 2 == 0, -1.0, 1.0)).astype("float32")
    model.get_layer("bn").gamma.assign(gamma)
    ctrl, _ = create_compressed_model(model, config("bn_scale", 0.5))
    kept = kept_out(ctrl)
    assert kept == np.sort(np.argsort(-magnitude)[:8]).tolist()
    assert kept != np.sort(np.argsort(-gamma)[:8]).tolist()  # the signed order differs


def test_taylor_in_fit_drops_filters_without_gradient():
    """L1 keeps the largest (silenced) filters; Taylor keeps those the loss depends on."""
    l1, _ = create_compressed_model(silenced_net(), config("L1", 0.5))
    assert kept_out(l1) == SILENT
    ctrl, model = create_compressed_model(silenced_net(), config("taylor"))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # gradients, no change
    model.fit(*data(), batch_size=8, epochs=1, shuffle=False, verbose=0)
    ctrl.set_pruning_level(0.5)
    assert kept_out(ctrl) == LIVE
    totals = ctrl.taylor.totals["mid"].numpy()
    assert np.all(totals[SILENT] == 0) and totals[LIVE].min() > 1e-6 * totals.max()
    assert int(ctrl.taylor.passes["mid"].numpy()) == 2  # one per batch


def test_taylor_keeps_the_largest_gradient_times_weight():
    """Totals equal a hand computation over two steps, the kept filters are its top half,
    and L1 would keep others."""
    batches = [data(2, 8), data(3, 8)]
    expected = taylor_by_hand(plain_net(5), batches)
    ctrl, model = create_compressed_model(plain_net(5), config("taylor"))
    for x, y in batches:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y)) + ctrl.loss()
        tape.gradient(loss, model.trainable_weights)
    np.testing.assert_allclose(ctrl.taylor.totals["mid"].numpy(), expected, rtol=1e-3,
                               atol=1e-5 * expected.max())  # fmt: skip
    ctrl.set_pruning_level(0.5)
    top = np.sort(np.argsort(-expected)[:8]).tolist()
    assert kept_out(ctrl) == top
    l1, _ = create_compressed_model(plain_net(5), config("L1", 0.5))
    assert kept_out(l1) != top


def test_taylor_before_any_step_uses_l1():
    ctrl, _ = create_compressed_model(silenced_net(), config("taylor", 0.5))
    assert kept_out(ctrl) == SILENT  # no gradients yet: L1 stands in
    assert ctrl.taylor.scores("mid") is None


def test_taylor_totals_accumulate_and_pruned_filters_gain_nothing():
    ctrl, model = create_compressed_model(plain_net(), config("taylor", 0.5))
    kept = kept_out(ctrl)
    pruned = sorted(set(range(16)) - set(kept))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.fit(*data(), batch_size=16, epochs=1, verbose=0)
    once = ctrl.taylor.totals["mid"].numpy().copy()
    model.fit(*data(3), batch_size=16, epochs=1, verbose=0)
    again = ctrl.taylor.totals["mid"].numpy()
    assert np.all(again[kept] > once[kept]) and np.all(once[kept] > 1e-6 * once.max())
    assert np.all(again[pruned] == 0)  # masked: zero gradient


def test_a_non_finite_gradient_adds_nothing_to_the_taylor_totals():
    ctrl, model = create_compressed_model(plain_net(), config("taylor", 0.5))
    x, y = data()
    for scale in (1.0, float("inf")):  # inf: an overflowing mixed-precision step
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y)) * scale
        tape.gradient(loss, model.trainable_variables)
        if scale == 1.0:
            once = ctrl.taylor.totals["mid"].numpy().copy()
    assert np.all(np.isfinite(once)) and once.max() > 0
    np.testing.assert_array_equal(ctrl.taylor.totals["mid"].numpy(), once)


def test_taylor_strip_has_no_taps():
    ctrl, model = create_compressed_model(silenced_net(), config("taylor", 0.5))
    small = ctrl.strip()
    assert type(small.get_layer("mid")) is layers.Conv2D
    x, _ = data(4, 2)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(small(x, training=True))
    tape.gradient(loss, small.trainable_weights)
    assert int(ctrl.taylor.passes["mid"].numpy()) == 0


@pytest.mark.parametrize("importance", ["taylor", "bn_scale"])
def test_dry_run_refuses_signal_importances(importance):
    from filterprune.errors import ConfigError

    message = (r"^`filter_importance` must be one a dry run \(analyze\) can compute; "
               rf"'{importance}' needs .*Received: filter_importance='{importance}'\.$")
    with pytest.raises(ConfigError, match=message):
        analyze_model(conv_bn_net(), config(importance))
