"""How channels flow through each kind of op: one rule per op kind.

A rule receives the propagation state, the node and the ids of its inputs, and
returns the ids of its output (a tuple for several outputs). It raises
:class:`~filterprune.core.propagation.RuleError` when it cannot follow the
channels; the node's inputs are then kept whole, with the error as the reason.
Frontends map their ops to these kinds; adding an op is one line in a
frontend's table, or one rule here for a new kind of channel behaviour.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .graph import Node
from .propagation import Param, Propagation, RuleError, compress

__all__ = ["register_rule", "get_rule", "list_rules", "RULES", "einsum_subscripts",
           "axis_parts"]

Rule = Callable[[Propagation, Node, list[Any]], Any]
RULES: dict[str, Rule] = {}
INPUT_REASON = "model input"  # why a model input's channels stay whole


def register_rule(name: str) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the rule for op kind ``name``; a name is taken once."""

    def wrap(fn: Rule) -> Rule:
        if name in RULES:
            raise ValueError(f"A rule named {name!r} is already registered.")
        RULES[name] = fn
        return fn

    return wrap


def get_rule(name: str) -> Rule:
    try:
        return RULES[name]
    except KeyError:
        raise KeyError(f"No rule {name!r}. Known rules: {', '.join(sorted(RULES))}.") from None


def list_rules() -> list[str]:
    return sorted(RULES)


# -- helpers -------------------------------------------------------------------------------
def _tensor(s: Propagation, value: Any, node: Node) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Param):
        reason = f"{value.label} is read by {node.label or node.op}"
        for param in (value, *value.also):
            s.hold_param(param.name, reason)
        return s.opaque(reason, weak=True)  # the weight is held; what it meets may say more
    raise RuleError("expects a tensor input")


def _shape(s: Propagation, node: Node, i: int = 0) -> tuple[int, ...]:
    shape = s.graph[node.inputs[i]].shape
    if not isinstance(shape, tuple):
        raise RuleError("input shape is unknown")
    return shape


def _pad(ids: np.ndarray, ndim: int) -> np.ndarray:
    return ids.reshape((1,) * (ndim - ids.ndim) + ids.shape)


def _varies(ids: np.ndarray, axis: int) -> bool:
    return ids.shape[axis] > 1


def _channels(ids: np.ndarray, ndim: int, axis: int, width: int) -> np.ndarray:
    """The 1-d ids along ``axis``; channel ids spread over other axes cannot be followed."""
    ids = _pad(ids, ndim)
    axis %= ndim
    if any(_varies(ids, a) for a in range(ndim) if a != axis):
        raise RuleError("channels are mixed with other axes")
    line = ids.reshape(-1)
    if line.size == 1:
        return np.repeat(line, width)
    if line.size != width:
        raise RuleError(f"expected {width} channels, found {line.size}")
    return line


def _place(line: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis % ndim] = line.size
    return line.reshape(shape)


