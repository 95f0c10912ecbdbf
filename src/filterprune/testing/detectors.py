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

__all__ = ["HeadTensors", "masks_unpasted"]


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


def masks_unpasted(detector: nn.Module) -> nn.Module:
    """A Mask R-CNN whose masks stay as its mask head predicts them (one 28x28 map per box).

    Pasting them into the image (``paste_masks_in_image``) loops over boxes with sizes
    known only at run time, which torch.export cannot capture; it has no weights, and it
    reads the boxes and the 28x28 maps the pruned model returns. Everything else (boxes
    scaled back to the input size) stays.

    Returns:
        ``detector``, changed in place.
    """
    from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

    class UnpastedTransform(GeneralizedRCNNTransform):
        def postprocess(self, result, image_shapes, original_image_sizes):
            for pred, size, original in zip(result, image_shapes, original_image_sizes,
                                            strict=True):  # fmt: skip
                pred["boxes"] = resize_boxes(pred["boxes"], size, original)
            return result

    detector.transform.__class__ = UnpastedTransform
    return detector
