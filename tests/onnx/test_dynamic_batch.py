"""Reshape targets computed from a dynamic batch size (exports with a dynamic batch axis)."""

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from onnx_helpers import (
    convert,
    export,
    layer,
    save_graph,
    seed_torch,  # noqa: F401 - autouse fixture
    weight_shape,
    zero,
)
from torch import nn

from filterprune.onnx import _batch, remove_zero_filters


def _flatten_chain(tmp_path, allowzero=0, rest=128):
    """x -> Conv a (2 zero filters) -> Relu -> Reshape(x, [N, 128]) -> MatMul w1
    (2 zero columns) -> Relu -> MatMul w2; the target is built as tf2onnx's Flatten
    does: ``Concat(Shape(h)[0:1], [128])``. The current torch exporter sets
    ``allowzero`` on every Reshape."""
    rng = np.random.default_rng(0)
    w = {"wa": rng.normal(size=(8, 3, 3, 3)), "ba": rng.normal(size=8),
         "w1": rng.normal(size=(128, 6)), "w2": rng.normal(size=(6, 5)),
         "zero": np.array([0], dtype=np.int64), "one": np.array([1], dtype=np.int64),
         "rest": np.array([rest], dtype=np.int64)}  # fmt: skip
    w["wa"][[2, 5]] = w["ba"][[2, 5]] = 0
    w["w1"][:, [1, 4]] = 0
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("Shape", ["h"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
             helper.make_node("Concat", ["n", "rest"], ["target"], axis=0),
             helper.make_node("Reshape", ["h", "target"], ["flat"], allowzero=allowzero),
             helper.make_node("MatMul", ["flat", "w1"], ["m1"], name="fc1"),
             helper.make_node("Relu", ["m1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["y"], name="fc2")]  # fmt: skip
    return save_graph(tmp_path, nodes, w, ["N", 3, 4, 4], ["N", 5])


def test_a_target_read_from_another_computed_reshape_is_known(tmp_path):
    """tf2onnx's UpSampling2D at opset 13: a Reshape target built from the Shape of an
    earlier computed reshape. The shapes after it were unknown, so the layers there were
    left out of the FLOPs (1.28M of 1.58M counted) and a's zero filter kept."""
    rng = np.random.default_rng(0)
    w = {"wa": rng.normal(size=(8, 3, 3, 3)), "ba": rng.normal(size=8),
         "wb": rng.normal(size=(16, 8, 3, 3)), "zero": np.array([0], dtype=np.int64),
         "two": np.array([2], dtype=np.int64), "m1": np.array([-1], dtype=np.int64),
         "hw": np.array([4, 4], dtype=np.int64)}  # fmt: skip
    w["wa"][1] = w["ba"][1] = 0
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "two"], ["nc"]),
             helper.make_node("Concat", ["nc", "m1"], ["t1"], axis=0),
             helper.make_node("Reshape", ["r", "t1"], ["flat"]),  # [N, C, 16]
             helper.make_node("Shape", ["flat"], ["s2"]),
             helper.make_node("Slice", ["s2", "zero", "two"], ["nc2"]),
             helper.make_node("Concat", ["nc2", "hw"], ["t2"], axis=0),
             helper.make_node("Reshape", ["flat", "t2"], ["back"]),  # [N, C, 4, 4]
             helper.make_node("Conv", ["back", "wb"], ["y"], name="b", pads=[1, 1, 1, 1])]
    path = save_graph(tmp_path, nodes, w, ["N", 3, 4, 4], ["N", 16, 4, 4], opset=13)
    new, report = convert(path, torch.zeros(2, 3, 4, 4))
    assert report.flops_before == 2 * 16 * (8 * 27 + 16 * 72)
    assert layer(report, "a").removed == 1 and weight_shape(new, "b") == (16, 7, 3, 3)


def test_layers_left_out_of_the_flops_are_named(tmp_path):
    """After an op of another domain the file gives no shapes: b's FLOPs were left out
    without a word."""
    rng = np.random.default_rng(0)
    w = {"wa": rng.normal(size=(8, 3, 3, 3)), "wb": rng.normal(size=(8, 8, 3, 3)),
         "wc": rng.normal(size=(4, 8, 1, 1))}  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Mystery", ["a"], ["r"], domain="my.ops"),
             helper.make_node("Conv", ["r", "wb"], ["b"], name="b", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "wc"], ["y"], name="c")]
    path = save_graph(tmp_path, nodes, w, [1, 3, 4, 4], [1, 4, 4, 4])
    model = onnx.load(path)
    model.opset_import.append(helper.make_opsetid("my.ops", 1))
    _, report = remove_zero_filters(model, verify=False)
    assert report.flops_before == 2 * 16 * (8 * 27 + 4 * 8)
    assert ("FLOPs leave out 1 layer(s) whose output shape the file does not give (b)"
            in " ".join(report.notes))


