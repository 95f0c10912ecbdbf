"""8-bit quantization-aware training in Keras, alone and after filter pruning (the reference
"Filter Pruning + QAT" config): training, checkpoint/resume, strip, frozen graph, ONNX."""


import numpy as np
import pytest
from keras_helpers import (
    compression_config,
    fit_epochs,
    keras,
    layers,
    randomize_bn,
    regression_data,
    run_on_two_cpus,
    small_resnet,
    tf,
    train_and_resume,
)

from filterprune import ConfigError, NNCFConfig
from filterprune.core.compression import CompressionStage
from filterprune.tensorflow import (
    create_compressed_model,
    create_compression_callbacks,
    register_default_init_args,
)
from filterprune.tensorflow.fake_quant import FakeQuant, QuantizedWeights
from filterprune.tensorflow.masks import _call_weights

PRUNE = {"algorithm": "filter_pruning", "pruning_init": 0.1,
         "params": {"pruning_target": 0.6, "pruning_steps": 4, "prune_first_conv": True}}
QUANT = {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 16}}}


_config = compression_config


def _fresh():
    # names restart as in a new process: quantizer keys name unnamed layers (re_lu_3)
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    return randomize_bn(small_resnet(dropout=0.0))  # dropout's RNG is not checkpointed


def _close(out, ref, tol=1e-4):
    np.testing.assert_allclose(out, ref, atol=tol * max(1.0, float(np.abs(ref).max())))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The reference config after two epochs of ``model.fit`` with the callbacks (half the
    filters of each group pruned from the start)."""
    ctrl, model = create_compressed_model(_fresh(), _config({**PRUNE, "pruning_init": 0.5},
                                                            QUANT))  # fmt: skip
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    history = fit_epochs(ctrl, model, regression_data(1), 0, 2)
    x = regression_data(3, 4)[0]
    return ctrl, model, x, model(x, training=False).numpy(), history


def _quant(ctrl):
    return ctrl.get("quantization")


def test_reference_config_trains_with_both_algorithms(trained):
    ctrl, model, _, _, history = trained
    assert [c.name for c in ctrl.child_ctrls] == ["filter_pruning", "quantization"]
    stats = ctrl.statistics()
    assert stats.quantization.ranges_initialized
    assert stats.quantization.num_weight_quantizers == 11  # every conv and dense
    assert stats.quantization.num_activation_quantizers == 11
    assert stats.flops_kept < 1.0 and "Quantization statistics" in str(stats)
    assert float(ctrl.loss()) == 0.0
    assert _quant(ctrl).compression_stage() == CompressionStage.FULLY_COMPRESSED
    assert ctrl.compression_stage() == CompressionStage.PARTIALLY_COMPRESSED  # pruning ramps
    assert history.history["pruning_level"][-1] == pytest.approx(ctrl.get(
        "filter_pruning").pruning_level)  # fmt: skip
    assert len(model.weights) == len(_fresh().weights)  # ranges are not model weights


def test_pruned_filters_stay_exactly_zero_and_kept_ones_on_the_grid(trained):
    ctrl, model, _, _, _ = trained
    quant = _quant(ctrl)
    for layer_name in ("stem", "a", "down", "fc1"):
        layer = model.get_layer(layer_name)
        kernel = _call_weights(layer)["kernel" if "kernel" in layer.__dict__ else "_kernel"]
        kernel = kernel.numpy()
        mask = next(iter(layer.__dict__["_fp_weight_masks"].values())).numpy()
        mask = np.broadcast_to(mask, kernel.shape)
        assert (mask == 0).any(), layer_name
        assert np.all(kernel[mask == 0] == 0.0)
        scale = quant.quantizers[f"weight:{layer_name}"].state.scale
        steps = kernel / scale
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)


def test_weight_ranges_follow_the_weights_at_each_epoch():
    ctrl, model = create_compressed_model(_fresh(), _config(QUANT))
    fc1 = model.get_layer("fc1")
    before = ctrl.quantizers["weight:fc1"].state.scale.copy()
    fc1.kernel.assign(fc1.kernel.numpy() * 2.0)
    ctrl.scheduler.epoch_step()
    np.testing.assert_allclose(ctrl.quantizers["weight:fc1"].state.scale, before * 2, rtol=1e-5)


def test_activation_ranges_leave_pruned_channels_out():
    """A 90th percentile over the tensor ``a`` reads (half of ``stem``'s filters pruned) is taken
    on the kept channels; with the zero channels in, it would be far lower."""
    prune = {**PRUNE, "pruning_init": 0.5}
    quant = {**QUANT, "initializer": {"range": {"num_init_samples": 16, "type": "percentile",
                                                "params": {"max_percentile": 90}}}}  # fmt: skip
    ctrl, model = create_compressed_model(_fresh(), _config(prune, quant))
    spec = next(s for s in _quant(ctrl).activation_specs if "a" in s.consumers)
    high = _quant(ctrl).quantizers[spec.key].state.range()[1]
    ref_ctrl, ref_model = create_compressed_model(_fresh(), _config(prune))
    probe = keras.Model(ref_model.inputs, ref_model.get_layer("a").input)
    x = regression_data(0)[0]
    live, every = [], []
    for batch in (x[:8], x[8:]):
        act = probe(batch, training=False).numpy()
        kept = act.reshape(-1, act.shape[-1])[:, np.abs(act).reshape(-1, act.shape[-1]).max(0) > 0]
        assert 0 < kept.shape[1] < act.shape[-1]
        live.append(kept.ravel())
        every.append(act.ravel())
    assert float(high) == pytest.approx(np.percentile(np.concatenate(live), 90), rel=1e-4)
    assert np.percentile(np.concatenate(every), 90) < 0.9 * float(high)


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    (ctrl, model), (ctrl2, model2) = train_and_resume(_fresh, _config(PRUNE, QUANT),
                                                      str(tmp_path / "ckpt"))  # fmt: skip
    fit_epochs(ctrl2, model2, regression_data(2), 2, 4)
    assert ctrl2.get_compression_state() == ctrl.get_compression_state()
    for a, b in zip(model.weights, model2.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    x = regression_data(3, 4)[0]
    _close(model2(x, training=False).numpy(), model(x, training=False).numpy(), 1e-5)


def test_strip_is_smaller_equal_and_saves_as_keras(trained, tmp_path):
    ctrl, _, x, ref, _ = trained
    small, full = ctrl.strip(), ctrl.strip(shrink=False)
    assert small.count_params() < full.count_params()
    for stripped in (small, full):
        _close(stripped(x, training=False).numpy(), ref)
        for layer in stripped.layers:
            inner = layer.layer if isinstance(layer, QuantizedWeights) else layer
            assert type(inner).__module__.startswith("keras.") or isinstance(inner, FakeQuant)
    kept = small.get_layer("stem").layer.filters
    assert kept < full.get_layer("stem").layer.filters
    low, high = small.get_layer("stem").ranges()["kernel"]
    assert low.shape == high.shape == (kept,)  # per-channel ranges cut to the kept filters
    assert sum(isinstance(lay, FakeQuant) for lay in small.layers) == 11
    small.save(tmp_path / "small.keras")
    _close(keras.models.load_model(tmp_path / "small.keras")(x).numpy(), ref)


@pytest.mark.parametrize("reader", ["conv", "transpose", "depthwise", "dense", "add"])
def test_per_channel_activation_ranges_are_cut_with_the_channels(reader):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    out = {"conv": lambda t: layers.Conv2D(4, 1, name="c3")(t),
           "transpose": lambda t: layers.Conv2DTranspose(4, 2, strides=2, name="c3")(t),
           "depthwise": lambda t: layers.Conv2D(4, 1)(layers.DepthwiseConv2D(3, name="c3")(t)),
           "dense": lambda t: layers.Dense(4, name="c3")(t),
           "add": lambda t: layers.Conv2D(4, 1)(layers.Add()([t, layers.Conv2D(
               16, 1, name="c3")(t)]))}[reader](x)
    _assert_per_channel_ranges_cut(randomize_bn(keras.Model(inp, out)))


def _assert_per_channel_ranges_cut(model):
    """Prune half of ``c2``'s 16 filters with per-channel activation quantizers: the strip
    is smaller and equal."""
    quant = {**QUANT, "activations": {"per_channel": True}}
    x = np.random.default_rng(1).normal(size=(8, 8, 8, 3)).astype("float32")
    config = _config({**PRUNE, "pruning_init": 0.5}, quant, register=False, sample=(1, 8, 8, 3))
    config = register_default_init_args(config, tf.data.Dataset.from_tensor_slices(x).batch(4))
    ctrl, model = create_compressed_model(model, config)
    small = ctrl.strip()
    assert small.get_layer("c2").layer.filters < 16
    _close(small(x, training=False).numpy(), model(x, training=False).numpy())


def test_asymmetric_per_channel_weights_are_said_at_creation(caplog):
    caplog.set_level("WARNING", logger="filterprune")  # a CLI test may raise it
    create_compressed_model(_fresh(), _config({**QUANT, "weights": {"mode": "asymmetric"}}))
    assert "per channel with mode 'asymmetric'" in caplog.text
    assert "ONNX export needs them symmetric" in caplog.text


def test_per_channel_activation_ranges_of_a_sequential_are_cut_too():
    keras.utils.set_random_seed(0)
    model = randomize_bn(keras.Sequential([
        keras.Input((8, 8, 3)), layers.Conv2D(8, 3, padding="same", name="c1"),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="c2"),
        layers.Conv2D(4, 1, name="c3")]))  # fmt: skip
    _assert_per_channel_ranges_cut(model)


def test_quantization_listed_first_strips_equal_and_says_why_nothing_is_cut(caplog):
    caplog.set_level("WARNING", logger="filterprune")
    ctrl, model = create_compressed_model(_fresh(), _config(QUANT, {**PRUNE, "pruning_init": 0.5}))
    x = regression_data(3, 4)[0]
    small = ctrl.strip()
    _close(small(x, training=False).numpy(), model(x, training=False).numpy())
    assert "List filter_pruning first in `compression` to cut them" in caplog.text


def test_a_stripped_quantized_model_is_not_compressed_again(trained):
    from filterprune import AnalysisError

    ctrl, _, x, ref, _ = trained
    small = ctrl.strip()
    with pytest.raises(AnalysisError, match="stripped model"):
        create_compressed_model(small, _config(PRUNE, QUANT))
    _close(small(x, training=False).numpy(), ref)


@pytest.mark.parametrize("second", [[PRUNE], [PRUNE, QUANT]], ids=["prune", "prune+quant"])
def test_a_compressed_training_model_is_not_compressed_afresh(second):
    """A quantization-only model was pruned by a second controller: its strip dropped the
    quantizers (3.6e-3 off the model) and the first's strip was not cut; two pruning
    controllers drove one model's masks (0.33 off after the first's step)."""
    from filterprune import AnalysisError

    _, model = create_compressed_model(_fresh(), _config(QUANT))
    x = regression_data(3, 4)[0]
    ref = model(x, training=False).numpy()
    with pytest.raises(AnalysisError, match="already carries filterprune masks or quantizers"):
        create_compressed_model(model, _config(*second))
    _close(model(x, training=False).numpy(), ref, tol=0)


def test_a_quantized_grouped_conv3d_exports_a_file_onnx_runtime_runs(tmp_path):
    """Its weight comes from a DequantizeLinear, so the group count tf2onnx writes as 1
    was not set: ONNX Runtime refused the file ("kernel channels: 8 group: 1")."""
    from filterprune.tensorflow import register_default_init_args

    ort = pytest.importorskip("onnxruntime")
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 6, 4))
    x = keras.layers.Conv3D(16, 3, padding="same", groups=2, name="g")(
        keras.layers.Conv3D(16, 3, padding="same", name="c")(inp))  # fmt: skip
    model = keras.Model(inp, keras.layers.Conv3D(3, 1, name="head")(x))
    x = np.random.default_rng(0).normal(size=(16, 6, 6, 6, 4)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices(x).batch(8)
    config = _config(PRUNE, QUANT, register=False, sample=(1, 6, 6, 6, 4))
    config = register_default_init_args(config, data)
    ctrl, model = create_compressed_model(model, config)
    ctrl.export_model(str(tmp_path / "m.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x[:2]})[0]
    _close(got, ctrl.strip()(x[:2], training=False).numpy(), tol=2e-2)


def test_an_onnx_file_tf2onnx_converts_otherwise_is_warned_about(tmp_path, caplog):
    """tf2onnx 1.17 drops a channels-first 1-d transposed conv's "same" crop (34 steps
    for 32): the file was written without a word."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 32))
    out = keras.layers.Conv1DTranspose(8, 3, padding="same", data_format="channels_first")(inp)
    ctrl, _ = create_compressed_model(keras.Model(inp, out), _config(
        {**PRUNE, "pruning_init": 0.0}, register=False, sample=(2, 8, 32)))  # fmt: skip
    caplog.set_level("WARNING", logger="filterprune")
    ctrl.export_model(str(tmp_path / "m.onnx"))
    assert "returns shape [2, 8, 34] where the model returns [2, 8, 32]" in caplog.text


