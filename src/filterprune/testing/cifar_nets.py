"""Small CIFAR-style networks for one-channel 28x28 input (Fashion-MNIST): the accuracy
benchmark's models and the tests' reference nets.

* :class:`ResNet20`: three stages of three basic blocks, 16/32/64 wide, 1x1 conv
  shortcuts where the shape changes.
* :class:`MobileNetV2Small`: inverted residuals (1x1 expand, 3x3 depthwise, 1x1 project).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResNet20", "MobileNetV2Small"]


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]  # fmt: skip


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 conv) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cout, stride=stride)
        self.conv2, self.bn2 = _conv_bn(cout, cout)
        self.shortcut = (nn.Sequential(*_conv_bn(cin, cout, 1, stride))
                         if stride != 1 or cin != cout else nn.Identity())  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016), widths 16/32/64, for ``(N, 1, 28, 28)`` input."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(1, widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, width in enumerate(widths):
            for j in range(3):
                layers.append(BasicBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; residual if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(
            *_conv_bn(cin, hidden, 1), nn.ReLU6(),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(),
            *_conv_bn(hidden, cout, 1),
        )  # fmt: skip
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileNetV2Small(nn.Module):
    """A MobileNetV2-style net for ``(N, 1, 28, 28)`` input (about 0.2M parameters)."""

    SPEC = ((16, 1, 1), (24, 2, 2), (32, 2, 2), (64, 2, 2), (96, 1, 1))  # width, blocks, stride

    def __init__(self, num_classes: int = 10, expand: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(1, 16), nn.ReLU6())
        blocks, cin = [], 16
        for width, n, stride in self.SPEC:
            for j in range(n):
                blocks.append(InvertedResidual(cin, width, stride if j == 0 else 1, expand))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_conv_bn(cin, 256, 1), nn.ReLU6())
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
