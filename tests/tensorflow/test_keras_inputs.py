"""Keras `input_info`: keywords pick the input, `type` must be the input's dtype, `filler`
makes the sample; NaN in a pruned filter stays out of the masked model (issue 13)."""

import numpy as np
import pytest
from keras_helpers import keras, layers, randomize_bn

from filterprune import ConfigError, NNCFConfig
from filterprune.tensorflow import create_compressed_model


def two_inputs():
    """An image and a side vector of other shapes, so a swapped entry cannot fit."""
    image = keras.Input((8, 8, 3), name="image")
    side = keras.Input((5,), name="side")
    x = layers.Conv2D(8, 3, padding="same", name="conv")(image)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Concatenate()([x, layers.Dense(4, name="proj")(side)])
    return keras.Model([image, side], layers.Dense(3, name="head")(x))


def config(infos, **params):
    algo = {"algorithm": "filter_pruning", "pruning_init": 0.5, "params": params}
    return NNCFConfig.from_dict({"input_info": infos, "compression": algo})


def test_keyword_entries_feed_the_input_of_that_name():
    infos = [{"sample_size": [2, 5], "keyword": "side"}, {"sample_size": [2, 8, 8, 3]}]
    ctrl, _ = create_compressed_model(two_inputs(), config(infos))
    assert ctrl.capture.input_shapes == [(2, 8, 8, 3), (2, 5)]
    with pytest.raises(ConfigError, match=r"must fit the model input 'image'"):
        create_compressed_model(two_inputs(), config([{"sample_size": [2, 5]}, infos[1]]))


@pytest.mark.parametrize("infos, match", [
    ([{"sample_size": [2, 5], "keyword": "sid"}, {"sample_size": [2, 8, 8, 3]}],
     r"`input_info\[0\].keyword` must name an input of the model: 'image', 'side'. "
     r"Received: keyword='sid'"),
    ([{"sample_size": [2, 5], "keyword": "side"}, {"sample_size": [2, 5], "keyword": "side"}],
     r"`input_info\[1\].keyword` must name an input no other entry names.*input_info\[0\]"),
    ([{"sample_size": [2, 8, 8, 3], "type": "long"}, {"sample_size": [2, 5]}],
     r"`input_info\[0\].type` must be the dtype of model input 'image' \(float32\).*type='long'"),
    ([{"sample_size": [2, 8, 8, 3], "type": "flaot"}, {"sample_size": [2, 5]}],
     r"`input_info\[0\].type` must be one of .*Did you mean `float`"),
])  # fmt: skip
def test_bad_keyword_or_type_is_a_clear_error(infos, match):
    with pytest.raises(ConfigError, match=match):
        create_compressed_model(two_inputs(), config(infos))


def test_type_and_filler_make_the_sample():
    infos = [{"sample_size": [2, 8, 8, 3], "type": "float", "filler": "random"},
             {"sample_size": [2, 5], "filler": "ones"}]  # fmt: skip
    first, _ = create_compressed_model(two_inputs(), config(infos))
    again, _ = create_compressed_model(two_inputs(), config(infos))
    image, side = first.capture.sample
    assert image.dtype == np.float32 and 0 < image.min() and image.max() < 1
    np.testing.assert_array_equal(image, again.capture.sample[0])  # seeded
    np.testing.assert_array_equal(side, np.ones((2, 5), "float32"))


def chain():
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(16, 3, padding="same", name="c1")(inp)
    x = layers.ReLU()(layers.BatchNormalization(name="bn")(x))
    return keras.Model(inp, layers.Conv2D(4, 1, name="head")(x))


@pytest.mark.parametrize("where", ["kernel", "bias", "bn"])
def test_nan_in_a_pruned_filter_stays_out_of_the_masked_model(where):
    keras.utils.set_random_seed(0)
    model = randomize_bn(chain())
    conv = model.get_layer("c1")
    conv.kernel.assign(conv.kernel.numpy() * np.r_[1e-3, np.ones(15)].astype("float32"))
    settings = {"prune_first_conv": True, "filter_importance": "L1"}
    ctrl, model = create_compressed_model(model, config({"sample_size": [1, 8, 8, 3]}, **settings))
    assert not ctrl.keeps()["c1"]["out"][0]
    bn = model.get_layer("bn")
    target = {"kernel": conv.kernel, "bias": conv.bias, "bn": bn.moving_variance}[where]
    value = target.numpy()
    value[..., 0] = np.nan
    target.assign(value)
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
    ref = model(x, training=False).numpy()
    assert np.isfinite(ref).all()  # was NaN: 0 * NaN
    for shrink in (False, True):
        out = ctrl.strip(shrink=shrink)(x, training=False).numpy()
        assert np.isfinite(out).all()
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("with_targets", [False, True])
def test_a_dataset_of_dicts_keyed_by_input_names_feeds_every_input(with_targets):
    import tensorflow as tf

    from filterprune.tensorflow import register_default_init_args

    rng = np.random.default_rng(0)
    inputs = {"image": rng.normal(size=(8, 8, 8, 3)).astype("float32"),
              "side": rng.normal(size=(8, 5)).astype("float32")}
    data = (inputs, np.zeros((8, 3), "float32")) if with_targets else inputs
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(4)
    infos = [{"sample_size": [1, 8, 8, 3]}, {"sample_size": [1, 5]}]
    compression = [{"algorithm": "filter_pruning", "pruning_init": 0.5},
                   {"algorithm": "quantization",
                    "initializer": {"range": {"num_init_samples": 8}}}]
    config = register_default_init_args(
        NNCFConfig.from_dict({"input_info": infos, "compression": compression}), dataset)
    ctrl, _ = create_compressed_model(two_inputs(), config)
    stats = ctrl.get("quantization").statistics()
    assert stats.num_initialized == stats.num_quantizers > 0