def test_init_args_registered_on_a_plain_dict_config():
    dataset = tf.data.Dataset.from_tensor_slices(regression_data(0)[0]).batch(8)
    plain = {"input_info": {"sample_size": [1, 32, 32, 3]}, "compression": [PRUNE, QUANT]}
    config = register_default_init_args(plain, dataset)
    ctrl, _ = create_compressed_model(_fresh(), config)
    stats = _quant(ctrl).statistics()
    assert stats.num_initialized == stats.num_quantizers > 0  # ranges from the dataset


def test_frozen_graph_has_fake_quant_ops_and_matches(trained, tmp_path):
    ctrl, _, x, ref, _ = trained
    path = tmp_path / "model.pb"
    ctrl.export_model(str(path), shrink=True)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    ops = [n.op for n in graph_def.node]
    assert ops.count("FakeQuantWithMinMaxVars") >= 11
    assert ops.count("FakeQuantWithMinMaxVarsPerChannel") == 11  # every weight, depthwise too
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            out = sess.run("Identity:0", {"image:0": x})
    _close(out, ref)


def _onnx_step_bound(ctrl, model):
    """How far the output moves if every input of ``fc2`` moves one quantization step."""
    quant = _quant(ctrl) if hasattr(ctrl, "child_ctrls") else ctrl
    spec = next(s for s in quant.specs if s.kind == "activation" and "fc2" in s.consumers)
    kernel = model.get_layer("fc2").kernel.numpy()
    return float(quant.quantizers[spec.key].state.scale) * float(np.abs(kernel).sum(0).max())


