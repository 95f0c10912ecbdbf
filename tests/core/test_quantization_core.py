"""Quantizer placement, range math, statistics and state in the core (numpy only)."""

import numpy as np
import pytest

from filterprune.core import quantization
from filterprune.core.compression import CompressionStage
from filterprune.core.graph import Graph, LayerInfo, Node
from filterprune.core.params import QuantizationParams
from filterprune.core.quant_controller import QuantizationControllerBase
from filterprune.core.quantization import (
    QuantizerSettings,
    QuantizerSpec,
    QuantizerState,
    RangeCollector,
    place_quantizers,
    quant_limits,
    quant_params,
    settings_for,
    used_limits,
)
from filterprune.errors import ConfigError


def _params(**algo):
    return QuantizationParams.from_config({"input_info": {"sample_size": [1, 3, 8, 8]},
                                           "compression": {"algorithm": "quantization", **algo}})


def _conv(g, name, src, cin, cout, roles=("out", "in", None, None), axis=1):
    shape = tuple({"out": cout, "in": cin, None: 3}[r] for r in roles)
    params = {"weight": (shape, roles), "bias": ((cout,), ("out",))}
    g.layers[name] = LayerInfo(name, "conv", params, weight="weight")
    out = [1, 8, 8, 8]
    out[axis] = cout
    g.add(Node(name, "conv", [src], tuple(out), layer=name,
               attrs={"channel_axis": axis, "groups": 1}))  # fmt: skip


def _net():
    """x -> c1 -> bn -> relu -> (c2, c3) -> add(c2, c3) -> flatten -> fc; q @ k matmul."""
    g = Graph()
    g.add(Node("x", "input", shape=(1, 3, 8, 8)))
    _conv(g, "c1", "x", 3, 8)
    g.layers["bn"] = LayerInfo("bn", "batchnorm", {"weight": ((8,), ("channel",))})
    g.add(Node("bn", "batchnorm", ["c1"], (1, 8, 8, 8), layer="bn", attrs={"channel_axis": 1}))
    g.add(Node("relu", "identity", ["bn"], (1, 8, 8, 8), label="relu"))
    _conv(g, "c2", "relu", 8, 8)
    _conv(g, "c3", "relu", 8, 8)
    g.add(Node("add", "elementwise", ["c2", "c3"], (1, 8, 8, 8), label="add"))
    g.add(Node("flat", "reshape", ["add"], (1, 512), label="flatten"))
    g.layers["fc"] = LayerInfo("fc", "linear", {"weight": ((10, 512), ("out", "in"))},
                               weight="weight")  # fmt: skip
    g.add(Node("fc", "linear", ["flat"], (1, 10), layer="fc"))
    g.add(Node("w", "param", shape=(10, 10)))
    g.add(Node("scale", "elementwise", ["fc", "w"], (1, 10), label="add"))  # a bias, not residual
    g.add(Node("mm", "stop", ["fc", "scale"], (1, 10), label="matmul"))
    g.outputs = ["mm"]
    return g


def _by_key(specs):
    return {s.key: s for s in specs}


def test_placement_weights_per_out_axis_and_activations_deduplicated():
    specs = _by_key(place_quantizers(_net(), _params()))
    weights = [k for k in specs if k.startswith("weight:")]
    assert weights == ["weight:c1", "weight:c2", "weight:c3", "weight:fc"]
    assert specs["weight:c1"].channel_axis == 0 and specs["weight:c1"].num_channels == 8
    assert specs["weight:c1"].settings.per_channel
    acts = {k: s.consumers for k, s in specs.items() if k.startswith("activation:")}
    # relu feeds two convs: one quantizer; add operands; the matmul's two inputs; no bias add
    assert acts == {
        "activation:x": ("c1",), "activation:relu": ("c2", "c3"),
        "activation:c2": ("add",), "activation:c3": ("add",), "activation:flat": ("fc",),
        "activation:fc": ("mm",), "activation:scale": ("mm",),
    }  # fmt: skip
    assert specs["activation:relu"].channel_axis == 1
    assert specs["activation:c2"].channel_axis == 1  # from its producer
    assert specs["activation:flat"].channel_axis == 1  # linear reads the last axis
    assert specs["activation:scale"].channel_axis is None
    assert not specs["activation:x"].settings.per_channel


def test_placement_transposed_and_channels_last_weights():
    g = Graph()
    g.add(Node("x", "input", shape=(1, 8, 8, 3)))
    _conv(g, "k", "x", 3, 4, roles=(None, None, "in", "out"), axis=-1)  # Keras layout
    _conv(g, "t", "k", 4, 6, roles=("in", "out", None, None), axis=-1)  # transposed
    specs = _by_key(place_quantizers(g, _params()))
    assert specs["weight:k"].channel_axis == 3 and specs["weight:k"].num_channels == 4
    assert specs["weight:t"].channel_axis == 1 and specs["weight:t"].num_channels == 6
    assert specs["activation:k"].channel_axis == 3


