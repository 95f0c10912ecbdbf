"""Saved states, scopes and settings that used to be accepted and then misbehave (issue 13).

Each test names the defect it pins: a state with a missing key, an index out of range,
another version or another model; resuming with a config that now leaves a pruned layer
whole; scopes that match nothing; a target below ``pruning_init``; nothing prunable
reported as fully compressed.
"""

import copy
import logging

import numpy as np
import pytest
from core_fixtures import PRUNE, DictFrontend, Net, Pruning, _config

from filterprune import NNCFConfig
from filterprune.core.compression import CompressionStage
from filterprune.core.config import FilterPruningParams
from filterprune.core.workflow import create_compressed_model, dry_run
from filterprune.errors import ConfigError


def _saved(config=None):
    config = config or _config(PRUNE)
    ctrl, _ = create_compressed_model(DictFrontend(), Net(), config)
    return ctrl.get_compression_state()


def _resume(state, config=None, net=None):
    return create_compressed_model(DictFrontend(), net or Net(), config or _config(PRUNE), state)


# --- item 7: states ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("plan"), r"^`compression_state\.plan` must be set to an object\. "
                                  r"Received: no `plan` key\."),
        (lambda s: s.pop("version"), r"^`compression_state\.version` must be set to 1\. "
                                     r"Received: no `version` key"),
        (lambda s: s.update(version=2), r"^`compression_state\.version` must be 1: this "
                                        r"filterprune reads states of version 1 only\. "
                                        r"Received: version=2\."),
        (lambda s: s.update(version="1"), r"Received: version='1'\."),
        (lambda s: s.update(algorithm="quantization"),
         r"^`compression_state\.algorithm` must be 'filter_pruning'.*algorithm='quantization'"),
        (lambda s: s["scheduler"].pop("current_epoch"),
         r"^`compression_state\.scheduler\.current_epoch` must be set"),
        (lambda s: s["scheduler"].update(current_level=1.5),
         r"^`compression_state\.scheduler\.current_level` must be a number in \[0, 1\)\. "
         r"Received: current_level=1\.5\."),
        (lambda s: s["plan"]["groups"][0].update(kept=[0, 99]),
         r"^`compression_state\.plan\.groups\[0\]\.kept` must hold channel indices below "
         r"size=16\. Received: kept has \[99\]\."),
        (lambda s: s["plan"]["groups"][0].update(kept=[-1]),
         r"^`compression_state\.plan\.groups\[0\]\.kept\[0\]` must be an integer >= 0\."),
        (lambda s: s["plan"]["groups"][0].update(kept=[1, 1]),
         r"^`compression_state\.plan\.groups\[0\]\.kept` must be"),
        (lambda s: s["plan"]["groups"][0].pop("size"),
         r"^`compression_state\.plan\.groups\[0\]\.size` must be set"),
        (lambda s: s["plan"].update(groups="all"),
         r"^`compression_state\.plan\.groups` must be a list"),
        (lambda s: s.update(frozen="yes"), r"^`compression_state\.frozen` must be a boolean"),
        (lambda s: s.update(extra=1), r"^Unknown key `compression_state\.extra`"),
    ],
)
def test_a_broken_state_is_refused_with_its_key_path(edit, message):
    state = _saved()
    edit(state)
    with pytest.raises(ConfigError, match=message):
        _resume(state)


@pytest.mark.parametrize("state", [[], "state.json", 3, {"algorithm": "filter_pruning"}])
def test_a_state_that_is_not_a_state_is_refused(state):
    with pytest.raises(ConfigError, match=r"^`compression_state(\.version)?` must be"):
        _resume(state)


def test_a_state_of_another_model_names_the_groups_that_differ():
    other = Net()
    other.weights["c1"] = np.ones((32, 3, 3, 3))
    other.weights["c2"] = np.ones((8, 32, 3, 3))
    ctrl, _ = create_compressed_model(DictFrontend(), other, _config(PRUNE))
    with pytest.raises(ConfigError, match=(
        r"^`compression_state\.plan\.groups` must be groups of this model: was the state saved "
        r"for another model\? Received: groups this model does not have: \['c1'\] \(size 32\); "
        r"this model's prunable groups the state lacks: none\.")):
        _resume(ctrl.get_compression_state())


