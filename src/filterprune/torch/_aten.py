"""The ATen op table: which core rule each op of a torch.export graph uses.

torch.export records ATen overloads (``aten.view.default``) with positional arguments;
builders read them by the names in the op's schema, so one builder serves every
overload. Layers (``aten.conv2d``, ``aten.batch_norm``) are in
:data:`filterprune.torch._ops.FUNCTIONAL`; anything missing here stops the channels
that reach it, with its name as the reason. Adding an op is one entry.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from ._ops import (
    adaptive_spec,
    decomposes_pointwise,
    joined_parts,
    movedim_spec,
    pad_spec,
    reshape_as_spec,
    spatial_spec,
    unfold_spec,
    unpool_spec,
)

__all__ = ["ATEN_RULES", "aten_rule", "named_args"]

Spec = tuple[str, dict[str, Any]]
aten = torch.ops.aten


def named_args(node: fx.Node) -> dict[str, Any]:
    """The node's arguments by their names in the op's schema."""
    schema = getattr(node.target, "_schema", None)
    names = [a.name for a in schema.arguments] if schema is not None else []
    return {**dict(zip(names, node.args, strict=False)), **node.kwargs}


def _dim(value: Any, ndim: int) -> int:
    return int(value) % max(ndim, 1)


def _identity(node: fx.Node, shape) -> Spec:
    return "identity", {}


def _elementwise(node: fx.Node, shape) -> Spec:
    return "elementwise", {}


def _reshape(node: fx.Node, shape) -> Spec:
    """Sizes in an exported graph are literals whatever the code computed them from, so
    every size but ``-1`` counts as fixed in code (safe: channels there stay)."""
    args = named_args(node)
    size = args.get("size", args.get("shape"))
    return "reshape", {"fixed_dims": [i for i, a in enumerate(size) if a != -1], "why": _FIXED}


# what a held reshape says: the code may read its sizes from the tensor, torch.export fixed them
_FIXED = ("reshape sizes are numbers in the torch.export graph (read in forward or written "
          "in code; see the capture notes for why torch.fx could not trace the model)")


def _free_reshape(node: fx.Node, shape) -> Spec:
    return "reshape", {}


def _unflatten(node: fx.Node, shape) -> Spec:
    args = named_args(node)
    dim = _dim(args["dim"], len(shape))
    return "reshape", {"fixed_dims": [dim + i for i, a in enumerate(args["sizes"]) if a != -1],
                       "why": _FIXED}


def _permute(node: fx.Node, shape) -> Spec:
    return "permute", {"perm": [_dim(d, len(shape)) for d in named_args(node)["dims"]]}


def _swap(node: fx.Node, shape) -> Spec:
    args = named_args(node)
    keys = ("dim0", "dim1") if "dim0" in args else ("axis0", "axis1")
    a, b = (_dim(args[k], len(shape)) for k in keys)
    perm = list(range(len(shape)))
    perm[a], perm[b] = perm[b], perm[a]
    return "permute", {"perm": perm}


def _t(node: fx.Node, shape) -> Spec:
    return "permute", {"perm": [1, 0] if len(shape) == 2 else [0]}


def _cat(node: fx.Node, shape) -> Spec:
    args = named_args(node)
    return "concat", {"axis": int(args.get("dim", 0)), **joined_parts(args.get("tensors"))}


def _stack(node: fx.Node, shape) -> Spec:
    args = named_args(node)
    return "stack", {"axis": int(args.get("dim", 0)), **joined_parts(args.get("tensors"))}


def _split(node: fx.Node, shape) -> Spec:
    args = named_args(node)
    equal = node.target in (aten.chunk.default, aten.tensor_split.sections)
    return "split", {"axis": int(args.get("dim", 0)), "equal": equal}


def _unbind(node: fx.Node, shape) -> Spec:
    return "split", {"axis": int(named_args(node).get("dim", 0)), "equal": False,
                     "squeeze": True}  # fmt: skip


def _reduce(node: fx.Node, shape, default: tuple[int, ...] | None = None) -> Spec:
    args = named_args(node)
    dims = args.get("dim", default)
    if dims is None or dims == []:
        dims = list(range(len(shape)))
    elif isinstance(dims, int):
        dims = [dims]
    return "reduce", {"dims": list(dims), "keepdim": bool(args.get("keepdim", False))}


def _renorm(node: fx.Node, shape) -> Spec:
    """Each slice along ``dim`` scaled by its norm over every other axis."""
    dim = int(named_args(node)["dim"]) % len(shape)
    return "along", {"dims": [a for a in range(len(shape)) if a != dim]}


def _complex_view(node: fx.Node, shape) -> Spec:
    """The last axis (real and imaginary parts) becomes the dtype: dropped as a reduction
    over it would drop it."""
    return "reduce", {"dims": [-1], "keepdim": False}


def _kthvalue(node: fx.Node, shape) -> Spec:
    args = named_args(node)  # over the last axis by default
    return "reduce", {"dims": [int(args.get("dim", -1))], "keepdim": bool(args.get("keepdim",
                                                                                  False))}


def _along(node: fx.Node, shape) -> Spec:
    return "along", {"dims": [int(named_args(node).get("dim", -1))]}


def _flip(node: fx.Node, shape) -> Spec:
    return "along", {"dims": [_dim(d, len(shape)) for d in named_args(node)["dims"]]}


def _movedim(node: fx.Node, shape) -> Spec:
    args = named_args(node)
    return movedim_spec(args["source"], args["destination"], len(shape))


def _tile(node: fx.Node, shape) -> Spec:
    return "tile", {"reps": list(named_args(node)["dims"])}


def _roll(node: fx.Node, shape) -> Spec:
    dims = named_args(node).get("dims")
    if not dims:
        return "stop", {"reason": "roll over a flattened tensor"}
    return "along", {"dims": [dims] if isinstance(dims, int) else list(dims)}


def _pad(node: fx.Node, shape) -> Spec:
    args = named_args(node)
    pad = args.get("pad", args.get("padding"))
    name = node.target.name()
    mode = args.get("mode", "constant") if "constant" in name or name == "aten::pad" else name
    return pad_spec(pad, len(shape), mode)


def _expand(node: fx.Node, shape) -> Spec:
    return "expand", {}


def _repeat(node: fx.Node, shape) -> Spec:
    return "tile", {"reps": list(named_args(node)["repeats"])}


def _repeat_interleave(node: fx.Node, shape) -> Spec:
    args = named_args(node)
    repeats, dim = args.get("repeats"), args.get("dim")
    if not isinstance(repeats, int) or dim is None:
        return "stop", {"reason": "repeat_interleave by a tensor or of the flattened tensor"}
    return ("identity", {}) if repeats == 1 else ("along", {"dims": [_dim(dim, len(shape))]})


def _slice(node: fx.Node, shape) -> Spec:
    args = named_args(node)
    dim = _dim(args.get("dim", 0), len(shape))
    if node.target is aten.narrow.default:
        start = int(args["start"])
        start = start + shape[dim] if start < 0 else start  # from the end, as torch counts
        cut = slice(start, start + int(args["length"]))
    else:
        cut = slice(args.get("start"), args.get("end"), args.get("step", 1))
    return "index", {"index": (slice(None),) * dim + (cut,)}


def _select(node: fx.Node, shape) -> Spec:
    args = named_args(node)
    dim = _dim(args["dim"], len(shape))
    return "index", {"index": (slice(None),) * dim + (int(args["index"]),)}


def _layer_norm(node: fx.Node, shape) -> Spec:
    return "layernorm", {"normalized_ndim": len(named_args(node)["normalized_shape"])}


def _group_norm(node: fx.Node, shape) -> Spec:
    groups = named_args(node).get("num_groups")
    return "groupnorm", {"groups": groups} if isinstance(groups, int) else {}


def _pixel_shuffle(node: fx.Node, shape) -> Spec:
    args = named_args(node)
    inverse = "downscale_factor" in args
    factor = args["downscale_factor" if inverse else "upscale_factor"]
    return "pixel_shuffle", {"factor": int(factor), "inverse": inverse}


def _glu(node: fx.Node, shape) -> Spec:
    return "glu", {"axis": int(named_args(node).get("dim", -1))}


def _grid_sample(node: fx.Node, shape) -> Spec:
    return "sample", {}


def _index_put(node: fx.Node, shape) -> Spec:
    """``x[i, j] = v``: index tensors over the leading axes, or one index tensor after
    axes not indexed (PointPillars' ``canvas[:, idx] = pillars``: core ``put`` along that
    axis); other mixes of ``None`` and index tensors are not read (the channels stay)."""
    args = named_args(node)
    indices = list(args["indices"])
    if any(i is None for i in indices):
        at = [k for k, i in enumerate(indices) if i is not None]
        val = indices[at[0]].meta.get("val") if len(at) == 1 and isinstance(
            indices[at[0]], fx.Node) else None  # fmt: skip
        if val is None or val.dtype == torch.bool or val.dim() != 1:
            return "stop", {"reason": "index_put with an axis not indexed before one that is"}
        return "put", {"self": args["self"].name, "values": args["values"].name, "axis": at[0]}
    vals = [i.meta.get("val") for i in indices if isinstance(i, fx.Node)]
    if len(vals) != len(indices) or any(v is None or v.dtype == torch.bool or v.dim() != 1
                                        for v in vals):  # fmt: skip
        return "stop", {"reason": "index_put with a mask or multi-axis index tensors"}
    return "put", {"self": args["self"].name, "values": args["values"].name,
                   "indexed": len(indices)}  # fmt: skip


def _index_add(node: fx.Node, shape) -> Spec:
    """``index_add``, ``index_copy``, ``index_reduce``: ``source`` rows land in ``self``
    along ``dim``, the other axes line up."""
    args = named_args(node)
    return "put", {"self": args["self"].name, "values": args["source"].name,
                   "axis": int(args["dim"])}  # fmt: skip


def _index(node: fx.Node, shape) -> Spec:
    """``x[None, None, idx]`` (``index.Tensor``; None for an axis not indexed) and
    ``index_select``: entries picked along the indexed axes (integer index tensors), the
    other axes pass through (core rule ``gather``)."""
    args = named_args(node)
    if "dim" in args:
        return "gather", {"picked": [int(args["dim"])]}
    picked = [axis for axis, i in enumerate(args["indices"]) if i is not None]
    vals = [i.meta.get("val") for i in args["indices"] if isinstance(i, fx.Node)]
    if len(vals) != len(picked) or any(v is None or v.dtype == torch.bool
                                       or v.is_floating_point() for v in vals):  # fmt: skip
        return "stop", {"reason": "index with a mask"}
    return "gather", {"picked": picked}


def _channel_shuffle(node: fx.Node, shape) -> Spec:
    return "channel_shuffle", {"groups": int(named_args(node)["groups"])}


def _ops(*names: str, namespace: Any = aten, inplace: bool = False) -> list[Any]:
    """The overloads ``"relu.default"`` ... that this torch build (or ``namespace``) has;
    with ``inplace``, each one's in-place form too (``relu6_.default``), whose output's
    channels are its input's as well."""
    found = []
    for name in names:
        packet, _, overload = name.partition(".")
        for variant in (packet, f"{packet}_") if inplace else (packet,):
            op = getattr(getattr(namespace, variant, None), overload or "default", None)
            if op is not None and op not in found:
                found.append(op)
    return found


