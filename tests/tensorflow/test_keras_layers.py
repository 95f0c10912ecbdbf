"""Each supported layer kind: the masked model equals the stripped one, and shrinks."""

import numpy as np
import pytest
from keras_helpers import assert_strip_equal, keras, layers, make_config, randomize_bn, tf

from filterprune.tensorflow import create_compressed_model

ops = keras.ops


def _conv1d():
    inp = keras.Input((32, 4))
    x = layers.Conv1D(16, 3, padding="same", name="c1")(inp)
    x = layers.SeparableConv1D(16, 3, padding="same", name="sep")(layers.ELU()(x))
    x = layers.DepthwiseConv1D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = layers.GlobalMaxPooling1D()(layers.Conv1D(16, 1, name="c2")(x))
    return keras.Model(inp, layers.Dense(3, name="out")(x)), (1, 32, 4)


def _conv3d_and_transpose():
    inp = keras.Input((8, 8, 8, 2))
    x = layers.Conv3D(16, 3, padding="same", name="c1")(inp)
    x = layers.Conv3D(16, 3, padding="same", name="c2")(layers.ZeroPadding3D(0)(x))
    x = layers.AveragePooling3D(2)(x)
    y = layers.Reshape((4, 4, 64), name="fold")(x)  # depth folded into channels
    y = layers.Conv2DTranspose(16, 3, strides=2, padding="same", name="up")(y)
    y = layers.Conv2D(4, 1, name="head")(layers.UpSampling2D()(y))
    return keras.Model(inp, y), (1, 8, 8, 8, 2)


def _grouped_and_prelu():
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(32, 3, padding="same", name="c1")(inp)
    x = layers.Conv2D(32, 3, padding="same", name="c2")(x)
    x = layers.PReLU(shared_axes=[1, 2], name="act")(x)
    x = layers.Conv2D(32, 3, padding="same", groups=4, name="grouped")(x)
    x = layers.Conv2D(32, 3, padding="same", groups=32, name="dw_as_groups")(x)
    x = layers.Conv2D(8, 1, name="head")(layers.Cropping2D(1)(x))
    return keras.Model(inp, x), (1, 16, 16, 3)


def _squeeze_excite_with_reshape_and_ops():
    """EfficientNet/MobileNetV3 style: Reshape((1, 1, C)) gate, hard-swish from keras.ops."""
    inp = keras.Input((16, 16, 3))
    x = layers.Rescaling(1 / 255)(inp)
    x = layers.Conv2D(16, 3, padding="same", name="c1")(x)
    x = layers.Conv2D(32, 1, name="expand")(x)
    x = x * ops.relu6(x + 3.0) * (1.0 / 6.0)
    g = layers.GlobalAveragePooling2D()(x)
    g = layers.Reshape((1, 1, 32), name="se_reshape")(g)
    g = layers.Conv2D(8, 1, activation="relu", name="se1")(g)
    g = layers.Conv2D(32, 1, activation="hard_sigmoid", name="se2")(g)
    x = layers.multiply([x, g])
    x = layers.Conv2D(16, 1, name="project")(x)
    a, b = ops.split(x, 2, axis=-1)
    x = ops.concatenate([b, a], axis=-1)
    x = layers.Conv2D(8, 1, name="head")(layers.Dropout(0.2)(x))
    return keras.Model(inp, x), (1, 16, 16, 3)


def _nested_shared_sequential():
    block = keras.Sequential([keras.Input((16, 16, 16)), layers.Conv2D(16, 3, padding="same"),
                              layers.BatchNormalization(), layers.ReLU()], name="block")
    inp = keras.Input((16, 16, 3))
    shared = layers.Conv2D(16, 3, padding="same", name="shared")
    x = layers.Conv2D(16, 3, padding="same", name="c1")(inp)
    x = shared(block(x))
    x = layers.Permute((2, 1, 3))(shared(x))
    x = layers.Conv2D(8, 1, name="head")(layers.LayerNormalization(name="ln")(x))
    return keras.Model(inp, x), (1, 16, 16, 3)


