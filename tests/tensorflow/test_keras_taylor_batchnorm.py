"""Keras: ``taylor`` scores a conv followed by a training-mode BatchNorm on the
BatchNorm's ``gamma`` and ``beta``, ``(g_gamma * gamma + g_beta * beta)^2`` per channel,
summed over steps (the conv's own ``sum g*w`` is rounding noise there)."""

import numpy as np
import pytest
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


def on_output(model, training):
    """The totals of ``mid`` as ``(sum g_y * y)^2`` over the BatchNorm's output ``y``."""
    stem, mid, bn, head = (model.get_layer(n) for n in ("stem", "mid", "bn", "head"))
    total = np.zeros(16)
    for x, y in batches():
        with tf.GradientTape() as tape:
            out = bn(mid(stem(x)), training=training)
            pred = tf.reduce_mean(head(tf.nn.relu(out)), axis=(1, 2))
            loss = tf.reduce_mean(tf.square(pred - y))
        grad = tape.gradient(loss, out)
        total += np.square((grad.numpy().astype(np.float64) * out.numpy()).sum(axis=(0, 1, 2)))
    return total


def without_scale(center):
    """``conv_bn_net`` with a BatchNorm of no ``gamma`` (the Keras docs' form before a
    ReLU), with or without ``beta``."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inp)
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="mid")(x)
    bn = keras.layers.BatchNormalization(scale=False, center=center, epsilon=1e-5, name="bn")
    x = keras.layers.Conv2D(4, 1, name="head")(keras.layers.ReLU()(bn(x)))
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))
    if center:
        bn.beta.assign(np.random.default_rng(0).normal(0, 0.3, 16).astype("float32"))
    return model


@pytest.mark.parametrize("case", ["frozen", "scale=False", "no scale or center"])
def test_a_batchnorm_without_a_trainable_scale_scores_on_its_output(case):
    """No gradient gives the BatchNorm's term there: the conv's ``sum g*w`` scored, which
    a training-mode BatchNorm makes rounding noise. Its output's ``(sum g*y)^2`` scores
    now (a frozen one runs in inference mode)."""

    def model():
        if case != "frozen":
            return without_scale(center=case == "scale=False")
        built = net()
        built.get_layer("bn").trainable = False  # before the controller looks
        return built

    expected = on_output(model(), training=case != "frozen")
    totals = taylor(model()).taylor.totals["mid"].numpy()
    assert expected.min() > 1e-6 * expected.max()
    np.testing.assert_allclose(totals, expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_a_loss_scale_does_not_weigh_the_steps():
    """The taps saw gradients of the scaled loss: each step counted by its scale squared
    (2^20 times at a scale of 1024, and a dynamic scale that grows weighed the later
    steps more; under mixed_float16 fit wraps the optimizer so)."""

    def totals(optimizer):
        ctrl, model = create_compressed_model(net(), config("taylor"))
        model.compile(optimizer=optimizer, loss="mse")
        x, y = (np.concatenate(parts) for parts in zip(*batches(), strict=True))
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        return ctrl.taylor.totals["mid"].numpy()

    plain = totals(keras.optimizers.SGD(0.0))
    scaled = totals(keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.0), initial_scale=1024.0, dynamic_growth_steps=1))  # fmt: skip
    np.testing.assert_allclose(scaled, plain, rtol=1e-4)


def dense_block():
    """A DenseNet block: ``c1`` is read by ``bn1`` and ``bn2``, each inside a
    concatenation, ``c2`` by ``bn2``."""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inp = keras.Input((16, 16, 3))
    x0 = layers.ReLU()(layers.BatchNormalization(name="bn0")(layers.Conv2D(8, 3, padding="same",
                                                                           name="stem")(inp)))
    y1 = layers.Conv2D(4, 3, padding="same", name="c1")(x0)
    bn1 = layers.BatchNormalization(epsilon=1e-5, name="bn1")
    y2 = layers.Conv2D(4, 3, padding="same", name="c2")(layers.ReLU()(bn1(
        layers.Concatenate()([x0, y1]))))  # fmt: skip
    bn2 = layers.BatchNormalization(epsilon=1e-5, name="bn2")
    out = layers.ReLU()(bn2(layers.Concatenate()([x0, y1, y2])))
    model = keras.Model(inp, layers.GlobalAveragePooling2D()(layers.Conv2D(4, 1, name="head")(out)))
    return randomize_bn(model)


def test_batchnorms_reading_a_layer_inside_concatenations_score_it():
    """The convs of a DenseNet block were scored on their weights' ``sum g*w``, which
    the BatchNorms after them make rounding noise."""
    cfg = make_config((1, 16, 16, 3), filter_importance="taylor", schedule="baseline",
                      pruning_init=0.0, prune_first_conv=True)  # fmt: skip
    ctrl, model = create_compressed_model(dense_block(), cfg)
    reference = dense_block()
    expected = {"c1": np.zeros(4), "c2": np.zeros(4)}
    for x, y in batches():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        tape.gradient(loss, model.trainable_weights)
        bns = [reference.get_layer(n) for n in ("bn1", "bn2")]
        watched = [v for bn in bns for v in (bn.gamma, bn.beta)]
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(reference(x, training=True) - y))
        grads = [g.numpy().astype(np.float64) for g in tape.gradient(loss, watched)]
        terms = [grads[2 * i] * bn.gamma.numpy() + grads[2 * i + 1] * bn.beta.numpy()
                 for i, bn in enumerate(bns)]  # fmt: skip
        expected["c1"] += terms[0][8:12] ** 2 + terms[1][8:12] ** 2
        expected["c2"] += terms[1][12:16] ** 2
    for name, want in expected.items():
        np.testing.assert_allclose(ctrl.taylor.totals[name].numpy(), want, rtol=1e-3,
                                   atol=1e-6 * want.max())  # fmt: skip


def test_a_gradient_tape_loop_names_the_optimizer_that_scaled_its_loss():
    """The model's optimizer's scale was divided out of a loop that scaled with none (its
    totals came out 2^-20 of fit's), or with an optimizer of its own."""

    def totals(loop_scale):
        ctrl, model = create_compressed_model(net(), config("taylor"))
        model.compile(optimizer=keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.0), initial_scale=1024.0), loss="mse")  # fmt: skip
        own = keras.optimizers.SGD(0.0)
        if loop_scale is not None:
            own = keras.optimizers.LossScaleOptimizer(own, initial_scale=loop_scale)
            own.build(model.trainable_weights)
        ctrl.set_grad_scaler(own)
        for x, y in batches():
            with tf.GradientTape() as tape:
                loss = own.scale_loss(tf.reduce_mean(tf.square(model(x, training=True) - y)))
            tape.gradient(loss, model.trainable_weights)
        return ctrl.taylor.totals["mid"].numpy()

    plain = taylor(net()).taylor.totals["mid"].numpy()
    np.testing.assert_allclose(totals(None), plain, rtol=1e-4)
    np.testing.assert_allclose(totals(64.0), plain, rtol=1e-4)


