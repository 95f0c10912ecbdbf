"""Each supported op: zero filters go, outputs stay equal, shapes stay consistent."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
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

from filterprune.onnx import capture, load_model


class Chain(nn.Module):
    """conv1 -> op(s) -> conv2; ``op`` is the thing under test."""

    def __init__(self, op, c=8, c2=None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.op = op
        self.conv2 = nn.Conv2d(c2 or c, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.op(self.conv1(x)))


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


ZERO_PRESERVING = {
    "relu": nn.ReLU(),
    "leaky_relu": nn.LeakyReLU(0.1),
    "tanh": nn.Tanh(),
    "hardswish": nn.Hardswish(),
    "maxpool": nn.MaxPool2d(2),
    "avgpool": nn.AvgPool2d(2),
    "resize_nearest": Lambda(lambda x: F.interpolate(x, scale_factor=2.0)),
    "resize_bilinear": Lambda(lambda x: F.interpolate(x, size=(12, 12), mode="bilinear")),
    "pad_constant": Lambda(lambda x: F.pad(x, (1, 2, 0, 1))),
    "pad_reflect": Lambda(lambda x: F.pad(x, (1, 1, 1, 1), mode="reflect")),
    "transpose_twice": Lambda(lambda x: x.permute(0, 2, 3, 1).permute(0, 3, 1, 2)),
    "clip": Lambda(lambda x: torch.clamp(x, -1.0, 2.0)),
    "mul_self": Lambda(lambda x: x * x),
    "add_self": Lambda(lambda x: x + torch.relu(x)),
    # a Slice of negative steps (``flip``): the channels in reverse, which the rewrite keeps
    "flip_channels": Lambda(lambda x: x.flip(1)),
    "flip_spatial": Lambda(lambda x: x.flip(-1)),
    # positions picked out of order (a point net's neighbours): the channels pass
    "gather_positions": Lambda(lambda x: x.flatten(2)[:, :, torch.arange(63, -1, -1)].view_as(x)),
}


class Attended(nn.Module):
    """DANet's position attention: the value's (``conv1``) rows times a softmax over
    positions that another conv computes (a product of two computed tensors)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.query = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 2, 1)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        q = self.query(x).flatten(2)
        attention = torch.softmax(q.transpose(1, 2) @ q, -1)
        return self.conv2((self.conv1(x).flatten(2) @ attention).view(x.shape[0], 8, 8, 8))


# each op or model whose zero rows pass: a model's own (Attended), or conv1 -> op -> conv2
REMOVED = {**{name: (lambda op=op: Chain(op)) for name, op in ZERO_PRESERVING.items()},
           # kept before: "MatMul of two computed tensors"
           "attention product": Attended}


@pytest.mark.parametrize("name", sorted(REMOVED))
def test_zero_preserving_op_removes_rows(name, tmp_path):
    """Only conv1's rows are zero (conv2 still reads them): removal needs zeros to pass."""
    m = REMOVED[name]()
    zero(m.conv1, [1, 4, 6])
    x = torch.randn(1, 3, 8, 8)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "conv1").removed == 3
    assert weight_shape(new, "conv2") == (4, 5, 3, 3)


class Heads(nn.Module):
    """Attention over two heads, each a slice of the value's features (B, heads, N, d)."""

    def __init__(self):
        super().__init__()
        self.stem, self.q = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 8)
        self.v, self.out = nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)  # (B, N, C)
        b, n, _ = t.shape
        q = self.q(t).view(b, n, 2, 4).transpose(1, 2)
        v = self.v(t).view(b, n, 2, 8).transpose(1, 2)
        a = torch.softmax(q @ q.transpose(-1, -2), -1)
        return self.out((a @ v).transpose(1, 2).reshape(b, n, 16))


def test_zero_rows_of_one_attention_head_stay(tmp_path):
    """The value's second head was cut alone, the weights keeping both: the file failed in
    onnxruntime (a raw error, not ConversionError), or unchecked ran wrong."""
    m = Heads()
    zero(m.v, list(range(8, 16)))
    zero(m.out, None, list(range(8, 16)))
    x = torch.randn(1, 3, 4, 4)
    _, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "v").removed == 0


def test_a_product_over_the_channels_both_operands_carry_is_cut(tmp_path):
    """Each channel's own product of its rows (``y @ y.mT``): both operands carry the
    channels on the batch axis, so they are cut alike (kept whole for one review step)."""
    m = Chain(Lambda(lambda y: torch.relu(y) @ torch.relu(y).transpose(-1, -2)))
    zero(m.conv1, [1, 4])
    zero(m.conv2, None, [1, 4])
    x = torch.randn(1, 3, 8, 8)
    _, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "conv1").removed == 2