def test_placement_scopes_per_group():
    specs = _by_key(place_quantizers(_net(), _params(ignored_scopes=["c2"])))
    assert "weight:c2" not in specs
    assert specs["activation:relu"].consumers == ("c3",)
    assert specs["activation:c2"].consumers == ("add",)  # scopes name the reading op
    specs = _by_key(place_quantizers(_net(), _params(weights={"ignored_scopes": ["{re}c.*"]})))
    assert [k for k in specs if k.startswith("weight:")] == ["weight:fc"]
    assert "activation:x" in specs
    specs = _by_key(place_quantizers(_net(), _params(activations={"target_scopes": ["fc"]})))
    assert [k for k in specs if k.startswith("activation:")] == ["activation:flat"]


def test_idle_layers_get_no_quantizer_and_are_listed_in_float():
    """A layer whose own forward never runs (the frontend finds it) reads no quantizer."""
    idle = {"c2": "its forward never runs"}
    specs = _by_key(place_quantizers(_net(), _params(), idle))
    assert "weight:c2" not in specs
    assert specs["activation:relu"].consumers == ("c3",)
    assert quantization.float_layers(_net(), idle) == [("c2", "its forward never runs")]


def test_per_channel_activations_fall_back_to_per_tensor_without_a_channel_axis():
    specs = _by_key(place_quantizers(_net(), _params(activations={"per_channel": True})))
    assert specs["activation:relu"].settings.per_channel
    assert specs["activation:relu"].num_channels == 8
    assert not specs["activation:scale"].settings.per_channel


def test_mixed_preset_makes_activations_asymmetric():
    params = _params()
    # `preset` and an unset `mode` are read with getattr / `or` until those keys land
    object.__setattr__(params, "preset", "mixed")
    assert settings_for(params)[1].mode == "symmetric"  # a mode that is given wins
    for group in (params.weights, params.activations):
        object.__setattr__(group, "mode", None)
    w, a = settings_for(params)
    assert (w.mode, a.mode) == ("symmetric", "asymmetric")
    object.__setattr__(params, "preset", "performance")
    assert settings_for(params)[1].mode == "symmetric"
    assert settings_for(_params(activations={"mode": "asymmetric"}))[1].mode == "asymmetric"


def test_limits():
    assert quant_limits(8, True) == (-128, 127)
    assert quant_limits(8, False) == (0, 255)
    assert quant_limits(4, True) == (-8, 7)


def test_symmetric_signed_and_unsigned():
    s = quant_params(-0.5, 2.54, QuantizerSettings())
    assert (s.quant_min, s.quant_max, s.signed) == (-128, 127, True)
    assert s.scale == pytest.approx(0.02) and s.zero_point == 0 and s.scale.shape == ()
    u = quant_params(0.0, 2.55, QuantizerSettings())
    assert (u.quant_min, u.quant_max) == (0, 255) and u.scale == pytest.approx(0.01)
    forced = quant_params(0.0, 2.54, QuantizerSettings(signed=True))
    assert forced.quant_min == -128 and forced.scale == pytest.approx(0.02)


def test_unsigned_asked_of_negative_values_falls_back_to_signed(caplog):
    caplog.set_level("WARNING", logger="filterprune")  # a CLI test may raise it
    from filterprune.core.quantization import QuantizerSpec, warn_signed

    unsigned = QuantizerSettings(signed=False)
    assert quant_params(0.0, 2.55, unsigned).quant_min == 0  # what was asked, where it fits
    s = quant_params(-0.5, 2.54, unsigned)  # 0 would clip every negative value to 0
    assert (s.quant_min, s.quant_max) == (-128, 127) and s.scale == pytest.approx(0.02)
    spec = QuantizerSpec("activation", "relu6_neg", unsigned)
    said = set()
    warn_signed(spec, s, said)
    warn_signed(spec, s, said)
    assert caplog.text.count("`activations.signed` is false, but activation:relu6_neg") == 1


def test_asymmetric_holds_zero_exactly():
    st = quant_params(-1.0, 3.0, QuantizerSettings(mode="asymmetric"))
    assert (st.quant_min, st.quant_max) == (-128, 127)
    assert st.scale == pytest.approx(4.0 / 255)
    low, high = st.range()
    step = float(st.scale)
    assert low == pytest.approx(-1.0, abs=step) and high == pytest.approx(3.0, abs=step)
    pos = quant_params(0.5, 3.0, QuantizerSettings(mode="asymmetric"))  # widened to hold 0
    assert (pos.quant_min, pos.zero_point) == (0, 0) and pos.scale == pytest.approx(3.0 / 255)


