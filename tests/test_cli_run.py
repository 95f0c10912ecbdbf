"""``filterprune prune --data ... --out RUN_DIR`` and ``filterprune report RUN_DIR``."""

import contextlib
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cli_helpers import RUN_ARGS, TINY, tiny_cnn, write_image_folder
from filterprune.cli import main
from filterprune.core.compression import CompositeCompressionController, CompressionController
from filterprune.testing.browser import find_chromium, open_page
from filterprune.torch import resize_to_state_dict

OUTPUTS = ["checkpoint.pt", "dense.onnx", "history.json", "model.onnx", "model_stripped.pt",
           "model_zeroed.onnx", "report.html", "report.md", "report_files", "run.json",
           "summary.json"]  # fmt: skip


def _ctrl_c():
    raise KeyboardInterrupt


@contextlib.contextmanager
def _stopped_in_epoch(monkeypatch, epoch, stop=_ctrl_c):
    """Inside the block, a run calls ``stop()`` (a Ctrl-C) as its epoch ``epoch`` begins."""
    import filterprune.torch.finetune as finetune

    real = finetune._Loop.epoch

    def stopping(self, number):
        if number == epoch:
            stop()
        return real(self, number)

    monkeypatch.setattr(finetune._Loop, "epoch", stopping)
    try:
        yield
    finally:
        monkeypatch.setattr(finetune._Loop, "epoch", real)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "prune.json"
    path.write_text(json.dumps({
        "input_info": {"sample_size": [1, 3, 16, 16]},
        "compression": {"algorithm": "filter_pruning", "pruning_init": 0.2,
                        "params": {"schedule": "exponential", "pruning_target": 0.5,
                                   "pruning_steps": 2, "filters_multiple_of": 1}}}))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def run_dir(images, config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["prune", TINY, "--data", str(images), "--config", str(config_file),
                 "--epochs", "2", "--out", str(out), *RUN_ARGS]) == 0  # fmt: skip
    return out


def test_run_writes_models_history_summary_and_report(run_dir):
    assert sorted(p.name for p in run_dir.iterdir()) == OUTPUTS
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert [h["level"] for h in history] == pytest.approx([0.0, 0.2, 0.5])
    assert history[2]["flops_kept"] < history[1]["flops_kept"] < 1.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["params"][1] < summary["params"][0]
    assert summary["flops"][1] < summary["flops"][0]
    assert summary["onnx_bytes"][1] < summary["onnx_bytes"][0]
    assert summary["latency"]["threads"] == 1 and summary["latency"]["after_ms"] > 0
    assert summary["accuracy"][0] == history[0]["val_accuracy"]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "done" and run["classes"] == ["blue", "green", "red"]


def test_stripped_model_loads_and_matches_the_converted_onnx(run_dir):
    state = torch.load(run_dir / "model_stripped.pt", weights_only=True)
    model = resize_to_state_dict(tiny_cnn(), state).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ours = model(x).numpy()
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    theirs = np.concatenate([session.run(None, {name: x[i:i + 1].numpy()})[0] for i in range(2)])
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "resize_to_state_dict" in summary["load"] and "tiny_cnn" in summary["load"]


def test_report_page_renders_in_chromium(run_dir, tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.fail("Chromium is not installed: run `make chromium` (apt-get install chromium); "
                    ".ci/run installs it.")  # fmt: skip
    assert main(["report", str(run_dir)]) == 0
    page = open_page(run_dir / "report.html", binary=binary)
    assert page.errors == []
    assert page.title.startswith("filterprune: cli_helpers:tiny_cnn pruned on")
    for heading in ("Before and after", "Training", "Filters kept per layer", "Config",
                    "How to load the result"):  # fmt: skip
        assert heading in page.text
    assert "latency (onnxruntime f32, CPU, batch 1, 1 thread; median)" in page.text
    assert len(page.images) == 3 and page.images_loaded
    assert all(i["width"] >= 300 for i in page.images)
    html = (run_dir / "report.html").read_text()
    assert "src=\"data:image/png;base64," in html and "http" not in html.replace(
        "http-equiv", "")  # self-contained: nothing to fetch


def test_the_report_states_the_learning_rate_used(run_dir):
    """A run without --lr showed 'lr default', not the rate the optimizer used."""
    assert "(the optimizer's default)" in (run_dir / "report.md").read_text()


def test_a_model_with_more_logits_than_classes_is_warned_about(caplog):
    from types import SimpleNamespace

    from filterprune.torch.finetune import _check_outputs

    caplog.set_level("WARNING", logger="filterprune")
    data = SimpleNamespace(sample_size=[1, 3, 16, 16], classes=["a", "b"])
    _check_outputs(tiny_cnn(), data, "cli_helpers:tiny_cnn")  # 3 logits, 2 classes
    assert "gives 3 logits for the 2 classes" in caplog.text


def test_report_markdown_points_at_its_charts(run_dir):
    text = (run_dir / "report.md").read_text()
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines()
             if line.startswith("![")]  # fmt: skip
    assert links == ["report_files/training.png", "report_files/pruning.png",
                     "report_files/layers.png"]  # fmt: skip
    assert all((run_dir / link).read_bytes()[:4] == b"\x89PNG" for link in links)
    assert "| accuracy (validation) |" in text