def _run_onnx(path, x, optimized=None):
    """The model's outputs, Q/DQ unfused (int8 kernels saturate on CPUs without VNNI); with
    ``optimized``, the graph ONNX Runtime would run (int8 kernels fused) is written there."""
    ort = pytest.importorskip("onnxruntime")
    if optimized is not None:
        fused = ort.SessionOptions()
        fused.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(path), fused, providers=["CPUExecutionProvider"])
    import onnx

    from filterprune.onnx import run_onnxruntime

    proto = onnx.load(str(path))
    return run_onnxruntime(proto, {proto.graph.input[0].name: x})[0]


def test_onnx_export_has_qdq_pairs_that_onnxruntime_runs_as_int8(trained, tmp_path):
    pytest.importorskip("tf2onnx")
    import onnx

    ctrl, model, x, ref, _ = trained
    ctrl.export_model(str(tmp_path / "model.onnx"), shrink=True)
    proto = onnx.load(str(tmp_path / "model.onnx"))
    nodes = list(proto.graph.node)
    quants = [n for n in nodes if n.op_type == "QuantizeLinear"]
    dequants = [n for n in nodes if n.op_type == "DequantizeLinear"]
    assert len(quants) == len(dequants) >= 15
    inits = {i.name: i for i in proto.graph.initializer}
    per_channel = [n for n in dequants if len(inits[n.input[1]].dims) == 1
                   and inits[n.input[1]].dims[0] > 1]  # fmt: skip
    assert len(per_channel) >= 8  # the conv and dense weights
    for node in per_channel:
        assert inits[node.input[2]].data_type == onnx.TensorProto.INT8
        assert {a.name for a in node.attribute} == {"axis"}
    out = _run_onnx(tmp_path / "model.onnx", x, tmp_path / "optimized.onnx")
    assert float(np.abs(out - ref).max()) <= _onnx_step_bound(ctrl, model)
    # unfused, the arithmetic the model defines (a float bias included): rounding ties only
    assert (np.abs(out - ref) <= 1e-5 * np.abs(ref).max()).mean() >= 0.99
    optimized = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "QLinearConv" in optimized  # ONNX Runtime runs the convolutions in int8


def test_convert_keeps_every_layer_the_runtimes_ran_in_int8(trained, tmp_path):
    """The conversion stores the weights as integers: OpenVINO ran 2 of the 11 layers
    (a depthwise conv whose kernel tf2onnx lays out after its DequantizeLinear, and the
    squeeze-excitation conv after it) in float32 then, where it ran them in int8 in the
    export."""
    pytest.importorskip("tf2onnx")
    pytest.importorskip("openvino")
    from filterprune.onnx import remove_zero_filters
    from filterprune.onnx.int8 import int8_layers

    ctrl, _, _, _, _ = trained
    ctrl.export_model(str(tmp_path / "m.onnx"))
    small, report = remove_zero_filters(str(tmp_path / "m.onnx"))
    assert report.removed > 0
    before, after = int8_layers(str(tmp_path / "m.onnx")), int8_layers(small)
    assert after == before
    assert before["openvino"] == {"int8": 10, "float": 1}  # the separable conv's pointwise


