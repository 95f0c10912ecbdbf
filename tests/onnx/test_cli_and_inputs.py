"""The command line, bad inputs, atomic output, OpenVINO IR and the benchmark."""

import json
import os
import re
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx_helpers import (
    convert,
    export,
    layer,
    run,
    seed_torch,  # noqa: F401 - autouse fixture
    zero,
)
from torch import nn

from filterprune.cli import main
from filterprune.errors import ConversionError
from filterprune.onnx import remove_zero_filters


class Net(nn.Module):
    def __init__(self, mid=None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = mid or nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.conv2(self.mid(self.conv1(x)))
        return self.fc(torch.relu(y).mean((2, 3)))


@pytest.fixture
def masked(tmp_path):
    m = Net()
    zero(m.conv1, [0, 5])
    zero(m.conv2, [1, 2, 3])
    return export(m, torch.randn(1, 3, 8, 8), tmp_path / "masked.onnx")


def test_convert_cli_writes_smaller_equal_model(masked, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["convert", masked, "-o", str(out), "--report", "--report-json",
                 str(tmp_path / "r.json")]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "/conv1/Conv" in text and "5 filters removed" in text
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(str(out), x)[0], run(masked, x)[0], rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "r.json").read_text())["removed"] == 5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_run_onnxruntime_is_public_and_reads_paths_and_protos(masked):
    import filterprune.onnx as fo

    assert "run_onnxruntime" in fo.__all__
    proto = onnx.load(masked)
    feeds = fo.random_inputs(proto)
    x = next(iter(feeds.values()))
    from_path, from_proto = fo.run_onnxruntime(masked, feeds), fo.run_onnxruntime(proto, feeds)
    np.testing.assert_array_equal(from_path[0], from_proto[0])
    np.testing.assert_allclose(from_proto[0], run(masked, x)[0], rtol=1e-6)


def test_report_says_why_zero_filters_stay(tmp_path, capsys):
    m = Net(mid=nn.LocalResponseNorm(2))  # LRN: exported as an average over nearby channels
    zero(m.conv1, [0, 5])
    zero(m.conv2, [1])
    path = export(m, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    new, report = convert(path, torch.zeros(1, 3, 8, 8))
    s = layer(report, "conv1")
    assert (s.removed, s.kept_zero, s.reason) == (0, 2, "AveragePool: acts across channels")
    assert layer(report, "conv2").removed == 1
    assert main(["convert", path, "-o", str(tmp_path / "o.onnx"), "--report"]) == 0
    assert "zero filters kept" in capsys.readouterr().out


def test_unsupported_op_keeps_its_channels(masked, tmp_path):
    m = onnx.load(masked)
    conv1 = next(n for n in m.graph.node if n.name == "/conv1/Conv")
    lp = onnx.helper.make_node("LpNormalization", [conv1.output[0]], ["lp"], axis=1)
    for n in m.graph.node:
        n.input[:] = ["lp" if i == conv1.output[0] else i for i in n.input]
    m.graph.node.insert(list(m.graph.node).index(conv1) + 1, lp)
    path = str(tmp_path / "lp.onnx")
    onnx.save(m, path)
    new, report = convert(path, torch.zeros(1, 3, 8, 8))
    assert layer(report, "conv1").reason == "LpNormalization: unsupported op"
    assert layer(report, "conv2").removed == 3


def test_not_onnx_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    out = tmp_path / "out.onnx"
    assert main(["convert", str(bad), "-o", str(out)]) == 2
    assert "is not an ONNX model" in capsys.readouterr().err
    assert not out.exists()
    assert main(["convert", str(tmp_path / "missing.onnx"), "-o", str(out)]) == 2
    assert "No such ONNX file" in capsys.readouterr().err
    with pytest.raises(ConversionError, match="is not an ONNX model"):
        remove_zero_filters(bad.read_bytes())
    with pytest.raises(TypeError, match="Received: model of type int"):
        remove_zero_filters(123)



def test_a_missing_or_short_external_data_file_is_named(tmp_path):
    """It was called "not an ONNX model: it could not be parsed"."""
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    x, y = (helper.make_tensor_value_info(n, 1, s) for n, s in (("x", [1, 3, 8, 8]),
                                                                ("y", [1, 4, 6, 6])))  # fmt: skip
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.data",
              size_threshold=0)  # fmt: skip
    data = (tmp_path / "m.data").read_bytes()
    (tmp_path / "m.data").write_bytes(data[:100])
    with pytest.raises(ConversionError, match=r"keeps weights in external data files, and one "
                       r"is shorter than the model says .*Copy the data files"):  # fmt: skip
        remove_zero_filters(str(tmp_path / "m.onnx"))
    (tmp_path / "m.data").unlink()
    with pytest.raises(ConversionError, match=r"keeps weights in external data files, and one "
                       r"is missing .*m\.data.*Put the data files beside the model"):  # fmt: skip
        remove_zero_filters(str(tmp_path / "m.onnx"))