def test_layers_counted_at_a_free_size_of_1_are_named(tmp_path):
    """A free batch folded into an upsampling reshape leaves e's spatial size computed at
    run time: its FLOPs were counted at 1x1 without a word (64 where it takes 9216)."""

    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.e = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            n, c, h, w = y.shape
            z = y.reshape(n, c, h, 1, w, 1).expand(n, c, h, 2, w, 2)
            t = z.shape
            return self.e(z.reshape(t[0], t[1], t[2] * t[3], t[4] * t[5]))

    path = export(Up(), torch.randn(1, 3, 6, 6), tmp_path / "m.onnx", input_names=["x"],
                  dynamic_axes={"x": {0: "N"}})
    _, report = remove_zero_filters(path, verify=False)
    assert ("FLOPs count 1 layer(s) at size 1 along output dimensions the file computes at "
            "run time (/e/Conv)") in report.notes


@pytest.mark.parametrize("allowzero", [0, 1])
def test_computed_flatten_target_is_rewritten(allowzero, tmp_path):
    new, report = convert(_flatten_chain(tmp_path, allowzero), np.zeros((3, 3, 4, 4)))
    assert layer(report, "a").removed == 2 and layer(report, "fc1").removed == 2
    assert weight_shape(new, "fc1") == (96, 4) and weight_shape(new, "fc2") == (4, 5)
    assert not any(n.op_type == "Shape" for n in new.graph.node)  # a constant target now


def test_unreadable_target_keeps_channels_and_outputs(tmp_path, monkeypatch):
    """When the target cannot be read, the flattened channels stay, and what follows the
    reshape is still judged by its real values (it used to look all-zero)."""
    monkeypatch.setattr(_batch, "batch_free_target", lambda *args: None)
    new, report = convert(_flatten_chain(tmp_path, allowzero=1), np.zeros((3, 3, 4, 4)))
    assert layer(report, "a").removed == 0 and layer(report, "a").kept_zero == 2
    assert layer(report, "a").reason == "Reshape: reshape to a shape computed in the graph"
    assert layer(report, "fc1").removed == 2
    assert weight_shape(new, "fc1") == (128, 4) and weight_shape(new, "fc2") == (4, 5)


def test_a_batch_copy_is_not_written_where_0_means_empty(tmp_path):
    """``Concat(Shape(h)[0:1], [-1])`` is rewritten as ``[0, -1]`` (0 copies the batch),
    but not under ``allowzero``, where 0 is an empty axis: that target stays computed."""
    new, report = convert(_flatten_chain(tmp_path, 0, -1), np.zeros((3, 3, 4, 4)))
    assert layer(report, "a").removed == 2
    new, report = convert(_flatten_chain(tmp_path, 1, -1), np.zeros((3, 3, 4, 4)))
    assert layer(report, "a").removed == 0 and layer(report, "fc1").removed == 2
    assert layer(report, "a").reason == "Reshape: reshapes a tensor with dynamic dimensions"


