"""``filterprune analyze model.keras``: Keras files, read without running their code."""

import json
import sys

from keras_helpers import keras, small_resnet

from filterprune.cli import main


def test_analyze_a_keras_file(tmp_path, capsys):
    torch_loaded = "torch" in sys.modules
    path = tmp_path / "resnet.keras"
    small_resnet().save(path)
    out = tmp_path / "a.json"
    assert main(["analyze", str(path), "--json", str(out), "--level", "0.3"]) == 0
    text = capsys.readouterr().out
    assert f"MODEL {path} (TensorFlow), input 1x32x32x3" in text
    assert "prunable, keeps" in text and "What each level leaves" in text
    data = json.loads(out.read_text())
    assert data["level"] == 0.3 and len(data["levels"]) == 9
    assert ("torch" in sys.modules) == torch_loaded  # a Keras model never imports torch


def test_a_truncated_keras_file_is_said_to_be_one(tmp_path, capsys):
    """Keras said "File not found" of a file that is there."""
    path = tmp_path / "resnet.keras"
    small_resnet().save(path)
    path.write_bytes(path.read_bytes()[:500])
    assert main(["analyze", str(path)]) == 2
    assert f"MODEL {path} is not a .keras archive (a zip file): it is truncated" \
        in capsys.readouterr().err  # fmt: skip


def test_keras_lambda_layers_need_trusted(tmp_path, capsys):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3)(inputs)
    x = keras.layers.Lambda(lambda t: t * 2.0)(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    assert main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"MODEL {path} could not be read as a Keras model" in err and "--trusted" in err
    assert main(["analyze", str(path), "--weights", "w.pt"]) == 2
    assert "--weights applies to PyTorch models" in capsys.readouterr().err


_LOADER = '''
import keras


@keras.saving.register_keras_serializable(package="mine")
def swishy(x):
    return x * keras.ops.sigmoid(x)


def load():
    return keras.saving.load_model({path!r})
'''


def test_a_file_with_custom_objects_names_them_and_loads_through_a_factory(tmp_path, capsys):
    @keras.saving.register_keras_serializable(package="mine")
    def swishy(x):
        return x * keras.ops.sigmoid(x)

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, activation=swishy)(inputs)
    path = tmp_path / "custom.keras"
    keras.Model(inputs, keras.layers.Conv2D(2, 1)(x)).save(path)
    del keras.saving.get_custom_objects()["mine>swishy"]  # as in a process that never saw it
    assert main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err
    assert "objects of your own code (mine>swishy)" in err and "file.py:factory" in err
    loader = tmp_path / "loader.py"
    loader.write_text(_LOADER.format(path=str(path)))
    assert main(["analyze", f"{loader}:load"]) == 0
    assert "(TensorFlow), input 1x8x8x3" in capsys.readouterr().out
