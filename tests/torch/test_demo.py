"""The PyTorch Fashion-MNIST demo end to end, on a few hundred images."""

import json

import pytest

from filterprune.examples import fashion_mnist as demo
from filterprune.examples._config import demo_arguments

SMALL = ["--train-limit", "384", "--test-limit", "256", "--epochs", "2", "--baseline-epochs", "1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One folder for the module, so the small baseline is trained once."""
    return tmp_path_factory.mktemp("demo-cache")


def test_demo_config_lists_pruning_distillation_then_quantization():
    config = demo.demo_config(demo_arguments("", [], **demo.DEFAULTS))
    algos = config.algorithms()
    assert [a["algorithm"] for a in algos] == [
        "filter_pruning", "knowledge_distillation", "quantization"]
    params = algos[0]["params"]
    assert params["pruning_flops_target"] == 0.5
    assert "pruning_target" not in params
    assert params["shrink_when_frozen"] is True


def test_demo_prints_fp32_baseline_pruned_fp32_and_pruned_int8(cache, capsys):
    report = demo.main([*SMALL, "--cache", str(cache)])
    out = capsys.readouterr().out
    assert "baseline FP32" in out and "pruned FP32" in out and "pruned INT8" in out
    assert "Result (Fashion-MNIST test set, 256 images)" in out
    assert 0.48 <= report["flops_kept"] <= 0.5  # half the FLOPs removed, +0.02 at most
    assert report["pruned_params"] < report["dense_params"]
    for key in ("baseline_fp32", "pruned_fp32", "pruned_int8"):
        assert 0.0 <= report[f"accuracy_{key}"] <= 1.0
    ort = report["accuracy_pruned_int8_onnxruntime"]
    assert ort == pytest.approx(report["accuracy_pruned_int8"], abs=0.02)
    assert report["test_images"] == 256
    saved = json.loads((cache / "demo-results.json").read_text())
    assert saved["flops_kept"] == report["flops_kept"]


def test_compress_without_quantization_trains_a_pruning_only_controller(cache):
    args = demo_arguments("", [*SMALL, "--cache", str(cache)], **demo.DEFAULTS)
    dense = demo.load_baseline(args)
    train_loader, test_loader = demo.fashion_mnist_loaders(train_limit=384, test_limit=256)
    config = demo.demo_config(args)
    config["compression"] = config["compression"][:1]
    ctrl = demo.compress(dense, config, train_loader, test_loader, epochs=1)
    assert not hasattr(ctrl, "child_ctrls")
    assert ctrl.shrunk  # masks froze at once and the model was cut
    assert 0.48 <= ctrl.statistics().flops_kept <= 0.5


def test_a_test_limit_keeps_the_shipped_baseline(tmp_path, monkeypatch, capsys):
    """--test-limit limits the evaluation; it was part of the baseline's cache key, so the
    shipped baseline missed and two epochs of training ran instead."""
    from filterprune.examples import _training

    def trained(*args, **kwargs):
        raise AssertionError("the baseline was trained again")

    monkeypatch.setattr(_training, "_train_baseline", trained)
    args = demo_arguments("", ["--test-limit", "256", "--cache", str(tmp_path)], **demo.DEFAULTS)
    demo.load_baseline(args)
    assert "baseline: shipped" in capsys.readouterr().out
