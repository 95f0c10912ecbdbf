"""The PyTorch workflow of the reference, end to end, on small models."""

import dataclasses
import importlib.util
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_helpers import SmallNet, assert_strip_equal, make_config

from filterprune import ConfigError, NNCFConfig
from filterprune.core.compression import CompressionController
from filterprune.core.params import ALGORITHMS, Settings
from filterprune.errors import AnalysisError
from filterprune.torch import (
    CompressionStage,
    TorchFrontend,
    create_compressed_model,
    resize_to_state_dict,
)


def test_masked_equals_stripped_and_is_smaller(small_net):
    ctrl, model = create_compressed_model(small_net, make_config())
    x = torch.randn(2, 3, 32, 32)
    small = assert_strip_equal(ctrl, model, x)
    n_small = sum(p.numel() for p in small.parameters())
    n_full = sum(p.numel() for p in SmallNet().parameters())
    assert n_small < 0.75 * n_full
    assert small.fc2.out_features == 10  # the classifier keeps its width
    assert small.a.out_channels == small.stem.out_channels  # residual add: one group
    assert small.dw.groups == small.dw.in_channels == small.dw.out_channels


def test_state_dict_keys_are_the_original_plus_masks(small_net):
    before = set(small_net.state_dict())
    _, model = create_compressed_model(small_net, make_config())
    after = set(model.state_dict())
    assert before <= after
    assert all(k.endswith("_mask") for k in after - before)


def test_gradients_of_pruned_filters_are_zero(small_net):
    ctrl, model = create_compressed_model(small_net, make_config())
    model.train()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    mask = model.b.weight_mask.flatten(1)[:, 0]
    assert (mask == 0).any()
    grad = model.b.weight.grad
    assert torch.all(grad[mask == 0] == 0)
    assert grad[mask == 1].abs().sum() > 0
    stored = model.b.weight[mask == 0]
    assert stored.abs().sum() > 0  # the stored weights are kept


def test_stripped_model_saves_and_rebuilds_from_state_dict(small_net, tmp_path):
    ctrl, model = create_compressed_model(small_net, make_config())
    small = ctrl.strip().eval()
    torch.save(small.state_dict(), tmp_path / "pruned.pt")
    rebuilt = resize_to_state_dict(SmallNet(), torch.load(tmp_path / "pruned.pt")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), small(x))


def test_strip_without_shrink_keeps_shapes_and_zeros_filters(small_net):
    ctrl, model = create_compressed_model(small_net, make_config())
    plain = ctrl.strip(shrink=False).eval()
    assert plain.b.weight.shape == SmallNet().b.weight.shape
    assert not hasattr(plain.b, "weight_mask")
    zero_rows = (plain.b.weight.flatten(1).abs().sum(1) == 0).sum()
    assert zero_rows > 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model.eval()(x), atol=1e-5, rtol=1e-4)


def test_loss_is_zero_and_stage_follows_level(small_net):
    ctrl, _ = create_compressed_model(
        small_net, make_config(pruning_init=0.0, pruning_target=0.5, pruning_steps=3)
    )
    assert float(ctrl.loss()) == 0.0
    assert ctrl.compression_stage() == CompressionStage.UNCOMPRESSED
    ctrl.scheduler.epoch_step()
    ctrl.scheduler.epoch_step()
    assert ctrl.compression_stage() == CompressionStage.PARTIALLY_COMPRESSED
    ctrl.scheduler.epoch_step()
    assert ctrl.compression_stage() == CompressionStage.FULLY_COMPRESSED


def test_schedule_raises_level_each_epoch_then_freezes(small_net):
    ctrl, _ = create_compressed_model(
        small_net, make_config(pruning_init=0.1, pruning_target=0.5, pruning_steps=3)
    )
    levels = []
    for _ in range(5):
        ctrl.scheduler.epoch_step()
        for _ in range(3):
            ctrl.scheduler.step()
        levels.append(round(ctrl.pruning_level, 4))
    assert levels[0] == pytest.approx(0.1)
    assert levels[0] < levels[1] < levels[2] == pytest.approx(0.5)
    assert levels[3:] == [levels[2]] * 2
    assert ctrl.frozen


@pytest.mark.parametrize("shrink", [False, True])
def test_freeze_by_hand_stops_the_schedule(small_net, shrink):
    """``ctrl.freeze()`` set a flag nothing read: the next epoch step changed the masks
    (and with ``shrink_when_frozen`` raised on the cut model)."""
    ctrl, model = create_compressed_model(small_net, make_config(
        pruning_init=0.0, pruning_target=0.5, pruning_steps=5, shrink_when_frozen=shrink))
    for _ in range(2):
        ctrl.scheduler.epoch_step()
    level, kept = ctrl.pruning_level, {k: v.copy() for k, v in ctrl.plan.kept.items()}
    ctrl.freeze()
    ctrl.scheduler.epoch_step()
    assert ctrl.pruning_level == level and ctrl.scheduler.frozen
    assert all(np.array_equal(kept[k], v) for k, v in ctrl.plan.kept.items())
    assert ctrl.get_compression_state()["scheduler"]["frozen"]
    if shrink:
        with pytest.raises(ConfigError, match=r"freeze\(False\): the model is cut"):
            ctrl.freeze(False)
        return
    ctrl.freeze(False)  # the schedule goes on
    ctrl.scheduler.epoch_step()
    assert ctrl.pruning_level > level and not ctrl.frozen


