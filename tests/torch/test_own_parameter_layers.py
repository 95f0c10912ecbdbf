"""Modules of the user's own that pass their own ``weight`` and ``bias`` to ``F.conv2d``,
``F.conv_transpose2d``, ``F.linear``, ``F.batch_norm`` or torchvision's ``deform_conv2d``
are pruned as the torch layer with the same parameters is: same plan, same stripped
weights, masked == stripped == exported file.
"""

import copy
import pickle

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_helpers import assert_strip_equal, make_config

from filterprune import NNCFConfig
from filterprune.testing.zoo import nondegenerate
from filterprune.torch import create_compressed_model

SAMPLE = (2, 3, 16, 16)
QUANTIZE = {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0}}}


class OwnConv(nn.Module):
    def __init__(self, cin, cout, stride=1, groups=1, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin // groups, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.stride, self.groups = stride, groups

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias, self.stride, 0, 1,
                        self.groups)  # fmt: skip


class OwnUp(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cin, cout, 2, 2))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, stride=2)


class OwnLinear(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class OwnBatchNorm(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, 0.1, 1e-5)  # fmt: skip


def _torch_layers():
    return dict(
        conv=lambda i, o, stride=1, groups=1, bias=True: nn.Conv2d(
            i, o, 3, stride, 1, groups=groups, bias=bias),
        up=lambda i, o: nn.ConvTranspose2d(i, o, 2, 2),
        linear=nn.Linear, bn=nn.BatchNorm2d,
    )  # fmt: skip


OWN = dict(conv=OwnConv, up=OwnUp, linear=OwnLinear, bn=OwnBatchNorm)


class Net(nn.Module):
    def __init__(self, layers, size_read=False):
        super().__init__()
        conv, bn = layers["conv"], layers["bn"]
        self.c1, self.b1 = conv(3, 16), bn(16)
        self.c2, self.b2 = conv(16, 32, 2), nn.BatchNorm2d(32)
        self.c3, self.b3 = conv(32, 32, groups=4, bias=False), bn(32)
        self.up, self.c4 = layers["up"](32, 16), conv(16, 16)
        self.l1, self.l2 = layers["linear"](16, 24), layers["linear"](24, 10)
        self.size_read = size_read  # a forward torch.fx cannot trace: torch.export reads it

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        if self.size_read:
            y = y * (1.0 + 0.0 * int(x.shape[1]))
        y = F.relu(self.b2(self.c2(y)))
        y = F.relu(self.b3(self.c3(y)))
        y = F.relu(self.c4(F.relu(self.up(y))))
        return self.l2(F.relu(self.l1(y.mean((2, 3)))))


def _pair(size_read=False):
    """The same net twice, with the same weights: of torch layers, and of own modules."""
    torch.manual_seed(0)
    ref = nondegenerate(Net(_torch_layers(), size_read))
    own = Net(OWN, size_read)
    missing, unexpected = own.load_state_dict(ref.state_dict(), strict=False)
    assert not missing and all(k.endswith("num_batches_tracked") for k in unexpected)
    return ref, own


def _config(importance="geometric_median", quantize=False):
    config = make_config(SAMPLE, prune_first_conv=True, prune_downsample_convs=True,
                         filters_multiple_of=1, filter_importance=importance)  # fmt: skip
    if quantize:
        config = NNCFConfig.from_dict({**config, "compression": [config["compression"], QUANTIZE]})
    return config


def _onnx(ctrl, path, x):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ctrl.export_model(str(path))
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(a).max())


@pytest.mark.parametrize("size_read", [False, True], ids=["fx", "export"])
def test_own_layers_are_pruned_as_the_torch_layers(size_read, tmp_path):
    ref, own = _pair(size_read)
    x = torch.randn(SAMPLE)
    ref_ctrl, ref_model = create_compressed_model(ref, _config())
    ctrl, model = create_compressed_model(own, _config())
    stats, ref_stats = ctrl.statistics(), ref_ctrl.statistics()
    assert stats.unpruned == ref_stats.unpruned == [(["l2"], "feeds a model output")]
    for key in ("current_flops", "full_flops", "current_params", "full_params"):
        assert getattr(stats, key) == getattr(ref_stats, key), key
    with torch.no_grad():
        masked = model.eval()(x)
        assert _rel(ref_model.eval()(x), masked) < 1e-5
    exported = _onnx(ctrl, tmp_path / "own.onnx", x)
    small, ref_small = ctrl.strip().eval(), ref_ctrl.strip()
    for name, p in ref_small.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(small.state_dict()[name], p), name
    assert small.c2.weight.shape == (16, 8, 3, 3) and small.up.weight.shape == (16, 8, 2, 2)
    assert small.c3.weight.shape == (16, 4, 3, 3) and small.b1.running_mean.shape == (8,)
    with torch.no_grad():
        assert _rel(masked, small(x)) < 1e-5
    assert _rel(masked, exported) < 1e-5