def test_no_zero_filters_gives_unchanged_copy(tmp_path, capsys):
    path = export(Net(), torch.randn(1, 3, 8, 8), tmp_path / "dense.onnx")
    out = tmp_path / "out.onnx"
    assert main(["convert", path, "-o", str(out)]) == 0
    assert "no zero filters found" in capsys.readouterr().out
    assert onnx.load(str(out)).graph == onnx.load(path).graph


def test_failed_check_keeps_old_output(masked, tmp_path, monkeypatch, capsys):
    import filterprune.onnx.convert as conv

    out = tmp_path / "out.onnx"
    out.write_bytes(b"old")
    monkeypatch.setattr(conv, "max_rel_diff", lambda a, b: 0.5)
    assert main(["convert", masked, "-o", str(out)]) == 2
    assert "differ from the input model's" in capsys.readouterr().err
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masked.onnx", "out.onnx"]


def test_dynamic_batch(tmp_path):
    m = Net()
    zero(m.conv1, [0, 5])
    x = torch.randn(2, 3, 8, 8)
    path = export(m, x, tmp_path / "dyn.onnx", input_names=["x"],
                  dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    new, report = convert(path, torch.zeros(3, 3, 8, 8))
    assert layer(report, "conv1").removed == 2
    assert any("dynamic" in n for n in report.notes)


class OneSample(nn.Module):
    def forward(self, x):
        return x.reshape(1, 3, 64)  # exported with a literal 1: two samples cannot run


def test_checks_run_two_samples_of_a_free_batch_and_one_where_the_graph_holds_one(tmp_path):
    """A runtime may run one sample on other kernels than several, so a free batch is
    checked with two; a graph fixed to one sample inside is checked with one."""
    from filterprune.onnx.convert import reference_run

    x = torch.randn(1, 3, 8, 8)
    free = export(Net(), x, tmp_path / "free.onnx", input_names=["x"],
                  dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    feeds, outputs = reference_run(onnx.load(free))
    assert feeds["x"].shape == (2, 3, 8, 8) and outputs[0].shape == (2, 4)
    held = export(OneSample(), x, tmp_path / "one.onnx", input_names=["x"],
                  dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    feeds, outputs = reference_run(onnx.load(held))
    assert feeds["x"].shape == (1, 3, 8, 8) and outputs[0].shape == (1, 3, 64)
    fixed = export(Net(), x, tmp_path / "fixed.onnx", input_names=["x"])
    assert reference_run(onnx.load(fixed))[0]["x"].shape == (1, 3, 8, 8)


def test_dynamic_spatial_dims_keep_channels_but_stay_correct(tmp_path):
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.conv2(torch.relu(self.conv1(x))).flatten(1)

    m = Flat()
    zero(m.conv1, [1, 2])
    path = export(m, torch.randn(1, 3, 8, 8), tmp_path / "dyn.onnx", input_names=["x"],
                  dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})  # fmt: skip
    new, report = convert(path, torch.zeros(1, 3, 8, 8))
    assert layer(report, "conv1").removed == 2  # conv -> relu -> conv needs no shapes


def test_openvino_ir(masked, tmp_path, capsys):
    ov = pytest.importorskip("openvino")
    xml = tmp_path / "m.xml"
    assert main(["convert", masked, "--to", "openvino", "-o", str(xml)]) == 0
    assert xml.exists() and xml.with_suffix(".bin").exists()
    # f32 stated: OpenVINO picks bf16 by itself on CPUs that have it (1.7e-3 off here)
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    out = compiled([x])[compiled.outputs[0]]
    np.testing.assert_allclose(out, run(masked, x)[0], rtol=1e-4, atol=1e-5)
    assert main(["convert", masked, "--to", "openvino", "-o", str(tmp_path / "m.onnx")]) == 2



def test_an_output_name_of_neither_format_is_refused(masked, tmp_path, capsys):
    """``-o m.txt`` wrote ONNX without a word; --to onnx still names any file."""
    assert main(["convert", masked, "-o", str(tmp_path / "m.txt")]) == 2
    assert "-o must end in .onnx or .xml (OpenVINO IR), or give --to" in capsys.readouterr().err
    assert not (tmp_path / "m.txt").exists()
    assert main(["convert", masked, "--to", "onnx", "-o", str(tmp_path / "m.bin")]) == 0

def test_openvino_pass_removes_no_more_than_ours(masked):
    pytest.importorskip("openvino")
    from filterprune.onnx.openvino import openvino_pruning_pass, ov_layers, read_openvino

    ours, report = remove_zero_filters(masked)
    theirs = ov_layers(openvino_pruning_pass(masked))
    mine = ov_layers(read_openvino(ours))
    assert sum(f for _, f in mine.values()) <= sum(f for _, f in theirs.values())


@pytest.mark.parametrize(("runtime", "batches"), [("onnxruntime", [1, 2]), ("openvino", [1])])
def test_bench_cli(masked, tmp_path, runtime, batches, capsys):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    small = tmp_path / "small.onnx"
    assert main(["convert", masked, "-o", str(small)]) == 0
    js = tmp_path / "bench.json"
    fast = ["--seconds", "0", "--warmup", "1", "--runs", "3", "--turn-seconds", "0.01"]
    batch = ",".join(map(str, batches))
    assert main(["bench", masked, str(small), "--runtime", runtime, "--batch", batch, *fast,
                 "--json", str(js)]) == 0  # fmt: skip
    rows = json.loads(js.read_text())
    assert [(r["label"], r["batch"]) for r in rows] == [
        (label, b) for b in batches for label in ("masked", "small")]
    out = capsys.readouterr().out
    assert rows[1]["flops_ratio"] > 1.0 and "speed-up" in out
    assert {r["precision"] for r in rows} == {"f32"}
    assert f"measured with {runtime} {rows[0]['runtime_version']}" in out  # the JSON's only
    assert main(["bench", masked, str(tmp_path / "nope.onnx")]) == 2
    assert os.path.exists(js)


def test_bench_names_whole_labels_precision_and_what_does_not_fit(masked, tmp_path, capsys):
    """Labels were cut to 14 characters (two files read alike), an IR under ONNX Runtime was
    'not an ONNX model', a thread count past the machine's passed silently, and an int8 row
    was ranked against a float one with nothing said."""
    from filterprune.onnx.bench import BenchRow, format_table

    rows = [BenchRow("small_model_pruned_30", "onnxruntime", 1, 1, 3, 2.0, 2.1, 500, 10),
            BenchRow("small_model_pruned_50", "onnxruntime", 1, 1, 3, 1.0, 1.1, 1000, 5,
                     precision="int8")]  # fmt: skip
    table = format_table(rows)
    assert "small_model_pruned_30" in table and "small_model_pruned_50" in table
    assert " int8 " in table and "different precisions" in table
    ir = tmp_path / "m.xml"
    ir.write_text("<net/>")
    assert main(["bench", masked, str(ir)]) == 2
    assert "is an OpenVINO IR: add --runtime openvino" in capsys.readouterr().err
    fast = ["--seconds", "0", "--warmup", "0", "--runs", "1", "--turn-seconds", "0"]
    assert main(["bench", masked, masked, "--threads", str(os.cpu_count() + 1), *fast]) == 0
    assert "more than this machine's" in capsys.readouterr().err


def test_analysis_failure_leaves_the_model_unchanged(masked, monkeypatch):
    module = sys.modules["filterprune.onnx.convert"]

    def broken(cap):
        raise ValueError("boom")

    monkeypatch.setattr(module, "find_removable", broken)
    new, report = remove_zero_filters(masked)
    assert new.graph == onnx.load(masked).graph and not report.changed
    assert "analysis failed (ValueError: boom)" in report.notes[0]


def test_rewrite_failure_leaves_the_model_unchanged(masked, monkeypatch):
    module = sys.modules["filterprune.onnx.convert"]

    def broken(cap, decision):
        raise KeyError("val_9")

    monkeypatch.setattr(module, "rewrite", broken)
    new, report = remove_zero_filters(masked)
    assert new.graph == onnx.load(masked).graph and not report.changed
    assert "rewrite failed (KeyError: 'val_9')" in report.notes[0]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_bench_runs_a_free_batch_export_at_each_batch(tmp_path, runtime):
    """``export_model`` files leave the batch axis free: bench sets it per batch size."""
    if runtime == "openvino":
        pytest.importorskip("openvino")
    from filterprune.onnx.bench import benchmark
    from filterprune.torch.onnx_export import export_onnx

    m = Net()
    zero(m.conv1, [0, 5])
    path = str(tmp_path / "free.onnx")
    export_onnx(m.eval(), (torch.randn(1, 3, 8, 8),), path)
    assert not isinstance(onnx.load(path).graph.input[0].type.tensor_type.shape.dim[0].dim_value
                          or None, int)  # fmt: skip
    rows = benchmark({"free": path}, runtime=runtime, batches=(1, 3), warmup=1, seconds=0,
                     min_runs=2)  # fmt: skip
    assert [(r.batch, r.runs >= 2) for r in rows] == [(1, True), (3, True)]


def test_an_openvino_failure_is_a_conversion_error_that_says_what_to_do(masked, monkeypatch):
    pytest.importorskip("openvino")
    import filterprune.onnx.openvino as fov

    class Core:
        def compile_model(self, *args):
            raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\n"
                               "[ReshapeTransformation] shape [1,10,1] is incompatible\n")

    real = fov._ov()
    fake = type("ov", (), {"Core": Core, "Model": real.Model, "convert_model": real.convert_model})
    monkeypatch.setattr(fov, "_ov", lambda: fake)
    with pytest.raises(ConversionError, match=r"^OpenVINO could not compile the model "
                       r"\(\[ReshapeTransformation\] shape \[1,10,1\] is incompatible\)\. "
                       r"This is OpenVINO's limit, not the cut: write ONNX instead"):
        fov.run_openvino(masked, {"input.1": np.zeros((1, 3, 8, 8), np.float32)})


def test_a_folder_where_the_ir_bin_goes_is_named(masked, tmp_path, capsys):
    """The error quoted the temporary name (.o.xml.<pid>...tmp/model.bin) after the work."""
    (tmp_path / "o.bin").mkdir()
    assert main(["convert", masked, "-o", str(tmp_path / "o.xml")]) == 2
    assert f"Cannot write {tmp_path / 'o.bin'}: it is a folder" in capsys.readouterr().err


def test_a_float16_file_openvino_rounds_otherwise_is_told_the_tolerance(tmp_path, capsys):
    """OpenVINO runs float16 a few 1e-4 off onnxruntime: the IR was refused at the default
    tolerance with no word of ``--tolerance``. The default is float16's rounding (1e-2)
    now; a tolerance given tighter is still told what would pass."""
    pytest.importorskip("openvino")

    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.f1, self.f2 = nn.Linear(16, 8), nn.Linear(8, 16)
            self.c2, self.fc = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 5)

        def forward(self, x):
            y = torch.relu(self.bn(self.c1(x)))
            w = torch.sigmoid(self.f2(torch.relu(self.f1(y.mean((2, 3))))))[:, :, None, None]
            return self.fc(torch.relu(self.c2(y * w)).amax((2, 3)))

    torch.manual_seed(0)
    m = SE().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    zero(m.c1, [0, 1, 2, 3])
    path = export(m.half(), torch.randn(1, 3, 16, 16).half(), tmp_path / "h.onnx")
    xml = str(tmp_path / "h.xml")
    assert main(["convert", path, "--to", "openvino", "-o", xml]) == 0
    assert main(["convert", path, "--to", "openvino", "-o", xml, "--tolerance", "1e-5"]) == 2
    told = re.search(r"a --tolerance of ([0-9.e-]+) takes", capsys.readouterr().err)
    assert told is not None
    assert main(["convert", path, "--to", "openvino", "-o", xml, "--tolerance", told[1]]) == 0


