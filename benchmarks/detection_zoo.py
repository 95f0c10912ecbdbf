"""Prune torchvision's detection and segmentation models and a YOLOv8-style detector.

Random init made non-degenerate, eval mode. Checks: the stripped model equals the masked
one on every output (detections after NMS, with score thresholds at 0 so there are
some) and on every conv/linear layer output whose shape the cut leaves (the heads'
tensors); segmentation and YOLO also through ONNX Runtime. One subprocess per model.
Writes ``benchmarks/results/detection_zoo.csv`` and ``detection_zoo.md``.

    python benchmarks/detection_zoo.py                 # every model
    python benchmarks/detection_zoo.py ssd300_vgg16    # some (detection_zoo-partial)
    python benchmarks/detection_zoo.py --merge         # put the partial rows into detection_zoo
"""

from __future__ import annotations

import sys

from _isolated import (
    FLOAT64_NOTE,
    RESULTS,
    markdown_table,
    merged_rows,
    one_model_main,
    run_tables,
    write_csv,
)

from filterprune._atomic import atomic_write_text

DETECTION = ["fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
             "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn",
             "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "ssd300_vgg16",
             "ssdlite320_mobilenet_v3_large", "keypointrcnn_resnet50_fpn",
             "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"]  # fmt: skip
SEGMENTATION = ["fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
                "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]  # fmt: skip
YOLO = ["yolov8n_style"]
FIELDS = ["model", "task", "part", "ok", "input", "capture", "specialised", "flops_kept",
          "params_kept", "analysis_s", "max_rel_diff", "layer_rel_diff", "layers_compared",
          "onnx_rel_diff", "exporter", "unpruned_groups", "reason", "top_reason",
          "float64"]  # fmt: skip
SIZE = {"detection": 320, "segmentation": 128, "yolo": 320}
# Post-processing that torch.export cannot capture even as a draft (top-k on sizes known
# only at run time): backbone, FPN and head pruned, compared on the head's tensors.
HEAD_TENSORS = {"retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn"}
# Neither capture reads the whole model (torch.export stops on a guard in NMS, its draft in
# PyTorch's own assertion pass): every layer pruned and compared up to the heads' tensors,
# the region heads run on fixed proposals.
RCNN_TENSORS = {"maskrcnn_resnet50_fpn_v2"}
# Pasting masks into the image loops over boxes of run-time sizes: masks stay 28x28 per box.
MASKS_UNPASTED = {"maskrcnn_resnet50_fpn"}


def task(name: str) -> str:
    return "detection" if name in DETECTION else "yolo" if name in YOLO else "segmentation"


def build(name: str):
    """The model, random init, nothing downloaded; detectors at 320 px, keeping every box."""
    import torchvision

    if name in YOLO:
        from filterprune.testing.yolo import YoloV8

        return YoloV8()
    kwargs = {"weights": None, "weights_backbone": None}
    if name in DETECTION and not name.startswith("ssd"):
        kwargs.update(min_size=320, max_size=320)
    if name.startswith(("fasterrcnn", "maskrcnn", "keypointrcnn")):
        kwargs["box_score_thresh"] = 0.0
    elif name in DETECTION:
        kwargs["score_thresh"] = 0.0
    return torchvision.models.get_model(name, **kwargs)


def run_one(name: str) -> dict:
    from filterprune.testing.zoo import check_module

    kind = task(name)
    if name in HEAD_TENSORS:
        from filterprune.testing.detectors import HeadTensors

        row = check_module(lambda: HeadTensors(build(name)), name, size=SIZE[kind])
        return {"task": kind, "part": part_of(name), **row}
    if name in RCNN_TENSORS:
        from filterprune.testing.detectors import RCNNTensors

        row = check_module(lambda: RCNNTensors(build(name), SIZE[kind]), name, size=SIZE[kind],
                           onnx=False)  # fmt: skip
        return {"task": kind, "part": part_of(name), **row}
    make = build
    if name in MASKS_UNPASTED:
        from filterprune.testing.detectors import masks_unpasted

        make = lambda n: masks_unpasted(build(n))  # noqa: E731
    row = check_module(lambda: make(name), name, size=SIZE[kind], onnx=kind != "detection",
                       detector=kind == "detection")  # fmt: skip
    return {"task": kind, "part": part_of(name), **row}


def part_of(name: str) -> str:
    if name in HEAD_TENSORS:
        return "backbone+FPN+head (tensors before post-processing)"
    if name in RCNN_TENSORS:
        return "backbone+FPN+RPN head+region heads on fixed proposals (tensors)"
    return "whole model, masks not pasted" if name in MASKS_UNPASTED else "whole model"


def main(argv: list[str]) -> None:
    if one_model_main(argv, run_one):
        return
    order = DETECTION + SEGMENTATION + YOLO
    if argv[:1] == ["--merge"]:
        rows = merged_rows("detection_zoo")
        write(sorted(rows, key=lambda r: order.index(r["model"])), partial=False)
        return
    partial = bool(argv)
    run_tables(__file__, argv or order, stem(partial), lambda rows: write(rows, partial))


def stem(partial: bool) -> str:
    return "detection_zoo-partial" if partial else "detection_zoo"


def write(rows: list[dict], partial: bool) -> None:
    for r in rows:  # failed rows say neither
        r["task"], r["part"] = task(r["model"]), part_of(r["model"])
    write_csv(RESULTS / f"{stem(partial)}.csv", rows, FIELDS)
    lines = [
        "# Detection and segmentation: filter_pruning level 0.5 (baseline), first/downsample "
        "convs on",
        "",
    ]
    for kind in ("detection", "segmentation", "yolo"):
        part = [r for r in rows if r["task"] == kind]
        ok = [r for r in part if r.get("ok")]
        lines.append(f"- {kind}: {len(ok)}/{len(part)} pass")
    lines += [
        "",
        "torchvision 0.29.1 models with `weights=None, weights_backbone=None` (detectors at "
        "320 px, score thresholds 0 so every image keeps detections), segmentation at 128 px, "
        "the YOLOv8-style detector of `filterprune.testing.yolo` at 320 px; random init made "
        "non-degenerate, eval mode, batch 2. ok: stripped == masked within 1e-4 relative on "
        "every output and on every conv/linear output whose shape the cut leaves "
        "(`layers_compared`, detectors), ONNX Runtime == stripped (segmentation, YOLO), some "
        "FLOPs cut. capture: torch.export where fx cannot trace (post-processing, "
        "list(chunk)); specialised: data-dependent places taken as they ran on the sample. "
        "top_reason: the most frequent reason a group stays whole. part: what was pruned and "
        "compared; RetinaNet and FCOS post-process with top-k on sizes known only at run time, "
        "which neither capture reads (not even `torch.export.draft_export`), so their backbone, "
        "FPN and head are pruned (`filterprune.testing.detectors.HeadTensors`, fed the "
        "normalised image batch) and compared on the head's outputs, also through ONNX; the "
        "post-processing reads those tensors, whose shapes stay. Mask R-CNN: pasting masks "
        "into the image loops over boxes of run-time sizes, which torch.export cannot capture "
        "either; it has no weights, so masks stay the mask head's 28x28 map per box "
        "(`filterprune.testing.detectors.masks_unpasted`) and are compared so. "
        "maskrcnn_resnet50_fpn_v2: torch.fx cannot trace it, torch.export stops on a "
        "data-dependent guard in NMS (`4*u1 > 4000`, the size switch of `batched_nms`) and "
        "its draft on an assertion of PyTorch's own runtime-assert pass, so its backbone, "
        "FPN, RPN head and region heads (box, mask) are pruned through "
        "`filterprune.testing.detectors.RCNNTensors`, the region heads run on a fixed grid "
        "of 16 proposals per image, and compared on every tensor they return; every layer "
        "that reads the feature pyramid is on that path, so the whole detector runs on the "
        "pruned modules (`tests/torch/test_detectors.py` checks a small Mask R-CNN so).",
        "",
        FLOAT64_NOTE,
        "",
        *markdown_table(rows, FIELDS),
    ]
    atomic_write_text(RESULTS / f"{stem(partial)}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
