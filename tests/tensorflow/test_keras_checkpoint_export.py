"""Checkpoint/resume as in the reference equals an uninterrupted run; exports equal the model."""

import numpy as np
import pytest
from keras_helpers import (
    fit_epochs,
    keras,
    make_config,
    randomize_bn,
    regression_data,
    small_resnet,
    tf,
    train_and_resume,
)

from filterprune import ConfigError
from filterprune.tensorflow import (
    CheckpointManagerCallback,
    TFCompressionState,
    create_compressed_model,
)


def _config():
    return make_config(pruning_init=0.1, pruning_target=0.6, pruning_steps=4,
                       prune_first_conv=True)  # fmt: skip


def _fresh():
    keras.utils.set_random_seed(0)
    return randomize_bn(small_resnet(dropout=0.0))  # dropout's RNG is not checkpointed


@pytest.mark.parametrize("per_call", [1, 2, 3])
def test_a_checkpoint_every_n_batches_counts_batches_not_calls(tmp_path, per_call):
    """With steps_per_execution a callback sees one call per few batches: a checkpoint
    every 4 batches of 12 saved once at 2 per call (after batch 8), never at 3."""
    ctrl, model = create_compressed_model(_fresh(), _config())
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=per_call)
    x, y = regression_data(0)
    checkpoint = tf.train.Checkpoint(model=model, compression_state=TFCompressionState(ctrl))
    saver = CheckpointManagerCallback(checkpoint, str(tmp_path), save_freq=4)
    model.fit(x[:12], y[:12], batch_size=1, epochs=1, verbose=0, callbacks=[saver])
    assert len(saver.manager.checkpoints) == 3


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    (ctrl, model), (ctrl2, model2) = train_and_resume(_fresh, _config(), str(tmp_path / "ckpt"))
    assert ctrl2.scheduler.current_epoch == 1
    fit_epochs(ctrl2, model2, regression_data(2), 2, 4)
    assert ctrl2.scheduler.get_state() == ctrl.scheduler.get_state()
    assert ctrl2.pruning_level == pytest.approx(ctrl.pruning_level)
    assert ctrl2.plan.to_dict(ctrl2.analysis) == ctrl.plan.to_dict(ctrl.analysis)
    for a, b in zip(model.weights, model2.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)


def test_compression_state_restores_into_a_live_controller(tmp_path):
    ctrl, model = create_compressed_model(_fresh(), _config())
    ctrl.scheduler.epoch_step()
    ctrl.scheduler.epoch_step()
    path = tf.train.Checkpoint(state=TFCompressionState(ctrl)).save(str(tmp_path / "c"))
    ctrl2, _ = create_compressed_model(_fresh(), _config())
    tf.train.Checkpoint(state=TFCompressionState(ctrl2)).restore(path)
    assert ctrl2.scheduler.current_epoch == 1
    assert ctrl2.plan.to_dict(ctrl2.analysis) == ctrl.plan.to_dict(ctrl.analysis)


def test_a_misspelt_state_keyword_is_refused():
    """``compresion_state=`` started a fresh run without a word."""
    with pytest.raises(TypeError, match="Did you mean `compression_state`"):
        create_compressed_model(_fresh(), _config(), compresion_state={})


def test_state_from_another_model_is_rejected():
    ctrl, _ = create_compressed_model(_fresh(), _config())
    inp = keras.Input((32, 32, 3))
    other = keras.Model(inp, keras.layers.Conv2D(4, 3)(keras.layers.Conv2D(4, 3)(inp)))
    with pytest.raises(ConfigError, match="does not have"):
        create_compressed_model(other, _config(), ctrl.get_compression_state())


def test_saving_the_training_model_whole_says_what_the_file_lacks(tmp_path, caplog):
    caplog.set_level("WARNING", logger="filterprune")  # a CLI test may raise it
    ctrl, model = create_compressed_model(_fresh(), make_config(prune_first_conv=True))
    model.save(tmp_path / "a.keras")
    model.save(tmp_path / "b.keras")
    assert caplog.text.count("without its masks and quantizers") == 1
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype("float32")
    dense = keras.models.load_model(tmp_path / "a.keras")
    assert not np.allclose(dense(x, training=False), model(x, training=False), atol=1e-4)
    ctrl.strip().save(tmp_path / "small.keras")  # a plain model: nothing to say
    assert caplog.text.count("without its masks and quantizers") == 1