def _full(s: Propagation, ids: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(s.uf.roots(_pad(ids, len(shape))), shape)


# -- sources and pass-through ------------------------------------------------------------
@register_rule("input")
def _input(s, node, ins):
    return s.opaque(INPUT_REASON)


@register_rule("param")
def _param(s, node, ins):
    target = node.attrs.get("target", node.name)
    info = s.graph.layers.get(target)
    return Param(target, tuple(node.shape or ()), made=bool(node.attrs.get("made")),
                 buffer=info is not None and info.kind == "buffer")


@register_rule("noop")
def _noop(s, node, ins):
    """A value that is not a tensor (a size, a flag)."""
    return None


@register_rule("size")
def _size(s, node, ins):
    """A tensor's size along ``dims`` read in forward and used as a number (a scale, a
    branch, a new tensor's shape): channels on those axes stay whole, since a cut would
    change the number. Sizes that only reshape are the reshape's ``tied_dims``. With
    ``equal_dims``, a second input's sizes along them are tested for equality with the
    first's (:func:`_equal_sizes`)."""
    reason = node.attrs.get("reason", "its size is read in forward")
    if "equal_dims" in node.attrs and all(isinstance(v, np.ndarray) for v in ins):
        return _equal_sizes(s, node, ins, reason)
    read = (node.attrs.get("dims"), node.attrs.get("equal_dims"))
    for at, (value, dims) in enumerate(zip(ins, read, strict=False)):  # one input, or two
        if isinstance(value, Param):
            if _reads_channels(s, value, dims):  # a kernel's size (``w.shape[-1]``) cuts nothing
                s.hold_param(value.name, reason)
        elif isinstance(value, np.ndarray):
            shape = _shape(s, node, at)
            dims = [d % len(shape) for d in (range(len(shape)) if dims is None else dims)]
            s.read_size(_pad(value, len(shape)), dims, reason)
    return None


def _equal_sizes(s: Propagation, node: Node, ins: list, reason: str) -> None:
    """Two tensors' sizes tested for equality in forward (``equal_dims`` of the second
    input against ``dims`` of the first): channel axes of equal widths are tied position
    by position, so a cut keeps the test's answer; a channel axis compared with one of
    another width, or with an axis no cut changes, stays whole."""
    shapes = [_shape(s, node, i) for i in range(2)]
    ids = [_pad(x, len(shape)) for x, shape in zip(ins, shapes, strict=True)]
    for pair in zip(node.attrs["dims"], node.attrs["equal_dims"], strict=True):
        axes = [d % len(shape) for d, shape in zip(pair, shapes, strict=True)]
        varies = [_varies(i, a) for i, a in zip(ids, axes, strict=True)]
        widths = [shape[a] for shape, a in zip(shapes, axes, strict=True)]
        if all(varies) and widths[0] == widths[1]:
            s.uf.union_arrays(*(_channels(i, len(shape), a, w) for i, shape, a, w in zip(
                ids, shapes, axes, widths, strict=True)))  # fmt: skip
            continue
        for i, a, cut in zip(ids, axes, varies, strict=True):
            if cut:
                s.read_size(i, [a], f"{reason} ({widths[0]} against {widths[1]} on the "
                            "sample: a cut could change the answer)")


def _reads_channels(s: Propagation, param: Param, dims: list[int] | None) -> bool:
    """Whether a size read of ``param`` along ``dims`` (all where None) may read an axis a
    cut changes: one of its layer's channel roles, or any axis of a weight of no layer."""
    layer, _, key = param.name.rpartition(".")
    info = s.graph.layers.get(layer)
    if info is None or key not in info.params:
        return True
    roles = info.params[key][1]
    ndim = len(param.shape)
    for dim in range(ndim) if dims is None else dims:
        source = param.source_axis(dim % ndim) if ndim else None
        if source is None or source >= len(roles) or roles[source] is not None:
            return True
    return False


@register_rule("identity")
def _identity(s, node, ins):
    """Channel-wise ops: activations, pooling, dropout, resize, dtype casts (a weight
    through one is still cut as that weight)."""
    if isinstance(ins[0], Param) and node.shape == ins[0].shape:
        return ins[0]
    return _tensor(s, ins[0], node)


@register_rule("stop")
def _stop(s, node, ins):
    raise RuleError(node.attrs.get("reason", "mixes channels"))


@register_rule("elementwise")
def _elementwise(s, node, ins, shapes=None):
    """add/sub/mul/div/max...: operands broadcast, so aligned positions are tied.

    An operand one wide along an axis where another's channels vary (a one-channel gate
    over a feature map, ``x * sigmoid(conv_1(x))``) meets every one of those channels
    alike: it is not tied to them, and its channel stays whole. ``shapes``: the
    operands' shapes where they are not the graph's (an ``einsum``'s, laid out as its
    output).
    """
    arrays = [v for v in ins if isinstance(v, np.ndarray)]
    params = [v for v in ins if isinstance(v, Param)]
    if not arrays:  # weights alone: one of the node's shape stands for all
        spread = None if any(p.shape == node.shape for p in params) else _weight_spread(
            s, node, ins, None)  # fmt: skip
        return spread if spread is not None else _params_combined(ins, node)
    spread = _spread(s, node, ins, shapes)
    if spread and len(spread) < len(arrays):
        for ids in spread:
            s.block(ids, f"{node.label or node.op}: broadcast over another operand's channels",
                    weak=True)  # a fact of the narrow operand: what it meets may say more
        arrays = [a for a in arrays if all(a is not b for b in spread)]
    out = arrays[0]
    for other in arrays[1:]:
        s.uf.union_arrays(out, other)
        out = np.broadcast_arrays(out, other)[0]
    out = s.canonical(out)
    if params and out.size == 1:  # one channel, or none, met by a weight per channel
        spread = _weight_spread(s, node, ins, out)
        if spread is not None:
            return spread
    for value in params:
        _follow_param(s, node, value, out)
    return out


def _weight_spread(s: Propagation, node: Node, ins: list,
                   single: np.ndarray | None) -> np.ndarray | None:  # fmt: skip
    """Channels new to an elementwise ``node``: the weights among its operands vary along
    one axis, where every tensor operand is one wide (a noise map of one channel scaled
    per channel, ``w * noise``, the noise made in forward or computed). The weights are
    cut along it; the tensor operands (of ``single`` id) meet every channel alike and
    stay whole. ``None`` where the weights vary along no axis or several, or a tensor
    operand is wider along it (an opaque op's output has one id for all its channels)."""
    if not isinstance(node.shape, tuple) or len(ins) != len(node.inputs):
        return None
    ndim, axes = len(node.shape), set()
    params = [v for v in ins if isinstance(v, Param)]
    for param in (q for p in params for q in (p, *p.also)):
        if not param.made and param.name in s.graph.layers and len(param.shape) <= ndim:
            shape = (1,) * (ndim - len(param.shape)) + param.shape
            axes |= {a for a, size in enumerate(shape) if size > 1}
    if len(axes) != 1:
        return None
    axis = axes.pop()
    for value, name in zip(ins, node.inputs, strict=True):
        shape = s.graph[name].shape
        if isinstance(value, np.ndarray) and not (
                isinstance(shape, tuple) and len(shape) <= ndim
                and ((1,) * (ndim - len(shape)) + shape)[axis] == 1):  # fmt: skip
            return None
    fresh = s.fresh(ndim, axis, node.shape[axis])
    if single is not None:
        s.block(single, f"{node.label or node.op}: broadcast over a weight's channels")
    for param in params:
        _follow_param(s, node, param, fresh)
    return fresh


def _params_combined(ins: list, node: Node) -> Param:
    """Weights of one shape combined entry by entry (a frozen BatchNorm's scale and shift
    computed from its buffers in forward): one weight standing for all, cut alike."""
    params = [v for v in ins if isinstance(v, Param)]
    if not params:
        raise RuleError("no tensor operand")
    # one number (a neuron's decay) scales every entry alike: it has nothing to cut
    params = [p for p in params if math.prod(p.shape) > 1] or params[:1]
    full = [p for p in params if p.shape == node.shape]
    if not full or not all(_broadcasts(p.shape, node.shape) for p in params):
        raise RuleError(f"combines {' and '.join(p.label for p in params)} of other shapes "
                        f"({' and '.join(str(p.shape) for p in params)})")
    # one of the node's shape stands for all; one broadcast over it (a gate per filter,
    # ``w * g.view(-1, 1, 1, 1)``) is cut along the axes it is not one wide on
    first, rest = full[0], [_broadcast_param(p, node.shape) for p in params if p != full[0]]
    also = [*first.also, *(q for p in rest for q in (p, *p.also))]
    return Param(first.name, first.shape, first.axes, tuple(dict.fromkeys(also)), first.made,
                 first.buffer)


def _broadcast_param(param: Param, shape: tuple[int, ...]) -> Param:
    """``param`` seen at the ``shape`` it broadcasts to: an axis it is one wide on and
    spreads over has no source axis (None), so nothing is cut along it."""
    if param.shape == shape:
        return param
    pad = len(shape) - len(param.shape)
    axes = tuple(None if a < pad or param.shape[a - pad] < size else
                 param.source_axis(a - pad) for a, size in enumerate(shape))  # fmt: skip
    also = tuple(_broadcast_param(p, shape) for p in param.also)
    return Param(param.name, shape, axes, also, made=param.made, buffer=param.buffer)


def _spread(s: Propagation, node: Node, ins: list, shapes: list | None = None) -> list[np.ndarray]:
    """The operands of an elementwise ``node`` whose tensor is one wide along an axis on
    which another operand's channels vary (read from the operands' own shapes: ids one
    wide may stand for channels all tied together)."""
    if shapes is None and len(ins) != len(node.inputs):
        return []
    shapes = shapes or [s.graph[name].shape for name in node.inputs]
    found = [(v, shape) for v, shape in zip(ins, shapes, strict=True)
             if isinstance(v, np.ndarray)]  # fmt: skip
    out = node.shape
    if not isinstance(out, tuple) or not all(_broadcasts(shape, out) for _, shape in found):
        return []  # not a broadcast (``view_as`` reads only the other's shape)
    ndim = len(out)
    spread = []
    for ids, shape in found:
        wide = (1,) * (ndim - len(shape)) + shape
        one = [a for a in range(ndim) if wide[a] == 1]
        if any(o is not ids and _varies(_pad(o, ndim), a) and not _same_classes(s, ids, o)
               for o, _ in found for a in one):  # fmt: skip
            spread.append(ids)
    return spread


def _same_classes(s: Propagation, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` broadcast over ``b`` meets only channels tied to its own already
    (a GroupNorm's mean, reduced over each group's channels, subtracted from them)."""
    try:
        ra, rb = np.broadcast_arrays(s.uf.roots(a), s.uf.roots(b))
    except ValueError:  # ids that do not line up: not known to be tied
        return False
    return bool(np.array_equal(ra, rb))


def _broadcasts(shape: Any, out: tuple[int, ...]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``out``."""
    if not isinstance(shape, tuple) or len(shape) > len(out):
        return False
    return all(d in (1, o) for d, o in zip(shape[::-1], out[::-1], strict=False))


def _follow_param(s: Propagation, node: Node, param: Param, ids: np.ndarray) -> None:
    """Cut a weight read by an elementwise op along the channels it meets. A tensor the
    frontend has no layer for (a buffer, a constant made in forward) cannot be cut: the
    channels it meets stay."""
    ndim = max(len(param.shape), ids.ndim)
    ids = _pad(ids, ndim)
    shape = (1,) * (ndim - len(param.shape)) + param.shape
    for axis, size in enumerate(shape):
        if size > 1 and _varies(ids, axis):
            line = _channels(ids, ndim, axis, size)
            if param.name not in s.graph.layers:
                reason = f"{node.label or node.op} reads {param.name}, which cannot be cut"
                s.block(line, reason)
                s.hold_param(param.name, reason)  # a layer's own (``bn.bias`` read as a value)
                continue
            source = param.source_axis(axis - (ndim - len(param.shape)))
            if source is not None:  # None: broadcast along it, nothing to cut
                s.use(param.name, f"axis{source}", line, node.name)
    for other in param.also:  # computed into it entry by entry: cut alike
        _follow_param(s, node, other, ids)


def einsum_subscripts(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """Each operand's subscripts and the output's, ``...`` spelled out in letters of
    their own, and the output made explicit (the indices met once, sorted) if not given.

    Example:
        >>> einsum_subscripts("...c,c", [4, 1])
        (['ΑΒΓc', 'c'], 'ΑΒΓ')
    """
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise RuleError(f"einsum '{equation}' names {len(terms)} operands, {len(ranks)} given")
    dots = max([r - len(t) + 3 for t, r in zip(terms, ranks, strict=True) if "..." in t] or [0])
    ell = "".join(chr(0x391 + i) for i in range(dots))  # Greek capitals: never einsum indices
    subs = []
    for t, r in zip(terms, ranks, strict=True):
        if "..." in t:
            t = t.replace("...", ell[dots - (r - len(t) + 3) :])
        if len(t) != r:
            raise RuleError(f"einsum '{equation}': subscripts {t!r} for a rank-{r} operand")
        subs.append(t)
    if arrow:
        return subs, rhs.replace("...", ell)
    once = [c for c in sorted(set("".join(subs))) if "".join(subs).count(c) == 1 and c not in ell]
    return subs, ell + "".join(once)


def _placed_param(param: Param, sub: str, out: str, shape: tuple[int, ...]) -> Param:
    """A weight read by an einsum as ``sub``, laid out as the output ``out``; the weights
    computed into it entry by entry with it, cut alike."""
    axes = tuple(param.source_axis(sub.index(c)) if c in sub else None for c in out)
    also = tuple(_placed_param(p, sub, out, shape) for p in param.also)
    return Param(param.name, shape, axes, also, made=param.made, buffer=param.buffer)


@register_rule("einsum")
def _einsum(s, node, ins):
    """``einsum``: an index the output keeps passes its channels, and operands that share
    it are tied there (as an elementwise product); an index summed over mixes the
    channels along it, so those stay whole, and a weight summed over is held.
    ``operands``: the input each operand is (an operand may appear twice);
    ``batch_whole``: channels on the batch axes of a matrix product (all but the output's
    last two) stay whole (an ONNX rewrite cannot cut one operand's heads alone)."""
    names = node.attrs.get("operands", node.inputs)
    if any(n not in node.inputs for n in names):
        raise RuleError("an einsum operand is not a tensor of the graph")
    values = [ins[node.inputs.index(n)] for n in names]
    shapes = [s.graph[n].shape for n in names]
    if not all(isinstance(shape, tuple) for shape in shapes):
        raise RuleError("input shape is unknown")
    subs, out = einsum_subscripts(node.attrs["equation"], [len(shape) for shape in shapes])
    if any(len(set(t)) < len(t) for t in [*subs, out]):
        raise RuleError("einsum with a repeated index (a diagonal)")
    where = node.label or node.op
    if node.attrs.get("batch_whole"):
        _batch_channels_on_both(values, subs, shapes, set(out[:-2]))
    placed, placed_shapes = [], []
    for value, sub, shape in zip(values, subs, shapes, strict=True):
        summed = [a for a, c in enumerate(sub) if c not in out and shape[a] > 1]
        placed_shapes.append(tuple(shape[sub.index(c)] if c in sub else 1 for c in out))
        if isinstance(value, Param):
            if summed:
                for param in (value, *value.also):
                    s.hold_param(param.name, f"{value.label} is summed over by {where}")
                placed.append(s.opaque(f"{where} sums over {value.label}"))
                continue
            placed.append(_placed_param(value, sub, out, placed_shapes[-1]))
            continue
        ids = _pad(_tensor(s, value, node), len(sub))
        if any(_varies(ids, a) for a in summed):
            s.block(ids, f"{where}: sums over these channels")
            placed.append(s.opaque(f"{where}: sums over channels"))
            continue
        ids = ids[tuple(slice(None) if c in out else 0 for c in sub)]
        kept = [c for c in sub if c in out]
        ids = np.transpose(ids, sorted(range(len(kept)), key=lambda a: out.index(kept[a])))
        placed.append(ids.reshape([ids.shape[sorted(kept, key=out.index).index(c)]
                                   if c in kept else 1 for c in out]))  # fmt: skip
    return _elementwise(s, node, placed, placed_shapes)


def _batch_channels_on_both(values: list, subs: list, shapes: list, batch: set) -> None:
    """Refuse channels on a batch axis of a matrix product where another operand is as
    wide there without them (one attention head of the value cut, the weights keeping
    both); operands that both carry channels there are tied as an elementwise product's."""
    for c in batch:
        carried = [isinstance(v, np.ndarray) and _varies(_pad(v, len(sub)), sub.index(c))
                   for v, sub, shape in zip(values, subs, shapes, strict=True)
                   if c in sub and shape[sub.index(c)] > 1]  # fmt: skip
        if any(carried) and not all(carried):
            raise RuleError("a product batched over channels one operand does not carry "
                            "(attention heads)")


# -- weighted layers ---------------------------------------------------------------------
def _read_along(s: Propagation, x: np.ndarray, ndim: int, axis: int, width: int,
                node: Node) -> np.ndarray:  # fmt: skip
    """The 1-d ids a conv or linear layer reads along its ``axis``. Channels on another
    axis (a Linear along the tokens, or a conv after a Linear along the width) are
    positions to it: a tensor carries one set of channels to cut, so those stay whole
    and the layer's own outputs are still cut."""
    ids = _pad(x, ndim)
    if any(_varies(ids, a) for a in range(ndim) if a != axis % ndim):
        reason = f"{node.label or node.op}: applied along another axis than these channels"
        s.block(ids, reason)
        return np.repeat(s.opaque(reason).reshape(-1), width)
    return _channels(x, ndim, axis, width)


@register_rule("conv")
def _conv(s, node, ins):
    """A conv (transposed too) on its first input; ``held``: why the others it reads (a
    deformable conv's offsets) stay whole. ``offset_block``: the offset channels per offset
    group, each group for a block of consecutive input channels: the blocks keep equal
    counts, as a grouped conv's."""
    x = _tensor(s, ins[0], node)
    a = node.attrs
    for other in ins[1:]:
        if isinstance(other, (np.ndarray, tuple)):
            s.block(other, f"{node.label or node.op}: {a.get('held', 'read whole')}")
    ndim, axis = len(node.shape), a.get("channel_axis", 1)
    cin, cout, groups = a["in_channels"], a["out_channels"], a.get("groups", 1)
    xin = _read_along(s, x, ndim, axis, cin, node)
    if "offset_block" in a and len(ins) > 1:
        offset_groups = _shape(s, node, 1)[axis] // int(a["offset_block"])
        if offset_groups > 1:
            s.require_equal_blocks(xin.reshape(offset_groups, -1))
    layer = node.layer
    s.use(layer, "in", xin, node.name)
    if groups == 1:
        out = s.fresh(ndim, axis % ndim, cout)
        s.produce(layer, out, node.name)
        return out
    if groups == cin and cout % cin == 0:  # depthwise, channel multiplier cout // cin
        line = np.repeat(xin, cout // cin)
        s.use(layer, "out", line, node.name)
        return _place(line, ndim, axis)
    if cin == cout:  # grouped, in and out channels of a group stay together
        s.use(layer, "out", xin, node.name)
        s.require_equal_blocks(xin.reshape(groups, -1))
        return _place(xin, ndim, axis)
    s.require_equal_blocks(xin.reshape(groups, -1))  # widths differ: each side its own cut
    out = s.fresh(ndim, axis % ndim, cout)
    s.produce(layer, out, node.name)
    s.require_equal_blocks(out.reshape(groups, -1))
    return out


@register_rule("linear")
def _linear(s, node, ins):
    """Features along the last axis. Applied along another axis than the channels (an
    MLP-Mixer's token mixing), it maps each channel alone; a tensor carries one set of
    channels to cut, so those stay whole and the layer's own outputs are cut."""
    x = _tensor(s, ins[0], node)
    ndim = len(node.shape)
    xin = _read_along(s, x, ndim, -1, node.attrs["in_features"], node)
    s.use(node.layer, "in", xin, node.name)
    out = s.fresh(ndim, ndim - 1, node.attrs["out_features"])
    s.produce(node.layer, out, node.name)
    return out


@register_rule("recurrent")
def _recurrent(s, node, ins):
    """An RNN, LSTM or GRU reads the features of its input (the last axis) with its input
    weights, as a linear layer does: the producers before it are cut with those columns.
    Its outputs (the hidden state) and the initial states it is given stay whole."""
    x = _tensor(s, ins[0], node)
    xin = _read_along(s, x, node.attrs["ndim"], -1, node.attrs["in_features"], node)
    s.use(node.layer, "in", xin, node.name)
    reason = f"{node.label or node.op}: the recurrent state"
    for state in ins[1:]:
        if isinstance(state, (np.ndarray, tuple)):
            s.block(state, reason)
    return s.opaque(reason)


@register_rule("batchnorm")
def _batchnorm(s, node, ins):
    """Per-channel affine or statistics: the layer follows its input's channels."""
    x = _tensor(s, ins[0], node)
    ndim = len(node.shape)
    line = _channels(x, ndim, node.attrs.get("channel_axis", 1), node.attrs["num_features"])
    s.use(node.layer, "channel", line, node.name)
    return x


@register_rule("layernorm")
def _layernorm(s, node, ins):
    """Statistics over ``axes`` (default: the last ``normalized_ndim``): channels on
    those axes must all stay; channels on any other axis are normalised apart."""
    x = _tensor(s, ins[0], node)
    ndim = len(node.shape)
    ids = _pad(x, ndim)
    k = node.attrs.get("normalized_ndim", 1)
    axes = node.attrs.get("axes", range(ndim - k, ndim))
    if any(_varies(ids, a % ndim) for a in axes):
        s.block(ids, f"{node.label or 'LayerNorm'} normalises over these channels")
    return x


@register_rule("groupnorm")
def _groupnorm(s, node, ins):
    """Statistics over each of ``groups`` blocks of consecutive channels.

    With ``rewritable`` (the frontend lowers the layer's group count when the model is
    cut), whole groups may go: a group's channels are tied, so they are cut together; a
    pruned group is zero throughout and normalises to zero, so the rest never see it.
    Otherwise (one group, or a count fixed in code) its channels stay whole.
    """
    x = _tensor(s, ins[0], node)
    groups = int(node.attrs.get("groups", 1))
    if groups <= 1 or not node.attrs.get("rewritable"):
        why = "statistics span channels" if groups <= 1 else (
            f"group count is fixed in code ({groups}); an nn.GroupNorm's count is lowered "
            "with the cut")
        s.block(x, f"{node.label or 'GroupNorm'}: {why}")
        return x
    ndim = len(node.shape)
    axis = node.attrs.get("channel_axis", 1)
    line = _channels(x, ndim, axis, node.shape[axis])
    rows = line.reshape(groups, -1)
    for column in rows.T[1:]:
        s.uf.union_arrays(rows[:, 0], column)
    if node.layer:
        s.use(node.layer, "channel", line, node.name)
    return s.canonical(_place(line, ndim, axis))


@register_rule("pixel_shuffle")
def _pixel_shuffle(s, node, ins):
    """Depth to space by ``factor`` (``r``; ``n = r ** spatial axes`` channels per patch):
    output channel ``c`` is input channels ``c*n`` to ``c*n + n - 1`` (with ``strided``,
    ONNX's DCR order: ``c``, ``c + C``, ... ``c + (n-1)*C``) spread over a patch, so those
    are tied and go together. ``inverse`` (space to depth): each input channel becomes
    ``n`` output channels (consecutive; ``strided``: ``C`` apart), all read as that
    channel. ``per`` gives ``n`` where the patch is not ``r`` wide on every spatial axis
    (``unfold``, ``fold``: a kernel's positions, the output's spatial axes flattened).
    The op reads its channel count from its input, so a cut needs no rewrite."""
    x = _tensor(s, ins[0], node)
    in_shape = _shape(s, node)
    ndim, axis = len(in_shape), node.attrs.get("channel_axis", 1)
    per = int(node.attrs.get("per") or int(node.attrs["factor"]) ** (ndim - 2))
    strided = bool(node.attrs.get("strided"))
    line = _channels(x, ndim, axis, in_shape[axis])
    if node.attrs.get("inverse"):
        out = np.tile(line, per) if strided else np.repeat(line, per)
        return s.canonical(_place(out, len(node.shape), axis))
    rows = line.reshape(per, -1).T if strided else line.reshape(-1, per)
    for column in rows.T[1:]:
        s.uf.union_arrays(rows[:, 0], column)
    return s.canonical(_place(rows[:, 0].copy(), len(node.shape), axis))


@register_rule("glu")
def _glu(s, node, ins):
    """``a * sigmoid(b)`` of the two halves ``a``, ``b`` along ``axis``: the halves are
    multiplied position by position, so they are tied as an elementwise product's
    operands are (along the channel axis, channel ``c`` goes with channel ``c + C/2``)."""
    x = _tensor(s, ins[0], node)
    shape = _shape(s, node)
    halves = np.split(_full(s, x, shape), 2, axis=node.attrs["axis"] % len(shape))
    return _elementwise(s, node, [s.canonical(h) for h in halves])


@register_rule("channel_shuffle")
def _channel_shuffle(s, node, ins):
    """Channels read as ``groups`` rows, written by columns. Channel ``j`` of every row is
    tied, so a cut keeps the rows equal and the shuffle of the rest the same."""
    x = _tensor(s, ins[0], node)
    ndim, axis = len(node.shape), node.attrs.get("channel_axis", 1)
    line = _channels(x, ndim, axis, node.shape[axis])
    rows = line.reshape(int(node.attrs["groups"]), -1)
    for row in rows[1:]:
        s.uf.union_arrays(rows[0], row)
    return s.canonical(_place(rows.T.reshape(-1), ndim, axis))


# -- shape ops ---------------------------------------------------------------------------
@register_rule("reshape")
def _reshape(s, node, ins):
    """view/reshape/flatten. ``fixed_dims``: output axes whose size is a literal in code.

    ``why``: the reason given where that holds channels, if not a literal in code.
    ``computed_dims``: axes whose size is computed in forward; one that holds channels,
    and that the frontend neither tied nor freed, is said to be computed, not literal.
    ``rewritable``: the frontend rewrites the literal of one axis when the model is cut
    (a Keras ``Reshape`` rebuilt from its config), so if every axis holding channels is
    literal, the last of them stays free and the others are pinned.
    ``tied_dims``: ``[axis, input, source_axis]``: the size of output ``axis`` is read
    in forward from ``source_axis`` of the node's ``input`` (``B, C, H, W = x.shape``).
    Channels on both are tied one to one, so a cut shrinks both the same. Where the
    source axis holds no channels, the axis is treated as literal (its size cannot
    change); where only one side holds them, the source's channels stay whole too.
    """
    if isinstance(ins[0], Param):
        return _reshape_param(ins[0], node)
    x = _tensor(s, ins[0], node)
    if np.prod(_shape(s, node)) != np.prod(node.shape):  # a batch size unknown to the capture
        raise RuleError("reshape sizes do not match its input's")
    full = _full(s, x, _shape(s, node)).reshape(node.shape)
    fixed = [a % len(node.shape) for a in node.attrs.get("fixed_dims", ())]
    for axis, source, source_axis in node.attrs.get("tied_dims", ()):
        if not _tie(s, node, full, axis % len(node.shape), ins[source], source, source_axis):
            fixed.append(axis % len(node.shape))
    out = compress(s.uf.roots(full))
    varying = [a for a in range(out.ndim) if _varies(out, a)]
    pinned = [a for a in fixed if a in varying]
    if node.attrs.get("rewritable") and pinned and len(pinned) == len(varying):
        pinned = pinned[:-1]
    if not pinned:
        return out
    if len(pinned) == len(varying):  # the input stays whole; a tied size's source with it
        computed = set(node.attrs.get("computed_dims", ())) & set(pinned)
        why = node.attrs.get("why", "reshape sizes computed in forward that a cut would not "
                             "keep (another axis folded into the channels, or a size read "
                             "from another tensor)" if computed else  # ``view(b, c * a, t // a)``
                             "reshape fixes the channel count in code")  # fmt: skip
        reason = f"{node.label or node.op}: {why}"
        s.block(x, reason)
        return s.opaque(reason)
    for axis in pinned:  # a literal axis cannot shrink: its entries live or die together
        first = np.take(full, [0], axis=axis)
        s.uf.union_arrays(np.broadcast_to(first, full.shape), full)
    return s.canonical(full)


def _tie(s: Propagation, node: Node, full: np.ndarray, axis: int, value: Any, source: int,
         source_axis: int) -> bool:  # fmt: skip
    """Tie output ``axis`` of a reshape to the axis of ``value`` its size was read from;
    ``False`` where the size is not a cut channel count that can follow (then literal)."""
    shape = _shape(s, node, source)
    source_axis %= len(shape)
    if isinstance(value, Param):
        s.hold_param(value.name, f"{node.label or 'reshape'} reads the size of {value.name}")
        return False
    if not isinstance(value, np.ndarray):
        return False
    src = _full(s, value, shape)
    out, read = compress(s.uf.roots(full)), compress(src)
    if not _varies(read, source_axis):
        return False
    others = [a for a in range(out.ndim) if a != axis and _varies(out, a)]
    read_others = [a for a in range(read.ndim) if a != source_axis and _varies(read, a)]
    if others or read_others or not _varies(out, axis) \
            or full.shape[axis] != src.shape[source_axis]:  # fmt: skip
        s.block(src, f"{node.label or 'reshape'} sizes an axis by a channel count read in "
                     "forward that its input's channels do not follow")  # fmt: skip
        return False
    line, source_line = out.reshape(-1), s.uf.roots(read.reshape(-1))
    # the same channels in another order (a shuffle's ``view(b, c, h, w)``) shrink alike
    # already; a union position by position would tie each cycle of the order together
    if not np.array_equal(np.sort(line), np.sort(source_line)):
        s.uf.union_arrays(line, source_line)
    return True


@register_rule("reshape_as")
def _reshape_as(s, node, ins):
    """``x.reshape_as(y)``/``view_as``: sizes read from ``y`` at run time, so a cut must
    leave the output and ``y`` the same shape: the two are tied entry by entry."""
    out = _reshape(s, node, ins[:1])
    if len(ins) < 2 or not isinstance(ins[1], np.ndarray) or not isinstance(out, np.ndarray):
        raise RuleError("reshape_as reads its sizes from a tensor whose channels are not followed")
    return _elementwise(s, node, [out, ins[1]])


def _reshape_param(param: Param, node: Node) -> Param:
    """A weight viewed with size-1 axes added or dropped (``gamma.view(1, -1, 1, 1)``)
    stays that weight; a view that moves its entries, or fixes its size in code, does not."""
    if not isinstance(node.shape, tuple):
        raise RuleError("output shape is unknown")
    src = [i for i, n in enumerate(param.shape) if n > 1]
    dst = [i for i, n in enumerate(node.shape) if n > 1]
    if [param.shape[i] for i in src] != [node.shape[i] for i in dst]:
        raise RuleError(f"reshape moves the entries of {param.label}")
    fixed = {a % len(node.shape) for a in node.attrs.get("fixed_dims", ())}
    if fixed & set(dst):
        raise RuleError(f"reshape fixes the size of {param.label} in code")
    axes: list[int | None] = [None] * len(node.shape)
    for i, j in zip(src, dst, strict=True):
        axes[j] = param.source_axis(i)
    # weights combined entry by entry (one shape): the same view of each, cut alike
    also = tuple(_reshape_param(p, node) for p in param.also)
    return Param(param.name, tuple(node.shape), tuple(axes), also, made=param.made,
                 buffer=param.buffer)


@register_rule("permute")
def _permute(s, node, ins):
    x = _tensor(s, ins[0], node)
    perm = node.attrs["perm"]
    return np.transpose(_pad(x, len(perm)), perm)


@register_rule("expand")
def _expand(s, node, ins):
    """Broadcast to ``node.shape``. ``tied_dims`` ``[axis, input, source_axis]``: the size
    of ``axis`` is read in forward from that input (``idx.expand(-1, x.size(1), -1)``): the
    result's entries along it are that input's channels, one by one. ``fixed_dims``: axes
    whose size is written in code, where channels cannot be cut."""
    x = _pad(_tensor(s, ins[0], node), len(node.shape))
    if any(_varies(x, a) for a in node.attrs.get("fixed_dims", ())):
        raise RuleError("expand fixes the channel count in code")
    out, placed = np.broadcast_to(x, node.shape), False
    first = _shape(s, node, 0)
    wide = (1,) * (len(node.shape) - len(first)) + first  # the input's own sizes
    for axis, at, source_axis in node.attrs.get("tied_dims", ()):
        source_shape = _shape(s, node, at)
        source = ins[at]
        if isinstance(source, Param):  # a weight's size: a cut of it would not follow here
            s.hold_param(source.name, f"{node.label or 'expand'} reads the size of "
                                      f"{source.name}")  # fmt: skip
            continue
        if not isinstance(source, np.ndarray) or source_shape[source_axis] != node.shape[axis] \
                or not _varies(_pad(source, len(source_shape)), source_axis):  # fmt: skip
            continue  # a size without channels (the batch): a number, as written
        line = _channels(_pad(source, len(source_shape)), len(source_shape), source_axis,
                         source_shape[source_axis])  # fmt: skip
        if _varies(x, axis) or wide[axis] > 1:  # already that wide: the same channels (a
            # weight read whole holds them: its width would not follow a cut)
            s.uf.union_arrays(_channels(x, len(node.shape), axis, node.shape[axis]), line)
        elif placed or any(_varies(x, a) for a in range(len(node.shape))):
            raise RuleError("expands a tensor with channels to a width read in forward")
        else:
            out, placed = np.broadcast_to(_place(line, len(node.shape), axis), node.shape), True
    return s.canonical(out)


@register_rule("tile")
def _tile(s, node, ins):
    """``np.tile`` by ``reps``; a count computed in forward (``None``, its size read from
    the output) is fine along an axis without channels."""
    x = _tensor(s, ins[0], node)
    full = _full(s, x, _shape(s, node))
    reps = list(node.attrs["reps"])
    full = full.reshape((1,) * (len(reps) - full.ndim) + full.shape)
    reps = [1] * (full.ndim - len(reps)) + reps
    ids = _pad(x, full.ndim)
    for a, r in enumerate(reps):
        if r is None:
            if _varies(ids, a):
                raise RuleError("repeats channels by a count computed in forward")
            reps[a] = node.shape[a] // full.shape[a]
    return s.canonical(np.tile(full, reps))


def _sequence(s: Propagation, node: Node, ins: list) -> tuple[list, list]:
    """The tensors a concat or stack joins and their shapes: its inputs, the pieces of
    its one input that is a sequence (``torch.cat(x.split(4, 2), 2)``), or its inputs in
    the order ``parts`` names them (a tensor joined twice is one input)."""
    whole = s.graph[node.inputs[0]].shape if len(ins) == 1 else None
    if isinstance(ins[0], tuple) and isinstance(whole, list) and len(whole) == len(ins[0]):
        return list(ins[0]), whole
    order = [node.inputs.index(p) for p in node.attrs.get("parts", ()) if p in node.inputs]
    if order and len(order) == len(node.attrs["parts"]):
        return [ins[i] for i in order], [_shape(s, node, i) for i in order]
    return ins, [_shape(s, node, i) for i in range(len(ins))]


@register_rule("concat")
def _concat(s, node, ins):
    ndim = len(node.shape)
    axis = node.attrs["axis"] % ndim
    ins, shapes = _sequence(s, node, ins)
    parts = [_pad(_tensor(s, v, node), ndim) for v in ins]
    if not any(_varies(p, axis) for p in parts):
        return _elementwise(s, node, parts)
    target = [max(p.shape[a] for p in parts) for a in range(ndim)]
    pieces = []
    for p, shape in zip(parts, shapes, strict=True):
        pieces.append(np.broadcast_to(p, [*target[:axis], shape[axis], *target[axis + 1 :]]))
    return s.canonical(np.concatenate(pieces, axis=axis))


@register_rule("stack")
def _stack(s, node, ins):
    """Tensors stacked along a new ``axis``, each at its index there. Stacking needs
    equal shapes, and what follows may read the stack in any order (a reshape that
    interleaves the parts' channels), so the parts are tied position by position, as an
    add's operands are."""
    ndim = len(node.shape)
    axis = node.attrs["axis"] % ndim
    parts = []
    for value, shape in zip(*_sequence(s, node, ins), strict=True):
        parts.append(np.broadcast_to(_pad(_tensor(s, value, node), len(shape)), shape))
    for part in parts[1:]:
        if part.shape == parts[0].shape:
            s.uf.union_arrays(parts[0], part)
    return s.canonical(np.stack([s.uf.roots(p) for p in parts], axis=axis))


@register_rule("split")
def _split(s, node, ins):
    """split/chunk/unbind along ``axis`` into ``sizes``; ``equal``: sizes follow the width.

    ``same_width`` ``[input, axis]``: sizes computed from that input's width along ``axis``
    (equal to the split axis's): the two are tied position by position, so a cut keeps
    them equal.
    ``free``: the frontend rewrites the sizes (ONNX ``Split``), so any channels may go;
    ``equal_parts`` ``(axis, k)``: sizes computed in forward on ``k`` equal parts of the
    width at any width (``[c, x.shape[1] - c]`` with ``c = x.shape[1] // 4``), tied as
    ``chunk(k)`` is.
    """
    x = _tensor(s, ins[0], node)
    in_shape = _shape(s, node)
    ndim = len(in_shape)
    axis = node.attrs["axis"] % ndim
    sizes = list(node.attrs["sizes"])
    ids = _pad(x, ndim)
    if "same_width" in node.attrs:
        at, other_axis = node.attrs["same_width"]
        other_shape = _shape(s, node, at)
        other = _pad(_tensor(s, ins[at], node), len(other_shape))
        s.uf.union_arrays(_channels(ids, ndim, axis, in_shape[axis]), _channels(
            other, len(other_shape), other_axis, other_shape[other_axis]))  # fmt: skip
    if _varies(ids, axis):
        line = _channels(ids, ndim, axis, in_shape[axis])
        if "equal_parts" in node.attrs:  # sizes computed from the width, on k equal parts
            rows = line.reshape(int(node.attrs["equal_parts"][1]), -1)
            for row in rows[1:]:
                s.uf.union_arrays(rows[0], row)
        elif node.attrs.get("equal") and len(set(sizes)) == 1:
            # Equal chunks must stay equal: tie position i of every chunk together, so
            # whatever is cut, each chunk loses the same positions.
            rows = line.reshape(len(sizes), -1)
            for row in rows[1:]:
                s.uf.union_arrays(rows[0], row)
        elif node.attrs.get("equal") and not node.attrs.get("free"):
            raise RuleError(f"splits {in_shape[axis]} channels into unequal pieces "
                            f"({'/'.join(map(str, sizes))}), which a cut would not keep")
        elif not node.attrs.get("free"):
            raise RuleError(node.attrs.get("reason", "split sizes are fixed in code"))
    shape = list(ids.shape)
    shape[axis] = in_shape[axis]
    full = np.broadcast_to(ids, shape)
    outs = np.split(full, np.cumsum(sizes)[:-1], axis=axis)
    if node.attrs.get("squeeze"):
        outs = [np.squeeze(o, axis=axis) for o in outs]
    return tuple(compress(o) for o in outs)


@register_rule("getitem")
def _getitem(s, node, ins):
    """Pick one output of a multi-output op, or several (``index`` a list: a slice of the
    tuple, ``x.chunk(4, 1)[::-1]``)."""
    value = ins[0]
    if isinstance(value, np.ndarray):
        return value  # an opaque id stands for every output
    if not isinstance(value, tuple):
        raise RuleError("indexes a value that is not a tuple")
    index = node.attrs["index"]
    return tuple(value[i] for i in index) if isinstance(index, list) else value[index]


@register_rule("index")
def _index(s, node, ins):
    """Basic tensor indexing (slices, ints, None, Ellipsis) that leaves channels whole,
    or takes every ``step``-th channel (see :func:`_tie_strided`).

    ``shape_only``: only the slice's shape is read (``torch.ones_like(x[:, :1])``); where
    its channels could not be followed, the result has channels of its own, kept whole.
    ``computed_axes``: axes sliced at bounds computed in forward (the index holds the
    length they took); channels there stay whole, as the bounds would not follow a cut,
    except on the axes of ``equal_parts`` ``[(axis, k), ...]``: bounds on the same of ``k``
    equal parts at any width (``x[:, : x.shape[1] // 2]``), or written in code that the
    frontend rewrites at a cut (Keras' ``h[..., :16]`` of 32), so tied as ``chunk(k)`` is.
    """
    index = node.attrs["index"]
    parts = index if isinstance(index, tuple) else (index,)
    if isinstance(ins[0], Param) and all(p is None or p is Ellipsis or p == slice(None)
                                         for p in parts):  # fmt: skip
        return _reshape_param(ins[0], node)  # ``b[None, :, None, None]``: a view of it
    x = _tensor(s, ins[0], node)
    full = _full(s, x, _shape(s, node))
    try:
        _follow_bounds(s, node, x, full)
    except RuleError as err:
        if not node.attrs.get("shape_only") or not _same_extent(node, x, full.shape):
            raise
        # only its shape is read (``ones_like(x[:, :1])``), the same at any cut width: a
        # tensor made at that shape, whose channels are its own and stay whole
        return s.opaque(f"{node.label or node.op} {err} for a tensor made of its shape")
    return compress(s.uf.roots(full)[node.attrs["index"]])


def _same_extent(node: Node, x: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Whether ``node``'s index takes as many entries as it does now at every width the
    axes with channels may be cut to (``[:, :1]``, ``[:, -1:]``, ``[:, 0]``: one, where
    ``[:, :12]`` takes fewer below 12), its bounds written in code."""
    items = node.attrs["index"] if isinstance(node.attrs["index"], tuple) else \
        (node.attrs["index"],)  # fmt: skip
    if node.attrs.get("computed_axes") or sum(it is Ellipsis for it in items) > 1:
        return False
    for axis, it in enumerate(_items(items, len(shape))):
        width = shape[axis]
        if _varies(_pad(x, len(shape)), axis):
            if isinstance(it, int) and it not in (0, -1):
                return False
            if isinstance(it, slice) and len({len(range(*it.indices(w)))
                                              for w in range(1, width + 1)}) > 1:  # fmt: skip
                return False
    return True


@register_rule("write")
def _write(s, node, ins):
    """``x[index] = value`` into a tensor ``x`` made in forward, as a new tensor (the
    frontend makes later reads of ``x`` read the write). The value lands on the positions
    the index picks, so its channels are tied there position by position to those of
    ``x``; channels the index leaves out pass. Bounds on channel axes as for ``index``
    (``out[:, :fold] = ...`` with ``fold = c // 8``: cut by eighths)."""
    if isinstance(ins[0], Param):  # ``torch.zeros(n, 64, h, w)``: its sizes are the code's
        _tensor(s, ins[0], node)
        raise RuleError(f"writes into {ins[0].label}, whose sizes a cut would not change")
    x = _tensor(s, ins[0], node)
    full = _full(s, x, _shape(s, node))
    picked = _follow_bounds(s, node, x, full)
    value = ins[1] if len(ins) > 1 else None
    if isinstance(value, Param) and math.prod(value.shape) == 1:
        value = None  # one number (``torch.tensor(2.0)``); a size read is None already
    if value is not None:
        value = _tensor(s, value, node)
        if value.ndim > picked.ndim:
            raise RuleError("writes a value of more axes than the place it fills")
        s.uf.union_arrays(full.ravel()[picked], _pad(value, picked.ndim))
    return s.canonical(full)


def _follow_bounds(s: Propagation, node: Node, x: np.ndarray, full: np.ndarray) -> np.ndarray:
    """The positions of ``full`` that ``node``'s index picks. A cut must keep them where
    the code's bounds fall at the cut width: channels sliced at bounds computed in
    forward are held, except on ``equal_parts`` axes (their parts tied); other partial
    picks of channels are ``start::step`` picks (see :func:`_tie_strided`)."""
    marker = np.arange(full.size).reshape(full.shape)
    picked = marker[node.attrs["index"]]
    varying = [a for a in range(full.ndim) if x.ndim > 0 and _varies(_pad(x, full.ndim), a)]
    computed = list(node.attrs.get("computed_axes", ()))
    for axis, pieces in node.attrs.get("equal_parts", ()):
        if axis not in varying:
            continue
        computed = [a for a in computed if a != axis]
        rows = np.moveaxis(full, axis, 0).reshape(pieces, -1)
        for row in rows[1:]:
            s.uf.union_arrays(rows[0], row)
        varying.remove(axis)  # the slice keeps whole parts: nothing to check below
    if any(a in varying for a in computed):
        raise RuleError(node.attrs.get("computed_reason",
                                       "slices channels at bounds computed in forward"))
    parts = axis_parts(node.attrs["index"], full.ndim)
    items = _items(node.attrs["index"], full.ndim)
    for axis in varying:
        kept = np.unique(np.unravel_index(picked.ravel(), full.shape)[axis])
        if kept.size == full.shape[axis]:
            continue
        if isinstance(items[axis], int) and len(varying) > 1:
            # one entry of each block of channels laid along ``axis`` (the real part of
            # channel pairs, ``h.view(b, c // 2, 2, ...)[:, :, 0]``): each block's entries
            # are tied, so a cut keeps whole blocks and the pick the same entry of each
            s.uf.union_arrays(np.broadcast_to(np.take(full, [0], axis=axis), full.shape), full)
            continue
        _tie_strided(s, full, axis, parts[axis] if parts else None)
    return picked


def _items(index: Any, ndim: int) -> list[Any]:
    """What ``index`` takes along each of ``ndim`` input axes (new axes left out); an
    index of more than one Ellipsis gives ``slice(None)`` everywhere (nothing known)."""
    items = [it for it in (index if isinstance(index, tuple) else (index,)) if it is not None]
    if items.count(Ellipsis) > 1:
        return [slice(None)] * ndim
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at : at + 1] = [slice(None)] * (ndim - len(items) + 1)
    return items + [slice(None)] * (ndim - len(items))


def axis_parts(index: Any, ndim: int) -> list[Any] | None:
    """The slice each axis takes, for an index of slices and at most one Ellipsis;
    ``None`` for any other index (ints, lists, None)."""
    parts = list(index) if isinstance(index, tuple) else [index]
    if parts.count(Ellipsis) > 1 or not all(p is Ellipsis or isinstance(p, slice) for p in parts):
        return None
    return _items(index, ndim)


def _tie_strided(s: Propagation, full: np.ndarray, axis: int, part: Any) -> None:
    """A slice ``start::step`` over every block of ``step`` channels (``x[:, 1::2]``)
    takes the same member of each block. Cut by whole blocks, the smaller tensor's slice
    takes exactly the kept ones, whatever the code's bounds: each block's channels are
    tied. Any other pick of channels (a list, a range inside the axis) is held."""
    size = full.shape[axis]
    start, stop, step = part.indices(size) if isinstance(part, slice) else (0, 0, 0)
    # a start counted from the end (``-15::2``) is another channel once the axis is cut
    from_end = isinstance(part, slice) and part.start is not None and part.start < 0
    if step < 2 or size % step or start >= step or stop < size - step + start + 1 or from_end:
        if not isinstance(part, slice):
            raise RuleError("indexes into channels")
        taken = f"{start}:{stop}" + (f":{step}" if step > 1 else "") if step > 0 else ":".join(
            "" if v is None else str(v) for v in (part.start, part.stop, part.step))  # ::-2
        raise RuleError(f"indexes into channels {taken} of {size}")
    blocks = np.moveaxis(full, axis, -1).reshape(*full.shape[:axis], *full.shape[axis + 1 :],
                                                 size // step, step)  # fmt: skip
    for member in range(1, step):
        s.uf.union_arrays(blocks[..., 0], blocks[..., member])


@register_rule("reduce")
def _reduce(s, node, ins):
    """mean/sum/amax over ``dims``; reducing over channels mixes them.

    A reduction over an axis that stacks tensors whose channels lie on another axis
    (``torch.stack(paths, 1).sum(1)``) adds those tensors: their channels are tied
    position by position, as for an elementwise add.
    """
    if isinstance(ins[0], Param) and node.attrs.get("pairs"):
        return _paired_param(ins[0], node)
    x = _tensor(s, ins[0], node)
    shape = _shape(s, node)
    ndim = len(shape)
    ids = _pad(x, ndim)
    dims = sorted(d % ndim for d in node.attrs["dims"])
    varying = [d for d in dims if _varies(ids, d)]
    if varying:
        if not any(_varies(ids, a) for a in range(ndim) if a not in dims):
            raise RuleError("reduces over channels")
        full = _full(s, ids, shape)
        for axis in varying:
            s.uf.union_arrays(np.broadcast_to(np.take(full, [0], axis=axis), full.shape), full)
        ids = s.canonical(full)
    if not node.attrs.get("keepdim", False):
        ids = ids.reshape([n for a, n in enumerate(ids.shape) if a not in dims])
    return _each_output(node, ids)


def _paired_param(param: Param, node: Node) -> Param:
    """A weight whose last axis of two entries is read as one value (``view_as_complex``:
    real and imaginary parts): that weight, each entry cut with its pair."""
    ndim = len(param.shape)
    if not ndim or param.shape[-1] != 2 or tuple(node.shape or ()) != param.shape[:-1]:
        raise RuleError(f"reads {param.label} as pairs of a shape it does not have")
    axes = tuple(param.source_axis(i) for i in range(ndim - 1))
    also = tuple(_paired_param(p, node) for p in param.also)
    return Param(param.name, param.shape[:-1], axes, also, made=param.made,
                 buffer=param.buffer)


def _each_output(node, ids: np.ndarray) -> Any:
    """``ids`` for each output of an op that returns several tensors of one layout
    (``max(x, dim)``: values and indices; ``sort``, ``topk``)."""
    return tuple(ids for _ in node.shape) if isinstance(node.shape, list) else ids


@register_rule("put")
def _put(s, node, ins):
    """``x[indices] = values`` (``index_put``), the indices over the first ``indexed``
    axes, or ``x.index_add(axis, index, values)`` (values of x's rank, another length on
    ``axis``): each value lands on the same channels of ``x`` (the axes not indexed line
    up), so both are tied. ``x`` made in forward with one value everywhere
    (``torch.zeros``, attribute ``fill`` of its node) is cut with the values; the index
    tensors' own channels stay whole."""
    names = node.inputs
    at = {name: i for i, name in enumerate(names)}
    if node.attrs["self"] not in at or node.attrs["values"] not in at:
        raise RuleError("writes a value the capture did not read")
    first = node.attrs.get("indexed", 0)
    target, values = ins[at[node.attrs["self"]]], ins[at[node.attrs["values"]]]
    for name, value in zip(names, ins, strict=True):
        if name not in (node.attrs["self"], node.attrs["values"]):
            _tensor(s, value, node)
            if isinstance(value, np.ndarray):
                s.block(value, f"{node.label or node.op}: index positions")
    ndim = len(node.shape)
    v = _tensor(s, values, node)
    if node.attrs.get("axis") is not None:  # ``index_add``: values shaped as x but on axis
        axis = node.attrs["axis"] % ndim
        v = _pad(v, ndim)
        if _varies(v, axis):
            raise RuleError("values' channels lie along the indexed axis")
        out = np.take(v, [0], axis=axis)
    else:
        if v.ndim > 1 + ndim - first:
            raise RuleError("index tensors of several axes")
        v = _pad(v, 1 + ndim - first)
        if _varies(v, 0):
            raise RuleError("values' channels lie along the indexed axis")
        out = v.reshape((1,) * first + v.shape[1:])
        axis = None
    if isinstance(target, Param):
        if not s.graph[node.attrs["self"]].attrs.get("fill"):
            _tensor(s, target, node)  # a weight or buffer written into: whole
            raise RuleError(f"writes into {target.name}, which cannot be cut")
        return s.canonical(out)
    t = _pad(_tensor(s, target, node), ndim)
    if axis is not None and _varies(t, axis):
        raise RuleError("writes along channels")
    s.uf.union_arrays(t, out)
    return s.canonical(np.broadcast_arrays(t, out)[0])


@register_rule("sample")
def _sample(s, node, ins):
    """Each channel read at positions another operand gives (``grid_sample``): the
    channels pass through; the positions' own channels (their coordinates) stay whole."""
    x = _tensor(s, ins[0], node)
    ndim = len(node.shape)
    axis = node.attrs.get("channel_axis", 1) % ndim
    line = _channels(x, ndim, axis, _shape(s, node)[axis])
    for value in ins[1:]:
        _tensor(s, value, node)  # a weight is held whole
        if isinstance(value, np.ndarray):
            s.block(value, f"{node.label or node.op}: sampling coordinates")
    return _place(line, ndim, axis)


@register_rule("pad")
def _pad_rule(s, node, ins):
    """Padding by ``widths`` (a ``(before, after)`` pair per axis, ``None`` where computed
    in forward). Constant padding of an axis holding channels adds channels around them
    (option-A shortcuts: ``F.pad(x, (0, 0, 0, 0, p, p))``); their count is written in
    code, so the added ones stay whole. Other modes copy channels into the new
    positions, and a negative width crops them."""
    x = _tensor(s, ins[0], node)
    ndim = len(node.shape)
    ids = _pad(x, ndim)
    for axis, (before, after) in enumerate(node.attrs["widths"]):
        if (before, after) == (0, 0) or not _varies(ids, axis):
            continue
        if before is None or after is None:
            raise RuleError("pads channels by widths computed in forward (a width written "
                            "as a number lets the channels it pads be cut)")
        if node.attrs.get("mode", "constant") != "constant" or before < 0 or after < 0:
            raise RuleError("pads across channels")
        added = s.fresh(ndim, axis, before + after)
        s.block(added, f"{node.label or node.op}: channels it adds (their count is fixed)")
        parts = (added.take(range(before), axis), ids,
                 added.take(range(before, before + after), axis))  # fmt: skip
        shape = list(ids.shape)
        pieces = []
        for part in parts:
            shape[axis] = part.shape[axis]
            pieces.append(np.broadcast_to(part, shape))
        ids = np.concatenate(pieces, axis=axis)
    return ids


@register_rule("gather")
def _gather(s, node, ins):
    """Entries picked along the ``picked`` axes by index tensors (the inputs after the
    first; a constant index is none): ``x[:, :, idx]``, ``index_select``, PointNet++'s
    ``points[batch, idx]``. The other axes pass through where indexing puts them: in
    place around adjacent picked axes, else after the index's own axes. Channels on a
    picked axis stay whole; an index tensor is read as values, its channels whole."""
    src = s.graph[node.inputs[0]].shape
    if not isinstance(src, tuple) or not isinstance(node.shape, tuple):
        raise RuleError("indexes a tensor of unknown shape")
    x = _pad(_tensor(s, ins[0], node), len(src))
    picked = sorted({a % len(src) for a in node.attrs["picked"]})
    if not picked or any(_varies(x, a) for a in picked):
        raise RuleError("indexes into channels")
    for value in ins[1:]:
        if isinstance(value, np.ndarray):
            s.block(value, f"{node.label or node.op}: its indices")
    rest = [a for a in range(len(src)) if a not in picked]
    width = len(node.shape) - len(rest)  # the axes of the broadcast index
    if width < 0:
        raise RuleError("indexes more axes than it reads")
    if picked == list(range(picked[0], picked[-1] + 1)):
        places = [a if a < picked[0] else a - len(picked) + width for a in rest]
    else:
        places = [width + i for i in range(len(rest))]
    shape = [1] * len(node.shape)
    for axis, place in zip(rest, places, strict=True):
        shape[place] = x.shape[axis]
    return x.reshape(shape)


@register_rule("take_along")
def _take_along(s, node, ins):
    """``torch.gather(x, axis, index)`` / ``take_along_dim``: each output entry reads ``x``
    at the same position on every other axis (broadcast), at the index's entry along
    ``axis``. Channels on the other axes pass, tied to the index's where it has its own
    (an index expanded to ``x``'s width, read in forward); channels along ``axis``, or
    an index narrower than ``x`` where it varies, stay whole."""
    axis = node.attrs["axis"] % len(node.shape)
    x_shape, index_shape = _shape(s, node, 0), _shape(s, node, 1)
    x = _pad(_tensor(s, ins[0], node), len(node.shape))
    if _varies(x, axis):
        raise RuleError("gathers along channels")
    if any(_varies(x, a) and x_shape[a] != node.shape[a] for a in range(len(node.shape))):
        raise RuleError("gathers a part of the channels")
    shape = list(node.shape)
    shape[axis] = 1
    out = np.broadcast_to(x, shape)
    index = _pad(_tensor(s, ins[1], node), len(index_shape)) if len(ins) > 1 else None
    if index is not None and _varies(index, axis):  # its channels become positions
        s.block(index, f"{node.label or node.op}: its indices")
        index = None
    for a in range(len(node.shape)):  # an index as wide as x there, at a width fixed in code
        if a != axis and _varies(x, a) and index_shape[a] > 1 and (
                index is None or not _varies(index, a)):  # fmt: skip
            raise RuleError("its index is as wide as the channels at a width fixed in code")
    if index is not None and index.size > 1:  # its own channels are x's, position by position
        s.uf.union_arrays(index, out)
    return s.canonical(np.broadcast_to(out, node.shape))


@register_rule("along")
def _along(s, node, ins):
    """Ops acting along one axis (softmax, cumsum, roll, sort): fine unless it holds
    channels. The inputs at positions ``tied`` (an unpool's indices, which a pool of the
    same channels wrote) have the first one's layout and are tied to it."""
    ndim = len(node.shape[0] if isinstance(node.shape, list) else node.shape)
    operands = [_pad(_tensor(s, ins[i], node), ndim) for i in (0, *node.attrs.get("tied", ()))]
    for ids in operands:
        if any(_varies(ids, d % ndim) for d in node.attrs["dims"]):
            raise RuleError("acts across channels")
    ids = operands[0]
    for other in operands[1:]:
        try:
            ids = np.broadcast_arrays(ids, other)[0]
        except ValueError:
            raise RuleError(f"its inputs' layouts differ: {ids.shape}, {other.shape}") from None
        s.uf.union_arrays(ids, other)
    return _each_output(node, s.canonical(ids) if len(operands) > 1 else ids)