def test_a_rewrite_onnxruntime_refuses_is_a_conversion_error(tmp_path, monkeypatch):
    from filterprune.errors import ConversionError
    from filterprune.onnx import convert as converting

    m = Chain(nn.ReLU())
    zero(m.conv1, [1, 4])
    x = torch.randn(1, 3, 8, 8)
    runs = []

    def failing(model, feeds):
        runs.append(model)
        if len(runs) > 1:  # the rewritten model
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : bad shape")
        return real(model, feeds)

    real = converting.run_onnxruntime
    monkeypatch.setattr(converting, "run_onnxruntime", failing)
    with pytest.raises(ConversionError, match="fails in onnxruntime .*INVALID_ARGUMENT"):
        converting.remove_zero_filters(export(m, x, tmp_path / "m.onnx"))


def test_channels_picked_out_of_order_stay(tmp_path):
    """A Gather that reorders the channels moves them: their zero filters stay."""
    m = Chain(Lambda(lambda x: x[:, torch.arange(7, -1, -1)]))
    zero(m.conv1, [1, 4, 6])
    x = torch.randn(1, 3, 8, 8)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "conv1").removed == 0


@pytest.mark.parametrize("fn", [torch.sigmoid, lambda x: x + 1.0, lambda x: torch.clamp(x, 0.5, 2)])
def test_op_that_makes_zero_nonzero_keeps_channels(fn, tmp_path):
    m = Chain(Lambda(fn))
    zero(m.conv1, [1, 4])
    x = torch.randn(1, 3, 8, 8)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    s = layer(report, "conv1")
    assert (s.removed, s.kept_zero) == (0, 2) and "not provably zero" in s.reason
    # once the consumer ignores them too, they go
    zero(m.conv2, None, [1, 4])
    new, report = convert(export(m, x, tmp_path / "m2.onnx"), x)
    assert layer(report, "conv1").removed == 2


def test_batchnorm_shift(tmp_path):
    """A BatchNormalization that is not folded: its shift makes a zero channel nonzero."""
    bn = nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.bias.uniform_(-1, 1)
        bn.weight[2] = 0  # a masked BN: zero scale and bias give a zero shift
        bn.bias[2] = 0
    m = Chain(nn.Sequential(nn.ReLU(), bn))  # ReLU between: the exporter cannot fold the BN
    zero(m.conv1, [2, 5])
    x = torch.randn(1, 3, 8, 8)
    path = export(m, x, tmp_path / "m.onnx")
    new, report = convert(path, x)
    assert any(n.op_type == "BatchNormalization" for n in new.graph.node)
    s = layer(report, "conv1")
    assert (s.removed, s.kept_zero) == (1, 1)  # channel 2 has zero shift, 5 does not
    assert "not provably zero" in s.reason


def test_residual_add_sub_mul_need_equal_masks(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = (nn.Conv2d(3, 8, 3, padding=1) for _ in range(3))
            self.out = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.out((self.a(x) + self.b(x)) - self.c(x) * torch.relu(self.a(x)))

    m = Net()
    for conv in (m.a, m.b, m.c):
        zero(conv, [0, 3])
    zero(m.b, [5])  # only one producer: channel 5 stays
    x = torch.randn(1, 3, 8, 8)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert [layer(report, n).removed for n in ("/a/", "/b/", "/c/")] == [2, 2, 2]
    assert weight_shape(new, "/out/") == (4, 6, 1, 1)


def test_concat_then_split(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 6, 1)
            self.c1, self.c2 = nn.Conv2d(5, 2, 1), nn.Conv2d(9, 2, 1)

        def forward(self, x):
            y = torch.cat([self.a(x), self.b(x)], dim=1)  # 14 channels
            p, q = torch.split(y, [5, 9], dim=1)
            return self.c1(p) + self.c2(q)

    m = Net()
    zero(m.a, [1, 6])
    zero(m.b, [0, 5])
    x = torch.randn(1, 3, 6, 6)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "/a/").removed == 2 and layer(report, "/b/").removed == 2
    assert weight_shape(new, "c1") == (2, 4, 1, 1) and weight_shape(new, "c2") == (2, 6, 1, 1)