def test_a_bad_state_leaves_the_controller_as_it_was():
    ctrl, model = create_compressed_model(DictFrontend(), Net(), _config(PRUNE))
    before = copy.deepcopy(model.masks)
    state = ctrl.get_compression_state()
    state["plan"]["groups"][0]["kept"] = [0, 99]
    state["scheduler"]["current_epoch"] = 7
    with pytest.raises(ConfigError, match="below size=16"):
        ctrl.load_state(state)
    assert ctrl.scheduler.current_epoch == -1
    assert all(np.array_equal(model.masks["c1"][k], v) for k, v in before["c1"].items())


def test_resuming_with_a_config_that_now_ignores_a_pruned_layer_is_refused():
    state = _saved()
    config = _config(PRUNE)
    config["ignored_scopes"] = ["c1"]
    with pytest.raises(ConfigError, match=(
        r"^`compression_state\.plan\.groups\[0\]` prunes c1 \(8 of 16 filters kept\), which "
        r"this config leaves whole: c1 in ignored_scopes \('c1'\)\. Resume with the config "
        r"the state was saved with")):
        _resume(state, config)


def test_a_group_left_whole_in_the_state_may_become_ignored():
    unpruned = copy.deepcopy(PRUNE)
    unpruned["pruning_init"] = 0.0
    state = _saved(_config(unpruned))
    config = _config(unpruned)
    config["ignored_scopes"] = ["c1"]
    ctrl, _ = _resume(state, config)
    assert ctrl.plan.kept == {}


def test_composite_states_are_checked_child_by_child():
    config = _config(PRUNE, {"algorithm": "quantization"})
    ctrl, _ = create_compressed_model(DictFrontend(data="d"), Net(), config)
    good = ctrl.get_compression_state()
    cases = [
        (lambda s: s.update(version=0), r"^`compression_state\.version` must be 1"),
        (lambda s: s.update(children={}), r"^`compression_state\.children` must be a list"),
        (lambda s: s["children"][1].update(version=3),
         r"^`compression_state\.children\[1\]\.version` must be 1"),
        (lambda s: s["children"][0]["plan"]["groups"][0].update(kept=[16]),
         r"^`compression_state\.children\[0\]\.plan\.groups\[0\]\.kept` must hold"),
        (lambda s: s["children"].append({"version": 1, "algorithm": "sparsity"}),
         r"the config does not run: \['sparsity'\]"),
        (lambda s: s["children"].append(s["children"][0]),
         r"^`compression_state\.children\[2\]` must be the only state of 'filter_pruning'"),
        (lambda s: s["children"].insert(0, 5),
         r"^`compression_state\.children\[0\]` must be the state of one of"),
    ]
    for edit, message in cases:
        state = copy.deepcopy(good)
        edit(state)
        with pytest.raises(ConfigError, match=message):
            create_compressed_model(DictFrontend(), Net(), config, state)
    # children in another order are found by name, and the key path follows the state
    state = copy.deepcopy(good)
    state["children"].reverse()
    state["children"][1]["plan"]["groups"][0]["kept"] = [16]
    with pytest.raises(ConfigError, match=r"`compression_state\.children\[1\]\.plan"):
        create_compressed_model(DictFrontend(), Net(), config, state)


def test_a_single_algorithm_config_refuses_a_composite_state():
    config = _config(PRUNE, {"algorithm": "quantization"})
    ctrl, _ = create_compressed_model(DictFrontend(data="d"), Net(), config)
    with pytest.raises(ConfigError, match=r"^`compression_state\.algorithm` must be "
                       r"'filter_pruning'.*Received: algorithm='composite' \(it holds"):
        _resume(ctrl.get_compression_state())


def test_a_composite_config_names_its_algorithms_for_a_single_state():
    """It said "must be 'composite': the config runs composite", which a user who gave
    two `compression` entries does not recognise."""
    single, _ = create_compressed_model(DictFrontend(data="d"), Net(), _config(PRUNE))
    both = _config(PRUNE, {"algorithm": "quantization"})
    with pytest.raises(ConfigError, match=(
            r"^`compression_state\.algorithm` must be 'composite': the config runs "
            r"filter_pruning and quantization, saved as one state\. Received: "
            r"algorithm='filter_pruning' \(a state of filter_pruning alone: give the config "
            r"that one `compression` entry, or start without the state\)\.$")):
        create_compressed_model(DictFrontend(), Net(), both, single.get_compression_state())


