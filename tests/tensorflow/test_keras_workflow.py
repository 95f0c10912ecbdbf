"""The Keras workflow of the reference, end to end, on a small Functional ResNet."""

import logging

import numpy as np
import pytest
from keras_helpers import (
    assert_strip_equal,
    conv_bn_net,
    keras,
    layers,
    make_config,
    randomize_bn,
    small_resnet,
    tf,
)

from filterprune import AnalysisError, ConfigError
from filterprune.tensorflow import (
    CompressionStage,
    create_compressed_model,
    create_compression_callbacks,
    register_default_init_args,
)


def test_masked_equals_stripped_and_is_smaller(resnet, images, tmp_path):
    n_full = resnet.count_params()
    ctrl, model = create_compressed_model(resnet, make_config())
    assert model is resnet
    small = assert_strip_equal(ctrl, model, images)
    assert small.count_params() < 0.6 * n_full
    assert small.get_layer("fc2").units == 10  # the classifier keeps its width
    assert small.get_layer("a").filters == small.get_layer("stem").filters  # one group
    assert small.get_layer("sep").filters < 32
    assert type(small.get_layer("a")) is layers.Conv2D
    small.save(tmp_path / "pruned.keras")
    reloaded = keras.models.load_model(tmp_path / "pruned.keras")  # no custom_objects
    np.testing.assert_allclose(reloaded(images).numpy(), small(images).numpy(), atol=1e-6)


def test_nchw_input_info_reads_the_same_graph(resnet):
    ctrl, _ = create_compressed_model(resnet, make_config(sample=(1, 3, 32, 32)))
    assert ctrl.capture.layouts == ["NCHW->NHWC"]
    assert ctrl.capture.input_shapes == [(1, 32, 32, 3)]
    with pytest.raises(ConfigError, match=r"must fit the model input 'image'.*Received: \[1, 5"):
        create_compressed_model(small_resnet("other"), make_config(sample=(1, 5, 32, 32)))


def test_weights_and_checkpoint_keys_stay_the_original_ones(resnet):
    before = [(v.path, tuple(v.shape)) for v in resnet.weights]
    create_compressed_model(resnet, make_config())
    assert [(v.path, tuple(v.shape)) for v in resnet.weights] == before


def test_gradients_of_pruned_filters_are_zero_and_weights_are_kept(resnet, images):
    ctrl, model = create_compressed_model(resnet, make_config())
    keep = ctrl.keeps()["b"]["out"]
    assert not keep.all()
    kernel = model.get_layer("b").kernel
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(images, training=True) ** 2)
    grad = tape.gradient(loss, kernel).numpy()
    assert np.all(grad[..., ~keep] == 0)
    assert np.abs(grad[..., keep]).sum() > 0
    assert np.abs(kernel.numpy()[..., ~keep]).sum() > 0  # stored weights are kept


def test_strip_without_shrink_keeps_shapes_and_zeros_filters(resnet, images):
    ctrl, model = create_compressed_model(resnet, make_config())
    plain = assert_strip_equal(ctrl, model, images, shrink=False)
    kernel = plain.get_layer("b").kernel.numpy()
    assert kernel.shape == model.get_layer("b").kernel.shape
    assert (np.abs(kernel).sum(axis=(0, 1, 2)) == 0).sum() > 0


def test_fit_with_callbacks_advances_schedule_and_logs_to_tensorboard(resnet, tmp_path):
    config = make_config(pruning_init=0.1, pruning_target=0.5, pruning_steps=3)
    ctrl, model = create_compressed_model(resnet, config)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 32, 32, 3)), rng.normal(size=(16, 10))
    levels = []
    callbacks = create_compression_callbacks(ctrl, log_dir=str(tmp_path / "log"))
    callbacks.append(keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: levels.append(round(ctrl.pruning_level, 4))))
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=callbacks)
    assert levels[0] == pytest.approx(0.1)
    assert levels[0] < levels[1] < levels[2] == pytest.approx(0.5) == levels[3]
    assert ctrl.frozen and ctrl.scheduler.current_step == 4 * 2 - 1
    assert history.history["pruning_level"] == pytest.approx(levels, abs=1e-4)
    assert history.history["flops_kept"][-1] < history.history["flops_kept"][0] <= 1
    tags = set()
    for event_file in (tmp_path / "log").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags |= {v.tag for v in event.summary.value}
    assert {"compression/pruning_level", "compression/flops_kept", "compression/params_kept",
            "compression/layer_level/b"} <= tags
    assert_strip_equal(ctrl, model, x[:2].astype("float32"))