@pytest.mark.parametrize("stepped", ["never", "epoch_step", "step only", "level by hand"])
def test_a_strip_of_a_schedule_never_stepped_says_so_once(small_net, caplog, stepped):
    """A loop of the user's own that never calls ``epoch_step()`` (``step()`` alone moves
    no level) left the model at ``pruning_init`` without a word; a level set by hand is
    the user's."""
    ctrl, _ = create_compressed_model(
        small_net, make_config(pruning_init=0.1, pruning_target=0.5, pruning_steps=3))
    if stepped == "epoch_step":
        ctrl.scheduler.epoch_step()
    elif stepped == "step only":
        ctrl.scheduler.step()
    elif stepped == "level by hand":
        ctrl.set_pruning_level(0.1)
    stepped = stepped in ("epoch_step", "level by hand")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="filterprune"):  # whatever set it before
        ctrl.strip()
        ctrl.strip()
    said = [r.getMessage() for r in caplog.records if "never stepped" in r.getMessage()]
    assert len(said) == (0 if stepped else 1), said
    if said:
        assert "ctrl.scheduler.epoch_step()" in said[0] and "0.5" in said[0]


def test_statistics_report_flops_params_levels_and_reasons(small_net):
    ctrl, _ = create_compressed_model(small_net, make_config())
    st = ctrl.statistics()
    assert st.current_flops < st.full_flops
    assert st.current_params < st.full_params
    assert st.current_filters < st.full_filters
    assert st.target_level == 0.5
    reasons = dict((tuple(p), r) for p, r in st.unpruned)
    assert reasons[("stem", "a", "se2")] == "first convolution (prune_first_conv is off)"
    assert "downsampling" in reasons[("down",)]
    assert reasons[("fc2",)] == "feeds a model output"
    text = str(st)
    assert "FLOPs" in text and "left unpruned" in text and "fc2: feeds a model output" in text


