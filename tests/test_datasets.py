"""Fashion-MNIST reader: shapes, dtypes, labels, balance and error messages."""

import gzip
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from filterprune.datasets import CLASSES, ENV_VAR, load_fashion_mnist


@pytest.fixture(scope="module")
def train():
    return load_fashion_mnist("train")


@pytest.fixture(scope="module")
def test():
    return load_fashion_mnist("test")


def test_train_split_shapes_and_dtypes(train):
    images, labels = train
    assert images.shape == (60000, 28, 28)
    assert images.dtype == np.uint8
    assert labels.shape == (60000,)
    assert labels.dtype == np.int64


def test_test_split_shapes_and_dtypes(test):
    images, labels = test
    assert images.shape == (10000, 28, 28)
    assert images.dtype == np.uint8
    assert labels.shape == (10000,)
    assert labels.dtype == np.int64


def test_labels_cover_the_ten_classes(train, test):
    assert len(CLASSES) == 10
    for _, labels in (train, test):
        assert labels.min() == 0
        assert labels.max() == 9


def test_test_split_has_1000_images_per_class(test):
    assert np.bincount(test[1], minlength=10).tolist() == [1000] * 10


def test_pixel_statistics_match_the_published_normalisation(train):
    pixels = train[0][:10000].astype(np.float32) / 255.0
    assert pixels.mean() == pytest.approx(0.2860, abs=5e-3)
    assert pixels.std() == pytest.approx(0.3530, abs=5e-3)


def test_missing_root_names_the_path_and_the_install_command(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist") as info:
        load_fashion_mnist("test", root=missing)
    assert str(missing / "t10k-images-idx3-ubyte.gz") in str(info.value)
    assert "make data" in str(info.value)


def test_environment_variable_is_used_when_no_root_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_fashion_mnist("train")


def test_root_argument_wins_over_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "from-env"))
    with pytest.raises(FileNotFoundError, match="from-arg"):
        load_fashion_mnist("train", root=tmp_path / "from-arg")


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match=r"`split` must be one of \['test', 'train'\]. "
                                         r"Received: split='valid'."):
        load_fashion_mnist("valid")


def _write_idx(path, magic, dims, payload):
    header = np.array([magic, *dims], dtype=">u4").tobytes()
    with gzip.open(path, "wb") as stream:
        stream.write(header + payload)


def test_wrong_magic_number_is_rejected(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x0801, [10000, 28, 28], b"")
    with pytest.raises(ValueError, match="must have IDX magic number 0x00000803. "
                                         "Received: 0x00000801."):
        load_fashion_mnist("test", root=tmp_path)


def test_wrong_dimensions_are_rejected(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x0803, [5, 28, 28], bytes(5 * 784))
    with pytest.raises(ValueError, match=r"shape \(10000, 28, 28\). Received: \(5, 28, 28\)."):
        load_fashion_mnist("test", root=tmp_path)


def test_truncated_file_is_rejected(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x0803, [10000, 28, 28], bytes(100))
    with pytest.raises(ValueError, match="bytes once decompressed"):
        load_fashion_mnist("test", root=tmp_path)


def test_reader_imports_no_framework():
    code = (
        "import sys, filterprune.datasets.fashion_mnist; "
        "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_limited_image_folder_draws_from_every_class(tmp_path):
    """``--train-limit`` took the first images of a folder listed class by class: one
    class, and an accuracy of 1.0 that meant nothing."""
    sys.path.insert(0, str(Path(__file__).parent))
    from cli_helpers import write_image_folder
    from filterprune.datasets.image_folder import open_data

    root = write_image_folder(tmp_path / "data", train=12, val=4)
    data = open_data(str(root), [1, 3, 16, 16], train_limit=9, val_limit=6)
    labels = [int(y) for _, y in data.train.dataset] + [int(y) for _, y in data.val.dataset]
    assert len(labels) == 15 and set(labels[:9]) == {0, 1, 2} and len(set(labels[9:])) > 1
    again = open_data(str(root), [1, 3, 16, 16], train_limit=9, val_limit=6)
    assert data.train.dataset.indices == again.train.dataset.indices  # seeded


def test_an_image_that_cannot_be_read_is_named():
    """A truncated PNG said "image file is truncated" and nothing of which file."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from cli_helpers import write_image_folder
    from filterprune.datasets.image_folder import open_data

    with tempfile.TemporaryDirectory() as tmp:
        root = write_image_folder(Path(tmp) / "data", train=2, val=1)
        bad = root / "train" / "red" / "1.png"
        bad.write_bytes(bad.read_bytes()[:60])
        data = open_data(str(root), [1, 3, 16, 16], batch_size=8)
        with pytest.raises(OSError, match=rf"^{re.escape(str(bad))} cannot be read as an "
                           r"image \(.*\); remove or replace it$"):  # fmt: skip
            next(iter(data.train))
