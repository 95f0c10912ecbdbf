"""keras.applications models (random weights): create, strip, equal outputs, FLOPs removed.

Two small, varied models here; benchmarks/keras_zoo.py runs every one of them.
"""

import numpy as np
import pytest
from keras_helpers import keras, make_config, randomize_bn


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("MobileNetV3Small", -1.0, 1.0),  # keras.ops hard-swish, SE gates, Rescaling
     ("EfficientNetB0", 0.0, 255.0)],  # Reshape((1, 1, C)) SE gates, Normalization
)  # fmt: skip
def test_application_strips_to_equal_outputs(name, low, high):
    from filterprune.tensorflow import create_compressed_model

    keras.utils.set_random_seed(0)
    build = getattr(keras.applications, name)
    model = randomize_bn(build(weights=None, input_shape=(32, 32, 3), classifier_activation=None))
    config = make_config((1, 3, 32, 32), schedule="baseline", prune_first_conv=True,
                         prune_downsample_convs=True)  # fmt: skip
    ctrl, model = create_compressed_model(model, config)
    stats = ctrl.statistics()
    assert stats.flops_kept < 0.5
    x = np.random.default_rng(0).uniform(low, high, (2, 32, 32, 3)).astype("float32")
    ref = model(x, training=False).numpy()
    small = ctrl.strip()
    out = small(x, training=False).numpy()
    assert out.shape == ref.shape == (2, 1000)
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    assert small.count_params() < 0.6 * model.count_params()