@pytest.mark.parametrize("view", ["size0_minus1", "size0_literal"])
def test_torch_view_with_dynamic_batch(view, tmp_path):
    """``x.view(x.size(0), -1)`` exports ``Concat(Shape(x)[0], -1)``: the batch entry
    becomes 0 (copy), as -1 is taken; with a literal width it becomes -1."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 16, 10)

        def forward(self, x):
            h = torch.relu(self.conv(x))
            return self.fc(h.view(h.size(0), -1 if view == "size0_minus1" else 8 * 16))

    m = Net()
    zero(m.conv, [0, 3, 7])
    path = export(m, torch.randn(2, 3, 4, 4), tmp_path / "m.onnx", input_names=["x"],
                  dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    new, report = convert(path, torch.zeros(5, 3, 4, 4))
    assert layer(report, "conv").removed == 3
    assert weight_shape(new, "fc") == (10, 5 * 16)


def test_rows_times_batch_reshape(tmp_path):
    """tf2onnx's Dense on a 4-D tensor: reshape to (batch * rows, C), MatMul, reshape back.
    The first dimension there is not the batch; shapes come from evaluating the targets."""
    rng = np.random.default_rng(0)
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    w = {"wa": rng.normal(size=(8, 3, 1, 1)), "w1": rng.normal(size=(8, 6)),
         "w2": rng.normal(size=(6, 5)), "lo": i64(0), "hi": i64(3), "c8": i64(8),
         "c6": i64(6)}  # fmt: skip
    w["wa"][[0, 7]] = 0
    w["w1"][:, [1, 4]] = 0
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="a"),
             helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Shape", ["t"], ["s"]),
             helper.make_node("Slice", ["s", "lo", "hi"], ["lead"]),
             helper.make_node("ReduceProd", ["lead"], ["rows"], keepdims=1),
             helper.make_node("Concat", ["rows", "c8"], ["target1"], axis=0),
             helper.make_node("Reshape", ["t", "target1"], ["r"]),
             helper.make_node("MatMul", ["r", "w1"], ["m"], name="fc1"),
             helper.make_node("Concat", ["lead", "c6"], ["target2"], axis=0),
             helper.make_node("Reshape", ["m", "target2"], ["back"]),
             helper.make_node("Relu", ["back"], ["h"]),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc2")]  # fmt: skip
    new, report = convert(save_graph(tmp_path, nodes, w, ["N", 3, 4, 4], ["N", 4, 4, 5]),
                          np.zeros((3, 3, 4, 4)))  # fmt: skip
    assert layer(report, "a").removed == 0 and layer(report, "a").kept_zero == 2
    assert layer(report, "fc1").removed == 2
    assert weight_shape(new, "fc1") == (8, 4) and weight_shape(new, "fc2") == (4, 5)
    # 16 rows per sample (4 x 4) in every layer, the MatMuls included
    flops = (2 * 16 * (3 * 8 + 8 * 6 + 6 * 5), 2 * 16 * (3 * 8 + 8 * 4 + 4 * 5))
    assert (report.flops_before, report.flops_after) == flops


class _Upsampled(nn.Module):
    """An FPN step: a coarse map resized to a finer one's size read in forward."""

    def __init__(self, lat_in=32):
        super().__init__()
        self.hi, self.lo = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 32, 3, 2, 1)
        self.lat, self.head = nn.Conv2d(32, 16, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        h, low = torch.relu(self.hi(x)), torch.relu(self.lo(x))
        return self.head(h + nn.functional.interpolate(self.lat(low), size=h.shape[-2:]))


def test_resize_sizes_read_from_its_input_follow_the_cut(tmp_path):
    """``F.interpolate(size=h.shape[-2:])`` with a free batch exports Resize sizes
    ``Concat(Shape(x)[0:2], [h, w])``: the channel entry is the input's own, so the
    zero filters before it go (held before: "Resize sizes are not constants")."""
    m = _Upsampled()
    zero(m.hi, [0, 3])
    zero(m.lat, [0, 3])
    path = export(m, torch.randn(2, 3, 8, 8), tmp_path / "m.onnx", input_names=["x"],
                  dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    new, report = convert(path, torch.zeros(3, 3, 8, 8))
    assert layer(report, "/hi/").removed == 2 and layer(report, "/lat/").removed == 2
    assert weight_shape(new, "/head/") == (4, 14, 1, 1)


def test_resize_sizes_with_a_written_channel_count_keep_the_channels(tmp_path):
    """Sizes ``Concat(Shape(x)[0:1], [8, 6, 6])``: the 8 would not follow a cut."""
    rng = np.random.default_rng(0)
    w = {"wa": rng.normal(size=(8, 3, 1, 1)), "wb": rng.normal(size=(2, 8, 1, 1)),
         "zero": np.array([0], dtype=np.int64), "one": np.array([1], dtype=np.int64),
         "rest": np.array([8, 6, 6], dtype=np.int64), "roi": np.zeros(0),
         "scales": np.zeros(0)}  # fmt: skip
    w["wa"][[2, 5]] = 0
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="a"),
             helper.make_node("Shape", ["a"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
             helper.make_node("Concat", ["n", "rest"], ["sizes"], axis=0),
             helper.make_node("Resize", ["a", "roi", "scales", "sizes"], ["r"]),
             helper.make_node("Conv", ["r", "wb"], ["y"], name="b")]  # fmt: skip
    path = save_graph(tmp_path, nodes, w, ["N", 3, 4, 4], ["N", 2, 6, 6])
    _, report = convert(path, torch.zeros(2, 3, 4, 4))
    assert report.removed == 0


def test_expand_to_a_computed_shape_keeps_the_channels(tmp_path):
    """``gate.expand_as(h)`` with a free batch: Expand to ``Concat(Shape(x)[0:1],
    [8, 4, 4])``, whose 8 would not follow a cut (a bare KeyError before)."""
    rng = np.random.default_rng(0)
    w = {"wa": rng.normal(size=(8, 3, 1, 1)), "wb": rng.normal(size=(2, 8, 1, 1)),
         "zero": np.array([0], dtype=np.int64), "one": np.array([1], dtype=np.int64),
         "rest": np.array([8, 4, 4], dtype=np.int64)}  # fmt: skip
    w["wa"][[2, 5]] = 0
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="a"),
             helper.make_node("ReduceMean", ["a"], ["g"], axes=[2, 3], keepdims=1),
             helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
             helper.make_node("Concat", ["n", "rest"], ["shape"], axis=0),
             helper.make_node("Expand", ["g", "shape"], ["e"]),
             helper.make_node("Mul", ["a", "e"], ["m"]),
             helper.make_node("Conv", ["m", "wb"], ["y"], name="b")]  # fmt: skip
    path = save_graph(tmp_path, nodes, w, ["N", 3, 4, 4], ["N", 2, 4, 4])
    _, report = convert(path, torch.zeros(2, 3, 4, 4))
    assert report.removed == 0
    assert "its shape is computed in the file" in str(report)


