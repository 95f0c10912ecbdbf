"""Recurrent layers (RNN, LSTM, GRU) after convolutions, as in CRNNs for text and speech:
the convs' filters are cut with the columns of the first layer's input weights; the
recurrent layers themselves stay whole and in float."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_helpers import assert_strip_equal, make_config, run_onnx

from filterprune.testing.zoo import nondegenerate
from filterprune.torch import create_compressed_model
from filterprune.torch.shrink import resize_to_state_dict


class CRNN(nn.Module):
    def __init__(self, rnn, batch_first=True, branch=False):
        super().__init__()
        self.batch_first, self.branch = batch_first, branch
        self.c1, self.c2 = nn.Conv1d(8, 32, 3, padding=1), nn.Conv1d(32, 32, 3, padding=1)
        self.rnn = rnn(32, 16, num_layers=2, batch_first=batch_first, bidirectional=True)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        if self.branch and x.abs().mean() > 1e-3:  # torch.fx cannot trace it
            x = x * 1.0
        h = F.relu(self.c2(F.relu(self.c1(x))))  # (batch, features, time)
        h = h.transpose(1, 2) if self.batch_first else h.permute(2, 0, 1)
        y, _ = self.rnn(h)
        return self.fc(y)


def _matrices(rnn):
    return sum(p.numel() for n, p in rnn.named_parameters() if p.dim() == 2)


@pytest.mark.parametrize("branch", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize(("rnn", "batch_first"), [(nn.LSTM, True), (nn.GRU, False),
                                                  (nn.RNN, True)])  # fmt: skip
def test_convs_before_a_recurrent_layer_are_cut_with_its_input_columns(rnn, batch_first, branch):
    """They were held ("no channel rule for module LSTM", or "lstm.input")."""
    torch.manual_seed(0)
    model = nondegenerate(CRNN(rnn, batch_first, branch))
    ctrl, pruned = create_compressed_model(model, make_config(
        (1, 8, 20), prune_first_conv=True, filters_multiple_of=1))  # fmt: skip
    assert ctrl.captured.extra.get("capture", "torch.fx") == ("torch.export" if branch
                                                              else "torch.fx")  # fmt: skip
    stats = ctrl.statistics()
    assert [p for p, _ in stats.unpruned] == [["fc"]]
    small = assert_strip_equal(ctrl, pruned, torch.randn(3, 8, 20))
    assert small.rnn.input_size == 16 and small.rnn.weight_ih_l0_reverse.shape[1] == 16
    fc = 2 * 5 * 32 * 20  # every matrix at each of the 20 steps, time-major too
    convs = 2 * 20 * (32 * 8 * 3 + 32 * 32 * 3)
    assert stats.full_flops == convs + 2 * 20 * _matrices(model.rnn) + fc
    kept = 2 * 20 * (16 * 8 * 3 + 16 * 16 * 3 + _matrices(small.rnn)) + fc
    assert stats.current_flops == kept
    assert stats.current_params == sum(p.numel() for p in small.parameters())
    fresh = resize_to_state_dict(CRNN(rnn, batch_first), small.state_dict()).eval()
    x = torch.randn(2, 8, 20)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), small(x))


def test_quantized_crnn_leaves_the_lstm_float_and_exports_cut(tmp_path):
    torch.manual_seed(0)
    config = make_config((1, 8, 20), prune_first_conv=True, filters_multiple_of=1)
    config["compression"] = [config["compression"],
                             {"algorithm": "quantization",
                              "initializer": {"range": {"num_init_samples": 0}}}]  # fmt: skip
    ctrl, model = create_compressed_model(nondegenerate(CRNN(nn.LSTM)), config)
    model.train()(torch.randn(4, 8, 20))  # the first batch sets the activation ranges
    floats = ctrl.statistics().quantization.left_in_float
    assert floats == [("rnn", "a recurrent layer")]
    small = assert_strip_equal(ctrl, model, torch.randn(3, 8, 20), tol=1e-3)
    assert small.rnn.input_size == 16
    path = str(tmp_path / "m.onnx")
    ctrl.export_model(path)
    x = torch.randn(2, 8, 20)
    with torch.no_grad():  # within a rounding step of the 8-bit activations
        np.testing.assert_allclose(run_onnx(path, x)[1][0], model.eval()(x).numpy(), atol=1e-2)


def test_a_time_major_model_counts_every_step_at_any_sample_batch():
    """With a sample batch of 2 and 21 steps the time-major Linear counted 2 positions
    per sample, not 21."""

    class TimeMajor(CRNN):
        def forward(self, x):
            h = F.relu(self.c2(F.relu(self.c1(x)))).permute(2, 0, 1)
            return self.fc(self.rnn(h)[0])

    model = TimeMajor(nn.GRU, batch_first=False)
    ctrl, _ = create_compressed_model(model, make_config((2, 8, 21)))
    convs = 2 * 21 * (32 * 8 * 3 + 32 * 32 * 3)
    assert ctrl.statistics().full_flops == convs + 2 * 21 * (_matrices(model.rnn) + 5 * 32)


class Captioner(nn.Module):
    """Pooled conv features read by a recurrent cell at each of 3 steps (image
    captioning, attention OCR decoders); the first state is ``new_zeros`` of the features,
    which take nothing but their dtype and device from them."""

    def __init__(self, cell, export):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.cell, self.fc, self.export = cell(32, 24), nn.Linear(24, 7), export
        self.lstm = cell is nn.LSTMCell  # a traced call's result is no tuple to torch.fx

    def forward(self, x):
        f = F.relu(self.c2(F.relu(self.c1(x)))).mean((2, 3))
        if self.export and x.abs().mean() > 1e-3:  # torch.fx cannot trace it
            f = f * 1.0
        h = f.new_zeros(f.shape[0], 24)
        state = (h, torch.zeros_like(h)) if self.lstm else h
        outs = []
        for _ in range(3):
            state = self.cell(f, state)
            outs.append(self.fc(state[0] if self.lstm else state))
        return torch.stack(outs, 1)


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("cell", [nn.LSTMCell, nn.GRUCell, nn.RNNCell])
def test_convs_before_a_recurrent_cell_are_cut_with_its_input_columns(cell, export):
    """They were held ("no channel rule for lstm_cell", "new_zeros")."""
    torch.manual_seed(0)
    model = nondegenerate(Captioner(cell, export))
    ctrl, pruned = create_compressed_model(model, make_config(
        (1, 3, 8, 8), prune_first_conv=True, filters_multiple_of=1))  # fmt: skip
    assert ctrl.captured.extra.get("capture", "torch.fx") == ("torch.export" if export
                                                              else "torch.fx")  # fmt: skip
    stats = ctrl.statistics()
    assert [p for p, _ in stats.unpruned] == [["fc"]]
    small = assert_strip_equal(ctrl, pruned, torch.randn(3, 3, 8, 8))
    assert small.cell.input_size == small.c2.out_channels == 16
    convs = 2 * 64 * (16 * 3 * 9 + 32 * 16 * 9)
    assert stats.full_flops == convs + 3 * 2 * (_matrices(model.cell) + 7 * 24)
    kept = 2 * 64 * (8 * 3 * 9 + 16 * 8 * 9) + 3 * 2 * (_matrices(small.cell) + 7 * 24)
    assert stats.current_flops == kept
    fresh = resize_to_state_dict(Captioner(cell, export), small.state_dict()).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), small(x))
