import pytest
import torch
from torch_helpers import SmallNet, randomize_bn


@pytest.fixture
def small_net():
    torch.manual_seed(0)
    return randomize_bn(SmallNet()).eval()