def test_a_grouped_conv_following_a_held_group_is_listed_with_it():
    """Its filters follow the first conv's channels, so it stays whole with them; it was
    in neither the layer table nor "left unpruned"."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.g = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3, groups=4)
            self.c = nn.Conv2d(32, 16, 1)

        def forward(self, x):
            return self.c(torch.relu(self.g(torch.relu(self.stem(x)))))

    ctrl, _ = create_compressed_model(Net(), make_config((1, 3, 16, 16)))
    held = {tuple(p): r for p, r in ctrl.statistics().unpruned}
    assert held[("stem", "g")] == "first convolution (prune_first_conv is off)"


def test_structural_switches_open_first_and_downsample_convs(small_net):
    ctrl, _ = create_compressed_model(
        small_net, make_config(prune_first_conv=True, prune_downsample_convs=True)
    )
    unpruned = {tuple(p): r for p, r in ctrl.statistics().unpruned}
    assert unpruned.keys() == {("fc2",), ("se1",)}  # se1: 8 filters, rounding keeps them
    assert "filters_multiple_of=8" in unpruned[("se1",)]
    assert_strip_equal(ctrl, small_net, torch.randn(2, 3, 32, 32))


def test_scopes_exclude_layers_with_reasons(small_net):
    config = make_config(extra={"ignored_scopes": ["{re}se1$"],
                                "target_scopes": ["b", "se1", "se2", "fc1"]})
    ctrl, _ = create_compressed_model(small_net, config)
    reasons = {tuple(p): r for p, r in ctrl.statistics().unpruned}
    assert "ignored_scopes" in reasons[("se1",)]
    assert "downsampling" in reasons[("down",)]
    pruned = {s.name for s in ctrl.statistics().layers}
    assert pruned == {"b", "se2", "fc1"}  # se2 gates b's channels: the two share a group


@pytest.mark.parametrize("importance", ["L1", "L2", "geometric_median"])
def test_each_importance_keeps_the_strongest_filters(importance):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1))
    with torch.no_grad():
        net[1].weight.mul_(0.01)
        net[1].weight[[1, 5, 9, 14]] *= 1000  # four clearly dominant filters, far apart
    config = make_config(pruning_init=0.75, filter_importance=importance, schedule="baseline",
                         pruning_target=0.75)
    ctrl, _ = create_compressed_model(net, config)
    kept = torch.nonzero(net[1].weight_mask[:, 0].flatten()).flatten().tolist()
    assert len(kept) == 8  # 16 * 0.25 = 4, rounded up to a multiple of 8
    assert {1, 5, 9, 14} <= set(kept)


def test_global_ranking_prunes_unevenly_without_rounding():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Conv2d(3, 20, 3), nn.ReLU(),
                        nn.Conv2d(20, 20, 3), nn.ReLU(), nn.Conv2d(20, 4, 1))  # fmt: skip
    with torch.no_grad():
        net[3].weight[:14] *= 0.01
    ctrl, _ = create_compressed_model(net, make_config(all_weights=True))
    kept = {s.name: s.kept for s in ctrl.statistics().layers}
    assert kept["1"] + kept["3"] == 20
    assert kept["3"] < kept["1"]
    assert kept["3"] % 8 != 0 or kept["1"] % 8 != 0


@pytest.mark.parametrize("all_weights", [False, True])
def test_flops_target_is_met(small_net, all_weights):
    config = make_config(pruning_init=0.3, pruning_flops_target=0.3, all_weights=all_weights,
                         prune_first_conv=True, prune_downsample_convs=True)  # fmt: skip
    ctrl, model = create_compressed_model(small_net, config)
    st = ctrl.statistics()
    assert 1 - st.flops_kept >= 0.3
    assert_strip_equal(ctrl, model, torch.randn(2, 3, 32, 32))


def test_unreachable_flops_target_names_best_value(small_net):
    with pytest.raises(ConfigError, match=r"cannot be reached.*Set pruning_flops_target <= 0\.\d+"
                       r".*`prune_first_conv` true.*lower `filters_multiple_of` \(now 8"):
        config = make_config(pruning_init=0.95, pruning_flops_target=0.95)
        create_compressed_model(small_net, config)


def test_the_bound_an_unreachable_flops_target_names_is_reachable(small_net):
    """It was rounded to nearest, so the value it named could be refused in turn; with
    target_scopes limiting the cut it did not name them."""
    only_b = {"target_scopes": ["fc1"]}
    config = make_config(pruning_init=0.95, pruning_flops_target=0.95, extra=only_b)
    with pytest.raises(ConfigError, match="more `target_scopes`") as err:
        create_compressed_model(small_net, config)
    bound = float(re.search(r"pruning_flops_target <= (0\.\d+)", str(err.value))[1])
    config = make_config(pruning_init=bound, pruning_flops_target=bound, extra=only_b)
    ctrl, _ = create_compressed_model(small_net, config)
    assert 1 - ctrl.statistics().flops_kept >= bound


def test_unreachable_flops_target_names_only_settings_not_in_place(small_net):
    """It suggested prune_first_conv and prune_downsample_convs when both were on already."""
    config = make_config(pruning_init=0.999, pruning_flops_target=0.999, prune_first_conv=True,
                         prune_downsample_convs=True, filters_multiple_of=1)  # fmt: skip
    with pytest.raises(ConfigError) as err:
        create_compressed_model(small_net, config)
    assert "prune_first_conv" not in str(err.value) and "filters_multiple_of" not in str(err.value)
    assert "see `filterprune analyze`" in str(err.value)


class _RolledStem(torch.nn.Module):
    """A stem whose channels a roll holds, whatever prune_first_conv says."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = torch.nn.Conv2d(3, 16, 3), torch.nn.Conv2d(16, 16, 3, stride=2)
        self.mid, self.head = torch.nn.Conv2d(16, 16, 3), torch.nn.Conv2d(16, 16, 3)

    def forward(self, x):
        x = torch.relu(self.conv(torch.roll(self.stem(x), 1, 1)))
        return self.head(torch.relu(self.mid(x)))


def test_unreachable_flops_target_names_only_settings_that_would_free_a_group():
    """It suggested prune_first_conv and prune_downsample_convs for groups a roll holds."""
    config = make_config(pruning_init=0.9, pruning_flops_target=0.9, filters_multiple_of=1)
    with pytest.raises(ConfigError) as err:
        create_compressed_model(_RolledStem(), config)
    assert "prune_first_conv" not in str(err.value)
    assert "`prune_downsample_convs` true" in str(err.value)


class _FiLM(torch.nn.Module):
    """A conv stream scaled and shifted by a Linear of a second input."""

    def __init__(self):
        super().__init__()
        self.c1, self.film = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Linear(4, 32)
        self.c2, self.head = torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.Conv2d(16, 2, 1)

    def forward(self, x, z):
        g, b = self.film(z)[:, :, None, None].chunk(2, 1)
        return self.head(torch.relu(self.c2(torch.relu(self.c1(x))) * g + b))


def test_a_linear_reading_a_model_input_is_named_as_such():
    """Its group was held as a "first convolution"."""
    config = {"input_info": [{"sample_size": [1, 3, 8, 8]}, {"sample_size": [1, 4]}],
              "compression": {"algorithm": "filter_pruning", "pruning_init": 0.5}}
    ctrl, _ = create_compressed_model(_FiLM(), config)
    held = dict((tuple(p), r) for p, r in ctrl.statistics().unpruned)
    assert held[("film", "c2")] == "linear layer film reads a model input (prune_first_conv is off)"


def test_batchnorm_adaptation_runs_on_registered_loader(small_net):
    from filterprune.torch import register_default_init_args

    data = torch.utils.data.TensorDataset(torch.randn(64, 3, 32, 32), torch.zeros(64))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    init = {"batchnorm_adaptation": {"num_bn_adaptation_samples": 32}}
    config = make_config(extra={"initializer": init})
    config = register_default_init_args(config, loader)
    before = small_net.bna.running_var.clone()
    create_compressed_model(small_net, config)
    assert not torch.allclose(before, small_net.bna.running_var)
    assert int(small_net.bna.num_batches_tracked) == 2  # 32 samples in batches of 16