def test_a_flops_target_state_resumed_with_a_level_target_says_what_to_set():
    """It said "Set pruning_target=None": the saved run had no level target at all."""
    flops = copy.deepcopy(PRUNE)
    flops["params"].pop("pruning_target")
    flops["params"]["pruning_flops_target"] = 0.5
    with pytest.raises(ConfigError, match=r"`params\.pruning_target` must be unset, as when "
                       r"the state was saved.*Remove pruning_target and set "
                       r"pruning_flops_target=0\.5 to resume"):
        _resume(_saved(_config(flops)))


def test_keys_a_frontend_controller_adds_are_allowed_for_it_only():
    class Shrinking(Pruning):
        def get_compression_state(self):
            return {**super().get_compression_state(), "shrunk": False}

    class ShrinkingFrontend(DictFrontend):
        controllers = {**DictFrontend.controllers, "filter_pruning": Shrinking}

    ctrl, _ = create_compressed_model(ShrinkingFrontend(), Net(), _config(PRUNE))
    state = ctrl.get_compression_state()
    create_compressed_model(ShrinkingFrontend(), Net(), _config(PRUNE), state)
    with pytest.raises(ConfigError, match=r"^Unknown key `compression_state\.shrunk`"):
        _resume(state)  # the plain controller writes no such key


def test_a_valid_state_still_round_trips():
    state = _saved()
    ctrl, model = _resume(state)
    assert ctrl.get_compression_state() == state
    assert model.masks["c1"]["out"].sum() == 8


# --- item 4: scopes in the workflow -------------------------------------------------------


def test_a_misspelt_ignored_scope_is_an_error_not_a_pruned_layer():
    config = _config(PRUNE)
    config["ignored_scopes"] = ["C1"]
    with pytest.raises(ConfigError, match=r"^`ignored_scopes\[0\]` must match a layer of the "
                       r"model\. Received: ignored_scopes\[0\]='C1', which matches none\. "
                       r"Close layer names: 'c1'"):
        create_compressed_model(DictFrontend(), Net(), config)
    with pytest.raises(ConfigError, match=r"`ignored_scopes\[0\]` must match"):
        dry_run(DictFrontend(), Net(), config)


def test_validate_scopes_false_warns_and_runs(caplog):
    config = _config(PRUNE)
    config.update(ignored_scopes=["C1"], validate_scopes=False)
    with caplog.at_level(logging.WARNING, logger="filterprune"):
        ctrl, _ = create_compressed_model(DictFrontend(), Net(), config)
    assert "`ignored_scopes[0]` must match a layer" in caplog.text
    assert ctrl.statistics().current_filters < ctrl.statistics().full_filters


def test_an_nncf_scope_protects_the_layer_it_names():
    config = _config(PRUNE)
    config["ignored_scopes"] = ["Net/NNCFConv2d[c1]/conv2d_0"]
    ctrl, _ = create_compressed_model(DictFrontend(), Net(), config)
    assert ctrl.plan.kept == {}
    assert "ignored_scopes ('Net/NNCFConv2d[c1]/conv2d_0')" in ctrl.analysis.groups[0].reason


def test_validate_scopes_is_a_config_key_at_both_levels():
    entry = {**PRUNE, "validate_scopes": False}
    params = FilterPruningParams.from_config(_config(entry))
    assert params.validate_scopes is False
    with pytest.raises(ConfigError, match=r"`validate_scopes` must be a boolean"):
        create_compressed_model(DictFrontend(), Net(), {**_config(PRUNE), "validate_scopes": 1})


# --- item 5: settings ---------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["exponential", "baseline", "exponential_with_bias"])
def test_a_target_below_pruning_init_fails_validation(schedule):
    entry = {"algorithm": "filter_pruning", "pruning_init": 0.5,
             "params": {"schedule": schedule, "pruning_target": 0.2}}
    with pytest.raises(ConfigError, match=(
        r"^`compression\[0\]\.params\.pruning_target` must be at least "
        r"`compression\[0\]\.pruning_init`: the schedule only prunes more over time\. "
        r"Received: pruning_target=0\.2, pruning_init=0\.5\.$")):
        create_compressed_model(DictFrontend(), Net(), _config(entry))
    flops = {"algorithm": "filter_pruning", "pruning_init": 0.4,
             "params": {"schedule": schedule, "pruning_flops_target": 0.3}}
    with pytest.raises(ConfigError, match=r"`compression\[0\]\.params\.pruning_flops_target` "
                       r"must be at least"):
        create_compressed_model(DictFrontend(), Net(), _config(flops))
    with pytest.raises(ConfigError,
                       match=r"^`params\.pruning_target` must be at least `pruning_init`"):
        FilterPruningParams(pruning_init=0.5, pruning_target=0.2, schedule=schedule)