def _torchvision_ops(*names: str) -> list[Any]:
    """torchvision's operators (``torch.ops.torchvision.roi_align``) where it is installed."""
    try:
        import torchvision  # noqa: F401 - registers torch.ops.torchvision
    except ImportError:
        return []
    return _ops(*names, namespace=torch.ops.torchvision)


_IDENTITY = _ops(
    "relu.default", "relu_.default", "relu6.default", "gelu.default", "gelu_.default",
    "silu.default", "silu_.default", "hardswish.default", "hardswish_.default",
    "hardsigmoid.default", "hardsigmoid_.default", "sigmoid.default", "sigmoid_.default",
    "tanh.default", "tanh_.default", "leaky_relu.default", "leaky_relu_.default",
    "elu.default", "elu_.default", "selu.default", "celu.default", "mish.default",
    "mish_.default", "softplus.default", "hardtanh.default", "hardtanh_.default",
    "clamp.default", "clamp_.default", "clamp_min.default", "clamp_max.default",
    "exp.default", "abs.default", "neg.default", "sqrt.default", "rsqrt.default", "log.default",
    "log1p.default", "log2.default", "expm1.default", "floor.default", "ceil.default",
    "round.default", "nan_to_num.default", "logit.default", "atan.default",
    "erf.default", "sign.default", "reciprocal.default", "square.default", "sin.default",
    "cos.default", "pow.Tensor_Scalar", "logical_not.default", "bitwise_not.default",
    "isnan.default", "dropout.default", "dropout_.default", "feature_dropout.default",
    "alpha_dropout.default", "native_dropout.default", "feature_dropout_.default",
    "feature_alpha_dropout.default", "feature_alpha_dropout_.default", "alpha_dropout_.default",
    "contiguous.default", "clone.default", "detach.default", "detach_.default",
    "alias.default", "to.dtype", "to.device", "to.dtype_layout", "_to_copy.default",
    "type_as.default", "lift_fresh_copy.default", "float.default",
    "add.Scalar", "sub.Scalar", "mul.Scalar", "div.Scalar", "rsub.Scalar", "add_.Scalar",
    "mul_.Scalar", "ge.Scalar", "gt.Scalar", "le.Scalar", "lt.Scalar", "eq.Scalar",
    "ne.Scalar", "remainder.Scalar", "floor_divide.Scalar", "fill_.Scalar",
    "zeros_like.default", "ones_like.default", "full_like.default", "empty_like.default",
    "rand_like.default", "randn_like.default", "threshold.default", "rrelu.default",
    "rrelu_with_noise.default", "hardshrink.default", "softshrink.default", "trunc.default",
    "frac.default", "tan.default", "sinh.default", "cosh.default", "asinh.default",
    "exp2.default", "log10.default", "sgn.default",
    inplace=True,
)  # fmt: skip
_ELEMENTWISE = _ops(
    "add.Tensor", "add_.Tensor", "sub.Tensor", "sub_.Tensor", "mul.Tensor", "mul_.Tensor",
    "div.Tensor", "div_.Tensor", "div.Tensor_mode", "rsub.Tensor", "maximum.default",
    "minimum.default", "pow.Tensor_Tensor", "where.self", "masked_fill.Tensor",
    "masked_fill_.Scalar", "addcmul.default", "lerp.Scalar", "eq.Tensor", "ne.Tensor",
    "gt.Tensor", "ge.Tensor", "lt.Tensor", "le.Tensor", "logical_and.default",
    "logical_or.default", "bitwise_and.Tensor", "bitwise_or.Tensor", "__and__.Tensor",
    "__or__.Tensor", "remainder.Tensor", "floor_divide.default", "copy_.default",
    "atan2.default", "masked_fill.Scalar", "clamp.Tensor", "clamp_min.Tensor",
    "clamp_max.Tensor", "clip.Tensor", "expand_as.default", "lerp.Tensor", "where.ScalarOther",
    "where.ScalarSelf", "fmax.default", "fmin.default", "hypot.default", "logaddexp.default",
    "addcdiv.default", "logical_xor.default", "fill.Tensor",
    inplace=True,
)  # fmt: skip


