"""The command line as a whole: help with examples, exit codes, ``python -m filterprune``."""

import os
import subprocess
import sys

import pytest

import filterprune.cli as cli
from filterprune.cli import main

COMMANDS = ["analyze", "prune", "report", "convert", "bench"]


def test_python_m_filterprune_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "filterprune", "--help"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0
    for name in COMMANDS:
        assert name in done.stdout
    assert "Exit codes: 0 success, 2 bad usage" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "filterprune", "bench", "a.onnx", "b.onnx",
                          "--runs", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "expected an integer >= 1" in bad.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"filterprune {command} " in text.split("examples:")[1]


@pytest.mark.parametrize(("args", "message"), [
    (["bench", "a.onnx", "b.onnx", "--runs", "0"], "argument --runs: expected an integer >= 1"),
    (["bench", "a.onnx", "b.onnx", "--threads", "0"], "argument --threads: expected an integer"),
    (["bench", "a.onnx", "b.onnx", "--seconds", "-1"], "argument --seconds: expected a number"),
    (["bench", "a.onnx", "b.onnx", "--batch", "0"], "expected integers >= 1"),
    (["convert", "m.onnx", "-o", "o.onnx", "--tolerance", "-1"], "expected a number >= 0"),
    (["analyze", "resnet18", "--input-size", "1,3,x"], "expected a shape of positive integers"),
    (["analyze", "resnet18", "--level", "-0.1"], "expected a number in [0, 1)"),
    (["prune", "resnet18", "--optimizer", "adam"], "invalid choice: 'adam'"),
    (["prune", "resnet18", "--seed", "4294967296"],
     "argument --seed: expected an integer in [0, 4294967295]. Received: '4294967296'"),
    (["prune", "resnet18", "--seed", "-1"], "argument --seed: expected an integer in [0, "),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
])  # fmt: skip
def test_bad_arguments_exit_2(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_failures_exit_1_without_a_traceback(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("CUDA error: out of memory\nmore detail")

    monkeypatch.setitem(cli.SUBCOMMANDS, "convert", (*cli.SUBCOMMANDS["convert"][:2], broken))
    assert main(["convert", "m.onnx", "-o", "o.onnx"]) == 1
    err = capsys.readouterr().err
    assert err == ("filterprune: error: RuntimeError: CUDA error: out of memory "
                   "(add --traceback for details)\n")  # fmt: skip
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["--traceback", "convert", "m.onnx", "-o", "o.onnx"])
    with pytest.raises(RuntimeError, match="out of memory"):  # where the hint puts it: last
        main(["convert", "m.onnx", "-o", "o.onnx", "--traceback"])

    def read_only(args):
        raise PermissionError("read-only file system")

    monkeypatch.setitem(cli.SUBCOMMANDS, "convert", (*cli.SUBCOMMANDS["convert"][:2], read_only))
    assert main(["convert", "m.onnx", "-o", "o.onnx"]) == 1
    assert "PermissionError: read-only file system" in capsys.readouterr().err


def test_an_interrupted_one_shot_prune_offers_no_resume(monkeypatch, tmp_path, capsys):
    import filterprune.torch.cli as torch_cli

    def interrupt(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch_cli, "run_one_shot", interrupt)
    assert main(["prune", "resnet18", "-o", str(tmp_path / "o.pt")]) == 130
    assert capsys.readouterr().err == "filterprune: error: interrupted.\n"


def test_output_path_under_a_file_names_the_option(tmp_path, capsys):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    assert main(["convert", str(model), "-o", str(blocker / "o.onnx")]) == 2
    assert f"`-o` must be in a folder. Received: -o {blocker}/o.onnx, but {blocker} is a file" \
        in capsys.readouterr().err  # fmt: skip
    assert main(["bench", str(model), str(model), "--json", str(blocker / "b.json")]) == 2
    assert "`--json` must be in a folder" in capsys.readouterr().err


def test_an_output_folder_that_refuses_files_is_named_before_the_work(tmp_path, capsys,
                                                                      monkeypatch):  # fmt: skip
    """``--json /proc/b.json`` failed only after the whole benchmark had run."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")  # not read: the path is checked first
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    assert main(["bench", str(model), str(model), "--json", str(tmp_path / "b.json")]) == 2
    assert (f"`--json` must be in a folder this process can write. Received: --json "
            f"{tmp_path}/b.json, but {tmp_path} refuses a new file (Permission denied)"
            in capsys.readouterr().err)  # fmt: skip


def test_one_shot_onnx_output_must_be_named_onnx(tmp_path, capsys):
    """It was written as ONNX whatever its name, after the whole prune had run."""
    out = tmp_path / "o.txt"
    assert main(["prune", "resnet18", "-o", str(tmp_path / "o.pt"), "--onnx", str(out)]) == 2
    assert f"`--onnx` writes ONNX: its name must end in .onnx. Received: --onnx {out}" \
        in capsys.readouterr().err  # fmt: skip
    assert not out.exists()


def test_one_shot_outputs_never_overwrite_its_inputs_or_each_other(tmp_path, capsys):
    """``-o w.pt --weights w.pt`` replaced the dense weights, ``-o cfg.json`` the config,
    and ``-o x.onnx --onnx x.onnx`` the state_dict: each exited 0."""
    weights, config = tmp_path / "w.pt", tmp_path / "cfg.json"
    weights.write_bytes(b"dense")
    config.write_text("{}")
    cases = [
        (["--weights", str(weights), "-o", str(weights)],
         f"`-o` would overwrite --weights {weights}"),
        (["--config", str(config), "-o", str(config)], f"`-o` would overwrite --config {config}"),
        (["-o", str(tmp_path / "x.onnx"), "--onnx", str(tmp_path / "x.onnx")],
         f"`--onnx` would overwrite -o {tmp_path / 'x.onnx'}"),
    ]  # fmt: skip
    for flags, message in cases:
        assert main(["prune", "resnet18", *flags]) == 2
        assert message in capsys.readouterr().err
    assert weights.read_bytes() == b"dense" and config.read_text() == "{}"


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_a_run_folder_that_cannot_be_one_is_named(where, tmp_path, capsys):
    """``--out afile`` said "already exists and is not empty. Continue that run with
    --resume afile"; ``--out afile/run`` failed with "[Errno 20] Not a directory"."""
    afile = tmp_path / "afile"
    afile.write_text("")
    out = afile if where == "file" else afile / "run"
    assert main(["prune", "resnet18", "--data", str(tmp_path), "--epochs", "1", "--out",
                 str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert (f"`--out` must be a folder. Received: --out {out}, which is a file" in err
            if where == "file" else f"but {afile} is a file. Choose another path." in err)


def test_prune_without_model_or_resume(capsys):
    assert main(["prune"]) == 2
    assert "MODEL is required (or --resume RUN_DIR)" in capsys.readouterr().err


def test_report_options_of_checkpoints_need_checkpoint(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--plot", "x.png"]) == 2
    assert "go with --checkpoint" in capsys.readouterr().err


def test_warnings_made_while_the_model_is_compressed_reach_stderr(tmp_path):
    """They were printed into the sink that hides tracing's own printout: a misspelt
    config key went unsaid, and the run went on without what the user asked for."""
    config = tmp_path / "c.json"
    config.write_text('{"input_info": {"sample_size": [1, 3, 32, 32]}, "compression": '
                      '{"algorithm": "filter_pruning", "pruning_init": 0.5}, '
                      '"accuracy_aware_trainig": {}}')  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "filterprune", "analyze", "torchvision:resnet18",
                           "--config", str(config)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert ("Unknown top-level key `accuracy_aware_trainig` is not read. Did you mean "
            "`accuracy_aware_training`?") in done.stderr


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """`filterprune ... | head` ended with a BrokenPipeError message and exit code 1."""
    command = [sys.executable, "-m", "filterprune", "analyze", "torchvision:resnet18",
               "--input-size", "1,3,32,32"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the table is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141  # 128 + SIGPIPE, as shell tools end
    assert "BrokenPipe" not in err and "Traceback" not in err


def test_a_reader_that_leaves_early_does_not_stop_the_files(tmp_path):
    """`prune ... -o F | head -1` ended at its first line: F was not written."""
    out, onnx_out = tmp_path / "p.pt", tmp_path / "p.onnx"
    command = [sys.executable, "-m", "filterprune", "prune", "torchvision:resnet18",
               "--input-size", "1,3,32,32", "-o", str(out), "--onnx", str(onnx_out)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and "Traceback" not in err
    assert out.stat().st_size > 0 and onnx_out.stat().st_size > 0


@pytest.mark.parametrize(("name", "says"), [
    ("m.pt2", "a torch.export program"), ("m.h5", "a Keras 2 HDF5 file"),
    ("m.xml", "an OpenVINO IR"), ("saved", "a TensorFlow SavedModel"),
    ("scripted.pt", "a TorchScript file"),
])  # fmt: skip
def test_model_files_the_commands_cannot_read_are_named(name, says, tmp_path, capsys,
                                                        monkeypatch):  # fmt: skip
    """They were told to be a torchvision name, or a truncated torch.save file."""
    import torch

    path = tmp_path / name
    if name == "saved":
        path.mkdir()
        (path / "saved_model.pb").write_bytes(b"")
    elif name == "scripted.pt":
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    else:
        path.write_bytes(b"x")
    assert main(["analyze", str(path)]) == 2
    assert says in capsys.readouterr().err


def test_a_pickled_model_finds_its_class_next_to_the_user(tmp_path, monkeypatch, capsys):
    """The console script does not put the working folder on the path as `python -m` does:
    unpickling a class from ./nets.py failed with a bare ModuleNotFoundError."""
    (tmp_path / "nets.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a, self.b = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 1)\n"
        "    def forward(self, x):\n"
        "        return self.b(torch.relu(self.a(x)))\n")
    code = ("import sys, torch; sys.path.insert(0, '.'); import nets; "
            "torch.save(nets.Net(), 'net.pt')")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert main(["analyze", "net.pt", "--trusted", "--input-size", "1,3,8,8"]) == 0
    assert "groups" in capsys.readouterr().out.lower()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked children: POSIX only")
def test_a_forked_helper_ends_on_sigterm_as_it_would_without_the_cli():
    """OpenVINO's telemetry forks a process and terminates it: under the CLI's handler each
    printed a traceback ending in _Terminated (exit 1 instead of -15)."""
    import multiprocessing
    import signal
    import time

    before = cli._on_sigterm()
    try:
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
        child.start()
        time.sleep(0.2)
        child.terminate()
        child.join(10)
        assert child.exitcode == -signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, before)
