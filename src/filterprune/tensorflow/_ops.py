"""The Keras op table: which core rule each layer class and ``keras.ops`` operation uses.

Adding support for a layer is one entry here. A builder receives the layer (or
operation), the core name of its weights, its input shapes and its output shape, all
with the batch axis, and returns the :class:`Step` list the capture emits: one step
for most layers, two for a separable convolution (depthwise, then pointwise) or a
channels-first ``Flatten`` (transpose, then reshape). Anything without an entry is a
``stop`` with the reason, so unknown layers are never pruned through.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from keras import activations, layers

from ..core.graph import LayerInfo
from ..core.rules import einsum_subscripts
from ._slices import equal_parts

__all__ = ["Step", "LAYER_RULES", "IDENTITY_LAYERS", "layer_steps", "op_steps"]

Shape = tuple[int, ...]


@dataclass
class Step:
    """One core node emitted for a Keras call.

    Attributes:
        kind: Core rule kind.
        attrs: Rule attributes.
        info: Facts of the weighted (pseudo) layer this step uses, if any.
        shape: Output shape, when it differs from the Keras output (an inner step).
        suffix: Appended to the node and layer names (``"/depthwise"``).
        variables: Keras variable names this step's layer owns (for masks and cuts).
        constants: Shapes of the constant operands of a ``keras.ops`` call (each a core
            ``param`` no layer owns: the channels it varies along stay whole).
        label: Added to the call's label in reasons (``"activation softmax"``).
    """

    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    info: LayerInfo | None = None
    shape: Shape | None = None
    suffix: str = ""
    variables: tuple[str, ...] = ()
    constants: tuple[tuple[int, ...], ...] = ()
    label: str = ""


def _names(cls_names: str) -> tuple[type, ...]:
    return tuple(getattr(layers, n) for n in cls_names.split() if hasattr(layers, n))


def _var_shapes(layer: Any) -> dict[str, Shape]:
    return {v.name: tuple(int(d) for d in v.shape) for v in layer.weights}


def _axis(layer: Any) -> int:
    return -1 if getattr(layer, "data_format", "channels_last") == "channels_last" else 1


def _spatial(shape: Shape, axis: int) -> Shape:
    return shape[1:-1] if axis == -1 else shape[2:]


_ELEMENTWISE = [getattr(activations, n) for n in (
    "celu elu exponential gelu hard_shrink hard_sigmoid hard_silu hard_tanh leaky_relu linear "
    "log_sigmoid mish relu relu6 selu sigmoid silu soft_shrink softplus softsign sparse_plus "
    "sparse_sigmoid squareplus tanh tanh_shrink threshold").split() if hasattr(activations, n)]
_ALONG_AXIS = [activations.softmax, activations.log_softmax]


def _per_channel(fn: Callable, shape: Shape, axes: list[int]) -> bool:
    """Whether ``fn`` maps each entry along every axis of ``axes`` alone, alike at every
    position: tried on a random tensor of the layer's output ``shape`` (batch 2), its
    output has that shape, and two picks along an axis come out as the same entries of
    the whole output: entries 1 and 2 (a function of the largest entries, sparsemax,
    differs) and all but the first in reverse order (one that treats entries by position
    differs)."""
    shape = (2, *shape[1:])
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    try:
        y = np.asarray(fn(x))
        if y.shape != x.shape:
            return False
        for axis in axes:
            for picked in (np.arange(1, min(3, shape[axis])), np.arange(shape[axis] - 1, 0, -1)):
                if picked.size and not np.allclose(np.asarray(fn(x.take(picked, axis))),
                                                   y.take(picked, axis), rtol=1e-6, atol=1e-6,
                                                   equal_nan=True):  # fmt: skip
                    return False
    except Exception:  # noqa: BLE001 - a function that fails on a plain array: not known
        return False
    return True


def _activation_steps(layer: Any, axis: int | None, out: Shape) -> list[Step]:
    """The step of a layer's ``activation`` on its output (of shape ``out``, channels on
    ``axis``; ``None``: on any axis): none for Keras' elementwise ones or one that
    :func:`_per_channel` finds maps each channel alone (``tf.nn.relu``), ``along`` the last
    axis for softmax (the channels, unless channels first); any other (``glu`` halves the
    axis, ``sparsemax``) stops."""
    fn = getattr(layer, "activation", None)
    if fn is None or any(fn is f for f in _ELEMENTWISE):
        return []
    if any(fn is f for f in _ALONG_AXIS):
        return [Step("along", {"dims": [len(out) - 1]}, label=f"activation {fn.__name__}")]
    # an Activation layer (axis None) may see its channels on any axis
    axes = range(1, len(out)) if axis is None else [axis % len(out)]
    if _per_channel(fn, out, list(axes)):  # tf.nn.relu, keras.ops.silu, the user's own
        return []
    label = getattr(fn, "__name__", type(fn).__name__)
    return [Step("stop", {"reason": f"activation {label} is not known to act on each channel "
                                    "alone"})]  # fmt: skip


# -- weighted layers ---------------------------------------------------------------------
def _conv(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    axis, rank = _axis(layer), layer.rank
    transposed = isinstance(layer, _CONV_T)
    shapes = _var_shapes(layer)
    cin, cout = ins[0][axis], out[axis]
    roles = (None,) * rank + (("out", "in") if transposed else ("in", "out"))
    params = {"kernel": (shapes["kernel"], roles)}
    if "bias" in shapes:
        params["bias"] = (shapes["bias"], ("out",))
    groups = int(getattr(layer, "groups", 1))
    stride = 1 if transposed else max(layer.strides)  # a transposed conv's upsamples
    info = LayerInfo(name, "conv", params, groups=groups, stride=stride, weight="kernel")
    positions = math.prod(_spatial(ins[0] if transposed else out, axis))
    attrs = {"in_channels": cin, "out_channels": cout, "groups": groups, "channel_axis": axis,
             "positions": positions}  # fmt: skip
    steps = [Step("conv", attrs, info, variables=tuple(params))]
    return steps + _activation_steps(layer, axis, out)


def _depthwise(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    axis, rank = _axis(layer), layer.rank
    shapes = _var_shapes(layer)
    cin = ins[0][axis]
    params = {"kernel": (shapes["kernel"], (None,) * rank + ("in", None))}
    if "bias" in shapes:
        params["bias"] = (shapes["bias"], ("out",))
    info = LayerInfo(name, "conv", params, groups=cin, stride=max(layer.strides), weight="kernel")
    attrs = {"in_channels": cin, "out_channels": out[axis], "groups": cin, "channel_axis": axis,
             "positions": math.prod(_spatial(out, axis))}  # fmt: skip
    steps = [Step("conv", attrs, info, variables=tuple(params))]
    return steps + _activation_steps(layer, axis, out)


def _separable(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    axis, rank = _axis(layer), layer.rank
    shapes = _var_shapes(layer)
    cin, cout = ins[0][axis], out[axis]
    mid = cin * layer.depth_multiplier
    positions = math.prod(_spatial(out, axis))
    dw_params = {"depthwise_kernel": (shapes["depthwise_kernel"], (None,) * rank + ("in", None))}
    dw_info = LayerInfo(f"{name}/depthwise", "conv", dw_params, groups=cin,
                        stride=max(layer.strides), weight="depthwise_kernel")  # fmt: skip
    mid_shape = list(out)
    mid_shape[axis] = mid
    pw_params = {"pointwise_kernel": (shapes["pointwise_kernel"], (None,) * rank + ("in", "out"))}
    if "bias" in shapes:
        pw_params["bias"] = (shapes["bias"], ("out",))
    pw_info = LayerInfo(name, "conv", pw_params, weight="pointwise_kernel")
    common = {"channel_axis": axis, "positions": positions}
    return [
        Step("conv", {"in_channels": cin, "out_channels": mid, "groups": cin, **common}, dw_info,
             tuple(mid_shape), "/depthwise", ("depthwise_kernel",)),
        Step("conv", {"in_channels": mid, "out_channels": cout, "groups": 1, **common}, pw_info,
             variables=tuple(pw_params)),
    ] + _activation_steps(layer, axis, out)  # fmt: skip


def _dense(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    shapes = _var_shapes(layer)
    params = {"kernel": (shapes["kernel"], ("in", "out"))}
    if "bias" in shapes:
        params["bias"] = (shapes["bias"], ("out",))
    attrs = {"in_features": ins[0][-1], "out_features": out[-1],
             "positions": math.prod(out[1:-1])}  # fmt: skip
    info = LayerInfo(name, "linear", params, weight="kernel")
    steps = [Step("linear", attrs, info, variables=tuple(params))]
    return steps + _activation_steps(layer, -1, out)


def _recurrent(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    """An LSTM, GRU or SimpleRNN over a sequence of features (``(batch, steps, features)``):
    the layers before it are cut with the rows of its input kernel, as with a PyTorch
    ``nn.LSTM``; its state and outputs stay whole (and in float)."""
    shapes = _var_shapes(layer)
    if len(ins[0]) != 3 or "kernel" not in shapes:
        return [Step("stop", {"reason": f"{type(layer).__name__} over this input"})]
    params = {k: (v, ("in", None) if k == "kernel" else (None,) * len(v))
              for k, v in shapes.items()}  # fmt: skip
    info = LayerInfo(name, "recurrent", params)
    attrs = {"ndim": 3, "in_features": ins[0][-1], "positions": ins[0][1]}
    return [Step("recurrent", attrs, info, variables=("kernel",))]


def _batchnorm(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    axis = layer.axis if isinstance(layer.axis, int) else list(layer.axis)
    if isinstance(axis, list):
        if len(axis) != 1:
            return [Step("stop", {"reason": "BatchNormalization over several axes"})]
        axis = axis[0]
    shapes = _var_shapes(layer)
    params = {k: (shapes[k], ("channel",)) for k in ("gamma", "beta") if k in shapes}
    info = LayerInfo(name, "batchnorm", params)
    attrs = {"num_features": ins[0][axis], "channel_axis": axis}
    return [Step("batchnorm", attrs, info, variables=tuple(shapes))]


def _prelu(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    """A slope per channel (last axis) follows the channels; one slope for every entry is
    the same for each. Other slopes may lie along channels first or along space: the
    layer does not say which, so they stay whole."""
    shape = _var_shapes(layer)["alpha"]  # the input's shape less the batch, shared axes 1
    if math.prod(shape) == 1:
        return [Step("identity", {}, LayerInfo(name, "activation",
                                               {"alpha": (shape, (None,) * len(shape))}))]
    if shape[-1] == ins[0][-1]:  # channels last: a slope per channel (and position, unshared)
        roles = (None,) * (len(shape) - 1) + ("channel",)
        info = LayerInfo(name, "batchnorm", {"alpha": (shape, roles)})
        return [Step("batchnorm", {"num_features": shape[-1], "channel_axis": -1}, info,
                     variables=("alpha",))]  # fmt: skip
    info = LayerInfo(name, "opaque", {"alpha": (shape, (None,) * len(shape))})
    return [Step("stop", {"reason": "PReLU whose slope's last axis is not the channels "
                                    "(channels first, or shared over the channels)"}, info)]


def _layernorm(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    ndim = len(ins[0])
    axes = sorted(a % ndim for a in (layer.axis if isinstance(layer.axis, (list, tuple))
                                     else [layer.axis]))  # fmt: skip
    info = LayerInfo(name, "layernorm", {k: (s, (None,) * len(s))
                                         for k, s in _var_shapes(layer).items()})  # fmt: skip
    return [Step("layernorm", {"axes": axes}, info)]


def _rms_norm(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    """Keras multiplies its ``scale`` against the input's last axes whatever ``axis`` is
    (over height and width it runs only where the width equals the channel count)."""
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if len(ins[0]) - 1 not in {a % len(ins[0]) for a in axes}:
        return [Step("stop", {"reason": "Keras scales the last axes whatever its axis, so "
                                        "its scale meets the channels"})]
    return _layernorm(layer, name, ins, out)


def _groupnorm(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    """Whole groups may go; the cut lowers ``groups`` in the rebuilt layer's config."""
    shapes = _var_shapes(layer)
    params = {k: (shapes[k], ("channel",)) for k in ("gamma", "beta") if k in shapes}
    info = LayerInfo(name, "batchnorm", params)
    attrs = {"groups": int(layer.groups), "channel_axis": int(layer.axis), "rewritable": True}
    return [Step("groupnorm", attrs, info, variables=tuple(shapes))]