def test_conv_batchnorm_blocks_run_as_int8_kernels_in_onnx_runtime(tmp_path):
    """tf2onnx writes each BatchNorm as Mul and Add after its conv, between the conv and
    the next QuantizeLinear: the export folds them into the conv, so ONNX Runtime runs
    each conv followed by a QuantizeLinear as an int8 kernel, and the file computes as the
    model."""
    pytest.importorskip("tf2onnx")
    from filterprune.onnx.int8 import int8_layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = inp
    for i in range(3):
        x = layers.Conv2D(8 * (i + 1), 3, padding="same", use_bias=i == 1, name=f"c{i}")(x)
        x = layers.ReLU()(layers.BatchNormalization(name=f"bn{i}")(x))
    x = layers.Conv2D(4, 1, name="head")(layers.MaxPooling2D()(x))
    model = randomize_bn(keras.Model(inp, layers.GlobalAveragePooling2D()(x)), seed=1)
    for i in (0, 2):  # negative scales too: their filters' integers change sign
        bn = model.get_layer(f"bn{i}")
        bn.gamma.assign(bn.gamma * np.where(np.arange(bn.gamma.shape[0]) % 3 == 0, -1, 1))
    ctrl, compressed = create_compressed_model(model, _config({**PRUNE, "pruning_init": 0.5},
                                                              QUANT))  # fmt: skip
    x = np.random.default_rng(2).normal(size=(4, 32, 32, 3)).astype("float32")
    ref = compressed(x, training=False).numpy()
    ctrl.export_model(str(tmp_path / "m.onnx"), shrink=True)
    counts = int8_layers(str(tmp_path / "m.onnx"))
    assert counts["onnxruntime"] == {"int8": 3, "float": 1}  # the head has no Q after it
    assert counts["openvino"] == {"int8": 4, "float": 0}
    out = _run_onnx(tmp_path / "m.onnx", x)
    assert (np.abs(out - ref) <= 1e-5 * np.abs(ref).max()).mean() >= 0.99  # rounding ties


def test_a_conv_before_a_zero_padding_runs_as_an_int8_kernel_in_onnx_runtime(tmp_path):
    """Keras quantizes a conv's input, so ``ZeroPadding2D`` stood between the conv before
    it and its QuantizeLinear: ONNX Runtime ran 1 of the 3 convs as int8 (MobileNetV2 at
    96 pixels: 48 of 53, 52 now). The export quantizes before the pad too."""
    pytest.importorskip("tf2onnx")
    from filterprune.onnx.int8 import int8_layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = inp
    for i in range(3):
        if i:
            x = layers.ZeroPadding2D(((0, 1), (0, 1)))(x)
        x = layers.Conv2D(8 * (i + 1), 3, strides=2 if i else 1,
                          padding="valid" if i else "same", name=f"c{i}")(x)  # fmt: skip
        x = layers.ReLU()(layers.BatchNormalization(name=f"bn{i}")(x))
    x = layers.Conv2D(4, 1, name="head")(x)
    model = randomize_bn(keras.Model(inp, layers.GlobalAveragePooling2D()(x)), seed=1)
    ctrl, compressed = create_compressed_model(model, _config({**PRUNE, "pruning_init": 0.5},
                                                              QUANT))  # fmt: skip
    x = np.random.default_rng(2).normal(size=(4, 32, 32, 3)).astype("float32")
    ref = compressed(x, training=False).numpy()
    ctrl.export_model(str(tmp_path / "m.onnx"), shrink=True)
    assert int8_layers(str(tmp_path / "m.onnx"))["onnxruntime"] == {"int8": 3, "float": 1}
    out = _run_onnx(tmp_path / "m.onnx", x)
    assert (np.abs(out - ref) <= 1e-5 * np.abs(ref).max()).mean() >= 0.99  # rounding ties


def _weight_peaks(proto):
    from filterprune.onnx import weight_integers

    return [int(np.abs(v).max()) for v in weight_integers(proto).values() if v.size > 1]


@pytest.mark.parametrize("fix", ["enable", "disable", None])
def test_overflow_fix_sets_exported_weight_integers(fix, tmp_path):
    pytest.importorskip("tf2onnx")
    import onnx

    quant = QUANT if fix is None else {**QUANT, "overflow_fix": fix}  # None: the default
    ctrl, _ = create_compressed_model(_fresh(), _config(PRUNE, quant))
    ctrl.export_model(str(tmp_path / "model.onnx"), shrink=True)
    peaks = _weight_peaks(onnx.load(str(tmp_path / "model.onnx")))
    assert len(peaks) >= 8 and set(peaks) == {63 if fix == "enable" else 127}


def test_quantization_alone_trains_strips_and_restores_its_state(tmp_path):
    ctrl, model = create_compressed_model(_fresh(), _config(QUANT))
    assert ctrl.name == "quantization"
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    logs = create_compression_callbacks(ctrl, log_dir=str(tmp_path / "logs"))
    model.fit(*regression_data(1), batch_size=8, epochs=1, verbose=0, callbacks=logs)
    assert list((tmp_path / "logs").iterdir())  # the statistics text, no pruning scalars
    x = regression_data(3, 4)[0]
    ref = model(x, training=False).numpy()
    _close(ctrl.strip()(x).numpy(), ref)
    state = ctrl.get_compression_state()
    assert state["scheduler"] == {"current_epoch": 0}
    again, model2 = create_compressed_model(_fresh(), _config(QUANT, register=False), state)
    model2.set_weights(model.get_weights())
    _close(model2(x, training=False).numpy(), ref, 1e-6)
    ctrl.export_model(str(tmp_path / "q.onnx"))
    assert float(np.abs(_run_onnx(tmp_path / "q.onnx", x) - ref).max()) <= _onnx_step_bound(
        ctrl, model)  # fmt: skip


def test_scopes_keep_layers_in_float():
    ignored = {**QUANT, "ignored_scopes": ["fc2"]}
    ctrl, _ = create_compressed_model(_fresh(), _config(ignored))
    keys = {s.key for s in ctrl.specs}
    assert "weight:fc2" not in keys and "weight:fc1" in keys
    assert not any("fc2" in s.consumers for s in ctrl.specs)
    target = {**QUANT, "weights": {"target_scopes": ["{re}^(stem|a)$"]}}
    ctrl, _ = create_compressed_model(_fresh(), _config(target))
    assert {s.key for s in ctrl.specs if s.kind == "weight"} == {"weight:stem", "weight:a"}


