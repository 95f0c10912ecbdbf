"""The core workflow and composite controller, with a frontend over plain numpy weights."""

import pytest
from core_fixtures import PRUNE, DictFrontend, Net, Pruning, _config

from filterprune.core.compression import CompositeCompressionController, CompressionStage
from filterprune.core.workflow import create_compressed_model, dry_run
from filterprune.errors import ConfigError


def test_one_algorithm_gives_its_own_controller():
    ctrl, model = create_compressed_model(DictFrontend(), Net(), _config(PRUNE))
    assert isinstance(ctrl, Pruning)
    assert model.masks["c1"]["out"].sum() == 8
    assert ctrl.get("filter_pruning") is ctrl  # as a composite's child: one code for both
    with pytest.raises(KeyError, match=r"No 'quantization' controller here. Algorithms: "
                                       r"\['filter_pruning'\]"):  # fmt: skip
        ctrl.get("quantization")


def test_composite_runs_children_in_list_order_and_sums_losses():
    frontend = DictFrontend(data="batches")
    config = _config(PRUNE, {"algorithm": "quantization"})
    ctrl, model = create_compressed_model(frontend, Net(), config)
    assert isinstance(ctrl, CompositeCompressionController)
    assert [c.name for c in ctrl.child_ctrls] == ["filter_pruning", "quantization"]
    assert ctrl.loss() == 0.5
    assert model.adapted == 7  # masks changed at creation: BN adapted with pruning's count
    assert ctrl.get("quantization").initialized == "batches"
    assert ctrl.compression_stage() == CompressionStage.FULLY_COMPRESSED
    stats = ctrl.statistics()
    assert stats.filter_pruning.current_filters == stats.current_filters < stats.full_filters
    ctrl.scheduler.epoch_step()
    assert ctrl.scheduler.current_epoch == 0


def test_composite_state_round_trips_and_names_what_is_missing():
    config = _config(PRUNE, {"algorithm": "quantization"})
    ctrl, _ = create_compressed_model(DictFrontend(data="d"), Net(), config)
    state = ctrl.get_compression_state()
    resumed, model = create_compressed_model(DictFrontend(), Net(), config, state)
    assert resumed.get("quantization").initialized == "d"
    assert resumed.get("filter_pruning").plan.to_dict(resumed.get("filter_pruning").analysis) == \
        ctrl.get("filter_pruning").plan.to_dict(ctrl.get("filter_pruning").analysis)
    assert model.adapted == 0  # resuming never re-estimates statistics
    state["children"] = state["children"][:1]
    with pytest.raises(ConfigError, match=r"no state for \['quantization'\]"):
        create_compressed_model(DictFrontend(), Net(), config, state)


def test_algorithm_missing_in_frontend_is_named():
    class PruneOnly(DictFrontend):
        controllers = {"filter_pruning": Pruning}

    with pytest.raises(ConfigError, match="'quantization' is not available in the dict frontend"):
        create_compressed_model(PruneOnly(), Net(), _config(PRUNE, {"algorithm": "quantization"}))


def test_dry_run_plans_what_the_real_run_installs():
    net = Net(seed=3)
    dry = dry_run(DictFrontend(), net, _config(PRUNE), level=0.25)
    ctrl, _ = create_compressed_model(DictFrontend(), Net(seed=3), _config(PRUNE))
    ctrl.set_pruning_level(0.25)
    assert dry.plan.to_dict(dry.analysis) == ctrl.plan.to_dict(ctrl.analysis)
    assert dry.statistics().current_flops == ctrl.statistics().current_flops
    assert net.masks == {}  # the dry run put nothing on the model