def _sequential_mlp():
    model = keras.Sequential([keras.Input((28, 28, 1)),
                              layers.Normalization(mean=0.5, variance=0.25),
                              layers.Conv2D(16, 3), layers.BatchNormalization(),
                              layers.MaxPooling2D(), layers.Conv2D(16, 3), layers.Flatten(),
                              layers.Dense(32, activation="relu"), layers.Dense(32),
                              layers.Activation("softmax"), layers.Dense(10)])  # fmt: skip
    return model, (1, 1, 28, 28)


def _two_inputs_open_shape():
    a, b = keras.Input((None, None, 3), name="a"), keras.Input((None, None, 3), name="b")
    x = layers.Conv2D(16, 3, padding="same", name="ca")(a)
    y = layers.Conv2D(16, 3, padding="same", name="cb")(b)
    x = layers.Conv2D(16, 3, padding="same", name="c2")(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model([a, b], layers.Dense(4, name="out")(x)), [(1, 16, 16, 3), (1, 3, 16, 16)]


BUILDERS = {f.__name__[1:]: f for f in (
    _conv1d, _conv3d_and_transpose, _grouped_and_prelu, _squeeze_excite_with_reshape_and_ops,
    _nested_shared_sequential, _sequential_mlp, _two_inputs_open_shape)}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_masked_equals_stripped(name, tmp_path):
    keras.utils.set_random_seed(0)
    model, sample = BUILDERS[name]()
    randomize_bn(model)
    samples = sample if isinstance(sample, list) else [sample]
    config = make_config(prune_first_conv=True, prune_downsample_convs=True)
    config["input_info"] = [{"sample_size": list(s)} for s in samples]
    n_full = model.count_params()
    ctrl, model = create_compressed_model(model, config)
    assert ctrl.statistics().flops_kept < 1.0, ctrl.statistics()
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(2, *shape[1:])).astype("float32") for shape in ctrl.capture.input_shapes]
    small = assert_strip_equal(ctrl, model, x if len(x) > 1 else x[0])
    assert small.count_params() < n_full
    small.save(tmp_path / "m.keras")
    keras.models.load_model(tmp_path / "m.keras")


def test_grouped_conv_keeps_equal_channels_per_group():
    keras.utils.set_random_seed(0)
    model, sample = _grouped_and_prelu()
    ctrl, model = create_compressed_model(model, make_config(sample, prune_first_conv=True))
    small = ctrl.strip()
    grouped, dw = small.get_layer("grouped"), small.get_layer("dw_as_groups")
    assert grouped.groups == 4 and grouped.kernel.shape[-2] * 4 == small.get_layer("c2").filters
    assert dw.groups == dw.filters == grouped.filters < 32


def test_reshape_targets_of_layers_and_keras_ops_are_rewritten():
    keras.utils.set_random_seed(0)
    model, sample = _squeeze_excite_with_reshape_and_ops()
    ctrl, _ = create_compressed_model(model, make_config(sample, prune_first_conv=True))
    small = ctrl.strip()
    assert small.get_layer("se_reshape").target_shape == (1, 1, small.get_layer("expand").filters)
    assert small.get_layer("expand").filters < 32
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(16, 1, name="c2")(layers.Conv2D(16, 1, name="c1")(inp))
    x = layers.Conv2D(4, 1, name="c3")(ops.reshape(x, (-1, 8, 8, 16)))
    ctrl, model = create_compressed_model(keras.Model(inp, x), make_config((1, 8, 8, 3)))
    reasons = {tuple(p): r for p, r in ctrl.statistics().unpruned}
    assert ("c2",) not in reasons  # held before: "reshape fixes the channel count in code"
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    assert assert_strip_equal(ctrl, model, x).get_layer("c2").filters == 8


def test_unknown_layer_is_left_unpruned_with_a_reason(images=None):
    class Odd(layers.Layer):
        def call(self, x):
            return tf.roll(x, 1, axis=-1)

    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(16, 3, name="c1")(inp)
    x = layers.Conv2D(16, 3, name="c2")(x)
    x = layers.Conv2D(16, 3, name="c3")(Odd(name="odd")(x))
    model = keras.Model(inp, layers.Conv2D(4, 1, name="c4")(x))
    ctrl, model = create_compressed_model(model, make_config((1, 16, 16, 3)))
    reasons = {tuple(p): r for p, r in ctrl.statistics().unpruned}
    assert reasons[("c2",)] == (  # a TensorFlow function: no keras.ops graph to read
        "Odd: fails on symbolic Keras tensors (ValueError: A KerasTensor cannot be used as "
        "input to a TensorFlow function): written with keras.ops only, it can be read and cut")
    assert {s.name for s in ctrl.statistics().layers} == {"c3"}
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    assert_strip_equal(ctrl, model, x)