def test_unknown_op_is_left_unpruned_with_a_reason():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3)
            self.c2 = nn.Conv2d(16, 16, 3)
            self.c3 = nn.Conv2d(16, 4, 3)

        def forward(self, x):
            x = self.c2(torch.relu(self.c1(x)))
            x = torch.fft.fftshift(x)  # an op with no channel rule (it rolls every axis)
            return self.c3(x)

    ctrl, model = create_compressed_model(Odd(), make_config())
    reasons = {tuple(p): r for p, r in ctrl.statistics().unpruned}
    assert "fft" in reasons[("c2",)]
    assert_strip_equal(ctrl, model, torch.randn(2, 3, 32, 32))


def test_quantization_without_init_data_is_a_clear_error(small_net):
    config = make_config()
    config["compression"] = [config["compression"], {"algorithm": "quantization"}]
    with pytest.raises(ConfigError, match="Call register_default_init_args.*no data"):
        create_compressed_model(small_net, config)


def test_set_pruning_level_rejects_out_of_range(small_net):
    ctrl, _ = create_compressed_model(small_net, make_config())
    with pytest.raises(ValueError, match=r"must be a float in \[0, 1\)\. Received: level=1\.2"):
        ctrl.set_pruning_level(1.2)


def test_masks_update_when_weights_change(small_net):
    ctrl, model = create_compressed_model(small_net, make_config())
    before = model.b.weight_mask.clone()
    with torch.no_grad():
        order = np.argsort(model.b.weight.flatten(1).norm(dim=1).numpy())
        model.b.weight[order[:12]] *= 100  # the weakest filters become the strongest
    ctrl.set_pruning_level(0.5)
    assert not torch.equal(before, model.b.weight_mask)




@pytest.mark.parametrize(("multiple", "kept"), [(8, 16), (4, 12), (1, 10)])
def test_filters_multiple_of_sets_the_rounding(multiple, kept):
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Conv2d(3, 20, 3), nn.ReLU(), nn.Conv2d(20, 4, 1))
    ctrl, _ = create_compressed_model(net, make_config(filters_multiple_of=multiple))
    assert {s.name: s.kept for s in ctrl.statistics().layers}["1"] == kept


def test_attention_module_flops_are_counted():
    """nn.MultiheadAttention has no channel rule; its projections still cost FLOPs."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(8, 16)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            h = self.embed(x)
            return self.head(self.attn(h, h, h, need_weights=False)[0])

    from filterprune.core.flops import count_flops
    from filterprune.torch.capture import capture

    graph = capture(Net().eval(), (torch.zeros(1, 5, 8),)).graph
    tokens = 5  # every projection runs once per token
    assert count_flops(graph) == 2 * tokens * (8 * 16 + 3 * 16 * 16 + 16 * 16 + 16 * 4)


@pytest.mark.parametrize("form", ["module", "function", "export", "gather"])
def test_lookups_in_a_table_count_no_flops(form):
    """An embedding (and a relative-position bias gathered from a table under
    torch.export) was counted as a matrix product at every token: 320,000 FLOPs here
    for a lookup."""
    from filterprune.core.flops import count_flops
    from filterprune.torch.capture import capture
    from filterprune.torch.export_capture import capture_export

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(1000, 16), nn.Linear(16, 4)
            self.table = nn.Parameter(torch.randn(4, 10, 16))

        def forward(self, t):
            if form == "gather":
                return self.fc(self.table[:, t[0] % 10].sum(0) + self.emb(t))
            return self.fc(F.embedding(t, self.emb.weight) if form == "function" else self.emb(t))

    x = (torch.zeros(1, 10, dtype=torch.long),)
    read = capture_export if form in ("export", "gather") else capture
    assert count_flops(read(Net().eval(), x).graph) == 2 * 10 * 16 * 4


def test_a_scripted_submodule_is_refused_clearly():
    """Before: "'OrderedDictWrapper' object has no attribute 'clear'" from the rollback."""
    block = torch.jit.script(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()))
    model = nn.Sequential(block, nn.Conv2d(16, 4, 1))
    with pytest.raises(AnalysisError, match="Module '0' is a TorchScript module"):
        create_compressed_model(model, make_config((1, 3, 16, 16)))


@pytest.mark.parametrize("form", ["module", "unflatten"])
def test_a_module_torch_export_made_is_refused_clearly(form):
    """ep.module() failed in eval() ("Calling eval() is not supported yet"); an unflattened
    one was created, and then no strip or export could copy it."""
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1))
    program = torch.export.export(net, (torch.zeros(1, 3, 16, 16),))
    model = program.module() if form == "module" else torch.export.unflatten(program)
    with pytest.raises(AnalysisError, match="is a module torch.export made .*Compress the nn"):
        create_compressed_model(model, make_config((1, 3, 16, 16)))


class _AuxHead(nn.Module):
    """An aux head only the training forward calls (GoogLeNet, Inception v3); with
    ``dropped``, DARTS's drop path in training, which torch.fx cannot trace (a tensor
    made of a traced size)."""

    def __init__(self, dropped=False):
        super().__init__()
        self.dropped = dropped
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.head, self.aux = nn.Conv2d(16, 4, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        f = torch.relu(self.c1(x))
        if self.training and self.dropped:
            f = f * torch.FloatTensor(f.size(0), 1, 1, 1).bernoulli_(0.8)
        out = self.head(torch.relu(self.c2(f)))
        return (out, self.aux(f)) if self.training else out


@pytest.mark.parametrize(("dropped", "frozen"), [(False, False), (True, False), (True, True)])
def test_what_a_training_only_head_reads_stays_whole(dropped, frozen):
    """The eval-mode trace does not see the aux head: c1 was cut under it, and the
    stripped model failed in train mode ("expected input to have 16 channels"). Where
    the train-mode trace failed too (DARTS), it still was, with no word; also where the
    layer before it is frozen (its output had no autograd history)."""
    torch.manual_seed(0)
    net = _AuxHead(dropped)
    net.c1.requires_grad_(not frozen)
    ctrl, model = create_compressed_model(net, make_config((1, 3, 16, 16), prune_first_conv=True))
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert held["c1"] == "aux: runs only in training and reads these channels"
    small = ctrl.strip()
    assert small.c2.out_channels == 8
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.manual_seed(1)
        ref = model.train()(x)
        torch.manual_seed(1)
        for got, want in zip(small.train()(x), ref, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


class _ReidNet(nn.Module):
    """A re-ID net: its classifier runs in every mode, its logits returned in training
    only (the embedding in eval)."""

    def __init__(self):
        super().__init__()
        self.c1, self.emb = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        feat = self.emb(torch.relu(self.c1(x))).mean((2, 3))
        logits = self.fc(feat)
        return logits if self.training else feat


class _UnusedProject(nn.Module):
    """As timm's DLA trees: a shortcut made by a weightless module (``nn.Identity``) of a
    pooled input, which the next tree makes again and never reads."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
        self.pool, self.project = nn.MaxPool2d(2), nn.Identity()

    def forward(self, x):
        bottom = self.pool(torch.relu(self.c1(x)))
        self.project(bottom)
        return self.c2(bottom).mean((2, 3))


