"""Buffers are read by torch.fx as the model's tensors; a forward that reads one as a
Python value, or assigns one, is still traced by torch.fx and keeps its tensors."""

import io

import torch
import torch.nn.functional as F
from torch import nn
from torch_helpers import assert_strip_equal, make_config

from filterprune.torch import create_compressed_model


class Stepped(nn.Module):
    """A step count in a buffer: tested in forward, or counted up in it. An aux head runs
    only in training, once enough steps have passed."""

    def __init__(self, counts: bool):
        super().__init__()
        self.counts = counts
        self.c1, self.c2, self.aux = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1), \
            nn.Conv2d(16, 4, 1)  # fmt: skip
        self.register_buffer("step", torch.tensor(3))

    def forward(self, x):
        y = F.relu(self.c1(x))
        if self.counts:
            self.step += 1
        elif self.step > 0:
            y = y * 2
        if self.training:
            return self.c2(y), self.aux(y) * (1.0 if self.step > 10 else 0.5)
        return self.c2(y)


def test_a_buffer_read_as_a_value_is_traced_by_torch_fx():
    """It fell back to torch.export, and the train-mode trace that holds what the aux
    head reads failed without a word: its channels were cut under it."""
    ctrl, model = create_compressed_model(Stepped(False).eval(), make_config((1, 3, 8, 8)))
    assert ctrl.captured.extra["capture"] == "torch.fx"
    assert (["c1"], "aux: runs only in training and reads these channels") in \
        ctrl.statistics().unpruned  # fmt: skip
    assert_strip_equal(ctrl, model, torch.randn(2, 3, 8, 8), tol=1e-5)


def test_a_buffer_assigned_in_forward_keeps_its_tensor():
    """The trace left a proxy in it: the state_dict could not be saved, nor the model run."""
    net = Stepped(True).eval()
    ctrl, model = create_compressed_model(net, make_config((1, 3, 8, 8)))
    assert type(net._buffers["step"]) is torch.Tensor and int(net.step) == 3
    torch.save(model.state_dict(), io.BytesIO())
    model.train()(torch.randn(2, 3, 8, 8))