def test_own_layers_rank_filters_by_taylor_as_the_torch_layers():
    """Gradient x weight per filter: a transposed conv's filters are on its weight's axis 1,
    which the module's class does not say."""
    ref, own = _pair()
    totals = []
    for net in (ref, own):
        ctrl, model = create_compressed_model(net, _config("taylor"))
        model.train()
        g = torch.Generator().manual_seed(1)
        for _ in range(2):
            model(torch.randn(SAMPLE, generator=g)).square().mean().backward()
        ctrl.set_pruning_level(0.5)
        totals.append((ctrl.taylor.totals, ctrl.statistics().layers))
    (ref_totals, ref_layers), (own_totals, own_layers) = totals
    assert set(own_totals) == set(ref_totals) and "up" in own_totals
    for name, total in ref_totals.items():
        torch.testing.assert_close(own_totals[name], total, rtol=1e-5, atol=0)
    assert own_layers == ref_layers


@pytest.mark.parametrize("size_read", [False, True], ids=["fx", "export"])
def test_own_layers_quantize_strip_and_export_as_the_torch_layers(size_read, tmp_path):
    ref, own = _pair(size_read)
    x = torch.randn(SAMPLE)
    outs = []
    for net, path in ((ref, tmp_path / "ref.onnx"), (own, tmp_path / "own.onnx")):
        ctrl, model = create_compressed_model(net, _config(quantize=True))
        model.train()
        model(torch.randn(SAMPLE, generator=torch.Generator().manual_seed(1)))
        model.eval()
        with torch.no_grad():
            masked = model(x)
            exported = _onnx(ctrl, path, x)
            small = ctrl.strip().eval()
            assert _rel(masked, small(x)) < 1e-5
        assert _rel(masked, exported) < 1e-4
        outs.append((masked, ctrl.statistics()))
    (ref_out, ref_stats), (own_out, own_stats) = outs
    quant, ref_quant = own_stats.quantization, ref_stats.quantization
    assert quant.num_weight_quantizers == ref_quant.num_weight_quantizers == 7
    # the model input and every input of an own conv are rounded, as a torch conv's are
    assert quant.num_activation_quantizers == ref_quant.num_activation_quantizers
    assert _rel(ref_out, own_out) < 1e-5


def test_an_own_batchnorm_keeps_the_statistics_of_pruned_channels_while_training():
    ref, own = _pair()
    for net in (ref, own):
        ctrl, model = create_compressed_model(net, _config())
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        g = torch.Generator().manual_seed(2)
        for _ in range(3):
            loss = model(torch.randn(SAMPLE, generator=g)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.stats = model.b1.running_var.clone(), model.eval()(torch.randn(SAMPLE, generator=g))
        small = ctrl.strip().eval()
        x = torch.randn(SAMPLE)
        with torch.no_grad():
            assert _rel(model(x), small(x)) < 1e-5
    torch.testing.assert_close(own.stats[0], ref.stats[0])
    torch.testing.assert_close(own.stats[1], ref.stats[1], rtol=1e-5, atol=1e-6)


def test_masked_own_layers_pickle_and_copy():
    _, own = _pair()
    ctrl, model = create_compressed_model(own, _config())
    model.eval()
    x = torch.randn(SAMPLE)
    with torch.no_grad():
        ref = model(x)
        for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
            assert torch.equal(other.eval()(x), ref)
            assert "weight_mask" in other.c2._buffers and "channel_mask" in other.b1._buffers


class OwnDepthwise(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, 1, 3, 3))
        self.channels = channels

    def forward(self, x):
        return F.conv2d(x, self.weight, None, 1, 1, 1, self.channels)


def test_an_own_depthwise_conv_stays_whole_with_the_reason():
    """Its group count is the module's own number, which a cut would change."""
    torch.manual_seed(0)
    net = nondegenerate(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                      OwnDepthwise(16), nn.Conv2d(16, 4, 1)))  # fmt: skip
    ctrl, model = create_compressed_model(net, _config())
    reason = ("conv2d: conv2d in OwnDepthwise 2 is depthwise (groups=16), a group count its "
              "own code passes, which a cut would change")  # fmt: skip
    assert (["0"], reason) in ctrl.statistics().unpruned
    small = ctrl.strip()
    assert small[2].weight.shape == (16, 1, 3, 3)


