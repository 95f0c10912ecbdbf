"""Layer subclasses the analysis cannot see into (a user's block, keras_hub's): held whole,
yet counted, listed, left usable, and stripped."""

import numpy as np
import pytest
from keras_helpers import (
    assert_strip_equal,
    compression_config,
    keras,
    layers,
    make_config,
    randomize_bn,
    regression_data,
)

from filterprune.errors import AnalysisError
from filterprune.tensorflow import create_compressed_model


class Block(keras.layers.Layer):
    """Two convs and a residual add; the ``Add`` builds on the first real call only."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.c1 = layers.Conv2D(filters, 3, padding="same", activation="relu")
        self.c2 = layers.Conv2D(filters, 3, padding="same")
        self.add = layers.Add()

    def build(self, input_shape):
        self.c1.build(input_shape)
        self.c2.build(input_shape[:-1] + (self.filters,))

    def call(self, x):
        return self.add([x, self.c2(self.c1(x))])

    def compute_output_shape(self, shape):
        return shape

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


class TwoHeads(keras.layers.Layer):
    """A layer with two outputs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a, self.b = layers.Conv2D(16, 3, padding="same"), layers.Conv2D(16, 1)

    def call(self, x):
        return self.a(x), self.b(x)


class Mixing(keras.layers.Layer):
    """Mixes channels with a weight named as a SavedModel's variables are (``kernel:0``,
    what a TFSMLayer holds)."""

    def build(self, input_shape):
        self.k = self.add_weight(shape=(input_shape[-1], 16), name="kernel:0")

    def call(self, x):
        return keras.ops.matmul(x, self.k)


def redrawn(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(0, 0.3, v.shape).astype(v.dtype))
    return model


def net(middle, side=16):
    inp = keras.Input((side, side, 3))
    x = layers.Conv2D(16, 3, padding="same", name="c1")(inp)
    x = layers.Conv2D(16, 3, padding="same", name="c2")(x)
    x = middle(layers.Conv2D(16, 1, name="c3")(x))
    if isinstance(x, (list, tuple)):
        x = layers.Add()(list(x))
    out = layers.Dense(4, name="head")(layers.GlobalAveragePooling2D()(x))
    return redrawn(keras.Model(inp, out))


X = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype("float32")


@pytest.mark.parametrize("middle", [Block, TwoHeads, Mixing],
                         ids=["one output", "two outputs", "saved variables"])
def test_a_custom_layer_is_held_counted_and_listed(middle):
    """A weight named with a ":" (a SavedModel's) was left out of the totals."""
    model = net(middle(16, name="block") if middle is Block else middle(name="block"))
    full = model.count_params()
    ctrl, model = create_compressed_model(model, make_config((1, 16, 16, 3)))
    small = assert_strip_equal(ctrl, model, X, tol=1e-5)
    stats = ctrl.statistics()
    held = {p: r for producers, r in stats.unpruned for p in producers}
    assert "no channel rule for layer" in held["block"] and "c3" in held
    assert small.count_params() < full  # c2 is cut
    assert (stats.current_params, stats.full_params) == (small.count_params(), full)
    inner = sum(2 * 256 * int(np.prod(w.shape)) for w in model.get_layer("block").weights
                if len(w.shape) > 1)  # its kernels at its 16x16 output positions
    assert stats.full_flops >= inner + 2 * 256 * int(np.prod(model.get_layer("c2").kernel.shape))


def test_a_sublayer_built_on_the_first_call_stays_usable():
    model = net(Block(16, name="block"))  # never called: the Add is not built
    assert not model.get_layer("block").add.built
    ctrl, model = create_compressed_model(model, make_config((1, 16, 16, 3)))
    assert model(X, training=False).shape == (2, 4)  # the analysis built it; it still runs


def test_quantization_lists_a_custom_layer_left_in_float(caplog):
    caplog.set_level("WARNING", logger="filterprune")
    model = net(Block(16, name="block"), side=32)
    config = compression_config({"algorithm": "quantization"})
    ctrl, model = create_compressed_model(model, config)
    stats = ctrl.statistics()
    assert [name for name, _ in stats.left_in_float] == ["block"]
    assert "left in float" in str(stats) and "1 layer(s) keep float weights" in caplog.text


