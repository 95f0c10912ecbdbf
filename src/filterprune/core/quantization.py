"""Quantization, framework-free: where quantizers go, their ranges, their statistics.

A frontend inserts fake-quant ops where :func:`place_quantizers` says, on the same core
graph that filter pruning analyses: one weight quantizer per conv/linear layer (per
channel along the weight's ``"out"`` axis), and one activation quantizer per distinct
tensor that an int8 runtime reads as int8: the inputs of conv/linear/matmul, and both
operands of a residual add (without them ONNX Runtime runs the conv before the add, and
the add itself, in float).

Ranges come from :class:`RangeCollector` (``min_max``, ``mean_min_max``, ``percentile``,
``mean_percentile``)
and become ``(scale, zero_point)`` with :func:`quant_params`. A channel whose range is
zero, such as a pruned filter, is left out of per-tensor ranges and gets a safe positive
scale of its own.

Example:
    >>> rc = RangeCollector("min_max", per_channel=True, channel_axis=0)
    >>> rc.update(np.array([[-1.0, 0.5], [0.0, 0.0], [0.2, 2.0]]))
    >>> state = quant_params(*rc.range(), QuantizerSettings(per_channel=True), signed=True)
    >>> state.scale * 127  # channel 1 is dead: it borrows the widest live range
    array([1., 2., 2.], dtype=float32)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .graph import Graph, LayerInfo, Node
from .scopes import ScopeMatcher

__all__ = [
    "float_layers",
    "QuantizerSettings",
    "QuantizerSpec",
    "QuantizerState",
    "RangeCollector",
    "QuantizerStat",
    "QuantizationStatistics",
    "settings_for",
    "place_quantizers",
    "quantized_inputs",
    "quant_limits",
    "used_limits",
    "quant_params",
    "tensor_range",
    "collect_quantization_statistics",
]

log = logging.getLogger("filterprune")

LAYER_KINDS = ("conv", "linear")
_MATMUL_LABELS = {"matmul", "bmm", "__matmul__"}
_ADD_LABELS = {"add", "iadd", "add_", "__add__", "__iadd__"}
# above this many values percentiles are taken on an even subsample
_PERCENTILE_SAMPLE = 1 << 22
_TINY = 1e-12


@dataclass(frozen=True)
class QuantizerSettings:
    """How one quantizer rounds: bit width, mode, sign and granularity.

    Attributes:
        bits: Bit width (2-8).
        mode: ``"symmetric"`` (zero point 0) or ``"asymmetric"``.
        signed: Integer range with negatives; ``None`` decides from the range (a
            tensor with negative values is signed); ``False`` over negative values falls
            back to signed, as in NNCF.
        per_channel: One scale per channel instead of one per tensor.
        half_range: The range is set so the values use half the integers (-64..63 or
            0..127 at 8 bits); the clamp stays the full range. x86 int8 kernels without
            VNNI add pairs of u8 x s8 products in 16 bits, which saturate beyond that
            (2 * 255 * 64 fits, 2 * 255 * 128 does not), so a weight quantized this way
            gives the same result on every CPU. ``overflow_fix`` sets it on weights.
    """

    bits: int = 8
    mode: str = "symmetric"
    signed: bool | None = None
    per_channel: bool = False
    half_range: bool = False


def settings_for(params: Any) -> tuple[QuantizerSettings, QuantizerSettings]:
    """``(weights, activations)`` settings of resolved ``quantization`` params.

    A group without a ``mode`` takes its preset's: symmetric, except activations under
    ``preset: "mixed"`` (asymmetric).
    """
    w, a = params.weights, params.activations
    mixed = getattr(params, "preset", None) == "mixed"
    return (
        QuantizerSettings(w.bits, w.mode or "symmetric", getattr(w, "signed", None),
                          w.per_channel),  # fmt: skip
        QuantizerSettings(a.bits, a.mode or ("asymmetric" if mixed else "symmetric"),
                          getattr(a, "signed", None), a.per_channel),  # fmt: skip
    )


@dataclass(frozen=True)
class QuantizerSpec:
    """One quantizer to insert.

    Attributes:
        kind: ``"weight"`` or ``"activation"``.
        target: The layer whose weight is quantized, or the node producing the tensor.
        settings: How it rounds.
        consumers: Nodes that read the quantized tensor (activations).
        channel_axis: The weight's ``"out"`` axis, or the tensor's channel axis where a
            consumer or producer tells it (``None`` when unknown).
        num_channels: Size of ``channel_axis``.
    """

    kind: str
    target: str
    settings: QuantizerSettings
    consumers: tuple[str, ...] = ()
    channel_axis: int | None = None
    num_channels: int | None = None

    @property
    def key(self) -> str:
        """Unique name: ``weight:<layer>`` or ``activation:<node>``."""
        return f"{self.kind}:{self.target}"


# -- placement ----------------------------------------------------------------------------
def _computed(graph: Graph, name: str) -> bool:
    node = graph[name]
    return node.op not in ("param", "noop") and isinstance(node.shape, tuple)


def _layer(graph: Graph, node: Node) -> LayerInfo | None:
    info = graph.layers.get(node.layer) if node.layer else None
    return info if info is not None and info.kind in LAYER_KINDS else None


def quantized_inputs(graph: Graph, node: Node) -> list[str]:
    """The inputs of ``node`` an int8 runtime wants quantized (none for most ops)."""
    computed = [i for i in node.inputs if _computed(graph, i)]
    if _layer(graph, node) is not None:
        return computed[:1]
    label = node.label.lower()
    if label in _MATMUL_LABELS:
        return computed
    if node.op == "elementwise" and label in _ADD_LABELS and len(computed) >= 2:
        return computed
    return []


def _weight_spec(info: LayerInfo, settings: QuantizerSettings) -> QuantizerSpec | None:
    if info.weight is None or info.weight not in info.params:
        return None
    shape, roles = info.params[info.weight]
    if "out" not in roles and _one_filter_per_input(shape, roles, info.groups):
        roles = tuple("out" if r == "in" else r for r in roles)  # Keras depthwise kernels
    if "out" not in roles or info.transposed and info.groups > 1:
        # a grouped transposed conv's "out" axis is per group: no axis holds every filter
        return QuantizerSpec("weight", info.name, _per_tensor(settings))
    axis = roles.index("out")
    return QuantizerSpec("weight", info.name, settings, channel_axis=axis,
                         num_channels=int(shape[axis]))  # fmt: skip


def _one_filter_per_input(shape: tuple, roles: tuple, groups: int) -> bool:
    """A depthwise kernel laid out ``(..., in, multiplier)`` with multiplier 1: its "in"
    axis holds every filter."""
    if "in" not in roles or groups <= 1:
        return False
    axis = roles.index("in")
    return int(shape[axis]) == groups and math.prod(shape[axis + 1:]) == 1


def _per_tensor(settings: QuantizerSettings) -> QuantizerSettings:
    return replace(settings, per_channel=False)


def _axis_of(graph: Graph, node: Node, rank: int) -> int | None:
    """The channel axis a conv/linear/batchnorm node reads or writes."""
    info = graph.layers.get(node.layer) if node.layer else None
    kind = info.kind if info is not None else node.op
    if kind in ("conv", "batchnorm"):
        return int(node.attrs.get("channel_axis", 1)) % rank
    if kind == "linear":
        return rank - 1
    return None


def _activation_spec(graph: Graph, tensor: str, consumers: list[str],
                     settings: QuantizerSettings) -> QuantizerSpec:  # fmt: skip
    shape = graph[tensor].shape
    axis = None
    for name in [*consumers, tensor]:
        axis = _axis_of(graph, graph[name], len(shape)) if shape else None
        if axis is not None:
            break
    if settings.per_channel and axis is None:  # an add of two functional results, say
        log.info("activation:%s is quantized per tensor: its channel axis is unknown", tensor)
        settings = _per_tensor(settings)
    return QuantizerSpec("activation", tensor, settings, tuple(consumers), axis,
                         int(shape[axis]) if axis is not None else None)  # fmt: skip


def place_quantizers(graph: Graph, params: Any,
                     idle: Mapping[str, str] | None = None) -> list[QuantizerSpec]:  # fmt: skip
    """Weight and activation quantizers for ``graph`` under ``quantization`` params.

    ``overflow_fix`` gives weight quantizers ``half_range``: every one (``enable``), the
    first in graph order (``first_layer_only``) or none (``disable``).

    Scopes apply per group: a layer in the weights' ignored scopes keeps a float weight;
    a tensor gets an activation quantizer when at least one consumer that needs it is
    allowed by the activations' scopes (a layer by its name, a functional op by its
    node name).

    ``idle`` layers (layer -> why) get none: the frontend found that their own forward,
    which would apply a quantizer, never runs (another module reads their weight).

    Returns:
        Weight quantizers in layer order, then activation quantizers in graph order.
    """
    idle = idle or {}
    w_settings, a_settings = settings_for(params)
    fix = params.overflow_fix
    types = graph.scope_types
    w_scope = ScopeMatcher(params.weights.ignored_scopes, params.weights.target_scopes, types)
    a_scope = ScopeMatcher(params.activations.ignored_scopes, params.activations.target_scopes,
                           types)  # fmt: skip
    weights: dict[str, QuantizerSpec] = {}
    readers: dict[str, list[str]] = {}
    for node in graph:
        info = _layer(graph, node)
        if info is not None and info.name in idle:
            continue
        if info is not None and info.name not in weights and w_scope.allows(info.name):
            half = fix == "enable" or (fix == "first_layer_only" and not weights)
            spec = _weight_spec(info, replace(w_settings, half_range=half))
            if spec is not None:
                weights[info.name] = spec
        if not a_scope.allows(node.layer or node.name):
            continue
        for tensor in quantized_inputs(graph, node):
            readers.setdefault(tensor, [])
            if node.name not in readers[tensor]:
                readers[tensor].append(node.name)
    order = {name: i for i, name in enumerate(graph.nodes)}
    acts = [_activation_spec(graph, t, c, a_settings)
            for t, c in sorted(readers.items(), key=lambda kv: order[kv[0]])]  # fmt: skip
    return [*weights.values(), *acts]


def float_layers(graph: Graph, idle: Mapping[str, str] | None = None,
                 params: Any = None) -> list[tuple[str, str]]:  # fmt: skip
    """``(layer, reason)`` for each layer whose matrices stay float: one the frontend
    cannot see into (a custom Keras layer, attention), a recurrent one, an ``idle``
    one (see :func:`place_quantizers`), or, given the quantization ``params``, one their
    weights' scopes leave out, so no quantizer is placed in it."""
    idle = idle or {}
    reasons = {n.layer: n.attrs.get("reason", "") for n in graph if n.op == "stop" and n.layer}
    reasons.update({n.layer: "a recurrent layer" for n in graph if n.op == "recurrent"})
    reasons.update(idle)
    out = [(name, reasons.get(name) or "no channel rule for it")
           for name, info in graph.layers.items()
           if (info.kind in ("opaque", "recurrent") or name in idle)
           and any(len(shape) > 1 for shape, _ in info.params.values())]
    if params is not None:
        scope = ScopeMatcher(params.weights.ignored_scopes, params.weights.target_scopes,
                             graph.scope_types)  # fmt: skip
        out += [(name, why) for name, info in graph.layers.items()
                if info.kind in LAYER_KINDS and name not in idle
                and (why := scope.reason(name)) is not None]  # fmt: skip
    return out