class NoisyLinear(nn.Module):
    """NoisyNet's layer in eval mode: its means, named ``weight_mu`` and ``bias_mu``."""

    def __init__(self, cin, cout):
        super().__init__()
        self.weight_mu = nn.Parameter(torch.randn(cout, cin) * 0.3)
        self.bias_mu = nn.Parameter(torch.randn(cout) * 0.1)

    def forward(self, x):
        return F.linear(x, self.weight_mu, self.bias_mu)


def test_an_own_layer_with_parameters_named_otherwise_says_so():
    """The reason read "reads parameters that are not one layer's (n.weight_mu, ...)"."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), NoisyLinear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    ctrl, model = create_compressed_model(net, _config())
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert held["4"] == ("linear reads NoisyLinear 4's weight_mu, bias_mu as its weight, bias: "
                         "masks follow parameters named so only")  # fmt: skip
    assert_strip_equal(ctrl, model, torch.randn(2, 3, 8, 8))


class OwnDeform(nn.Module):
    """basicsr's DCNv2Pack: offsets and mask from a conv of another feature map."""

    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.conv_offset = nn.Conv2d(cin, 27, 3, padding=1)

    def forward(self, x, feat):
        from torchvision.ops import deform_conv2d

        o1, o2, mask = torch.chunk(self.conv_offset(feat), 3, dim=1)
        return deform_conv2d(x, torch.cat((o1, o2), 1), self.weight, self.bias,
                             padding=(1, 1), mask=torch.sigmoid(mask))  # fmt: skip


class DeformNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0, self.c1 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.dcn, self.head = OwnDeform(16, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = F.relu(self.c0(x))
        return self.head(F.relu(self.dcn(F.relu(self.c1(y)), y)))


def test_an_own_deformable_conv_is_cut_and_its_offsets_stay_whole():
    torch.manual_seed(0)
    net = nondegenerate(DeformNet())
    x = torch.randn(SAMPLE)
    with torch.no_grad():
        dense = net.eval()(x)
    ctrl, model = create_compressed_model(net, make_config(SAMPLE, filters_multiple_of=1))
    stats = ctrl.statistics()
    assert {row.name for row in stats.layers} == {"c1", "dcn"}
    assert (["dcn.conv_offset"], "torchvision.deform_conv2d: the sampling offsets and mask "
            "of a deformable conv") in stats.unpruned  # fmt: skip
    with torch.no_grad():
        masked = model.eval()(x)
        small = ctrl.strip().eval()
        assert _rel(masked, small(x)) < 1e-5
    assert small.dcn.weight.shape == (8, 8, 3, 3) and _rel(dense, masked) > 1e-3


class TokenBatchNorm(nn.Module):
    """A BatchNorm over the channels of (B, T, C) tokens, written by hand."""

    def __init__(self, n):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.rand(n) + 0.5), nn.Parameter(torch.randn(n))
        self.register_buffer("running_mean", torch.randn(n))
        self.register_buffer("running_var", torch.rand(n) + 0.5)

    def forward(self, x):
        x = F.batch_norm(x.transpose(1, 2), self.running_mean, self.running_var, self.weight,
                         self.bias, False, 0.1, 1e-5)  # fmt: skip
        return x.transpose(1, 2)


class Tokens(nn.Module):
    def __init__(self, tokens, width):
        super().__init__()
        self.stem, self.l1 = nn.Conv2d(3, width, 1), nn.Linear(width, width)
        self.bn, self.head = TokenBatchNorm(width), nn.Linear(width, 4)
        self.tokens = tokens

    def forward(self, x):
        y = self.stem(x).flatten(2).transpose(1, 2)  # (B, T, C)
        return self.head(F.relu(self.bn(self.l1(y))))


@pytest.mark.parametrize("width", [16, 32])
def test_an_own_norm_that_computes_around_its_call_stays_whole(width):
    """Its masks zero axis 1 of the module's output, here the tokens: with as many tokens as
    channels the masked model was 0.22 off the stripped one; with more channels it failed."""
    torch.manual_seed(0)
    net = nondegenerate(Tokens(16, width))
    ctrl, model = create_compressed_model(net, make_config((2, 3, 4, 4), prune_first_conv=True,
                                                           filters_multiple_of=1))  # fmt: skip
    assert (["l1"], "batch_norm: batch_norm in TokenBatchNorm bn, which computes more around "
            "it in its forward") in ctrl.statistics().unpruned  # fmt: skip
    assert_strip_equal(ctrl, model, torch.randn(2, 3, 4, 4), tol=1e-5)