@pytest.mark.parametrize("stepped", [False, True])
def test_a_strip_of_a_schedule_never_stepped_says_so_once(resnet, caplog, stepped):
    """A loop of the user's own without ``fit``'s callbacks or the scheduler's calls left
    the model at ``pruning_init`` without a word."""
    ctrl, _ = create_compressed_model(
        resnet, make_config(pruning_init=0.1, pruning_target=0.5, pruning_steps=3))
    if stepped:
        ctrl.scheduler.epoch_step()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="filterprune"):  # whatever set it before
        ctrl.strip()
        ctrl.strip()
    said = [r.getMessage() for r in caplog.records if "never stepped" in r.getMessage()]
    assert len(said) == (0 if stepped else 1), said
    if said:
        assert "create_compression_callbacks(ctrl)" in said[0]


def test_loss_is_zero_and_stage_follows_level(resnet):
    ctrl, _ = create_compressed_model(
        resnet, make_config(pruning_init=0.0, pruning_target=0.5, pruning_steps=3))
    assert float(ctrl.loss()) == 0.0
    assert ctrl.compression_stage() == CompressionStage.UNCOMPRESSED
    ctrl.scheduler.epoch_step()
    ctrl.scheduler.epoch_step()
    assert ctrl.compression_stage() == CompressionStage.PARTIALLY_COMPRESSED
    ctrl.scheduler.epoch_step()
    assert ctrl.compression_stage() == CompressionStage.FULLY_COMPRESSED


def test_statistics_report_flops_params_levels_and_reasons(resnet):
    ctrl, _ = create_compressed_model(resnet, make_config())
    st = ctrl.statistics()
    assert st.current_flops < st.full_flops and st.current_params < st.full_params
    assert st.target_level == 0.5
    reasons = {tuple(p): r for p, r in st.unpruned}
    assert reasons[("stem", "a", "se2")] == "first convolution (prune_first_conv is off)"
    assert "downsampling" in reasons[("down", "sep/depthwise")]  # its filters follow down's
    assert reasons[("fc2",)] == "feeds a model output"
    assert "fc2: feeds a model output" in str(st)


def test_flops_target_is_met(resnet, images):
    config = make_config(pruning_init=0.3, pruning_flops_target=0.3, prune_first_conv=True,
                         prune_downsample_convs=True)
    ctrl, model = create_compressed_model(resnet, config)
    assert 1 - ctrl.statistics().flops_kept >= 0.3
    assert_strip_equal(ctrl, model, images)


def test_a_flops_target_on_a_few_coarse_groups_lands_in_its_window():
    """Conv1D, a strided Conv1D and a transposed one: 0.6134 of the FLOPs went for a 0.5
    target, where the same blocks can remove 0.5000."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((40, 3))
    x = layers.ReLU()(layers.Conv1D(16, 3, padding="same")(inp))
    x = layers.ReLU()(layers.Conv1D(32, 5, strides=2, padding="same")(x))
    x = layers.ReLU()(layers.Conv1DTranspose(16, 3, strides=2)(x))
    model = keras.Model(inp, layers.Conv1D(4, 1)(x))
    config = make_config((1, 40, 3), pruning_init=0.5, pruning_flops_target=0.5,
                         schedule="baseline", prune_first_conv=True,
                         prune_downsample_convs=True)  # fmt: skip
    ctrl, model = create_compressed_model(model, config)
    assert 0.5 <= 1 - ctrl.statistics().flops_kept <= 0.52
    assert_strip_equal(ctrl, model, np.random.default_rng(0).normal(size=(2, 40, 3)))


def test_batchnorm_adaptation_runs_on_registered_dataset(resnet):
    data = tf.data.Dataset.from_tensor_slices(
        (np.random.default_rng(0).normal(size=(32, 32, 32, 3)).astype("float32"), np.zeros(32)))
    config = make_config(extra={"initializer": {"batchnorm_adaptation":
                                                {"num_bn_adaptation_samples": 16}}})
    config = register_default_init_args(config, data, batch_size=8)  # unbatched: batched here
    before = resnet.get_layer("bna").moving_variance.numpy().copy()
    create_compressed_model(resnet, config)
    after = resnet.get_layer("bna").moving_variance.numpy()
    assert not np.allclose(before, after)
    assert resnet.get_layer("bna").momentum == 0.99  # restored


def test_what_is_not_a_model_is_named():
    """A layer, or a model's weights, failed with an AttributeError inside."""
    for value, says in ((layers.Conv2D(4, 3), "Conv2D"), ([np.zeros(3)], "list")):
        with pytest.raises(TypeError, match=f"must be a keras.Model .*Received: a {says}\\."):
            create_compressed_model(value, make_config(sample=(1, 8, 8, 3)))