# pooling and resizing over the last 1, 2 or 3 axes, the count in the name
_SPATIAL = _ops(
    "max_pool1d.default", "max_pool2d.default", "max_pool3d.default",
    "max_pool2d_with_indices.default", "max_pool3d_with_indices.default", "avg_pool1d.default",
    "avg_pool2d.default", "avg_pool3d.default", "adaptive_avg_pool1d.default",
    "adaptive_avg_pool2d.default", "adaptive_avg_pool3d.default", "adaptive_max_pool1d.default",
    "adaptive_max_pool2d.default", "adaptive_max_pool3d.default", "upsample_nearest1d.vec",
    "upsample_nearest2d.vec", "upsample_nearest3d.vec", "upsample_bilinear2d.vec",
    "upsample_bicubic2d.vec", "upsample_linear1d.vec", "upsample_trilinear3d.vec",
    "_upsample_nearest_exact1d.vec", "_upsample_nearest_exact2d.vec",
    "_upsample_nearest_exact3d.vec", "_upsample_bilinear2d_aa.vec", "_upsample_bicubic2d_aa.vec",
)  # fmt: skip


def _spatial(node: fx.Node, shape) -> Spec:
    axes = int(re.search(r"(\d)d", node.target.name()).group(1))
    if "adaptive" in node.target.name():  # the sizes are numbers here, None or not: an
        # axis kept at its size is taken as free, and the strip probe of an exported
        # capture holds the cut where the number was written in the code
        val = node.meta.get("val")
        out = getattr(val[0] if isinstance(val, (list, tuple)) else val, "shape", None)
        in_shape = shape[0] if isinstance(shape, list) else shape
        kept = [out is not None and len(out) == len(in_shape) and out[d] == in_shape[d]
                for d in range(len(in_shape) - axes, len(in_shape))]
        return adaptive_spec(axes, len(in_shape), kept)
    return spatial_spec(axes, len(shape[0] if isinstance(shape, list) else shape))


