"""A deployable Keras model that keeps its quantizers: stock layers plus fake quant.

The model is rebuilt with ``keras.models.clone_model`` (a ``Sequential`` as a new
``Sequential``): every layer is made again from its class and config and given its
weights (masks multiplied in), a layer with quantized weights is wrapped in
:class:`~.fake_quant.QuantizedWeights`, and a :class:`~.fake_quant.FakeQuant` layer is
called on each quantized input (one per quantizer and tensor). Quantizers are matched
to layers by their path (``outer/inner/conv``), so the model may be the training model
or the plain model filter pruning's ``strip`` made of it; per-channel ranges of a layer
that lost filters are cut to the kept ones (read from its pruning mask).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from ..core.quantization import QuantizerSpec, QuantizerState
from ..errors import AnalysisError
from .capture import functional_of
from .fake_quant import FakeQuant, QuantizedWeights
from .masks import _variable, transform_inputs, weight_mask_of
from .shrink import copy_weights, rebuilt

__all__ = ["StripTable", "strip_quantized"]


@dataclass
class StripTable:
    """Where the quantizers sit on the training model (by operation id).

    Attributes:
        weights: Layer id -> ``(layer, variable name, spec)`` of its weight quantizers.
        inputs: Operation id -> tensor input index -> spec.
    """

    weights: dict[int, list[tuple[Any, str, QuantizerSpec]]] = field(default_factory=dict)
    inputs: dict[int, dict[int, QuantizerSpec]] = field(default_factory=dict)

    def add_weight(self, layer: Any, variable: str, spec: QuantizerSpec) -> None:
        self.weights.setdefault(id(layer), []).append((layer, variable, spec))

    def add_input(self, op: Any, index: int, spec: QuantizerSpec) -> None:
        self.inputs.setdefault(id(op), {})[index] = spec


def _nested(op: Any) -> Any:
    if not isinstance(op, keras.Model):
        return None
    try:
        return functional_of(op)
    except AnalysisError:
        return None


def operation_paths(model: Any, prefix: str = "") -> dict[int, list[str]]:
    """``id`` of every operation of ``model`` (nested models included) -> its paths (a
    layer called inside a nested model and outside it has two: the rebuild makes two
    layers of it, each quantized as the one layer was)."""
    out: dict[int, list[str]] = {}
    for op in functional_of(model).operations:
        if isinstance(op, keras.layers.InputLayer):
            continue
        out.setdefault(id(op), []).append(prefix + op.name)
        if _nested(op) is not None:
            for key, paths in operation_paths(op, f"{prefix}{op.name}/").items():
                out.setdefault(key, []).extend(paths)
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)


class _Rebuild:
    """Clones a model, adding the quantizers of a :class:`StripTable` by path."""

    def __init__(self, training: Any, table: StripTable, states: Mapping[str, QuantizerState],
                 kept_channels: Any = None) -> None:  # fmt: skip
        paths = operation_paths(training)
        self.kept_channels = kept_channels  # (node, axis) -> kept entries, from pruning
        live = {k for k, s in states.items() if s.initialized}  # unset ones pass through
        self.weights = {path: [e for e in v if e[2].key in live]
                        for k, v in table.weights.items() for path in paths[k]}  # fmt: skip
        self.inputs = {path: {i: s for i, s in v.items() if s.key in live}
                       for k, v in table.inputs.items() for path in paths[k]}  # fmt: skip
        self.states = states
        self.pairs: list[tuple[Any, Any]] = []
        self.paths: dict[int, str] = {}  # id(new operation) -> path
        self.fake_quants: dict[tuple[str, str], Any] = {}  # (key, container path) -> layer
        self.quantized: dict[tuple[str, int], Any] = {}

    def model(self, model: Any, prefix: str) -> Any:
        if isinstance(model, keras.Sequential):
            return self.sequential(model, prefix)
        return keras.models.clone_model(
            functional_of(model), clone_function=lambda op: self.layer(op, prefix),
            call_function=self.call)  # fmt: skip

    def sequential(self, model: Any, prefix: str) -> Any:
        kt = model.inputs[0]
        layers: list[Any] = [keras.Input(batch_shape=kt.shape, dtype=kt.dtype)]
        made: dict[int, list[Any]] = {}  # a layer listed twice is called twice: rebuilt once
        for layer in model.layers:
            if id(layer) not in made:
                made[id(layer)] = self._sequential_layer(layer, prefix)
            layers.extend(made[id(layer)])
        return keras.Sequential(layers, name=model.name, trainable=model.trainable)

    def _sequential_layer(self, layer: Any, prefix: str) -> list[Any]:
        """``layer`` rebuilt, after the quantizer of its input if it has one."""
        out = []
        spec = self.inputs.get(prefix + layer.name, {}).get(0)
        if spec is not None:
            channels = None  # what the (maybe cut) layer reads there
            if spec.settings.per_channel and spec.channel_axis is not None:
                channels = layer.input.shape[spec.channel_axis]
            out.append(self.fake_quant(spec, layer.dtype_policy, shared=False,
                                       channels=channels))  # fmt: skip
        return out + [self.layer(layer, prefix)]

    def layer(self, op: Any, prefix: str) -> Any:
        path = prefix + op.name
        if _nested(op) is not None:
            new = self.model(op, path + "/")
        else:
            new = rebuilt(op)
            self.pairs.append((op, new))
            if self.weights.get(path):
                new = self._wrap(new, op, self.weights[path])
        self.paths[id(new)] = path
        return new

    def _wrap(self, new: Any, op: Any, entries: list[tuple[Any, str, QuantizerSpec]]) -> Any:
        specs, ranges = [], {}
        for trained, variable, spec in entries:
            axis = spec.channel_axis if spec.settings.per_channel else None
            low, high = self.states[spec.key].range()
            if axis is not None:
                size = int(_variable(op, variable).shape[axis])
                keep = _kept(trained, variable, axis, size)
                low, high = low[keep], high[keep]
            specs.append({"name": variable, "axis": axis, "num_bits": spec.settings.bits,
                          "narrow_range": False})  # fmt: skip
            ranges[variable] = (low, high)
        return QuantizedWeights(new, specs, ranges)

    def fake_quant(self, spec: QuantizerSpec, policy: Any, shared: bool = True,
                   channels: int | None = None, scope: str = "") -> Any:  # fmt: skip
        """The layer quantizing ``spec``'s tensor for a reader of dtype ``policy`` (the
        training model quantizes what the reader casts its input to: float16 under
        mixed_float16); ``shared=False``: a new one with the same range (a Sequential owns
        its layers: one also called outside it would not reload). Per-channel ranges of a
        tensor that lost channels (``channels`` left) keep those of the kept ones."""
        # shared within one container only: a layer owned by a nested model and by the
        # outer one does not reload from .keras
        if (spec.key, scope) in self.fake_quants and shared:
            return self.fake_quants[(spec.key, scope)]
        low, high = self.states[spec.key].range()
        axis = spec.channel_axis if spec.settings.per_channel else None
        if axis is not None and channels is not None and channels != np.size(low):
            low, high = self._cut(spec, axis, channels, low, high)
        layer = FakeQuant(spec.settings.bits, False, axis, low, high,
                          name=_safe(f"{spec.target}_quant"), dtype=policy)  # fmt: skip
        if shared:
            self.fake_quants[(spec.key, scope)] = layer
        return layer

    def _cut(self, spec: QuantizerSpec, axis: int, channels: int, low: Any, high: Any) -> Any:
        """Per-channel ranges of a tensor pruning cut, kept for its kept channels."""
        keep = None if self.kept_channels is None else self.kept_channels(spec.target, axis)
        if keep is None or int(keep.sum()) != channels or keep.size != np.size(low):
            raise AnalysisError(
                f"The per-channel ranges of {spec.key} cover {np.size(low)} channels, but the "
                f"stripped model's tensor has {channels} and the pruning plan does not say "
                "which are left: strip with shrink=False, or quantize activations per tensor "
                "(`activations.per_channel`: false)."
            )
        return np.asarray(low)[keep], np.asarray(high)[keep]

    def _quantize(self, spec: QuantizerSpec, x: Any, policy: Any, scope: str = "") -> Any:
        key = (spec.key, id(x))
        if key not in self.quantized:
            channels = None
            if spec.settings.per_channel and spec.channel_axis is not None:
                channels = x.shape[spec.channel_axis]
            self.quantized[key] = self.fake_quant(spec, policy, channels=channels,
                                                  scope=scope)(x)
        return self.quantized[key]

    def call(self, op: Any, *args: Any, **kwargs: Any) -> Any:
        path = self.paths.get(id(op), "")
        specs = self.inputs.get(path, {})
        if specs:
            policy = getattr(op, "dtype_policy", None)  # a keras.ops call has none
            scope = path.rpartition("/")[0]
            table = {i: (lambda x, s=s: self._quantize(s, x, policy, scope))
                     for i, s in specs.items()}  # fmt: skip
            args, kwargs = transform_inputs(table, args, kwargs)
        return op(*args, **kwargs)


def _kept(trained: Any, variable: str, axis: int, size: int) -> np.ndarray:
    """Indices of the channels along ``axis`` that the stripped weight kept."""
    mask = weight_mask_of(trained, variable)
    full = int(_variable(trained, variable).shape[axis])
    if size == full:
        return np.arange(full)
    live = np.zeros(full, bool) if mask is None else np.moveaxis(mask, axis, 0).reshape(
        full, -1).any(axis=1)  # fmt: skip
    if int(live.sum()) != size:
        raise AnalysisError(
            f"The quantized weight {variable!r} of {trained.name!r} has {size} channels after "
            f"strip but its mask keeps {int(live.sum())} of {full}; its per-channel ranges "
            "cannot be matched. Strip with shrink=False."
        )
    return np.flatnonzero(live)


def strip_quantized(model: Any, training: Any, table: StripTable,
                    states: Mapping[str, QuantizerState], kept_channels: Any = None,
                    ) -> Any:  # fmt: skip
    """A new model computing what ``training`` computes in inference mode.

    Args:
        model: The model to rebuild: the training model itself, or a plain copy of it with
            the same layer names (filter pruning's strip output).
        training: The quantized training model (the quantizers' table refers to it).
        table: Where the quantizers sit.
        states: Each quantizer's state; uninitialised ones are left out.
        kept_channels: ``(graph node, axis)`` -> the entries pruning keeps of that tensor
            (per-channel activation ranges of a cut tensor follow it).

    Returns:
        A Functional or Sequential ``keras.Model`` of stock layers plus
        :class:`~.fake_quant.FakeQuant` and :class:`~.fake_quant.QuantizedWeights`.
    """
    rebuild = _Rebuild(training, table, states, kept_channels)
    new_model = rebuild.model(model, "")
    copy_weights(rebuild.pairs)
    return new_model