@pytest.mark.parametrize("twice", ["cat", "split-cat"])
def test_a_tensor_concatenated_with_itself_is_cut(tmp_path, twice):
    """Its operands were read once each, so the Concat's layout did not match its output
    and the producer was kept whole."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8 if twice == "cat" else 16, 1)
            self.d, self.e = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            if twice == "cat":
                y = self.a(x)
                return self.e(torch.cat([y, y], 1))
            p, q = torch.split(self.a(x), [8, 8], dim=1)  # p's zero filter: d reads it alone
            return self.e(self.d(p) + torch.cat([q, q], 1))

    m = Net()
    zero(m.a, [1])
    x = torch.randn(1, 3, 6, 6)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "/a/").removed == 1


def test_chunk_exported_as_slice(tmp_path):
    """torch.chunk becomes Slice ops with computed bounds: the bounds are rewritten."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            r, s = torch.chunk(self.a(x), 2, dim=1)
            return self.c(r) + self.c(s) + self.c(self.a(x)[:, 2:6])

    m = Net()
    zero(m.a, [1, 6])
    x = torch.randn(1, 3, 6, 6)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "/a/").removed == 2
    assert sum(n.op_type == "Slice" for n in new.graph.node) == 3


@pytest.mark.parametrize(("zeros", "removed"), [([1, 2], 0), ([2, 3], 2)])
def test_strided_slice_over_channels_removes_whole_blocks(tmp_path, zeros, removed):
    """``x[:, ::2]`` keeps the first of each pair: a pair goes only when both are zero
    (then the file's slice takes the same channels of what is left)."""
    m = Chain(Lambda(lambda x: x[:, ::2]), c=8, c2=4)
    zero(m.conv1, zeros)
    x = torch.randn(1, 3, 6, 6)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    s = layer(report, "conv1")
    assert (s.removed, s.kept_zero) == (removed, 2 - removed)
    assert weight_shape(new, "conv2")[1] == 4 - removed // 2


def test_split_rewrites_sizes(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 12, 1)
            self.c1, self.c2 = nn.Conv2d(4, 2, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            p, q = torch.split(self.a(x), [4, 8], dim=1)
            return self.c1(p) + self.c2(q)

    m = Net()
    zero(m.a, [0, 5, 6, 11])
    x = torch.randn(1, 3, 6, 6)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "/a/").removed == 4
    assert weight_shape(new, "c1") == (2, 3, 1, 1) and weight_shape(new, "c2") == (2, 5, 1, 1)


@pytest.mark.parametrize("flat", ["flatten", "view_size", "reshape_literal"])
def test_reshape_flatten_into_gemm(flat, tmp_path):
    fns = {"flatten": lambda x: torch.flatten(x, 1), "view_size": lambda x: x.view(x.size(0), -1),
           "reshape_literal": lambda x: x.reshape(1, 8 * 4 * 4)}  # fmt: skip

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 16, 10)

        def forward(self, x):
            return self.fc(fns[flat](F.max_pool2d(torch.relu(self.conv(x)), 2)))

    m = Net()
    zero(m.conv, [0, 7, 3])
    x = torch.randn(1, 3, 8, 8)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "conv").removed == 3
    assert weight_shape(new, "fc") == (10, 5 * 16)


def test_global_pool_gemm_inputs_and_zero_columns(tmp_path):
    """Gemm input columns: channels the Gemm ignores go even with nonzero filters."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3)

        def forward(self, x):
            y = F.adaptive_avg_pool2d(torch.sigmoid(self.conv(x)), 1).flatten(1)
            return self.fc2(torch.relu(self.fc1(y)))

    m = Net()
    zero(m.fc1, [2], cols=[1, 6])
    x = torch.randn(1, 3, 8, 8)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert any(n.op_type == "GlobalAveragePool" for n in new.graph.node)
    assert layer(report, "conv").removed == 2 and layer(report, "fc1").removed == 1
    assert weight_shape(new, "fc1") == (5, 6) and weight_shape(new, "fc2") == (3, 5)


def test_transpose_and_matmul_weights(tmp_path):
    """Channels-last Linear: Transpose, then MatMul + Add; MatMul output channels go too."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.l1, self.l2 = nn.Linear(8, 6), nn.Linear(6, 4)

        def forward(self, x):
            y = self.conv(x).permute(0, 2, 3, 1)
            return self.l2(torch.relu(self.l1(y))).permute(0, 3, 1, 2)

    m = Net()
    zero(m.conv, [2, 3])
    zero(m.l1, [0])
    x = torch.randn(1, 3, 5, 5)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert any(n.op_type == "MatMul" for n in new.graph.node)
    assert layer(report, "conv").removed == 2 and layer(report, "l1").removed == 1


