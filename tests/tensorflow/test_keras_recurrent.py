"""Convolutions before a Keras LSTM, GRU or SimpleRNN are cut with the rows of its input
kernel, as before a PyTorch ``nn.LSTM``; the recurrent layer stays whole and in float."""

import numpy as np
import pytest
import tensorflow as tf
from keras_helpers import assert_strip_equal, compression_config, keras, layers, make_config

from filterprune.tensorflow import create_compressed_model

STEPS, FEATURES = 20, 3


def crnn(kind, sequences):
    keras.utils.set_random_seed(0)
    inp = keras.Input((STEPS, FEATURES))
    x = layers.Conv1D(16, 3, padding="same", activation="relu", name="c1")(inp)
    x = layers.Conv1D(16, 3, padding="same", activation="relu", name="c2")(x)
    x = getattr(layers, kind)(8, return_sequences=sequences, name="rnn")(x)
    if sequences:
        x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inp, layers.Dense(4, name="head")(x))


@pytest.mark.parametrize("sequences", [False, True])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
def test_convs_before_a_recurrent_layer_are_cut_with_its_input_rows(kind, sequences):
    """They were held: "no channel rule for layer LSTM"."""
    model = crnn(kind, sequences)
    gates = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[kind]
    ctrl, model = create_compressed_model(model, make_config(
        (1, STEPS, FEATURES), prune_first_conv=True, filters_multiple_of=1))  # fmt: skip
    stats = ctrl.statistics()
    assert stats.unpruned == [(["head"], "feeds a model output")]
    assert {(row.name, row.kept) for row in stats.layers} == {("c1", 8), ("c2", 8)}
    rnn = 2 * STEPS * gates * 8 * (16 + 8)
    assert stats.full_flops == 2 * STEPS * 16 * 3 * (3 + 16) + rnn + 2 * 8 * 4
    x = np.random.default_rng(0).standard_normal((2, STEPS, FEATURES)).astype("float32")
    small = assert_strip_equal(ctrl, model, x, tol=1e-5)
    assert small.get_layer("rnn").weights[0].shape == (8, gates * 8)


def test_a_quantized_crnn_keeps_its_recurrent_layer_float_and_strips_equal():
    model = crnn("LSTM", False)
    prune = {"algorithm": "filter_pruning", "pruning_init": 0.5,
             "params": {"prune_first_conv": True, "filters_multiple_of": 1}}  # fmt: skip
    config = compression_config(prune, {"algorithm": "quantization"},
                                sample=(1, STEPS, FEATURES), register=False)  # fmt: skip
    data = np.random.default_rng(1).standard_normal((16, STEPS, FEATURES)).astype("float32")
    from filterprune.tensorflow import register_default_init_args

    config = register_default_init_args(config, tf.data.Dataset.from_tensor_slices(data).batch(8))
    ctrl, model = create_compressed_model(model, config)
    assert ("rnn", "a recurrent layer") in ctrl.statistics().quantization.left_in_float
    assert_strip_equal(ctrl, model, data[:2], tol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "convlstm"])
def test_a_stateful_recurrent_layer_goes_on_with_its_states_after_a_strip(kind):
    """The stripped model rebuilt the layer with zero states: a strip in the middle of a
    stream started it over (0.61 off the masked model's next call)."""
    keras.utils.set_random_seed(0)
    if kind == "lstm":
        inp = keras.Input((6, 4), batch_size=2)
        x = layers.LSTM(4, stateful=True, name="memory")(layers.Conv1D(8, 3, padding="same")(inp))
    else:
        inp = keras.Input((3, 8, 8, 2), batch_size=2)
        x = layers.TimeDistributed(layers.Conv2D(8, 3, padding="same"))(inp)
        x = layers.ConvLSTM2D(4, 3, padding="same", stateful=True, name="memory")(x)
        x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, layers.Dense(2)(x))
    sample = tuple(inp.shape)
    ctrl, model = create_compressed_model(model, make_config(sample=sample, prune_first_conv=True))
    x = np.random.default_rng(0).normal(size=sample).astype("float32")
    model(x, training=False)  # the stream so far
    small = ctrl.strip()
    expected = np.asarray(model(x, training=False))
    np.testing.assert_allclose(np.asarray(small(x, training=False)), expected, atol=1e-5)