def test_bench_refuses_a_fixed_batch_and_says_when_models_differ(tmp_path, caplog, capsys):
    """A file fixed at batch 1 timed at batch 2 failed inside ONNX Runtime (a Reshape's
    raw error); two unrelated models were ranked with nothing said."""
    from filterprune.onnx.bench import benchmark

    caplog.set_level("WARNING", logger="filterprune")
    fixed, other = str(tmp_path / "fixed.onnx"), str(tmp_path / "other.onnx")

    class Flat(Net):
        def forward(self, x):
            return super().forward(x).reshape(1, 4)  # the batch written in the graph

    torch.onnx.export(Flat().eval(), (torch.randn(1, 3, 8, 8),), fixed, dynamo=False)
    torch.onnx.export(Net().eval(), (torch.randn(1, 3, 12, 12),), other, dynamo=False)
    with pytest.raises(ConversionError, match=r"fixed batch of 1 .* Give --batch 1"):
        benchmark({"fixed": fixed}, batches=(2,), seconds=0, min_runs=1)
    rows = benchmark({"a": fixed, "b": other}, seconds=0, min_runs=1, warmup=0,
                     turn_seconds=0)  # fmt: skip
    assert "b has inputs [(3, 12, 12)] where the baseline a has [(3, 8, 8)]" in caplog.text
    assert rows[0].throughput == pytest.approx(1e3 / rows[0].median_ms)  # one statistic