def sum_first():
    """``bn(a(x) + b(x))``, as in a pre-activation ResNet's next block."""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", name="stem")(inp)
    added = layers.Add()([layers.Conv2D(6, 3, padding="same", name="a")(x),
                          layers.Conv2D(6, 1, name="b")(x)])  # fmt: skip
    out = layers.ReLU()(layers.BatchNormalization(epsilon=1e-5, name="bn")(added))
    model = keras.Model(inp, layers.GlobalAveragePooling2D()(layers.Conv2D(4, 1, name="head")(out)))
    return randomize_bn(model)


def test_layers_added_before_a_batchnorm_take_its_term():
    """Both convs were scored on their weights' ``sum g*w``, which cancel between them:
    each now takes the BatchNorm's term."""
    ctrl, model = create_compressed_model(sum_first(), config("taylor"))
    reference = sum_first()
    expected = np.zeros(6)
    for x, y in batches():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        tape.gradient(loss, model.trainable_weights)
        bn = reference.get_layer("bn")
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(reference(x, training=True) - y))
        g_gamma, g_beta = (g.numpy().astype(np.float64)
                           for g in tape.gradient(loss, [bn.gamma, bn.beta]))  # fmt: skip
        expected += (g_gamma * bn.gamma.numpy() + g_beta * bn.beta.numpy()) ** 2
    for name in ("a", "b"):
        assert ctrl.taylor.totals[name].shape == expected.shape
        np.testing.assert_allclose(ctrl.taylor.totals[name].numpy(), expected, rtol=1e-3,
                                   atol=1e-6 * expected.max())  # fmt: skip
