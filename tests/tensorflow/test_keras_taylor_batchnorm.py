"""Keras: ``taylor`` scores a conv followed by a training-mode BatchNorm on the
BatchNorm's ``gamma`` and ``beta``, ``(g_gamma * gamma + g_beta * beta)^2`` per channel,
summed over steps (the conv's own ``sum g*w`` is rounding noise there)."""

import numpy as np
from keras_helpers import conv_bn_net, keras, make_config, randomize_bn, tf

from filterprune.tensorflow import create_compressed_model

SILENT = [0, 3, 5, 6, 9, 10, 12, 15]
LIVE = sorted(set(range(16)) - set(SILENT))


def net(scaled=(), silent=()):
    """``conv_bn_net`` with random BatchNorm parameters; filters ``scaled`` of ``mid`` x10,
    channels ``silent`` with zero ``gamma`` and ``beta`` and ``mid`` filters x10."""
    keras.utils.set_random_seed(0)
    model = randomize_bn(conv_bn_net())
    mid, bn = model.get_layer("mid"), model.get_layer("bn")
    bn.epsilon = 1e-5  # as PyTorch's: the scale invariance holds up to epsilon / variance
    kernel, gamma, beta = mid.kernel.numpy(), bn.gamma.numpy(), bn.beta.numpy()
    kernel[..., list(scaled) + list(silent)] *= 10.0
    gamma[list(silent)] = beta[list(silent)] = 0.0
    mid.kernel.assign(kernel)
    bn.gamma.assign(gamma)
    bn.beta.assign(beta)
    return model


def batches():
    rng = np.random.default_rng(1)
    return [(rng.normal(size=(8, 16, 16, 3)).astype("float32"),
             rng.normal(size=(8, 4)).astype("float32")) for _ in range(2)]  # fmt: skip


def config(importance, init=0.0):
    return make_config((1, 16, 16, 3), filter_importance=importance, schedule="baseline",
                       pruning_init=init)  # fmt: skip


def kept_out(ctrl):
    return np.flatnonzero(ctrl.keeps()["mid"]["out"]).tolist()


def taylor(model):
    """A controller whose totals saw two training-mode MSE steps of a tape loop."""
    ctrl, model = create_compressed_model(model, config("taylor"))
    for x, y in batches():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y)) + ctrl.loss()
        tape.gradient(loss, model.trainable_weights)
    return ctrl


def by_hand(model, variables):
    """``(sum over variables of g * value, per channel)^2`` of ``mid``'s 16 channels summed
    over the steps; ``variables`` (layer, name, axes summed) in the sum."""
    total = np.zeros(16)
    for x, y in batches():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        watched = [getattr(model.get_layer(layer), name) for layer, name, _ in variables]
        grads = tape.gradient(loss, watched)
        per_filter = sum((g.numpy().astype(np.float64) * v.numpy()).sum(axis=spec[2])
                         for g, v, spec in zip(grads, watched, variables, strict=True))  # fmt: skip
        total += np.square(per_filter)
    return total


ON_BN = [("bn", "gamma", ()), ("bn", "beta", ())]


def test_totals_are_the_batchnorm_terms_by_hand():
    expected = by_hand(net(), ON_BN)
    ctrl = taylor(net())
    np.testing.assert_allclose(ctrl.taylor.totals["mid"].numpy(), expected, rtol=1e-4,
                               atol=1e-6 * expected.max())  # fmt: skip
    assert int(ctrl.taylor.passes["mid"].numpy()) == 2  # one per step, gamma and beta together
    ctrl.set_pruning_level(0.5)
    assert kept_out(ctrl) == np.sort(np.argsort(-expected)[:8]).tolist()


def test_scaling_a_filter_changes_nothing():
    """The BatchNorm undoes a filter's scale: scores and ranking stay."""
    plain, big = taylor(net()), taylor(net(scaled=[2, 7, 11]))
    np.testing.assert_allclose(big.taylor.totals["mid"].numpy(),
                               plain.taylor.totals["mid"].numpy(), rtol=1e-3)  # fmt: skip
    plain.set_pruning_level(0.5)
    big.set_pruning_level(0.5)
    assert kept_out(big) == kept_out(plain)


def test_fit_drops_channels_silenced_after_the_batchnorm():
    """Zero ``gamma`` and ``beta``: the channel outputs 0, scores 0 and goes first, though
    its filter is the largest (which L1 keeps)."""
    l1, _ = create_compressed_model(net(silent=SILENT), config("L1", 0.5))
    assert kept_out(l1) == SILENT
    ctrl, model = create_compressed_model(net(silent=SILENT), config("taylor"))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # gradients, no change
    x, y = (np.concatenate(parts) for parts in zip(*batches(), strict=True))
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    totals = ctrl.taylor.totals["mid"].numpy()
    assert np.all(totals[SILENT] == 0) and totals[LIVE].min() > 0
    ctrl.set_pruning_level(0.5)
    assert kept_out(ctrl) == LIVE


def test_a_frozen_batchnorm_leaves_the_weight_scoring():
    """A frozen Keras BatchNorm runs in inference mode and gets no gradient: the conv's
    ``(sum g*w)^2`` scores, as without a BatchNorm."""
    frozen = net()
    frozen.get_layer("bn").trainable = False
    expected = by_hand(frozen, [("mid", "kernel", (0, 1, 2))])
    model = net()
    model.get_layer("bn").trainable = False  # before the controller looks
    np.testing.assert_allclose(taylor(model).taylor.totals["mid"].numpy(), expected, rtol=1e-4,
                               atol=1e-6 * expected.max())  # fmt: skip
