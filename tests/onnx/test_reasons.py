"""Why zero filters stay: the core selection's reasons, as the converter reports them."""

import torch
from onnx_helpers import (
    convert,
    export,
    layer,
    seed_torch,  # noqa: F401 - autouse fixture
    weight_shape,
    zero,
)
from torch import nn

from filterprune.core import selection
from filterprune.core.selection import AT_LEAST_ONE, EQUAL_GROUPS, UNBALANCED
from filterprune.onnx import capture, find_removable, load_model


class Grouped(nn.Module):
    """A conv feeding a grouped conv (2 groups of 4) that ties its input and output."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(8, 8, 1, groups=2)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(torch.relu(self.g(torch.relu(self.a(x)))))


def _grouped(tmp_path, rows):
    m = Grouped()
    zero(m.a, rows)
    zero(m.g, rows)
    return export(m, torch.randn(1, 3, 4, 4), tmp_path / "m.onnx")


def test_grouped_conv_keeps_equal_groups(tmp_path):
    x = torch.zeros(1, 3, 4, 4)
    new, report = convert(_grouped(tmp_path, [0, 1, 2, 4]), x)  # 1 of 4 left, then 3 of 4
    s = layer(report, "/a/")
    assert (s.removed, s.zero_filters, s.kept_zero, s.reason) == (2, 4, 2, EQUAL_GROUPS)
    assert weight_shape(new, "/g/") == (6, 3, 1, 1)
    assert f"/a/Conv: 2 kept: {EQUAL_GROUPS}" in str(report)


def test_a_layer_keeps_one_channel(tmp_path):
    m = Grouped()
    zero(m.a, [0, 1, 2, 3, 4, 5, 6, 7])
    zero(m.g, [0, 1, 2, 3, 4, 5, 6, 7])
    new, report = convert(export(m, torch.randn(1, 3, 4, 4), tmp_path / "m.onnx"),
                          torch.zeros(1, 3, 4, 4))  # fmt: skip
    s = layer(report, "/a/")
    assert (s.removed, s.kept_zero, s.reason) == (6, 2, AT_LEAST_ONE)
    assert weight_shape(new, "/g/") == (2, 1, 1, 1)  # one channel in each group


def test_group_kept_whole_says_why(tmp_path, monkeypatch):
    """Real models balance in a pass or two; with no pass allowed the safety net shows."""
    monkeypatch.setattr(selection, "_ROUNDS", 0)
    new, report = convert(_grouped(tmp_path, [0, 1, 2, 4]), torch.zeros(1, 3, 4, 4))
    s = layer(report, "/a/")
    assert (s.removed, s.kept_zero, s.reason) == (0, 4, UNBALANCED)
    assert weight_shape(new, "/g/") == (8, 4, 1, 1)
    assert f"/a/Conv: 4 kept: {UNBALANCED}" in str(report)


class Spread(Grouped):
    """Channels 1-4 of the grouped conv's output also reshaped over two axes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        y = torch.relu(self.g(torch.relu(self.a(x))))
        z = y[:, 1:5].reshape(1, 2, 2, 2, 2).permute(0, 2, 1, 3, 4).reshape(1, -1)
        return self.out(y).flatten(1)[:, :2] + self.fc(z)


def test_layout_fix_keeps_groups_equal(tmp_path):
    """Zeros 2, 3, 6, 7 leave 2 of 4 in each group; the reshape over two axes then needs
    1-4 kept, so 6 and 7 stay too (the grouped weight was uneven and slicing it failed)."""
    m = Spread()
    zero(m.a, [2, 3, 6, 7])
    zero(m.g, [2, 3, 6, 7])
    path = export(m, torch.randn(1, 3, 2, 2), tmp_path / "m.onnx")
    new, report = convert(path, torch.zeros(1, 3, 2, 2))
    s = layer(report, "/a/")
    assert (s.removed, s.kept_zero) == (0, 4) and "spreads channels" in s.reason
    decision = find_removable(capture(load_model(path)))
    roots = decision.analysis.state.uf.roots(decision.analysis.state.uses["/a/Conv"]["out"].ids)
    assert [decision.reasons[int(r)] for r in roots[[6, 7]]] == [EQUAL_GROUPS, EQUAL_GROUPS]