def test_copying_the_training_model_says_what_the_copy_lacks(tmp_path, caplog):
    """copy.deepcopy and pickle copy through a saved file: the copy computed as the dense
    model (1.98 off with quantization) without a word."""
    import copy
    import pickle

    caplog.set_level("WARNING", logger="filterprune")
    ctrl, model = create_compressed_model(_fresh(), make_config(prune_first_conv=True))
    ctrl.strip()
    assert "has no masks or quantizers" not in caplog.text
    model.to_json()  # TensorBoard's write_graph: nothing to say
    twin = copy.deepcopy(model)
    pickle.loads(pickle.dumps(model))
    model.save(tmp_path / "a.keras")  # said on its own
    assert caplog.text.count("the copy computes as the dense model") == 1
    assert caplog.text.count("without its masks and quantizers") == 1
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype("float32")
    assert not np.allclose(twin(x, training=False), model(x, training=False), atol=1e-4)


@pytest.fixture(scope="module")
def pruned():
    ctrl, model = create_compressed_model(_fresh(), make_config(prune_first_conv=True))
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype("float32")
    return ctrl, model(x, training=False).numpy(), x


def _close(out, ref):
    np.testing.assert_allclose(out, ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("shrink", [False, True])
def test_frozen_graph_loads_with_compat_v1_and_matches(pruned, tmp_path, shrink):
    ctrl, ref, x = pruned
    path = tmp_path / "model.pb"
    ctrl.export_model(str(path), shrink=shrink)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    assert not any(n.op in ("VarHandleOp", "ReadVariableOp") for n in graph_def.node)
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            out = sess.run("Identity:0", {"image:0": x})
    _close(out, ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pb"]  # no temporary left


def test_saved_model_and_keras_formats_match(pruned, tmp_path):
    ctrl, ref, x = pruned
    ctrl.export_model(str(tmp_path / "saved"), save_format="saved_model")
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    _close(loaded.serve(tf.constant(x)).numpy(), ref)
    ctrl.export_model(str(tmp_path / "small.keras"), shrink=True)
    _close(keras.models.load_model(tmp_path / "small.keras")(x).numpy(), ref)


def test_saved_model_export_refuses_a_folder_with_files(pruned, tmp_path):
    ctrl, ref, x = pruned
    target = tmp_path / "saved"
    (target / "assets").mkdir(parents=True)
    (target / "assets" / "notes.txt").write_text("not ours")
    with pytest.raises(FileExistsError, match="`path` must be a new or empty folder"):
        ctrl.export_model(str(target), save_format="saved_model")
    assert [p.name for p in target.rglob("*")] == ["assets", "notes.txt"]
    assert (target / "assets" / "notes.txt").read_text() == "not ours"
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # no temporary left
    (target / "assets" / "notes.txt").unlink()
    (target / "assets").rmdir()
    ctrl.export_model(str(target), save_format="saved_model")  # an empty folder is replaced
    loaded = tf.saved_model.load(str(target))  # held: its variables die with it
    _close(loaded.serve(tf.constant(x)).numpy(), ref)
    with pytest.raises(FileExistsError, match="not empty"):  # nor is an earlier export
        ctrl.export_model(str(target), save_format="saved_model")


def test_file_exports_replace_an_old_file_and_leave_no_temporary(pruned, tmp_path):
    ctrl, ref, x = pruned
    path = tmp_path / "small.keras"
    path.write_text("an older export")
    ctrl.export_model(str(path), shrink=True)
    _close(keras.models.load_model(path)(x).numpy(), ref)
    assert [p.name for p in tmp_path.iterdir()] == ["small.keras"]


def test_onnx_export_matches(pruned, tmp_path):
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    ctrl, ref, x = pruned
    ctrl.export_model(str(tmp_path / "model.onnx"), shrink=True)
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    _close(sess.run(None, {sess.get_inputs()[0].name: x})[0], ref)


@pytest.mark.parametrize("kind", ["dict", "list"])
def test_onnx_outputs_are_named_as_the_model_names_them(tmp_path, kind):
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(16, 3, activation="relu", name="stem")(inp)
    scores = keras.layers.Conv2D(4, 1, name="cls")(x)
    boxes = keras.layers.Conv2D(2, 1, name="box")(x)
    # the dict's keys in an order sorting changes: the graph holds them sorted
    outputs = {"scores": scores, "boxes": boxes} if kind == "dict" else [scores, boxes]
    model = keras.Model(inp, outputs)
    ctrl, model = create_compressed_model(model, make_config((1, 16, 16, 3),
                                                             prune_first_conv=True))
    ctrl.export_model(str(tmp_path / "m.onnx"), shrink=True)
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype("float32")
    ref = model(x, training=False)
    ref = ref if kind == "dict" else dict(zip(["cls", "box"], ref, strict=True))
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert sorted(names) == sorted(ref)
    for name, out in zip(names, sess.run(None, {"image": x}), strict=True):
        _close(out, np.asarray(ref[name]))


def test_zero_filter_converter_on_the_keras_onnx_export(pruned, tmp_path):
    """tf2onnx's channels-last export of the masked model: the converter removes exactly
    what ``strip()`` removes, and the outputs stay those of the Keras model."""
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from filterprune.onnx import remove_zero_filters

    ctrl, ref, x = pruned
    ctrl.export_model(str(tmp_path / "masked.onnx"))
    ctrl.export_model(str(tmp_path / "small.onnx"), shrink=True)
    converted, report = remove_zero_filters(str(tmp_path / "masked.onnx"))
    sess = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    _close(sess.run(None, {sess.get_inputs()[0].name: x})[0], ref)

    def sizes(model):
        return sorted(int(np.prod(i.dims)) for i in model.graph.initializer if len(i.dims) > 1)

    assert sizes(converted) == sizes(onnx.load(str(tmp_path / "small.onnx")))
    assert report.removed > 0


def test_onnx_export_of_captured_constants_grouped_conv_and_gelu(tmp_path):
    """A Normalization layer's statistics stay constants (not extra inputs); the grouped
    convolution Keras compiles with XLA, the exact GELU (Erfc) and CELU (Expm1) convert."""
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 4), name="image")
    x = keras.layers.Normalization(mean=0.5, variance=2.0)(inp)
    x = keras.layers.Conv2D(8, 3, groups=2, padding="same")(x)
    x = keras.layers.Activation("celu")(keras.layers.Activation("gelu")(x))
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    ctrl, model = create_compressed_model(model, make_config(sample=(1, 16, 16, 4)))
    ctrl.export_model(str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 4)).astype("float32")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    _close(sess.run(None, {"image": x})[0], model(x, training=False).numpy())