# -- channel-free layers -----------------------------------------------------------------
def _identity(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    return [Step("identity")]


def _spatial_step(data_format: str | None, ndim: int) -> Step:
    """An op over the axes between the batch and the channels: channels there stay whole."""
    last = (data_format or keras.config.image_data_format()) == "channels_last"
    return Step("along", {"dims": list(range(1, ndim - 1) if last else range(2, ndim))})


def _spatial_layer(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    return [_spatial_step(getattr(layer, "data_format", None), len(ins[0]))]


def _activation(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    return _activation_steps(layer, None, out) or [Step("identity")]


def _softmax(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return [Step("along", {"dims": list(axis)})]


def _unit_norm(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    return _softmax(layer, name, ins, out)


def _global_pool(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    ndim = len(ins[0])
    dims = list(range(1, ndim - 1)) if _axis(layer) == -1 else list(range(2, ndim))
    return [Step("reduce", {"dims": dims, "keepdim": bool(getattr(layer, "keepdims", False))})]


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _constant_free(values: list[Any]) -> bool:
    """Whether every value is absent or a scalar (not a per-channel constant)."""
    return all(v is None or np.size(_numpy(v)) <= 1 for v in values)


def _rescaling(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    if _constant_free([layer.scale, layer.offset]):
        return [Step("identity")]
    return [Step("stop", {"reason": "Rescaling by per-channel constants"})]


def _normalization(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    given = [layer.input_mean, layer.input_variance]  # stats passed in, rebuilt by a strip
    stats = given if given[0] is not None else [layer.mean, layer.variance]
    if _constant_free(stats):
        return [Step("identity")]
    return [Step("stop", {"reason": "Normalization by per-channel statistics"})]


def _elementwise(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    return [Step("elementwise")]


def _concat(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    return [Step("concat", {"axis": int(layer.axis)})]


def _reshape(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    fixed = [i + 1 for i, d in enumerate(layer.target_shape) if d != -1]
    return [Step("reshape", {"fixed_dims": fixed, "rewritable": True})]


def _flatten(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    ndim = len(ins[0])
    if _axis(layer) == 1 and ndim > 2:  # Keras moves channels last before flattening
        perm = [0, *range(2, ndim), 1]
        moved = tuple(ins[0][p] for p in perm)
        return [Step("permute", {"perm": perm}, shape=moved, suffix="/transpose"),
                Step("reshape")]  # fmt: skip
    return [Step("reshape")]


def _permute(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    return [Step("permute", {"perm": [0, *(int(d) for d in layer.dims)]})]


_CONV_T = _names("Conv1DTranspose Conv2DTranspose Conv3DTranspose")
IDENTITY_LAYERS = _names(
    "ReLU LeakyReLU ELU Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D "
    "GaussianNoise GaussianDropout AlphaDropout ActivityRegularization Identity Masking "
    "RandomContrast RandomBrightness"
)
# pooling, resizing, padding, cropping: over the axes besides the batch and channels
SPATIAL_LAYERS = _names(
    "MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D AveragePooling2D AveragePooling3D "
    "AdaptiveAveragePooling1D AdaptiveAveragePooling2D AdaptiveAveragePooling3D "
    "AdaptiveMaxPooling1D AdaptiveMaxPooling2D AdaptiveMaxPooling3D "
    "UpSampling1D UpSampling2D UpSampling3D ZeroPadding1D ZeroPadding2D ZeroPadding3D "
    "Cropping1D Cropping2D Cropping3D Resizing CenterCrop RandomCrop RandomFlip RandomRotation "
    "RandomZoom RandomTranslation"
)

def _repeat_vector(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    """``(N, F)`` -> ``(N, n, F)``: the features copied along a new axis."""
    return [Step("expand")]


LAYER_RULES: dict[type, Callable[..., list[Step]]] = {
    **{t: _conv for t in _names("Conv1D Conv2D Conv3D") + _CONV_T},
    **{t: _depthwise for t in _names("DepthwiseConv1D DepthwiseConv2D")},
    **{t: _separable for t in _names("SeparableConv1D SeparableConv2D")},
    layers.Dense: _dense,
    **{t: _recurrent for t in _names("LSTM GRU SimpleRNN")},
    layers.BatchNormalization: _batchnorm,
    layers.PReLU: _prelu,
    layers.LayerNormalization: _layernorm,
    layers.RMSNormalization: _rms_norm,
    layers.GroupNormalization: _groupnorm,
    layers.UnitNormalization: _unit_norm,
    layers.Softmax: _softmax,
    layers.Activation: _activation,
    **{t: _global_pool for t in _names(
        "GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D "
        "GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D")},
    **{t: _elementwise for t in _names("Add Subtract Multiply Average Maximum Minimum")},
    layers.Concatenate: _concat,
    layers.Reshape: _reshape,
    layers.Flatten: _flatten,
    layers.Permute: _permute,
    layers.Rescaling: _rescaling,
    layers.Normalization: _normalization,
    layers.RepeatVector: _repeat_vector,
    **{t: _identity for t in IDENTITY_LAYERS},
    **{t: _spatial_layer for t in SPATIAL_LAYERS},
}  # fmt: skip


def _scaled_add(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    """InceptionResNetV2's ``CustomScaleLayer``: ``x + r * scale``."""
    if _constant_free([layer.scale]):
        return [Step("elementwise")]
    return [Step("stop", {"reason": "CustomScaleLayer with a per-channel scale"})]


def _layer_scale(layer: Any, name: str, ins: list[Shape], out: Shape) -> list[Step]:
    """ConvNeXt's ``LayerScale``: ``x * gamma``, one ``gamma`` per channel (the last axis;
    ``projection_dim`` of them)."""
    (gamma,) = layer.weights  # unnamed: Keras calls it "variable"
    shape = tuple(int(d) for d in gamma.shape)
    if shape != (ins[0][-1],):
        return [Step("stop", {"reason": f"LayerScale of {shape} over an input {ins[0]}"})]
    info = LayerInfo(name, "batchnorm", {gamma.name: (shape, ("channel",))})
    return [Step("batchnorm", {"num_features": shape[0], "channel_axis": -1}, info,
                 variables=(gamma.name,))]  # fmt: skip


def _application_layers() -> dict[type, Callable[..., list[Step]]]:
    """Layers that keras.applications define for themselves (absent in other versions)."""
    try:
        from keras.src.applications.convnext import LayerScale
        from keras.src.applications.inception_resnet_v2 import CustomScaleLayer
    except ImportError:
        return {}
    return {CustomScaleLayer: _scaled_add, LayerScale: _layer_scale}


LAYER_RULES.update(_application_layers())


def layer_steps(layer: Any, name: str, ins: list[Shape], outs: list[Shape]) -> list[Step]:
    """The steps of one layer call; unknown layers stop, with their weights counted whole
    (their matrices at the positions of the first output, as for a module torch cannot
    see into)."""
    cls = type(layer).__dict__.get("_filterprune_base", type(layer))  # a masked layer's own class
    build = LAYER_RULES.get(cls)
    lora = getattr(layer, "lora_enabled", False)  # its kernel is a sum of three variables
    if build is not None and not lora and len(outs) == 1:
        return build(layer, name, ins, outs[0])
    label = cls.__name__
    params = {}
    for i, v in enumerate(layer.weights):  # no ":" in a key: that marks a quantizer's scale
        key = f"{i}.{v.name}".replace(":", "_")  # (a SavedModel's variables are "kernel:0")
        params[key] = (tuple(int(d) for d in v.shape), (None,) * len(v.shape))
    info = LayerInfo(name, "opaque", params) if params else None
    reason = f"{label} has LoRA enabled" if lora else f"no channel rule for layer {label}"
    if len(outs) > 1:
        reason += " (it has several outputs)"
    attrs = {"reason": reason}
    # an Embedding looks its rows up and multiplies nothing: no FLOPs of a matrix
    if info is not None and isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)):
        attrs["positions"] = _recurrent_positions(layer, ins[0], outs[0])
    elif info is not None and len(outs[0]) > 2 and not isinstance(layer, keras.layers.Embedding):
        attrs["positions"] = math.prod(outs[0][1:-1])  # channels last
    return [Step("stop", attrs, info)]


def _recurrent_positions(layer: Any, x: Shape, out: Shape) -> int:
    """Where a recurrent layer applies its matrices: at every step of its input (axis 1),
    and at every pixel of a step for a ConvLSTM, also when it returns the last step only."""
    pixels = out[2:-1] if getattr(layer, "return_sequences", False) else out[1:-1]
    return int(x[1]) * math.prod(pixels) if len(x) > 2 else 1


# -- keras.ops operations ----------------------------------------------------------------
_OP_IDENTITY = set(
    "Relu Relu6 Sigmoid HardSigmoid Silu Swish HardSilu HardSwish Gelu Elu Selu LeakyRelu "
    "Softplus Softsign Tanh Exp Log Abs Absolute Negative Sqrt Square Clip Cast Mish Erf "
    "Floor Ceil Round Sign Reciprocal Sin Cos Identity StopGradient LogicalNot "
    "Celu HardShrink HardTanh LogSigmoid SoftShrink SparsePlus SparseSigmoid Squareplus "
    "TanhShrink Threshold Cbrt Cosh Sinh Tan Arctan Arcsinh Exp2 Expm1 Log1p Log2 Log10 "
    "Rsqrt Erfc Trunc Fabs NanToNum Copy Isnan Isinf Isfinite Signbit "
    "Arcsin Arccos Arccosh Arctanh Erfinv Sinc Deg2rad Rad2deg Conj Conjugate Real Imag "
    "Angle ZerosLike OnesLike FullLike EmptyLike".split()
)  # each channel on its own: per-entry maps, new tensors of the input's shape
_OP_ELEMENTWISE = set(
    "Add Subtract Multiply Divide TrueDivide Maximum Minimum Power FloorDivide Mod Where "
    "Greater GreaterEqual Less LessEqual Equal NotEqual LogicalAnd LogicalOr LogicalXor "
    "Arctan2 Hypot Logaddexp Logaddexp2 Fmax Fmin Fmod Heaviside DivideNoNan".split()
)
# op.axis; Normalize's p-norm spans its axis: a pruned channel there need not reach it
# as zero (a sigmoid or an added constant on the way), and the stripped model's omits it
_OP_ALONG = set("Flip Roll Cumsum Cumprod Sort Argsort Sparsemax Normalize Diff".split())
_OP_REDUCE = set(
    "Mean Sum Max Min Amax Amin Var Std Prod Argmax Argmin Logsumexp Moments Median Ptp "
    "Quantile Nanmean Nansum Nanmax Nanmin Nanprod Nanstd Nanvar All Any".split()
)  # Moments: mean and variance; Quantile of one q (several add an axis in front)


def _op_axis_list(axis: Any, ndim: int) -> list[int]:
    if axis is None:
        return list(range(ndim))
    return [int(a) for a in (axis if isinstance(axis, (list, tuple)) else [axis])]


def _moved(source: Any, destination: Any, ndim: int) -> list[int]:
    """The input axis at each output axis of ``moveaxis(source, destination)``."""
    source = [int(a) % ndim for a in np.atleast_1d(source)]
    destination = [int(a) % ndim for a in np.atleast_1d(destination)]
    perm = [a for a in range(ndim) if a not in source]
    for dest, src in sorted(zip(destination, source, strict=True)):
        perm.insert(dest, src)
    return perm


def _counted(step: Step, equation: str, operands: list[Any], out: Shape) -> Step:
    """``step`` with the FLOPs of a product whose weight is a constant operand (one with
    two axes longer than 1): its elements once per output entry along the axes it does
    not hold itself, per sample."""
    shapes = [tuple(np.shape(a)) if not hasattr(a, "_keras_history") else tuple(a.shape)
              for a in operands]  # fmt: skip
    weights = [i for i, (a, shape) in enumerate(zip(operands, shapes, strict=True))
               if not hasattr(a, "_keras_history") and sum(d > 1 for d in shape) >= 2]
    if not weights or not out or not out[0]:
        return step
    try:
        subs, letters = einsum_subscripts(equation, [len(shape) for shape in shapes])
    except Exception:  # noqa: BLE001 - an equation the rule cannot read: no FLOPs said
        return step
    held = math.prod(out[letters.index(c)] for c in subs[weights[0]] if c in letters)
    step.attrs.update(positions=max(1, round(math.prod(out) / held / out[0])),
                      weight_elems=math.prod(shapes[weights[0]]))
    return step


def op_steps(op: Any, args: list[Any], ins: list[Shape], out: Any) -> list[Step]:
    """The steps of one ``keras.ops`` operation (no weights)."""
    name = type(op).__name__
    ndim = len(ins[0]) if ins else 0
    if name in _OP_IDENTITY:
        return [Step("identity")]
    if name in ("MaxPool", "AveragePool", "Resize", "CropImages", "PadImages"):
        return [_spatial_step(getattr(op, "data_format", None), ndim)]
    if name in _OP_ELEMENTWISE:
        constants = [np.shape(_numpy(a)) for a in args
                     if a is not None and not hasattr(a, "_keras_history")]  # fmt: skip
        return [Step("elementwise", constants=tuple(c for c in constants if np.prod(c) > 1))]
    if name in ("Flip", "Fliplr", "Flipud"):  # the entries in reverse, as ``h[..., ::-1]``
        axis = {"Fliplr": 1, "Flipud": 0}.get(name, getattr(op, "axis", None))
        axes = range(ndim) if axis is None else _op_axis_list(axis, ndim)
        flipped = {a % ndim for a in axes}
        index = tuple(slice(None, None, -1) if a in flipped else slice(None) for a in range(ndim))
        return [Step("index", {"index": index})]
    if name == "TakeAlongAxis" and op.axis is not None:  # sorted by an argsort of its own
        return [Step("take_along", {"axis": int(op.axis)})]
    if name in ("Softmax", "LogSoftmax"):
        return [Step("along", {"dims": _op_axis_list(op.axis, ndim)})]
    if name in _OP_ALONG:
        axis = op.axis
        if axis is None and name in ("Cumsum", "Cumprod", "Sort"):
            return [Step("stop", {"reason": f"keras.ops {name} over the flattened tensor"})]
        return [Step("along", {"dims": _op_axis_list(axis, ndim)})]  # no axis (flip): all
    if name in ("Repeat", "Take") and op.axis is not None and not any(
            hasattr(a, "_keras_history") for a in args[1:]):  # fmt: skip
        return [Step("along", {"dims": [int(op.axis)]})]  # constant repeats or indices
    if name == "Take" and op.axis is not None:  # indices computed: the other axes pass
        return [Step("gather", {"picked": [int(op.axis)]})]
    if name == "Pad":
        widths = np.broadcast_to(np.asarray(op.pad_width), (ndim, 2)).tolist()
        return [Step("pad", {"widths": widths, "mode": op.mode})]
    if name == "Swapaxes":
        perm = list(range(ndim))
        perm[int(op.axis1)], perm[int(op.axis2)] = perm[int(op.axis2)], perm[int(op.axis1)]
        return [Step("permute", {"perm": perm})]
    if name == "Moveaxis":
        return [Step("permute", {"perm": _moved(op.source, op.destination, ndim)})]
    if name == "Tile":
        return [Step("tile", {"reps": [int(r) for r in np.atleast_1d(op.repeats)]})]
    if name == "Glu":
        return [Step("glu", {"axis": int(op.axis)})]
    if name in ("DepthToSpace", "SpaceToDepth"):  # the depth order of tf.nn (DCR)
        axis = -1 if op.data_format == "channels_last" else 1
        return [Step("pixel_shuffle", {"factor": int(op.block_size), "strided": True,
                                       "inverse": name == "SpaceToDepth",
                                       "channel_axis": axis})]  # fmt: skip
    if name == "Reshape":
        fixed = [i for i, d in enumerate(op.newshape) if d != -1 and i > 0]
        return [Step("reshape", {"fixed_dims": fixed})]
    if name in ("ExpandDims", "Squeeze"):
        return [Step("reshape")]
    if name == "Transpose":
        perm = list(op.axes) if op.axes is not None else list(range(ndim))[::-1]
        return [Step("permute", {"perm": perm})]
    if name == "Concatenate":
        return [Step("concat", {"axis": int(op.axis)})]
    if name in ("Hstack", "Vstack"):  # numpy's: along axis 1 (0 for vectors), along axis 0
        return [Step("concat", {"axis": int(name == "Hstack" and ndim > 1)})]
    if name == "Rot90":
        return [Step("along", {"dims": [int(a) for a in op.axes]})]
    if name == "Slice" and len(args) > 1 and not hasattr(args[1], "_keras_history"):
        start = [int(i) for i in np.asarray(_numpy(args[1])).reshape(-1)]
        index = tuple(slice(b, b + int(n)) for b, n in zip(start, op.shape, strict=True))
        return [Step("index", {"index": index, "computed_axes": list(range(1, ndim)),
                               "computed_reason": "keras.ops slice of channels: its shape is "
                                                  "written in code"})]  # fmt: skip
    if name == "Stack":
        return [Step("stack", {"axis": int(op.axis)})]
    if name == "Split":
        return [Step("split", {"axis": int(op.axis), "sizes": [s[op.axis] for s in out],
                               "equal": isinstance(op.indices_or_sections, int)})]  # fmt: skip
    one_q = name != "Quantile" or len(args) > 1 and not hasattr(args[1], "_keras_history") \
        and np.ndim(_numpy(args[1])) == 0  # fmt: skip
    if name in _OP_REDUCE and one_q:
        axis = op.axes if name == "Moments" else op.axis
        return [Step("reduce", {"dims": _op_axis_list(axis, ndim),
                                "keepdim": bool(getattr(op, "keepdims", False))})]  # fmt: skip
    if name == "TopK":  # values and indices, along the last axis
        return [Step("along", {"dims": [-1]})]
    if name == "Einsum":
        if not all(hasattr(a, "_keras_history") for a in args):
            return [_counted(Step("stop", {"reason": "keras.ops einsum with a constant "
                                           "operand"}), op.subscripts, args, out)]  # fmt: skip
        return [Step("einsum", {"equation": op.subscripts})]
    if name == "Matmul" and not all(hasattr(a, "_keras_history") for a in args[:2]):
        return [_counted(Step("stop", {"reason": "keras.ops matmul with a constant operand"}),
                         "...ij,...jk->...ik", args[:2], out)]  # fmt: skip
    if name in ("Conv", "DepthwiseConv", "SeparableConv"):  # a kernel given as a tensor
        kernels = [tuple(k.shape) for k in (args[1:3] if name == "SeparableConv" else args[1:2])]
        spatial = out[1:-1] if getattr(op, "data_format", None) != "channels_first" else out[2:]
        step = Step("stop", {"reason": f"no channel rule for keras.ops {name}"})
        if kernels and all(isinstance(d, int) for k in kernels for d in k):  # sizes known
            step.attrs.update(positions=math.prod(spatial),
                              weight_elems=sum(math.prod(k) for k in kernels))
        return [step]
    if name == "GetItem" and len(args) > 1:
        key = tuple(args[1]) if isinstance(args[1], list) else args[1]
        parts = equal_parts(key, ins[0])  # bounds the strip rewrites (``h[..., :16]``)
        return [Step("index", {"index": key, **({"equal_parts": parts} if parts else {})})]
    return [Step("stop", {"reason": f"no channel rule for keras.ops {name}"})]