def test_a_dynamic_length_the_model_cannot_run_at_1_is_checked_at_another(tmp_path):
    """A text CNN's valid convolution cannot run a sequence of length 1, the size the
    check gave every dynamic dimension: convert failed with a bare onnxruntime error."""

    class TextCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.c = nn.Embedding(50, 16), nn.Conv1d(16, 24, 3)
            self.fc = nn.Linear(24, 4)

        def forward(self, tok):
            return self.fc(torch.relu(self.c(self.emb(tok).transpose(1, 2))).amax(2))

    m = TextCNN().eval()
    zero(m.c, list(range(8)))
    tok = torch.randint(0, 50, (2, 20))
    path = export(m, tok, tmp_path / "t.onnx", input_names=["tok"],
                  dynamic_axes={"tok": {0: "n", 1: "s"}})  # fmt: skip
    new, report = remove_zero_filters(path)  # checked inside, at length 32
    assert layer(report, "/c/").removed == 8


def test_a_stack_of_branches_summed_with_a_dynamic_batch_loses_zero_filters(tmp_path):
    """``torch.stack([a, b], 0).sum(0)`` exports Unsqueeze + Concat + ReduceSum: the
    Unsqueeze was held as a reshape of a dynamic batch, though it moves no element."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.head(torch.relu(torch.stack([self.a(x), self.b(x)], 0).sum(0)))

    net = Net()
    zero(net.a, [1, 6])
    zero(net.b, [1, 6])
    path = export(net, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", input_names=["x"],
                  dynamic_axes={"x": {0: "n"}})  # fmt: skip
    new, report = convert(path, torch.randn(3, 3, 8, 8))
    assert layer(report, "/a/").removed == 2 and weight_shape(new, "head") == (4, 6, 1, 1)


def test_gathernd_over_static_spatial_axes_passes_channels(tmp_path):
    """The current torch exporter writes an adaptive pool whose bins do not divide the map
    (PSPNet's) as Transpose -> GatherND over (H, W): the channels after them pass whole.
    The GatherND was an unknown op, then held for the dynamic batch it carries along."""
    rng = np.random.default_rng(0)
    w = {"wa": rng.normal(size=(8, 4, 3, 3)), "ba": rng.normal(size=8),
         "wb": rng.normal(size=(5, 8, 1, 1)),
         "idx": np.array([[0, 1], [5, -1], [2, 3]], dtype=np.int64),
         "axes": np.array([3], dtype=np.int64)}  # fmt: skip
    w["wa"][[1, 4, 6]] = w["ba"][[1, 4, 6]] = 0
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("Transpose", ["h"], ["t"], perm=[2, 3, 0, 1]),  # H, W, N, C
             helper.make_node("GatherND", ["t", "idx"], ["g"]),  # 3 points, N, C
             helper.make_node("Transpose", ["g"], ["p"], perm=[1, 2, 0]),  # N, C, 3 points
             helper.make_node("Unsqueeze", ["p", "axes"], ["u"]),
             helper.make_node("Conv", ["u", "wb"], ["y"], name="b")]  # fmt: skip
    new, report = convert(save_graph(tmp_path, nodes, w, ["N", 4, 6, 6], ["N", 5, 3, 1]),
                          np.zeros((2, 4, 6, 6)))
    assert layer(report, "a").removed == 3
    assert weight_shape(new, "b") == (5, 5, 1, 1)


def test_gathernd_picking_channels_keeps_them(tmp_path):
    rng = np.random.default_rng(0)
    w = {"wa": rng.normal(size=(8, 4, 3, 3)), "ba": rng.normal(size=8),
         "idx": np.array([[0, 0], [0, 2], [0, 7]], dtype=np.int64)}  # (batch, channel) pairs
    w["wa"][[1, 4, 6]] = w["ba"][[1, 4, 6]] = 0
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("GatherND", ["h", "idx"], ["y"])]  # fmt: skip
    _, report = convert(save_graph(tmp_path, nodes, w, [1, 4, 6, 6], [3, 6, 6]),
                        np.zeros((1, 4, 6, 6)))
    assert layer(report, "a").removed == 0 and layer(report, "a").kept_zero == 3
    assert "GatherND picks its entries by index" in str(report)


class _InitialState(nn.Module):
    """An LSTM-style gate whose state starts as ``fill_like(w)`` (DIA-Net): exported with a
    free batch as ``Expand(value, Shape(w))``, its width read from ``w`` at run time."""

    def __init__(self, fill):
        super().__init__()
        self.conv, self.fill = nn.Conv2d(3, 16, 3, padding=1), fill
        self.fc_x, self.fc_h, self.out = nn.Linear(16, 16), nn.Linear(16, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        w = y.mean((2, 3))
        h = self.fill(w)
        return self.out(y * torch.sigmoid(self.fc_x(w) + self.fc_h(h))[:, :, None, None])


@pytest.mark.parametrize("fill", [torch.zeros_like, torch.ones_like], ids=["zeros", "ones"])
def test_a_fill_in_the_shape_of_a_cut_tensor_is_cut_with_it(fill, tmp_path):
    """It was taken for shape arithmetic: the tensor's channels were cut and the Linear
    reading the fill was not, and ONNX Runtime refused the converted file."""
    m = _InitialState(fill).eval()
    zero(m.conv, [1, 4, 6])
    zero(m.fc_x, None, [1, 4, 6])
    zero(m.fc_h, None, [1, 4, 6])  # a ones fill's columns are read: zero in a masked export
    path = export(m, torch.randn(2, 3, 8, 8), tmp_path / "m.onnx", input_names=["x"],
                  dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    assert any(n.op_type in ("Expand", "ConstantOfShape") for n in onnx.load(path).graph.node)
    new, report = convert(path, torch.zeros(3, 3, 8, 8))
    assert layer(report, "conv").removed == 3
    assert weight_shape(new, "fc_h") == (13, 13)  # its rows gate the cut channels: cut too


def test_a_ones_fill_read_by_live_columns_keeps_its_channels(tmp_path):
    """Its channels are ones: a reader whose columns for them are not zero needs them."""
    m = _InitialState(torch.ones_like).eval()
    zero(m.conv, [1, 4, 6])
    zero(m.fc_x, None, [1, 4, 6])
    path = export(m, torch.randn(2, 3, 8, 8), tmp_path / "m.onnx", input_names=["x"],
                  dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    new, report = convert(path, torch.zeros(3, 3, 8, 8))  # checks the outputs agree
    assert layer(report, "conv").removed == 0


class _Chunked(nn.Module):
    """conv a (12) -> chunk in two -> conv b on the second half -> concat -> conv c."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(6, 6, 3), nn.Conv2d(
            12, 5, 3)  # fmt: skip

    def forward(self, x):
        first, second = torch.chunk(torch.relu(self.a(x)), 2, dim=1)
        second = torch.relu(self.b(nn.functional.pad(second, [1, 1, 1, 1])))
        return self.c(torch.cat([first, second], 1))