def _unfold(node: fx.Node, shape) -> Spec:
    args = named_args(node)
    return unfold_spec("output_size" not in args, args["kernel_size"], len(shape))


def _unpool(node: fx.Node, shape) -> Spec:
    return unpool_spec(int(re.search(r"(\d)d", node.target.name()).group(1)))


def _einsum(node: fx.Node, shape) -> Spec:
    args = named_args(node)
    return "einsum", {"equation": args["equation"], "operands": [t.name for t in args["tensors"]]}


def _matmul(node: fx.Node, shape) -> Spec:
    """``mm``, ``bmm``, ``matmul``: the einsum ``...ij,...jk->...ik`` (batch axes
    broadcast); a vector operand is not read."""
    a, b = node.args[:2]
    ranks = [getattr(n.meta.get("val"), "ndim", 0) if isinstance(n, fx.Node) else 0
             for n in (a, b)]  # fmt: skip
    if min(ranks) < 2:
        return "stop", {"reason": "a product with a vector: its channels stay whole"}
    return "einsum", {"equation": "...ij,...jk->...ik", "operands": [a.name, b.name]}


def _fft(node: fx.Node, shape) -> Spec:
    """``fft_*``: each channel transformed alone unless the channel axis is transformed
    (``fftn``/``rfftn`` without ``dim`` transform every axis)."""
    schema = getattr(node.target, "_schema", None)
    default = next((a.default_value for a in getattr(schema, "arguments", ()) if a.name == "dim"),
                   None)  # fmt: skip
    dims = named_args(node).get("dim", default)
    if dims is None:
        return "stop", {"reason": "an FFT over every axis, channels included"}
    return "along", {"dims": [dims] if isinstance(dims, int) else list(dims)}


