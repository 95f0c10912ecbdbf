"""Buffers are read by torch.fx as the model's tensors; a forward that reads one as a
Python value, or assigns one, is still traced by torch.fx and keeps its tensors."""

import io
import logging

import pytest
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


class Neuron(nn.Module):
    """A leaky integrate-and-fire neuron keeping its membrane across calls (streaming
    inference), made on the first call: a plain attribute, a pair, a buffer registered
    as None, or entries of a list; and a temperature the user sets after creation."""

    def __init__(self, form):
        super().__init__()
        self.form, self.temperature = form, 1.0
        if form == "buffer":
            self.register_buffer("mem", None)
        else:
            self.mem = [] if form == "list" else None

    def forward(self, x):
        last = self.mem[-1] if self.form == "list" and self.mem else (
            self.mem[0] if self.form == "pair" and self.mem is not None else self.mem)
        mem = x if last is None or self.form == "list" and not self.mem else last * 0.5 + x
        spikes = (mem > 0.5).float()
        mem = mem * (1 - spikes)
        if self.form == "list":
            self.mem.append(mem)
        else:
            self.mem = (mem, spikes) if self.form == "pair" else mem
        return (spikes + 0.1 * mem) * self.temperature


class Spiking(nn.Module):
    def __init__(self, form):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(2, 16, 3, padding=1), Neuron(form)
        self.c2, self.n2 = nn.Conv2d(16, 16, 3, padding=1), Neuron(form)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.n2(self.c2(self.n1(self.c1(x)))).mean((2, 3)))


@pytest.mark.parametrize("form", ["attribute", "pair", "buffer", "list"])
def test_state_a_forward_keeps_across_calls_starts_over_in_the_stripped_model(form, caplog):
    """The strip copied the masked model's 16-channel membrane into a model cut to 8: its
    next call crashed. It starts from the value it had at creation, with a warning; a
    tensor the user set (a temperature, no channels) stays."""
    torch.manual_seed(0)
    config = make_config((2, 2, 8, 8), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(Spiking(form).eval(), config)
    x = torch.randn(2, 2, 8, 8)
    model.n2.temperature = torch.tensor(0.5)
    with torch.no_grad():
        model(x), model(x)  # a stream's state
    with caplog.at_level(logging.WARNING, logger="filterprune"):
        small = ctrl.strip()
    assert "strip: n1.mem, n2.mem are state the forward keeps across calls" in caplog.text
    assert small.n1.mem == ([] if form == "list" else None)
    assert float(small.n2.temperature) == 0.5
    with torch.no_grad():
        small(x)  # runs
    for neuron in (model.n1, model.n2):  # the user's reset between streams
        neuron.mem = [] if form == "list" else None
    assert_strip_equal(ctrl, model, x)
    assert small.c1.out_channels == 8


class ScaledGain(nn.Module):
    """A gain per channel and position times one number (a decay, as a spiking neuron
    keeps in a buffer), computed in forward."""

    def __init__(self, channels, side):
        super().__init__()
        self.register_buffer("alpha", torch.tensor(0.7))
        self.register_buffer("gain", torch.rand(channels, side, side) + 0.5)

    def forward(self, x):
        return x * (self.alpha * self.gain)


def test_a_weight_times_one_number_is_cut_with_its_channels():
    """Held before: "combines weight alpha and weight gain of other shapes (() and
    (16, 8, 8))"."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), ScaledGain(16, 8), nn.ReLU(),
                        nn.Conv2d(16, 4, 1))
    ctrl, model = create_compressed_model(net, make_config((2, 3, 8, 8), prune_first_conv=True))
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 8, 8))
    assert small[0].out_channels == 8 and small[1].gain.shape == (8, 8, 8)


class CachedConv(nn.Module):
    """A causal conv whose past frames sit in a buffer, widened to the input's channels
    read in forward (streaming audio)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, 3)
        self.register_buffer("cache", torch.rand(1, cin, 2))

    def forward(self, x):
        return self.conv(torch.cat([self.cache.expand(x.shape[0], x.shape[1], 2), x], -1))


def test_a_buffer_widened_to_a_width_read_in_forward_holds_those_channels():
    """The widened buffer was taken for the input's channels, and the conv before it was
    cut under the whole buffer: the stripped model crashed."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(4, 16, 1), nn.ReLU(), CachedConv(16, 16), nn.ReLU(),
                        nn.Conv1d(16, 3, 1))  # fmt: skip
    ctrl, model = create_compressed_model(net, make_config((2, 4, 8), prune_first_conv=True))
    held = {name: r for names, r in ctrl.statistics().unpruned for name in names}
    assert held["0"] == "buffer 2.cache is read by expand"
    small = assert_strip_equal(ctrl, model, torch.randn(2, 4, 8))
    assert small[2].conv.out_channels == 8


class Warmed(nn.Module):
    """Computes a reference once, behind a flag, and a per-channel mean in training only."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)
        self.warm, self.stat = False, None

    def forward(self, x):
        y = torch.relu(self.c1(x))
        if not self.warm:
            self.ref, self.warm = y.detach().mean(), True
        if self.training:
            self.stat = y.detach().mean((0, 2, 3))
        elif self.stat is not None:
            y = y - self.stat.view(1, -1, 1, 1)
        return self.head(torch.relu(self.c2(y / self.ref)).mean((2, 3)))


def test_a_flag_written_beside_state_starts_over_with_it_and_training_state_too(caplog):
    """The strip reset the reference but not its flag: the stripped model never computed
    it again (0.67 off). A per-channel mean written in training only, which the capture's
    runs never write, crashed the stripped model (8 against 16)."""
    torch.manual_seed(0)
    config = make_config((2, 3, 8, 8), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(Warmed(), config)
    x = torch.randn(2, 3, 8, 8)
    model.train()
    model(x).sum().backward()
    model.eval()
    with caplog.at_level(logging.WARNING, logger="filterprune"):
        small = ctrl.strip().eval()
    assert "strip: warm, stat, ref are state the forward keeps" in caplog.text
    assert (small.warm, small.stat) == (False, None)
    model.warm, model.stat = False, None  # the user's reset
    assert_strip_equal(ctrl, model, x)