def test_interrupted_run_resumes_to_the_same_result(run_dir, images, config_file, tmp_path,
                                                    monkeypatch, capsys):  # fmt: skip
    # the arguments of the run_dir fixture: that run is the uninterrupted one
    args = ["--data", str(images), "--config", str(config_file), "--epochs", "2", *RUN_ARGS]
    cut = tmp_path / "cut"
    with _stopped_in_epoch(monkeypatch, 2):
        assert main(["prune", TINY, *args, "--out", str(cut)]) == 130
    assert f"interrupted. Continue with --resume {cut}." in capsys.readouterr().err
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (cut / "summary.json").exists()
    assert main(["report", str(cut)]) == 0  # a report of the epochs so far
    assert "in progress: 1 of 2 epochs done" in (cut / "report.md").read_text()
    assert main(["prune", "--resume", str(cut)]) == 0
    whole = torch.load(run_dir / "model_stripped.pt", weights_only=True)
    resumed = torch.load(cut / "model_stripped.pt", weights_only=True)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    history = json.loads((cut / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert main(["prune", "--resume", str(cut)]) == 0  # done: nothing to do


def test_a_terminated_run_says_how_to_resume(images, config_file, tmp_path, monkeypatch,
                                             capsys):  # fmt: skip
    """SIGTERM (a job scheduler's stop) ended the process at once: exit -15, no word."""
    import os
    import signal

    before = signal.getsignal(signal.SIGTERM)
    cut = tmp_path / "cut"
    args = ["--data", str(images), "--config", str(config_file), "--epochs", "2", *RUN_ARGS]
    with _stopped_in_epoch(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM)):
        assert main(["prune", TINY, *args, "--out", str(cut)]) == 143
    assert f"interrupted. Continue with --resume {cut}." in capsys.readouterr().err
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_run_shorter_than_the_schedule_says_so(images, config_file, tmp_path, caplog):
    """A run ending before the schedule's target finished with no word of it."""
    caplog.set_level("WARNING", logger="filterprune")
    assert main(["prune", TINY, "--data", str(images), "--config", str(config_file),
                 "--epochs", "1", "--out", str(tmp_path / "short"), *RUN_ARGS]) == 0
    assert "reaches its target level 0.5 at epoch 2, but the run has 1: its last epoch " \
        "prunes at 0.2" in caplog.text  # fmt: skip


def test_a_model_with_dropout_resumes_to_the_same_result(images, config_file, tmp_path,
                                                        monkeypatch):  # fmt: skip
    args = ["cli_helpers:tiny_cnn_dropout", "--data", str(images), "--config",
            str(config_file), "--epochs", "2", *RUN_ARGS]  # fmt: skip
    assert main(["prune", *args, "--out", str(tmp_path / "whole")]) == 0
    with _stopped_in_epoch(monkeypatch, 2):
        assert main(["prune", *args, "--out", str(tmp_path / "cut")]) == 130
    assert main(["prune", "--resume", str(tmp_path / "cut")]) == 0
    whole = torch.load(tmp_path / "whole" / "model_stripped.pt", weights_only=True)
    resumed = torch.load(tmp_path / "cut" / "model_stripped.pt", weights_only=True)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


class _Counter(CompressionController):
    """A second algorithm, as a composite controller holds it (e.g. quantization)."""

    name = "counter"


def test_composite_controllers_are_run_and_reported(images, config_file, tmp_path,
                                                     monkeypatch):  # fmt: skip
    import filterprune.torch as ftorch
    from filterprune.torch.frontend import TorchFrontend

    real = ftorch.create_compressed_model

    def composite(model, config, compression_state=None):
        child_state = compression_state["children"][0] if compression_state else None
        ctrl, model = real(model, config, compression_state=child_state)
        return CompositeCompressionController([ctrl, _Counter()], TorchFrontend()), model

    monkeypatch.setattr(ftorch, "create_compressed_model", composite)
    out = tmp_path / "both"
    assert main(["prune", TINY, "--data", str(images), "--config", str(config_file),
                 "--epochs", "1", "--out", str(out), *RUN_ARGS]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithms"] == ["filter_pruning", "counter"]
    assert summary["layers"] and summary["flops"][1] < summary["flops"][0]
    assert "filter_pruning, counter" in (out / "report.md").read_text()


def test_fashion_mnist_run(tmp_path, capsys):
    model = "filterprune.examples._training:SmallCNN"
    assert main(["prune", model, "--data", "fashion-mnist", "--epochs", "1", "--out",
                 str(tmp_path / "fm"), "--train-limit", "256", "--val-limit", "128",
                 "--bench-seconds", "0", "--level", "0.3"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "no --config: pruning 0.3 of the filters over 1 epochs" in text
    assert "256 training and 128 validation images, 10 classes" in text
    assert "epoch 1/1: loss" in text and "FLOPs kept" in text
    assert (tmp_path / "fm" / "report.html").is_file()


@pytest.mark.parametrize(("extra", "message"), [
    (["--data", "{images}", "--epochs", "1"], "missing --out"),
    (["--data", "{tmp}/none", "--epochs", "1", "--out", "{tmp}/r"], "is not a folder"),
    (["--data", "{tmp}", "--epochs", "1", "--out", "{tmp}/r"], "must hold train/ and val/"),
    (["--data", "{images}", "--epochs", "1", "--out", "{tmp}"], "already exists and is not empty"),
    (["--data", "{images}", "--epochs", "0", "--out", "{tmp}/r"], "expected an integer >= 1"),
    (["--data", "fashion-mnist", "--epochs", "1", "--out", "{tmp}/r", "--input-size", "1,3,8,8"],
     "the input size must be 1,1,28,28"),
    (["--data", "{images}", "--epochs", "1", "--out", "{tmp}/r", "-o", "x.pt"], "-o/--onnx belong"),
    ([], "prune needs --data DIR --epochs N --out RUN_DIR"),
])  # fmt: skip
def test_run_usage_errors(extra, message, images, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("not ours")
    args = [a.format(images=images, tmp=tmp_path) for a in extra]
    assert main(["prune", TINY, *args, *RUN_ARGS]) == 2
    assert message in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "not ours"


def test_more_usage_errors(images, tmp_path, capsys, monkeypatch):
    run = ["--data", str(images), "--epochs", "1", "--out", str(tmp_path / "r"), *RUN_ARGS]
    assert main(["prune", "cli_helpers:two_outputs", *run]) == 2
    assert "must give one logit per class: shape (batch, >= 3)" in capsys.readouterr().err
    assert main(["prune", "--resume", str(tmp_path / "r"), TINY]) == 2
    assert "drop cli_helpers:tiny_cnn" in capsys.readouterr().err
    assert main(["prune", "--resume", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run folder: run.json is missing" in capsys.readouterr().err
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"x")
    assert main(["prune", str(onnx_file), *run]) == 2
    assert "prune fine-tunes PyTorch models" in capsys.readouterr().err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert main(["prune", TINY, *run, "--log", "tensorboard"]) == 2
    assert "pip install tensorboard" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="mixed precision runs only where CUDA is present")  # fmt: skip
def test_cuda_run_uses_mixed_precision(images, config_file, tmp_path, capsys):
    args = [a for a in RUN_ARGS if a not in ("--device", "cpu")]
    assert main(["prune", TINY, "--data", str(images), "--config", str(config_file),
                 "--epochs", "1", "--out", str(tmp_path / "gpu"), *args]) == 0  # fmt: skip
    assert "training on cuda (bfloat16 mixed precision)" in capsys.readouterr().out


def test_a_run_stopped_after_its_summary_is_finished_by_resume(run_dir, tmp_path, capsys):
    """Stopped between summary.json and run.json, the run stayed "training" with no report,
    and --resume said only that nothing was left to resume."""
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    run = json.loads((folder / "run.json").read_text())
    run["status"] = "training"
    (folder / "run.json").write_text(json.dumps(run))
    for page in ("report.html", "report.md"):
        (folder / page).unlink()
    assert main(["prune", "--resume", str(folder)]) == 0
    assert "the run was stopped after its summary; wrote report.html" in capsys.readouterr().out
    assert json.loads((folder / "run.json").read_text())["status"] == "done"
    assert (folder / "report.html").is_file() and (folder / "report.md").is_file()


@pytest.mark.parametrize("bad", ["foreign", "truncated", "zeros"])
def test_a_checkpoint_that_is_not_the_runs_says_how_to_go_on(bad, run_dir, tmp_path, capsys):
    """Another torch.save dict gave "KeyError: 'epoch'"; a truncated one said so with no
    way forward."""
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    ckpt = folder / "checkpoint.pt"
    if bad == "foreign":
        torch.save({"model": {}}, ckpt)
    elif bad == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:100])
    else:  # it was said to hold objects beyond tensors: "add --trusted"
        ckpt.write_bytes(bytes(100))
    assert main(["prune", "--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "away to restart the run from epoch 0" in err and "--trusted" not in err
    if bad == "zeros":
        assert "it is truncated or not a torch.save file (Unsupported operand 0)" in err
    if bad == "foreign":
        assert f"{ckpt} is not a checkpoint of `filterprune prune` (it lacks epoch," in err


def test_a_slowdown_reads_as_slower():
    from filterprune.report.page import _speed

    assert _speed(2.0, 1.6) == "1.25x faster" and _speed(1.0, 1.1) == "1.10x slower"


def test_file_sizes_read_in_binary_units():
    """115,183 bytes read "112.5 KB" (a KB is 1,000 bytes)."""
    from filterprune.report.page import _size

    assert (_size(115_183), _size(900), _size(3 * 2**20)) == ("112.5 KiB", "900 B", "3.0 MiB")


def test_a_quantized_runs_load_snippet_rebuilds_its_model(images, tmp_path, monkeypatch):
    """The snippet loaded model_stripped.pt into the plain architecture, which refuses a
    quantized strip's state."""
    config = tmp_path / "q.json"
    config.write_text(json.dumps({"input_info": {"sample_size": [1, 3, 16, 16]}, "compression": [
        {"algorithm": "filter_pruning", "pruning_init": 0.5,
         "params": {"schedule": "baseline", "filters_multiple_of": 1}},
        {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 8}}}]}))
    out = tmp_path / "q"
    assert main(["prune", TINY, "--data", str(images), "--config", str(config), "--epochs", "1",
                 "--out", str(out), *RUN_ARGS]) == 0  # fmt: skip
    snippet = json.loads((out / "summary.json").read_text())["load"]
    assert "resize_to_state_dict" not in snippet
    # its text said "state_dict with the pruned filters removed" of model_stripped.pt
    page = (out / "report.md").read_text()
    assert "which resize_to_state_dict does not load" in page
    assert "latency (onnxruntime f32 -> " in page  # a QDQ file after an f32 one: said
    monkeypatch.chdir(out)
    scope = {}
    exec(snippet, scope)  # noqa: S102 - the snippet the report shows, as a user runs it
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        ours = scope["model"](x).numpy()
    theirs = scope["session"].run(None, {scope["session"].get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(ours - theirs).max() <= np.abs(theirs).max() / 50  # a step or two of int8


def test_a_finished_run_resumed_for_more_epochs_trains_them(
        run_dir, images, config_file, tmp_path, monkeypatch, capsys):  # fmt: skip
    """The added epochs trained at the learning rate 0 the finished cosine ended at; a stop
    in them left the earlier finish's summary.json, and the next --resume called the run
    done with the files of two epochs."""
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    with _stopped_in_epoch(monkeypatch, 3):
        assert main(["prune", "--resume", str(folder), "--epochs", "3"]) == 130
    assert not (folder / "summary.json").exists()
    assert main(["prune", "--resume", str(folder)]) == 0
    assert "resuming" in capsys.readouterr().out
    whole = tmp_path / "whole"  # three epochs from the start
    assert main(["prune", TINY, "--data", str(images), "--config", str(config_file),
                 "--epochs", "3", "--out", str(whole), *RUN_ARGS]) == 0  # fmt: skip
    lrs = [[h["lr"] for h in json.loads((f / "history.json").read_text())]
           for f in (folder, whole)]  # fmt: skip
    assert lrs[0][3] > 0 and lrs[0][3] == pytest.approx(lrs[1][3])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["level"] == pytest.approx(0.5)


def test_a_run_stopped_while_writing_its_report_is_finished_by_resume(run_dir, tmp_path,
                                                                      capsys):  # fmt: skip
    """Marked done before its report was written: --resume said only that nothing was
    left to resume."""
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    for page in ("report.html", "report.md"):
        (folder / page).unlink()
    assert main(["prune", "--resume", str(folder)]) == 0
    assert "wrote report.html" in capsys.readouterr().out
    assert (folder / "report.html").is_file() and (folder / "report.md").is_file()
