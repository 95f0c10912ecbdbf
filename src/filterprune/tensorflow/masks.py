"""Masked Keras layers: pruned filters read as zero while the stored weights are kept.

The Keras 3 counterpart of the PyTorch class swap. Each pruned layer's class becomes a
subclass (same ``__name__`` and module, so saving and summaries are unchanged) whose
``call`` reads ``kernel * mask`` in place of the kernel for the duration of the call,
then runs the layer's own ``call``. Masks are ``tf.Variable`` s outside the layer's
tracked weights: ``model.weights``, checkpoints and ``.keras`` files hold exactly the
original variables; traced ``tf.function`` s (``model.fit``) read the current mask
values, so updating a mask needs no retracing; gradients of pruned entries are zero.
Masks cover both sides of a layer (its pruned filters and the pruned channels it
reads), and per-channel layers (BatchNorm) zero their pruned outputs, so the masked
model computes exactly what the cut model computes.

Other algorithms use the same swapped ``call``: a *weight transform* runs on a weight
after its mask (quantization fake-quantizes the masked kernel, so pruned filters stay
exactly zero), a *weight tap* sees the masked weight before any transform (the
``taylor`` importance reads its gradient there; an *output tap* the masked output, where
no weight gives it) and an *input transform* runs on one
tensor input before the layer (or ``keras.ops`` operation) sees it. Like masks,
transforms and taps must be in place before the first trace: a ``tf.function`` keeps
the ``call`` it traced.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from ..core.analysis import Analysis
from ..core.graph import LayerInfo
from ..core.weights import weight_mask
from .capture import LayerRef

__all__ = [
    "apply_masks",
    "base_class",
    "is_masked",
    "maskable_layers",
    "masked_weights",
    "pruned_channels",
    "recreate_masks",
    "set_input_transform",
    "set_output_tap",
    "set_weight_tap",
    "set_weight_transform",
    "transform_inputs",
    "weight_mask_of",
]

_SWAPPED: dict[type, type] = {}
_COPIES_SAID: list[str] = []
_MASKED_KINDS = ("conv", "linear", "batchnorm")


def _masked_call(self, *args: Any, **kwargs: Any) -> Any:
    """``call`` with transformed inputs and masked (then transformed) variables; the
    original variables are put back afterwards."""
    state = self.__dict__
    if not any(key.startswith("_fp_") for key in state):  # made by its class, not by us
        _say_copy(self)
    if state.get("_fp_input_transforms"):
        args, kwargs = transform_inputs(state["_fp_input_transforms"], args, kwargs)
    channel = state.get("_fp_channel_mask")
    training = kwargs.get("training", args[1] if len(args) > 1 else None)
    # a symbolic `training` keeps Keras' own update (only a Python True is read here)
    statistics = _statistics(self) if channel is not None and training is True else []
    saved = {}
    try:
        for attr, value in _call_weights(self).items():
            saved[attr] = state[attr]
            state[attr] = value
        out = type(self)._filterprune_base.call(self, *args, **kwargs)
    finally:
        state.update(saved)
    if channel is not None:
        mask, axis = channel
        for variable, old in statistics:  # a pruned channel keeps its statistics
            variable.assign(ops.where(ops.not_equal(mask, 0), variable, old))
        shape = [1] * len(out.shape)
        shape[axis] = -1
        out = _masked(out, ops.reshape(mask, shape))
    tap = state.get("_fp_output_tap")
    return out if tap is None else tap(out)


def _say_copy(layer: Any) -> None:
    """Warn, once a process (a cloned model has many such layers), of a layer of a masked
    class that no mask was put on: ``keras.models.clone_model`` made it."""
    layer.__dict__["_fp_copy"] = True
    if _COPIES_SAID:
        return
    _COPIES_SAID.append(layer.name)
    warnings.warn(
        f"Layer {layer.name!r} (and any like it) is a copy of a layer filterprune compresses "
        "(made with keras.models.clone_model or from_config): a copy has no masks or "
        "quantizers and computes as the uncompressed layer. Copy the compressed model with "
        "ctrl.strip(), or copy the model before create_compressed_model.",
        UserWarning, stacklevel=3)  # fmt: skip


def _statistics(layer: Any) -> list[tuple[Any, Any]]:
    """``(variable, value now)`` of a BatchNorm's moving statistics. Training drives a
    pruned channel's to 0 and 0 (its input is zero), and a channel that comes back at a
    lower level (accuracy-aware training) would then be divided by ``sqrt(epsilon)``."""
    variables = (getattr(layer, "moving_mean", None), getattr(layer, "moving_variance", None))
    # tf.identity: a copy of the value now (converting the variable would follow it)
    return [(v, tf.identity(v.value)) for v in variables if v is not None]


def pruned_channels(layer: Any) -> np.ndarray | None:
    """Booleans, true where ``layer``'s channel mask prunes (``None`` without a mask)."""
    channel = layer.__dict__.get("_fp_channel_mask")
    return None if channel is None else np.asarray(channel[0].numpy()) == 0


