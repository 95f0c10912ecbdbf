"""The zero-filter converter reads what either torch ONNX exporter writes, on real models.

The two exporters differ in node names, constant folding and functions; on each model the
converted masked export must have the shrunk export's weights, match the masked model
and count the frontend's FLOPs (benchmarks/convert_exports.py runs the whole zoo).
"""

import pytest
import timm
import torchvision

from filterprune.testing.convert import check_convert

MODELS = {  # name: (build, input side)
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(), 32),  # SE, hardswish
    "test_convnext": (lambda: timm.create_model("test_convnext"), 64),  # F.layer_norm, layer scale
    "test_vit": (lambda: timm.create_model("test_vit"), 64),  # attention: MatMul, reshapes
}


# The TorchScript exporter has no antialiased bicubic resize (test_vit resamples its
# position embedding to the input size): the current exporter only, there.
CASES = [(name, exporter) for name in MODELS for exporter in ("dynamo", "torchscript")
         if (name, exporter) != ("test_vit", "torchscript")]  # fmt: skip


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_converter_reads_both_exporters_on_real_models(name, exporter):
    build, size = MODELS[name]
    row = check_convert(build(), size, exporter=exporter)
    assert row["exporter"] == exporter
    assert row["same_weights"], row
    assert row["kept_zero"] == 0, row
    assert row["rel_diff"] < 1e-4, row
    assert row["flops_kept"] == pytest.approx(row["strip_flops_kept"], rel=1e-6), row
    assert row["flops_kept"] < 0.9, row