# -- range math -----------------------------------------------------------------------------
def quant_limits(bits: int, signed: bool) -> tuple[int, int]:
    """The integer range of ``bits``: ``(-2**(b-1), 2**(b-1)-1)`` or ``(0, 2**b-1)``."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def used_limits(settings: QuantizerSettings, signed: bool) -> tuple[int, int]:
    """The integers a range is spread over: :func:`quant_limits`, halved with
    ``half_range`` (``(-64, 63)`` or ``(0, 127)`` at 8 bits)."""
    qmin, qmax = quant_limits(settings.bits, signed)
    return (qmin >> 1, qmax >> 1) if settings.half_range else (qmin, qmax)


@dataclass
class QuantizerState:
    """A quantizer's parameters: ``q = clamp(round(x / scale) + zero_point, min, max)``.

    Attributes:
        scale: float32, one per channel (1-d) or per tensor (0-d).
        zero_point: int32, same shape as ``scale``.
        quant_min, quant_max: The integer range.
        initialized: False until a range was set; an uninitialised quantizer passes
            values through.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    quant_min: int
    quant_max: int
    initialized: bool = False

    @property
    def signed(self) -> bool:
        return self.quant_min < 0

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        """The float interval the integers cover, per channel or per tensor."""
        zp = self.zero_point.astype(np.float64)
        return self.scale * (self.quant_min - zp), self.scale * (self.quant_max - zp)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale.tolist(), "zero_point": self.zero_point.tolist(),
            "quant_min": self.quant_min, "quant_max": self.quant_max,
            "initialized": self.initialized,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantizerState:
        return cls(np.asarray(data["scale"], np.float32), np.asarray(data["zero_point"], np.int32),
                   int(data["quant_min"]), int(data["quant_max"]), bool(data["initialized"]))

    @classmethod
    def empty(cls, settings: QuantizerSettings, channels: int | None) -> QuantizerState:
        """Scale 1, zero point 0, not initialised."""
        shape = (channels,) if settings.per_channel and channels else ()
        lo, hi = quant_limits(settings.bits, settings.signed is not False)
        return cls(np.ones(shape, np.float32), np.zeros(shape, np.int32), lo, hi)