def test_subclassed_model_is_a_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = layers.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    net = Net()
    net(np.zeros((1, 8, 8, 3), "float32"))
    with pytest.raises(AnalysisError, match=r"subclassed keras.Model.*Functional API"):
        create_compressed_model(net, make_config(sample=(1, 8, 8, 3)))


def test_unbuilt_sequential_is_a_clear_error():
    with pytest.raises(AnalysisError, match=r"not built.*keras.Input"):
        create_compressed_model(keras.Sequential([layers.Conv2D(4, 3)]), make_config())


def test_scopes_exclude_layers_with_reasons(resnet):
    config = make_config(extra={"ignored_scopes": ["{re}se1$"],
                                "target_scopes": ["b", "se1", "se2", "fc1"]})
    ctrl, _ = create_compressed_model(resnet, config)
    reasons = {tuple(p): r for p, r in ctrl.statistics().unpruned}
    assert "ignored_scopes" in reasons[("se1",)]
    assert {s.name for s in ctrl.statistics().layers} == {"b", "se2", "fc1"}


def test_an_already_masked_model_can_be_compressed_again(resnet, images):
    ctrl, model = create_compressed_model(resnet, make_config())
    ctrl2, model2 = create_compressed_model(model, make_config(), ctrl.get_compression_state())
    assert ctrl2.plan.to_dict(ctrl2.analysis) == ctrl.plan.to_dict(ctrl.analysis)
    assert ctrl2.statistics().unpruned == ctrl.statistics().unpruned
    assert_strip_equal(ctrl2, model2, images)


def test_masked_layers_keep_their_own_call_signatures(resnet, images):
    """Every masked class reported the call signature of the last one swapped, so
    keras.models.clone_model failed ("unexpected keyword argument 'mask'")."""
    import inspect

    ctrl, model = create_compressed_model(resnet, make_config())
    for layer in model.layers:
        base = getattr(type(layer), "_filterprune_base", None)
        if base is not None:
            assert inspect.signature(type(layer).call) == inspect.signature(base.call)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    assert clone(images).shape == model(images).shape


def _fit(model, ctrl, optimizer, epochs=2, initial_epoch=0):
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 32, 32, 3)), rng.normal(size=(16, 10))
    model.fit(x, y, batch_size=8, epochs=epochs, initial_epoch=initial_epoch, verbose=0,
              callbacks=create_compression_callbacks(ctrl))  # fmt: skip
    return model


def test_adafactor_at_its_default_epsilon_is_said_to_make_pruned_weights_nan(resnet, caplog):
    """Its second moment of a kernel entry between two pruned channels rounds to 0: every
    weight of those layers was NaN after the first epoch, the loss printed as usual."""
    caplog.set_level("WARNING", logger="filterprune")
    ctrl, model = create_compressed_model(resnet, make_config(pruning_init=0.5))
    _fit(model, ctrl, keras.optimizers.Adafactor(learning_rate=0.1))
    assert "epsilon_1=1e-30 makes a pruned layer's weights NaN" in caplog.text
    assert not all(np.isfinite(w).all() for w in model.get_weights())
    caplog.clear()
    keras.utils.set_random_seed(0)
    ctrl, model = create_compressed_model(small_resnet(), make_config(pruning_init=0.5))
    _fit(model, ctrl, keras.optimizers.Adafactor(learning_rate=0.1, epsilon_1=1e-15))
    assert "NaN" not in caplog.text and all(np.isfinite(w).all() for w in model.get_weights())


def test_fit_from_a_later_epoch_with_a_fresh_schedule_is_said(resnet, caplog):
    """keras.callbacks.BackupAndRestore restores the weights and the epoch, not the
    compression state: past the freeze the masks were chosen anew (6.5e-2 off)."""
    caplog.set_level("WARNING", logger="filterprune")
    ctrl, model = create_compressed_model(resnet, make_config(pruning_init=0.1))
    _fit(model, ctrl, keras.optimizers.SGD(0.01), epochs=4, initial_epoch=3)
    assert "fit starts at epoch 3 but the compression schedule is at epoch 0" in caplog.text