def test_channels_first_conv_reads_channel_axis_one():
    inp = keras.Input((3, 16, 16))
    x = layers.Conv2D(16, 3, data_format="channels_first", name="c1")(inp)
    x = layers.BatchNormalization(axis=1, name="bn")(x)
    x = layers.Conv2D(16, 3, data_format="channels_first", name="c2")(x)
    x = layers.Flatten(data_format="channels_first")(x)
    model = keras.Model(inp, layers.Dense(4, name="out")(x))
    ctrl, _ = create_compressed_model(model, make_config((1, 3, 16, 16), prune_first_conv=True))
    graph = ctrl.analysis.graph
    assert graph["c1"].attrs["channel_axis"] == 1 and graph["bn"].attrs["channel_axis"] == 1
    assert [n.name for n in graph if n.op == "permute"] == [f"{model.layers[-2].name}/transpose"]
    small = ctrl.strip()  # built symbolically (NCHW convs do not run on CPU)
    assert small.get_layer("out").kernel.shape[0] == small.get_layer("c2").filters * 12 * 12


def test_pruned_weights_do_not_move_in_fit_when_masks_arrive_after_tracing():
    keras.utils.set_random_seed(0)
    model, sample = _grouped_and_prelu()
    config = make_config(sample, pruning_init=0.0, pruning_target=0.5, pruning_steps=2,
                         prune_first_conv=True)
    ctrl, model = create_compressed_model(model, config)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(8, 14, 14, 8)).astype("float32")
    model.fit(x, y, epochs=1, verbose=0)  # traced at level 0: nothing cut yet
    ctrl.scheduler.epoch_step(0)
    ctrl.scheduler.epoch_step(1)
    keep = ctrl.keeps()["c1"]["out"]
    assert not keep.all()
    before = model.get_layer("c1").kernel.numpy()
    model.fit(x, y, epochs=1, verbose=0)  # the same traced train step
    after = model.get_layer("c1").kernel.numpy()
    np.testing.assert_array_equal(after[..., ~keep], before[..., ~keep])
    assert not np.allclose(after[..., keep], before[..., keep])


@pytest.mark.parametrize("form", ["conv", "depthwise", "einsum", "matmul"])
def test_keras_ops_products_with_a_constant_kernel_count_their_flops(form):
    """They counted none: a 3x3 conv from 16 to 64 channels written as ``ops.conv`` with
    a constant kernel left 18.9M FLOPs out of the total and of what is kept."""
    ops = keras.ops
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.1, (3, 3, 16, 1 if form == "depthwise" else 32)).astype("float32")

    def net(as_layer):
        inp = keras.Input((8, 8, 3))
        h = layers.Conv2D(16, 3, padding="same", name="a")(inp)
        if as_layer:  # the same product as a stock layer (same kernel, no bias)
            if form == "depthwise":
                h = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(h)
            else:
                size = 3 if form == "conv" else 1
                h = layers.Conv2D(32, size, padding="same", use_bias=False)(h)
        elif form == "conv":
            h = ops.conv(h, ops.convert_to_tensor(kernel), padding="same")
        elif form == "depthwise":
            h = ops.depthwise_conv(h, ops.convert_to_tensor(kernel), padding="same")
        elif form == "einsum":
            h = ops.einsum("bhwc,cd->bhwd", h, ops.convert_to_tensor(kernel[0, 0]))
        else:
            h = ops.matmul(h, ops.convert_to_tensor(kernel[0, 0]))
        return keras.Model(inp, layers.Conv2D(4, 1, name="head")(h))

    full = [create_compressed_model(net(as_layer), make_config((1, 8, 8, 3)))[0]
            .statistics().full_flops for as_layer in (False, True)]  # fmt: skip
    assert full[0] == full[1]
