"""torchvision one-stage detectors cut before their post-processing.

RetinaNet and FCOS post-process with sizes known only at run time (top-k candidates per
level, then NMS): neither torch.fx nor torch.export, even as a draft, captures that code.
What carries weights, and so what pruning touches, comes before it: the backbone, its
feature pyramid and the head. :class:`HeadTensors` is that part, returning the tensors
the post-processing reads; their shapes stay when pruned (the head's outputs are model
outputs), so the full detector runs unchanged on the pruned modules.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["HeadTensors"]


class HeadTensors(nn.Module):
    """A RetinaNet or FCOS from the normalised image batch to its head's outputs.

    Args:
        detector: The detector; its ``backbone`` and ``head`` are shared, not copied, so
            pruning this model prunes them inside the detector.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = detector.backbone, detector.head

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.head(list(self.backbone(images).values()))
