"""``filterprune prune`` with ``accuracy_aware_training`` or a LeGR ranking in the config:
the run searches the level (or the ranking) with its own training and validation."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cli_helpers import RUN_ARGS, TINY, tiny_cnn, write_image_folder
from filterprune.cli import main
from filterprune.torch import resize_to_state_dict

PRUNING = {"algorithm": "filter_pruning", "pruning_init": 0.1,
           "params": {"schedule": "exponential", "pruning_target": 0.3, "pruning_steps": 1,
                      "filters_multiple_of": 1}}  # fmt: skip
SEARCH = {"mode": "adaptive_compression_level",
          "params": {"maximal_absolute_accuracy_degradation": 0.05,
                     "initial_training_phase_epochs": 1, "patience_epochs": 1,
                     "maximal_total_epochs": 50}}  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data"))


def write_config(folder, pruning=PRUNING, **extra):
    path = folder / "prune.json"
    path.write_text(json.dumps({"input_info": {"sample_size": [1, 3, 16, 16]},
                                "compression": [pruning], **extra}))  # fmt: skip
    return path


def test_accuracy_aware_run_finds_the_level_below_the_cliff(images, tmp_path, capsys,
                                                            monkeypatch):  # fmt: skip
    """Validation says 0.9 up to level 0.47 and 0.5 above: the run must end between
    0.445 and 0.47 (the last step 0.025), with that level in every output."""
    import filterprune.torch.finetune as finetune

    real = finetune._Loop.validate
    calls = []

    def cliff(loop):
        calls.append(real(loop))  # the real evaluation runs too
        return 0.9 if loop.ctrl.pruning_level <= 0.47 else 0.5

    monkeypatch.setattr(finetune._Loop, "validate", cliff)
    out = tmp_path / "aa"
    search = {**SEARCH, "params": {**SEARCH["params"], "uncompressed_model_accuracy": 0.9}}
    cfg = write_config(tmp_path, accuracy_aware_training=search)
    assert main(["prune", TINY, "--data", str(images), "--config", str(cfg), "--epochs", "12",
                 "--out", str(out), *RUN_ARGS]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "accuracy-aware: searching the level for at most 12 epochs" in text
    summary = json.loads((out / "summary.json").read_text())
    assert 0.445 - 1e-9 <= summary["level"] <= 0.47 + 1e-9
    note = next(n for n in summary["notes"] if n.startswith("accuracy-aware"))
    assert f"best level {summary['level']:.3f}" in note and "bound 0.8500" in note
    history = json.loads((out / "history.json").read_text())
    trained = history[1:]
    assert 1 <= len(trained) <= 12 and [h["epoch"] for h in trained] == list(
        range(1, len(trained) + 1))
    assert all(isinstance(h["val_accuracy"], float) for h in trained)
    assert max(h["level"] for h in trained) > 0.47  # it trained beyond the cliff, came back
    assert all(0.0 <= a <= 1.0 for a in calls)
    assert "accuracy-aware" in (out / "report.md").read_text()
    # the pruned files are the searched level's model: stripped == the converted ONNX
    state = torch.load(out / "model_stripped.pt", weights_only=True)
    model = resize_to_state_dict(tiny_cnn(), state).eval()
    assert sum(v.numel() for v in state.values()) < sum(
        p.numel() for p in tiny_cnn().state_dict().values())
    x = torch.randn(1, 3, 16, 16)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(),
                                   session.run(None, {session.get_inputs()[0].name: x.numpy()})[0],
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
    assert main(["prune", "--resume", str(out)]) == 0  # the search ended: nothing to do
    assert "nothing to resume" in capsys.readouterr().out


def test_an_interrupted_search_resumes_to_the_same_result(images, tmp_path, capsys,
                                                          monkeypatch):  # fmt: skip
    """Stopped in its third epoch (the second of two at level 0.5, after 0.3 and 0.4 held),
    then resumed: the same epochs, levels, validations and weights as the run that was
    not stopped, which went on to 0.45 and 0.475."""
    import filterprune.torch.finetune as finetune

    def cliff(loop):  # the real weights decide only the last digits
        return (0.9 if loop.ctrl.pruning_level <= 0.47 else 0.5) + real_validate(loop) / 1000

    real_validate, real_train = finetune._Loop.validate, finetune._Loop.train
    trained = []

    def stop_at_third(loop, epoch, total):
        trained.append(epoch)
        if len(trained) == 3:
            raise KeyboardInterrupt
        return real_train(loop, epoch, total)

    monkeypatch.setattr(finetune._Loop, "validate", cliff)
    search = {**SEARCH, "params": {**SEARCH["params"], "uncompressed_model_accuracy": 0.9,
                                   "patience_epochs": 2}}  # fmt: skip
    cfg = write_config(tmp_path, accuracy_aware_training=search)
    args = ["--data", str(images), "--config", str(cfg), "--epochs", "12", *RUN_ARGS]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["prune", TINY, *args, "--out", str(whole)]) == 0
    monkeypatch.setattr(finetune._Loop, "train", stop_at_third)
    assert main(["prune", TINY, *args, "--out", str(cut)]) == 130
    assert f"Continue with --resume {cut}" in capsys.readouterr().err
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(finetune._Loop, "train", real_train)
    assert main(["prune", "--resume", str(cut)]) == 0
    assert "resuming" in capsys.readouterr().out
    done, resumed = (json.loads((d / "summary.json").read_text()) for d in (whole, cut))
    assert resumed["level"] == done["level"] and resumed["notes"] == done["notes"]
    keys = ("epoch", "level", "val_accuracy", "train_loss")
    rows = [[{k: r[k] for k in keys} for r in json.loads((d / "history.json").read_text())]
            for d in (whole, cut)]  # fmt: skip
    assert rows[0] == rows[1] and len(rows[0]) > 4
    assert [round(r["level"], 3) for r in rows[0][1:4]] == [0.3, 0.5, 0.5]
    assert len({r["level"] for r in rows[0][3:]}) >= 2  # the level moved after the stop
    a, b = (torch.load(d / "model_stripped.pt", weights_only=True) for d in (whole, cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_accuracy_aware_bound_is_relative_to_the_dense_model(images, tmp_path, capsys):
    """Also: every epoch is validated and reported, the initial phase's (two here) too."""
    search = {**SEARCH, "params": {**SEARCH["params"], "maximal_total_epochs": 3,
                                   "initial_training_phase_epochs": 2}}  # fmt: skip
    cfg = write_config(tmp_path, accuracy_aware_training=search)
    out = tmp_path / "aa"
    assert main(["prune", TINY, "--data", str(images), "--config", str(cfg), "--epochs", "5",
                 "--out", str(out), *RUN_ARGS]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "at most 3 epochs (--epochs 5, maximal_total_epochs 3)" in text
    assert "epoch 1/3: loss" in text and "epoch 2/3: loss" in text
    history = json.loads((out / "history.json").read_text())
    dense = history[0]["val_accuracy"]
    assert 2 <= len(history) - 1 <= 3
    assert all(isinstance(h["val_accuracy"], float) for h in history)
    note = json.loads((out / "summary.json").read_text())["notes"][0]
    assert f"uncompressed val acc {dense:.4f}, bound {dense - 0.05:.4f}" in note


def test_accuracy_aware_config_errors_come_before_any_file(images, tmp_path, capsys):
    shrink = {**PRUNING, "params": {**PRUNING["params"], "shrink_when_frozen": True}}
    bad = {**SEARCH, "params": {**SEARCH["params"], "maximal_relative_accuracy_degradation": 1}}
    for pruning, search, message in (
            (shrink, SEARCH, "`params.shrink_when_frozen` must be false"),
            (PRUNING, bad, "must not both be set"),
            ({"algorithm": "quantization"}, SEARCH, "must contain 'filter_pruning'")):
        cfg = write_config(tmp_path, pruning, accuracy_aware_training=search)
        out = tmp_path / "never"
        assert main(["prune", TINY, "--data", str(images), "--config", str(cfg), "--epochs",
                     "2", "--out", str(out), *RUN_ARGS]) == 2  # fmt: skip
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_learned_ranking_run_searches_with_the_runs_data(images, tmp_path, capsys):
    legr = {**PRUNING, "params": {
        **PRUNING["params"], "pruning_flops_target": 0.4, "interlayer_ranking_type":
        "learned_ranking", "legr_params": {"generations": 3, "population_size": 2,
                                           "num_samples": 2, "train_steps": 2,
                                           "max_pruning": 0.4},
        "save_ranking_coeffs_path": str(tmp_path / "coeffs.json")}}  # fmt: skip
    legr["params"].pop("pruning_target")
    cfg = write_config(tmp_path, legr)
    out = tmp_path / "legr"
    assert main(["prune", TINY, "--data", str(images), "--config", str(cfg), "--epochs", "1",
                 "--out", str(out), *RUN_ARGS]) == 0  # fmt: skip
    coeffs = json.loads((tmp_path / "coeffs.json").read_text())
    assert coeffs  # the search ran and saved its ranking
    summary = json.loads((out / "summary.json").read_text())
    assert summary["flops"][1] < summary["flops"][0]


def test_the_readmes_config_runs(tmp_path, capsys):
    config = Path(__file__).parent.parent / "docs" / "fashion_mnist_accuracy_aware.json"
    assert main(["prune", "filterprune.examples._training:SmallCNN", "--data", "fashion-mnist",
                 "--config", str(config), "--epochs", "2", "--out", str(tmp_path / "fm"),
                 "--train-limit", "256", "--val-limit", "128", "--bench-seconds", "0"]) == 0
    text = capsys.readouterr().out
    assert "at most 2 epochs (--epochs 2, maximal_total_epochs 8)" in text
    assert "warning: the dense model is at chance level" in text  # random init, no --weights
