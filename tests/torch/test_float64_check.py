"""Where float32 rounding alone exceeds the zoo tolerance, the checks go to float64.

Some random-init models amplify rounding so much that their own float32 output is 1e-4
away from their float64 output (timm's efficientvit_m0). A float32 comparison then
cannot tell a wrong cut from rounding; float64 can: an exact cut leaves 1e-12.
"""

import torch
from torch import nn

from filterprune.testing.zoo import TOLERANCE, _float64_check, relative_diff


class Cancel(nn.Module):
    """``(x + first) - first``: the identity, in float32 to half the step at ``first``."""

    def __init__(self, first: float, scale: float = 1.0):
        super().__init__()
        self.first, self.scale = first, scale

    def forward(self, x):
        return ((x + self.first) - self.first) * self.scale


def _onnx_like(model, x):
    return [model(x).detach()]  # a float32 run of the same graph, as ONNX Runtime makes


def test_rounding_alone_passes_in_float64():
    x = torch.randn(2, 3, 8, 8)
    masked, small = Cancel(1e4), Cancel(2e4)  # steps 1e-3 and 2e-3
    assert relative_diff(masked(x), small(x)) > TOLERANCE  # float32 cannot tell
    found = _float64_check(masked, small, x, _onnx_like(Cancel(1e4), x))
    assert found["strip_ok"] and found["onnx_ok"], found
    assert "stripped vs masked in float64 0.0e+00" in found["float64"]


def test_a_wrong_cut_still_fails_in_float64():
    x = torch.randn(2, 3, 8, 8)
    masked, wrong = Cancel(1e4), Cancel(2e4, scale=1.001)  # off by 1e-3: not rounding
    found = _float64_check(masked, wrong, x, _onnx_like(Cancel(1e4, scale=1.01), x))
    assert not found["strip_ok"] and not found["onnx_ok"], found
    assert "stripped vs masked in float64 1.0e-03" in found["float64"]


def test_no_float64_verdict_where_the_model_runs_only_in_float32():
    class Float32Only(nn.Module):
        def forward(self, x):
            return x @ torch.ones(x.shape[-1], 2)  # a float32 constant made in forward

    x = torch.randn(2, 3, 8, 8)
    assert _float64_check(Float32Only(), Float32Only(), x, None) == {}


class DeadBranch(nn.Module):
    """A conv whose output the model drops, like a box head's rows that NMS drops."""

    def __init__(self, scale: float):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        nn.init.constant_(self.conv.weight, scale)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        self.conv(x)
        return (x + 1e4) - 1e4


def test_a_detector_compares_its_layers_in_float64_too():
    x = torch.randn(2, 3, 8, 8)
    masked, wrong = DeadBranch(1.0), DeadBranch(1.001)  # the outputs agree, a layer does not
    assert _float64_check(masked, wrong, x, None)["strip_ok"]
    found = _float64_check(masked, wrong, x, None, detector=True)
    assert not found["strip_ok"], found
    assert _float64_check(masked, DeadBranch(1.0), x, None, detector=True)["strip_ok"]