def test_depthwise_and_grouped_conv(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.g = nn.Conv2d(8, 8, 1, groups=2)
            self.out = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.out(torch.relu(self.g(torch.relu(self.dw(self.a(x))))))

    m = Net()
    zero(m.a, [0, 1, 5])
    zero(m.dw, [0, 1, 5])
    zero(m.g, [0, 1, 5])  # the grouped conv ties its input and output channels
    x = torch.randn(1, 3, 6, 6)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "/a/").removed >= 2
    dw = next(n for n in new.graph.node if n.name.startswith("/dw/"))
    assert next(a.i for a in dw.attribute if a.name == "group") == weight_shape(new, "/dw/")[0]


def test_conv_transpose(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
            self.out = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.out(torch.relu(self.up(torch.relu(self.a(x)))))

    m = Net()
    zero(m.a, [1, 2])
    with torch.no_grad():
        m.up.weight[:, 4] = 0
        m.up.bias[4] = 0
    x = torch.randn(1, 3, 6, 6)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "/a/").removed == 2 and layer(report, "/up/").removed == 1


class _Gated(nn.Module):
    """A feature map and a one-channel map broadcast over it (a spatial gate, or added)."""

    def __init__(self, op):
        super().__init__()
        self.a, self.g, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 1, 3, padding=1), \
            nn.Conv2d(16, 4, 3, padding=1)
        self.op = op

    def forward(self, x):
        y, g = torch.relu(self.a(x)), self.g(x)
        return self.b(y * torch.sigmoid(g) if self.op == "mul" else y + g)


@pytest.mark.parametrize(("op", "removed"), [("mul", 3), ("add", 0)])
def test_a_one_channel_operand_meets_every_channel(op, removed, tmp_path):
    """Times a spatial gate a zero channel stays zero; plus a one-channel map it does not
    (both failed the output check before: zeros were matched by channel id)."""
    m = _Gated(op)
    zero(m.a, [1, 2, 5])
    x = torch.randn(2, 3, 8, 8)
    _, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "/a/").removed == removed


def test_einsum_passes_the_channels_it_keeps(tmp_path):
    """Einsum: channels pass where the output keeps their index (a zero there is not
    tracked through it, so it is kept with the reason)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
            self.gamma = nn.Parameter(torch.rand(8) + 0.5)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.b(torch.einsum("bchw,c->bchw", y, self.gamma) * y)

    m = Net()
    zero(m.a, [1, 2])
    zero(m.b, None, [1, 2])  # nothing reads the zero channels
    x = torch.randn(2, 3, 6, 6)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "/a/").removed == 2 and weight_shape(new, "/b/") == (4, 6, 1, 1)


class _Tokens(nn.Module):
    """Tokens through an einsum with a weight matrix, then an LSTM."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 16, 4, stride=4)
        self.w = nn.Parameter(torch.randn(16, 32))
        self.lstm = nn.LSTM(32, 24, batch_first=True)

    def forward(self, x):
        t = self.c(x).flatten(2).transpose(1, 2)  # 4 tokens of 16
        return self.lstm(torch.einsum("btc,cd->btd", t, self.w).relu())[0]


def test_einsum_weights_and_recurrent_biases_count_as_in_the_torch_model(tmp_path):
    """The file counted no FLOPs for the einsum's weight (tf2onnx writes Keras'
    EinsumDense so) and no parameters for the LSTM's biases ``B``."""
    from filterprune.core.flops import count_flops, count_params
    from filterprune.torch.capture import capture as capture_torch

    m, x = _Tokens().eval(), torch.randn(1, 3, 8, 8)
    want = capture_torch(m, (x,)).graph
    graph = capture(load_model(export(m, x, tmp_path / "m.onnx"))).graph
    assert count_flops(graph) == count_flops(want) == 2 * 4 * (
        3 * 16 * 16 + 16 * 32 + 4 * 24 * (32 + 24))  # fmt: skip
    lstm = next(i for i in graph.layers.values() if i.kind == "recurrent")
    assert lstm.params["B"][0] == (1, 2 * 4 * 24)
    assert count_params(graph) - 2 * 24 == count_params(want)  # + its zero initial states


def test_grouped_conv_that_widens_loses_zero_inputs_by_group(tmp_path):
    m = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, groups=2), nn.ReLU(),
                      nn.Conv2d(16, 2, 1))  # fmt: skip
    zero(m[0], [0, 4])  # one input of each group
    x = torch.randn(2, 3, 6, 6)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert report.removed == 2 and weight_shape(new, "/2/") == (16, 3, 3, 3)


