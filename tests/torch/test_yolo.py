"""A YOLOv8-style detector: C2f with chunk, SPPF, a decoupled Detect head, several outputs."""

import torch
from torch_helpers import make_config

from filterprune.testing.yolo import YoloV8
from filterprune.testing.zoo import flat_tensors, nondegenerate, relative_diff
from filterprune.torch import create_compressed_model


def test_yolov8_backbone_and_neck_prune_head_stays_outputs_equal():
    torch.manual_seed(0)
    model = nondegenerate(YoloV8(nc=80).eval())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        shapes = [t.shape for t in flat_tensors(model(x))]
    config = make_config((1, 3, 64, 64), prune_first_conv=True, prune_downsample_convs=True)
    ctrl, model = create_compressed_model(model, config)
    assert ctrl.captured.extra["capture"] == "torch.fx"  # the chunk iterated as the sample has it
    stats = ctrl.statistics()
    assert stats.flops_kept < 0.4
    cut = {s.name for s in stats.layers if s.kept < s.filters}
    assert {"stem.2.m.0.cv1.0", "p5.2.cv1.0", "top3.m.0.cv2.0", "out5.cv1.0"} <= cut
    assert {"detect.cv2.0.0.0", "detect.cv3.2.1.0"} <= cut  # the head's own towers
    # what leaves the head stays: box bins, classes and the fixed DFL projection
    whole = {p[0]: reason for p, reason in stats.unpruned}
    for layer in ["detect.cv2.0.2", "detect.cv3.1.2", "detect.dfl"]:
        assert whole[layer] == "view: reshape fixes the channel count in code"
    small = ctrl.strip().eval()
    for box, cls in zip(small.detect.cv2, small.detect.cv3, strict=True):
        assert (box[2].out_channels, cls[2].out_channels) == (64, 80)
    assert torch.equal(small.detect.dfl.weight.view(-1), torch.arange(16.0))
    with torch.no_grad():
        ref, out = model.eval()(x), small(x)
    assert [t.shape for t in flat_tensors(out)] == shapes
    assert relative_diff(ref, out) <= 1e-4
