"""Fake quantization in Keras: the TensorFlow op call and the two layers of a stripped model.

:func:`fake_quant` rounds a tensor to the integer grid of ``[min, max]`` and back with
TensorFlow's own ops (``tf.quantization.fake_quant_with_min_max_vars`` per tensor,
``..._per_channel`` along one axis); their gradient is the straight-through estimate.
A stripped model carries its quantizers in two small layers, saved to ``.keras`` by
name (importing :mod:`filterprune.tensorflow` registers them):

- :class:`FakeQuant`: quantizes the tensor it is called on (activations);
- :class:`QuantizedWeights`: runs a stock layer (``Conv2D``, ``Dense``...) with some
  of its weights fake-quantized per output channel.

No stock Keras layer does either (Keras's own ``quantize("int8")`` quantizes
activations with ranges measured at every call, and not convolutions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .masks import _attr_of, _variable

__all__ = ["FakeQuant", "QuantizedWeights", "fake_quant"]


def fake_quant(x: Any, low: Any, high: Any, num_bits: int, narrow_range: bool,
               axis: int | None = None) -> tf.Tensor:  # fmt: skip
    """``x`` quantized to ``num_bits`` on ``[low, high]`` and dequantized.

    Args:
        x: The tensor.
        low: Range minimum, a scalar (per tensor) or one value per channel.
        high: Range maximum, same shape as ``low``.
        num_bits: Bits of the integer grid (2 to 16).
        narrow_range: Leave out the lowest level (``[-127, 127]`` for signed 8 bit).
        axis: The channel axis for per-channel ranges; ``None`` for one range.

    Returns:
        A tensor of ``x``'s shape and dtype.
    """
    dtype = x.dtype
    x = tf.cast(x, tf.float32)
    low, high = tf.cast(low, tf.float32), tf.cast(high, tf.float32)
    if axis is None:
        y = tf.quantization.fake_quant_with_min_max_vars(
            x, low, high, num_bits=num_bits, narrow_range=narrow_range)  # fmt: skip
        return tf.cast(y, dtype)
    rank = x.shape.rank
    axis = axis % rank
    perm = [*(a for a in range(rank) if a != axis), axis]  # the op's channels are last
    moved = x if axis == rank - 1 else tf.transpose(x, perm)
    y = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        moved, low, high, num_bits=num_bits, narrow_range=narrow_range)  # fmt: skip
    if axis != rank - 1:
        y = tf.transpose(y, np.argsort(perm))
    return tf.cast(y, dtype)


@keras.saving.register_keras_serializable(package="filterprune")
class FakeQuant(keras.layers.Layer):
    """Fake-quantizes its input on a fixed range (``min``/``max`` weights).

    Args:
        num_bits: Bits of the integer grid.
        narrow_range: Leave out the lowest level.
        axis: Channel axis of per-channel ranges; ``None``: one range.
        low: Initial range minimum (a number or one per channel).
        high: Initial range maximum.
    """

    def __init__(self, num_bits: int = 8, narrow_range: bool = False, axis: int | None = None,
                 low: Any = None, high: Any = None, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.num_bits = int(num_bits)
        self.narrow_range = bool(narrow_range)
        self.axis = None if axis is None else int(axis)
        self._init = (low, high)

    def build(self, input_shape: Any) -> None:
        shape = () if self.axis is None else (int(input_shape[self.axis]),)
        # float32 under mixed_float16 and a float16 layer's policy too: a range rounded to
        # float16 moves the grid
        self.min = self.add_weight(shape=shape, initializer="zeros", trainable=False, name="min",
                                   autocast=False, dtype="float32")  # fmt: skip
        self.max = self.add_weight(shape=shape, initializer="ones", trainable=False, name="max",
                                   autocast=False, dtype="float32")  # fmt: skip
        low, high = self._init
        if low is not None:
            self.min.assign(np.broadcast_to(np.asarray(low, "float32"), shape))
            self.max.assign(np.broadcast_to(np.asarray(high, "float32"), shape))

    def call(self, inputs: Any) -> Any:
        return fake_quant(inputs, self.min, self.max, self.num_bits, self.narrow_range,
                          self.axis)  # fmt: skip

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_bits": self.num_bits,
                "narrow_range": self.narrow_range, "axis": self.axis}  # fmt: skip


@keras.saving.register_keras_serializable(package="filterprune")
class QuantizedWeights(keras.layers.Wrapper):
    """Runs ``layer`` with the weights named in ``weights`` fake-quantized.

    The wrapped layer keeps its class, config and float weights; each quantized weight
    gets ``<name>_min``/``<name>_max`` weights here (one value per channel of ``axis``).

    Args:
        layer: A stock Keras layer (``Conv2D``, ``Dense``, ``DepthwiseConv2D``...).
        weights: One dict per quantized weight: ``name`` (the variable's name), ``axis``
            (channel axis, ``None`` for one range), ``num_bits``, ``narrow_range``.
        ranges: Initial ``(min, max)`` arrays by weight name.
    """

    def __init__(self, layer: Any, weights: Sequence[dict[str, Any]],
                 ranges: dict[str, tuple[Any, Any]] | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        kwargs.setdefault("name", layer.name)
        kwargs.setdefault("dtype", layer.dtype_policy)  # mixed_float16 computes in float16
        super().__init__(layer, **kwargs)
        self.quantized = [dict(w) for w in weights]
        self._init = dict(ranges or {})
        self._ranges: dict[str, tuple[Any, Any]] = {}

    def build(self, input_shape: Any = None) -> None:
        super().build(input_shape)
        for spec in self.quantized:
            name, axis = spec["name"], spec["axis"]
            variable = _variable(self.layer, name)
            shape = () if axis is None else (int(variable.shape[axis]),)
            low = self.add_weight(shape=shape, initializer="zeros", trainable=False,
                                  name=f"{name}_min", autocast=False, dtype="float32")  # fmt: skip
            high = self.add_weight(shape=shape, initializer="ones", trainable=False,
                                   name=f"{name}_max", autocast=False, dtype="float32")  # fmt: skip
            if name in self._init:
                low.assign(np.broadcast_to(np.asarray(self._init[name][0], "float32"), shape))
                high.assign(np.broadcast_to(np.asarray(self._init[name][1], "float32"), shape))
            self._ranges[name] = (low, high)

    def call(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        state = self.layer.__dict__
        saved = {}
        try:
            for spec in self.quantized:
                attr = _attr_of(self.layer, _variable(self.layer, spec["name"]))
                low, high = self._ranges[spec["name"]]
                saved[attr] = state[attr]
                # in the compute dtype first, as the training model reads it (float16 under
                # mixed_float16: the grid is then laid on the rounded weight)
                weight = keras.ops.cast(saved[attr], self.layer.compute_dtype)
                state[attr] = fake_quant(weight, low, high, spec["num_bits"],
                                         spec["narrow_range"], spec["axis"])  # fmt: skip
            return self.layer.call(inputs, *args, **kwargs)
        finally:
            state.update(saved)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.layer.compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weights": [dict(w) for w in self.quantized]}

    def ranges(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each quantized weight's ``(min, max)`` as numpy."""
        return {k: (np.asarray(lo.numpy()), np.asarray(hi.numpy()))
                for k, (lo, hi) in self._ranges.items()}  # fmt: skip