@pytest.mark.parametrize(("other", "removed"), [(0.1, 3), (None, 0)])
def test_where_is_zero_where_both_branches_are(other, removed, tmp_path):
    """``where(h > 0, h, 0.1 * h)`` (a leaky ReLU) keeps a zero channel zero; with 1.0 as
    the other branch it does not (held before either way: "Greater: unsupported op")."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            h = self.a(x)
            return self.b(torch.where(h > 0, h, other * h if other else torch.ones_like(h)))

    m = Net()
    zero(m.a, [1, 2, 5])
    x = torch.randn(2, 3, 6, 6)
    _, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "/a/").removed == removed


class _UpNet(nn.Module):
    def __init__(self, groups, cout):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, cout, 2, stride=2, groups=groups)
        self.out = nn.Conv2d(cout, 2, 1)

    def forward(self, x):
        return self.out(torch.relu(self.up(torch.relu(self.a(x)))))


@pytest.mark.parametrize(("groups", "cout"), [(4, 16), (2, 6)])
def test_grouped_conv_transpose_loses_a_filter_per_group(groups, cout, tmp_path):
    """A grouped ConvTranspose's weight is (in, out/groups, ...): the zero filter at the
    same place in every group goes, and the group count stays."""
    m, per = _UpNet(groups, cout), cout // groups
    with torch.no_grad():
        m.up.weight.view(groups, 8 // groups, per, 2, 2)[:, :, 0] = 0
        m.up.bias[::per] = 0
    x = torch.randn(2, 3, 6, 6)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "/up/").removed == groups
    assert weight_shape(new, "/up/") == (8, per - 1, 2, 2)
    up = next(n for n in new.graph.node if n.op_type == "ConvTranspose")
    assert next(a.i for a in up.attribute if a.name == "group") == groups


@pytest.mark.parametrize(("groups", "cout"), [(1, 16), (4, 16), (8, 8)])
def test_analyze_reads_a_conv_transpose_weight_filters_first(groups, cout, tmp_path):
    """`filterprune analyze` scores filters from (out, in/groups, ...) weights, as the
    PyTorch frontend reads them. A grouped one failed: (out/groups, in, ...) read as is."""
    from filterprune.onnx.dry_run import OnnxFrontend

    m = _UpNet(groups, cout)
    path = export(m, torch.randn(1, 3, 6, 6), tmp_path / "m.onnx")
    captured = OnnxFrontend().capture(path, None)
    name = next(n for n, i in captured.graph.layers.items() if i.transposed)
    w = m.up.weight.detach()
    want = w.unflatten(0, (groups, -1)).transpose(1, 2).flatten(0, 1).numpy()
    np.testing.assert_array_equal(OnnxFrontend().read_weights(captured, [name])[name], want)


@pytest.mark.parametrize("cout", [8, 16])
def test_depthwise_conv_transpose_follows_its_input(cout, tmp_path):
    """Zero input channels of a depthwise ConvTranspose (multiplier 1 or 2) go with the
    filters that read only them, and the group count drops to the channels left."""
    m, mult = _UpNet(8, cout), cout // 8
    zero(m.a, [1, 2])
    with torch.no_grad():
        m.up.bias[mult : 3 * mult] = 0
    x = torch.randn(2, 3, 6, 6)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "/a/").removed == 2
    assert weight_shape(new, "/up/") == (6, mult, 2, 2)
    up = next(n for n in new.graph.node if n.op_type == "ConvTranspose")
    assert next(a.i for a in up.attribute if a.name == "group") == 6


def test_grouped_conv_transpose_with_scales_per_group_filter_is_kept(tmp_path):
    """Weight scales along out/groups serve one filter in every group: left whole, with
    the reason."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 2, 2, 2))
    w[:, 0] = 0
    weights = {"w": np.round(w * 20).astype(np.int8), "s": np.full(2, 0.05, np.float32),
               "z": np.zeros(2, np.int8)}  # fmt: skip
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"], axis=1),
             helper.make_node("ConvTranspose", ["x", "wd"], ["y"], name="up", group=2,
                              strides=[2, 2])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 4, 3, 3])],
                              [helper.make_tensor_value_info("y", 1, [1, 4, 6, 6])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    _, report = convert(str(tmp_path / "m.onnx"), np.zeros((1, 4, 3, 3)))
    assert report.removed == 0
    reasons = [n.attrs.get("reason", "") for n in capture(load_model(model)).graph]
    assert any("weight scales per filter of a group" in r for r in reasons), reasons


@pytest.mark.parametrize("opset", [11, 13])
def test_split_sizes_as_attribute_or_input(opset, tmp_path):
    """Before opset 13 Split sizes are an attribute; from 13 on they are an input."""
    rng = np.random.default_rng(0)
    w = {"wa": rng.normal(size=(12, 3, 1, 1)), "ba": rng.normal(size=12),
         "w1": rng.normal(size=(2, 4, 1, 1)), "w2": rng.normal(size=(2, 8, 1, 1))}  # fmt: skip
    w["wa"][[0, 5, 6, 11]] = w["ba"][[0, 5, 6, 11]] = 0
    if opset < 13:
        split = helper.make_node("Split", ["a"], ["p", "q"], axis=1, split=[4, 8])
    else:
        w["sizes"] = np.array([4, 8], dtype=np.int64)
        split = helper.make_node("Split", ["a", "sizes"], ["p", "q"], axis=1)
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a"), split,
             helper.make_node("Conv", ["p", "w1"], ["c1"], name="c1"),
             helper.make_node("Conv", ["q", "w2"], ["c2"], name="c2"),
             helper.make_node("Add", ["c1", "c2"], ["y"])]  # fmt: skip
    new, report = convert(save_graph(tmp_path, nodes, w, [1, 3, 6, 6], [1, 2, 6, 6], opset),
                          np.zeros((1, 3, 6, 6)))  # fmt: skip
    assert layer(report, "a").removed == 4
    assert weight_shape(new, "c1") == (2, 3, 1, 1) and weight_shape(new, "c2") == (2, 5, 1, 1)