def _table(pairs: list[tuple[list[Any], Callable[..., Spec]]]) -> dict[Any, Callable]:
    return {op: build for ops, build in pairs for op in ops}


ATEN_RULES: dict[Any, Callable[[fx.Node, Any], Spec]] = _table([
    (_IDENTITY, _identity),
    (_SPATIAL, _spatial),
    (_ops("max_unpool2d.default", "max_unpool3d.default"), _unpool),
    (_ELEMENTWISE, _elementwise),
    (_ops("view.default", "reshape.default", "_unsafe_view.default"), _reshape),
    (_ops("view_as.default", "reshape_as.default"), reshape_as_spec),
    (_ops("flatten.using_ints", "squeeze.default", "squeeze.dim", "squeeze.dims",
          "unsqueeze.default", "unsqueeze_.default", "squeeze_.dim"), _free_reshape),
    (_ops("unflatten.int"), _unflatten),
    (_ops("permute.default"), _permute),
    (_ops("transpose.int", "swapaxes.default"), _swap),
    (_ops("t.default"), _t),
    (_ops("cat.default", "concat.default", "concatenate.default"), _cat),
    (_ops("stack.default"), _stack),
    (_ops("split.Tensor", "split_with_sizes.default", "chunk.default", "tensor_split.sections",
          "tensor_split.indices"), _split),
    (_ops("unbind.int"), _unbind),
    (_ops("mean.dim", "mean.default", "sum.dim_IntList", "sum.default", "amax.default",
          "amin.default", "max.dim", "min.dim", "var.correction", "std.correction",
          "var_mean.correction", "var_mean.dim", "std_mean.correction", "std_mean.dim",
          "logsumexp.default", "special_logsumexp.default",
          "linalg_vector_norm.default",
          "var.dim", "std.dim", "prod.dim_int",
          "norm.ScalarOpt_dim", "median.dim", "nanmedian.dim", "argmax.default",
          "argmin.default", "max.default", "min.default", "median.default",
          "quantile.scalar", "nanquantile.scalar", "linalg_norm.default",
          "linalg_norm.ord_str"), _reduce),
    (_ops("linalg_matrix_norm.default", "linalg_matrix_norm.str_ord"),
     functools.partial(_reduce, default=(-2, -1))),
    (_ops("renorm.default"), _renorm),
    (_ops("trapezoid.dx", "trapz.dx"), lambda node, shape: ("reduce", {
        "dims": [int(named_args(node).get("dim", -1))], "keepdim": False})),
    (_ops("cumulative_trapezoid.dx"), _along),
    (_ops("view_as_complex.default"), _complex_view),
    (_ops("real.default", "imag.default"), _identity),
    (_ops(*(f"fft_{k}.default" for k in ("fft", "ifft", "rfft", "irfft", "hfft", "ihfft", "fft2",
                                          "ifft2", "rfft2", "irfft2", "fftn", "ifftn", "rfftn",
                                          "irfftn"))), _fft),
    (_ops("complex.default"), _elementwise),
    (_ops("kthvalue.default"), _kthvalue),
    (_ops("sort.default", "sort.stable", "topk.default", "cummax.default", "cummin.default"),
     _along),
    (_ops("softmax.int", "_softmax.default", "log_softmax.int", "_log_softmax.default",
          "special_softmax.default", "special_log_softmax.default", "cumsum.default",
          "cumprod.default", "logcumsumexp.default"), _along),
    (_ops("roll.default"), _roll),
    (_ops("flip.default"), _flip),
    (_ops("movedim.int", "movedim.intlist"), _movedim),
    (_ops("tile.default"), _tile),
    (_ops("pad.default", "constant_pad_nd.default", "reflection_pad1d.default",
          "reflection_pad2d.default", "replication_pad1d.default",
          "replication_pad2d.default"), _pad),
    (_ops("expand.default"), _expand),
    (_ops("repeat.default"), _repeat),
    (_ops("repeat_interleave.self_int"), _repeat_interleave),
    (_ops("slice.Tensor", "narrow.default"), _slice),
    (_ops("select.int"), _select),
    (_ops("layer_norm.default", "rms_norm.default"), _layer_norm),
    (_ops("group_norm.default"), _group_norm),
    (_ops("pixel_shuffle.default", "pixel_unshuffle.default"), _pixel_shuffle),
    (_ops("im2col.default", "col2im.default"), _unfold),
    (_ops("channel_shuffle.default", "native_channel_shuffle.default"), _channel_shuffle),
    (_ops("glu.default"), _glu),
    (_ops("grid_sampler.default", "grid_sampler_2d.default", "grid_sampler_3d.default"),
     _grid_sample),
    (_ops("index_put.default", "index_put_.default"), _index_put),
    (_ops("index_add.default", "index_add_.default", "index_copy.default",
          "index_copy_.default", "index_reduce.default", "index_reduce_.default"), _index_add),
    (_ops("index.Tensor", "index_select.default"), _index),
    (_torchvision_ops("roi_align.default", "roi_pool.default", "ps_roi_align.default"),
     _grid_sample),
    (_ops("einsum.default"), _einsum),
    (_ops("mm.default", "bmm.default", "matmul.default"), _matmul),
])  # fmt: skip