def test_fit_from_an_earlier_epoch_than_the_state_is_said(resnet, caplog):
    """A state at epoch 2 and ``fit(initial_epoch=1)`` (a weights checkpoint older than the
    compression state's): the schedule ran epochs 3 and 4 for fit's 1 and 2, without a
    word. Repeated fits from fit's epoch 0 are not said (their later epochs were)."""
    caplog.set_level("WARNING", logger="filterprune")
    ctrl, model = create_compressed_model(resnet, make_config(pruning_init=0.1))
    _fit(model, ctrl, keras.optimizers.SGD(0.01), epochs=1)
    _fit(model, ctrl, keras.optimizers.SGD(0.01), epochs=1)
    _fit(model, ctrl, keras.optimizers.SGD(0.01), epochs=2)  # its epoch 1 is the schedule's 3
    assert "fit starts at epoch" not in caplog.text
    _fit(model, ctrl, keras.optimizers.SGD(0.01), epochs=3, initial_epoch=1)
    assert ("fit starts at epoch 1 but the compression schedule goes on at its epoch 4 (it "
            "never goes back)") in caplog.text  # fmt: skip


def test_a_fit_resumed_from_inside_an_epoch_runs_that_epoch_again(tmp_path):
    """A checkpoint saved every few batches holds a state from inside an epoch; the
    resumed ``fit(initial_epoch=2)`` ran its schedule one epoch ahead (0.6 for 0.457)."""

    class Record(keras.callbacks.Callback):
        def __init__(self, ctrl, seen, save_at=None):
            super().__init__()
            self.ctrl, self.seen, self.save_at, self.batches = ctrl, seen, save_at, 0

        def on_epoch_begin(self, epoch, logs=None):
            self.seen.append((epoch, round(self.ctrl.pruning_level, 4)))

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            if self.batches == self.save_at:  # inside epoch 2
                self.saved = (self.ctrl.get_compression_state(), self.model.get_weights())
                self.model.stop_training = True

    x = np.random.default_rng(0).normal(size=(16, 32, 32, 3))
    y = np.random.default_rng(1).normal(size=(16, 10))
    config = make_config(pruning_init=0.0, pruning_target=0.6, pruning_steps=4)

    def run(state=None, weights=None, initial_epoch=0, save_at=None):
        keras.utils.set_random_seed(0)
        ctrl, model = create_compressed_model(randomize_bn(small_resnet()), config, state)
        if weights is not None:
            model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        seen = []
        record = Record(ctrl, seen, save_at)
        model.fit(x, y, batch_size=8, epochs=5, initial_epoch=initial_epoch, verbose=0,
                  shuffle=False, callbacks=create_compression_callbacks(ctrl) + [record])
        return seen, record

    uninterrupted, _ = run()
    _, stopped = run(save_at=5)
    resumed, _ = run(*stopped.saved, initial_epoch=2)
    assert resumed == uninterrupted[2:]
    assert uninterrupted[2][1] < uninterrupted[3][1]  # epoch 2 is still on the way


def test_fit_epochs_1_from_a_checkpoint_listed_before_the_compression_callback_goes_on():
    """Keras calls ``on_epoch_end`` in list order: a checkpoint listed first saved its
    state before the epoch was marked ended, and each ``fit(epochs=1)`` from it ran that
    epoch again, for good: levels 0, 0, 0 where one ``fit(epochs=3)`` reaches 0, 0.37,
    0.6."""

    class Save(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.state = ctrl.get_compression_state()

    x = np.random.default_rng(0).normal(size=(16, 32, 32, 3))
    y = np.random.default_rng(1).normal(size=(16, 10))
    config = make_config(pruning_init=0.0, pruning_target=0.6, pruning_steps=3)
    levels, state = [], None
    for _ in range(3):  # one fit(epochs=1) per process, each resumed from the last save
        ctrl, model = create_compressed_model(small_resnet(), config, state)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        save = Save()
        model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[save] + create_compression_callbacks(ctrl))  # fmt: skip
        levels.append(round(ctrl.pruning_level, 4))
        state = save.state
    ctrl, model = create_compressed_model(small_resnet(), config)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    seen = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: uninterrupted.append(round(ctrl.pruning_level, 4)))
    uninterrupted = []
    model.fit(x, y, batch_size=8, epochs=3, verbose=0,
              callbacks=create_compression_callbacks(ctrl) + [seen])  # fmt: skip
    assert levels == uninterrupted == [0.0, 0.3675, 0.6]


