"""A cut that would make the masked model non-finite is not made.

A pruned channel reads as zero in the masked model. A forward that divides by it (a
per-channel norm without epsilon) or takes its log gives an infinity or NaN there, which
the next layer's zeroed weights do not cancel, so the masked model (and training) would
be NaN where the stripped model is not. At creation the model runs once with the cut in
place; the groups that make it non-finite are kept whole with the reason, the others are
cut as before. Every parameter and statistic is redrawn before comparing.
"""

import pytest
import torch
from torch import nn
from torch_helpers import assert_strip_equal, make_config

from filterprune.core.finite import NONFINITE
from filterprune.testing.zoo import nondegenerate, relative_diff
from filterprune.torch import create_compressed_model


class Chain(nn.Module):
    """Four conv-BN-ReLU stages, each its own group; the stages in ``divide`` divide by
    their spatial norm (plus ``eps``), the stages in ``log`` take the log of the BN's
    magnitude (no ReLU after it), or of the conv's where they are in ``no_bn`` too (the
    ReLU after it then hides the -inf forward, not the NaN gradient behind it)."""

    def __init__(self, divide=(), log=(), no_bn=(), eps=0.0, log_input=False):
        super().__init__()
        widths = [3, 16, 16, 16, 16]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False)
                                   for a, b in zip(widths, widths[1:], strict=False))  # fmt: skip
        self.bns = nn.ModuleList(nn.BatchNorm2d(16) for _ in range(4))
        self.head = nn.Linear(16, 5)
        self.divide, self.log, self.no_bn, self.eps = divide, log, no_bn, eps
        self.log_input = log_input  # inputs are non-negative (images in [0, 1))

    def forward(self, x):
        if self.log_input:
            x = torch.log(x + 1e-6)
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            x = conv(x) if i in self.no_bn else bn(conv(x))
            if i in self.log:
                x = torch.log(x.abs())
                if i not in self.no_bn:
                    continue  # no ReLU: the -inf of a pruned channel reaches the next layer
            if i in self.divide:  # a live channel's norm is not zero, a pruned one's is
                x = x / (x.norm(dim=(2, 3), keepdim=True) + self.eps)
            x = torch.relu(x)
        return self.head(x.mean((2, 3)))


def prune(model, x=None):
    nondegenerate(model)
    config = make_config((1, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(model, config)
    x = torch.randn(2, 3, 16, 16) if x is None else x
    small = assert_strip_equal(ctrl, model, x, tol=1e-5)
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    return ctrl, model, small, held


@pytest.mark.parametrize("culprits", [{"divide": (1,)}, {"log": (2,)}, {"divide": (0, 3)},
                                      {"log": (1,), "no_bn": (1,)}])
def test_only_the_groups_whose_cut_is_not_finite_are_kept_whole(culprits):
    ctrl, model, small, held = prune(Chain(**culprits))
    stages = set(culprits.get("divide", ())) | set(culprits.get("log", ()))
    for i in range(4):
        if i in stages:
            assert held[f"convs.{i}"] == NONFINITE and small.convs[i].out_channels == 16
        else:
            assert f"convs.{i}" not in held and small.convs[i].out_channels == 8


def test_the_probe_finds_an_input_the_uncut_model_is_finite_on():
    """Normal draws make log(x) NaN before any cut; the probe then tries [0, 1)."""
    ctrl, model, small, held = prune(Chain(divide=(1,), log_input=True), torch.rand(2, 3, 16, 16))
    assert held["convs.1"] == NONFINITE and "convs.2" not in held


def test_a_division_with_an_epsilon_is_cut():
    ctrl, model, small, held = prune(Chain(divide=(1, 2), eps=1e-3))
    assert not any(p.startswith("convs") for p in held)
    assert [c.out_channels for c in small.convs] == [8, 8, 8, 8]


def test_the_masked_model_trains_to_finite_weights():
    ctrl, model, small, held = prune(Chain(divide=(1,)))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        loss = model(torch.randn(4, 3, 16, 16)).square().mean() + ctrl.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_without_the_probe_the_cut_would_be_nan(monkeypatch):
    """The test above is not vacuous: the same cut, not probed, makes the masked model NaN."""
    from filterprune.torch import controller

    monkeypatch.setattr(controller.FilterPruningController, "_cut_probe",
                        lambda self: _nothing())  # fmt: skip
    model = nondegenerate(Chain(divide=(1,)))
    config = make_config((1, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    ctrl, model = create_compressed_model(model, config)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 16, 16))
    assert torch.isnan(out).all()


def _nothing():
    import contextlib

    return contextlib.nullcontext(None)


def test_the_probe_leaves_the_training_flag_and_the_random_state():
    model = nondegenerate(Chain(divide=(1,))).train()
    config = make_config((1, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    ctrl, model = create_compressed_model(model, config)
    assert model.training and torch.equal(torch.random.get_rng_state(), state)


def test_relative_diff_counts_a_nan_as_a_difference():
    a = torch.tensor([1.0, 2.0])
    assert relative_diff(a, torch.tensor([1.0, float("nan")])) == float("inf")
    assert relative_diff(torch.tensor([1.0, float("inf")]), torch.tensor([1.0, float("-inf")])) \
        == float("inf")
    assert relative_diff(a, a + 1e-3) == pytest.approx(5e-4, rel=1e-3)


def test_a_dry_run_holds_the_same_groups_and_leaves_the_model_as_it_was():
    from filterprune.core.workflow import dry_run
    from filterprune.torch.frontend import TorchFrontend

    model = nondegenerate(Chain(divide=(1,)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    config = make_config((1, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    dry = dry_run(TorchFrontend(), model, config)
    held = {p: r for producers, r in dry.statistics().unpruned for p in producers}
    assert held["convs.1"] == NONFINITE and "convs.0" not in held
    assert [type(m) for m in model.modules()] == classes
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("importance", ["L2", "geometric_median", "coupled_L2"])
def test_a_filter_holding_nan_or_inf_goes_first(value, importance, caplog):
    """One NaN made every geometric-median score NaN (the first filters were kept, the
    NaN one among them: the masked model was NaN); under L2 an inf filter was kept."""
    caplog.set_level("WARNING", logger="filterprune")
    torch.manual_seed(0)
    model = nondegenerate(Chain())
    with torch.no_grad():
        model.convs[1].weight[5, 0, 0, 0] = value
    assert not torch.isfinite(model.eval()(torch.randn(2, 3, 8, 8))).all()
    ctrl, model = create_compressed_model(model, make_config(
        (1, 3, 8, 8), filters_multiple_of=1, filter_importance=importance))  # fmt: skip
    kept = ctrl.keeps()["convs.1"]["out"]
    assert not kept[5] and kept.sum() == 8
    assert torch.isfinite(model.eval()(torch.randn(2, 3, 8, 8))).all()
    assert "1 filter(s) of convs.1 hold NaN or inf" in caplog.text