def _dict_model():
    """Dict inputs with keys not in sorted order, through a nested model that takes a
    dict too (its input channels are cut)."""
    zeta, alpha = keras.Input((8, 8, 8), name="zeta"), keras.Input((8, 8, 8), name="alpha")
    summed = layers.Add()([zeta, alpha])
    inner = keras.Model({"zeta": zeta, "alpha": alpha}, layers.Conv2D(4, 1)(summed))
    rgb, depth = keras.Input((8, 8, 3), name="rgb"), keras.Input((8, 8, 1), name="depth")
    a = layers.Conv2D(8, 3, padding="same", name="ca")(rgb)
    b = layers.Conv2D(8, 3, padding="same", name="cb")(depth)
    return keras.Model({"rgb": rgb, "depth": depth}, inner({"zeta": a, "alpha": b}))


def test_dict_inputs_strip_and_export_in_the_model_order(tmp_path):
    """The nested dict model's strip and the ONNX export of unsorted keys failed with
    Keras's structure errors."""
    import onnx

    from filterprune.onnx import run_onnxruntime

    keras.utils.set_random_seed(0)
    model = randomize_bn(_dict_model())
    infos = [{"sample_size": [1, 8, 8, 3], "keyword": "rgb"},
             {"sample_size": [1, 8, 8, 1], "keyword": "depth"}]  # fmt: skip
    ctrl, masked = create_compressed_model(model, config(infos, prune_first_conv=True,
                                                         filters_multiple_of=1))  # fmt: skip
    rng = np.random.default_rng(1)
    feeds = {"rgb": rng.normal(size=(2, 8, 8, 3)).astype("float32"),
             "depth": rng.normal(size=(2, 8, 8, 1)).astype("float32")}  # fmt: skip
    ref = masked(feeds, training=False).numpy()
    small = ctrl.strip()
    assert small.get_layer("ca").filters == 4
    np.testing.assert_allclose(small(feeds, training=False).numpy(), ref, atol=1e-5)
    ctrl.export_model(str(tmp_path / "m.onnx"), shrink=True)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    out = run_onnxruntime(proto, {i.name: feeds[i.name] for i in proto.graph.input})[0]
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_dict_inputs_without_keywords_are_told_their_order():
    """Entries without a keyword follow the inputs in sorted key order; the error did not
    say so."""
    rgb, depth = keras.Input((8, 8, 3), name="rgb"), keras.Input((8, 8, 1), name="depth")
    x = layers.Concatenate()([layers.Conv2D(4, 1)(rgb), layers.Conv2D(4, 1)(depth)])
    model = keras.Model({"rgb": rgb, "depth": depth}, layers.Conv2D(2, 1)(x))
    with pytest.raises(ConfigError, match=r"sorted key order \('depth', 'rgb'\); give each "
                       r"entry the `keyword` of its input"):  # fmt: skip
        create_compressed_model(model, config([{"sample_size": [1, 8, 8, 3]},
                                               {"sample_size": [1, 8, 8, 1]}]))  # fmt: skip


def test_two_views_joined_and_split_on_the_batch_axis_are_cut():
    """SimCLR and Siamese nets run both views through one backbone joined on the batch
    axis, then ``ops.split(h, 2, axis=0)``: the split's pieces were given the sample's
    batch, not half the joined one's, and held the backbone ("Split: channel layout does
    not match its output shape")."""
    ops = keras.ops
    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    h = ops.concatenate([a, b], axis=0)
    h = layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same", name="conv")(h))
    first, second = ops.split(layers.GlobalAveragePooling2D()(layers.ReLU()(h)), 2, axis=0)
    out = layers.Dense(4, name="head")(ops.concatenate([first, second * 2], axis=-1))
    model = randomize_bn(keras.Model([a, b], out))
    infos = [{"sample_size": [2, 8, 8, 3]}, {"sample_size": [2, 8, 8, 3]}]
    ctrl, model = create_compressed_model(model, config(infos, prune_first_conv=True))
    x = [np.random.default_rng(i).normal(size=(2, 8, 8, 3)).astype("float32") for i in (1, 2)]
    small = ctrl.strip()
    np.testing.assert_allclose(small(x), model(x, training=False), rtol=0, atol=1e-5)
    assert small.get_layer("conv").filters == 8