def test_a_target_equal_to_pruning_init_is_fine():
    assert FilterPruningParams(pruning_init=0.3, pruning_target=0.3).target_level == 0.3


def test_nothing_prunable_is_not_fully_compressed(caplog):
    config = _config(PRUNE)
    config["ignored_scopes"] = ["c1", "c2"]
    with caplog.at_level(logging.WARNING, logger="filterprune"):
        ctrl, _ = create_compressed_model(DictFrontend(), Net(), config)
    assert ctrl.pruning_level == 0.5
    assert ctrl.compression_stage() == CompressionStage.UNCOMPRESSED
    assert ("nothing can be pruned, every group is left whole (c1 in ignored_scopes ('c1'); "
            "feeds a model output)") in caplog.text
    # the composite agrees with its child
    both = _config(PRUNE, {"algorithm": "quantization"})
    both["ignored_scopes"] = ["c1", "c2"]
    ctrl, _ = create_compressed_model(DictFrontend(data="d"), Net(), both)
    assert ctrl.compression_stage() == CompressionStage.PARTIALLY_COMPRESSED  # quant done only


@pytest.mark.parametrize("run", [
    lambda config: create_compressed_model(DictFrontend(), Net(), config),
    lambda config: dry_run(DictFrontend(), Net(), config),
])  # fmt: skip
def test_a_config_edited_after_loading_is_checked_again(run):
    """``config[...] = value`` after from_dict or from_json (NNCF scripts set targets from
    their arguments) was read unchecked: a misspelt key did nothing, and a target of 1.5
    failed two epochs later with a TypeError."""
    config = NNCFConfig.from_dict(_config(PRUNE))
    params = config["compression"][0]["params"]
    params["pruning_targt"] = 0.8
    with pytest.raises(ConfigError, match="pruning_targt"):
        run(config)
    del params["pruning_targt"]
    params["pruning_target"] = 1.5
    with pytest.raises(ConfigError, match="pruning_target"):
        run(config)


def test_misspelt_top_level_keys_get_a_hint(caplog):
    config = _config(PRUNE)
    config["accuracy_aware_trainig"] = {"mode": "adaptive_compression_level"}
    config["Ignored_Scopes"] = ["c1"]
    with caplog.at_level(logging.WARNING, logger="filterprune"):
        create_compressed_model(DictFrontend(), Net(), config)
    assert ("Unknown top-level key `accuracy_aware_trainig` is not read. Did you mean "
            "`accuracy_aware_training`?") in caplog.text
    assert "`Ignored_Scopes` is not read. Did you mean `ignored_scopes`?" in caplog.text


def test_prune_batch_norms_off_is_said_to_change_nothing(caplog):
    config = _config({**PRUNE, "params": {**PRUNE["params"], "prune_batch_norms": False}})
    with caplog.at_level(logging.WARNING, logger="filterprune"):
        create_compressed_model(DictFrontend(), Net(), config)
    assert "`compression[0].params.prune_batch_norms: false` changes nothing" in caplog.text


def test_a_temperature_of_the_mse_type_is_said_unread(caplog):
    config = _config(PRUNE, {"algorithm": "knowledge_distillation", "type": "mse",
                             "temperature": 4})  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="filterprune"):
        dry_run(DictFrontend(), Net(), config)
    assert "`compression[1].temperature` is not read by type 'mse'" in caplog.text


def test_sizes_set_from_arrays_and_shapes_after_loading_are_read_as_lists():
    """The config checked again refused them (a tuple, a NumPy integer); they ran before."""
    config = NNCFConfig.from_dict(_config(PRUNE))
    config["input_info"]["sample_size"] = (1, np.int64(3), 4, 4)
    create_compressed_model(DictFrontend(), Net(), config)
    assert config["input_info"]["sample_size"] == [1, 3, 4, 4]
    assert type(config["input_info"]["sample_size"][1]) is int
    config["input_info"]["sample_size"] = np.array([1, 3, 4, 4])
    dry_run(DictFrontend(), Net(), config)
