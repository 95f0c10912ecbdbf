"""One-stage detectors whose post-processing no capture reads: prune up to the head."""

import copy

import pytest
import torch
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from filterprune.testing.detectors import HeadTensors, RCNNTensors
from filterprune.testing.zoo import _config, check_module, nondegenerate, relative_diff
from filterprune.torch import create_compressed_model

SIZE = 64


def _detector(kind):
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                   returned_layers=[2, 3, 4],
                                   extra_blocks=LastLevelP6P7(256, 256))  # fmt: skip
    return kind(backbone, num_classes=3, min_size=SIZE, max_size=SIZE, score_thresh=0.0).eval()


@pytest.mark.parametrize("kind", [RetinaNet, FCOS])
def test_backbone_fpn_and_head_prune_and_keep_the_head_outputs(kind):
    row = check_module(lambda: HeadTensors(_detector(kind)), kind.__name__, size=SIZE)
    assert row["ok"], row
    assert row["flops_kept"] < 0.9, row  # FCOS: GroupNorm in the head towers


def test_the_detector_runs_on_the_pruned_parts_as_on_the_masked_ones():
    detector = nondegenerate(_detector(RetinaNet))
    ctrl, masked = create_compressed_model(HeadTensors(detector), _config(SIZE, 0.5))
    small = ctrl.strip().eval()
    images = [torch.rand(3, SIZE, SIZE)]
    pruned = copy.deepcopy(detector)
    pruned.backbone, pruned.head = small.backbone, small.head
    detector.backbone, detector.head = masked.backbone, masked.head
    with torch.no_grad():
        ref, out = detector(images), pruned(images)
    assert ref[0]["boxes"].shape[0] > 0
    assert relative_diff(ref, out) <= 1e-4



def _mask_rcnn():
    from torchvision.models.detection import MaskRCNN

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    return MaskRCNN(backbone, num_classes=3, min_size=SIZE, max_size=SIZE,
                    box_score_thresh=0.0).eval()  # fmt: skip


def test_a_two_stage_detector_prunes_through_its_region_heads_on_fixed_proposals():
    detector = nondegenerate(_mask_rcnn())
    ctrl, masked = create_compressed_model(RCNNTensors(detector, SIZE), _config(SIZE, 0.5))
    assert ctrl.statistics().flops_kept < 0.6
    small = ctrl.strip().eval()
    # the pyramid's outputs too: RoIAlign and the pooler's writes into its zeros pass them
    assert small.backbone.fpn.layer_blocks[0][0].out_channels < 256
    images = [torch.rand(3, SIZE, SIZE)]
    with torch.no_grad():
        assert relative_diff(masked(images[0][None]), small(images[0][None])) <= 1e-4
    pruned = copy.deepcopy(detector)  # the whole detector, on the pruned parts
    pruned.backbone, pruned.rpn.head, pruned.roi_heads = (small.backbone, small.rpn_head,
                                                          small.roi_heads)  # fmt: skip
    with torch.no_grad():
        ref, out = detector.eval()(images), pruned.eval()(images)
    assert ref[0]["boxes"].shape[0] > 0 and ref[0]["masks"].shape[0] > 0
    assert relative_diff(ref, out) <= 1e-4
