"""Keras: ``reconstruction_after_mask_change`` is refused clearly (PyTorch only)."""

import pytest
from keras_helpers import conv_bn_net, make_config

from filterprune.errors import ConfigError
from filterprune.tensorflow import create_compressed_model


def test_reconstruction_is_refused():
    config = make_config((1, 16, 16, 3), reconstruction_after_mask_change=True)
    with pytest.raises(ConfigError, match=r"^`params\.reconstruction_after_mask_change` must be "
                       r"false here: only the PyTorch frontend refits weights\. "
                       r"Received: reconstruction_after_mask_change=True\.$"):
        create_compressed_model(conv_bn_net(), config)
