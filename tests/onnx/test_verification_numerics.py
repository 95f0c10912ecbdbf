"""The converter's check fails on NaN or infinite outputs (issue 13, item 6)."""

import copy
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from onnx_helpers import export, seed_torch, zero  # noqa: F401 - autouse fixture
from torch import nn

from filterprune.errors import ConversionError
from filterprune.onnx import remove_zero_filters
from filterprune.onnx.convert import (
    _verify,
    activations_in_float,
    compare_outputs,
    max_rel_diff,
    reference_run,
    run_onnxruntime,
)
from filterprune.onnx.report import ConversionReport


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_max_rel_diff_of_non_finite_outputs_is_inf(bad):
    good = np.ones((2, 3), np.float32)
    broken = good.copy()
    broken[1, 2] = bad
    assert max_rel_diff([good], [broken]) == math.inf
    assert max_rel_diff([broken], [good]) == math.inf
    assert max_rel_diff([broken], [broken]) == math.inf  # NaN == NaN proves nothing
    assert max_rel_diff([good], [good]) == 0.0


def test_a_model_with_nan_outputs_fails_verification(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                        nn.Conv2d(8, 4, 1))  # fmt: skip
    zero(net[0], [0, 5])
    with torch.no_grad():
        net[2].weight[4, 1, 0, 0] = float("nan")  # in a kept filter: every output is NaN
    path = export(net, torch.randn(1, 3, 8, 8), tmp_path / "nan.onnx")
    with pytest.raises(ConversionError, match=r"The input model's own outputs are NaN or "
                       r"infinite .*: its weights .*2\.weight hold NaN .*--no-verify"):
        remove_zero_filters(path)
    small, report = remove_zero_filters(path, verify=False)  # the rewrite itself works
    assert report.changed


def _quantized_resnet(path):
    from filterprune import NNCFConfig
    from filterprune.testing.cifar_nets import ResNet20
    from filterprune.testing.zoo import nondegenerate
    from filterprune.torch import create_compressed_model, register_default_init_args

    data = [(torch.randn(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 28, 28]}, "compression": [
        {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 8}}}]})
    ctrl, _ = create_compressed_model(nondegenerate(ResNet20()),
                                      register_default_init_args(config, data))  # fmt: skip
    ctrl.export_model(str(path))
    return onnx.load(str(path))


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_quantized_outputs_moved_by_rounding_are_checked_with_activations_in_float(tmp_path,
                                                                                    eps):
    """A cut layer sums in another order; in a deep quantized model the activations that
    round the other way add up to more than an output step (r2plus1d_18: 0.094), and a
    correct file was refused. Biases scaled by 1 + 1e-5 stand for that order: accepted,
    as the models agree with the activations' Q/DQ pairs taken out; by 1 + 1e-2 (a wrong
    cut): refused."""
    old = _quantized_resnet(tmp_path / "q.onnx")
    new = copy.deepcopy(old)
    for init in new.graph.initializer:
        if init.name.endswith("bias"):
            value = numpy_helper.to_array(init) * np.float32(1 + eps)
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    feeds, before = reference_run(old)
    with pytest.raises(ConversionError):  # more than one output step
        compare_outputs(old, before, run_onnxruntime(new, feeds), 1e-4)
    report = ConversionReport(0, 0, 0, 0)
    if eps > 1e-3:
        with pytest.raises(ConversionError, match="differ from the input model's"):
            _verify(old, new, 1e-4, report)
        return
    _verify(old, new, 1e-4, report)
    assert "crossed rounding boundaries" in report.notes[-1]
    kinds = [n.op_type for n in activations_in_float(old).graph.node]
    weights = [i for i in old.graph.initializer if i.name.endswith("weight")]
    assert kinds.count("DequantizeLinear") == len(weights) and "Identity" in kinds


def test_runtime_warnings_stay_out_of_the_users_log(tmp_path, capfd):
    """ONNX Runtime printed coloured warnings (an output declared with another batch) into
    redirected logs."""
    from onnx import helper
    from onnx_helpers import save_graph

    w = np.random.default_rng(0).normal(size=(4, 3, 1, 1))
    path = save_graph(tmp_path, [helper.make_node("Conv", ["x", "w"], ["y"])], {"w": w},
                      [2, 3, 4, 4], [1, 4, 4, 4])  # fmt: skip
    run_onnxruntime(onnx.load(path), {"x": np.ones((2, 3, 4, 4), np.float32)})
    assert "onnxruntime" not in capfd.readouterr().err  # "[W:onnxruntime:, graph.cc ..."
