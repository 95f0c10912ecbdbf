"""A YOLOv8-style detector, written here because the real package is not installed.

The parts that matter for pruning, as YOLOv8 has them: ``C2f`` blocks that iterate a
``chunk`` (torch.fx cannot trace that, torch.export can), ``SPPF`` (repeated pooling,
concatenated), a PAN neck (upsample, concat across scales) and a decoupled ``Detect``
head with a box branch (distribution focal loss over ``reg_max`` bins) and a class
branch per scale. In eval mode the head decodes boxes against anchors made from the
feature sizes and returns ``(decoded, raw_per_scale)``, several outputs.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["YoloV8", "C2f", "SPPF", "Detect"]


class Conv(nn.Sequential):
    """Conv (no bias) + BatchNorm + SiLU."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.SiLU())  # fmt: skip


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1, self.cv2 = Conv(c, c, 3), Conv(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """Split in two, run bottlenecks on the second half, concatenate every stage."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = Conv(cin, 2 * self.c)
        self.cv2 = Conv((2 + n) * self.c, cout)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 5) -> None:
        super().__init__()
        self.cv1, self.cv2 = Conv(cin, cin // 2), Conv(cin // 2 * 4, cout)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Detect(nn.Module):
    """Decoupled head: per scale, a box branch (4 * reg_max) and a class branch (nc)."""

    def __init__(self, nc: int, channels: tuple[int, ...], reg_max: int = 16) -> None:
        super().__init__()
        self.nc, self.reg_max, self.no = nc, reg_max, nc + 4 * reg_max
        c2, c3 = max(16, channels[0] // 4, 4 * reg_max), max(channels[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3),
                                               nn.Conv2d(c2, 4 * reg_max, 1)) for c in channels)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3),
                                               nn.Conv2d(c3, nc, 1)) for c in channels)  # fmt: skip
        self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(reg_max, dtype=torch.float).view(1, reg_max, 1, 1)

    def forward(self, feats: list[torch.Tensor]):
        pairs = zip(self.cv2, self.cv3, strict=True)
        raw = [torch.cat([box(x), cls(x)], 1) for x, (box, cls) in zip(feats, pairs, strict=True)]
        if self.training:
            return raw
        n = raw[0].shape[0]
        flat = torch.cat([r.view(n, self.no, -1) for r in raw], 2)
        box, cls = flat.split((4 * self.reg_max, self.nc), 1)
        anchors, strides = self._anchors(feats)
        bins = box.view(n, 4, self.reg_max, -1).transpose(2, 1).softmax(1)
        dist = self.dfl(bins).view(n, 4, -1)
        lt, rb = dist.chunk(2, 1)
        xyxy = torch.cat([anchors - lt, anchors + rb], 1) * strides
        return torch.cat([xyxy, cls.sigmoid()], 1), raw

    def _anchors(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        points, strides = [], []
        size = feats[0].shape[2] * 8
        for x in feats:
            h, w = x.shape[2:]
            ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
            points.append(torch.stack([xs, ys], 0).view(2, -1))
            strides.append(torch.full((1, h * w), size / h))
        return torch.cat(points, 1), torch.cat(strides, 1)


class YoloV8(nn.Module):
    """YOLOv8n's layout (width 1/4, depth 1/3): backbone, PAN neck, Detect over P3-P5."""

    def __init__(self, nc: int = 80) -> None:
        super().__init__()
        self.stem = nn.Sequential(Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), C2f(32, 32, 1, True))
        self.p3 = nn.Sequential(Conv(32, 64, 3, 2), C2f(64, 64, 2, True))
        self.p4 = nn.Sequential(Conv(64, 128, 3, 2), C2f(128, 128, 2, True))
        self.p5 = nn.Sequential(Conv(128, 256, 3, 2), C2f(256, 256, 1, True), SPPF(256, 256))
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.top4, self.top3 = C2f(384, 128), C2f(192, 64)
        self.down3, self.out4 = Conv(64, 64, 3, 2), C2f(192, 128)
        self.down4, self.out5 = Conv(128, 128, 3, 2), C2f(384, 256)
        self.detect = Detect(nc, (64, 128, 256))

    def forward(self, x: torch.Tensor):
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        n4 = self.top4(torch.cat([self.up(p5), p4], 1))
        n3 = self.top3(torch.cat([self.up(n4), p3], 1))
        o4 = self.out4(torch.cat([self.down3(n3), n4], 1))
        o5 = self.out5(torch.cat([self.down4(o4), p5], 1))
        return self.detect([n3, o4, o5])