def test_an_onnx_file_onnxruntime_would_refuse_is_not_written(tmp_path):
    """tf2onnx writes negative pads for a strided Conv2DTranspose with output_padding;
    the export refuses it, naming what to do, where it wrote the file before."""
    pytest.importorskip("tf2onnx")
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2DTranspose(8, 3, strides=2, output_padding=1, name="t")(inp)
    model = keras.Model(inp, keras.layers.Conv2D(4, 1)(keras.layers.Conv2D(8, 3)(x)))
    ctrl, _ = create_compressed_model(model, make_config(sample=(1, 8, 8, 3)))
    with pytest.raises(RuntimeError, match="pads must not contain negative values.*saved_model"):
        ctrl.export_model(str(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


def test_an_onnx_export_of_a_bfloat16_model_says_which_policy_exports(tmp_path):
    """ONNX convolutions take no bfloat16: the refusal named only a SavedModel."""
    pytest.importorskip("tf2onnx")
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        inp = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(8, 3, padding="same")(inp)
        model = keras.Model(inp, keras.layers.Conv2D(4, 1)(x))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    ctrl, _ = create_compressed_model(model, make_config(sample=(1, 8, 8, 3)))
    with pytest.raises(RuntimeError, match="compute in bfloat16, which ONNX convolutions do "
                       "not take: for an ONNX file, build the model again under the 'float32'"):
        ctrl.export_model(str(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("suffix", ["onnx", "pb"])
def test_a_model_writing_variables_in_its_call_names_them_at_a_frozen_export(suffix, tmp_path):
    """A stateful LSTM failed with tf's "Input 0 of node .../AssignVariableOp was passed
    float ... incompatible with expected resource"."""
    inp = keras.Input((6, 4), batch_size=2)
    x = keras.layers.Conv1D(8, 3, padding="same", name="c")(inp)
    x = keras.layers.LSTM(4, stateful=True, name="memory")(x)
    model = keras.Model(inp, keras.layers.Dense(2)(x))
    ctrl, _ = create_compressed_model(model, make_config(sample=(2, 6, 4)))
    with pytest.raises(ValueError, match="writes variables in its call \\(memory: .*SavedModel"):
        ctrl.export_model(str(tmp_path / f"m.{suffix}"))
    assert not (tmp_path / f"m.{suffix}").exists()
    ctrl.export_model(str(tmp_path / "saved"))  # a SavedModel holds them


def test_export_rejects_unknown_format_and_bad_suffix(pruned, tmp_path):
    ctrl, _, _ = pruned
    with pytest.raises(ValueError, match=r"must be one of .*Received: save_format='h5'"):
        ctrl.export_model(str(tmp_path / "m.h5"), save_format="h5")
    with pytest.raises(ValueError, match=r"must end in '.keras'"):
        ctrl.export_model(str(tmp_path / "m.pb"), save_format="keras")



@pytest.mark.parametrize(("name", "save_format", "match"), [
    ("m.keras", "frozen_graph", r"end in '\.pb'\. Received: .*whose suffix names 'keras'"),
    ("m2.pb", "saved_model", r"no suffix \(a SavedModel folder\)\. Received"),
    ("sm2", "onnx", r"end in '\.onnx'\. Received: .*whose suffix names 'saved_model'"),
])  # fmt: skip
def test_export_refuses_a_suffix_naming_another_format_than_given(pruned, tmp_path, name,
                                                                  save_format, match):  # fmt: skip
    """A GraphDef was written into m.keras, a folder named m2.pb, ONNX into sm2."""
    ctrl, _, _ = pruned
    with pytest.raises(ValueError, match=match):
        ctrl.export_model(str(tmp_path / name), save_format=save_format)
    assert list(tmp_path.iterdir()) == []

@pytest.mark.parametrize(
    ("name", "save_format", "what"),
    [("m.tflite", None, "a TensorFlow Lite file"), ("m.h5", None, "a Keras HDF5 file"),
     ("m.hdf5", "frozen_graph", "a Keras HDF5 file"), ("m.graph", None, "the suffix '.graph'")],
)
def test_export_refuses_a_suffix_naming_another_format(pruned, tmp_path, name, save_format, what):
    # these used to write a frozen GraphDef under a name promising another format
    ctrl, _, _ = pruned
    with pytest.raises(ValueError, match=(
        rf"^`save_path` must end in \.pb \(frozen GraphDef\), \.keras or \.onnx, or have no "
        rf"suffix \(a SavedModel folder\)\. Received: save_path='.*{name}', which names {what}: "
        rf"not a format export_model writes\. Supported formats: 'frozen_graph', "
        rf"'saved_model', 'keras', 'onnx'\.")):
        ctrl.export_model(str(tmp_path / name), save_format=save_format)
    assert list(tmp_path.iterdir()) == []
    ctrl.export_model(str(tmp_path / "m.graph"), save_format="frozen_graph")  # said explicitly
    assert (tmp_path / "m.graph").stat().st_size > 0


@pytest.mark.parametrize("shrink", [False, True])
def test_onnx_export_of_a_grouped_conv3d_runs(tmp_path, shrink):
    """tf2onnx wrote a Conv3D in 4 groups with ``group`` 1: ONNX Runtime refused the file."""
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 6, 4))
    x = keras.layers.Conv3D(16, 3, padding="same", name="c1")(inp)
    x = keras.layers.Conv3D(16, 3, padding="same", groups=4, name="g1")(x)
    model = keras.Model(inp, keras.layers.Conv3D(3, 1, name="head")(x))
    ctrl, model = create_compressed_model(randomize_bn(model), make_config(
        (1, 6, 6, 6, 4), pruning_init=0.5, prune_first_conv=True))
    ctrl.export_model(str(tmp_path / "m.onnx"), shrink=shrink)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 6, 4)).astype("float32")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    _close(sess.run(None, {sess.get_inputs()[0].name: x})[0], model(x, training=False).numpy())


