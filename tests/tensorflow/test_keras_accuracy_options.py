"""Keras: ``shrink_when_frozen`` is refused clearly (and a refit where a frontend has none);
the accuracy-aware loop runs."""

import numpy as np
import pytest
from keras_helpers import conv_bn_net, keras, make_config

from filterprune.errors import ConfigError
from filterprune.tensorflow import create_compressed_model


def test_shrink_when_frozen_is_refused():
    config = make_config((1, 16, 16, 3), shrink_when_frozen=True, schedule="baseline")
    with pytest.raises(ConfigError, match=r"^`params\.shrink_when_frozen` must be false here: "
                       r"only the PyTorch frontend cuts the training model\. "
                       r"Received: shrink_when_frozen=True\.$"):
        create_compressed_model(conv_bn_net(), config)


def test_a_frontend_without_a_refit_refuses_the_key(monkeypatch):
    """The core's guard for frontends that do not set ``supports_reconstruction``."""
    from filterprune.tensorflow.controller import FilterPruningController

    monkeypatch.setattr(FilterPruningController, "supports_reconstruction", False)
    config = make_config((1, 16, 16, 3), reconstruction_after_mask_change=True)
    with pytest.raises(ConfigError, match=r"^`params\.reconstruction_after_mask_change` must be "
                       r"false here: this frontend does not refit weights\. "
                       r"Received: reconstruction_after_mask_change=True\.$"):
        create_compressed_model(conv_bn_net(), config)


def aa_config(**search):
    """Pruning at 0.1 from the start, and a search with ``search``'s budget."""
    from filterprune import NNCFConfig

    return NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, 16, 16, 3]},
        "compression": {"algorithm": "filter_pruning", "pruning_init": 0.1,
                        "params": {"schedule": "baseline", "pruning_target": 0.1,
                                   "filters_multiple_of": 1}},
        "accuracy_aware_training": {"params": {"maximal_absolute_accuracy_degradation": 0.05,
                                               "initial_training_phase_epochs": 1, **search}},
    })  # fmt: skip


def test_accuracy_aware_loop_finds_the_level_and_restores_weights():
    from filterprune.tensorflow import create_accuracy_aware_training_loop

    keras.utils.set_random_seed(0)
    config = aa_config(patience_epochs=1, maximal_total_epochs=40)
    ctrl, model = create_compressed_model(conv_bn_net(), config)
    loop = create_accuracy_aware_training_loop(config, ctrl)
    epochs = []

    def train(ctrl, model, epoch, optimizer, lr_scheduler):
        epochs.append(epoch)
        model.get_layer("head").kernel.assign_add(np.full((1, 1, 16, 4), 0.01, "float32"))

    def validate(model, epoch):
        return 0.9 if ctrl.pruning_level <= 0.55 else 0.2

    loop.run(model, train_epoch_fn=train, validate_fn=validate)
    assert 0.55 - 0.025 <= loop.best_level <= 0.55 and ctrl.pruning_level == loop.best_level
    assert len(epochs) <= 40


def test_accuracy_aware_loop_resumes_after_any_epoch():
    """Saved after each epoch (loop state, weights, compression state) and continued
    from each: the same validations, level and weights as the run without a stop."""
    import copy

    from filterprune.tensorflow import create_accuracy_aware_training_loop

    config = aa_config(patience_epochs=2, maximal_total_epochs=8)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")

    def start(state=None):
        keras.utils.set_random_seed(0)
        ctrl, model = create_compressed_model(conv_bn_net(), config, state)
        return ctrl, model, create_accuracy_aware_training_loop(config, ctrl)

    def train(ctrl, model, epoch, optimizer, lr_scheduler):
        step = 0.01 * (epoch + 1) + ctrl.pruning_level  # depends on where the search is
        model.get_layer("head").kernel.assign_add(np.full((1, 1, 16, 4), step, "float32"))

    def validator(ctrl):
        def validate(model, epoch):
            wiggle = float(np.abs(model(x, training=False).numpy()).mean()) % 0.01
            return (0.9 if ctrl.pruning_level <= 0.55 else 0.2) + wiggle
        return validate

    ctrl, model, loop = start()
    saved = []

    def save(loop):
        saved.append((copy.deepcopy(loop.get_state()), model.get_weights(),
                      copy.deepcopy(ctrl.get_compression_state())))  # fmt: skip

    loop.run(model, train, validator(ctrl), epoch_end_fn=save)
    assert len(saved) == loop.epoch >= 3
    for k, (state, weights, compression) in enumerate(saved):
        ctrl2, model2, loop2 = start(compression)
        model2.set_weights(weights)
        loop2.load_state(state)
        loop2.run(model2, train, validator(ctrl2))
        assert loop2.history == loop.history, k
        assert loop2.best_level == loop.best_level and ctrl2.pruning_level == ctrl.pruning_level
        for a, b in zip(model.get_weights(), model2.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)


def test_accuracy_aware_loop_driven_by_fit_says_no_false_resume(caplog):
    """Each epoch a fit with the compression callbacks, as the module shows: from the
    third on the callbacks warned "fit starts at epoch N but the compression schedule is at
    epoch 1" (the held schedule stays at its epoch), and the statistics showed the
    schedule's level, not the one the loop left the masks at."""
    from filterprune.tensorflow import (
        create_accuracy_aware_training_loop,
        create_compression_callbacks,  # fmt: skip
    )

    caplog.set_level("WARNING", logger="filterprune")
    keras.utils.set_random_seed(0)
    config = aa_config(patience_epochs=1, maximal_total_epochs=6)
    ctrl, model = create_compressed_model(conv_bn_net(), config)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 16, 16, 3)).astype("float32"), rng.normal(size=(8, 4))

    epochs = []

    def train(ctrl, model, epoch, optimizer, lr_scheduler):
        epochs.append(epoch)
        model.fit(x, y, epochs=epoch + 1, initial_epoch=epoch, verbose=0,
                  callbacks=create_compression_callbacks(ctrl))  # fmt: skip

    loop = create_accuracy_aware_training_loop(config, ctrl)
    loop.run(model, train_epoch_fn=train,
             validate_fn=lambda model, epoch: 0.9 if ctrl.pruning_level <= 0.55 else 0.2)
    assert len(epochs) >= 3
    assert "fit starts at epoch" not in caplog.text
    assert ctrl.pruning_level == loop.best_level > 0.3
    assert f"pruning level     : {loop.best_level:.3f}" in str(ctrl.statistics())
