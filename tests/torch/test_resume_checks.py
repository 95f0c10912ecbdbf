"""Resuming from a compression state: Taylor totals travel with it, and a state saved
under other schedule or quantizer settings, or an unreachable FLOPs target, is refused
with the key named."""

import copy
import json

import pytest
import torch
from torch import nn
from torch_helpers import train_steps

from filterprune import ConfigError, NNCFConfig
from filterprune.torch import create_compressed_model

PRUNING = {"pruning_target": 0.6, "pruning_steps": 4, "prune_first_conv": True,
           "filters_multiple_of": 1}  # fmt: skip


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.relu(self.conv3(x)).mean((2, 3)))


def _base():
    torch.manual_seed(0)
    return Tiny()


def _config(*extra, pruning_init=0.1, **params):
    params = {k: v for k, v in {**PRUNING, **params}.items() if v is not None}
    fp = {"algorithm": "filter_pruning", "pruning_init": pruning_init, "params": params}
    return NNCFConfig.from_dict({"input_info": {"sample_size": [1, 3, 12, 12]},
                                 "compression": [fp, *extra] if extra else fp})  # fmt: skip


def _train(ctrl, model, opt, epochs, seed):
    model.train()
    train_steps(ctrl, model, opt, epochs, seed, steps=2, shape=(4, 3, 12, 12))


def _resume_pair(config):
    """Uninterrupted: 2 epochs, save (the state through JSON), 2 more. Resumed: a fresh
    copy with the saved state, weights and optimizer, then the same 2 epochs."""
    base = _base()
    ctrl, model = create_compressed_model(copy.deepcopy(base), config())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(ctrl, model, opt, 2, seed=1)
    state = json.loads(json.dumps(ctrl.get_compression_state()))
    weights, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(ctrl, model, opt, 2, seed=2)
    ctrl2, model2 = create_compressed_model(copy.deepcopy(base), config(),
                                            compression_state=state)  # fmt: skip
    model2.load_state_dict(weights)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
    opt2.load_state_dict(opt_state)
    _train(ctrl2, model2, opt2, 2, seed=2)
    return (ctrl, model), (ctrl2, model2)


@pytest.mark.parametrize("with_quantization", [False, True])
def test_taylor_resume_equals_uninterrupted_run(with_quantization):
    quant = {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0}}}
    extra = [quant] if with_quantization else []
    (ctrl, model), (ctrl2, model2) = _resume_pair(
        lambda: _config(*extra, filter_importance="taylor"))
    s1, s2 = model.state_dict(), model2.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:  # masks, weights, BatchNorm statistics, quantizer ranges: bit for bit
        assert torch.equal(s1[k], s2[k]), k
    assert ctrl.get_compression_state() == ctrl2.get_compression_state()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    model.eval(), model2.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model2(x))


def test_taylor_totals_are_in_the_state():
    (ctrl, _), _ = _resume_pair(lambda: _config(filter_importance="taylor"))
    taylor = ctrl.get_compression_state()["taylor"]
    assert set(taylor["totals"]) == {"conv1", "conv2"}  # conv3 downsamples: whole
    assert all(n == 8 for n in taylor["passes"].values())  # 4 epochs of 2 steps
    assert len(taylor["totals"]["conv2"]) == 16


def test_taylor_state_of_another_model_is_refused():
    ctrl, _ = create_compressed_model(_base(), _config(filter_importance="taylor"))
    state = ctrl.get_compression_state()
    state["taylor"] = {"totals": {"conv2": [1.0] * 3}, "passes": {"conv2": 1}}
    with pytest.raises(ConfigError, match=r"taylor.totals\['conv2'\].*16.*Received: 3"):
        create_compressed_model(_base(), _config(filter_importance="taylor"),
                                compression_state=state)  # fmt: skip


@pytest.mark.parametrize("key, value", [("pruning_target", 0.4), ("pruning_steps", 10),
                                        ("schedule", "baseline"), ("num_init_steps", 1)])
def test_changed_schedule_is_refused(key, value):
    ctrl, _ = create_compressed_model(_base(), _config())
    for _ in range(2):
        ctrl.scheduler.epoch_step()
    state = ctrl.get_compression_state()
    saved = PRUNING.get(key, {"schedule": "exponential", "num_init_steps": 0}.get(key))
    with pytest.raises(ConfigError, match=rf"`params.{key}` must be {saved!r}.*{key}={value!r}"):
        create_compressed_model(_base(), _config(**{key: value}), compression_state=state)



@pytest.mark.parametrize("key, value", [("all_weights", True), ("filters_multiple_of", 4),
                                        ("filter_importance", "L1"),
                                        ("prune_batch_norms", False)])  # fmt: skip
def test_changed_channel_choice_is_refused(key, value):
    """A changed all_weights brought 3 pruned filters back at the next level; a changed
    prune_batch_norms failed in load_state_dict with a bare size mismatch."""
    ctrl, _ = create_compressed_model(_base(), _config())
    ctrl.scheduler.epoch_step()
    state = ctrl.get_compression_state()
    saved = state["params"][key]
    with pytest.raises(ConfigError, match=rf"`params.{key}` must be {saved!r}.*keeps choosing"):
        create_compressed_model(_base(), _config(**{key: value}), compression_state=state)