def test_half_range_spreads_the_range_over_half_the_integers():
    half = QuantizerSettings(half_range=True)
    assert used_limits(half, True) == (-64, 63) and used_limits(half, False) == (0, 127)
    assert used_limits(QuantizerSettings(), True) == (-128, 127)
    s = quant_params(-0.5, 1.26, half)
    assert (s.quant_min, s.quant_max) == (-128, 127)  # the clamp stays the full range
    assert s.scale == pytest.approx(0.02)  # 1.26 -> 63
    u = quant_params(0.0, 1.27, half)
    assert u.scale == pytest.approx(0.01) and u.quant_max == 255  # 1.27 -> 127
    a = quant_params(-1.0, 3.0, QuantizerSettings(mode="asymmetric", half_range=True))
    assert a.scale == pytest.approx(4.0 / 127)
    ints = np.round(np.array([-1.0, 3.0]) / a.scale) + a.zero_point
    assert ints.min() >= -64 and ints.max() <= 63


@pytest.mark.parametrize("fix, halves", [("enable", [True] * 4),
                                         ("first_layer_only", [True, False, False, False]),
                                         ("disable", [False] * 4)])  # fmt: skip
def test_overflow_fix_halves_weight_ranges(fix, halves):
    specs = place_quantizers(_net(), _params(overflow_fix=fix))
    assert [s.settings.half_range for s in specs if s.kind == "weight"] == halves
    assert not any(s.settings.half_range for s in specs if s.kind == "activation")


def test_overflow_fix_defaults_to_disable_and_rejects_other_values():
    assert _params().overflow_fix == "disable"
    with pytest.raises(ConfigError, match="overflow_fix"):
        _params(overflow_fix="on")


def test_dead_channels_get_a_safe_scale_and_do_not_poison():
    rc = RangeCollector("min_max", per_channel=True, channel_axis=0)
    w = np.stack([np.linspace(-1, 1, 9), np.zeros(9), np.linspace(-3, 0.5, 9)])
    rc.update(w)
    st = quant_params(*rc.range(), QuantizerSettings(per_channel=True), signed=True)
    np.testing.assert_allclose(st.scale * 127, [1.0, 3.0, 3.0])
    assert (st.scale > 0).all()
    everything_dead = quant_params(np.zeros(3), np.zeros(3), QuantizerSettings(per_channel=True))
    np.testing.assert_allclose(everything_dead.scale, 1 / 127)


def test_per_tensor_range_leaves_out_dead_channels():
    x = np.zeros((4, 3, 5, 5), np.float32)
    x[:, 0] = np.random.default_rng(0).uniform(2.0, 3.0, (4, 5, 5))
    x[:, 2] = 2.5
    known = RangeCollector("percentile", channel_axis=1, min_percentile=1, max_percentile=99)
    unknown = RangeCollector("percentile", min_percentile=1, max_percentile=99)
    known.update(x)
    unknown.update(x)
    assert known.range()[0] > 1.9  # the pruned channel's zeros are not part of the range
    assert unknown.range()[0] == 0.0


def test_range_types_over_batches():
    batches = [np.array([-1.0, 2.0]), np.array([-3.0, 4.0])]
    got = {}
    for kind in ("min_max", "mean_min_max", "percentile", "mean_percentile"):
        rc = RangeCollector(kind, min_percentile=0, max_percentile=100)
        for b in batches:
            rc.update(b)
            rc.end_batch()
        got[kind] = tuple(float(v) for v in rc.range())
    assert got == {"min_max": (-3, 4), "mean_min_max": (-2, 3), "percentile": (-3, 4),
                   "mean_percentile": (-2, 3)}  # fmt: skip
    # two tensors of one batch (a layer called twice): one range over both, then averaged
    rc = RangeCollector("mean_min_max")
    for big, small in ((np.array([-10.0, 10.0]), np.array([-1.0, 1.0])),
                       (np.array([-30.0, 30.0]), np.array([-1.0, 1.0]))):  # fmt: skip
        rc.update(big)
        rc.update(small)
        rc.end_batch()
    assert tuple(float(v) for v in rc.range()) == (-20.0, 20.0)
    assert RangeCollector().range() is None
    with pytest.raises(ValueError, match="`channel_axis` must be given"):
        RangeCollector(per_channel=True)


def test_state_round_trips_through_json_types():
    st = quant_params([-1.0, -2.0], [1.0, 0.5], QuantizerSettings(per_channel=True))
    back = QuantizerState.from_dict(st.to_dict())
    np.testing.assert_array_equal(back.scale, st.scale)
    assert back.scale.dtype == np.float32 and back.zero_point.dtype == np.int32
    assert (back.quant_min, back.quant_max, back.initialized) == (-128, 127, True)
    empty = QuantizerState.empty(QuantizerSettings(per_channel=True), 4)
    assert empty.scale.shape == (4,) and not empty.initialized