class Fragile(keras.layers.Layer):
    """A layer whose config has a key its ``__init__`` refuses (as some library layers)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units, self.conv = units, layers.Conv2D(units, 1)

    def call(self, x):
        return self.conv(x)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "inner": {"units": self.units}}


class Backbone(keras.Model):
    """A functional model rebuilt by its own constructor (keras_hub's backbones)."""

    def __init__(self, units=8, **kwargs):
        inp = keras.Input((16, 16, 3))
        out = Fragile(units)(layers.Conv2D(units, 3, padding="same")(inp))
        super().__init__(inp, out, **kwargs)
        self.units = units

    def get_config(self):
        return {"units": self.units, "name": self.name}


@pytest.mark.parametrize("fed", [False, True], ids=["fed the input", "fed a cut conv"])
def test_a_nested_model_its_layers_cannot_rebuild_is_kept_whole_and_rebuilt_so(fed):
    """A strip rebuilt it layer by layer and failed on ``Fragile``; it is now one layer,
    rebuilt by its own from_config, and a conv feeding it keeps its filters."""
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(3, 3, padding="same", name="feed")(inp) if fed else inp
    x = layers.Conv2D(16, 3, padding="same", name="c")(Backbone(name="backbone")(x))
    x = layers.Conv2D(16, 3, padding="same", name="d")(x)
    model = redrawn(keras.Model(inp, layers.Dense(4)(layers.GlobalAveragePooling2D()(x))))
    ctrl, model = create_compressed_model(model, make_config((1, 16, 16, 3),
                                                             prune_first_conv=True))
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert "nested model backbone is kept whole: its layer" in held["backbone"]
    small = assert_strip_equal(ctrl, model, X, tol=1e-5)
    assert small.get_layer("c").filters == 8
    if fed:
        assert small.get_layer("feed").filters == 3


def test_a_layer_that_cannot_be_rebuilt_is_named():
    model = net(Fragile(16, name="fragile"))
    ctrl, model = create_compressed_model(model, make_config((1, 16, 16, 3)))
    with pytest.raises(AnalysisError, match="Fragile 'fragile' cannot be rebuilt from its "
                                            "get_config.*inner"):
        ctrl.strip()


class Scaled(keras.layers.Layer):
    """A layer whose ``get_config()`` leaves out ``scale``: rebuilt, it scales by 1."""

    def __init__(self, units=16, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.units, self.scale = units, scale
        self.conv = layers.Conv2D(units, 3, padding="same")

    def build(self, shape):
        self.conv.build(shape)

    def call(self, x):
        return self.conv(x) * self.scale

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_a_layer_its_config_rebuilds_otherwise_is_refused_at_strip(caplog):
    """The strip rebuilt it with ``scale=1.0``: the stripped model and the exported file
    were 0.67 relative off the masked model, with no word."""
    caplog.set_level("WARNING", logger="filterprune")
    model = redrawn(net(Scaled(16, scale=3.0, name="scaled")))
    ctrl, model = create_compressed_model(model, make_config((1, 16, 16, 3)))
    assert "scaled (Scaled: Scaled 'scaled' rebuilt from its config computes otherwise" \
        in caplog.text  # fmt: skip
    with pytest.raises(AnalysisError, match=r"'scaled' rebuilt from its config computes "
                                            r"otherwise \(0\.67 relative\)"):  # fmt: skip
        ctrl.strip()


class Noisy(keras.layers.Layer):
    """Noise at inference (StyleGAN's injection), with a complete ``get_config()``."""

    def __init__(self, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.seed, self.draws = seed, keras.random.SeedGenerator(seed)

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x + self.w * keras.random.normal(keras.ops.shape(x)[:-1] + (1,), seed=self.draws)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def test_a_layer_that_draws_noise_at_inference_still_strips():
    """The check compared one call of it with one of its copy, which draw otherwise: the
    strip refused it (0.66 relative)."""
    model = net(Noisy(3, name="noisy"))
    ctrl, model = create_compressed_model(model, make_config((1, 16, 16, 3)))
    assert ctrl.strip().get_layer("noisy").seed == 3


def test_attention_counts_its_projections_not_its_per_head_biases():
    """MultiHeadAttention keeps its query, key and value biases as (heads, key_dim): they
    were counted as matrices (3072 FLOPs more here)."""
    tokens, dim, heads, key_dim = 16, 32, 4, 8
    inp = keras.Input((tokens, dim))
    y = layers.MultiHeadAttention(heads, key_dim, name="mha")(inp, inp)
    model = keras.Model(inp, layers.Dense(5, name="head")(layers.GlobalAveragePooling1D()(y)))
    ctrl, _ = create_compressed_model(model, make_config((1, tokens, dim)))
    projections = 2 * tokens * (3 * dim * heads * key_dim + heads * key_dim * dim)
    assert ctrl.statistics().full_flops == projections + 2 * dim * 5


def test_an_embedding_counts_no_flops():
    """A lookup was counted as a matrix product at every token (320,000 FLOPs here)."""
    inp = keras.Input((10,), dtype="int32")
    out = layers.Dense(4, name="head")(layers.Embedding(1000, 16, name="emb")(inp))
    ctrl, _ = create_compressed_model(keras.Model(inp, out), make_config((1, 10)))
    assert ctrl.statistics().full_flops == 2 * 10 * 16 * 4


@pytest.mark.parametrize("sequences", [True, False])
@pytest.mark.parametrize("kind", ["lstm", "bidirectional", "convlstm"])
def test_a_recurrent_layer_counts_every_step_also_when_it_returns_the_last(kind, sequences):
    """Returning the last step only, an LSTM counted no FLOPs and a ConvLSTM2D one step."""
    steps, features, units = 5, 3, 4
    if kind == "convlstm":
        inp = keras.Input((steps, 6, 6, features))
        rnn = layers.ConvLSTM2D(units, 3, padding="valid", return_sequences=sequences)
        per_step = 4 * 4 * 9 * (features + units) * 4 * units  # 4x4 output pixels
    else:
        inp = keras.Input((steps, features))
        rnn = layers.LSTM(units, return_sequences=sequences)
        per_step = 4 * units * (features + units)
        if kind == "bidirectional":
            rnn, per_step = layers.Bidirectional(rnn), 2 * per_step
    model = keras.Model(inp, rnn(inp))
    ctrl, _ = create_compressed_model(model, make_config((1, *inp.shape[1:])))
    assert ctrl.statistics().full_flops == 2 * steps * per_step


class SincLike(keras.layers.Layer):
    """Builds its kernel from 1-D cutoffs in call (SincNet's first layer)."""

    def build(self, shape):
        self.low = self.add_weight(shape=(8,), initializer="ones")

    def call(self, x):
        t = keras.ops.arange(-3.0, 4.0)[:, None, None]
        return keras.ops.conv(x, keras.ops.sin(t * self.low), padding="same")

    def compute_output_shape(self, shape):
        return shape[:-1] + (8,)


def test_a_layer_of_one_dimensional_weights_run_whole_is_listed():
    inp = keras.Input((32, 1))
    x = layers.Conv1D(8, 3, name="conv")(SincLike(name="sinc")(inp))
    model = keras.Model(inp, layers.Dense(2, name="head")(layers.GlobalAveragePooling1D()(x)))
    ctrl, _ = create_compressed_model(model, make_config((1, 32, 1)))
    assert (["sinc"], "no channel rule for layer SincLike") in ctrl.statistics().unpruned


class DropPath(keras.layers.Layer):
    """Stochastic depth: whole samples dropped in training, nothing at inference."""

    def __init__(self, rate=0.2, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.draws = rate, keras.random.SeedGenerator(1)

    def call(self, x, training=None):
        if not training:
            return x
        shape = (keras.ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        keep = keras.ops.cast(keras.random.uniform(shape, seed=self.draws) > self.rate, x.dtype)
        return x * keep / (1 - self.rate)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


class Mish(keras.layers.Layer):
    def call(self, x):
        return x * keras.ops.tanh(keras.ops.softplus(x))


class ChannelMean(keras.layers.Layer):
    """Mixes channels: the rule of the ops in its ``call`` holds them."""

    def call(self, x):
        return x - keras.ops.mean(x, axis=-1, keepdims=True)


class AlwaysDropped(keras.layers.Layer):
    """Its training path, which the graph fixes (``training=True``): noise per channel."""

    def call(self, x, training=None):
        if not training:
            return x
        return x * keras.random.uniform((1, 1, 1, x.shape[-1]), seed=3)


class TrainingMean(keras.layers.Layer):
    """Nothing at inference; in training, the mean over the channels taken out."""

    def call(self, x, training=None):
        return x - keras.ops.mean(x, axis=-1, keepdims=True) if training else x


class WidthBranch(keras.layers.Layer):
    """A branch on the width: at a cut width it takes the other one."""

    def call(self, x):
        return x * 2.0 if x.shape[-1] > 8 else x


def residual_net(act, drop, training=None, side=16):
    inp = keras.Input((side, side, 3))
    x = layers.Conv2D(16, 3, padding="same", name="stem")(inp)
    for i in range(2):
        y = act(name=f"act{i}")(layers.BatchNormalization(name=f"bn{i}")(
            layers.Conv2D(16, 3, padding="same", name=f"a{i}")(x)))  # fmt: skip
        y = layers.Conv2D(16, 3, padding="same", name=f"b{i}")(y)
        y = drop(name=f"drop{i}")(y) if training is None else \
            drop(name=f"drop{i}")(y, training=training)  # fmt: skip
        x = layers.Add()([x, y])
    out = layers.Dense(4, name="head")(layers.GlobalAveragePooling2D()(x))
    return randomize_bn(redrawn(keras.Model(inp, out)))


def test_a_layer_of_the_users_without_weights_is_read_through(tmp_path):
    """A DropPath held the whole residual stream ("no channel rule for layer DropPath"),
    a custom activation the convs around it: FLOPs kept 1.0 with the stem cut too."""
    model = residual_net(Mish, DropPath)
    ctrl, model = create_compressed_model(model, make_config((1, 16, 16, 3),
                                                             prune_first_conv=True))
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert set(held) == {"head"}, held
    assert ctrl.statistics().flops_kept < 0.3
    small = assert_strip_equal(ctrl, model, X, tol=1e-5)
    assert small.get_layer("stem").filters == small.get_layer("a0").filters == 8
    assert isinstance(small.get_layer("drop0"), DropPath)


@pytest.mark.parametrize(("act", "drop", "training", "reason"), [
    (ChannelMean, DropPath, None, "Mean in ChannelMean act0: reduces over channels"),
    (Mish, AlwaysDropped, True, "AlwaysDropped: takes numbers from its input's sizes"),
    (Mish, TrainingMean, None, "TrainingMean: mixes entries in training"),
    (WidthBranch, DropPath, None, "WidthBranch: takes numbers from its input's sizes"),
], ids=["mixes channels", "training path fixed in the graph", "mixes them in training",
        "branches on the width"])  # fmt: skip
def test_a_layer_of_the_users_computing_across_channels_keeps_them(act, drop, training, reason):
    model = residual_net(act, drop, training)
    ctrl, model = create_compressed_model(model, make_config((1, 16, 16, 3),
                                                             prune_first_conv=True))
    held = [r for _, r in ctrl.statistics().unpruned]
    assert any(reason in r for r in held), held
    assert_strip_equal(ctrl, model, X, tol=1e-5)


def test_a_read_through_layer_quantizes_and_exports(tmp_path):
    pytest.importorskip("tf2onnx")
    import onnx

    from filterprune.onnx import run_onnxruntime

    prune = {"algorithm": "filter_pruning", "pruning_init": 0.5,
             "params": {"prune_first_conv": True}}  # fmt: skip
    config = compression_config(prune, {"algorithm": "quantization"})
    ctrl, model = create_compressed_model(residual_net(Mish, DropPath, side=32), config)
    x = regression_data(1, n=2)[0]
    ref = model(x, training=False).numpy()
    path = tmp_path / "model.onnx"
    ctrl.export_model(str(path), shrink=True)
    proto = onnx.load(str(path))
    out = run_onnxruntime(proto, {proto.graph.input[0].name: x})[0]
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4
    assert ctrl.strip().get_layer("stem").layer.filters == 8


class Tied(keras.layers.Layer):
    """Runs another layer's kernel (tied weights): Keras lists it among its weights."""

    def __init__(self, conv, **kwargs):
        super().__init__(**kwargs)
        self.conv = conv

    def call(self, x):
        return keras.ops.conv(x, self.conv.kernel, padding="same")


def test_a_kernel_a_custom_layer_reads_of_another_layer_is_counted_once():
    """It was counted under both layers (11,011 of a model of 6,387 parameters)."""
    inp = keras.Input((16, 16, 3))
    conv = layers.Conv2D(16, 3, padding="same", name="conv")
    x = conv(layers.Conv2D(16, 3, padding="same", name="stem")(inp))
    x = Tied(conv, name="tied")(layers.ReLU()(x))
    model = redrawn(keras.Model(inp, layers.Dense(4)(layers.GlobalAveragePooling2D()(x))))
    full = model.count_params()
    ctrl, _ = create_compressed_model(model, make_config((1, 16, 16, 3)))
    assert ctrl.statistics().full_params == full


def test_a_layer_given_another_layer_says_its_rebuild_unties_them():
    inp = keras.Input((16, 16, 3))
    conv = layers.Conv2D(16, 3, padding="same", name="conv")
    x = Tied(conv, name="tied")(layers.ReLU()(conv(layers.Conv2D(16, 3, name="stem")(inp))))
    model = keras.Model(inp, layers.Dense(4)(layers.GlobalAveragePooling2D()(x)))
    ctrl, _ = create_compressed_model(model, make_config((1, 16, 16, 3)))
    with pytest.raises(AnalysisError, match="It is given layer 'conv': rebuilt from its "
                       "config, it holds a copy of that layer's weights, no longer tied"):
        ctrl.strip()