def test_an_openvino_ir_given_to_convert_is_named(tmp_path, capsys):
    """It said "Wire format was corrupt"."""
    ir = tmp_path / "small.xml"
    ir.write_text('<?xml version="1.0"?><net name="m" version="11"><layers/></net>')
    assert main(["convert", str(ir), "-o", str(tmp_path / "o.onnx")]) == 2
    assert "is an OpenVINO IR; this reads ONNX" in capsys.readouterr().err


def test_bench_reads_a_fixed_batch_from_batched_inputs_only():
    """A second input of shape [4] read as "a fixed batch of 4"."""
    from filterprune.onnx.bench import _fixed_batch

    assert _fixed_batch({"m": ([(None, 3, 8, 8), (4,)], [])}, 2) == ""
    assert "fixed batch of 1" in _fixed_batch({"m": ([(1, 3, 8, 8), (4,)], [])}, 2)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_bench_asks_for_the_sizes_a_file_leaves_free(tmp_path, runtime, capsys):
    """A file with free height and width was fed 1x1 images at batch 1 (8x8 at batch 8),
    its FLOPs counted at 1x1: a wrong speed-up, nothing said (OpenVINO failed)."""
    if runtime == "openvino":
        pytest.importorskip("openvino")
    from filterprune.onnx.bench import benchmark, model_flops

    free, fixed = str(tmp_path / "free.onnx"), str(tmp_path / "fixed.onnx")
    torch.onnx.export(Net().eval(), (torch.randn(1, 3, 12, 12),), free, dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})  # fmt: skip
    torch.onnx.export(Net().eval(), (torch.randn(1, 3, 12, 12),), fixed, dynamo=False)
    fast = {"runtime": runtime, "seconds": 0, "min_runs": 1, "warmup": 0, "turn_seconds": 0}
    with pytest.raises(ConversionError, match=r"free's input 'x' is bx3xhxw: its sizes past "
                       r"the batch axis are free.*--input-size 1,3,H,W"):  # fmt: skip
        benchmark({"free": free, "fixed": fixed}, **fast)
    rows = benchmark({"free": free, "fixed": fixed}, batches=(2,), input_size=(1, 3, 12, 12),
                     **fast)  # fmt: skip
    assert [r.inputs for r in rows] == ["x 2x3x12x12", "input.1 2x3x12x12"]
    assert rows[0].flops == rows[1].flops == model_flops(fixed) > 2 * 8 * 8 * 9 * 144
    with pytest.raises(ConversionError, match=r"size 1 is fixed at 3"):
        benchmark({"free": free}, input_size=(1, 4, 12, 12), **fast)
    with pytest.raises(ConversionError, match=r"which is bx3xhxw: it has 4 sizes"):
        benchmark({"free": free}, input_size=(3, 12, 12), **fast)
    assert main(["bench", free, fixed, "--input-size", "1,3,12,12", "--runtime", runtime,
                 "--seconds", "0", "--runs", "1", "--turn-seconds", "0"]) == 0  # fmt: skip
    assert "batch 1 feeds x 1x3x12x12" in capsys.readouterr().out