def test_asymmetric_activations_strip_and_export(tmp_path):
    pytest.importorskip("tf2onnx")
    quant = {**QUANT, "activations": {"mode": "asymmetric"}}
    ctrl, model = create_compressed_model(_fresh(), _config(PRUNE, quant))
    states = _quant(ctrl).quantizer_states()
    points = [int(states[s.key].zero_point) for s in _quant(ctrl).activation_specs]
    assert any(p not in (0, -128) for p in points)  # a zero point inside the range
    x = regression_data(3, 4)[0]
    ref = model(x, training=False).numpy()
    _close(ctrl.strip()(x).numpy(), ref)
    ctrl.export_model(str(tmp_path / "m.onnx"), shrink=True)
    assert float(np.abs(_run_onnx(tmp_path / "m.onnx", x) - ref).max()) <= _onnx_step_bound(
        ctrl, model)  # fmt: skip


def test_preset_mixed_makes_activations_asymmetric():
    ctrl, _ = create_compressed_model(_fresh(), _config({**QUANT, "preset": "mixed"}))
    assert {s.settings.mode for s in ctrl.specs if s.kind == "activation"} == {"asymmetric"}
    assert {s.settings.mode for s in ctrl.specs if s.kind == "weight"} == {"symmetric"}


def test_onnx_export_refuses_what_qdq_cannot_express(tmp_path):
    four = {**QUANT, "weights": {"bits": 4}}
    ctrl, _ = create_compressed_model(_fresh(), _config(four))
    with pytest.raises(ValueError, match=r"needs 8-bit quantizers.*Received: num_bits=4"):
        ctrl.export_model(str(tmp_path / "m.onnx"))
    asym = {**QUANT, "weights": {"mode": "asymmetric"}}
    ctrl, _ = create_compressed_model(_fresh(), _config(asym))
    with pytest.raises(ValueError, match=r"mode 'symmetric'.*asymmetric range"):
        ctrl.export_model(str(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


def test_activation_ranges_without_data_are_a_clear_error():
    """It said to set num_init_samples to 0, which the Keras frontend then refused."""
    with pytest.raises(ConfigError, match="num_init_samples.*no data is registered") as err:
        create_compressed_model(_fresh(), _config(QUANT, register=False))
    assert "to 0" not in str(err.value) and "register_default_init_args" in str(err.value)
    first_batch = {**QUANT, "initializer": {"range": {"num_init_samples": 0}}}
    with pytest.raises(ConfigError, match=r"must be positive in the Keras.*num_init_samples=0"):
        create_compressed_model(_fresh(), _config(first_batch))


def _sequential():
    return keras.Sequential([
        keras.Input((12, 12, 3)), layers.Conv2D(16, 3, name="c1"), layers.BatchNormalization(),
        layers.ReLU(), layers.Conv2D(16, 3, name="c2"), layers.ReLU(), layers.Flatten(),
        layers.Dense(4, name="fc"),
    ])  # fmt: skip


def _attention():
    inp = keras.Input((6, 8), name="tokens")
    q, k = layers.Dense(8, name="q")(inp), layers.Dense(8, name="k")(inp)
    scores = keras.ops.matmul(q, keras.ops.transpose(k, (0, 2, 1)))
    return keras.Model(inp, layers.Dense(3, name="head")(layers.Flatten()(scores)))


def _nested():
    block = keras.Sequential([keras.Input((8, 8, 16)), layers.Conv2D(16, 3, padding="same",
                              name="ic"), layers.ReLU()], name="block")  # fmt: skip
    inp = keras.Input((8, 8, 3))
    x = block(layers.Conv2D(16, 3, padding="same", name="c0")(inp))
    return keras.Model(inp, layers.Dense(2, name="fc")(layers.GlobalAveragePooling2D()(x)))


def _pruned_and_quantized(model, data, batch=8):
    """Pruning at level 0.5 and 8-bit quantization, initialised on ``data``."""
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, *data.shape[1:]]},
                                   "compression": [{**PRUNE, "pruning_init": 0.5}, QUANT]})
    data = tf.data.Dataset.from_tensor_slices(data).batch(batch)
    return create_compressed_model(model, register_default_init_args(config, data))


@pytest.mark.parametrize(("build", "shape", "counts"), [
    (_sequential, (12, 12, 3), (3, 3)),
    (_attention, (6, 8), (3, 4)),  # both operands of the matmul
    (_nested, (8, 8, 3), (3, 3)),
])  # fmt: skip
def test_sequential_matmul_and_nested_models_strip_equal(build, shape, counts):
    keras.utils.set_random_seed(0)
    model = randomize_bn(build())
    x = np.random.default_rng(0).normal(size=(16, *shape)).astype("float32")
    ctrl, model = _pruned_and_quantized(model, x)
    stats = ctrl.statistics().quantization
    assert (stats.num_weight_quantizers, stats.num_activation_quantizers) == counts
    assert stats.ranges_initialized
    small = ctrl.strip()
    assert isinstance(small, keras.Sequential) == isinstance(model, keras.Sequential)
    assert sum(isinstance(lay, QuantizedWeights) for lay in small._flatten_layers()) == counts[0]
    _close(small(x[:4]).numpy(), model(x[:4], training=False).numpy())


def _own_loss(y, p):  # not registered with Keras: its config names it only
    return keras.ops.mean(keras.ops.abs(y - p))


class _OwnMetric(keras.metrics.MeanSquaredError):
    pass


