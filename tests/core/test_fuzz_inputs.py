"""Fuzzed configs and compression states either work or raise our error with a key path.

Property (issue 13, "beyond the list"): whatever JSON a user or a file hands in, the result
is a controller or a :class:`~filterprune.errors.FilterPruneError` whose message names the
key (in backquotes), never a ``KeyError``, ``TypeError`` or ``IndexError`` from inside.
Each case starts from a valid config or state and changes a few keys: set to any JSON
value (near the limits, of the wrong type, NaN), deleted, or an unknown key added.
Derandomized, so CI runs the same cases every time (about 15 s).
"""

import copy
import re

import numpy as np
from core_fixtures import PRUNE, DictFrontend, Net, _config
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from filterprune.core.config import Config
from filterprune.core.schema import algorithm_schema
from filterprune.core.workflow import create_compressed_model
from filterprune.errors import ConfigError, FilterPruneError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
KEY = re.compile(r"`[^`]+`")

# Values near every limit in the schema, of every JSON type, and strings the code knows.
EDGE = st.sampled_from([
    None, True, False, 0, 1, -1, 2, 7, 8, 513, 0.0, 0.5, 0.999999, 1.0, 1.5, -0.1,
    float("nan"), float("inf"), "", "c1", "c2", "C1", "{re}c.", "{re}(", "{re}c", "L2",
    "exponential", "baseline", "filter_pruning", "quantization", "composite",
    "Net/NNCFConv2d[c1]/conv2d_0", [], [1], ["c1"], [None], {}, {"a": 1}, [1, 3, 4, 4],
])  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=8,
)
VALUE = st.one_of(EDGE, EDGE, JSON)


def _schema_paths(schema, path=()):
    for key, sub in schema.get("properties", {}).items():
        yield (*path, key)
        if sub.get("type") == "object":
            yield from _schema_paths(sub, (*path, key))


def _config_paths():
    top = [("input_info",), ("input_info", "sample_size"), ("input_info", "type"),
           ("input_info", "filler"), ("input_info", "keyword"), ("compression",),
           ("target_device",), ("ignored_scopes",), ("target_scopes",), ("validate_scopes",),
           ("log_dir",), ("unknown_top_level",)]  # fmt: skip
    entries = [("compression", 0, *p) for p in _schema_paths(algorithm_schema("filter_pruning"))]
    entries += [("compression", 1, *p) for p in _schema_paths(algorithm_schema("quantization"))]
    return top + entries + [("compression", 0, "params", "typo_key"), ("compression", 2)]


CONFIG_PATHS = _config_paths()
BASE_CONFIG = _config(PRUNE, {"algorithm": "quantization"})


def _edit(tree, path, value, delete):
    """Set (or delete) ``path`` in ``tree``, making the containers it needs."""
    node = tree
    for key in path[:-1]:
        if isinstance(node, list):
            if not isinstance(key, int) or key >= len(node):
                return
            node = node[key]
        elif isinstance(node, dict):
            if not isinstance(node.get(key), dict | list):
                node[key] = {}
            node = node[key]
        else:
            return
    last = path[-1]
    if isinstance(node, dict):
        if delete:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int):
        if last < len(node):
            if delete:
                del node[last]
            else:
                node[last] = value
        elif not delete:
            node.append(value)


EDITS = st.lists(st.tuples(st.sampled_from(CONFIG_PATHS), VALUE, st.booleans()),
                 min_size=1, max_size=3)  # fmt: skip


def _is_ours(err: BaseException) -> bool:
    return isinstance(err, FilterPruneError) and KEY.search(str(err)) is not None


@FUZZ
@given(edits=EDITS)
def test_fuzzed_configs_work_or_raise_our_error(edits):
    data = copy.deepcopy(BASE_CONFIG)
    for path, value, delete in edits:
        _edit(data, path, value, delete)
    try:
        config = Config.from_dict(data)
    except Exception as err:  # noqa: BLE001 - the property under test
        assert _is_ours(err), f"{type(err).__name__}: {err}"
        event("refused by validation")
        return
    try:
        create_compressed_model(DictFrontend(data="d"), Net(), config)
        event("ran")
    except Exception as err:  # noqa: BLE001 - the property under test
        assert _is_ours(err), f"{type(err).__name__}: {err}"
        event("refused at creation")


def _state_paths(tree, path=()):
    yield path
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _state_paths(value, (*path, key))
        yield (*path, "unknown_key")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _state_paths(value, (*path, index))
        yield (*path, len(tree))


def _saved(config):
    ctrl, _ = create_compressed_model(DictFrontend(data="d"), Net(), config)
    ctrl.scheduler.epoch_step()
    return ctrl.get_compression_state()


SINGLE = _config(PRUNE)
STATES = {"pruning": (SINGLE, _saved(SINGLE)), "composite": (BASE_CONFIG, _saved(BASE_CONFIG))}
STATE_PATHS = {name: [p for p in _state_paths(state) if p] for name, (_, state) in STATES.items()}


@st.composite
def state_edits(draw):
    name = draw(st.sampled_from(sorted(STATES)))
    paths = st.sampled_from(STATE_PATHS[name])
    edits = draw(st.lists(st.tuples(paths, VALUE, st.booleans()), min_size=1, max_size=3))
    return name, edits


@FUZZ
@given(case=state_edits(), whole=st.one_of(st.none(), VALUE))
def test_fuzzed_states_work_or_raise_our_error(case, whole):
    name, edits = case
    config, good = STATES[name]
    state = copy.deepcopy(good)
    for path, value, delete in edits:
        _edit(state, path, value, delete)
    if whole is not None and edits[0][2]:  # now and then no state-like dict at all
        state = whole
    try:
        create_compressed_model(DictFrontend(data="d"), Net(), config, state)
        event("resumed")
    except Exception as err:  # noqa: BLE001 - the property under test
        assert _is_ours(err), f"{type(err).__name__}: {err}"
        assert "compression_state" in str(err)
        event("refused")


@FUZZ
@given(case=state_edits())
def test_a_refused_state_changes_nothing(case):
    name, edits = case
    config, good = STATES[name]
    ctrl, model = create_compressed_model(DictFrontend(data="d"), Net(), config)
    before = (ctrl.get_compression_state(), copy.deepcopy(model.masks))
    state = copy.deepcopy(good)
    for path, value, delete in edits:
        _edit(state, path, value, delete)
    try:
        ctrl.load_state(state)
    except ConfigError as err:
        assert _is_ours(err)
        assert ctrl.get_compression_state() == before[0]
        assert model.masks.keys() == before[1].keys()
        for layer, roles in before[1].items():
            assert all(np.array_equal(model.masks[layer][r], v) for r, v in roles.items())
