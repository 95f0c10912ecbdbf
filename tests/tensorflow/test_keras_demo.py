"""The Keras Fashion-MNIST demo end to end, on a few hundred images."""

import json

import pytest

from filterprune.examples import fashion_mnist_keras as demo
from filterprune.examples._config import demo_arguments

SMALL = ["--train-limit", "256", "--test-limit", "256", "--epochs", "2", "--baseline-epochs", "1"]


def test_keras_demo_prints_fp32_baseline_pruned_fp32_and_pruned_int8(tmp_path, capsys):
    report = demo.main([*SMALL, "--flops-target", "0.5", "--cache", str(tmp_path)])
    out = capsys.readouterr().out
    assert "FP32 baseline" in out and "pruned FP32" in out and "pruned INT8" in out
    assert "Result (Fashion-MNIST test set, 256 images, Keras)" in out
    assert "test accuracy (INT8)" in out
    assert 0.48 <= report["flops_kept"] <= 0.5  # --flops-target 0.5: half removed, +0.02 at most
    assert report["pruned_params"] < report["dense_params"]
    assert report["test_images"] == 256
    onnx = report["pruned_int8_onnxruntime_accuracy"]
    if onnx is not None:
        assert onnx == pytest.approx(report["pruned_int8_accuracy"], abs=0.02)
    saved = json.loads((tmp_path / "demo-keras-results.json").read_text())
    assert saved["flops_kept"] == report["flops_kept"]


def test_train_compressed_takes_a_pruning_only_config(tmp_path, capsys):
    args = demo_arguments("", [*SMALL, "--epochs", "1", "--cache", str(tmp_path)], **demo.DEFAULTS)
    dense, _ = demo.baseline(args.cache, args.baseline_epochs, args.train_limit)
    test = demo.dataset("test", args.test_limit)
    config = demo.demo_config(args)
    config["compression"] = config["compression"][:1]
    ctrl, pruning = demo.train_compressed(args, dense, test, config)
    assert pruning is ctrl  # one algorithm: the pruning controller itself
    assert "test accuracy (FP32)" in capsys.readouterr().out
    assert ctrl.statistics().flops_kept < 1.0