class DictQuantization(QuantizationControllerBase):
    """Quantizer states held in a dict: the two frontend hooks."""

    def __init__(self, params, graph):
        super().__init__(params, graph)
        self.states = {s.key: QuantizerState.empty(s.settings, s.num_channels)
                       for s in self.specs}  # fmt: skip

    def quantizer_states(self):
        return dict(self.states)

    def set_quantizer_states(self, states):
        self.states.update(states)


def test_base_controller_stage_statistics_and_state():
    ctrl = DictQuantization(_params(), _net())
    assert ctrl.compression_stage() == CompressionStage.UNCOMPRESSED
    spec = ctrl.specs[0]
    w = np.random.default_rng(0).normal(size=(8, 3, 3, 3))
    w[2] = 0.0  # a pruned filter
    ctrl.set_quantizer_states({spec.key: ctrl.weight_state(spec, w)})
    assert ctrl.compression_stage() == CompressionStage.PARTIALLY_COMPRESSED
    stats = ctrl.statistics()
    assert (stats.num_weight_quantizers, stats.num_activation_quantizers) == (4, 7)
    assert stats.num_initialized == 1 and not stats.ranges_initialized
    text = str(stats)
    assert "weight:c1" in text and "not initialised" in text and "ranges initialised" in text
    assert stats.to_dict()["num_quantizers"] == 11
    state = ctrl.get_compression_state()
    other = DictQuantization(_params(), _net())
    other.load_state(state)
    np.testing.assert_array_equal(other.states[spec.key].scale, ctrl.states[spec.key].scale)
    for key in ctrl.states:
        ctrl.states[key].initialized = True
    assert ctrl.compression_stage() == CompressionStage.FULLY_COMPRESSED


def test_base_controller_rejects_foreign_state_and_missing_data():
    ctrl = DictQuantization(_params(), _net())
    with pytest.raises(ConfigError, match="quantization controller. Received: \\['algorithm'"):
        ctrl.load_state({"algorithm": "filter_pruning"})
    state = DictQuantization(_params(ignored_scopes=["c2"]), _net()).get_compression_state()
    with pytest.raises(ConfigError, match=r"missing \['weight:c2'\]"):
        ctrl.load_state(state)
    with pytest.raises(ConfigError, match="register_default_init_args.*num_init_samples=256"):
        ctrl.check_init_data(None)
    lazy = DictQuantization(_params(initializer={"range": {"num_init_samples": 0}}), _net())
    assert lazy.check_init_data(None) is False
    assert ctrl.check_init_data([np.zeros(1)]) is True


def test_collected_states_from_collectors():
    ctrl = DictQuantization(_params(initializer={"range": {"type": "min_max"}}), _net())
    spec = next(s for s in ctrl.specs if s.key == "activation:relu")
    rc = ctrl.range_collector(spec)
    rc.update(np.abs(np.random.default_rng(0).normal(size=(2, 8, 4, 4))))
    states = ctrl.collected_states({spec.key: rc, "activation:x": ctrl.range_collector(spec)})
    assert list(states) == [spec.key]  # a tensor never seen stays uninitialised
    assert states[spec.key].quant_min == 0  # ReLU output: unsigned
    assert isinstance(spec, QuantizerSpec)


@pytest.mark.parametrize("per_channel", [False, True])
def test_percentiles_are_taken_over_all_values_whatever_the_batch_size(per_channel, monkeypatch):
    """As NNCF's ``percentile``: the batch size does not narrow the range (a mean of each
    batch's percentiles, ``mean_percentile``, does). Past the sample size, every other
    value is dropped and later batches are read at twice the stride: an even sample."""
    x = np.random.default_rng(0).standard_t(3, (16, 4, 6, 6)).astype(np.float32)
    exact = np.percentile(np.moveaxis(x, 1, 0).reshape(4, -1), [1, 99], axis=1)
    if not per_channel:
        exact = np.percentile(x, [1, 99])
    for size in (1, 4, 16):
        rc = RangeCollector("percentile", per_channel, 1, min_percentile=1, max_percentile=99)
        for i in range(0, 16, size):
            rc.update(x[i : i + size])
            rc.end_batch()
        np.testing.assert_allclose(rc.range(), exact, rtol=1e-6)
    monkeypatch.setattr(quantization, "_PERCENTILE_SAMPLE", 2000)  # of 2,304 values
    rc = RangeCollector("percentile", per_channel, 1, min_percentile=1, max_percentile=99)
    u = np.random.default_rng(1).uniform(-1, 1, x.shape).astype(np.float32)
    for i in range(16):
        rc.update(u[i : i + 1])
    assert rc._values.count <= 2000 and rc._values.stride == 2
    np.testing.assert_allclose(np.abs(rc.range()), 0.98, rtol=0.06)  # of 288 values a channel
