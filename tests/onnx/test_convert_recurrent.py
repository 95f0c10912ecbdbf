"""LSTM, GRU and RNN ops in ONNX files (CRNNs for text and speech): the zero filters of
a conv before one go with the columns of its input weights ``W`` where it reads them as
zeros, or not at all; its hidden units stay. Its matrices count at every step."""

import numpy as np
import pytest
import torch
from onnx_helpers import convert, export, layer, seed_torch, zero  # noqa: F401 - fixture
from torch import nn

STEPS = 10


class CRNN(nn.Module):
    def __init__(self, rnn, act, layers=1):
        super().__init__()
        self.conv1, self.act = nn.Conv1d(4, 8, 3, padding=1), act
        self.rnn = rnn(8, 6, num_layers=layers, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(self.rnn(self.act(self.conv1(x)).transpose(1, 2))[0])


def _matrices(rnn):
    return sum(p.numel() for p in rnn.parameters() if p.dim() == 2)


def _input_weights(model, op):
    inits = {i.name: i for i in model.graph.initializer}
    return [tuple(inits[n.input[1]].dims) for n in model.graph.node if n.op_type == op]


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("rnn", [nn.LSTM, nn.GRU])
def test_zero_filters_before_a_recurrent_layer_go_with_its_input_columns(rnn, layers, tmp_path):
    """They were kept ("LSTM: unsupported op") and the layer's FLOPs left out."""
    m = CRNN(rnn, nn.ReLU(), layers)
    zero(m.conv1, [1, 4, 6])
    x = torch.randn(2, 4, STEPS)
    new, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    op = rnn.__name__.upper()
    assert layer(report, "conv1").removed == 3
    assert _input_weights(new, op)[0] == (2, 6 * (4 if rnn is nn.LSTM else 3), 5)
    assert _input_weights(new, op)[1:] == [(2, 6 * (4 if rnn is nn.LSTM else 3), 12)] * (
        layers - 1)
    w = m.rnn.weight_ih_l0
    convs, fc = 2 * STEPS * 8 * 4 * 3, 2 * STEPS * 3 * 12
    assert report.flops_before == convs + 2 * STEPS * _matrices(m.rnn) + fc
    assert report.flops_before - report.flops_after == 3 * convs // 8 + 2 * STEPS * 2 * (
        w.shape[0] * 3)


def test_a_recurrent_layer_reading_a_zero_filter_made_nonzero_keeps_it(tmp_path):
    m = CRNN(nn.LSTM, nn.Sigmoid())
    zero(m.conv1, [1, 4])
    x = torch.randn(2, 4, STEPS)
    _, report = convert(export(m, x, tmp_path / "m.onnx"), x)
    s = layer(report, "conv1")
    assert (s.removed, s.kept_zero) == (0, 2) and "not provably zero" in s.reason
    with torch.no_grad():  # once the layer ignores them (both directions), they go
        for w in (m.rnn.weight_ih_l0, m.rnn.weight_ih_l0_reverse):
            w[:, [1, 4]] = 0
    new, report = convert(export(m, x, tmp_path / "m2.onnx"), x)
    assert layer(report, "conv1").removed == 2
    assert _input_weights(new, "LSTM") == [(2, 24, 6)]
    np.testing.assert_array_equal(report.layers[0].kept_zero, 0)