def test_gemm_with_untransposed_weights(tmp_path):
    """transB=0 keeps output channels in the weight's columns, not its rows."""
    rng = np.random.default_rng(0)
    w = {"w1": rng.normal(size=(8, 6)), "b1": rng.normal(size=6), "w2": rng.normal(size=(6, 3))}
    w["w1"][:, [1, 4]] = w["b1"][[1, 4]] = 0
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2", transB=0)]  # fmt: skip
    new, report = convert(save_graph(tmp_path, nodes, w, [2, 8], [2, 3], 17), np.zeros((2, 8)))
    assert layer(report, "fc1").removed == 2
    assert weight_shape(new, "fc1") == (8, 4) and weight_shape(new, "fc2") == (4, 3)


def test_pixel_shuffle_removes_whole_blocks(tmp_path):
    """torch's pixel_shuffle exports as DepthToSpace in CRD order: output channel c is
    conv1 filters 4c..4c+3, which go together; a partial block stays."""
    m = Chain(nn.PixelShuffle(2), c=16, c2=4)
    zero(m.conv1, [4, 5, 6, 7, 8])
    x = torch.randn(1, 3, 8, 8)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert any(n.op_type == "DepthToSpace" for n in new.graph.node)
    assert layer(report, "conv1").removed == 4
    assert weight_shape(new, "conv1") == (12, 3, 3, 3)
    assert weight_shape(new, "conv2") == (4, 3, 3, 3)


@pytest.mark.parametrize("op", ["DepthToSpace", "SpaceToDepth"])
def test_depth_to_space_in_dcr_order_and_space_to_depth(op, tmp_path):
    """DCR order: output channel c is input channels c, c+C, c+2C, c+3C (C = 2 here);
    SpaceToDepth writes input channel c at c, c+C, c+2C, c+3C of its output."""
    rng = np.random.default_rng(0)
    up = op == "DepthToSpace"
    c1, c2 = (8, 2) if up else (2, 8)
    w = {"w1": rng.normal(size=(c1, 3, 3, 3)), "b1": rng.normal(size=c1),
         "w2": rng.normal(size=(4, c2, 3, 3))}  # fmt: skip
    gone = [1, 3, 5, 7] if up else [1]
    w["w1"][gone] = w["b1"][gone] = 0
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1", pads=[1] * 4),
             helper.make_node(op, ["a"], ["s"], blocksize=2, **({"mode": "DCR"} if up else {})),
             helper.make_node("Conv", ["s", "w2"], ["y"], name="conv2", pads=[1] * 4)]  # fmt: skip
    side, out = (4, 8) if up else (8, 4)
    path = save_graph(tmp_path, nodes, w, [1, 3, side, side], [1, 4, out, out])
    new, report = convert(path, np.zeros((1, 3, side, side)))
    assert layer(report, "conv1").removed == len(gone)
    assert weight_shape(new, "conv2") == ((4, 1, 3, 3) if up else (4, 4, 3, 3))


class Warp(nn.Module):
    """conv1's features sampled at the positions a two-channel conv gives."""

    def __init__(self):
        super().__init__()
        self.conv1, self.flow = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        grid = torch.tanh(self.flow(x)).permute(0, 2, 3, 1)
        return self.conv2(F.grid_sample(self.conv1(x), grid, align_corners=False))