def test_a_weightless_module_left_unread_holds_nothing():
    """Its input was held as "reaching no output of the captured forward"; DLA kept 0.345
    of its FLOPs for 0.306."""
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(_UnusedProject(), make_config(
        (1, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1))  # fmt: skip
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert "c1" not in held, held
    assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16))


def test_a_classifier_whose_logits_only_training_returns_keeps_its_classes():
    """Its outputs reached nothing in the eval trace: half its classes were cut (masked:
    5 logits of 10 zero in training; stripped: 5 classes)."""
    torch.manual_seed(0)
    ctrl, model = create_compressed_model(_ReidNet(), make_config(
        (1, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1))  # fmt: skip
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    assert held["fc"].startswith("its output reaches no output of the captured forward")
    small = ctrl.strip()
    assert small.fc.out_features == 10 and small.c1.out_channels == 8
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(small.train()(x), model.train()(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("quantized", [False, True])
def test_a_controller_that_stripped_in_place_refuses_a_model_compressed_again(quantized):
    """Its strip() returned a copy of the second controller's masked model, uncut."""
    torch.manual_seed(0)
    quant = [{"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0}}}]
    config = make_config((1, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    first = NNCFConfig.from_dict({**config, "compression": [config["compression"], *(
        quant if quantized else [])]})  # fmt: skip
    ctrl, model = create_compressed_model(SmallNet(), first)
    small = ctrl.strip(do_copy=False)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ctrl.strip()(x), small(x))  # untouched since: still a copy
    if quantized:  # its frozen quantizers: deployed, not a run to resume
        with pytest.raises(AnalysisError, match="is a quantizer of a stripped model"):
            create_compressed_model(small, config)
        return
    create_compressed_model(small, config)
    with pytest.raises(AnalysisError, match="stripped its model in place"):
        ctrl.strip()


def test_a_sample_size_the_model_refuses_prints_no_traceback(capfd):
    """torch.fx's ShapeProp printed its traceback before our one-sentence error."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 14 * 14, 4))
    with pytest.raises(AnalysisError, match="failed on a zero input of shape"):
        create_compressed_model(model, make_config((1, 3, 32, 32)))
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out


def test_a_sample_the_model_refuses_for_its_values_is_named_with_its_filler():
    """It said "failed on a zero input" of an input of ones, and to change its size."""

    class Lengths(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 4, 3)

        def forward(self, x):
            if bool((x > 0.5).any()):
                raise ValueError("a length longer than the sequence")
            return self.conv(x)

    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 8], "filler": "ones"},
                                   "compression": {"algorithm": "filter_pruning"}})  # fmt: skip
    with pytest.raises(AnalysisError, match=r"failed on an input of ones of shape \[\(1, 1, 8\)\]"
                       r".*`filler`.*wrapper"):  # fmt: skip
        create_compressed_model(Lengths(), config)


def test_ignored_scope_on_a_layer_without_filters_warns(small_net, caplog):
    caplog.set_level("WARNING", logger="filterprune")  # a CLI test may raise it
    config = make_config(prune_first_conv=True, extra={"ignored_scopes": ["{re}.*bn.*"]})
    create_compressed_model(small_net, config)
    assert "matches only layers without filters" in caplog.text


@pytest.mark.parametrize("quantize", [False, True])
def test_compressing_a_compressed_model_is_refused(small_net, quantize):
    pruning = {"algorithm": "filter_pruning", "pruning_init": 0.5}
    quantization = {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0}}}
    config = {"input_info": {"sample_size": [1, 3, 32, 32]},
              "compression": [pruning, quantization] if quantize else [pruning]}
    _, model = create_compressed_model(small_net, config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AnalysisError, match="compressed before"):
        create_compressed_model(model, config)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_init_args_registered_on_a_plain_dict_config(small_net):
    from filterprune.torch import register_default_init_args

    loader = [(torch.randn(4, 3, 32, 32), torch.zeros(4)) for _ in range(2)]
    plain = {"input_info": {"sample_size": [1, 3, 32, 32]},
             "compression": [{"algorithm": "filter_pruning"}, {"algorithm": "quantization"}]}
    ctrl, _ = create_compressed_model(small_net, register_default_init_args(plain, loader))
    stats = ctrl.get("quantization").statistics()
    assert stats.num_initialized == stats.num_quantizers > 0  # ranges from the loader


def _raised_level(small_net):
    config = make_config(prune_first_conv=True, pruning_init=0.2, pruning_target=0.6,
                         pruning_steps=2, filters_multiple_of=1)  # fmt: skip
    ctrl, model = create_compressed_model(small_net, config)
    return ctrl, model, config


def test_averaged_masks_are_not_loaded(small_net):
    import copy

    ctrl, model, _ = _raised_level(small_net)
    ema = copy.deepcopy(model)  # an EMA as timm keeps one: every state_dict entry lerped
    for _ in range(3):
        ctrl.scheduler.epoch_step()
    with torch.no_grad():
        for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
            if e.is_floating_point():
                e.lerp_(m, 0.1)
    averaged = [k for k, v in ema.state_dict().items() if k.endswith("_mask")
                and not bool(((v == 0) | (v == 1)).all())]  # fmt: skip
    assert averaged  # the level rose, so some masks are now 0.9
    with pytest.warns(UserWarning, match="masks are not 0/1"):
        model.load_state_dict(ema.state_dict())
    assert_strip_equal(ctrl, model, torch.randn(2, 3, 32, 32), tol=1e-5)


def test_masks_of_another_level_are_refused(small_net):
    import copy

    fresh = copy.deepcopy(small_net)
    ctrl, model, config = _raised_level(small_net)
    for _ in range(3):
        ctrl.scheduler.epoch_step()
    _, model2 = create_compressed_model(fresh, config)
    with pytest.raises(ConfigError, match="saved at another pruning level"):
        model2.load_state_dict(model.state_dict())


@pytest.mark.parametrize("strip", [False, True])
def test_whole_models_pickle_with_pruning_and_quantization(small_net, tmp_path, strip):
    import io

    from filterprune.torch import register_default_init_args

    loader = [(torch.randn(4, 3, 32, 32), torch.zeros(4)) for _ in range(2)]
    config = register_default_init_args(
        {"input_info": {"sample_size": [1, 3, 32, 32]}, "compression": [
            {"algorithm": "filter_pruning", "params": {"prune_first_conv": True}},
            {"algorithm": "quantization"}]}, loader)
    ctrl, model = create_compressed_model(small_net, config)
    saved = ctrl.strip().eval() if strip else model.eval()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), saved(x))
    assert [type(m).__name__ for m in loaded.modules()] == [
        type(m).__name__ for m in saved.modules()]


def test_resizing_a_parametrized_model_says_to_remove_its_parametrizations(small_net):
    from torch.nn.utils import parametrizations, parametrize

    def built():
        torch.manual_seed(0)
        model = SmallNet()
        parametrizations.spectral_norm(model.b)
        return model

    ctrl, _ = create_compressed_model(built(), make_config(prune_first_conv=True))
    state = ctrl.strip().state_dict()
    with pytest.raises(ValueError, match="remove_parametrizations"):
        resize_to_state_dict(built(), state)
    plain = built()
    parametrize.remove_parametrizations(plain.b, "weight")
    small = resize_to_state_dict(plain, state).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), ctrl.strip().eval()(x))


def test_entries_asking_for_different_bn_adaptation_counts_are_told(caplog):
    """A 0 in the pruning entry alone was silently overridden by the quantization
    entry's default 2000."""

    caplog.set_level("WARNING", logger="filterprune")
    none = {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}
    config = NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, 3, 32, 32]},
        "compression": [{"algorithm": "filter_pruning", "pruning_init": 0.5, "initializer": none},
                        {"algorithm": "quantization",
                         "initializer": {"range": {"num_init_samples": 0}}}]})  # fmt: skip
    ctrl, _ = create_compressed_model(SmallNet(), config)
    assert ctrl.bn_adaptation_samples == 2000
    assert "different BatchNorm adaptation sample counts (filter_pruning 0, quantization " \
           "2000): it runs once, with 2000" in caplog.text  # fmt: skip


class _TwoIntoOne(nn.Module):
    """Two convs adding into one stream: one group of 16 channel units, 32 filters."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.a(x) + self.b(x)))


def test_filter_counts_are_the_layers_filters():
    """They counted channel units of groups: 8 of 16 here, where 16 of 32 filters are kept."""
    config = make_config(prune_first_conv=True, filters_multiple_of=1)
    ctrl, _ = create_compressed_model(_TwoIntoOne(), config)
    stats, small = ctrl.statistics(), ctrl.strip()
    assert stats.full_filters == 32
    assert stats.current_filters == small.a.out_channels + small.b.out_channels == 16


def test_a_masked_model_compiles_whole_in_training():
    """The masked BatchNorm's training forward read its statistics in a comprehension with
    an assignment expression, which torch.compile cannot trace: fullgraph=True failed, and
    without it the graph broke at every BatchNorm."""
    from torch_helpers import SmallNet, make_config, randomize_bn

    torch.manual_seed(0)
    ctrl, model = create_compressed_model(randomize_bn(SmallNet()), make_config(pruning_init=0.5))
    compiled = torch.compile(model.train(), backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    compiled(x).sum().backward()
    torch._dynamo.reset()


def test_a_model_compiled_in_place_is_refused_with_the_way_round():
    """Creation's passes reached dynamo's recompile limit, after which the model ran
    uncompiled, unsaid."""
    from torch_helpers import SmallNet, make_config

    from filterprune.errors import AnalysisError

    model = SmallNet()
    model.compile(backend="eager")
    with pytest.raises(AnalysisError, match=r"compiled in place \(\.compile\(\)\)"):
        create_compressed_model(model, make_config())
    model._compiled_call_impl = None
    create_compressed_model(model, make_config())  # unchanged: it compresses once uncompiled


def test_a_compiled_wrapper_is_refused_with_the_way_round():
    """torch.fx could not read the wrapper; torch.export's capture then fixed the batch
    size of the export and missed where a quantizer goes, with nothing said."""
    from torch_helpers import SmallNet, make_config

    from filterprune.errors import AnalysisError

    with pytest.raises(AnalysisError, match=r"torch.compile wrapper\. Compress the model "
                       r"uncompiled \(model._orig_mod\)"):
        create_compressed_model(torch.compile(SmallNet()), make_config())
    model = SmallNet()
    model.b = torch.compile(model.b)  # a submodule: the root has no _orig_mod
    with pytest.raises(AnalysisError, match=r"Module 'b' is a torch.compile wrapper\. "
                       r"Compress the model uncompiled \(model.b = model.b._orig_mod\)"):
        create_compressed_model(model, make_config())


@pytest.mark.parametrize("prepare", ["prepare_qat", "prepare"])
def test_a_model_prepared_by_torch_ao_quantization_is_refused(prepare):
    """Pruning said the model had no layer with filters (its QAT convs), quantization that
    the scopes left out every layer, and the export failed after a long graph dump."""
    from torch.ao import quantization as tq
    from torch_helpers import SmallNet, make_config

    from filterprune.errors import AnalysisError

    model = SmallNet().train(prepare == "prepare_qat")
    model.qconfig = tq.get_default_qat_qconfig("x86") if prepare == "prepare_qat" else \
        tq.get_default_qconfig("x86")  # fmt: skip
    model = getattr(tq, prepare)(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AnalysisError, match=r"torch.ao.quantization observer or fake "
                       r"quantizer .* Pass the float model"):  # fmt: skip
        create_compressed_model(model, make_config())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_layers_replaced_after_compression_are_refused():
    """SyncBatchNorm.convert_sync_batchnorm after create_compressed_model (the usual DDP
    set-up) dropped every BatchNorm's mask and an activation quantizer's hook, silently."""
    from torch_helpers import SmallNet, make_config

    from filterprune.errors import AnalysisError

    config = dict(make_config(pruning_init=0.5))
    config["compression"] = [config["compression"], {
        "algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0}}}]
    ctrl, model = create_compressed_model(SmallNet(), config)
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for call in (ctrl.distributed, ctrl.strip):
        with pytest.raises(AnalysisError, match=r"Layer 'bn0' of the model is now a "
                           r"SyncBatchNorm.*before create_compressed_model"):
            call()


class _Routed(nn.Module):
    """A ModuleDict picked by an attribute (torch.fx) or by a forward argument (a
    Python branch torch.fx cannot trace: torch.export's capture)."""

    def __init__(self, by_argument):
        super().__init__()
        self.by_argument = by_argument
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.paths = nn.ModuleDict({"a": nn.Conv2d(16, 24, 3, padding=1),
                                    "b": nn.Conv2d(16, 24, 1)})  # fmt: skip
        self.head = nn.Linear(24, 10)

    def forward(self, x, key="b"):
        if not self.by_argument:
            key = "b"
        return self.head(self.paths[key](torch.relu(self.stem(x))).mean((2, 3)))


@pytest.mark.parametrize("by_argument", [False, True])
def test_modules_the_traced_forward_never_runs_are_named(by_argument):
    """The stem was cut for route b, and the stripped model failed on route a, with
    nothing said (paths.a appeared nowhere)."""
    config = make_config((1, 3, 8, 8), pruning_init=0.5, prune_first_conv=True)
    with pytest.warns(UserWarning, match=r"paths\.a did not run in the captured forward"):
        ctrl, _ = create_compressed_model(_Routed(by_argument), config)
    assert any("paths.a did not run" in note for note in ctrl.analysis.graph.notes)


def test_a_misspelt_keyword_is_refused_and_nncf_ones_are_said(caplog):
    """``compresion_state=`` started a fresh run without a word; NNCF's own keywords are
    accepted, and one that is not used is said."""
    caplog.set_level("WARNING", logger="filterprune")
    config = make_config((1, 3, 32, 32))
    with pytest.raises(TypeError, match="'compresion_state'. Did you mean `compression_state`"):
        create_compressed_model(SmallNet(), config, compresion_state={})
    create_compressed_model(SmallNet(), config, dump_graphs=False, wrap_inputs_fn=None)
    assert not caplog.records
    create_compressed_model(SmallNet(), config, dummy_forward_fn=lambda model: model)
    assert "`dummy_forward_fn` is not used: the model is run on inputs made from" in caplog.text


@pytest.mark.parametrize(("value", "says"), [
    ({"conv.weight": torch.zeros(1)}, "a dict (a state_dict or a checkpoint?)"),
    (nn.Conv2d, "the class Conv2d (not an instance of it)"),
    (lambda x: x, "a function"),
])  # fmt: skip
def test_what_is_not_a_module_is_named(value, says):
    """A state_dict or a checkpoint passed as the model failed in named_modules."""
    with pytest.raises(TypeError, match=rf"a torch\.nn\.Module\. Received: {re.escape(says)}"):
        create_compressed_model(value, make_config((1, 3, 8, 8)))


def test_a_data_parallel_wrapper_is_refused_with_what_to_pass(small_net):
    """It was captured through torch.export with layer names under "module.", which no
    saved state or scope pattern of the plain model matched."""
    with pytest.raises(AnalysisError, match=r"wrapped in DataParallel\. Compress the model "
                       r"itself \(model\.module\)"):
        create_compressed_model(nn.DataParallel(small_net), make_config((1, 3, 32, 32)))


def test_the_torch_frontend_imported_after_tensorflow_does_not_crash_python():
    """Triton loaded after TensorFlow segfaults, and torchvision loads it."""
    pytest.importorskip("tensorflow")
    code = "import filterprune.tensorflow, filterprune.torch, torchvision; print('ran')"
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0 and "ran" in done.stdout, done.stderr[-2000:]
    if importlib.util.find_spec("triton") is not None:
        assert "filterprune.torch hides Triton in this process" in done.stderr


@dataclasses.dataclass(frozen=True, kw_only=True)
class _NoiseParams(Settings):
    ALGORITHM = "test_noise"


class _NoiseController(CompressionController):
    """A user's algorithm as docs/architecture.md writes one: ``strip_model`` only."""

    name = "test_noise"

    def __init__(self, model, params, captured, frontend):
        self.model, self.params, self.captured = model, params, captured

    def loss(self):
        return sum(p.square().sum() for p in self.model.parameters()) * 1e-4

    def strip_model(self, model, **kwargs):
        model.stripped_by = self.name
        return model


@pytest.mark.parametrize("with_pruning", [False, True])
def test_an_algorithm_of_the_users_strips_and_exports_alone_or_beside_others(
        with_pruning, monkeypatch, tmp_path):  # fmt: skip
    """Alone, its controller was returned bare: no ``strip``, no ``export_model``."""
    monkeypatch.setitem(ALGORITHMS, "test_noise", _NoiseParams)
    monkeypatch.setitem(TorchFrontend.controllers, "test_noise", _NoiseController)
    entries = [{"algorithm": "filter_pruning", "pruning_init": 0.5}] if with_pruning else []
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 3, 32, 32]},
                                   "compression": [*entries, {"algorithm": "test_noise"}]})
    ctrl, model = create_compressed_model(SmallNet(), config)
    assert ctrl.get("test_noise").loss().item() > 0
    assert ctrl.strip().stripped_by == "test_noise"
    ctrl.export_model(str(tmp_path / "m.onnx"))
    assert (tmp_path / "m.onnx").exists()
    if not with_pruning:  # a state of another algorithm names this one, not the composite
        state = {**ctrl.get("test_noise").get_compression_state(), "algorithm": "quantization"}
        with pytest.raises(ConfigError, match="must be 'test_noise'"):
            create_compressed_model(SmallNet(), config, state)
