"""The converter's check fails on NaN or infinite outputs (issue 13, item 6)."""

import math

import numpy as np
import pytest
import torch
from onnx_helpers import export, seed_torch, zero  # noqa: F401 - autouse fixture
from torch import nn

from filterprune.errors import ConversionError
from filterprune.onnx import remove_zero_filters
from filterprune.onnx.convert import max_rel_diff


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_max_rel_diff_of_non_finite_outputs_is_inf(bad):
    good = np.ones((2, 3), np.float32)
    broken = good.copy()
    broken[1, 2] = bad
    assert max_rel_diff([good], [broken]) == math.inf
    assert max_rel_diff([broken], [good]) == math.inf
    assert max_rel_diff([broken], [broken]) == math.inf  # NaN == NaN proves nothing
    assert max_rel_diff([good], [good]) == 0.0


def test_a_model_with_nan_outputs_fails_verification(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                        nn.Conv2d(8, 4, 1))  # fmt: skip
    zero(net[0], [0, 5])
    with torch.no_grad():
        net[2].weight[4, 1, 0, 0] = float("nan")  # in a kept filter: every output is NaN
    path = export(net, torch.randn(1, 3, 8, 8), tmp_path / "nan.onnx")
    with pytest.raises(ConversionError, match=r"differ from the input model's by inf "
                       r"\(relative\), more than tolerance=0\.0001 \(inf: an output is NaN or "
                       r"infinite, or shapes differ\)"):
        remove_zero_filters(path)
    small, report = remove_zero_filters(path, verify=False)  # the rewrite itself works
    assert report.changed