def _masked(value: Any, mask: Any) -> Any:
    """``value`` where ``mask`` is non-zero, else exactly 0: unlike ``value * mask``, a NaN
    or inf in a pruned entry reads as 0, as it does in the cut model."""
    return ops.where(ops.not_equal(mask, 0), value, ops.zeros((), dtype=value.dtype))


def _call_weights(layer: Any) -> dict[str, Any]:
    """The value each masked, tapped or transformed weight attribute has during ``call``."""
    state = layer.__dict__
    masks = state.get("_fp_weight_masks", {})
    taps = state.get("_fp_weight_taps", {})
    transforms = state.get("_fp_weight_transforms", {})
    out = {}
    for attr in dict.fromkeys([*masks, *(a for attrs in taps for a in attrs), *transforms]):
        value = state[attr]
        if attr in masks:
            dtype = layer.compute_dtype
            value = _masked(ops.cast(value, dtype), masks[attr])
        out[attr] = value
    for attrs, tap in taps.items():  # after the masks, before any transform
        out.update(zip(attrs, tap(*(out[a] for a in attrs)), strict=True))
    for attr, transform in transforms.items():
        out[attr] = transform(out[attr])
    return out


def transform_inputs(table: Mapping[int, Any], args: tuple, kwargs: dict) -> tuple:
    """Apply ``table[i]`` to the ``i``-th tensor among the call's arguments (the order of
    the Keras node's ``input_tensors``: ``args`` then ``kwargs``, flattened)."""
    flat = keras.tree.flatten((args, kwargs))
    index = 0
    for pos, leaf in enumerate(flat):
        if not (tf.is_tensor(leaf) or isinstance(leaf, keras.KerasTensor)):
            continue
        if index in table:
            flat[pos] = table[index](leaf)
        index += 1
    return keras.tree.pack_sequence_as((args, kwargs), flat)


def _masked_class(cls: type) -> type:
    if cls not in _SWAPPED:
        def call(self, *args: Any, **kwargs: Any) -> Any:
            return _masked_call(self, *args, **kwargs)

        # a function of its own per class: functools.wraps mutates its argument, and on the
        # shared _masked_call every class reported the last swapped class's signature
        call = functools.wraps(cls.call)(call)  # keeps the signature Keras inspects
        _SWAPPED[cls] = type(cls.__name__, (cls,), {
            "call": call, "_filterprune_base": cls, "__module__": cls.__module__,
            "__qualname__": f"Masked{cls.__qualname__}",
        })  # fmt: skip
    return _SWAPPED[cls]


def is_masked(layer: Any) -> bool:
    return "_filterprune_base" in type(layer).__dict__


def base_class(layer: Any) -> type:
    """The layer's own class (the masked subclass's parent)."""
    return type(layer).__dict__.get("_filterprune_base", type(layer))