def _fill_dead(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-width channels (pruned filters) take the widest live range, or [-1, 1]."""
    dead = (high - low) <= _TINY
    if not dead.any():
        return low, high
    if dead.all():
        return np.where(dead, -1.0, low), np.where(dead, 1.0, high)
    return np.where(dead, low[~dead].min(), low), np.where(dead, high[~dead].max(), high)


def warn_signed(spec: QuantizerSpec, state: QuantizerState, said: set[str] | None = None,
                ) -> None:  # fmt: skip
    """Say that ``signed: false`` met negative values (quantized signed instead: unsigned
    would clip every negative value to 0); once per key in ``said``, where given."""
    if spec.settings.signed is not False or not state.signed:
        return
    if said is not None:
        if spec.key in said:
            return
        said.add(spec.key)
    group = "weights" if spec.kind == "weight" else "activations"
    log.warning("quantization: `%s.signed` is false, but %s has negative values: it is "
                "quantized signed (unsigned would clip them to 0).", group, spec.key)


def quant_params(low: Any, high: Any, settings: QuantizerSettings,
                 signed: bool | None = None) -> QuantizerState:  # fmt: skip
    """``(scale, zero_point)`` covering ``[low, high]`` (per channel or per tensor).

    The range is widened to hold 0, so zero (padding, ReLU, a pruned channel) is exact.
    Symmetric signed maps ``max(|low|, high)`` to ``2**(b-1)-1`` (the most negative integer
    is then never produced from values in range); symmetric unsigned maps ``high`` to
    ``2**b-1``; asymmetric spreads ``[low, high]`` over every integer. With
    ``half_range`` the same holds for half the integers (:func:`used_limits`).

    Args:
        low, high: Range ends, scalars or one per channel.
        settings: Bits and mode.
        signed: Overrides ``settings.signed``; when it is ``None``, signed when
            ``settings.signed`` is true or ``low < 0`` (``signed: false`` cannot hold
            negatives: the range falls back to signed, :func:`warn_signed` says so).

    Returns:
        An initialised :class:`QuantizerState`.
    """
    low = np.minimum(np.asarray(low, np.float64), 0.0)
    high = np.maximum(np.asarray(high, np.float64), 0.0)
    low, high = _fill_dead(low.reshape(-1), high.reshape(-1))
    if signed is None:  # unsigned asked of a tensor with negatives: signed, as NNCF did
        signed = bool(settings.signed) or bool((low < 0).any())
    qmin, qmax = quant_limits(settings.bits, signed)
    lo, hi = used_limits(settings, signed)
    if settings.mode == "symmetric":
        scale = (np.maximum(-low, high) if signed else high) / hi
        zero_point = np.zeros_like(scale)
    else:
        scale = (high - low) / (hi - lo)
        zero_point = np.clip(lo + np.round(-low / scale), lo, hi)
    # an unsigned symmetric range over negatives only: every value rounds to 0 anyway
    scale = np.where(scale > _TINY, scale, 1.0)
    shape = () if not settings.per_channel else scale.shape
    return QuantizerState(scale.astype(np.float32).reshape(shape),
                          zero_point.astype(np.int32).reshape(shape), qmin, qmax, True)  # fmt: skip


class RangeCollector:
    """Accumulates the range of a tensor over batches.

    Args:
        range_type: ``min_max`` (extremes over all batches), ``mean_min_max`` (mean of
            each batch's extremes), ``percentile`` (percentiles of all values seen, so
            the batch size does not change them) or ``mean_percentile`` (mean of each
            batch's percentiles).
        per_channel: One range per channel along ``channel_axis``.
        channel_axis: The channel axis; where given, channels that are all zero in a
            batch (pruned) are left out of a per-tensor range.
        min_percentile, max_percentile: Percentiles in [0, 100] for the percentile types.
    """

    def __init__(self, range_type: str = "min_max", per_channel: bool = False,
                 channel_axis: int | None = None, min_percentile: float = 0.1,
                 max_percentile: float = 99.9) -> None:  # fmt: skip
        if per_channel and channel_axis is None:
            raise ValueError("`channel_axis` must be given for a per-channel range. "
                             "Received: channel_axis=None.")  # fmt: skip
        self.range_type = range_type
        self.per_channel = per_channel
        self.channel_axis = channel_axis
        self.percentiles = (min_percentile, max_percentile)
        self.batches = 0  # live batches
        self.zeros: tuple[np.ndarray, np.ndarray] | None = None  # the range of only zeros
        self._low: np.ndarray | None = None
        self._high: np.ndarray | None = None
        self._pending: tuple[np.ndarray, np.ndarray] | None = None
        self._values = _Values()

    def update(self, x: np.ndarray) -> None:
        """Add a tensor of the current batch (any shape; the channel axis as given).
        Tensors met in one batch (a layer called twice shares one quantizer) count as
        one range over them all, once :meth:`end_batch` closes the batch."""
        rows = self._rows(np.asarray(x, np.float32))
        if rows.size and self.zeros is None:
            zero = np.zeros(rows.shape[0] if self.per_channel else ())
            self.zeros = zero, zero
        rows = self._live(rows)
        if rows is None:
            return
        if self.range_type == "percentile":
            self._values.add(rows)
            return
        low, high = self._batch_range(rows)
        if self._pending is not None:
            low = np.minimum(self._pending[0], low)
            high = np.maximum(self._pending[1], high)
        self._pending = low, high

    def end_batch(self) -> None:
        """Close the current batch: its range joins the running range."""
        if self._pending is None:
            return
        (low, high), self._pending = self._pending, None
        if self._low is None:
            self._low, self._high = low, high
        elif self.range_type == "min_max":
            self._low, self._high = np.minimum(self._low, low), np.maximum(self._high, high)
        else:  # running sums, divided in range()
            self._low, self._high = self._low + low, self._high + high
        self.batches += 1

    def range(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(low, high)``, 0-d or per channel; ``None`` before any live batch."""
        if self.range_type == "percentile":
            return self._percentiles(self._values.all()) if self._values.parts else None
        self.end_batch()
        if self._low is None:
            return None
        if self.range_type == "min_max":
            return self._low, self._high
        return self._low / self.batches, self._high / self.batches

    def _rows(self, x: np.ndarray) -> np.ndarray:
        if self.channel_axis is None or x.ndim == 0:
            return x.reshape(1, -1)
        return np.moveaxis(x, self.channel_axis, 0).reshape(x.shape[self.channel_axis], -1)

    def _live(self, rows: np.ndarray) -> np.ndarray | None:
        """One row per channel, or one row of the live channels' values per tensor."""
        if rows.size == 0:
            return None
        if not self.per_channel:
            live = rows[(rows != 0).any(axis=1)] if self.channel_axis is not None else rows
            if live.size == 0:
                return None
            rows = live.reshape(1, -1)
        return rows

    def _batch_range(self, rows: np.ndarray) -> tuple[Any, Any]:
        if self.range_type == "mean_percentile":
            return self._percentiles(rows[:, :: -(-rows.size // _PERCENTILE_SAMPLE)])
        low, high = rows.min(axis=1), rows.max(axis=1)
        return self._shaped(low, high)

    def _percentiles(self, rows: np.ndarray) -> tuple[Any, Any]:
        low, high = np.percentile(rows, self.percentiles, axis=1)
        return self._shaped(low, high)

    def _shaped(self, low: np.ndarray, high: np.ndarray) -> tuple[Any, Any]:
        low, high = low.astype(np.float64), high.astype(np.float64)
        return (low, high) if self.per_channel else (low[0], high[0])


class _Values:
    """Values of every batch, one row per channel: past ``_PERCENTILE_SAMPLE`` in all,
    every other one is dropped and later batches are taken at the doubled stride, so the
    kept ones stay an even sample of all of them."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.count = 0
        self.stride = 1

    def add(self, rows: np.ndarray) -> None:
        rows = rows[:, :: self.stride]
        self.parts.append(rows)
        self.count += rows.size
        while self.count > _PERCENTILE_SAMPLE and self.parts[0].shape[1] > 1:
            kept = self.all()[:, ::2]
            self.parts, self.count, self.stride = [kept], kept.size, self.stride * 2

    def all(self) -> np.ndarray:
        return np.concatenate(self.parts, axis=1)


def tensor_range(x: np.ndarray, spec: QuantizerSpec) -> tuple[np.ndarray, np.ndarray]:
    """The min/max range of one tensor (a weight) for ``spec``, dead channels left out."""
    rc = RangeCollector("min_max", spec.settings.per_channel, spec.channel_axis)
    rc.update(x)
    got = rc.range()
    return got if got is not None else (np.zeros(()), np.zeros(()))


# -- statistics -----------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantizerStat:
    """One quantizer as reported: what it is and the float range it covers."""

    key: str
    bits: int
    mode: str
    signed: bool
    per_channel: bool
    initialized: bool
    low: float
    high: float


@dataclass
class QuantizationStatistics:
    """Numbers a user checks during QAT; ``str()`` gives a per-quantizer table."""

    weight_bits: int
    activation_bits: int
    quantizers: list[QuantizerStat] = field(default_factory=list)
    left_in_float: list[tuple[str, str]] = field(default_factory=list)

    def _count(self, kind: str) -> int:
        return sum(q.key.startswith(kind + ":") for q in self.quantizers)

    @property
    def num_weight_quantizers(self) -> int:
        return self._count("weight")

    @property
    def num_activation_quantizers(self) -> int:
        return self._count("activation")

    @property
    def num_quantizers(self) -> int:
        return len(self.quantizers)

    @property
    def num_initialized(self) -> int:
        return sum(q.initialized for q in self.quantizers)

    @property
    def ranges_initialized(self) -> bool:
        """True when every quantizer has its range."""
        return self.num_initialized == self.num_quantizers

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("num_weight_quantizers", "num_activation_quantizers", "num_quantizers",
                     "num_initialized", "ranges_initialized"):  # fmt: skip
            out[name] = getattr(self, name)
        return out

    def __str__(self) -> str:
        lines = [
            "Quantization statistics",
            f"  bits (weights/activations): {self.weight_bits}/{self.activation_bits}",
            f"  weight quantizers         : {self.num_weight_quantizers}",
            f"  activation quantizers     : {self.num_activation_quantizers}",
            f"  ranges initialised        : {self.num_initialized} of {self.num_quantizers}",
            "",
            f"  {'quantizer':<44} {'bits':>4} {'mode':<5} {'sign':<4} {'gran':<4} "
            f"{'range':>21}",
        ]
        for q in self.quantizers:
            rng = f"[{q.low:.4g}, {q.high:.4g}]" if q.initialized else "not initialised"
            lines.append(f"  {q.key:<44} {q.bits:>4} {q.mode[:4]:<5} "
                         f"{'s' if q.signed else 'u':<4} {'ch' if q.per_channel else 't':<4} "
                         f"{rng:>21}")  # fmt: skip
        if self.left_in_float:
            lines += ["", "  left in float (no quantizer inside):"]
            lines += [f"    {name}: {why}" for name, why in self.left_in_float]
        return "\n".join(lines)


def collect_quantization_statistics(specs: Iterable[QuantizerSpec],
                                    states: Mapping[str, QuantizerState], params: Any,
                                    left_in_float: list[tuple[str, str]] | None = None,
                                    ) -> QuantizationStatistics:  # fmt: skip
    """Statistics of ``specs`` with their current ``states`` (by :attr:`QuantizerSpec.key`)
    and the layers left in float (:func:`float_layers`)."""
    rows = []
    for spec in specs:
        state = states[spec.key]
        low, high = state.range()
        rows.append(QuantizerStat(
            spec.key, spec.settings.bits, spec.settings.mode, state.signed,
            spec.settings.per_channel, state.initialized,
            float(np.min(low)) if low.size else 0.0, float(np.max(high)) if high.size else 0.0,
        ))  # fmt: skip
    w, a = settings_for(params)
    return QuantizationStatistics(w.bits, a.bits, rows, list(left_in_float or []))
