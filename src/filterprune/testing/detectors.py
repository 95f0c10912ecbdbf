"""torchvision detectors cut before their post-processing.

RetinaNet and FCOS post-process with sizes known only at run time (top-k candidates per
level, then NMS): neither torch.fx nor torch.export, even as a draft, captures that code.
What carries weights, and so what pruning touches, comes before it: the backbone, its
feature pyramid and the head. :class:`HeadTensors` is that part, returning the tensors
the post-processing reads; their shapes stay when pruned (the head's outputs are model
outputs), so the full detector runs unchanged on the pruned modules.
:class:`RCNNTensors` does the same for two-stage R-CNNs, whose region heads read
proposals from NMS: they run on a fixed grid of proposals instead.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["HeadTensors", "RCNNTensors", "masks_unpasted"]


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


class RCNNTensors(nn.Module):
    """A two-stage R-CNN (Faster, Mask, Keypoint) from the image batch to its heads'
    tensors, with the region heads run on fixed proposals.

    For a detector whose whole forward no capture reads: the proposals come from NMS on
    run-time sizes, so here they are a fixed grid of boxes instead. Every layer that reads
    the feature pyramid is still on the path (RPN head, box head and, when present, mask
    or keypoint head), so a cut of the pyramid's channels is one the full detector runs.

    Args:
        detector: The detector; its modules are shared, so pruning this prunes them.
        size: The (square) input size, for the proposal grid and the image sizes.
        boxes_per_side: Grid proposals per side (``boxes_per_side**2`` per image).
    """

    def __init__(self, detector: nn.Module, size: int, boxes_per_side: int = 4) -> None:
        super().__init__()
        import torch

        self.backbone, self.rpn_head = detector.backbone, detector.rpn.head
        self.roi_heads, self.size = detector.roi_heads, size
        step = size / boxes_per_side
        corners = torch.arange(boxes_per_side, dtype=torch.float32) * step
        y, x = torch.meshgrid(corners, corners, indexing="ij")
        grid = torch.stack([x, y, x + step, y + step], -1).reshape(-1, 4)
        self.register_buffer("proposals", grid, persistent=False)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        features = self.backbone(images)
        objectness, deltas = self.rpn_head(list(features.values()))
        heads = self.roi_heads
        boxes = [self.proposals] * images.shape[0]
        shapes = [(self.size, self.size)] * images.shape[0]
        out = {f"objectness{i}": o for i, o in enumerate(objectness)}
        out.update({f"rpn_deltas{i}": d for i, d in enumerate(deltas)})
        pooled = heads.box_head(heads.box_roi_pool(features, boxes, shapes))
        out["class_logits"], out["box_regression"] = heads.box_predictor(pooled)
        for kind in ("mask", "keypoint"):
            if getattr(heads, f"{kind}_roi_pool", None) is not None:
                pooled = getattr(heads, f"{kind}_roi_pool")(features, boxes, shapes)
                out[kind] = getattr(heads, f"{kind}_predictor")(
                    getattr(heads, f"{kind}_head")(pooled))
        return out
