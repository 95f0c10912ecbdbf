"""Keras ``params.reconstruction_after_mask_change``: kept weights refit by least squares."""

import logging

import numpy as np
import pytest
from keras_helpers import assert_strip_equal, keras, layers, make_config, tf

import filterprune.tensorflow.reconstruct as reconstruct_module
from filterprune.errors import ConfigError
from filterprune.tensorflow import create_compressed_model, register_default_init_args
from filterprune.tensorflow.reconstruct import _geometry, _inputs_at, reconstruct, record


def images(n=32, side=8, seed=1):
    return np.random.default_rng(seed).normal(size=(n, side, side, 3)).astype("float32")


def half_copies():
    """conv1's filters 4-7 are half of filters 0-3 (bias too), so after the ReLU their
    channels are half of channels 0-3: L2 prunes them and conv2 can take them over."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    conv1 = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(conv1(inp))
    model = keras.Model(inp, layers.Dense(5, name="fc")(layers.GlobalAveragePooling2D()(x)))
    kernel, bias = conv1.kernel.numpy(), np.random.default_rng(0).normal(size=8)
    kernel[..., 4:], bias[4:] = kernel[..., :4] * 0.5, bias[:4] * 0.5
    conv1.kernel.assign(kernel)
    conv1.bias.assign(bias.astype("float32"))
    return model


def prune(model, data, side=8, init=0.5, **params):
    params = {"schedule": "baseline", "filters_multiple_of": 1, "prune_first_conv": True,
              "prune_downsample_convs": True, "reconstruction_after_mask_change": True,
              "num_reconstruction_samples": 32, **params}  # fmt: skip
    config = make_config((1, side, side, 3), pruning_init=init, **params)
    config = register_default_init_args(config, tf.data.Dataset.from_tensor_slices(data).batch(8))
    return create_compressed_model(model, config)


def copy_of(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def relative_error(model, dense, x):
    ref = dense(x, training=False).numpy()
    return float(np.linalg.norm(model(x, training=False).numpy() - ref) / np.linalg.norm(ref))


def test_a_removed_channel_that_others_carry_is_taken_over_exactly():
    dense = half_copies()
    x = images(seed=7)
    only_conv1 = {"extra": {"ignored_scopes": ["{re}.*conv2.*"]}}
    ctrl, model = prune(copy_of(dense), images(), pruning_target=0.5, **only_conv1)
    assert ctrl.keeps()["conv1"]["out"].tolist() == [True] * 4 + [False] * 4
    _, plain = prune(copy_of(dense), images(), pruning_target=0.5,
                     reconstruction_after_mask_change=False, **only_conv1)  # fmt: skip
    assert relative_error(plain, dense, x) > 0.05  # the halves mattered
    assert relative_error(model, dense, x) < 5e-3  # conv2 took them over (up to the ridge)
    assert_strip_equal(ctrl, model, x, tol=1e-5)


@pytest.mark.parametrize("kernel,strides,dilation,padding", [
    ((3, 3), 1, 1, "same"), ((3, 2), 2, 1, "same"), ((2, 2), 2, 1, "same"),
    ((3, 3), 1, 2, "valid"), ((1, 3), (2, 1), 1, "valid")])  # fmt: skip
def test_inputs_at_sampled_positions_reproduce_the_conv(kernel, strides, dilation, padding):
    layer = layers.Conv2D(5, kernel, strides=strides, dilation_rate=dilation, padding=padding)
    x = images(n=2, side=9)
    out = layer(x).numpy()
    (oh, ow), _ = _geometry(layer, x.shape)
    assert out.shape[1:3] == (oh, ow)
    at = np.random.default_rng(0).integers(0, oh * ow, (2, 6))
    got = _inputs_at(layer, x, at) @ layer.kernel.numpy().reshape(-1, 5) + layer.bias.numpy()
    want = out.reshape(2, oh * ow, 5)[np.arange(2)[:, None], at].reshape(-1, 5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def mixed():
    """A depthwise conv, a conv called twice and a channels-first conv beside plain ones."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    twice = layers.Conv2D(8, 1, name="twice")
    x = twice(twice(x))
    x = layers.Conv2D(4, 3, padding="same", name="conv2")(x)
    return keras.Model(inp, x)


