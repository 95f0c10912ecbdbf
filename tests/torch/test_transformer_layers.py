"""torch.nn's transformer layers after a conv stem (hybrid CNN-transformer nets): the
feed-forward width of each encoder and decoder layer is cut; attention stays whole. The
masked model must not take torch's fused encoder kernel, which reads the weights past
the masks (eval mode without grad: how models are validated)."""

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch_helpers import assert_strip_equal, make_config

from filterprune.testing.zoo import nondegenerate
from filterprune.torch import create_compressed_model


class Hybrid(nn.Module):
    def __init__(self, norm_first=False, activation="relu", branch=False):
        super().__init__()
        self.branch = branch
        self.conv, self.bn = nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.proj = nn.Linear(24, 32)
        layer = dict(dim_feedforward=64, batch_first=True, norm_first=norm_first,
                     activation=activation)  # fmt: skip
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, **layer), 2)
        self.dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(32, 4, **layer), 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.run(x, None)

    def run(self, x, pad):
        if self.branch and x.abs().mean() > 1e-3:  # torch.fx cannot trace it
            x = x * 1.0
        t = self.proj(torch.relu(self.bn(self.conv(x))).flatten(2).transpose(1, 2))
        memory = self.enc(t, src_key_padding_mask=pad)
        return self.head(self.dec(t, memory, memory_key_padding_mask=pad)[:, 0])


class Padded(Hybrid):
    """A padding mask as an argument, left None by the sample: torch.fx traces with it
    fixed at None (it was a traced input, which the encoder's checks branch on, and
    torch.export captured the model)."""

    def forward(self, x, pad=None):
        return self.run(x, pad)


_FFN = ["enc.layers.0.linear1", "enc.layers.1.linear1", "dec.layers.0.linear1"]


def _hooked(model):
    return [len(m._forward_pre_hooks) for m in model.enc.layers]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():  # torch's notes on its nested-tensor fast path
        warnings.filterwarnings("ignore", "enable_nested_tensor|The PyTorch API of nested")
        yield


