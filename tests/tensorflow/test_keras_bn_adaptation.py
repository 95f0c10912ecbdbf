"""Keras BatchNorm adaptation is all or nothing (issue 13, item 3)."""

import numpy as np
import pytest
from keras_helpers import layers, make_config, tf

from filterprune.errors import ConfigError
from filterprune.tensorflow import create_compressed_model, register_default_init_args
from filterprune.tensorflow._init_args import adapt_batchnorm


def _bn_state(model):
    return {layer.name: (layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy(),
                         layer.momentum)
            for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, layers.BatchNormalization)}  # fmt: skip


def _same(a, b):
    return a.keys() == b.keys() and all(
        np.array_equal(a[k][0], b[k][0]) and np.array_equal(a[k][1], b[k][1])
        and a[k][2] == b[k][2] for k in a
    )  # fmt: skip


def _images(*sizes):
    rng = np.random.default_rng(0)
    return [rng.normal(size=(n, 32, 32, 3)).astype("float32") for n in sizes]


@pytest.mark.parametrize("empty", ["list", "iterator", "dataset"])
def test_an_empty_dataset_is_refused_before_any_statistic_changes(resnet, empty):
    data = {"list": [], "iterator": iter([]),
            "dataset": tf.data.Dataset.from_tensor_slices(_images(4)[0]).take(0).batch(2)}[empty]
    before = _bn_state(resnet)
    with pytest.raises(ConfigError, match=r"^`dataset` must yield at least one batch for "
                       r"initialisation \(BatchNorm adaptation, quantizer ranges\)\. "
                       r"Received: an empty or already exhausted loader"):
        adapt_batchnorm(resnet, data, 100, None)
    assert _same(before, _bn_state(resnet))


def test_an_empty_dataset_is_refused_at_registration():
    empty = tf.data.Dataset.from_tensor_slices(_images(4)[0]).take(0)
    with pytest.raises(ConfigError, match=r"^`dataset` must hold at least one batch"):
        register_default_init_args(make_config(), empty)
    with pytest.raises(ConfigError, match=r"Received: list of length 0\."):
        register_default_init_args(make_config(), [])


def test_nncfs_keyword_names_are_taken():
    """NNCF's TF samples pass nncf_config= and data_loader=: they failed with missing
    positional arguments."""
    config = register_default_init_args(nncf_config=make_config(), data_loader=_images(4)[0],
                                        batch_size=2)  # fmt: skip
    assert config._extra_structs


def test_a_misspelt_keyword_is_refused():
    """``val_datset=`` was taken and dropped."""
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'val_datset'\. Did you "
                       r"mean `val_dataset`\?"):
        register_default_init_args(make_config(), _images(4)[0], val_datset=[1])


def test_an_exhausted_iterator_is_refused_in_create_compressed_model(resnet):
    batches = iter(_images(4, 4))
    list(batches)
    config = register_default_init_args(make_config(), batches)
    before = _bn_state(resnet)
    with pytest.raises(ConfigError, match="empty or already exhausted"):
        create_compressed_model(resnet, config)
    assert _same(before, _bn_state(resnet))


def test_a_failing_batch_midway_restores_every_statistic(resnet):
    bad = np.zeros((4, 16, 16, 3), "float32")  # the wrong image size, third in line
    before = _bn_state(resnet)
    with pytest.raises(ConfigError, match=(
        r"^`dataset` must yield batches the model runs on in training mode\. Received: batch 3 "
        r"\(4 samples\) failed in BatchNorm adaptation: .*Every BatchNorm's statistics and "
        r"momentum were restored\.")):
        adapt_batchnorm(resnet, [*_images(4, 4), bad], 100, None)
    assert _same(before, _bn_state(resnet))


def test_a_failing_dataset_midway_restores_every_statistic(resnet):
    def flaky():
        yield from _images(4, 4)
        raise OSError("disk read error")

    before = _bn_state(resnet)
    with pytest.raises(ConfigError, match=r"batch 3 failed in BatchNorm adaptation: OSError"):
        adapt_batchnorm(resnet, flaky(), 100, None)
    assert _same(before, _bn_state(resnet))


def test_a_good_dataset_still_adapts(resnet):
    before = _bn_state(resnet)
    adapt_batchnorm(resnet, _images(4, 4, 4), 8, None)
    after = _bn_state(resnet)
    assert not np.array_equal(before["bna"][0], after["bna"][0])
    assert after["bna"][2] == 0.99




def test_a_failure_inside_create_compressed_model_leaves_the_model_as_given(resnet):
    """Masks, quantizer transforms and statistics put on before the failure are taken off."""

    def flaky():
        yield from _images(4, 4)
        raise OSError("disk read error")

    x = _images(2)[0]
    ref = resnet(x, training=False).numpy()
    layer_types = [type(layer) for layer in resnet._flatten_layers(recursive=True)]
    before = _bn_state(resnet)
    config = make_config()
    config["compression"] = [config["compression"], {"algorithm": "quantization"}]
    config = register_default_init_args(config, flaky())
    with pytest.raises(ConfigError, match="disk read error"):
        create_compressed_model(resnet, config)
    assert [type(layer) for layer in resnet._flatten_layers(recursive=True)] == layer_types
    assert _same(before, _bn_state(resnet))
    assert not any(key.startswith("_fp_") for layer in resnet._flatten_layers(recursive=True)
                   for key in layer.__dict__)  # fmt: skip
    np.testing.assert_array_equal(resnet(x, training=False).numpy(), ref)


def test_pruned_channels_keep_their_statistics_in_adaptation_and_fit():
    """As in PyTorch: a pruned channel's moving statistics stay as they were (its input is
    zero), so the model at level 0 again divides no channel by sqrt(epsilon)."""
    from keras_helpers import conv_bn_net, keras, randomize_bn

    keras.utils.set_random_seed(0)
    net = randomize_bn(conv_bn_net())
    before = _bn_state(net)["bn"]
    x = np.random.default_rng(2).normal(size=(16, 16, 16, 3)).astype("float32")
    config = register_default_init_args(
        make_config((1, 16, 16, 3), pruning_init=0.5, filters_multiple_of=1), [x[:8], x[8:]])
    ctrl, model = create_compressed_model(net, config)
    bn = model.get_layer("bn")
    pruned = bn.__dict__["_fp_channel_mask"][0].numpy() == 0
    assert 0 < pruned.sum() < pruned.size

    def check():
        now = _bn_state(model)["bn"]
        for i in (0, 1):
            np.testing.assert_array_equal(now[i][pruned], before[i][pruned])
            assert not np.array_equal(now[i][~pruned], before[i][~pruned])

    check()  # adapted at creation
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x, np.zeros((16, 4), "float32"), batch_size=8, epochs=1, verbose=0)
    check()
    ctrl.set_pruning_level(0.0)
    assert bn.moving_variance.numpy()[pruned].min() >= 0.5
