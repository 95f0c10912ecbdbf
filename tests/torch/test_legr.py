"""LeGR (``interlayer_ranking_type: learned_ranking``) in PyTorch: the search runs inside
``create_compressed_model``, is driven by ``validate_fn``, is deterministic per seed and
leaves the model, its BatchNorm statistics and the optimizer exactly as they were."""

import copy
import logging

import pytest
import torch
from torch import nn
from torch_helpers import make_config, randomize_bn

from filterprune.errors import ConfigError
from filterprune.torch import create_compressed_model, register_default_init_args
from filterprune.torch.masks import is_masked, masked_param

LEGR = {"generations": 8, "population_size": 4, "num_samples": 2, "train_steps": 2,
        "max_pruning": 0.38}  # fmt: skip


class Chain(nn.Module):
    """Three conv + BatchNorm blocks, then a linear head; c2 starts with weak filters."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.c3, self.b3 = nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 4)
        with torch.no_grad():
            self.c2.weight[:16] *= 0.8  # the plain ranking takes some of c2's filters

    def forward(self, x):
        for conv, bn in ((self.c1, self.b1), (self.c2, self.b2), (self.c3, self.b3)):
            x = torch.relu(bn(conv(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def chain():
    torch.manual_seed(0)
    return randomize_bn(Chain()).eval()


def batches(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g))
            for _ in range(n)]  # fmt: skip


def kept_c2(model):
    return int((masked_param(model.c2, "weight").flatten(1).abs().sum(1) > 0).sum())


def validate_c2(model, loader):
    """Rewards the c2 filters kept; runs the model in training mode on purpose, so its
    BatchNorm statistics change and the search has to put them back."""
    model.train()
    with torch.no_grad():
        model(loader[0][0])
    return kept_c2(model), 0.0  # (score, something else), as validation functions return


def train_steps(loader, model, optimizer, ctrl, steps):
    model.train()
    for _, (x, y) in zip(range(steps), loader, strict=False):
        loss = nn.functional.cross_entropy(model(x), y) + ctrl.loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ctrl.scheduler.step()


def config(ranking="learned_ranking", validate_fn=validate_c2, steps_fn=train_steps,
           optimizer=None, **params):  # fmt: skip
    params = {"pruning_flops_target": 0.38, "schedule": "baseline", "prune_first_conv": True,
              "filters_multiple_of": 2, "interlayer_ranking_type": ranking, "legr_params": LEGR,
              **params}  # fmt: skip
    params = {k: v for k, v in params.items() if v is not None}
    extra = {"initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}
    init = params.get("pruning_flops_target", params.get("pruning_target"))  # at once
    cfg = make_config((1, 1, 8, 8), pruning_init=init, extra=extra, **params)
    return register_default_init_args(cfg, batches(), val_loader=batches(1, seed=2),
                                      validate_fn=validate_fn, train_steps_fn=steps_fn,
                                      legr_train_optimizer=optimizer)  # fmt: skip


def flops_removed(ctrl):
    return 1 - ctrl.statistics().flops_kept


def test_search_is_deterministic_per_seed(chain):
    first, _ = create_compressed_model(copy.deepcopy(chain), config())
    again, _ = create_compressed_model(copy.deepcopy(chain), config())
    other, _ = create_compressed_model(copy.deepcopy(chain),
                                       config(legr_params={**LEGR, "random_seed": 5}))  # fmt: skip
    assert again.ranking_coeffs == first.ranking_coeffs
    assert other.ranking_coeffs != first.ranking_coeffs


def test_the_reward_drives_the_ranking_and_the_flops_target_holds(chain):
    legr, legr_model = create_compressed_model(copy.deepcopy(chain), config())
    plain, plain_model = create_compressed_model(copy.deepcopy(chain), config("unweighted_ranking"))
    assert kept_c2(legr_model) > kept_c2(plain_model)
    assert 0.38 <= flops_removed(plain) <= 0.4  # a target the plain allocation meets
    assert 0.38 <= flops_removed(legr) <= 0.4


def test_search_leaves_model_and_optimizer_as_they_were(chain, tmp_path):
    model = copy.deepcopy(chain)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    model(batches(1, seed=3)[0][0]).square().mean().backward()
    optimizer.step()  # the optimizer has momentum when the search starts
    optimizer.zero_grad(set_to_none=True)
    before = copy.deepcopy(model.state_dict())
    momentum = copy.deepcopy(optimizer.state_dict())
    path = tmp_path / "coeffs.json"
    ctrl, model = create_compressed_model(model, config(optimizer=optimizer,
                                                        save_ranking_coeffs_path=str(path)))
    after = model.state_dict()
    for key, value in before.items():  # weights and BatchNorm statistics, bit for bit
        assert torch.equal(after[key], value), key
    assert not model.training and not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for key, value in optimizer.state_dict()["state"].items():
        assert torch.equal(value["momentum_buffer"], momentum["state"][key]["momentum_buffer"])
    # the same coefficients loaded, without a search, give the same masks and state
    loaded, loaded_model = create_compressed_model(
        copy.deepcopy(chain), config(validate_fn=fail, load_ranking_coeffs_path=str(path)))
    assert loaded.ranking_coeffs == ctrl.ranking_coeffs
    masks = {k: v for k, v in after.items() if k.endswith("_mask")}
    assert masks and all(torch.equal(loaded_model.state_dict()[k], v) for k, v in masks.items())


def fail(model, loader):
    raise AssertionError("validate_fn must not be called")


def test_resume_restores_coefficients_without_searching(chain):
    ctrl, model = create_compressed_model(copy.deepcopy(chain), config())
    state = ctrl.get_compression_state()
    resumed, resumed_model = create_compressed_model(copy.deepcopy(chain),
                                                     config(validate_fn=fail), state)  # fmt: skip
    assert resumed.ranking_coeffs == ctrl.ranking_coeffs
    for key, value in model.state_dict().items():
        if key.endswith("_mask"):
            assert torch.equal(resumed_model.state_dict()[key], value), key


def test_pruning_target_levels_use_the_learned_ranking(chain):
    ctrl, model = create_compressed_model(
        copy.deepcopy(chain), config(pruning_flops_target=None, pruning_target=0.25))
    stats = ctrl.statistics()
    removed = sum(s.filters - s.kept for s in stats.layers) / sum(s.filters for s in stats.layers)
    assert 0.25 <= removed <= 0.27
    assert kept_c2(model) == 32


def test_without_train_steps_fn_candidates_are_validated_as_pruned(chain, caplog):
    with caplog.at_level(logging.INFO, logger="filterprune"):
        ctrl, model = create_compressed_model(copy.deepcopy(chain), config(steps_fn=None))
    assert "without fine-tuning steps" in caplog.text
    assert kept_c2(model) == 32


def test_missing_validate_fn_is_a_clear_error(chain):
    model = copy.deepcopy(chain)
    cfg = make_config((1, 1, 8, 8), interlayer_ranking_type="learned_ranking")
    cfg = register_default_init_args(cfg, batches())
    with pytest.raises(ConfigError, match=r"^`validate_fn` and `val_loader` must be registered "
                       r".*register_default_init_args\(config, train_loader, val_loader=\.\.\., "
                       r"validate_fn=\.\.\.\).*Received: validate_fn=None, val_loader=None\.$"):
        create_compressed_model(model, cfg)
    assert not any(is_masked(m) for m in model.modules())
    with pytest.raises(TypeError, match=r"^`validate_fn` must be callable\. Received: "):
        register_default_init_args(cfg, batches(), validate_fn="top1")


def test_bad_coefficients_file_is_a_clear_error(chain, tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"version": 1, "ranking_coeffs": {"c1": [1, 0]}}')
    with pytest.raises(ConfigError, match=r"c.json: ranking_coeffs` must name each prunable group"
                       r".*without coefficients: 'c2', 'c3'"):
        create_compressed_model(copy.deepcopy(chain), config(load_ranking_coeffs_path=str(path)))


@pytest.mark.parametrize("init_samples", [0, 8])
def test_search_with_quantization_leaves_the_quantizers_as_they_were(chain, tmp_path,
                                                                    init_samples):  # fmt: skip
    """A trial's first batch set the lazy activation ranges (``num_init_samples: 0``) and
    the undo put the scales back but not the flags: the quantizers stayed "set" at the
    default scale 1.0 for good. Ranges set before the search were right, but their state
    read "not set" (a checkpoint would say so). The searched model's state now equals
    the one built from its coefficients without a search."""

    def quantized(**params):
        cfg = config(**params)
        cfg["compression"] = [cfg["compression"], {
            "algorithm": "quantization", "initializer": {
                "range": {"num_init_samples": init_samples},
                "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}]
        return cfg

    path = tmp_path / "coeffs.json"
    _, searched = create_compressed_model(copy.deepcopy(chain), quantized(
        save_ranking_coeffs_path=str(path)))  # fmt: skip
    _, loaded = create_compressed_model(copy.deepcopy(chain), quantized(
        validate_fn=fail, load_ranking_coeffs_path=str(path)))  # fmt: skip
    want = loaded.state_dict()
    for key, value in searched.state_dict().items():
        assert torch.equal(value, want[key]), key
    x = batches(1, seed=5)[0][0]
    torch.testing.assert_close(searched.eval()(x), loaded.eval()(x), rtol=0, atol=0)