@pytest.mark.parametrize("branch", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize(("norm_first", "activation"), [(False, "relu"), (True, "gelu")])
def test_feed_forward_width_is_cut_and_masked_equals_stripped(norm_first, activation, branch):
    """Before: every layer was left whole ("no channel rule for module
    TransformerEncoderLayer"); read through, the masked model took the fused kernel in
    eval without grad and was 0.40 relative off the stripped one."""
    torch.manual_seed(0)
    model = nondegenerate(Hybrid(norm_first, activation, branch))
    ctrl, pruned = create_compressed_model(model, make_config(
        (2, 3, 8, 8), filters_multiple_of=1))  # fmt: skip
    assert ctrl.captured.extra.get("capture", "torch.fx") == ("torch.export" if branch
                                                              else "torch.fx")  # fmt: skip
    stats = ctrl.statistics()
    assert {s.name: s.kept for s in stats.layers} == dict.fromkeys(_FFN, 32)
    assert _hooked(pruned) == [1, 1]  # no fused kernel while masked
    small = assert_strip_equal(ctrl, pruned, torch.randn(3, 3, 8, 8), tol=1e-5)
    assert _hooked(small) == [0, 0]  # the stripped layers take it again
    assert [small.get_submodule(n).out_features for n in _FFN] == [32] * 3
    assert small.enc.layers[1].linear2.in_features == 32
    assert stats.current_params == sum(p.numel() for p in small.parameters())


def test_a_padding_mask_runs_the_masked_encoder_as_the_stripped_one():
    """With a key padding mask in eval without grad, torch's encoder stack runs its layers
    on nested tensors: the masked layers must still read masked weights there."""
    torch.manual_seed(0)
    model = nondegenerate(Padded())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "torch.fx could not trace"
        ctrl, pruned = create_compressed_model(model, make_config(
            (2, 3, 8, 8), filters_multiple_of=1))  # fmt: skip
    assert len(ctrl.statistics().layers) == 3
    assert ctrl.statistics().notes == ["captured with torch.fx"]
    x, pad = torch.randn(2, 3, 8, 8), torch.zeros(2, 64, dtype=torch.bool)
    pad[:, 40:] = True
    small = ctrl.strip().eval()
    pruned.eval()
    with torch.no_grad():
        ref, out = pruned(x, pad), small(x, pad)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_quantized_hybrid_quantizes_the_feed_forward_layers_and_exports(tmp_path):
    torch.manual_seed(0)
    config = make_config((2, 3, 8, 8), filters_multiple_of=1)
    config["compression"] = [config["compression"],
                             {"algorithm": "quantization",
                              "initializer": {"range": {"num_init_samples": 0}}}]  # fmt: skip
    ctrl, model = create_compressed_model(nondegenerate(Hybrid()), config)
    model.train()(torch.randn(4, 3, 8, 8))  # the first batch sets the activation ranges
    floats = dict(ctrl.statistics().quantization.left_in_float)
    assert sorted(floats) == ["dec.layers.0.multihead_attn", "dec.layers.0.self_attn",
                              "enc.layers.0.self_attn", "enc.layers.1.self_attn"]  # fmt: skip
    assert hasattr(model.enc.layers[0].linear1, "weight_quantizer")
    small = assert_strip_equal(ctrl, model, torch.randn(3, 3, 8, 8), tol=1e-5)
    assert _hooked(small) == [1, 1]  # frozen quantizers: still no fused kernel
    path = str(tmp_path / "m.onnx")
    ctrl.export_model(path)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = small(x).numpy()
    options = ort.SessionOptions()  # no fused int8 kernels: the file's own arithmetic
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5


class Causal(nn.Module):
    """A causal mask made in forward for one stack; a layer after it without one."""

    def __init__(self):
        super().__init__()
        self.conv, self.proj = nn.Conv2d(3, 24, 3, padding=1), nn.Linear(24, 32)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(
            32, 4, dim_feedforward=64, batch_first=True), 2)  # fmt: skip
        self.last = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        t = self.proj(torch.relu(self.conv(x)).flatten(2).transpose(1, 2))
        mask = nn.Transformer.generate_square_subsequent_mask(t.size(1))
        return self.head(self.last(self.enc(t, mask=mask, is_causal=True)).mean(1))


def test_a_stack_given_a_mask_made_in_forward_is_read_by_torch_export():
    """torch's checks of a traced mask branch on it, so torch.fx cannot read the stack
    through: torch.export reads the model, and every feed-forward width is cut."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="torch.fx could not trace"):
        ctrl, pruned = create_compressed_model(nondegenerate(Causal()), make_config(
            (2, 3, 8, 8), filters_multiple_of=1, prune_first_conv=True))  # fmt: skip
    assert ctrl.captured.extra["capture"] == "torch.export"
    kept = {s.name: s.kept for s in ctrl.statistics().layers}
    assert kept == {"conv": 12, "enc.layers.0.linear1": 32, "enc.layers.1.linear1": 32,
                    "last.linear1": 32}  # fmt: skip
    assert_strip_equal(ctrl, pruned, torch.randn(3, 3, 8, 8), tol=1e-5)


def test_where_torch_export_fails_too_the_stack_is_one_call_to_torch_fx():
    """The fallback when torch.export cannot read the model either: the stack given the
    mask is one call, left whole with the reason, and the trace goes on."""
    from filterprune.core.analysis import AnalysisOptions, analyze
    from filterprune.torch.capture import capture_fx

    captured = capture_fx(Causal().eval(), (torch.zeros(2, 3, 8, 8),), whole_on_failure=True)
    analysis = analyze(captured.graph, AnalysisOptions(prune_first_conv=True))
    reasons = [g.reason for g in analysis.groups if not g.prunable]
    assert any("TransformerEncoder's code branches on a value of the trace" in r
               for r in reasons)  # fmt: skip
    assert {p for g in analysis.prunable_groups for p in g.producers} >= {"conv", "last.linear1"}