@pytest.mark.parametrize("opset", [11, 12])
def test_split_bounds_read_from_a_shape_with_a_free_batch_are_known(tmp_path, opset):
    """The TorchScript exporter at opsets 11 and 12 writes ``torch.chunk``'s bounds as
    ``Gather(Shape(x), 1)``, not a constant with a free batch: a's zero filters were kept
    ("Slice bounds are not constants") and b, c counted at size 1 (FLOPs kept 0.998 for
    0.918 in the probe's net)."""
    net = _Chunked()
    zero(net.a, [0, 9])
    zero(net.b, [2])
    x = torch.randn(1, 3, 8, 8)
    static = export(net, x, tmp_path / "s.onnx", opset_version=opset)
    free = export(net, x, tmp_path / "f.onnx", opset_version=opset, input_names=["x"],
                  dynamic_axes={"x": {0: "N"}})  # fmt: skip
    ops = {n.op_type for n in onnx.load(free).graph.node}
    assert {"Shape", "Slice"} <= ops
    _, want = convert(static, x)
    _, got = convert(free, torch.randn(3, 3, 8, 8))
    assert got.removed == want.removed == 3
    assert got.flops_kept == pytest.approx(want.flops_kept)


@pytest.mark.parametrize(("op", "extra", "want"), [
    ("Gather", {}, [8]),
    ("Slice", {"axes": ""}, [6, 4, 8]),  # steps -1, axes left empty: read by position
])
def test_known_dims_of_a_shape_with_a_free_batch_are_picked(op, extra, want):
    from filterprune.onnx.facts import read_facts

    consts = {"i": [1], "st": [3], "en": [0], "sp": [-1]}
    ins = ["s", "i"] if op == "Gather" else ["s", "st", "en", extra["axes"], "sp"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Shape", ["y"], ["s"]),
             helper.make_node(op, ins, ["picked"])]  # fmt: skip
    inits = [onnx.numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")] + [
        onnx.numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, ["N", 3, 4, 6])],
                              [helper.make_tensor_value_info("picked", 7, [None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert read_facts(model).value("picked").tolist() == want
