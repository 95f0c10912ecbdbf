"""The compression controller for Keras 8-bit quantization-aware training.

Quantizers go where :func:`filterprune.core.quantization.place_quantizers` puts them on
the captured graph, through the class swap that filter pruning's masks use (see
:mod:`filterprune.tensorflow.masks`): a weight quantizer is a *weight transform* of its
layer, run on the masked weight (so pruned filters stay exactly zero), and an activation
quantizer is an *input transform* of every layer or ``keras.ops`` operation that reads
the tensor. Both call TensorFlow's fake-quant ops (:func:`~.fake_quant.fake_quant`),
whose gradient is the straight-through estimate.

Ranges live in non-trainable ``tf.Variable`` s that exist from creation on, so traced
functions (``model.fit``) read every later value. Activation ranges are set once from
the registered data; weight ranges are the current (masked) weights' min/max, set at
creation and again at every ``scheduler.epoch_step()`` (after pruning moved its masks).
A quantizer passes values through until its range is set. The model's own variables,
checkpoints and ``.keras`` files stay as they were; the ranges travel in the
compression state.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf

from ..core.quant_controller import QuantizationControllerBase
from ..core.quantization import QuantizerSpec, QuantizerState
from ..errors import ConfigError
from ._init_args import sample_batches
from .capture import Capture
from .controller import export_model, reset_traced_functions
from .fake_quant import fake_quant
from .masks import masked_weights, set_input_transform, set_weight_transform
from .strip_quant import StripTable, strip_quantized

__all__ = ["QuantizationController"]

log = logging.getLogger("filterprune")


class _Quantizer:
    """One fake-quant op of the training model: its range variables and its switch.

    Called on a tensor it returns the tensor fake-quantized on ``[low, high]``, or the
    tensor itself while the range is unset or ``paused`` is set, or (while ``collector``
    is set, in eager calls) the tensor itself after adding it to the collector.
    """

    def __init__(self, spec: QuantizerSpec) -> None:
        self.spec = spec
        self.axis = spec.channel_axis if spec.settings.per_channel else None
        self.state = QuantizerState.empty(spec.settings, spec.num_channels)
        self.collector: Any = None
        self.paused = False
        self._make_variables(np.zeros(self.state.scale.shape, "float32"),
                             np.ones(self.state.scale.shape, "float32"))  # fmt: skip

    def _make_variables(self, low: np.ndarray, high: np.ndarray) -> None:
        once = tf.VariableAggregation.ONLY_FIRST_REPLICA  # written from the cross-replica context
        name = self.spec.key.replace(":", "_").replace("/", "_")
        with tf.init_scope():
            self.low = tf.Variable(low, trainable=False, name=f"{name}_min", aggregation=once)
            self.high = tf.Variable(high, trainable=False, name=f"{name}_max", aggregation=once)

    @property
    def enabled(self) -> bool:
        return self.state.initialized

    def set(self, state: QuantizerState) -> None:
        low, high = state.range()
        self.low.assign(np.asarray(low, "float32").reshape(self.low.shape))
        self.high.assign(np.asarray(high, "float32").reshape(self.high.shape))
        self.state = state

    def recreate(self) -> None:
        """Make the variables again (under the current distribution strategy)."""
        self._make_variables(self.low.numpy(), self.high.numpy())

    def __call__(self, x: Any) -> Any:
        if self.collector is not None:
            self.collector.update(np.asarray(x))
            return x
        if self.paused or not self.enabled:
            return x
        return fake_quant(x, self.low, self.high, self.spec.settings.bits, False, self.axis)


class _EpochRefresh:
    """Scheduler of quantization: weight ranges follow the weights at each epoch start."""

    def __init__(self, refresh: Any) -> None:
        self.refresh = refresh
        self.current_epoch = -1

    def epoch_step(self, next_epoch: int | None = None) -> None:
        self.current_epoch = self.current_epoch + 1 if next_epoch is None else int(next_epoch)
        self.refresh()

    def step(self, next_step: int | None = None) -> None:
        """Nothing changes within an epoch."""

    def get_state(self) -> dict[str, Any]:
        return {"current_epoch": self.current_epoch}

    def load_state(self, state: dict[str, Any]) -> None:
        self.current_epoch = int(state.get("current_epoch", -1))


class QuantizationController(QuantizationControllerBase):
    """Fake quantization on a Keras model: placement, ranges, statistics, strip, export.

    Created by :func:`filterprune.tensorflow.create_compressed_model`; not built directly.
    Placement, statistics, the compression stage and the saved state come from
    :class:`~filterprune.core.quant_controller.QuantizationControllerBase`.

    Attributes:
        model: The quantized model (the same object the user passed in).
        quantizers: Key (``weight:<layer>``, ``activation:<node>``) -> quantizer.
    """

    first_batch_ranges = False  # a traced fit step cannot set them

    def __init__(self, model: Any, params: Any, captured: Capture, frontend: Any) -> None:
        super().__init__(params, captured.graph)
        self.model = model
        self.captured = captured
        self.frontend = frontend
        self.scheduler = _EpochRefresh(self._refresh_weights)
        self.table = StripTable()
        self.specs = [s for s in self.specs if self._placeable(s)]
        asymmetric = [s.key for s in self.specs if s.settings.per_channel
                      and s.settings.mode == "asymmetric"]  # fmt: skip
        if asymmetric:  # said now, not after training, when export_model refuses
            log.warning("quantization: %s quantizer%s per channel with mode 'asymmetric' "
                        "(%s): they train, strip and save as .keras or SavedModel, but ONNX "
                        "export needs them symmetric.", len(asymmetric),
                        "s" if len(asymmetric) > 1 else "", ", ".join(asymmetric[:3]))
        self.quantizers = {}
        claimed: dict[tuple[int, int], _Quantizer] = {}  # (id(op), input) -> its quantizer
        for spec in self.specs:
            self._install(spec, claimed)

    # -- placement -------------------------------------------------------------------------
    def _inputs(self, spec: QuantizerSpec) -> list[tuple[Any, int]]:
        """``(operation, tensor input index)`` of every call that reads ``spec``'s tensor."""
        out = []
        for consumer in spec.consumers:
            op, ins = self.captured.calls[consumer]
            out += [(op, i) for i, name in enumerate(ins) if name == spec.target]
        return out

    def _placeable(self, spec: QuantizerSpec) -> bool:
        if spec.kind == "weight" or self._inputs(spec):
            return True
        log.info("no quantizer on %s: it is inside the Keras layer %s", spec.target,
                 ", ".join(spec.consumers))  # fmt: skip
        return False

    def _install(self, spec: QuantizerSpec, claimed: dict) -> None:
        """Put ``spec``'s quantizer on the model. A layer called on several tensors has
        one input transform: a tensor read by a call that already quantizes another one
        shares that quantizer, whose range then covers both (as in PyTorch)."""
        inputs = self._inputs(spec) if spec.kind != "weight" else []
        shared = next((claimed[id(op), i] for op, i in inputs if (id(op), i) in claimed), None)
        quantizer = self.quantizers[spec.key] = shared or _Quantizer(spec)
        if spec.kind == "weight":
            ref = self.captured.refs[spec.target]
            variable = self.captured.graph.layers[spec.target].weight
            set_weight_transform(ref.layer, variable, quantizer)
            self.table.add_weight(ref.layer, variable, spec)
            return
        for op, index in inputs:
            if (id(op), index) not in claimed:
                claimed[id(op), index] = quantizer
                set_input_transform(op, index, quantizer)
                self.table.add_input(op, index, quantizer.spec)

    # -- core hooks ------------------------------------------------------------------------
    def quantizer_states(self) -> dict[str, QuantizerState]:
        return {key: q.state for key, q in self.quantizers.items()}

    def set_quantizer_states(self, states: dict[str, QuantizerState]) -> None:
        switched = False
        for key, state in states.items():
            quantizer = self.quantizers[key]
            if quantizer.spec.key != key and quantizer.spec.key in states:
                continue  # shared: set under its own key
            switched |= quantizer.enabled != state.initialized
            quantizer.set(state)
        if switched:  # a function traced before would keep the pass-through
            reset_traced_functions(self.model)

    # -- ranges ----------------------------------------------------------------------------
    def _refresh_weights(self) -> None:
        states = {}
        for spec in self.specs:
            if spec.kind == "weight":
                layer = self.captured.refs[spec.target].layer
                weight = masked_weights(layer)[self.captured.graph.layers[spec.target].weight]
                states[spec.key] = self.weight_state(spec, weight)
        self.set_quantizer_states(states)

    def initialize(self, data: Any) -> None:
        """Set weight ranges from the weights and activation ranges from ``data``.

        Activations are collected on ``num_init_samples`` samples with every quantizer
        passing values through (the float model, masks applied).

        Raises:
            ConfigError: If activation ranges need data and none was registered, or for
                ``num_init_samples: 0`` (ranges from the first training batch), which a
                traced ``model.fit`` step cannot set here.
        """
        self._refresh_weights()
        if self.params.num_init_samples == 0 and self.activation_specs:
            raise ConfigError(
                "`initializer.range.num_init_samples` must be positive in the Keras frontend: "
                "activation ranges come from the dataset registered with "
                "register_default_init_args, not from the first training batch. "
                "Received: num_init_samples=0."
            )
        if not self.check_init_data(data):
            return
        # one collector per quantizer: a shared one is collected under its own key
        acts = {q.spec.key: q for q in (self.quantizers[s.key] for s in self.activation_specs)}
        collectors = {key: self.range_collector(q.spec) for key, q in acts.items()}
        for q in self.quantizers.values():  # the float model while collecting
            q.paused = True
            q.collector = collectors.get(q.spec.key)
        try:
            for x in sample_batches(self.model, data.dataset, self.params.num_init_samples,
                                    data.batch_size, "Quantizer ranges"):  # fmt: skip
                self.model(x, training=False)
                for collector in collectors.values():
                    collector.end_batch()
        finally:
            for q in self.quantizers.values():
                q.paused, q.collector = False, None
        self.set_quantizer_states(self.collected_states(collectors))

    # -- training --------------------------------------------------------------------------
    def loss(self) -> tf.Tensor:
        """Quantization adds no regulariser: a zero scalar."""
        return tf.constant(0.0)

    def distributed(self) -> None:
        """Call inside ``strategy.scope()`` before training under a ``tf.distribute``
        strategy: the range variables are made again as that strategy's variables."""
        with tf.distribute.get_strategy().scope():
            for quantizer in self.quantizers.values():
                quantizer.recreate()
        reset_traced_functions(self.model)

    # -- state -----------------------------------------------------------------------------
    def get_compression_state(self) -> dict[str, Any]:
        return {**super().get_compression_state(), "scheduler": self.scheduler.get_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.scheduler.load_state(state.get("scheduler", {}))

    # -- output ----------------------------------------------------------------------------
    def strip(self, shrink: bool = True) -> Any:
        """A new model of stock Keras layers plus ``FakeQuant``/``QuantizedWeights``.

        Args:
            shrink: Passed to filter pruning when it runs before (smaller layers).
        """
        return self.frontend.strip(self, shrink=shrink)

    def strip_model(self, model: Any, kept_channels: Any = None, **_: Any) -> Any:
        return strip_quantized(model, self.model, self.table, self.quantizer_states(),
                               kept_channels)  # fmt: skip

    def export_model(self, save_path: str, save_format: str | None = None,
                     shrink: bool = False) -> None:  # fmt: skip
        """Export the stripped model: ``.pb`` with fake-quant ops, ``.onnx`` with
        QuantizeLinear/DequantizeLinear pairs, ``.keras`` or a SavedModel folder.

        Raises:
            ValueError: For an unknown format, or an ONNX export of quantizers ONNX
                cannot express (other than 8 bits, asymmetric per channel).
        """
        export_model(self, save_path, save_format, shrink)