@pytest.mark.parametrize("build", [_sequential, _nested])
@pytest.mark.parametrize("quantize", [False, True])
def test_strip_is_compiled_as_the_model_with_losses_and_metrics_of_the_users(build, quantize):
    """Keras' clone_model compiles from the serialized compile config: a loss of the
    user's outside its registry failed the strip ("Could not locate function"), and a
    quantized Sequential came back uncompiled."""
    keras.utils.set_random_seed(0)
    model = randomize_bn(build())
    x = np.random.default_rng(0).normal(size=(16, *model.input_shape[1:])).astype("float32")
    if quantize:
        ctrl, model = _pruned_and_quantized(model, x)
    else:
        config = _config({**PRUNE, "pruning_init": 0.5}, register=False, sample=x[:1].shape)
        ctrl, model = create_compressed_model(model, config)
    metric = _OwnMetric()
    model.compile(optimizer="adam", loss=_own_loss, metrics=[metric, "mae"])
    small = ctrl.strip()
    assert small.compiled and model.compiled
    assert small.optimizer is not model.optimizer
    y = np.ones_like(model(x, training=False))
    np.testing.assert_allclose(small.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0),
                               rtol=1e-4)  # fmt: skip
    small.fit(x, y, epochs=1, verbose=0)  # its own optimizer and metric state


def _shared_twice():
    """A conv called on two tensors, one of them inside a nested model as well."""
    shared = layers.Conv2D(8, 3, padding="same", name="sh")
    sub_in = keras.Input((8, 8, 8))
    sub = keras.Model(sub_in, layers.ReLU()(shared(sub_in)), name="blk")
    inp = keras.Input((8, 8, 3))
    a = sub(layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp))
    b = shared(layers.Activation("tanh")(a))
    return keras.Model(inp, layers.Conv2D(4, 1, name="head")(layers.Add()([a, b])))


def test_a_layer_called_twice_shares_its_quantizers_and_strips_equal():
    """One input quantizer serves both calls (its range covers both tensors), and each
    copy the rebuild makes of the layer keeps its weight quantizer."""
    keras.utils.set_random_seed(0)
    model = randomize_bn(_shared_twice())
    rng = np.random.default_rng(1)
    for v in model.weights:
        v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    ctrl, model = _pruned_and_quantized(model, x)
    quant = _quant(ctrl)
    assert quant.statistics().ranges_initialized
    sh_inputs = [q for k, q in quant.quantizers.items()
                 if k.startswith("activation") and "sh" in q.spec.consumers[0]]
    assert len({id(q) for q in sh_inputs}) == 1 and len(sh_inputs) == 2
    high = float(np.max(sh_inputs[0].state.range()[1]))
    stem = keras.Model(model.inputs, model.get_layer("stem").output)
    assert high >= 0.9 * float(np.abs(np.asarray(stem(x))).max()) > 1  # not tanh's range
    ref = model(x[:4], training=False).numpy()
    for shrink in (True, False):
        small = ctrl.strip(shrink=shrink)
        assert isinstance(small.get_layer("blk").get_layer("sh"), QuantizedWeights)
        assert isinstance(small.get_layer("sh"), QuantizedWeights)
        _close(small(x[:4]).numpy(), ref, 1e-5)


def _conv1d():
    inp = keras.Input((32, 3))
    x = layers.Conv1D(8, 3, padding="same", activation="relu", name="a")(inp)
    x = layers.Conv1D(8, 3, padding="same", activation="relu", name="b")(x)
    return keras.Model(inp, layers.Conv1D(4, 1, name="head")(x))


def _transposed():
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="a")(inp)
    x = layers.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu", name="b")(x)
    return keras.Model(inp, layers.Conv2D(4, 1, name="head")(x))


def _depthwise():
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="a")(inp)
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    x = layers.SeparableConv2D(16, 3, padding="same", activation="relu", name="sep")(x)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw2")(x)
    return keras.Model(inp, layers.Conv2D(4, 1, name="head")(x))


def _depthwise_1d():
    inp = keras.Input((32, 3))
    x = layers.Conv1D(16, 3, padding="same", activation="relu", name="a")(inp)
    x = layers.DepthwiseConv1D(3, padding="same", activation="relu", name="dw")(x)
    x = layers.SeparableConv1D(16, 3, padding="same", activation="relu", name="sep")(x)
    return keras.Model(inp, layers.Conv1D(4, 1, name="head")(x))


def _group_norm():
    inp = keras.Input((16, 16, 3))
    x = layers.GroupNormalization(groups=4, name="gn")(layers.Conv2D(16, 3, name="a")(inp))
    x = layers.Conv2D(16, 3, activation="relu", name="b")(layers.ReLU()(x))
    return keras.Model(inp, layers.Conv2D(4, 1, name="head")(x))


@pytest.mark.parametrize(("build", "shape", "removed"), [
    (_conv1d, (32, 3), 8), (_transposed, (16, 16, 3), 8), (_depthwise, (16, 16, 3), 16),
    (_depthwise_1d, (32, 3), 16),  # a per-channel kernel laid out by two Reshapes
    (_group_norm, (16, 16, 3), 16),  # tf2onnx writes the statistics out: reduce, subtract
])  # fmt: skip
def test_convert_cuts_an_int8_export_as_much_as_a_float_one(build, shape, removed, tmp_path):
    """tf2onnx lays these quantized weights out after their DequantizeLinear (Transpose,
    Unsqueeze): the converter follows the view to the weight."""
    pytest.importorskip("tf2onnx")
    from filterprune.onnx import remove_zero_filters

    x = np.random.default_rng(1).normal(size=(16, *shape)).astype("float32")
    got = []
    prune = {"algorithm": "filter_pruning", "pruning_init": 0.5,
             "params": {"prune_first_conv": True, "prune_downsample_convs": True,
                        "filters_multiple_of": 1}}  # fmt: skip
    for algos in ([prune], [prune, QUANT]):
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        model = build()
        rng = np.random.default_rng(0)
        for v in model.weights:
            v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
        config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, *shape]},
                                       "compression": algos})  # fmt: skip
        config = register_default_init_args(
            config, tf.data.Dataset.from_tensor_slices(x).batch(8))  # fmt: skip
        ctrl, model = create_compressed_model(model, config)
        path = str(tmp_path / f"{len(algos)}.onnx")
        ctrl.export_model(path)
        got.append(remove_zero_filters(path)[1].removed)  # outputs checked equal
    assert got == [removed, removed]


