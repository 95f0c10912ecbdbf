"""The core workflow and composite controller, with a frontend over plain numpy weights."""

import numpy as np
import pytest

from filterprune.core.analysis import analyze
from filterprune.core.compression import (
    CompositeCompressionController,
    CompressionController,
    CompressionStage,
)
from filterprune.core.controller import PruningControllerBase, analysis_options
from filterprune.core.graph import Graph, LayerInfo, Node
from filterprune.core.workflow import Captured, Frontend, create_compressed_model, dry_run
from filterprune.errors import ConfigError


class Net:
    """x -> c1 (16 filters) -> c2 (8 filters) -> output; weights in a dict."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.weights = {"c1": rng.normal(size=(16, 3, 3, 3)), "c2": rng.normal(size=(8, 16, 3, 3))}
        self.masks = {}
        self.adapted = 0

    def graph(self):
        g = Graph()
        g.add(Node("x", "input", shape=(1, 3, 4, 4)))
        src = "x"
        for name, w in self.weights.items():
            roles = ("out", "in", None, None)
            g.layers[name] = LayerInfo(name, "conv", {"weight": (w.shape, roles)}, weight="weight")
            attrs = {"in_channels": w.shape[1], "out_channels": w.shape[0], "groups": 1,
                     "positions": 16}  # fmt: skip
            g.add(Node(name, "conv", [src], (1, w.shape[0], 4, 4), layer=name, attrs=attrs))
            src = name
        g.outputs = [src]
        return g


class Pruning(PruningControllerBase):
    def __init__(self, model, params, captured, frontend):
        self.model, self.captured, self.frontend = model, captured, frontend
        super().__init__(params, analyze(captured.graph, analysis_options(params)))

    def _weights(self):
        return self.frontend.read_weights(self.captured, self.analysis.state.producers)

    def _install(self, plan):
        super()._install(plan)
        self.model.masks = self.keeps()


class Counter(CompressionController):
    """A second algorithm: counts steps, adds a loss term, starts from data."""

    name = "quantization"

    def __init__(self, model, params, captured, frontend):
        self.model, self.captured, self.steps, self.initialized = model, captured, 0, None

    def initialize(self, data):
        self.initialized = data

    def loss(self):
        return 0.5

    def compression_stage(self):
        return CompressionStage.FULLY_COMPRESSED

    def get_compression_state(self):
        return {**super().get_compression_state(), "initialized": self.initialized}

    def load_state(self, state):
        self.initialized = state["initialized"]


class DictFrontend(Frontend):
    name = "dict"
    controllers = {"filter_pruning": Pruning, "quantization": Counter}

    def __init__(self, data=None):
        self.data = data

    def capture(self, model, config):
        return Captured(model.graph(), refs=dict(model.weights))

    def read_weights(self, captured, layers):
        return {name: captured.refs[name] for name in layers}

    def init_data(self, config):
        return self.data

    def adapt_batchnorm(self, model, data, num_samples):
        model.adapted = num_samples


def _config(*algos):
    return {"input_info": {"sample_size": [1, 3, 4, 4]}, "compression": list(algos)}


PRUNE = {"algorithm": "filter_pruning", "pruning_init": 0.5,
         "params": {"prune_first_conv": True, "filters_multiple_of": 1, "pruning_target": 0.5},
         "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 7}}}  # fmt: skip


def test_one_algorithm_gives_its_own_controller():
    ctrl, model = create_compressed_model(DictFrontend(), Net(), _config(PRUNE))
    assert isinstance(ctrl, Pruning)
    assert model.masks["c1"]["out"].sum() == 8


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