def test_changed_flops_target_is_refused():
    ctrl, _ = create_compressed_model(_base(), _config(pruning_target=None,
                                                       pruning_flops_target=0.3))  # fmt: skip
    state = ctrl.get_compression_state()
    with pytest.raises(ConfigError, match=r"pruning_flops_target.*0\.3.*configured.*0\.2"):
        create_compressed_model(_base(), _config(pruning_target=None, pruning_flops_target=0.2),
                                compression_state=state)  # fmt: skip


def test_state_without_params_keeps_loading():
    ctrl, _ = create_compressed_model(_base(), _config())
    state = ctrl.get_compression_state()
    del state["params"]  # an older state: nothing to compare
    ctrl2, _ = create_compressed_model(_base(), _config(pruning_target=0.4),
                                       compression_state=state)  # fmt: skip
    assert ctrl2.pruning_level == ctrl.pruning_level


def test_unreachable_flops_target_is_refused_at_creation():
    with pytest.raises(ConfigError, match=r"pruning_flops_target`=0\.99 cannot be reached.*"
                                          r"can remain is 0\.\d+.*pruning_flops_target <= 0\."):
        create_compressed_model(_base(), _config(pruning_target=None, pruning_flops_target=0.99))


QUANT = {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0}}}


@pytest.mark.parametrize("group, setting, value, saved", [
    ("weights", "per_channel", False, True), ("weights", "bits", 4, 8),
    ("activations", "mode", "asymmetric", "symmetric"), ("activations", "signed", True, None),
])  # fmt: skip
def test_changed_quantizer_settings_are_refused(group, setting, value, saved):
    ctrl, _ = create_compressed_model(_base(), _config(QUANT))
    state = ctrl.get_compression_state()
    changed = {**QUANT, group: {setting: value}}
    kind = "weight" if group == "weights" else "activation"
    with pytest.raises(ConfigError, match=rf"quantizers\['{kind}:.*saved with {setting}="
                                          rf"{saved!r}.*{setting}={value!r}.*{group}.{setting}"):
        create_compressed_model(_base(), _config(changed), compression_state=state)
    create_compressed_model(_base(), _config(QUANT), compression_state=state)  # unchanged: loads



def test_changed_quantization_scopes_are_named_on_resume():
    """The message spoke only of a Keras model built twice."""
    ctrl, _ = create_compressed_model(_base(), _config(QUANT))
    state = ctrl.get_compression_state()
    scoped = {**QUANT, "ignored_scopes": ["conv3"]}
    with pytest.raises(ConfigError, match=r"with the `ignored_scopes` / `target_scopes` of the "
                       r"quantization entry as when the state was saved"):  # fmt: skip
        create_compressed_model(_base(), _config(scoped), compression_state=state)

def test_older_quantization_state_is_checked_on_its_ranges():
    ctrl, _ = create_compressed_model(_base(), _config(QUANT))
    state = ctrl.get_compression_state()
    del state["children"][1]["settings"]  # saved before settings were stored
    with pytest.raises(ConfigError, match=r"weight:conv1.*saved with bits=8.*bits=4"):
        create_compressed_model(_base(), _config({**QUANT, "weights": {"bits": 4}}),
                                compression_state=state)  # fmt: skip


def test_older_state_with_overflow_fix_still_loads():
    """Half-range weights (-64..63) are 8-bit weights, not 7-bit ones."""
    quant = {**QUANT, "overflow_fix": "enable"}
    ctrl, _ = create_compressed_model(_base(), _config(quant))
    state = ctrl.get_compression_state()
    del state["children"][1]["settings"]
    create_compressed_model(_base(), _config(quant), compression_state=state)


def test_auto_numbered_renames():
    from filterprune.core.state import auto_numbered_renames

    saved = ["weight:conv", "activation:dropout", "activation:flatten_2/dense"]
    own = ["weight:conv", "activation:dropout_1", "activation:flatten_5/dense"]
    assert auto_numbered_renames(saved, own) == dict(zip(saved, own, strict=True))
    assert auto_numbered_renames(saved, own[::-1]) is None  # not in the same order
    assert auto_numbered_renames(saved, own[:2]) is None
    assert auto_numbered_renames(["a", "a_1"], ["a_1", "a_2"]) is None  # a_1 is in both
    assert auto_numbered_renames(["relu"], ["add_1"]) is None


def test_a_composite_state_for_a_single_entry_says_what_it_holds():
    ctrl, _ = create_compressed_model(_base(), _config(QUANT))
    state = ctrl.get_compression_state()
    with pytest.raises(ConfigError, match=r"Received: algorithm='composite' \(it holds "
                       r"filter_pruning, quantization: give the config the same `compression` "
                       r"entries, in that order\)"):  # fmt: skip
        create_compressed_model(_base(), _config(), compression_state=state)