def _two_inputs_by_unsorted_keys():
    ib, ia = keras.Input((8, 8, 3), name="b"), keras.Input((8, 8, 3), name="a")
    x = keras.layers.Conv2D(8, 3, name="c")(keras.layers.Concatenate()([ib, ia * 2.0]))
    return keras.Model({"b": ib, "a": ia}, keras.layers.Dense(2)(x))


def _batch_of_one():
    inp = keras.Input((8, 8, 3), batch_size=1)
    x = keras.ops.reshape(keras.layers.Conv2D(8, 3, name="c")(inp), (1, -1))
    return keras.Model(inp, keras.layers.Dense(2)(x))


def _with_a_mask():
    inp = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(8, 3, name="c")(inp)
    return keras.Model(inp, [y, keras.ops.greater(y, 0.0)])


@pytest.mark.parametrize("build", [_two_inputs_by_unsorted_keys, _batch_of_one, _with_a_mask],
                         ids=["dict inputs", "batch of one", "bool output"])  # fmt: skip
def test_the_onnx_check_of_a_keras_export_runs_the_model_as_it_takes_inputs(build, tmp_path,
                                                                            caplog):  # fmt: skip
    """The check of the written file called the model with a list (dict inputs), with a
    batch of two (a batch fixed at one) and subtracted its bool outputs: each export
    failed."""
    pytest.importorskip("tf2onnx")
    keras.utils.set_random_seed(0)
    model = build()
    sizes = [[1, *t.shape[1:]] for t in model.inputs]
    config = make_config(sizes[0], pruning_init=0.0)
    if len(sizes) > 1:
        config["input_info"] = [{"sample_size": s, "keyword": t.name}
                                for s, t in zip(sizes, model.inputs, strict=True)]  # fmt: skip
    ctrl, _ = create_compressed_model(model, config)
    caplog.set_level("WARNING", logger="filterprune")
    ctrl.export_model(str(tmp_path / "m.onnx"))
    assert (tmp_path / "m.onnx").stat().st_size > 0
    assert "The ONNX file of" not in caplog.text