def test_layers_it_cannot_express_are_left_with_a_reason(caplog):
    dense = mixed()
    before = {n: dense.get_layer(n).kernel.numpy() for n in ("dw", "twice")}
    with caplog.at_level(logging.INFO, logger="filterprune.tensorflow.reconstruct"):
        _, model = prune(dense, images(), pruning_target=0.5)
    text = caplog.text
    assert "leaves dw as it is: a DepthwiseConv2D, not a Conv2D or a Dense layer" in text
    assert "leaves twice as it is: the forward calls it 2 times" in text
    assert "2 layers refit" in text  # conv1 and conv2
    for name, kernel in before.items():
        assert np.array_equal(model.get_layer(name).kernel.numpy(), kernel)


def test_catching_an_unmasked_layer_leaves_its_class():
    from filterprune.tensorflow.reconstruct import _input_of

    dense = half_copies()
    fc = dense.get_layer("fc")
    got = _input_of(dense, fc, images(n=2))
    assert got.shape == (2, 6)
    assert type(fc) is layers.Dense and "_fp_input_transforms" not in fc.__dict__


def test_refit_brings_a_resnet_closer_to_the_dense_model(resnet, images):
    rng = np.random.default_rng(2)
    for v in resnet.weights:  # no zero bias hides a wrong refit
        if v.name == "bias":
            v.assign(rng.normal(0, 0.1, v.shape).astype("float32"))
    data = np.random.default_rng(3).normal(size=(64, 32, 32, 3)).astype("float32")
    errors = {}
    for on in (False, True):
        ctrl, model = prune(copy_of(resnet), data, side=32, pruning_target=0.5,
                            num_reconstruction_samples=64,
                            reconstruction_after_mask_change=on)  # fmt: skip
        errors[on] = relative_error(model, resnet, images)
        assert_strip_equal(ctrl, model, images)
    assert errors[True] < 0.8 * errors[False], errors


def test_a_failing_refit_changes_nothing(monkeypatch):
    dense = half_copies()
    ctrl, model = prune(copy_of(dense), images(), init=0.0, pruning_target=0.5)
    before = [v.numpy() for v in model.weights]
    refit, done = reconstruct_module._refit, []

    def fail_after_conv1(name, *args):
        if done:  # conv1 was refit
            raise ValueError("bad batch")
        done.append(name)
        return refit(name, *args)

    monkeypatch.setattr(reconstruct_module, "_refit", fail_after_conv1)
    with pytest.raises(ConfigError, match="a batch failed in weight reconstruction: "
                       "ValueError: bad batch. Every layer's weights were restored"):
        ctrl.set_pruning_level(0.5)
    assert done == ["conv1"] and ctrl.pruning_level == 0.0
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.weights, strict=True))


def _refit_resnet(resnet, monkeypatch, one_pass_bytes, fixed_batch=None):
    rng = np.random.default_rng(2)
    for v in resnet.weights:  # no zero bias hides a wrong refit
        if v.name == "bias":
            v.assign(rng.normal(0, 0.1, v.shape).astype("float32"))
    model = copy_of(resnet)
    if fixed_batch:  # a model that runs only batches of one size
        check = layers.Lambda(lambda t: t if t.shape[0] in (None, fixed_batch) else 1 / 0)
        model = keras.Model(model.inputs[0], model(check(model.inputs[0])))
    data = tf.data.Dataset.from_tensor_slices(
        np.random.default_rng(3).normal(size=(48, 32, 32, 3)).astype("float32")).batch(16)
    ctrl, _ = prune(model, np.zeros((16, 32, 32, 3), "float32"), side=32, init=0.0,
                    pruning_target=0.5, reconstruction_after_mask_change=False)  # fmt: skip
    recording = record(model, ctrl.capture.refs, ctrl.analysis.graph.layers, iter(data))
    ctrl.set_pruning_level(0.5)
    monkeypatch.setattr(reconstruct_module, "ONE_PASS_BYTES", one_pass_bytes)
    errors = reconstruct(model, recording, ctrl.capture.refs, ctrl.keeps())
    return errors, [v.numpy() for v in model.weights]