def test_grid_sample_removes_rows_and_keeps_the_coordinates(tmp_path):
    m = Warp()
    zero(m.conv1, [1, 4, 6])
    zero(m.flow, [0])  # a zero coordinate is still a coordinate
    x = torch.randn(1, 3, 8, 8)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "conv1").removed == 3
    assert weight_shape(new, "conv2") == (4, 5, 3, 3)
    assert weight_shape(new, "flow") == (2, 3, 3, 3)


class RoiHead(nn.Module):
    """A Mask R-CNN-like head: conv1's features pooled in fixed boxes by RoIAlign."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.register_buffer("boxes", torch.tensor([[0, 0.0, 0.0, 6.0, 6.0],
                                                    [0, 2.0, 1.0, 7.0, 7.0]]))  # fmt: skip

    def forward(self, x):
        from torchvision.ops import roi_align

        return self.conv2(roi_align(self.conv1(x), self.boxes, (4, 4), 1.0, 2, True))


def test_roi_align_removes_the_zero_filters_of_the_features_it_pools(tmp_path):
    """They were kept ("RoiAlign: unsupported op"): convert reported 0.792 of the FLOPs
    kept where the PyTorch strip keeps 0.423."""
    from filterprune.torch.onnx_export import export_onnx

    m = RoiHead().eval()
    zero(m.conv1, [1, 4, 6])
    x = torch.randn(1, 3, 8, 8)
    assert export_onnx(m, (x,), str(tmp_path / "m.onnx")) == "dynamo"
    new, report = convert(str(tmp_path / "m.onnx"), x)  # the current exporter's names
    assert layer(report, "node_conv2d").removed == 3
    assert weight_shape(new, "node_conv2d_1") == (4, 5, 3, 3)


def test_a_constant_pad_of_the_channels_keeps_only_the_ones_it_adds(tmp_path):
    """Option-A shortcut: the stream's zero channels go through the pad; a zero filter of
    ``b`` where the pad adds a channel stays, as the pad's widths are constants."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, 2, 1)
            self.c = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.c(self.b(y) + F.pad(y[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4)))

    m = Net()
    zero(m.a, [1, 5])
    zero(m.b, [0, 5, 9])  # 5 and 9 meet a's 1 and 5; 0 meets a channel the pad adds
    x = torch.randn(1, 3, 8, 8)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    assert layer(report, "/a/").removed == 2
    s = layer(report, "/b/")
    assert (s.removed, s.kept_zero) == (2, 1) and "channels it adds" in s.reason
    assert weight_shape(new, "/c/") == (4, 14, 1, 1)


