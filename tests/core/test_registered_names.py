"""A schedule and an importance added with register_*() work through a JSON config, end to end.

The controller runs on a hand-built core graph with numpy weights, so no framework is needed.
"""

import json

import numpy as np
import pytest
from core_fixtures import registries  # noqa: F401 - fixture

import filterprune.core
from filterprune.core import schema
from filterprune.core.analysis import AnalysisOptions, analyze
from filterprune.core.config import Config, FilterPruningParams
from filterprune.core.controller import PruningControllerBase
from filterprune.core.graph import Graph, LayerInfo, Node
from filterprune.core.importance import list_importances, register_importance
from filterprune.core.schedule import LevelSchedule, list_schedules, register_schedule
from filterprune.errors import ConfigError

IMPORTANCE = "test_smallest_first"
SCHEDULE = "test_linear"

# Filter i of c1 holds the value i + 1 everywhere: L1 and L2 rank filter 7 highest.
WEIGHTS = {
    "c1": np.arange(1.0, 9.0)[:, None, None, None] * np.ones((8, 3, 3, 3)),
    "c2": np.ones((4, 8, 3, 3)),
}


@pytest.fixture
def custom(registries):
    """An importance that prefers small filters and a linear schedule, registered for one
    test (the ``registries`` fixture removes them afterwards)."""

    @register_importance(IMPORTANCE)
    def smallest_first(filters):
        return -np.abs(filters).sum(axis=1)

    @register_schedule(SCHEDULE)
    class Linear(LevelSchedule):
        def level(self, e):
            return min(self.init + (self.target - self.init) * e / (self.steps - 1), self.target)

    return Linear


def json_config(tmp_path, **params):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "input_info": {"sample_size": [1, 3, 4, 4]},
        "compression": [{"algorithm": "filter_pruning", "params": params}],
    }))  # fmt: skip
    return Config.from_json(path)


def conv(graph, name, src, cin, cout):
    roles = ("out", "in", None, None)
    graph.layers[name] = LayerInfo(name, "conv", {"weight": ((cout, cin, 3, 3), roles)},
                                   weight="weight")  # fmt: skip
    attrs = {"in_channels": cin, "out_channels": cout, "groups": 1, "positions": 16}
    graph.add(Node(name, "conv", [src], (1, cout, 4, 4), layer=name, attrs=attrs))


def two_convs():
    """x -> c1 (8 filters, prunable) -> c2 (4 filters, the model output)."""
    graph = Graph()
    graph.add(Node("x", "input", shape=(1, 3, 4, 4)))
    conv(graph, "c1", "x", 3, 8)
    conv(graph, "c2", "c1", 8, 4)
    graph.outputs = ["c2"]
    return graph


class NumpyController(PruningControllerBase):
    def _weights(self):
        return {name: WEIGHTS[name] for name in self.analysis.state.producers}


def test_json_config_accepts_registered_names(custom, tmp_path):
    config = json_config(tmp_path, filter_importance=IMPORTANCE, schedule=SCHEDULE)
    params = FilterPruningParams.from_config(config)
    assert (params.filter_importance, params.schedule) == (IMPORTANCE, SCHEDULE)


def test_controller_uses_registered_importance_and_schedule(custom, tmp_path):
    config = json_config(tmp_path, filter_importance=IMPORTANCE, schedule=SCHEDULE,
                         pruning_target=0.5, pruning_steps=3, filters_multiple_of=1,
                         prune_first_conv=True)  # fmt: skip
    params = FilterPruningParams.from_config(config)
    analysis = analyze(two_convs(), AnalysisOptions(prune_first_conv=params.prune_first_conv))
    ctrl = NumpyController(params, analysis)
    assert isinstance(ctrl.scheduler.schedule, custom)
    ctrl.start(None)
    levels, kept = [], []
    for _ in range(4):
        ctrl.scheduler.epoch_step()
        levels.append(ctrl.pruning_level)
        kept.append(np.flatnonzero(ctrl.keeps()["c1"]["out"]).tolist())
    # Linear: 0, 0.25, 0.5 over pruning_steps=3 (exponential would give 0.2929 at epoch 1).
    assert levels == [0.0, 0.25, 0.5, 0.5]
    # The smallest filters stay: L1 or L2 would keep [2..7] and then [4..7].
    assert kept == [list(range(8)), list(range(6)), list(range(4)), list(range(4))]
    assert ctrl.scheduler.frozen


def test_unknown_name_lists_registered_ones(custom, tmp_path):
    with pytest.raises(ConfigError, match=(
        r"^`compression\[0\]\.params\.filter_importance` must be one of 'L1', 'L2', "
        rf"'geometric_median', 'taylor', 'bn_scale', 'coupled_L2', '{IMPORTANCE}'\. "
        r"Received: filter_importance='test_smalest_first'"
        rf"\. Did you mean `{IMPORTANCE}`\? \(in config file '.*config\.json'\)$"
    )):  # fmt: skip
        json_config(tmp_path, filter_importance="test_smalest_first")
    with pytest.raises(ConfigError, match=rf"^`params\.schedule` must be one of .*'{SCHEDULE}'\. "
                       r"Received: schedule='test_lnear'\. Did you mean `test_linear`\?$"):
        FilterPruningParams(schedule="test_lnear")


def _enums(config_schema):
    entry = config_schema["properties"]["compression"]["items"]["allOf"][0]["then"]
    params = entry["properties"]["params"]["properties"]
    return params["schedule"]["enum"], params["filter_importance"]["enum"]


def test_schema_enums_equal_registries_after_registering(custom):
    assert SCHEDULE in list_schedules() and IMPORTANCE in list_importances()
    for built in (schema.CONFIG_SCHEMA, filterprune.core.CONFIG_SCHEMA, schema.config_schema()):
        assert _enums(built) == (list_schedules(), list_importances())
    assert list(schema.SCHEDULES) == list_schedules()
    assert list(schema.FILTER_IMPORTANCES) == list_importances()


def test_registrations_are_undone_between_tests():
    assert SCHEDULE not in list_schedules() and IMPORTANCE not in list_importances()
    assert _enums(schema.CONFIG_SCHEMA) == (list_schedules(), list_importances())