def _attr_of(layer: Any, variable: Any) -> str:
    for key, value in layer.__dict__.items():
        if value is variable:
            return key
    raise AttributeError(
        f"Layer {layer.name!r} keeps its variable {variable.name!r} in no attribute; "
        "filterprune cannot mask it."
    )


def _variable(layer: Any, name: str) -> Any:
    for v in layer.weights:
        if v.name == name:
            return v
    raise KeyError(f"Layer {layer.name!r} has no variable {name!r}.")


def _set(layer: Any, key: str, attr: Any, value: np.ndarray) -> None:
    """Assign the mask variable ``(layer, key)`` (created at the first call)."""
    table = layer.__dict__.setdefault(key, {})
    old = table.get(attr)
    if old is not None and tuple(old.shape) == value.shape:
        old.assign(value)
        return
    once = tf.VariableAggregation.ONLY_FIRST_REPLICA  # written from the cross-replica context
    with tf.init_scope():
        table[attr] = tf.Variable(value, trainable=False, name=f"{layer.name}_{attr}_mask",
                                  aggregation=once)  # fmt: skip


def _swap(layer: Any) -> None:
    if not is_masked(layer):
        layer.__class__ = _masked_class(type(layer))


def set_weight_transform(layer: Any, variable: str, transform: Any) -> None:
    """Make ``layer``'s call read ``transform(masked value)`` for its variable ``variable``.

    Args:
        layer: A Keras layer (its class is swapped if it is not yet).
        variable: The variable's name (``"kernel"``).
        transform: A function of the (masked) weight tensor.
    """
    attr = _attr_of(layer, _variable(layer, variable))
    _swap(layer)
    layer.__dict__.setdefault("_fp_weight_transforms", {})[attr] = transform


def set_weight_tap(layer: Any, variables: tuple[str, ...], tap: Any) -> None:
    """Make ``layer``'s call read ``tap(*masked values)`` for its ``variables``, before any
    weight transform; ``tap`` returns its inputs as a list (it exists for its gradient:
    one gradient function then sees all their gradients of a step).

    Args:
        layer: A Keras layer (its class is swapped if it is not yet).
        variables: The variables' names (``("kernel",)``, ``("gamma", "beta")``).
        tap: An identity function of the (masked) weight values, as positional arguments.
    """
    attrs = tuple(_attr_of(layer, _variable(layer, name)) for name in variables)
    _swap(layer)
    layer.__dict__.setdefault("_fp_weight_taps", {})[attrs] = tap


def set_output_tap(layer: Any, tap: Any) -> None:
    """Make ``layer``'s call return ``tap(output)``, after its channel mask: an identity
    that exists for its gradient (the ``taylor`` importance of a BatchNorm without a
    trainable scale)."""
    _swap(layer)
    layer.__dict__["_fp_output_tap"] = tap


def set_input_transform(operation: Any, index: int, transform: Any) -> None:
    """Make ``operation``'s call see ``transform(x)`` for its ``index``-th tensor input.

    Args:
        operation: A Keras layer or ``keras.ops`` operation of a Functional graph.
        index: Position among the call's tensor inputs (the Keras node's order).
        transform: A function of the input tensor.
    """
    _swap(operation)
    operation.__dict__.setdefault("_fp_input_transforms", {})[index] = transform


def maskable_layers(analysis: Analysis) -> set[str]:
    """Core layers that some plan can cut: they are masked from the start.

    A traced ``tf.function`` (``model.fit``'s train step) keeps the ``call`` it traced, so
    every layer a later plan may cut must read its mask variables from the first trace.
    """
    cut_all = {g.id: np.zeros(g.size, bool) for g in analysis.prunable_groups}
    return {name for name, roles in analysis.keeps(cut_all).items()
            if any(not v.all() for v in roles.values())}  # fmt: skip


