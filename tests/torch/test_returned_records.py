"""Models that return records: a dataclass, a namedtuple, a dict subclass (a model-output
record). Their layers feed a model output, and the ONNX file has their tensors."""

import collections
import dataclasses
import typing

import numpy as np
import pytest
import torch
from torch import nn
from torch_helpers import make_config, run_onnx

from filterprune.testing.zoo import nondegenerate
from filterprune.torch import create_compressed_model


@dataclasses.dataclass
class Record:
    logits: torch.Tensor
    feat: torch.Tensor


class Pair(typing.NamedTuple):
    logits: torch.Tensor
    feat: torch.Tensor


class Output(collections.OrderedDict):
    """A dict subclass, as model-output records are."""


class Net(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head, self.aux = nn.Linear(16, 5), nn.Conv2d(16, 3, 1)

    def forward(self, x):
        f = self.body(x)
        logits, feat = self.head(f.mean((2, 3))), self.aux(f)
        if self.kind == "dataclass":
            return Record(logits, feat)
        if self.kind == "namedtuple":
            return Pair(logits, feat)
        return Output(logits=logits, feat=feat)


def _tensors(out):
    return (out.logits, out.feat) if not isinstance(out, dict) else (out["logits"], out["feat"])


@pytest.mark.parametrize("kind", ["dataclass", "namedtuple", "dict_subclass"])
def test_a_returned_record_keeps_its_layers_and_exports_its_tensors(kind, tmp_path):
    """A dataclass's layers were cut (logits 5 -> 3) and its ONNX file had no outputs; a
    dict subclass's file had none either."""
    torch.manual_seed(0)
    config = make_config((1, 3, 16, 16), prune_first_conv=True)
    ctrl, model = create_compressed_model(nondegenerate(Net(kind)), config)
    held = {tuple(names): why for names, why in ctrl.statistics().unpruned}
    assert held[("head",)] == held[("aux",)] == "feeds a model output"
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    small = ctrl.strip().eval()
    assert small.body[0].out_channels < 16
    with torch.no_grad():
        ref = _tensors(model(x))
        for a, b in zip(ref, _tensors(small(x)), strict=True):
            assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    ctrl.export_model(str(tmp_path / "m.onnx"))
    names, got = run_onnx(tmp_path / "m.onnx", x)
    assert names == ["logits", "feat"]
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(b, a.numpy(), atol=1e-5)


class Boxes:
    """A class registered with torch's pytree (as detection libraries register theirs)."""

    def __init__(self, xy, wh):
        self.xy, self.wh = xy, wh


def _with_keys(b):
    key = torch.utils._pytree.GetAttrKey
    return [(key("xy"), b.xy), (key("wh"), b.wh)], None


torch.utils._pytree.register_pytree_node(Boxes, lambda b: ([b.xy, b.wh], None),
                                         lambda c, _: Boxes(*c), flatten_with_keys_fn=_with_keys)


class BoxNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.c(x)
        return {"scores": y.mean((2, 3)), "boxes": Boxes(y, 2 * y)}


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_a_registered_pytree_class_exports_its_tensors(exporter, tmp_path):
    """The TorchScript exporter refused it; a first fix dropped its tensors."""
    from filterprune.torch.onnx_export import export_onnx

    torch.manual_seed(0)
    model, x = BoxNet().eval(), torch.randn(1, 3, 8, 8)
    export_onnx(model, (x,), str(tmp_path / "m.onnx"), exporter=exporter)
    names, got = run_onnx(tmp_path / "m.onnx", x)
    assert names == ["scores", "boxes/xy", "boxes/wh"]
    with torch.no_grad():
        ref = model(x)
    np.testing.assert_allclose(got[2], ref["boxes"].wh.numpy(), atol=1e-5)