_MIRRORED = """
    from test_keras_quantization import PRUNE, QUANT, _config
    from keras_helpers import keras, randomize_bn, regression_data, small_resnet
    from filterprune.tensorflow import create_compressed_model, create_compression_callbacks

    with strategy.scope():  # (clear_session, which _fresh calls, must not run in a scope)
        keras.utils.set_random_seed(0)
        model = randomize_bn(small_resnet(dropout=0.0))
        ctrl, model = create_compressed_model(model, _config(PRUNE, QUANT))
        ctrl.distributed()
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x, y = regression_data(1, 32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model.fit(data, epochs=2, verbose=0, callbacks=create_compression_callbacks(ctrl))
    quant = ctrl.get("quantization")
    ref = model(x[:4], training=False).numpy()
    print("RESULT " + json.dumps({
        "ranges": {k: [v.numpy().ravel().tolist() for v in q.high.values]
                   for k, q in quant.quantizers.items()},
        "initialized": quant.statistics().ranges_initialized,
        "strip_error": float(np.abs(ctrl.strip()(x[:4]).numpy() - ref).max()),
    }))
    """


def test_quantizer_ranges_are_identical_on_every_replica(tmp_path):
    """distributed() makes the range variables again under MirroredStrategy (a subprocess:
    two logical CPU devices must be set before TensorFlow initialises)."""
    result = run_on_two_cpus(_MIRRORED, tmp_path)
    assert result["initialized"] and len(result["ranges"]) == 22
    for key, replicas in result["ranges"].items():
        assert len(replicas) == 2 and replicas[0] == replicas[1], key
    assert result["strip_error"] < 1e-4


def test_a_nested_sequential_beside_an_add_strips_and_reloads(tmp_path):
    """A nested model's input feeds a nested Sequential and an Add: the quantizer of that
    input was one layer in both, and the saved file failed to load ("'c1_quant' expected
    2 variables, but received 0")."""
    keras.utils.set_random_seed(0)
    inner = keras.Input((8, 8, 8))
    seq = keras.Sequential([keras.Input((8, 8, 8)), keras.layers.Conv2D(8, 3, padding="same")])
    y = keras.layers.Add()([seq(inner), inner])
    mid = keras.Model(inner, keras.layers.Conv2D(8, 3, padding="same")(y), name="mid")
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    model = keras.Model(inp, keras.layers.Conv2D(4, 1)(mid(x)))
    data = np.random.default_rng(1).normal(size=(16, 8, 8, 3)).astype("float32")
    ctrl, model = _pruned_and_quantized(model, data)
    small = ctrl.strip()
    small.save(tmp_path / "m.keras")
    back = keras.models.load_model(tmp_path / "m.keras")
    ref = model(data[:4], training=False).numpy()
    np.testing.assert_allclose(small(data[:4]).numpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(back(data[:4]).numpy(), small(data[:4]).numpy())


def _read_inside_and_out():
    """The stem's output read by a nested model and by the Add beside it."""
    sub_in = keras.Input((8, 8, 8))
    sub = keras.Model(sub_in, layers.Conv2D(8, 3, padding="same", name="in2")(
        layers.Conv2D(12, 3, padding="same", activation="relu", name="in1")(sub_in)), name="sub")
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
    return keras.Model(inp, layers.Conv2D(4, 1, name="head")(layers.Add()([x, sub(x)])))


def _block_twice():
    """A Sequential listing one nested block twice (it is called twice)."""
    block = keras.Sequential([keras.Input((8, 8, 8)), layers.Conv2D(12, 3, padding="same"),
                              layers.ReLU(), layers.Conv2D(8, 3, padding="same")], name="blk")
    return keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(8, 3, padding="same"),
                             block, layers.ReLU(), block, layers.Conv2D(4, 1)])  # fmt: skip


@pytest.mark.parametrize("build", [_read_inside_and_out, _block_twice])
def test_a_tensor_quantized_in_two_containers_strips_equal_and_reloads(build, tmp_path):
    """The rebuild gave the nested model and the outer one the same quantizer layer
    (the file did not load: "'stem_quant' expected 2 variables, but received 0"), and a
    block listed twice two layers of one name (the Sequential was refused)."""
    keras.utils.set_random_seed(0)
    model = randomize_bn(build())
    data = np.random.default_rng(1).normal(size=(16, 8, 8, 3)).astype("float32")
    ctrl, model = _pruned_and_quantized(model, data)
    small = ctrl.strip()
    _close(small(data[:4]).numpy(), model(data[:4], training=False).numpy())
    if build is _read_inside_and_out:  # Keras itself saves a block called twice once
        small.save(tmp_path / "m.keras")
        back = keras.models.load_model(tmp_path / "m.keras")
        np.testing.assert_array_equal(back(data[:4]).numpy(), small(data[:4]).numpy())


