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


def test_accuracy_aware_loop_finds_the_level_and_restores_weights():
    from filterprune import NNCFConfig
    from filterprune.tensorflow import create_accuracy_aware_training_loop

    keras.utils.set_random_seed(0)
    config = NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, 16, 16, 3]},
        "compression": {"algorithm": "filter_pruning", "pruning_init": 0.1,
                        "params": {"schedule": "baseline", "pruning_target": 0.1,
                                   "filters_multiple_of": 1}},
        "accuracy_aware_training": {"params": {"maximal_absolute_accuracy_degradation": 0.05,
                                               "initial_training_phase_epochs": 1,
                                               "patience_epochs": 1,
                                               "maximal_total_epochs": 40}},
    })  # fmt: skip
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