def test_a_split_of_shape_arithmetic_is_left_to_itself(tmp_path):
    """A Split of a Shape (fixed-batch tf2onnx files) failed the rewrite with a KeyError."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(8, 3, 3, 3))
    w1[[1, 5]] = 0
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Split", ["s", "sp"], ["s1", "s2"], axis=0),
        helper.make_node("Concat", ["s1", "s2"], ["s3"], axis=0),
        helper.make_node("Reshape", ["r", "s3"], ["r2"]),
        helper.make_node("Conv", ["r2", "w2"], ["y"]),
    ]
    weights = {"w1": w1, "w2": rng.normal(size=(4, 8, 1, 1)),
               "sp": np.array([2, 2], dtype=np.int64)}  # fmt: skip
    path = save_graph(tmp_path, nodes, weights, [2, 3, 8, 8], [2, 4, 8, 8])
    new, report = convert(path, torch.zeros(2, 3, 8, 8))
    assert not report.notes and layer(report, "a").removed == 2


def test_native_group_norm_loses_whole_zero_groups(tmp_path):
    """GroupNormalization (opset 21, a scale and bias per channel): a group whose filters,
    scale and bias are zero goes, and ``num_groups`` drops with it. Held before, as 'its
    statistics span channels'."""
    rng = np.random.default_rng(0)
    w1, scale, bias = rng.normal(size=(12, 3, 3, 3)), rng.normal(size=12) + 1, rng.normal(size=12)
    w1[4:8] = scale[4:8] = bias[4:8] = 0  # the second of three groups
    weights = {"w1": w1, "w2": rng.normal(size=(4, 12, 1, 1)), "scale": scale, "bias": bias}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
             helper.make_node("GroupNormalization", ["a", "scale", "bias"], ["g"], num_groups=3),
             helper.make_node("Relu", ["g"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")]  # fmt: skip
    path = save_graph(tmp_path, nodes, weights, [1, 3, 8, 8], [1, 4, 8, 8], opset=21)
    new, report = convert(path, torch.randn(1, 3, 8, 8))
    assert layer(report, "c1").removed == 4 and weight_shape(new, "c2") == (4, 8, 1, 1)
    gn = next(n for n in new.graph.node if n.op_type == "GroupNormalization")
    assert next(a.i for a in gn.attribute if a.name == "num_groups") == 2


@pytest.mark.parametrize(("const_shape", "removed"), [((12, 1, 1), 4), ((1, 12, 1, 1), 4),
                                                      ((12,), 0)])  # fmt: skip
def test_a_group_norm_written_as_a_chain_loses_whole_zero_groups(tmp_path, const_shape, removed):
    """Below opset 21 exporters write GroupNorm as Reshape / InstanceNormalization / Reshape /
    Mul / Add; read as one op, a zero group goes and the chain is written back with its new
    sizes. A (12,) constant broadcasts over the width (12 too), not the channels: held."""
    rng = np.random.default_rng(0)
    w1, scale, bias = rng.normal(size=(12, 3, 3, 3)), rng.normal(size=12) + 1, rng.normal(size=12)
    w1[4:8] = scale[4:8] = bias[4:8] = 0  # the second of three groups
    weights = {"w1": w1, "w2": rng.normal(size=(4, 12, 1, 1)), "target": np.array([0, 3, -1]),
               "ones": np.ones(3), "zeros": np.zeros(3), "scale": scale.reshape(const_shape),
               "bias": bias.reshape(const_shape)}  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
             helper.make_node("Reshape", ["a", "target"], ["r"]),
             helper.make_node("InstanceNormalization", ["r", "ones", "zeros"], ["n"]),
             helper.make_node("Shape", ["a"], ["s"]),
             helper.make_node("Reshape", ["n", "s"], ["b"]),
             helper.make_node("Mul", ["scale", "b"], ["m"]),
             helper.make_node("Add", ["m", "bias"], ["g"]),
             helper.make_node("Relu", ["g"], ["z"]),
             helper.make_node("Conv", ["z", "w2"], ["y"], name="c2")]  # fmt: skip
    path = save_graph(tmp_path, nodes, weights, [1, 3, 8, 12], [1, 4, 8, 12])
    new, report = convert(path, torch.randn(1, 3, 8, 12))
    assert layer(report, "c1").removed == removed
    assert new.opset_import[0].version == 17
    assert "GroupNormalization" not in {n.op_type for n in new.graph.node}
    if removed:
        assert weight_shape(new, "c2") == (4, 8, 1, 1)
        inits = {i.name: numpy_helper.to_array(i) for i in new.graph.initializer}
        target = next(n for n in new.graph.node if n.op_type == "Reshape").input[1]
        assert list(inits[target]) == [0, 2, -1]


NEWER_OPS = {  # name: (nodes making "b" from "a", opset, extra weights, removed)
    "swish": ([helper.make_node("Swish", ["a"], ["b"], alpha=0.7)], 24, {}, 2),
    "rms_norm_over_width": ([helper.make_node("RMSNormalization", ["a", "s"], ["b"])], 23,
                            {"s": np.linspace(0.5, 1.5, 8)}, 2),
    "rms_norm_over_channels": ([helper.make_node("RMSNormalization", ["a", "s3"], ["b"],
                                                 axis=1)], 23, {"s3": np.ones((8, 8, 8))}, 0),
    "center_crop_pad": ([helper.make_node("CenterCropPad", ["a", "hw"], ["b"], axes=[2, 3])],
                        18, {"hw": np.array([6, 10])}, 2),
    "center_crop_pad_channels": ([helper.make_node("CenterCropPad", ["a", "chw"], ["b"])], 18,
                                 {"chw": np.array([1, 8, 6, 10])}, 0),
}  # fmt: skip


@pytest.mark.parametrize("name", NEWER_OPS)
def test_newer_ops_pass_zero_channels_or_hold_the_ones_they_mix(tmp_path, name):
    """Swish (24), RMSNormalization (23) and CenterCropPad (18) were unknown ops: every
    channel around them was held."""
    op_nodes, opset, extra, removed = NEWER_OPS[name]
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(8, 3, 3, 3))
    w1[2:4] = 0
    weights = {"w1": w1, "w2": rng.normal(size=(4, 8, 1, 1)), **extra}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
             *op_nodes, helper.make_node("Conv", ["b", "w2"], ["y"], name="c2")]  # fmt: skip
    out = [1, 4, 6, 10] if "crop" in name else [1, 4, 8, 8]
    path = save_graph(tmp_path, nodes, weights, [1, 3, 8, 8], out, opset=opset)
    new, report = convert(path, torch.randn(1, 3, 8, 8))
    assert layer(report, "c1").removed == removed
