"""Helpers for the ONNX tests: export small torch models with zero filters, convert, check."""

import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from filterprune.onnx import remove_zero_filters, run_onnxruntime


@pytest.fixture(autouse=True)
def seed_torch():
    """Imported by each test module: the same random models on every run."""
    torch.manual_seed(0)


def export(model: nn.Module, x: torch.Tensor, path, **kwargs) -> str:
    """TorchScript export, at opset 17 unless ``opset_version`` says otherwise."""
    kwargs.setdefault("opset_version", 17)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), dynamo=False, **kwargs)
    return str(path)


def zero(layer: nn.Module, rows, cols=None) -> None:
    """Zero filters ``rows`` of a conv/linear (weights and bias), and input ``cols``."""
    with torch.no_grad():
        if rows is not None:
            layer.weight[rows] = 0
            if layer.bias is not None:
                layer.bias[rows] = 0
        if cols is not None:
            layer.weight[:, cols] = 0


def run(model: onnx.ModelProto | str, x: np.ndarray) -> list[np.ndarray]:
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(model)
    return run_onnxruntime(proto, {proto.graph.input[0].name: x})  # Q/DQ unfused


def convert(path: str, x: torch.Tensor, tol: float = 1e-4):
    """Convert, then check validity and equal outputs on a fresh input; returns (model, report)."""
    new, report = remove_zero_filters(path)
    onnx.checker.check_model(new, full_check=True)
    xs = np.random.default_rng(1).standard_normal(tuple(x.shape)).astype(np.float32)
    for a, b in zip(run(path, xs), run(new, xs), strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= tol * max(np.abs(a).max(), 1e-6)
    return new, report


def layer(report, name_part: str):
    hits = [s for s in report.layers if name_part in s.name]
    assert hits, [s.name for s in report.layers]
    return hits[0]


def weight_shape(model: onnx.ModelProto, node_part: str) -> tuple[int, ...]:
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if node_part in n.name and n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            return tuple(inits[n.input[1]].dims)
    raise KeyError(node_part)



def make_config(sample=(1, 3, 32, 32), level=0.5):
    from filterprune import NNCFConfig

    params = {"schedule": "baseline", "pruning_target": level, "prune_first_conv": True,
              "prune_downsample_convs": True}
    algo = {"algorithm": "filter_pruning", "pruning_init": level, "params": params}
    return NNCFConfig.from_dict({"input_info": {"sample_size": list(sample)}, "compression": algo})


def randomize_bn(model: nn.Module) -> nn.Module:
    """BatchNorms with real statistics and affine terms, so folding them matters."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


class TinyNet(nn.Module):
    """Residual add, concat, depthwise conv, SE gate, flatten -> linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Conv2d(16, 24, 1)
        self.dw = nn.Conv2d(40, 40, 3, padding=1, groups=40)
        self.se1, self.se2 = nn.Conv2d(40, 8, 1), nn.Conv2d(8, 40, 1)
        self.down = nn.Conv2d(40, 32, 3, stride=2, padding=1)
        self.fc1, self.fc2 = nn.Linear(32 * 4 * 4, 64), nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.a(x)
        x = self.dw(torch.cat([x, self.b(x)], dim=1))
        gate = torch.sigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        x = F.adaptive_avg_pool2d(torch.relu(self.down(x * gate)), 4)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def save_graph(tmp_path, nodes, weights, x_shape, y_shape, opset=17):
    """Save a graph made with ``onnx.helper``; ``weights`` name -> array become initializers."""
    inits = [numpy_helper.from_array(w if w.dtype == np.int64 else w.astype(np.float32), name)
             for name, w in weights.items()]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, x_shape)],
                              [helper.make_tensor_value_info("y", 1, y_shape)], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save(model, tmp_path / "m.onnx")
    return str(tmp_path / "m.onnx")
