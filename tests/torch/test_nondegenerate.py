"""Checks on random-init models first make every parameter count (filterprune.testing.zoo)."""

import torch
from torch import nn

from filterprune.testing.zoo import nondegenerate, relative_diff


class ScaledBranch(nn.Module):
    """A ConvNeXt-style residual block: the branch is scaled by a 1e-6 layer scale, and a
    zero-initialised BatchNorm gamma and head, as timm and torchvision initialise them."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(16, 64, 1), nn.Conv2d(64, 16, 1)
        self.scale = nn.Parameter(torch.full((16, 1, 1), 1e-6))
        self.bn = nn.BatchNorm2d(16)
        nn.init.zeros_(self.bn.weight)
        self.head = nn.Linear(16, 10)
        nn.init.zeros_(self.head.weight)
        self.fixed = nn.Parameter(torch.arange(4.0), requires_grad=False)

    def forward(self, x):
        x = self.stem(x)
        x = self.bn(x + self.scale * self.fc2(torch.relu(self.fc1(x))))
        return self.head(x.mean((2, 3)))


def _wrong_cut(model):
    """The branch's hidden channels shuffled: what a wrong cut inside the branch does."""
    torch.manual_seed(1)
    model.fc2.weight.data = model.fc2.weight.data[:, torch.randperm(64)]
    return model


def _built(seed):
    torch.manual_seed(seed)
    return ScaledBranch()


def test_every_parameter_gets_a_seeded_value_that_counts():
    a, b = nondegenerate(_built(0)), nondegenerate(_built(0))
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name  # seeded: the same model gets the same values
        if name != "fixed":
            assert p.detach().std() > 0.05, name  # no constant, no tiny scale
    assert torch.equal(a.fixed, torch.arange(4.0))  # frozen on purpose: left alone
    assert 0.5 <= float(a.bn.running_var.min()) and float(a.bn.running_var.max()) <= 1.0
    assert float(a.bn.running_mean.abs().max()) > 0


def test_a_wrong_cut_hides_in_degenerate_init_and_shows_after():
    """Why the torchvision table showed exactly 0.0 for ConvNeXt: with 1e-6 layer scales,
    nothing inside a residual branch reaches the output, so a wrong cut compares equal."""
    x = torch.randn(2, 3, 8, 8)
    for fix, seen in ((False, False), (True, True)):
        torch.manual_seed(0)
        model = ScaledBranch()
        nn.init.normal_(model.head.weight, std=0.02)  # a working head, as the old check had
        if fix:
            nondegenerate(model)
        with torch.no_grad():
            ref = model(x)
            diff = relative_diff(ref, _wrong_cut(model)(x))
        assert (diff > 1e-4) is seen, (fix, diff)
