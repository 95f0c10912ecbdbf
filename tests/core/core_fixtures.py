"""Shared fixtures and helpers of the core tests (imported by name: a second conftest.py
would clash with tests/torch/conftest.py when both folders run in one pytest process).

Besides the registry fixture: a frontend over plain numpy weights (:class:`DictFrontend`
running :class:`Net`), for tests of the core workflow without a framework.
"""

import numpy as np
import pytest

from filterprune.core import importance, schedule
from filterprune.core.analysis import analyze
from filterprune.core.compression import CompressionController, CompressionStage
from filterprune.core.controller import PruningControllerBase, analysis_options
from filterprune.core.graph import Graph, LayerInfo, Node
from filterprune.core.workflow import Captured, Frontend
from filterprune.errors import ConfigError


@pytest.fixture
def registries(monkeypatch):
    """Undo the schedules and importances a test registers, so names do not leak into
    other tests' messages and schemas."""
    monkeypatch.setattr(schedule, "_SCHEDULES", dict(schedule._SCHEDULES))
    monkeypatch.setattr(importance, "_IMPORTANCES", dict(importance._IMPORTANCES))


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
        if "initialized" not in state:  # as a real controller checks its own keys
            raise ConfigError(f"`{self.state_where}.initialized` must be set. "
                              f"Received: keys {sorted(state)}.")  # fmt: skip
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