def apply_masks(refs: Mapping[str, LayerRef], keeps: Mapping[str, dict[str, np.ndarray]],
                infos: Mapping[str, LayerInfo], maskable: set[str],
                bn: bool = True) -> None:  # fmt: skip
    """Install or update the masks of every maskable conv, dense and per-channel layer.

    Mask shapes depend only on the layer, never on the plan, so after the first call
    every update is an ``assign`` that running ``tf.function`` s see.
    """
    for name, ref in refs.items():
        info = infos.get(name)
        if name not in maskable or info is None or info.kind not in _MASKED_KINDS:
            continue
        keep = keeps.get(name, {})
        layer = ref.layer
        _swap(layer)
        if info.kind == "batchnorm":
            vec = keep.get("channel")
            if vec is not None:
                _channel_mask(layer, vec if bn else np.ones_like(vec))
            continue
        for pname, (shape, roles) in info.params.items():
            mask = weight_mask(shape, roles, keep, info.groups)
            attr = _attr_of(layer, _variable(layer, pname))
            _set(layer, "_fp_weight_masks", attr, mask)


def _channel_mask(layer: Any, vec: np.ndarray) -> None:
    """Zero the pruned outputs of a per-channel layer (BatchNorm, PReLU)."""
    _set(layer, "_fp_channel_tables", "out", vec.astype(np.float32))
    layer.__dict__["_fp_channel_mask"] = (layer.__dict__["_fp_channel_tables"]["out"],
                                          _channel_axis(layer))  # fmt: skip


def _channel_axis(layer: Any) -> int:
    axis = getattr(layer, "axis", -1)
    return int(axis[0] if isinstance(axis, (list, tuple)) else axis)


def weight_mask_of(layer: Any, variable: str) -> np.ndarray | None:
    """The mask of ``layer``'s variable ``variable`` (``None`` if it has none)."""
    attr = _attr_of(layer, _variable(layer, variable))
    mask = layer.__dict__.get("_fp_weight_masks", {}).get(attr)
    return None if mask is None else np.asarray(mask.numpy())


def masked_weights(layer: Any) -> dict[str, np.ndarray]:
    """The layer's variables by name with their masks multiplied in (as numpy)."""
    out = {v.name: np.asarray(v.numpy()) for v in layer.weights}
    if not is_masked(layer):
        return out
    by_attr = {attr: name for name in out
               for attr in [_attr_of(layer, _variable(layer, name))]}  # fmt: skip
    for attr, mask in layer.__dict__.get("_fp_weight_masks", {}).items():
        name = by_attr[attr]
        out[name] = np.where(mask.numpy() != 0, out[name], 0).astype(out[name].dtype)
    channel = layer.__dict__.get("_fp_channel_mask")
    if channel is not None:
        vec = channel[0].numpy()
        # BatchNorm: zero scale and shift give zero outputs, and neutral statistics keep
        # a NaN or inf of a pruned channel out of them
        for key, fill in (("gamma", 0), ("beta", 0), ("moving_mean", 0), ("moving_variance", 1)):
            if key in out and out[key].shape[-1] == vec.size:
                out[key] = np.where(vec != 0, out[key], fill).astype(out[key].dtype)
    return out


def recreate_masks(refs: Mapping[str, LayerRef]) -> None:
    """Create every mask variable again under the current distribution strategy."""
    for layer in {id(r.layer): r.layer for r in refs.values()}.values():
        for key in ("_fp_weight_masks", "_fp_channel_tables"):
            table = layer.__dict__.get(key, {})
            for attr, old in list(table.items()):
                value = old.numpy()
                del table[attr]
                _set(layer, key, attr, value)
        if "_fp_channel_mask" in layer.__dict__:
            axis = layer.__dict__["_fp_channel_mask"][1]
            layer.__dict__["_fp_channel_mask"] = (layer.__dict__["_fp_channel_tables"]["out"], axis)