@pytest.mark.parametrize("at", [0, 2])
def test_a_fit_interrupted_in_validation_runs_that_epoch_again_after_backup_and_restore(
        tmp_path, at):  # fmt: skip
    """The epoch's last batch ran, its ``on_epoch_end`` did not (Keras' BackupAndRestore
    saved the weights before it): the fit called again runs that epoch's level again, as
    Keras runs it again (at epoch 0 it ran epoch 1's), and a state saved inside it says
    it has not ended."""

    class Interrupt(keras.callbacks.Callback):
        armed, epoch = True, -1

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_test_begin(self, logs=None):
            if self.armed and self.epoch == at:
                Interrupt.armed = False
                raise KeyboardInterrupt

    x = np.random.default_rng(0).normal(size=(16, 32, 32, 3))
    y = np.random.default_rng(1).normal(size=(16, 10))
    config = make_config(pruning_init=0.1, pruning_target=0.6, pruning_steps=4)
    runs = []
    for interrupted in (False, True):
        keras.utils.set_random_seed(0)
        ctrl, model = create_compressed_model(small_resnet(), config)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        levels = []
        seen = keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs, c=ctrl, at=levels: at.append(
                round(c.pruning_level, 4)),
            on_train_batch_end=lambda batch, logs, c=ctrl, at=levels: at.append(  # inside:
                c.get_compression_state()["scheduler"]["ended_epoch"]))  # not ended  # fmt: skip
        callbacks = create_compression_callbacks(ctrl) + [seen]
        if interrupted:
            callbacks += [keras.callbacks.BackupAndRestore(str(tmp_path)), Interrupt()]
            with pytest.raises(KeyboardInterrupt):
                model.fit(x, y, batch_size=8, epochs=4, verbose=0, validation_data=(x, y),
                          shuffle=False, callbacks=callbacks)  # fmt: skip
        model.fit(x, y, batch_size=8, epochs=4, verbose=0, validation_data=(x, y),
                  shuffle=False, callbacks=callbacks)  # fmt: skip
        runs.append(levels)
    # the epoch ran twice, at its own level, its states ending the one before
    assert runs[0][:6] == [0.1, -1, -1, 0.3132, 0, 0]
    assert runs[1] == runs[0][:3 * at + 3] + runs[0][3 * at:]


def test_a_tf_function_traced_before_creation_is_said():
    """A step of the user's traced on the model before create_compressed_model keeps the
    dense model's graph: its output was 1.24 off the masked model's, with no word. Keras'
    own fit function is dropped at creation and not said; a tf.function traced after
    creation sees the masks."""
    model = conv_bn_net()
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")

    @tf.function
    def evaluate(inputs):
        return model(inputs, training=False)

    evaluate(x)
    model.compile(loss="mse")
    model.fit(x, np.zeros((2, 4), "float32"), verbose=0)
    config = make_config((1, 16, 16, 3), prune_first_conv=True)
    with pytest.warns(UserWarning) as said:
        ctrl, model = create_compressed_model(model, config)
    traced = [w for w in said if "traced before" in str(w.message)]
    assert len(traced) == 1 and traced[0].filename == __file__  # the user's call
    assert str(traced[0].message).startswith("tf.function 'evaluate' was traced")
    assert "weights of bn, head, mid, stem:" in str(traced[0].message)
    assert not np.allclose(evaluate(x).numpy(), model(x, training=False).numpy())
    np.testing.assert_allclose(tf.function(lambda t: model(t, training=False))(x).numpy(),
                               model(x, training=False).numpy(), atol=1e-6)  # fmt: skip


def test_a_clone_of_a_compressed_model_says_it_has_no_masks(monkeypatch):
    """keras.models.clone_model makes the masked layers again from their class and config,
    without masks: the clone computed as the dense model without a word."""
    from filterprune.tensorflow import masks

    monkeypatch.setattr(masks, "_COPIES_SAID", [])
    ctrl, model = create_compressed_model(conv_bn_net(), make_config((1, 16, 16, 3)))
    clone = keras.models.clone_model(model)
    with pytest.warns(UserWarning, match="is a copy of a layer filterprune compresses"):
        clone(np.zeros((1, 16, 16, 3), "float32"))
