"""Property test: on random CNN DAGs, the shrunk model equals the masked one (and its ONNX)."""

import os

import numpy as np
import onnxruntime as ort
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_helpers import make_config, randomize_bn

from filterprune.testing.random_nets import BLOCKS, RandomNet
from filterprune.torch import create_compressed_model
from filterprune.torch.controller import export_onnx

EXAMPLES = int(os.environ.get("FILTERPRUNE_RANDOM_NETS", "12"))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(BLOCKS), min_size=2, max_size=7),
       seed=st.integers(0, 1000), flatten=st.booleans(),
       level=st.sampled_from([0.3, 0.5, 0.7]), all_weights=st.booleans())  # fmt: skip
def test_random_net_shrinks_exactly(tmp_path, kinds, seed, flatten, level, all_weights):
    torch.manual_seed(seed)
    net = randomize_bn(RandomNet(kinds, seed=seed, flatten_head=flatten), seed).eval()
    config = make_config((1, 3, 16, 16), pruning_init=level, pruning_target=level,
                         schedule="baseline", all_weights=all_weights, prune_first_conv=True,
                         prune_downsample_convs=True)  # fmt: skip
    ctrl, model = create_compressed_model(net, config)
    x = torch.randn(2, 3, 16, 16)
    small = ctrl.strip().eval()
    with torch.no_grad():
        ref, out = model.eval()(x), small(x)
    scale = float(ref.abs().max()) or 1.0
    assert float((ref - out).abs().max()) / scale <= 1e-4, kinds
    assert out.shape == (2, 10)
    stats = ctrl.statistics()
    assert sum(p.numel() for p in small.parameters()) == stats.current_params < stats.full_params
    path = tmp_path / "net.onnx"
    export_onnx(small, (x,), str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, out.numpy(), atol=1e-4 * scale)
