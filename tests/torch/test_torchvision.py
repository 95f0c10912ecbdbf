"""Torchvision classifiers named by the workflow (random init): prune, strip, export, compare."""

import pytest

from filterprune.testing.zoo import check_model


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121"])
def test_torchvision_model_prunes_strips_and_exports(name):
    row = check_model(name)
    assert row["ok"], row
    assert row["flops_kept"] < 0.4, row