class Tied(nn.Module):
    """A user conv's weight read again by its parent (tied weights)."""

    def __init__(self):
        super().__init__()
        self.c0, self.own, self.head = nn.Conv2d(3, 16, 3, padding=1), OwnConv(16, 16), nn.Conv2d(
            16, 4, 1)  # fmt: skip

    def forward(self, x):
        y = F.relu(self.own(F.relu(self.c0(x))))
        y = F.relu(F.conv2d(F.pad(y, (1, 1, 1, 1)), self.own.weight, self.own.bias))
        return self.head(y)


def test_a_conv_reading_an_own_layers_weight_counts_its_flops():
    """The owner's second use counted no FLOPs once the owner was a conv layer."""
    torch.manual_seed(0)
    ctrl, _ = create_compressed_model(nondegenerate(Tied()), make_config((1, 3, 16, 16)))
    conv = 2 * 16 * 16 * 9
    assert ctrl.statistics().full_flops == conv * (3 * 16 + 2 * 16 * 16) + 2 * 16 * 16 * 16 * 4


class TiedAutoencoder(nn.Module):
    """One weight read by a conv and then by a transposed conv."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 8, 3, 3))

    def forward(self, x):
        return F.conv_transpose2d(F.relu(F.conv2d(x, self.weight, padding=1)), self.weight,
                                  padding=1)  # fmt: skip


def test_a_weight_read_as_two_layers_stays_whole():
    """The second call cut the weight's axis 1 as the first call's input: the stripped
    model failed."""
    torch.manual_seed(0)
    net = nondegenerate(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      TiedAutoencoder(), nn.ReLU(),
                                      nn.Conv2d(8, 4, 1)))  # fmt: skip
    ctrl, model = create_compressed_model(net, _config())
    reason = ("conv_transpose2d: conv_transpose2d reads TiedAutoencoder 2's parameters as "
              "another layer than its other call does")  # fmt: skip
    assert (["0"], reason) in ctrl.statistics().unpruned
    assert_strip_equal(ctrl, model, torch.randn(SAMPLE), tol=1e-5)


class SecondInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 16, 3, 3))

    def forward(self, skip, x):
        return F.conv2d(x, self.weight, padding=1) + skip


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0, self.blk, self.head = nn.Conv2d(3, 16, 3, padding=1), SecondInput(), nn.Conv2d(
            16, 4, 1)  # fmt: skip

    def forward(self, x):
        a = self.c0(x)
        return self.head(self.blk(a * 0.01, a * 5))


def test_an_own_conv_reading_its_second_argument_leaves_its_input_float():
    """The input quantizer, a pre-hook rounding a module's first argument, rounded the skip
    (0.01 of the scale) and left the conv's input float."""
    torch.manual_seed(0)
    config = NNCFConfig.from_dict({"input_info": {"sample_size": list(SAMPLE)},
                                   "compression": [QUANTIZE]})  # fmt: skip
    _, model = create_compressed_model(nondegenerate(TwoInputs()), config)
    assert "input_quantizer" not in model.blk._modules
    assert model.blk.weight_quantizer is not None


class CastConv(nn.Module):
    """Casts its parameters to the input's type (mixed precision code)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.randn(cout))

    def forward(self, x):
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.type_as(x), 1, 1)


class CastLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, self.weight.contiguous().float(), self.bias.to(x))


def test_a_weight_cast_to_the_input_type_is_that_weight():
    """``self.weight.to(x.dtype)`` read as a weight computed in forward: the layer stayed
    whole, and so did the conv before it."""
    torch.manual_seed(0)
    net = nondegenerate(nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), CastConv(16, 16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), CastLinear(16, 32), nn.ReLU(), nn.Linear(32, 4)))
    ctrl, model = create_compressed_model(net, _config())
    stats = ctrl.statistics()
    assert {row.name for row in stats.layers} == {"0", "2", "6"}
    assert_strip_equal(ctrl, model, torch.randn(SAMPLE), tol=1e-5)


class OneSlope(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([0.25]))

    def forward(self, x):
        return F.prelu(x, self.weight)


def test_an_own_prelu_of_one_slope_passes_the_channels():
    """It held the conv before it ("no channel rule")."""
    torch.manual_seed(0)
    net = nondegenerate(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), OneSlope(),
                                      nn.Conv2d(16, 4, 1)))  # fmt: skip
    ctrl, model = create_compressed_model(net, _config())
    assert [row.name for row in ctrl.statistics().layers] == ["0"]
    assert_strip_equal(ctrl, model, torch.randn(SAMPLE), tol=1e-5)