def test_bench_leaves_an_input_without_a_batch_axis_as_it_is(tmp_path):
    """A second input of shape [8] was fed as [batch] (at batch 2 a broadcast error)."""
    from filterprune.onnx.bench import benchmark

    class Scaled(Net):
        def forward(self, x, scale):
            return super().forward(x) * scale[:4]

    path = str(tmp_path / "scaled.onnx")
    torch.onnx.export(Scaled().eval(), (torch.randn(1, 3, 8, 8), torch.ones(8)), path,
                      dynamo=False, input_names=["x", "scale"],
                      dynamic_axes={"x": {0: "b"}})  # fmt: skip
    rows = benchmark({"a": path}, batches=(1, 2), seconds=0, min_runs=1, warmup=0,
                     turn_seconds=0)  # fmt: skip
    assert [r.inputs for r in rows] == ["x 1x3x8x8, scale 8", "x 2x3x8x8, scale 8"]


def test_bench_feeds_the_batch_wherever_an_input_has_its_symbol(tmp_path):
    """A recurrent state ``[2, batch, 4]`` was refused as a size left free."""
    from filterprune.onnx.bench import benchmark

    class Stateful(Net):
        def forward(self, x, h):
            return super().forward(x) + h.sum(0)

    path = str(tmp_path / "stateful.onnx")
    torch.onnx.export(Stateful().eval(), (torch.randn(1, 3, 8, 8), torch.ones(2, 1, 4)), path,
                      dynamo=False, input_names=["x", "h"],
                      dynamic_axes={"x": {0: "b"}, "h": {1: "b"}})  # fmt: skip
    rows = benchmark({"a": path}, batches=(3,), seconds=0, min_runs=1, warmup=0,
                     turn_seconds=0)  # fmt: skip
    assert rows[0].inputs == "x 3x3x8x8, h 2x3x4"


def test_bench_counts_a_fixed_batch_files_flops_at_its_batch(tmp_path):
    """Counted at batch 1, a file exported at batch 2 with a reshape written for it lost
    its Linear's FLOPs (13% low)."""
    from filterprune.onnx.bench import benchmark, model_flops

    class Flat(Net):
        def forward(self, x):
            y = self.conv2(self.mid(self.conv1(x)))
            return self.fc(torch.relu(y).mean((2, 3)).reshape(2, 8))  # the batch in the graph

    path = str(tmp_path / "two.onnx")
    torch.onnx.export(Flat().eval(), (torch.randn(2, 3, 8, 8),), path, dynamo=False)
    rows = benchmark({"a": path}, batches=(2,), seconds=0, min_runs=1, warmup=0,
                     turn_seconds=0)  # fmt: skip
    assert rows[0].flops == model_flops(path) > 2 * (8 * 3 * 9 + 8 * 8 * 9) * 64
