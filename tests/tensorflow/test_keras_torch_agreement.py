"""The same JSON config keeps the same filters in Keras and PyTorch when the weights (and,
for ``taylor``, the training steps) are the same.

PyTorch runs in a subprocess: TensorFlow and torch do not share one interpreter here.
"""

import importlib.util
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from keras_helpers import keras, layers, tf

from filterprune import NNCFConfig
from filterprune.tensorflow import create_compressed_model

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="needs torch")  # fmt: skip

PRUNED = ("mid", "mid2")
IMPORTANCES = ("L1", "L2", "geometric_median", "bn_scale", "taylor", "coupled_L2")


def settings(importance):
    init = 0.0 if importance == "taylor" else 0.5  # taylor: the level is set after training
    return {"input_info": {"sample_size": [1, 3, 12, 12]},  # NCHW, read by both frontends
            "compression": {"algorithm": "filter_pruning", "pruning_init": init,
                            "params": {"schedule": "baseline", "filter_importance": importance}}}


def weights(seed=0):
    rng = np.random.default_rng(seed)
    conv = {"stem": (3, 3, 3, 8), "mid": (3, 3, 8, 16), "mid2": (3, 3, 16, 16),
            "head": (1, 1, 16, 4)}
    out = {f"{k}.kernel": rng.normal(0, 0.3, s).astype("float32") for k, s in conv.items()}
    for name in ("bn", "bn2"):
        out[f"{name}.gamma"] = rng.normal(0, 1.0, 16).astype("float32")  # signs mixed
        out[f"{name}.beta"] = rng.normal(0, 0.1, 16).astype("float32")
    out["x"] = rng.normal(size=(8, 12, 12, 3)).astype("float32")
    out["y"] = rng.normal(size=(8, 4)).astype("float32")
    return out


def keras_net(w):
    inp = keras.Input((12, 12, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inp)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="mid")(x)
    x = layers.ReLU()(layers.BatchNormalization(epsilon=1e-5, name="bn")(x))
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="mid2")(x)
    x = layers.ReLU()(layers.BatchNormalization(epsilon=1e-5, name="bn2")(x))
    x = layers.Conv2D(4, 1, use_bias=False, name="head")(x)
    model = keras.Model(inp, layers.GlobalAveragePooling2D()(x))
    for key, value in w.items():
        if "." in key:
            layer, var = key.split(".")
            getattr(model.get_layer(layer), var).assign(value)
    return model


_TORCH = """
import json, sys
import numpy as np
import torch
from torch import nn
from filterprune import NNCFConfig
from filterprune.torch import create_compressed_model

w = dict(np.load(sys.argv[1]))
torch.set_num_threads(1)

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.mid = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.mid2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 4, 1, bias=False)

    def forward(self, x):
        x = torch.relu(self.bn(self.mid(self.stem(x))))
        x = self.head(torch.relu(self.bn2(self.mid2(x))))
        return x.mean(dim=(2, 3))

def net():
    model = Net()
    with torch.no_grad():
        for key, value in w.items():
            if "." not in key:
                continue
            layer, var = key.split(".")
            value, module = torch.from_numpy(value), model.get_submodule(layer)
            if var == "kernel":
                module.weight.copy_(value.permute(3, 2, 0, 1))
            else:
                getattr(module, {"gamma": "weight", "beta": "bias"}[var]).copy_(value)
    return model

x = torch.from_numpy(w["x"]).permute(0, 3, 1, 2).contiguous()
y = torch.from_numpy(w["y"])
out = {}
for importance, settings in json.loads(sys.argv[2]).items():
    ctrl, model = create_compressed_model(net(), NNCFConfig.from_dict(settings))
    if importance == "taylor":
        model.train()  # mid and mid2 are scored on their BatchNorms
        for _ in range(2):
            loss = ((model(x) - y) ** 2).mean() + ctrl.loss()
            model.zero_grad()
            loss.backward()
        ctrl.set_pruning_level(0.5)
    out[importance] = {name: np.flatnonzero(ctrl.keeps()[name]["out"]).tolist()
                       for name in ("mid", "mid2")}
print("RESULT " + json.dumps(out))
"""


def torch_kept(tmp_path, w):
    np.savez(tmp_path / "weights.npz", **w)
    script = tmp_path / "torch_side.py"
    script.write_text(textwrap.dedent(_TORCH))
    configs = json.dumps({imp: settings(imp) for imp in IMPORTANCES})
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "weights.npz"), configs],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1][7:])


def keras_kept(w, importance):
    ctrl, model = create_compressed_model(keras_net(w), NNCFConfig.from_dict(settings(importance)))
    if importance == "taylor":
        # training-mode BatchNorms: mid and mid2 are scored on their gamma and beta (their
        # own sum g*w would be rounding noise, which differs between the frameworks)
        for _ in range(2):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(w["x"], training=True) - w["y"]))
                loss += ctrl.loss()
            tape.gradient(loss, model.trainable_weights)
        ctrl.set_pruning_level(0.5)
    return {name: np.flatnonzero(ctrl.keeps()[name]["out"]).tolist() for name in PRUNED}


def test_same_config_same_kept_filters(tmp_path):
    w = weights()
    expected = torch_kept(tmp_path, w)
    got = {imp: keras_kept(w, imp) for imp in IMPORTANCES}
    assert got == expected
    # the criteria disagree with one another here, so agreement is not by accident
    assert len({json.dumps(v, sort_keys=True) for v in got.values()}) >= 3
    assert got["bn_scale"]["mid"] == np.sort(np.argsort(-np.abs(w["bn.gamma"]))[:8]).tolist()