def test_mixed_float16_strips_equal_and_reloads(tmp_path):
    """The strip quantizes what the training model does under mixed_float16: the reader's
    float16 input and weight, on float32 ranges (0.019 relative off before)."""
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        inp = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(16, 3, padding="same", name="c1")(inp)
        x = keras.layers.Conv2D(16, 3, padding="same", name="c2")(x)
        out = keras.layers.Conv2D(4, 3, padding="same", name="head", dtype="float32")(x)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    model = keras.Model(inp, out)
    rng = np.random.default_rng(1)
    for v in model.weights:
        v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    data = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    ctrl, model = _pruned_and_quantized(model, data, batch=4)
    small = ctrl.strip()
    ref = np.asarray(model(data, training=False), "float32")
    np.testing.assert_array_equal(np.asarray(small(data), "float32"), ref)
    small.save(tmp_path / "m.keras")
    back = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(np.asarray(back(data), "float32"), ref)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_a_layer_of_its_own_dtype_strips_equal_and_exports(dtype, tmp_path):
    """A layer built with ``dtype="float16"`` (not a mixed policy): the stripped quantizer
    after it took that dtype for its range too, rounding 2.1211 to 2.125 (0.0047 off), and
    the ONNX export refused the range's Cast."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inp)
    x = layers.ReLU(dtype=dtype)(layers.Conv2D(16, 3, padding="same", dtype=dtype, name="c2")(x))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="c3")(x)
    model = keras.Model(inp, layers.Dense(4)(layers.GlobalAveragePooling2D()(x)))
    data = np.random.default_rng(1).normal(size=(8, 8, 8, 3)).astype("float32")
    ctrl, model = _pruned_and_quantized(model, data, batch=4)
    small = ctrl.strip()
    ranges = [v for lay in small._flatten_layers() if isinstance(lay, (FakeQuant, QuantizedWeights))
              for v in lay.non_trainable_weights if v.name.endswith(("min", "max"))]
    assert ranges and {str(v.dtype) for v in ranges} == {"float32"}
    ref = np.asarray(model(data, training=False), "float32")
    np.testing.assert_array_equal(np.asarray(small(data), "float32"), ref)
    if dtype == "bfloat16":  # ONNX has no bfloat16 conv: refused, with the reason
        return
    pytest.importorskip("tf2onnx")
    ctrl.export_model(str(tmp_path / "m.onnx"))
    if dtype == "float16":  # ONNX Runtime has no float64 conv; float16 sums in another order
        out = _run_onnx(tmp_path / "m.onnx", data)
        assert float(np.abs(out - ref).max()) <= 0.01 * float(np.abs(ref).max())


def test_depthwise_kernels_are_quantized_per_channel_as_in_pytorch():
    """A depthwise kernel ``(kh, kw, channels, 1)`` has no "out" axis; it was quantized per
    tensor, so a channel 20x wider than the rest left them 15 integers (0.12 of their
    range in rounding)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(inp)
    x = layers.SeparableConv2D(6, 3, padding="same", name="sep")(x)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw2")(x)  # two axes: per tensor
    model = keras.Model(inp, x)
    kernel = np.random.default_rng(0).normal(0, 0.3, (3, 3, 4, 1)).astype("float32")
    kernel[:, :, 0] *= 20
    model.get_layer("dw").set_weights([kernel])
    x = np.random.default_rng(1).normal(size=(8, 8, 8, 4)).astype("float32")
    config = _config(QUANT, register=False, sample=(1, 8, 8, 4))
    config = register_default_init_args(config, tf.data.Dataset.from_tensor_slices(x).batch(4))
    ctrl, _ = create_compressed_model(model, config)
    states = ctrl.quantizer_states()
    np.testing.assert_allclose(states["weight:dw"].scale, np.abs(kernel).max((0, 1, 3)) / 127,
                               rtol=1e-5)  # fmt: skip
    assert states["weight:sep/depthwise"].scale.shape == (4,)
    assert states["weight:dw2"].scale.shape == ()


def test_per_tensor_weights_export_as_qdq_pairs(tmp_path, caplog):
    """tf2onnx folded a per-tensor fake quant of a weight into float values: no
    DequantizeLinear, so convert stored no int8 weight and runtimes ran float convs."""
    pytest.importorskip("tf2onnx")
    import onnx

    from filterprune.onnx import weight_integers

    quant = {**QUANT, "weights": {"per_channel": False}}
    ctrl, model = create_compressed_model(_fresh(), _config(quant))
    ctrl.export_model(str(tmp_path / "model.onnx"))
    kernels = [w for w in model.weights if w.path.endswith("kernel") and "quant" not in w.path]
    stored = weight_integers(onnx.load(str(tmp_path / "model.onnx")))
    assert len(stored) == len(kernels) >= 8
    assert "asymmetric range" not in caplog.text
    x = regression_data(3, 4)[0]
    out = _run_onnx(tmp_path / "model.onnx", x, tmp_path / "optimized.onnx")
    ref = model(x, training=False).numpy()
    assert float(np.abs(out - ref).max()) <= _onnx_step_bound(ctrl, model)
    # asymmetric per tensor has no QDQ form for weights: they go as floats, and it is said
    quant = {**QUANT, "weights": {"per_channel": False, "mode": "asymmetric"}}
    ctrl, _ = create_compressed_model(_fresh(), _config(quant))
    caplog.set_level("WARNING", logger="filterprune")
    ctrl.export_model(str(tmp_path / "asym.onnx"))
    floats = len(kernels) - len(weight_integers(onnx.load(str(tmp_path / "asym.onnx"))))
    assert floats > 0 and f"{floats} weight quantizer(s) with an asymmetric range" in caplog.text


def test_an_ir_openvino_runs_far_off_is_not_written(tmp_path, capsys):
    """OpenVINO runs a LayerNorm after a quantized conv (as tf2onnx writes it) to zeros:
    the IR was written, exit 0, with a warning; beyond what saturating int8 kernels move
    (0.35), nothing is written."""
    pytest.importorskip("tf2onnx")
    pytest.importorskip("openvino")
    from filterprune.cli import main

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = layers.ReLU()(layers.LayerNormalization()(layers.Conv2D(16, 3, padding="same")(inp)))
    x = layers.ReLU()(layers.Conv2D(16, 3, padding="same")(x))
    model = keras.Model(inp, layers.Dense(10)(layers.GlobalAveragePooling2D()(x)))
    ctrl, _ = create_compressed_model(model, _config(QUANT))
    ctrl.export_model(str(tmp_path / "m.onnx"))
    assert main(["convert", str(tmp_path / "m.onnx"), "--to", "openvino",
                 "-o", str(tmp_path / "m.xml")]) == 2  # fmt: skip
    assert "Nothing was written" in capsys.readouterr().err
    assert not list(tmp_path.glob("m.xml")) and not list(tmp_path.glob("m.bin"))


def test_a_quantized_file_off_the_model_does_not_blame_the_converter_alone(
        trained, tmp_path, monkeypatch, caplog):  # fmt: skip
    """A deep random-weight QAT export 0.063 off (rounding flips growing through depth)
    was said to be tf2onnx converting an op otherwise than Keras."""
    from filterprune.tensorflow import export

    ctrl = trained[0]
    monkeypatch.setattr(export, "_differs", lambda *a: "computes other values (0.063)")
    caplog.set_level("WARNING", logger="filterprune")
    ctrl.export_model(str(tmp_path / "q.onnx"))
    assert "int8 rounding flips carried through the model's depth, or tf2onnx" in caplog.text
