"""Sizes read in forward (``B, C, H, W = x.shape``, ``x.size(1)``) in a torch.fx graph.

A channel count read at run time follows the cut: after :meth:`strip` it is smaller.
Where it only sizes a reshape axis, that axis is tied to the one it was read from (the
core ``reshape`` rule's ``tied_dims``); anywhere else (a scale, a branch, a new tensor's
shape, arithmetic) the read becomes a core ``size`` node, which keeps those channels
whole. Reads of axes without channels (batch, spatial) cost nothing either way.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..core.rules import axis_parts
from ._writes import shaped_like, written

__all__ = ["SizeReads", "RESHAPES"]

RESHAPES = {"view", "reshape", torch.reshape}
"""Calls whose size arguments may be tied to the axes they were read from."""
UNPOOL_FUNCS = {F.max_unpool1d: 1, F.max_unpool2d: 2, F.max_unpool3d: 3}
UNPOOL_MODULES = {nn.MaxUnpool1d: 1, nn.MaxUnpool2d: 2, nn.MaxUnpool3d: 3}


def _last(k: int):
    return lambda ndim: tuple(range(ndim - k, ndim))


_OUTPUT_SIZE = {  # a call -> (position, keyword of a whole size it takes, the axes it reads)
    **{f: (5, "output_size", _last(k)) for f, k in UNPOOL_FUNCS.items()},
    **{m: (2, "output_size", _last(k)) for m, k in UNPOOL_MODULES.items()},
    nn.ConvTranspose1d: (1, "output_size", _last(1)),
    nn.ConvTranspose2d: (1, "output_size", _last(2)),
    nn.ConvTranspose3d: (1, "output_size", _last(3)),
    F.affine_grid: (1, "size", lambda ndim: (0, *range(2, ndim))),  # all but the channels
}


@dataclass
class SizeReads:
    """The size reads of one fx graph.

    Attributes:
        reads: The node holding a read value -> ``(tensor node, axes read)``.
        ties: A reshape node -> ``[(output axis, tensor node, axis read)]``.
        numbers: Read value nodes used other than as a reshape's size argument.
        free: A reshape node -> output axes whose size is computed from sizes of the
            reshaped tensor itself (``x.view(n, g, c // g, h, w)``): the reshape keeps
            the element count, so such an axis follows the cut like a ``-1``; and its
            ``-1`` axes.
        even_splits: Splits into ``k`` equal pieces of whatever width the tensor has
            (``torch.split(x, x.shape[1] // k, 1)``), like ``chunk``.
        width_of: An even split whose width is read from another tensor of that width
            (ResNeSt's ``torch.split(atten, rchannel // radix, 1)`` with ``rchannel``
            read from ``x``) -> ``(that tensor, axis read)``: the core ties the two
            axes position by position, so a cut keeps their widths equal.
        even_slices: A slice ``x[:, : x.shape[1] // 2]`` -> ``(axis, k)``: its bounds,
            computed from the width it slices, fall on the same ``k`` equal parts at every
            width a cut by equal parts leaves, so it is a piece of a ``chunk(k)``; the
            same for a split whose sizes are so computed (its pieces are whole parts).
        compared: A test of two sizes for equality (``if out.shape[1] != x.shape[1]``, a
            U-Net's ``x.shape != skip.shape``) -> the two reads: the core ties the axes
            equal on the sample, so the test answers the same at any cut; the others stay
            whole. The reads are no numbers for it.
    """

    reads: dict[fx.Node, tuple[fx.Node, tuple[int, ...]]] = field(default_factory=dict)
    ties: dict[fx.Node, list[tuple[int, fx.Node, int]]] = field(default_factory=dict)
    numbers: set[fx.Node] = field(default_factory=set)
    free: dict[fx.Node, set[int]] = field(default_factory=dict)
    even_splits: set[fx.Node] = field(default_factory=set)
    width_of: dict[fx.Node, tuple[fx.Node, int]] = field(default_factory=dict)
    even_slices: dict[fx.Node, tuple[int, int]] = field(default_factory=dict)
    compared: dict[fx.Node, tuple[tuple[fx.Node, tuple[int, ...]], ...]] = field(
        default_factory=dict)

    @classmethod
    def of(cls, graph: fx.Graph) -> SizeReads:
        found = cls()
        for node in graph.nodes:
            found._read(node)
        direct: dict[fx.Node, set[fx.Node]] = {}
        sized: dict[fx.Node, set[fx.Node]] = {}  # a size node -> reshapes it sizes freely
        for node in graph.nodes:
            if node.op == "call_method" and node.target == "expand":
                found._expand_ties(node, direct)
            if node.op not in ("call_method", "call_function") or node.target not in RESHAPES:
                continue
            sizes = reshape_sizes(node, found.reads)
            if len(sizes) != _ndim(node):
                continue
            free = {}
            for axis, arg in enumerate(sizes):
                value, index = arg if isinstance(arg, tuple) else (arg, 0)
                read = found.reads.get(value) if isinstance(value, fx.Node) else None
                if read is not None and (isinstance(arg, tuple) or len(read[1]) == 1):
                    found.ties.setdefault(node, []).append((axis, read[0], read[1][index]))
                    builders = size_builders(node, found.reads)
                    if all(set(b.users) <= {node, *builders} for b in builders):
                        direct.setdefault(value, set()).update({node, *builders})
                    # else the list sizes a new tensor too: the read stays a number
                elif isinstance(arg, fx.Node) and not foreign_size(arg, node.args[0]):
                    free[axis] = arg
            minus = {axis for axis, arg in enumerate(sizes) if type(arg) is int and arg == -1}
            settled = _settled_minus(node, sizes, free, minus, found)
            if len(free) == 1 and (not minus or settled):  # two moving axes (``view(b, g,
                # c // g)`` with ``g`` read too, or a -1 beside) would both follow a cut:
                # the reshape keeps the count, not the layout
                found.free[node] = set(free)
                for arg in free.values():
                    sized.setdefault(arg, set()).add(node)
            if settled:
                found.ties.setdefault(node, []).append(settled)
            elif minus:  # a -1 in a list built in forward, which the op table read as computed
                found.free.setdefault(node, set()).update(minus)
        for node in graph.nodes:
            size = _even_split_size(node, found.reads)
            if size is not None:
                found.even_splits.add(node)
                sized.setdefault(size, set()).add(node)
                tensor, axes = found.reads[size.args[0]]
                if tensor is not node.args[0]:
                    found.width_of[node] = (tensor, axes[0])
            piece = _even_slice(node, found.reads, found.ties) \
                or _parted_split(node, found.reads, found.ties)  # fmt: skip
            if piece is not None:
                found.even_slices[node] = piece[:2]
                for bound in piece[2]:
                    sized.setdefault(bound, set()).add(node)
        for node in graph.nodes:
            pair = _compared(node, found.reads)
            if pair is not None:
                found.compared[node] = pair
        for value in found.reads:
            unpacked = {u for u in value.users if u in found.reads}  # ``b, c = x.shape[:2]``
            rest = set(value.users) - direct.get(value, set()) - unpacked - set(found.compared)
            if not all(_sizes_freely(u, value, sized) for u in rest):
                found.numbers.add(value)
        return found

    def _expand_ties(self, node: fx.Node, direct: dict[fx.Node, set[fx.Node]]) -> None:
        """``idx.unsqueeze(1).expand(-1, x.size(1), -1)``: an axis expanded to a size read
        in forward is tied to the axis read (an index as wide as ``x``'s channels)."""
        sizes = reshape_sizes(node, self.reads)
        if any(isinstance(a, (list, tuple)) for a in node.args[1:]) or \
                len(sizes) != _ndim(node):  # fmt: skip
            return
        for axis, arg in enumerate(sizes):
            value, index = arg if isinstance(arg, tuple) else (arg, 0)
            read = self.reads.get(value) if isinstance(value, fx.Node) else None
            if read is not None and (isinstance(arg, tuple) or len(read[1]) == 1):
                self.ties.setdefault(node, []).append((axis, read[0], read[1][index]))
                direct.setdefault(value, set()).add(node)

    def _read(self, node: fx.Node) -> None:
        if node.target is operator.getitem and node.args[0] in self.reads \
                and isinstance(node.args[1], int):  # fmt: skip
            tensor, axes = self.reads[node.args[0]]
            if -len(axes) <= node.args[1] < len(axes):
                self.reads[node] = (tensor, (axes[node.args[1]],))
            return
        whole = _whole_shape_of(node)
        if whole is not None:
            ndim = _ndim(whole)
            used: set[int] = set()  # axes the users of the whole shape read
            for user in node.users:
                index = user.args[1] if user.target is operator.getitem else None
                axes = _axes(index, ndim)
                if axes is None:  # the whole shape is used: every axis is read, or the
                    # last ones only by an unpool taking it as its output size
                    used.update(_output_size_axes(user, node, ndim) or range(ndim))
                else:
                    self.reads[user] = (whole, axes)
            if used:
                self.reads[node] = (whole, tuple(sorted(used)))
            return
        if node.op == "call_method" and node.target == "size":
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            ndim = _ndim(node.args[0])
            if isinstance(dim, int) and (ndim or dim >= 0):
                self.reads[node] = (node.args[0], (dim % ndim if ndim else dim,))
        elif node.op in ("call_method", "call_function") and node.target in ("numel", torch.numel):
            self.reads[node] = (node.args[0], tuple(range(_ndim(node.args[0]))))


_TESTS = (bool, torch._assert)  # what a comparison may only be for: a branch, an assert


def _compared(node: fx.Node, reads: dict) -> tuple[tuple[fx.Node, tuple[int, ...]], ...] | None:
    """The two reads ``node`` tests for equality (``==``, ``!=``) where both are sizes read
    of as many axes and the answer is only tested; else None."""
    if node.op != "call_function" or node.target not in (operator.eq, operator.ne) or \
            len(node.args) != 2 or node.kwargs:  # fmt: skip
        return None
    pair = tuple(reads.get(a) if isinstance(a, fx.Node) else None for a in node.args)
    if None in pair or len(pair[0][1]) != len(pair[1][1]):
        return None
    if not node.users or any(u.target not in _TESTS for u in node.users):
        return None
    return pair


def _even_split_size(node: fx.Node, reads: dict) -> fx.Node | None:
    """The size node of ``x.split(x.shape[d] // k, d)``: a width read from the split
    tensor itself along the split axis (or from another tensor of that width, see
    :attr:`SizeReads.width_of`), divided by a number in code."""
    if node.op not in ("call_method", "call_function") or node.target not in ("split",
                                                                              torch.split):
        return None
    size = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections")
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    if not (isinstance(size, fx.Node) and size.target is operator.floordiv
            and isinstance(size.args[1], int) and isinstance(dim, int)):  # fmt: skip
        return None
    read = reads.get(size.args[0])
    ndim = _ndim(node.args[0])
    if read is None or not ndim or len(read[1]) != 1:
        return None
    if read[0] is node.args[0]:
        return size if read[1] == (dim % ndim,) else None
    other, mine = _width(read[0], read[1][0]), _width(node.args[0], dim % ndim)
    return size if other is not None and other == mine else None


def _width(tensor: fx.Node, axis: int) -> int | None:
    meta = tensor.meta.get("tensor_meta")
    return int(meta.shape[axis]) if meta is not None and hasattr(meta, "shape") else None


def _even_slice(node: fx.Node, reads: dict,
                ties: dict | None = None) -> tuple[int, int, list[fx.Node]] | None:
    """``(axis, k, bound nodes)`` of a getitem (or a write, :func:`written`) whose one
    computed slice is a piece of ``chunk(k)`` of its tensor along ``axis`` (see
    :attr:`SizeReads.even_slices`)."""
    if node.target not in (operator.getitem, written) or not isinstance(node.args[0], fx.Node):
        return None
    ndim = _ndim(node.args[0])
    items = axis_parts(node.args[1], ndim) if ndim else None  # ``x[..., :c // 2, :, :]``
    if items is None:
        return None
    computed = [(axis, it) for axis, it in enumerate(items)
                if any(isinstance(v, fx.Node) for v in (it.start, it.stop, it.step))]  # fmt: skip
    if len(computed) != 1 or computed[0][1].step not in (None, 1):
        return None
    axis, cut = computed[0]
    width = int(node.args[0].meta["tensor_meta"].shape[axis])
    same = _same_width(node.args[0], axis, ties or {})
    start = (lambda w: 0) if cut.start is None else _bound(cut.start, same, reads)
    stop = (lambda w: w) if cut.stop is None else _bound(cut.stop, same, reads)
    if start is None or stop is None or not width:
        return None

    def at(w: int) -> tuple[int, int]:
        return slice(start(w), stop(w)).indices(w)[:2]

    k = _equal_parts(at, width)
    if k is None:
        return None
    return axis, k, [v for v in (cut.start, cut.stop) if isinstance(v, fx.Node)]


def _parted_split(node: fx.Node, reads: dict,
                  ties: dict | None = None) -> tuple[int, int, list[fx.Node]] | None:
    """``(axis, k, size nodes)`` of ``torch.split(x, [c, x.shape[1] - c], 1)`` (or
    ``tensor_split(x, [c], 1)``) with ``c = x.shape[1] // 4``: sizes computed from the
    width it splits whose bounds fall on the same ``k`` equal parts at every width a cut
    by equal parts leaves (FasterNet's partial conv), so each piece is whole parts of a
    ``chunk(k)``."""
    splits = ("split", torch.split, "tensor_split", torch.tensor_split)
    if node.op not in ("call_method", "call_function") or node.target not in splits:
        return None
    indices = node.target in ("tensor_split", torch.tensor_split)  # split points, not sizes
    tensor = node.args[0]
    sizes = node.args[1] if len(node.args) > 1 else node.kwargs.get(
        "indices" if indices else "split_size_or_sections")  # fmt: skip
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    ndim = _ndim(tensor) if isinstance(tensor, fx.Node) else 0
    if not isinstance(sizes, (list, tuple)) or not isinstance(dim, int) or not ndim \
            or not any(isinstance(v, fx.Node) for v in sizes):  # fmt: skip
        return None
    axis = dim % ndim
    same = _same_width(tensor, axis, ties or {})
    widths = [_bound(v, same, reads) for v in sizes]
    if any(w is None for w in widths):
        return None

    def at(w: int) -> list[int]:
        if indices:
            return [int(f(w)) for f in widths] + [w]
        return [int(b) for b in np.cumsum([f(w) for f in widths])]

    width = int(tensor.meta["tensor_meta"].shape[axis])
    k = _equal_parts(at, width) if width else None
    if k is None or at(width)[-1] != width:
        return None
    return axis, k, [v for v in sizes if isinstance(v, fx.Node)]


def _equal_parts(at: Callable[[int], Any], width: int) -> int | None:
    """The ``k`` of the ``k`` equal parts of a width that bounds ``at(width)`` computed from
    it fall on, at that width and at every width a cut by equal parts leaves; None where
    they do not (or only on single channels, which no cut keeps)."""
    base = width // int(np.gcd.reduce([width, *at(width)]))
    # the bounds' gcd gives the coarsest parts they fall on at this width; the parts they
    # fall on at every width may be finer (``x[:, 2 * (c // 8):]`` has bounds 4 and 16 of
    # 16, parts of 4, but falls on eighths): try each finer part count that divides the width
    for k in range(base, width, base):
        if width % k:
            continue
        try:
            if all(np.array_equal(np.multiply(at(k * n), width), np.multiply(at(width), k * n))
                   for n in range(1, width // k + 1)):  # fmt: skip
                return k
        except ZeroDivisionError:
            continue
    return None


_ARITHMETIC = (operator.floordiv, operator.mul, operator.add, operator.sub)


def _same_width(tensor: fx.Node, axis: int, ties: dict) -> set:
    """``(tensor, (axis,))`` and the reads of axes a reshape tied it to: ``c`` of
    ``nt, c, h, w = x.size()`` is the width of axis 2 of ``x.view(n, t, c, h, w)`` (TSM),
    and of a tensor of its shape made from it (``torch.zeros_like``, a write into that)."""
    same = {(tensor, (axis,))}
    for out_axis, source, source_axis in ties.get(tensor, ()):
        if out_axis == axis:
            same.add((source, (source_axis,)))
    source = shaped_like(tensor)
    if source is not None:
        same |= _same_width(source, axis, ties)
    return same


def _bound(value: Any, same: set, reads: dict):
    """``value`` (a slice bound) as a function of a tensor's width along an axis (reads in
    ``same``), for integer arithmetic on that width read in forward; None for anything else."""
    if isinstance(value, int):
        return lambda width: value
    if not isinstance(value, fx.Node):
        return None
    if reads.get(value) in same:
        return lambda width: width
    if value.op == "call_function" and value.target is operator.neg and len(value.args) == 1:
        inner = _bound(value.args[0], same, reads)
        return None if inner is None else (lambda width: -inner(width))
    op = value.target if value.op == "call_function" else None
    if op not in _ARITHMETIC or len(value.args) != 2 or value.kwargs:
        return None
    left, right = (_bound(a, same, reads) for a in value.args)
    if left is None or right is None:
        return None
    return lambda width: op(left(width), right(width))


_REARRANGE = {"view", "reshape", "flatten", "unflatten", "permute", "transpose", "contiguous",
              "clone", "squeeze", "unsqueeze", torch.reshape, torch.flatten, torch.permute,
              torch.transpose, torch.squeeze, torch.unsqueeze}  # fmt: skip


def _settled_minus(node: fx.Node, sizes: list, free: dict, minus: set[int],
                   found: SizeReads) -> tuple[int, fx.Node, int] | None:  # fmt: skip
    """``(output axis, tensor, axis)`` for a ``-1`` that is one axis of the reshaped tensor
    (``x.reshape(-1, h * c, w)`` with ``c, h, w = x.shape[1:]``: the batch): the one free
    size multiplies reads of that tensor's own axes, the other sizes read the rest of its
    axes but one, and the ``-1`` is that one, at any width. Else None."""
    tensor = node.args[0]
    if len(free) != 1 or len(minus) != 1 or not isinstance(tensor, fx.Node):
        return None
    merged = _merged_axes(next(iter(free.values())), tensor, found.reads)
    ties = found.ties.get(node, [])
    if merged is None or any(t is not tensor for _, t, _ in ties):
        return None
    read = {axis for _, _, axis in ties}
    left = set(range(_ndim(tensor) or 0)) - merged - read
    if len(left) != 1 or merged & read or len(free) + len(ties) + 1 != len(sizes):
        return None
    return next(iter(minus)), tensor, left.pop()


def _merged_axes(size: Any, tensor: Any, reads: dict) -> set[int] | None:
    """The axes of ``tensor`` whose sizes, read in forward and multiplied, make ``size``
    (``h * c`` of ``c, h, w = x.shape[1:]``), or None."""
    if not isinstance(size, fx.Node):
        return None
    read = reads.get(size)
    if read is not None:
        return set(read[1]) if read[0] is tensor and len(read[1]) == 1 else None
    if size.op == "call_function" and size.target is operator.mul and len(size.args) == 2:
        a, b = (_merged_axes(arg, tensor, reads) for arg in size.args)
        if a is not None and b is not None and not a & b:
            return a | b
    return None


def foreign_size(size: fx.Node, tensor: Any) -> bool:
    """Whether a size computed in forward reads the shape of another tensor than
    ``tensor`` (or one ``tensor`` only rearranges): ``C`` of ``B, N, C = x.shape`` used to
    reshape an attention output, whose width does not follow ``x``'s when ``x`` is cut."""
    own = set()
    while isinstance(tensor, fx.Node):
        own.add(tensor)
        rearranges = tensor.op in ("call_method", "call_function") and tensor.target in _REARRANGE
        tensor = tensor.args[0] if rearranges and tensor.args else None
    sources, stack = set(), [size]
    while stack:
        n = stack.pop()
        if n.op == "call_function" and n.target is getattr and n.args[1:] == ("shape",):
            sources.add(n.args[0])
        elif n.op == "call_method" and n.target in ("size", "dim"):
            sources.add(n.args[0])
        elif n.op in ("call_function", "call_method"):
            fx.node.map_arg((n.args, n.kwargs), lambda a: stack.append(a) or a)
        else:  # a placeholder, an attribute or a module output: not a size we can follow
            return True
    return not sources <= own


def _sizes_freely(node: fx.Node, value: fx.Node, sized: dict[fx.Node, set[fx.Node]]) -> bool:
    """Whether ``value`` reaches ``node`` only to size free axes of reshapes of its own
    tensor (through integer arithmetic), nothing else."""
    if node in sized.get(value, set()):
        return True
    if "tensor_meta" in node.meta or node.op not in ("call_function", "call_method"):
        return False
    return bool(node.users) and all(_sizes_freely(u, node, sized) for u in node.users)


def reshape_sizes(node: fx.Node, reads: dict | None = None) -> list[Any]:
    """The size arguments of ``view``/``reshape``, one per output axis. A list built in
    forward (``[b, c] + [1] * (x.ndim - 2)``) is spelled out where its length is known;
    with ``reads``, so is a shape read as a whole (``x.shape[:2] + (1, 1)``), each of its
    axes as ``(read node, position)``."""
    args = [node.kwargs["shape"]] if "shape" in node.kwargs else list(node.args[1:])
    spelled = _spelled(args[0], reads or {}) if len(args) == 1 else None
    return args if spelled is None else spelled


def size_builders(node: fx.Node, reads: dict) -> set[fx.Node]:
    """The nodes that build a reshape's size list in forward (``+`` and ``*`` of lists)."""
    args = [node.kwargs["shape"]] if "shape" in node.kwargs else list(node.args[1:])
    found, stack = set(), args[:1] if len(args) == 1 else []
    while stack:
        value = stack.pop()
        if isinstance(value, fx.Node) and value.target in (operator.add, operator.mul) \
                and _spelled(value, reads) is not None:  # fmt: skip
            found.add(value)
            stack.extend(value.args)
    return found


def _spelled(value: Any, reads: dict) -> list[Any] | None:
    """The items of a list or tuple, of a shape in ``reads``, or of one built of those by
    ``+`` and ``*`` with a count known at capture (``x.ndim - 2``); None for anything else."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, fx.Node):
        return None
    if value in reads and (len(reads[value][1]) > 1 or _shape_slice(value)):
        return [(value, i) for i in range(len(reads[value][1]))]
    if value.op != "call_function" or len(value.args) != 2:
        return None
    left, right = value.args
    if value.target is operator.add:
        parts = _spelled(left, reads), _spelled(right, reads)
        return None if None in parts else parts[0] + parts[1]
    if value.target is operator.mul:
        items, count = (_spelled(left, reads), _static_int(right))
        if items is None:
            items, count = _spelled(right, reads), _static_int(left)
        return None if items is None or count is None else items * count
    return None


def _shape_slice(value: fx.Node) -> bool:
    """Whether ``value`` is a shape or a slice of one (a tuple, even of one size)."""
    return _whole_shape_of(value) is not None or value.target is operator.getitem \
        and isinstance(value.args[1], slice)  # fmt: skip


def _static_int(value: Any) -> int | None:
    """An int computed in forward from tensors' ranks only (``x.ndim - 2``), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, fx.Node) or value.op not in ("call_function", "call_method"):
        return None
    rank = value.target is getattr and value.args[1:] == ("ndim",) \
        or value.op == "call_method" and value.target in ("dim", "ndimension")  # fmt: skip
    if rank:
        return _ndim(value.args[0]) or None
    if value.target in _ARITHMETIC and len(value.args) == 2 and not value.kwargs:
        left, right = (_static_int(a) for a in value.args)
        if left is not None and right is not None and (right or value.target is not
                                                        operator.floordiv):  # fmt: skip
            return value.target(left, right)
    return None


def _whole_shape_of(node: fx.Node) -> fx.Node | None:
    """The tensor whose whole shape ``node`` is (``x.shape``, ``x.size()``), else None."""
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        return node.args[0]
    if node.op == "call_method" and node.target == "size" and len(node.args) == 1 \
            and "dim" not in node.kwargs:  # fmt: skip
        return node.args[0]
    return None


def _output_size_axes(user: fx.Node, size: fx.Node, ndim: int) -> tuple[int, ...] | None:
    """The axes a call reads of ``size``, a whole shape it is given as an output size
    (``unpool(x, i, output_size=skip.size())``: the last ones; ``affine_grid(theta,
    x.size())``: all but the channels); else None."""
    fn = user.target
    if user.op == "call_module":
        fn = type(user.graph.owning_module.get_submodule(user.target))
    elif user.op != "call_function":
        return None
    if fn not in _OUTPUT_SIZE:
        return None
    at, key, axes = _OUTPUT_SIZE[fn]
    given = user.args[at] if len(user.args) > at else user.kwargs.get(key)
    return axes(ndim) if given is size else None


def _ndim(node: Any) -> int:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return len(shape) if shape is not None else 0


def _axes(index: Any, ndim: int) -> tuple[int, ...] | None:
    """The axes ``shape[index]`` reads, or None for an index we do not follow."""
    if isinstance(index, int) and ndim:
        return (index % ndim,)
    bounds = (index.start, index.stop, index.step) if isinstance(index, slice) else (0.5,)
    if all(isinstance(v, (int, type(None))) for v in bounds):
        return tuple(range(ndim))[index]
    return None
