"""A quantizer lives in its layer's forward: a layer whose weight other code reads
without calling the layer keeps a float weight, and statistics say so."""

import torch
import torch.nn.functional as F
from torch import nn

from filterprune import NNCFConfig
from filterprune.testing.zoo import nondegenerate
from filterprune.torch import create_compressed_model

_QUANT = {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0}}}


def _config(sample):
    return NNCFConfig.from_dict({"input_info": {"sample_size": list(sample)},
                                 "compression": [_QUANT]})  # fmt: skip


class Functional(nn.Module):
    """c2's weight read by the model's own forward, c2 itself never called."""

    def __init__(self, branch=False):
        super().__init__()
        self.branch = branch
        self.c1, self.c3 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        if self.branch and x.abs().mean() > 1e-3:  # torch.fx cannot trace it
            x = x * 1.0
        x = torch.relu(self.c1(x))
        return self.c3(torch.relu(F.conv2d(x, self.c2.weight, self.c2.bias, padding=1)))


def test_a_layer_whose_forward_never_runs_keeps_a_float_weight_and_says_so():
    """Before: c2 got a weight quantizer that never ran, and statistics counted it."""
    for branch in (False, True):
        torch.manual_seed(0)
        ctrl, model = create_compressed_model(nondegenerate(Functional(branch)),
                                              _config((2, 3, 8, 8)))  # fmt: skip
        stats = ctrl.statistics()
        assert [n for n, _ in stats.left_in_float] == ["c2"]
        assert "its forward never runs: the model's forward reads its weight" \
            in stats.left_in_float[0][1]  # fmt: skip
        assert stats.num_weight_quantizers == 2
        assert not hasattr(model.c2, "weight_quantizer")
        assert not model.c2._forward_pre_hooks  # the run that found it leaves nothing


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        if x.abs().mean() > 1e-3:  # torch.fx cannot trace it: torch.export sees out_proj
            x = x * 1.0
        t = torch.relu(self.conv(x)).flatten(2).transpose(1, 2)
        return self.head(self.attn(t, t, t)[0].mean(1))


def test_attention_output_projection_is_not_called_quantized():
    """nn.MultiheadAttention passes out_proj.weight to its own function: under torch.export
    out_proj read as a layer and got a quantizer that never ran."""
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(nondegenerate(SelfAttention()), _config((2, 3, 8, 8)))
    floats = dict(ctrl.statistics().left_in_float)
    assert "MultiheadAttention attn reads its weight itself" in floats["attn.out_proj"]
    assert not hasattr(model.attn.out_proj, "weight_quantizer")
    assert hasattr(model.conv, "weight_quantizer") and hasattr(model.head, "weight_quantizer")


def test_a_layer_called_by_its_forward_method_is_quantized():
    """``self.fc.forward(x)`` passes by no hook: it was taken as never run."""

    class ForwardCall(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc.forward(torch.relu(self.conv(x)).mean((2, 3)))

    ctrl, model = create_compressed_model(ForwardCall(), _config((2, 3, 8, 8)))
    # the input quantizer is a pre-hook, which ``fc.forward`` passes by too: said as float
    assert [n for n, _ in ctrl.statistics().left_in_float] == ["activation:mean"]
    assert hasattr(model.fc, "weight_quantizer") and "forward" not in vars(model.fc)


def test_an_activation_of_only_zeros_takes_the_smallest_range_from_the_first_batch(
        tmp_path, caplog):  # fmt: skip
    """With ranges from the first batch, a dead ReLU (a squeeze cut to one filter whose
    output is never positive) never got one: export refused "no range yet" after any
    number of batches, where ranges from init data give it the smallest range."""

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 3, 3, padding=1)
            self.squeeze, self.excite = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean((2, 3), True)))))
            return self.head(x * gate)

    torch.manual_seed(0)
    model = Gate()
    with torch.no_grad():
        model.squeeze.bias.fill_(-100.0)  # its ReLU is dead for every input
    caplog.set_level("WARNING", logger="filterprune")
    ctrl, model = create_compressed_model(model, _config((1, 3, 16, 16)))
    model.train()(torch.randn(4, 3, 16, 16))
    assert "saw only zeros in its first batch" in caplog.text
    ctrl.export_model(str(tmp_path / "m.onnx"))