def aten_rule(op: Any) -> Callable[[fx.Node, Any], Spec] | None:
    """The rule of an ATen op: its entry in :data:`ATEN_RULES`, else the elementwise rule
    for an op torch tags pointwise that returns one tensor (``max.other``, ``fmod``,
    ``xlogy``: each output entry reads the same entry of each broadcast input)."""
    found = ATEN_RULES.get(op)
    if found is not None or not _pointwise(op):
        return found
    schema = op._schema
    one = len(schema.returns) == 1 and str(schema.returns[0].type) == "Tensor"
    # in place (``xlogy_``) writes its first input, as the rule reads it; ``out=`` forms
    # write another tensor (export does not record them)
    in_place = schema.name.endswith("_") and "out" not in op._overloadname
    return _elementwise if one and (in_place or not schema.is_mutable) else None


def _pointwise(op: Any) -> bool:
    """Tagged pointwise, a composite of pointwise ops (``special_ndtr``), or the in-place
    form (``copysign_``, which torch leaves untagged) of an op that is."""
    if torch.Tag.pointwise in getattr(op, "tags", ()) or decomposes_pointwise(op):
        return True
    name = getattr(getattr(op, "_schema", None), "name", "").removeprefix("aten::")
    functional = getattr(getattr(torch.ops.aten, name[:-1], None), op._overloadname, None) \
        if name.endswith("_") else None  # fmt: skip
    return functional is not None and torch.Tag.pointwise in functional.tags
