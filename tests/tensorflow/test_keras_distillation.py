"""Keras ``knowledge_distillation`` in the ``compression`` list: the dense model teaches,
in a ``tf.GradientTape`` loop and in ``model.fit``, alone and beside pruning and
quantization."""

import numpy as np
import pytest
from keras_helpers import (
    compression_config,
    keras,
    layers,
    randomize_bn,
    regression_data,
    small_resnet,
    tf,
)

from filterprune import NNCFConfig
from filterprune.tensorflow import (
    TFCompressionState,
    TFCompressionStateLoader,
    create_compressed_model,
    create_compression_callbacks,
)
from filterprune.tensorflow.masks import is_masked

PRUNE = {"algorithm": "filter_pruning", "pruning_init": 0.5, "params": {"schedule": "baseline"}}
QUANT = {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 16}}}


def config(kd, *others, register=False):
    kd = {"algorithm": "knowledge_distillation", **kd}
    return compression_config(*others, kd, register=register)


def net():
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = randomize_bn(small_resnet(dropout=0.0))
    fc2 = model.get_layer("fc2").kernel
    fc2.assign(fc2 * 50.0)  # logits of about 1, not 0.03: a softmax worth matching
    return model


def kl_by_hand(student, teacher, t):
    def log_softmax(z):
        z = z / t
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    log_s, log_t = log_softmax(student), log_softmax(teacher)
    return float((np.exp(log_t) * (log_t - log_s)).sum(axis=1).mean() * t * t)


def by_hand(kind, student, teacher, t=3.0):
    if kind == "softmax":
        return kl_by_hand(student, teacher, t)
    return float(np.mean((student - teacher) ** 2))


def images(seed=1, n=4):
    return np.random.default_rng(seed).normal(size=(n, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize("kind", ["softmax", "mse"])
def test_loss_is_distance_to_the_dense_teacher(kind):
    model, x = net(), images()
    dense = model(x, training=False).numpy()  # the model as given, before masks
    ctrl, model = create_compressed_model(
        model, config({"type": kind, "temperature": 3.0, "scale": 2.0}, PRUNE))
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = ctrl.loss()  # pruning's zero + distillation's term
    expected = 2.0 * by_hand(kind, out.numpy().astype(np.float64), dense.astype(np.float64))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    assert float(loss) > 0.01  # pruning changed the student
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None for g in grads[-2:])  # fc2 kernel and bias
    teacher = ctrl.get("knowledge_distillation").teacher
    assert not teacher.trainable_weights and teacher is not model


def test_no_term_without_a_training_call():
    ctrl, model = create_compressed_model(net(), config({"type": "mse"}, PRUNE))
    assert float(ctrl.loss()) == 0.0
    model(images(), training=False)
    assert float(ctrl.loss()) == 0.0
    model(images(), training=True)
    assert float(ctrl.loss()) > 0.0
    assert float(ctrl.loss()) == 0.0  # each call's term is taken once


def test_unpruned_student_matches_the_teacher_in_inference_mode():
    ctrl, model = create_compressed_model(net(), config({"type": "mse"}))
    assert ctrl.name == "knowledge_distillation"
    np.testing.assert_allclose(ctrl.teacher(images(), training=False).numpy(),
                               model(images(), training=False).numpy(), rtol=1e-5, atol=1e-6)
    model(images(), training=True)
    assert float(ctrl.loss()) > 0.0  # BatchNorm: batch statistics against running ones


def test_distillation_alone_runs_with_the_compression_callbacks():
    """Its controller has no schedule: the callbacks failed at the first epoch
    ("'_NoSchedule' object has no attribute 'current_epoch'")."""
    ctrl, model = create_compressed_model(net(), config({"type": "mse"}))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x, y = regression_data(3, n=8)
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0,
                        callbacks=create_compression_callbacks(ctrl))  # fmt: skip
    assert len(history.history["loss"]) == 2


def test_fit_adds_the_term_to_the_compiled_loss():
    """One ``fit`` step at learning rate 0 reports task loss + scale x distillation."""
    model = net()
    x, y = regression_data(3, n=8)
    dense = model(x, training=False).numpy().astype(np.float64)
    ctrl, model = create_compressed_model(model, config({"type": "mse", "scale": 3.0}, PRUNE))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False,
                        callbacks=create_compression_callbacks(ctrl))  # fmt: skip
    out = model(x, training=True).numpy().astype(np.float64)
    assert float(ctrl.loss()) > 0  # the eager call above, taken here
    expected = np.mean((out - y) ** 2) + 3.0 * np.mean((out - dense) ** 2)
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-4)
    plain = np.mean((out - y) ** 2)
    assert abs(history.history["loss"][0] - plain) > 0.01 * plain  # the term is there