def test_one_joined_pass_refits_as_layer_by_layer_passes(resnet, monkeypatch, caplog):
    """All batches joined, each layer solved as its input is handed over, equals one pass
    per layer; a model that refuses the joined batch is refit layer by layer."""
    layered, by_layer = _refit_resnet(copy_of(resnet), monkeypatch, 0)
    joined, in_one = _refit_resnet(copy_of(resnet), monkeypatch, 2**30)
    with caplog.at_level(logging.INFO, logger="filterprune.tensorflow.reconstruct"):
        fallback, refused = _refit_resnet(copy_of(resnet), monkeypatch, 2**30, fixed_batch=16)
    assert "fails on all 48 samples in one batch (ZeroDivisionError" in caplog.text
    nested = [name.split("/")[-1] for name in fallback]  # the model sits in a wrapper
    assert list(joined) == list(layered) == nested and len(joined) >= 5
    for name in joined:
        np.testing.assert_allclose(joined[name], layered[name], rtol=1e-4, atol=1e-7)
    for a, b, c in zip(in_one, by_layer, refused, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
        np.testing.assert_array_equal(b, c)


def test_needs_registered_data():
    config = make_config((1, 8, 8, 3), reconstruction_after_mask_change=True)
    with pytest.raises(ConfigError, match="register_default_init_args"):
        create_compressed_model(half_copies(), config)


def test_record_and_reconstruct_directly():
    dense = half_copies()
    data = tf.data.Dataset.from_tensor_slices(images()).batch(8)
    ctrl, model = prune(copy_of(dense), images(), init=0.0, pruning_target=0.5,
                        reconstruction_after_mask_change=False)  # fmt: skip
    recording = record(model, ctrl.capture.refs, ctrl.analysis.graph.layers, iter(data))
    assert list(recording.targets) == ["conv1", "conv2", "fc"]  # run order
    ctrl.set_pruning_level(0.5)
    errors = reconstruct(model, recording, ctrl.capture.refs, ctrl.keeps())
    assert errors["conv1"] == (0.0, 0.0)  # its kept outputs are as they were
    assert errors["conv2"][1] < 0.1 * errors["conv2"][0]


def test_a_wide_conv_gets_enough_positions_from_few_images(caplog):
    """conv2 keeps 289 weights per output; 16 images at 16 positions each (the floor)
    would give 256 rows and leave it. Positions per image grow with the fan-in, up to
    every one of the 64 there are."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv1")(inp)
    x = layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    dense = keras.Model(inp, layers.Dense(5, name="fc")(layers.GlobalAveragePooling2D()(x)))
    data = tf.data.Dataset.from_tensor_slices(images(16)).batch(8)
    ctrl, model = prune(copy_of(dense), images(16), init=0.0, pruning_target=0.5,
                        reconstruction_after_mask_change=False,
                        extra={"ignored_scopes": ["conv2"]})  # fmt: skip
    with caplog.at_level(logging.INFO, logger="filterprune.tensorflow.reconstruct"):
        recording = record(model, ctrl.capture.refs, ctrl.analysis.graph.layers, iter(data))
        ctrl.set_pruning_level(0.5)
        assert ctrl.keeps()["conv2"]["in"].sum() == 32
        errors = reconstruct(model, recording, ctrl.capture.refs, ctrl.keeps())
    assert recording.targets["conv2"][0][0].shape == (8, 64)
    assert "leaves conv2" not in caplog.text
    before, after = errors["conv2"]
    assert after < 0.5 * before


def test_with_quantization_the_refit_matches_what_quantized_layers_see():
    """Pruning (with the refit) and 8-bit QAT in one list: layers are caught after their
    input quantizers, the refit brings the quantized model back toward its outputs before
    the cut, and the result trains and equals its stripped copy."""
    from keras_helpers import compression_config, randomize_bn, small_resnet

    x = images(n=4, side=32, seed=5)
    errors = {}
    for on in (False, True):
        keras.utils.set_random_seed(0)
        prune_ = {"algorithm": "filter_pruning", "pruning_init": 0.0,
                  "params": {"schedule": "baseline", "pruning_target": 0.5,
                             "prune_first_conv": True, "reconstruction_after_mask_change": on,
                             "num_reconstruction_samples": 16}}  # fmt: skip
        quant = {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 16}}}
        ctrl, model = create_compressed_model(randomize_bn(small_resnet(dropout=0.0)),
                                              compression_config(prune_, quant))  # fmt: skip
        ref = model(x, training=False).numpy()
        ctrl.scheduler.epoch_step()  # the cut (and its refit), with quantizers in place
        assert ctrl.get("filter_pruning").pruning_level == 0.5
        out = model(x, training=False).numpy()
        errors[on] = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    assert errors[True] < 0.8 * errors[False], errors
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x, np.zeros((4, 10), "float32"), epochs=1, verbose=0)
    assert_strip_equal(ctrl, model, x, tol=1e-3)
