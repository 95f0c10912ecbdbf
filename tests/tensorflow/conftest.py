import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("tensorflow")

from keras_helpers import keras, randomize_bn, small_resnet  # noqa: E402


@pytest.fixture
def resnet():
    keras.utils.set_random_seed(0)
    return randomize_bn(small_resnet())


@pytest.fixture
def images():
    return np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype("float32")