def test_training_reduces_the_gap_and_strip_has_no_tap(tmp_path):
    ctrl, model = create_compressed_model(net(), config({"type": "mse"}, PRUNE))
    opt = keras.optimizers.SGD(0.002)
    x = images(2, 16)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            model(x, training=True)
            loss = ctrl.loss()
        weights = model.trainable_weights
        opt.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))
        return loss

    losses = [float(step()) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert float(ctrl.loss()) == 0.0  # the traced call's tensors are not used outside it
    small = ctrl.strip()
    assert "call" not in small.__dict__ and "call" in model.__dict__  # the training model keeps it
    assert type(small).__name__ == "Functional" and not any(is_masked(la) for la in small.layers)
    small.save(tmp_path / "small.keras")
    model.save(tmp_path / "training.keras")  # the tap does not get in the way of saving
    loaded = keras.models.load_model(tmp_path / "training.keras")
    assert type(loaded).__name__ == "Functional" and "call" not in loaded.__dict__


def test_strip_alone_is_a_new_equal_model():
    ctrl, model = create_compressed_model(net(), config({"type": "softmax"}))
    small = ctrl.strip()
    assert small is not model and "call" not in small.__dict__
    np.testing.assert_allclose(small(images(), training=False).numpy(),
                               model(images(), training=False).numpy(), rtol=1e-5, atol=1e-6)


def test_teacher_is_the_dense_model_not_the_student():
    ctrl, model = create_compressed_model(net(), config({"type": "mse"}, PRUNE))
    teacher = ctrl.get("knowledge_distillation").teacher
    assert any(is_masked(la) for la in model.layers)
    assert not any(is_masked(la) for la in teacher.layers)
    kernel = model.get_layer("a").kernel.numpy()
    np.testing.assert_array_equal(teacher.get_layer("a").kernel.numpy(), kernel)


def test_composes_with_pruning_and_quantization(tmp_path):
    """Statistics hold every part, the loss is their sum, the state resumes (with the
    run's teacher only: a model of other weights at creation is refused)."""
    cfg = config({"type": "softmax", "temperature": 2.0}, PRUNE, QUANT, register=True)
    model, x = net(), images(5, 8)
    dense = model(x, training=False).numpy().astype(np.float64)
    ctrl, model = create_compressed_model(model, cfg)
    stats = ctrl.statistics()
    assert list(stats.to_dict()) == ["filter_pruning", "quantization", "knowledge_distillation"]
    assert stats.knowledge_distillation == {"type": "softmax", "temperature": 2.0, "scale": 1.0}
    assert stats.flops_kept < 1.0 and stats.quantization.num_quantizers > 0
    out = model(x, training=True)
    total = float(ctrl.loss())  # pruning's zero + quantization's zero + distillation's term
    np.testing.assert_allclose(total, kl_by_hand(out.numpy().astype(np.float64), dense, 2.0),
                               rtol=1e-4)  # fmt: skip
    assert total > 0 and [float(c.loss()) for c in ctrl.child_ctrls] == [0.0, 0.0, 0.0]
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    data = regression_data(1)
    model.fit(*data, batch_size=8, epochs=1, verbose=0,
              callbacks=create_compression_callbacks(ctrl))
    path = tf.train.Checkpoint(model=model, compression_state=TFCompressionState(ctrl)).save(
        str(tmp_path / "ckpt"))
    loader = tf.train.Checkpoint(compression_state=TFCompressionStateLoader())
    loader.restore(path).expect_partial()
    state = loader.compression_state.state
    assert [c["algorithm"] for c in state["children"]] == [
        "filter_pruning", "quantization", "knowledge_distillation"]
    other = net()
    other.get_layer("fc2").kernel.assign(other.get_layer("fc2").kernel * 0.5)
    with pytest.raises(ValueError, match="load the weights the run started from"):
        create_compressed_model(other, cfg, state)  # its copy would teach: not the run's
    resumed, model2 = create_compressed_model(net(), cfg, state)
    tf.train.Checkpoint(model=model2).restore(path).expect_partial()
    assert resumed.get("knowledge_distillation").params.temperature == 2.0
    model(x, training=True), model2(x, training=True)
    assert float(ctrl.loss()) == float(resumed.loss())  # the same teacher goes on
    kept, kept2 = ctrl.get("filter_pruning").plan.kept, resumed.get("filter_pruning").plan.kept
    assert kept.keys() == kept2.keys() and all(np.array_equal(kept[g], kept2[g]) for g in kept)
    small = ctrl.strip()  # pruned filters cut, quantizers kept, no tap
    assert small.count_params() < ctrl.strip(shrink=False).count_params()
    assert type(small.get_layer("down")).__name__ == "QuantizedWeights"
    assert "call" not in small.__dict__
    ref = model(x, training=False).numpy()
    np.testing.assert_allclose(small(x, training=False).numpy(), ref,
                               atol=1e-4 * float(np.abs(ref).max()))


def test_sequential_student():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(8, 3, name="c1"),
                              layers.Conv2D(8, 3, name="c2"), layers.Flatten(),
                              layers.Dense(5, name="fc")])  # fmt: skip
    x = images(6, 4)[:, :8, :8]
    dense = model(x, training=False).numpy().astype(np.float64)
    cfg = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 8, 8, 3]},
                                "compression": [{"algorithm": "knowledge_distillation",
                                                 "type": "softmax", "temperature": 4.0}]})
    ctrl, model = create_compressed_model(model, cfg)
    model.get_layer("fc").kernel.assign(model.get_layer("fc").kernel * 2.0)  # a student apart
    out = model(x, training=True).numpy().astype(np.float64)
    np.testing.assert_allclose(float(ctrl.loss()), kl_by_hand(out, dense, 4.0), rtol=1e-4)
    assert isinstance(ctrl.strip(), keras.Sequential)


@pytest.mark.parametrize("units", [1, None])
def test_softmax_over_one_class_or_the_batch_is_refused(units):
    """A single logit's softmax is constant (the term was 0), and an output of shape
    ``(N,)`` took the softmax over the batch."""
    keras.backend.clear_session()
    inp = keras.Input((32, 32, 3))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(8, 3, name="c")(inp))
    out = layers.Dense(1, name="fc")(x)
    model = keras.Model(inp, out if units else layers.Reshape(())(out))
    ctrl, model = create_compressed_model(model, config({"type": "softmax"}))
    model(images(), training=True)
    with pytest.raises(ValueError, match=r"class axis \(axis -1\) of 2 or more .* \"mse\""):
        ctrl.loss()
