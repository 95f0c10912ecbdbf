"""Read a PyTorch model into the core graph: torch.fx first, torch.export where fx fails.

Why torch.fx first: symbolic tracing keeps ``nn.Conv2d``/``nn.Linear``/``nn.BatchNorm``
as leaf calls named by their module path, so every graph node maps straight back
to the parameters we mask and cut, and it traces every torchvision classifier.
Shapes come from one forward pass on a zero input (``ShapeProp``) in eval mode.

Where fx cannot trace (data-dependent control flow, iterating a tensor), the model is
captured with ``torch.export`` (non-strict) instead: see :mod:`.export_capture`. Both
give one core graph with the same layer names, so rules, groups and plans do not care
which capture made it; ``graph.notes`` says which one ran.

Functions that compute a layer from parameters (``F.batch_norm`` in timm's
``BatchNormAct2d``) are read as that layer (:mod:`._layers`).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import operator
import types
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize
from torch.nn.utils.prune import BasePruningMethod

from ..core.flops import count_product
from ..core.graph import Graph, LayerInfo, Node
from ..core.workflow import Captured
from ..errors import AnalysisError
from ._advice import (
    check_runs,
    detector_hint,
    first_line,
    first_sentence,
    output_hint,
    runs,
    sample_fix,
    sample_words,
    say_global_hooks,
    say_unregistered,
    say_written_parameters,
)
from ._copy import computed_weights, forward_hooks, is_users, user_hooks
from ._eager_reads import training_sources
from ._init_args import random_state_kept
from ._layers import (
    COMPUTED,
    functional_node,
    instance_forward_words,
    module_path,
    plain_params,
    split_sizes,
)
from ._on_sample import HOOKED, settled, sized_range, traced_hooks_off
from ._ops import (
    CALL_RULES,
    EXPORT_READS,
    FUNCTIONAL,
    LEAF_MODULES,
    call_rule,
    module_rule,
    view_written_in_place,
)
from ._sizes import SizeReads
from ._snapshot import (
    attributes_kept,
    held_by_hooks,
    plain_attributes,
    put_back,
    put_back_buffers,
    saved_buffers,
)
from ._transformer import TRACED_THROUGH, tracing_layers
from ._tree import leaves
from ._writes import SHAPED_AS, WritableProxy, WriteShapes, write_spec, written

__all__ = ["capture", "capture_fx"]


class _TraceError(AnalysisError):
    """torch.fx could not trace the model (another capture may)."""


def _meta_shape(meta: Any) -> Any:
    if isinstance(meta, TensorMetadata):
        return tuple(int(d) for d in meta.shape)
    if isinstance(meta, (list, tuple)) and meta and all(
        isinstance(m, TensorMetadata) for m in meta
    ):
        return [tuple(int(d) for d in m.shape) for m in meta]
    return None


def _is_record(node: fx.Node) -> bool:
    """A record built only to be returned (a dataclass, a namedtuple: a call of a class,
    which torch.fx records as a node)."""
    return node.op == "call_function" and isinstance(node.target, type) and all(
        u.op == "output" or _is_record(u) for u in node.users)  # fmt: skip


def _returned(node: fx.Node) -> list[fx.Node]:
    """The nodes ``node`` (the output) returns, through the records built to return them."""
    found = []
    for n in _operands(node):
        found += _returned(n) if _is_record(n) else [n]
    return found


def _operands(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return list(dict.fromkeys(found))


class _Proxy(WritableProxy):
    """The capture's proxy: ``len()`` of a sequence the forward made (the pieces of a
    split, a shape) and ``int()``/``float()`` of sizes are answered on the sample
    (:mod:`._on_sample`). A tensor's length stays refused: a channel count taken as a
    number would be fixed in the graph."""

    def __len__(self) -> int:
        return _length(self)

    # no ``__index__``: torch's argument parser tries it to tell a list of ints, and a
    # proxy refusing it is what sends ``tensor_split(x, [c // 4])`` to the proxy's call
    def __int__(self) -> int:
        return _number(self, int)

    def __float__(self) -> float:
        return _number(self, float)

    def __getattr__(self, name: str) -> fx.proxy.Attribute:
        return _Attribute(self, name)  # ``x.shape`` too: ``x.view(*x.shape)`` takes its len


class _Attribute(fx.proxy.Attribute):
    __len__, __int__, __float__ = _Proxy.__len__, _Proxy.__int__, _Proxy.__float__


def _length(proxy: fx.Proxy) -> int:
    count = proxy.tracer.length(proxy.node, tensors=False)
    return fx.Proxy.__len__(proxy) if count is None else count


def _number(proxy: fx.Proxy, kind: Any) -> Any:
    """``kind(proxy)`` for a number computed from sizes only (``int(h.shape[-1] * 1.5)``),
    on the sample. The call is also recorded, so the sizes it reads are used as a number
    in the graph: a channel count taken so stays whole."""
    number = settled(proxy.tracer, proxy.node, kind, sizes=True)
    if number is None:
        raise TypeError(f"{kind.__name__}() of a traced value that is not computed from "
                        "sizes alone")  # fmt: skip
    proxy.tracer.create_proxy("call_function", kind, (proxy,), {})
    return number


_WHOLE = "filterprune_whole"  # node meta: why a layer read through is one call


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with the layers of other packages that have a rule as leaves,
    and torch.nn's transformer layers read through (:mod:`._transformer`)."""

    def __init__(self, whole_on_failure: bool = False, buffers: bool = True,
                 example: tuple[Any, ...] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.example = example  # the sample: what the trace asks of a value is answered on it
        # a buffer is read as the model's tensor, not a constant of the trace: per-channel
        # maths on buffers (a DETR or detectron2 FrozenBatchNorm2d) is cut with the buffers
        self.proxy_buffer_attributes = buffers
        self.whole_on_failure = whole_on_failure
        self.whole: set[nn.Module] = set()  # transformer layers read as one call

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if type(m) in TRACED_THROUGH:
            return m in self.whole
        return type(m) in LEAF_MODULES or super().is_leaf_module(m, module_qualified_name)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)  # a write into a tensor made in forward is read

    def create_arg(self, a: Any) -> Any:
        """A numpy number (CompressAI's ``x.permute(*np.arange(4))``), which torch.fx
        refuses, as the Python number torch reads it as."""
        return super().create_arg(a.item() if isinstance(a, np.generic) else a)

    def iter(self, obj: fx.Proxy) -> Any:
        """A value iterated in forward (``sum(torch.split(x, c // r, 1))``, ``zip(weights,
        ops)``), which torch.fx refuses: its items, as many as it holds on the sample. An
        item of a tensor is an index into its first axis, which the rules read as any
        other (an index into channels holds them)."""
        count = self.length(obj.node, tensors=True)
        return super().iter(obj) if count is None else iter([obj[i] for i in range(count)])

    def to_bool(self, obj: fx.Proxy) -> bool:
        """A test of sizes only (``if h % 2``, ``if x.shape[1] != self.channels: raise``),
        which torch.fx refuses: its answer on the sample. The sizes it reads are size
        reads of the graph, so a channel count tested stays whole; a test of a value
        stays refused."""
        answer = settled(self, obj.node, bool, sizes=True)
        if answer is None:
            return super().to_bool(obj)
        self.create_proxy("call_function", bool, (obj,), {})  # its sizes are used as a number
        return answer

    def length(self, node: fx.Node, tensors: bool) -> int | None:
        """How many items ``node``'s value holds on the sample; ``None`` where it cannot
        be run or is no sequence (no tensor unless ``tensors``)."""
        def pieces(value: Any) -> int | None:  # the graph's ops say how many
            if isinstance(value, (tuple, list)) and all(torch.is_tensor(v) for v in value):
                return len(value)
            return len(value) if tensors and torch.is_tensor(value) and value.dim() else None

        def numbers(value: Any) -> int | None:  # a shape's: from sizes only (not tolist())
            return len(value) if isinstance(value, (tuple, list)) else None

        found = settled(self, node, pieces, sizes=False)
        return found if found is not None else settled(self, node, numbers, sizes=True)

    def trace(self, root: Any, concrete_args: Any = None) -> fx.Graph:
        with tracing_layers(), sized_range(root):
            return super().trace(root, concrete_args)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        """A layer made in forward (``nn.AvgPool2d(1, 2)(x)``) is no submodule; without
        weights its ops are traced as if written in place."""
        if not any(isinstance(v, fx.Proxy) for _, v in leaves((args, kwargs))) and \
                not user_hooks(m) and not [*m.parameters(), *m.buffers()]:  # fmt: skip
            return forward(*args, **kwargs)  # a layer without weights on constants gives a
            # constant (LaMa's FFC calls ``nn.Identity()`` on the int 0 of an empty branch)
        try:
            self.path_of_module(m)
        except NameError:
            if next(m.parameters(), None) is None and next(m.buffers(), None) is None:
                return forward(*args, **kwargs)
        if type(m) in TRACED_THROUGH and self.whole_on_failure and m not in self.whole:
            return self._through(m, forward, args, kwargs)
        if user_hooks(m) and self.is_leaf_module(m, self.path_of_module(m)):
            return self._hooked(m, forward, args, kwargs)
        return super().call_module(m, forward, args, kwargs)

    def _hooked(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        """A layer with hooks of the user's: torch.fx records its call alone, so its
        pre-hooks and hooks are traced around the call, as ops written in place (a hook
        that keeps a feature map, or scales it). One that fails on the trace's values
        leaves the call as it was: the layer then stays whole, with the reason."""

        def around(given: Any, named: Any) -> Any:  # the call's own: a failure leaves them
            pre, post = forward_hooks(m)
            for _, hook, with_kwargs in pre:
                if not is_users(hook):
                    continue
                if with_kwargs:
                    given, named = hook(m, given, named) or (given, named)
                    continue
                found = hook(m, given)
                if found is not None:
                    given = found if isinstance(found, tuple) else (found,)
            out = fx.Tracer.call_module(self, m, forward, given, named)
            out.node.meta[HOOKED] = True
            for _, hook, with_kwargs in post:
                if is_users(hook):
                    found = hook(m, given, named, out) if with_kwargs else hook(m, given, out)
                    out = out if found is None else found
            return out

        done, out = self._or_undone(lambda: around(args, kwargs))
        return out if done else super().call_module(m, forward, args, kwargs)

    def _through(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        """A transformer layer read through; one whose code branches on a traced value (a
        mask given to it) is read as one call instead, its channels whole, and the trace
        goes on (where torch.export could not read the model either)."""
        done, out = self._or_undone(lambda: fx.Tracer.call_module(self, m, forward, args, kwargs))
        if done:
            return out
        self.whole.add(m)
        proxy = super().call_module(m, forward, args, kwargs)
        proxy.node.meta[_WHOLE] = (f"{type(m).__name__}'s code branches on a value of the "
                                   "trace (a mask given to it): read as one call")  # fmt: skip
        return proxy

    def _or_undone(self, attempt: Any) -> tuple[bool, Any]:
        """``(True, attempt())``, or ``(False, None)`` with the graph and the tracer's
        module records as they were where it raises (TraceError, or torch's checks
        refusing a proxy)."""
        count, stack, calls = len(self.graph.nodes), dict(self.module_stack), dict(self.num_calls)
        try:
            return True, attempt()
        except Exception:  # noqa: BLE001 - any failure: the caller reads the call whole
            for node in reversed(list(self.graph.nodes)[count:]):
                self.graph.erase_node(node)
            self.module_stack.clear()
            self.module_stack.update(stack)
            self.num_calls.clear()
            self.num_calls.update(calls)
            return False, None


def trace(model: nn.Module, example: tuple[torch.Tensor, ...],
          whole_on_failure: bool = False) -> fx.GraphModule:  # fmt: skip
    was_training = model.training
    model.eval()  # trace the inference path (no stochastic depth, no aux heads)
    _lazy_sizes_set(model, example)
    attributes = plain_attributes(model)
    try:
        try:
            gm = fx.GraphModule(model, _traced(model, example, whole_on_failure, attributes))
            _data_read_as_itself(gm.graph)
            _numpy_names_read(gm.graph)
            _in_place_calls_read(gm.graph)
            if not whole_on_failure:
                _refuse_unread_calls(gm.graph)
        except Exception as err:  # noqa: BLE001 - any tracing failure is reported the same way
            raise _TraceError(
                f"torch.fx could not trace {type(model).__name__}: {err}. Make the forward free "
                "of Python control flow on tensors' values."
            ) from err
        finally:  # a module caching from its first call (torchvision's MultiScaleRoIAlign
            put_back(attributes)  # keeps its scales) would keep proxies in the model
        try:  # ShapeProp prints the traceback of a failing node: our error says it once
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()), traced_hooks_off(gm):
                traced = WriteShapes(gm).propagate(*example)
        except Exception as err:  # noqa: BLE001 - reported with the input shape that failed
            if runs(model, example):  # the trace took another path than the model does
                raise _TraceError(
                    f"torch.fx's trace of {type(model).__name__} fails on "
                    f"{sample_words(example)}, which the model itself runs: the trace took "
                    "another branch (an argument left None, a test of a value). "
                    f"{err.__cause__ or err}"
                ) from err
            raise _TraceError(
                f"{type(model).__name__} failed on {sample_words(example)}: "
                f"{err.__cause__ or err}. {sample_fix(model)}"
            ) from err
        _same_outputs(model, example, traced, gm)
    finally:
        model.train(was_training)
    return gm


def _refuse_unread_calls(graph: fx.Graph) -> None:
    """Refuse a trace that calls, on the model's features, another library's operator no
    rule reads (torchvision's ``deform_conv2d``, reached through its Python function), or a
    function of :data:`EXPORT_READS`: to torch.fx it is one call, which keeps the channels
    of its tensors whole; torch.export reads its ops."""
    fed: set[fx.Node] = set()  # nodes the model's inputs reach (features, not weights)
    for node in graph.nodes:
        if node.op == "placeholder" or any(n in fed for n in node.all_input_nodes):
            fed.add(node)
        if node not in fed or node.op != "call_function":
            continue
        operator_call = isinstance(node.target, torch._ops.OpOverloadPacket) \
            and node.target not in FUNCTIONAL and call_rule(node.target) is None  # fmt: skip
        if operator_call or node.target in EXPORT_READS:
            raise _TraceError(f"torch.fx reads {getattr(node.target, '__name__', node.target)} "
                              "as one call, which no channel rule reads")  # fmt: skip


def _lazy_sizes_set(model: nn.Module, example: tuple[Any, ...]) -> None:
    """Run a model with lazy layers once on the sample: their first call sets their sizes
    for good, from real tensors (a trace would set them from its proxies)."""
    if any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()
           for m in model.modules()):  # fmt: skip
        with contextlib.suppress(Exception), torch.no_grad(), attributes_kept(model), \
                random_state_kept(model):  # fmt: skip
            model(*example)  # one that fails is said by the capture


def _data_read_as_itself(graph: fx.Graph) -> None:
    """``x.data`` is ``x`` to the analysis: sizes read from it (``b, c, h, w =
    x.data.size()`` in channel shuffles written for old torch) are ``x``'s own."""
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is getattr and node.args[1:] == ("data",):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)


# numpy's names for arguments that torch's C functions and tensor methods take too
_NUMPY_NAMES = {"axis": "dim", "keepdims": "keepdim"}


def _numpy_names_read(graph: fx.Graph) -> None:
    """``h.softmax(axis=1)`` is ``h.softmax(dim=1)`` to torch and to the rules, which
    read torch's names (read as the default ``dim``, it was cut across channels)."""
    for node in graph.nodes:
        builtin = node.op == "call_method" or node.op == "call_function" and isinstance(
            node.target, types.BuiltinFunctionType)  # fmt: skip
        if builtin and any(k in _NUMPY_NAMES and _NUMPY_NAMES[k] not in node.kwargs
                           for k in node.kwargs):  # fmt: skip
            node.kwargs = {_NUMPY_NAMES.get(k, k): v for k, v in node.kwargs.items()}


# methods that change a tensor's shape in place, not its values
_SHAPED_IN_PLACE = ("unsqueeze_", "squeeze_", "transpose_", "t_", "swapaxes_", "swapdims_")


# methods that write rows of another tensor into theirs in place
_WRITES_IN_PLACE = ("index_add_", "index_copy_", "index_reduce_")


def _in_place_calls_read(graph: fx.Graph) -> None:
    """``conv(x).unsqueeze_(1)`` (SKNet's reference code) is ``unsqueeze(1)`` where nothing
    else reads the tensor it changes: the out-of-place method's rule reads it. After an
    in-place write, ``out.index_add_(0, idx, y)`` (a mixture of experts) or ``a.add_(b)``
    (a residual), reads of ``out`` read the write, as they do at run time (the trace keeps
    reading the tensor before it: ``b``'s conv reached no output); so do reads of the
    tensor an ``out=`` argument names. Writes into weights are left to the analysis (it
    ties a mask written into one to its layer)."""
    order = {node: i for i, node in enumerate(graph.nodes)}
    for node in graph.nodes:
        out = node.kwargs.get("out") if node.op in ("call_function", "call_method") else None
        if isinstance(out, fx.Node) and out.op != "get_attr":  # torch.add(x, b, out=x)
            for user in [u for u in out.users if order[u] > order[node]]:
                user.replace_input_with(out, node)
        if node.op != "call_method" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        if node.target in _SHAPED_IN_PLACE:
            if len(node.args[0].users) == 1:
                node.target = node.target[:-1]
        elif node.target in _WRITES_IN_PLACE or node.target.endswith("_") \
                and not node.target.startswith("_") and node.args[0].op != "get_attr":  # fmt: skip
            for user in [u for u in node.args[0].users if order[u] > order[node]]:
                user.replace_input_with(node.args[0], node)
            _mark_write_through_view(graph, node, order)


# views a write in place on reaches the tensor they view (a copy, from ``reshape``, does not:
# held all the same)
_VIEWS = {"transpose", "permute", "view", "view_as", "reshape", "unsqueeze", "squeeze",
          "flatten", "unflatten", "detach", "narrow", "select", "expand", "expand_as", "t",
          "movedim", "moveaxis", "swapaxes", "swapdims", "diagonal", "unfold", "as_strided"}


def _mark_write_through_view(graph: fx.Graph, node: fx.Node, order: dict[fx.Node, float]) -> None:
    """``x.transpose(1, 2).add_(y)`` changes ``x``, which the trace does not see: later
    reads of ``x`` read a marker that holds its channels and the write's, with that reason
    (they were said to reach no output)."""
    view = node.args[0]
    name = view.target if view.op == "call_method" else getattr(view.target, "__name__", "")
    if view.op not in ("call_method", "call_function") or name not in _VIEWS or \
            not view.args or not isinstance(view.args[0], fx.Node):  # fmt: skip
        return
    base = view.args[0]
    later = [u for u in base.users if order.get(u, -1) > order[node]]
    if not later:
        return
    with graph.inserting_after(node):
        marker = graph.call_function(view_written_in_place, (base, node))
    order[marker] = order[node] + 0.5
    for user in later:
        user.replace_input_with(base, marker)


def _shapes(outputs: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for _, t in leaves(outputs) if torch.is_tensor(t)]


def _same_outputs(model: nn.Module, example: tuple[Any, ...], traced: Any,
                  gm: fx.GraphModule) -> None:  # fmt: skip
    """Refuse a trace whose outputs are not the model's: a forward returning what its hooks
    kept in a table keyed by the input's device (timm's feature hooks) reads another key
    in the trace, where each ``x.device`` is a new value, and returns no feature map. And
    one that skips a layer the model runs on the sample: a test the trace answers
    otherwise (``isinstance(t, torch.Tensor)`` is False for a proxy) would let the cut
    change channels that layer reads unseen."""
    ran: set[str] = set()
    handles = [m.register_forward_pre_hook(lambda _m, _a, name=name: ran.add(name))
               for name, m in model.named_modules()
               if name and next(m.parameters(recurse=False), None) is not None]  # fmt: skip
    try:
        with attributes_kept(model), torch.no_grad():
            real = _shapes(model(*example))
    except Exception:  # noqa: BLE001 - a model that refuses the sample (a hook on batch sizes)
        return
    finally:
        for handle in handles:
            handle.remove()
    if real != _shapes(traced):
        raise _TraceError(
            f"torch.fx's trace of {type(model).__name__} returns tensors of shapes "
            f"{_shapes(traced)[:4]}, where the model returns {real[:4]}: its forward "
            "computes its outputs by means the trace does not follow (state its hooks keep)."
        )
    seen = {n.target for n in gm.graph.nodes if n.op in ("call_module", "get_attr")}
    read = {id(p) for t in seen for p in _tensors_at(gm, t)}  # a tensor two modules share
    modules = dict(model.named_modules())  # is read under one name
    traced = _covered_by(seen)
    skipped = sorted(name for name in ran if not traced(name)
                     and not all(id(p) in read for p in modules[name].parameters(recurse=False)))
    if skipped:
        raise _TraceError(
            f"torch.fx's trace of {type(model).__name__} skips {', '.join(skipped[:4])}, "
            f"which the model runs on {sample_words(example)}: its forward tests something "
            "the trace answers otherwise (`isinstance(t, torch.Tensor)`, a tensor's value)."
        )


def _tensors_at(gm: fx.GraphModule, target: str) -> list[Any]:
    """The parameters and buffers of the module or tensor at ``target`` in ``gm``."""
    try:
        found = gm.get_submodule(target)
    except AttributeError:
        owner, _, attr = target.rpartition(".")
        try:
            found = getattr(gm.get_submodule(owner), attr)
        except AttributeError:
            return []
    if isinstance(found, nn.Module):
        return [*found.parameters(), *found.buffers()]
    return [found] if torch.is_tensor(found) else []


def _traced(model: nn.Module, example: tuple[Any, ...], whole_on_failure: bool,
            attributes: Any) -> fx.Graph:  # fmt: skip
    """``model``'s fx graph, its buffers read as the model's tensors; where its forward
    reads one as a Python value (``if self.steps > 0``, ``int(self.n)``), traced again with
    buffers as constants of the trace (per-channel maths on them then holds its channels),
    rather than by torch.export. A buffer the forward assigns (``self.cache = x``, a step
    count) gets its tensor back: the trace leaves a proxy in it."""
    buffers, fixed = saved_buffers(model), _fixed_arguments(model, example)
    try:
        try:
            return _Tracer(whole_on_failure, example=example).trace(model, fixed)
        except Exception as err:  # noqa: BLE001 - the first failure is the one to report
            put_back(attributes)
            put_back_buffers(buffers)
            try:
                return _Tracer(whole_on_failure, False, example).trace(model, fixed)
            except Exception:  # noqa: BLE001
                raise err from None
    finally:
        put_back_buffers(buffers)


def _fixed_arguments(model: nn.Module, example: tuple[Any, ...]) -> dict[str, Any] | None:
    """``forward``'s arguments the sample leaves at a plain value (``mask=None``,
    ``return_features=False``, by default or given so): torch.fx traces with them fixed, as
    the model runs on the sample, instead of as inputs its code would branch on."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a forward without a signature
        return None
    fixed = {}
    for i, p in enumerate(params):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = example[i] if i < len(example) and p.kind is not p.KEYWORD_ONLY else p.default
        if value is None or isinstance(value, (bool, int, float, str)):
            fixed[p.name] = value
    return fixed or None


def capture(model: nn.Module, example: tuple[torch.Tensor, ...]) -> Captured:
    """Read ``model`` on ``example`` inputs into the core :class:`Graph`.

    torch.fx first; where it fails, torch.export (non-strict), whose data-dependent
    branches are taken as they run on ``example`` (listed in ``graph.notes``).

    Returns:
        The graph, ``example`` as ``sample``, ``refs`` from layer names to modules and in
        ``extra``: ``"capture"`` (``"torch.fx"`` or ``"torch.export"``) and the traced
        ``GraphModule`` (``"gm"``) or ``ExportedProgram`` (``"program"``).

    Raises:
        AnalysisError: When neither capture can read the model, or it fails on ``example``.
    """
    say_unregistered(model)
    with attributes_kept(model):
        captured = _capture(model, example)
    captured.graph.scope_types = nncf_scope_types(model)
    # what the sample was made for: an export after model.half() casts it alike
    captured.extra["dtypes"] = {p.dtype for p in model.parameters() if p.is_floating_point()}
    say_written_parameters(model, example)
    say_global_hooks(model, example, captured.graph.layers)
    return captured


# the layers NNCF wrapped, named so in its scopes (``NNCFConv2d[conv1]``)
_NNCF_WRAPPED = {"Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                 "ConvTranspose3d", "Linear", "Embedding", "EmbeddingBag", "BatchNorm1d",
                 "BatchNorm2d", "BatchNorm3d", "GroupNorm", "LayerNorm"}  # fmt: skip


def nncf_scope_types(model: nn.Module) -> dict[str, str]:
    """Module path -> class as NNCF's scopes name it, ``""`` for the model itself."""
    out = {}
    for name, module in model.named_modules():
        cls = type(module).__name__
        out[name] = f"NNCF{cls}" if cls in _NNCF_WRAPPED and type(module).__module__.startswith(
            "torch.nn") else cls  # fmt: skip
    return out


def _capture(model: nn.Module, example: tuple[torch.Tensor, ...]) -> Captured:
    try:
        return capture_fx(model, example)
    except _TraceError as fx_error:
        check_runs(model, example)
        from .export_capture import capture_export

        try:
            captured = capture_export(model, example)
        except AnalysisError as err:
            try:  # a transformer layer given a traced mask: read as one call, by fx
                return capture_fx(model, example, whole_on_failure=True)
            except _TraceError:
                pass
            raise AnalysisError(f"{output_hint(model, example)}{first_sentence(fx_error)} "
                                f"torch.export failed too: {err}{detector_hint(model)}") from err
        captured.graph.notes.insert(0, f"torch.fx could not trace it ({first_line(fx_error)}); "
                                       "captured with torch.export")  # fmt: skip
        warnings.warn(
            f"{first_line(fx_error)}; captured with torch.export, which fixes sizes read "
            "in forward to the sample input's: a forward that branches on a channel count "
            "(`if x.shape[1] > 8`) takes the sample's branch in the analysis, and a channel "
            "count used as a number (`x * x.shape[1] ** -0.5`, `view(b, c, h, w)` with `c` "
            "read from another tensor) is a constant to it, which a cut may change. Compare "
            "ctrl.strip() with the masked model on your inputs.", stacklevel=3)  # fmt: skip
        return captured


def capture_fx(model: nn.Module, example: tuple[torch.Tensor, ...],
               whole_on_failure: bool = False) -> Captured:  # fmt: skip
    """Trace ``model`` with torch.fx on ``example`` inputs and build the core graph
    (``whole_on_failure``: a transformer layer that cannot be read through is one call)."""
    gm = trace(model, example, whole_on_failure)
    graph = Graph()
    modules = dict(model.named_modules())
    tensors = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    sizes, held = SizeReads.of(gm.graph), held_by_hooks(model)
    for node in gm.graph.nodes:
        if node.op == "output":
            graph.outputs = [n.name for n in _returned(node) if n.name in graph.nodes]
            continue
        if node in sizes.numbers:
            graph.add(_size_node(node, sizes, graph))
            continue
        if node in sizes.compared:
            graph.add(_compared_node(node, sizes.compared[node], graph))
            continue
        converted = _convert(node, modules, graph, tensors)
        if converted.op == "param" and node.target in held:  # a copy's hook reads the original
            converted.attrs = {"target": f"{node.target} (held by a hook's closure)"}
        if converted.op in ("reshape", "expand"):
            _size_attrs(converted, sizes.ties.get(node, []), sizes.free.get(node, set()), graph)
        if converted.op == "split" and node in sizes.even_splits:
            converted.attrs = {**converted.attrs, "equal": True}
            other, axis = sizes.width_of.get(node, (None, 0))
            if other is not None and other.name in graph.nodes:  # ResNeSt's split attention
                converted.inputs = [*converted.inputs, other.name]
                converted.attrs["same_width"] = [len(converted.inputs) - 1, axis]
        if converted.op == "split" and node in sizes.even_slices:
            converted.attrs = {**converted.attrs, "equal_parts": sizes.even_slices[node]}
        if converted.op == "index" and node.users and all(
                u.target in SHAPED_AS for u in node.users):  # fmt: skip
            converted.attrs = {**converted.attrs, "shape_only": True}  # ``ones_like(x[:, :1])``
        if converted.op in ("index", "write") and node in sizes.even_slices:  # on one axis
            converted.attrs = {**converted.attrs, "equal_parts": [sizes.even_slices[node]]}
        graph.add(converted)
    _hold_training_reads(model, gm, graph, example, whole_on_failure)
    add_unseen_params(model, graph)
    count_rows(graph)
    graph.notes.append("captured with torch.fx")
    refs = {name: modules[name] for name in graph.layers if name in modules}
    return Captured(graph, sample=tuple(example), refs=refs,
                    extra={"gm": gm, "capture": "torch.fx"})  # fmt: skip


def _size_node(node: fx.Node, sizes: SizeReads, graph: Graph) -> Node:
    """A size read used as a number: its channels stay whole (core rule ``size``)."""
    tensor, axes = sizes.reads[node]
    uses = ", ".join(sorted({str(getattr(u.target, "__name__", u.target)) for u in node.users}))
    reason = f"{tensor.name}'s size along axis {', '.join(map(str, axes))} is read in forward " \
             f"and used as a number ({uses})"  # fmt: skip
    inputs = [tensor.name] if tensor.name in graph.nodes else []
    return Node(node.name, "size", inputs, attrs={"dims": list(axes), "reason": reason},
                label="size")  # fmt: skip


def _compared_node(node: fx.Node, pair: tuple, graph: Graph) -> Node:
    """Two sizes tested for equality: axes equal on the sample are tied (core rule
    ``size``'s ``equal_dims``), so the test answers the same at any cut."""
    (a, dims), (b, _) = pair
    reason = f"{a.name}'s size along axis {', '.join(map(str, dims))} is compared with " \
             f"{b.name}'s in forward"  # fmt: skip
    present = [(t, list(d)) for t, d in pair if t.name in graph.nodes]
    attrs = {"dims": present[0][1] if present else [], "reason": reason}
    if len(present) == 2:
        attrs["equal_dims"] = present[1][1]
    return Node(node.name, "size", [t.name for t, _ in present], attrs=attrs, label="size")


def _size_attrs(node: Node, ties: list[tuple[int, fx.Node, int]], free: set[int],
                graph: Graph) -> None:  # fmt: skip
    """Set a reshape's sizes read in forward: axes tied to the axes read (core
    ``tied_dims``, the tensors read added as inputs); ``free`` axes follow the element
    count; the rest stay ``fixed_dims``."""
    if not ties and not free:
        return
    fixed, tied = set(node.attrs.get("fixed_dims", ())) - free, []
    for axis, tensor, read_axis in ties:
        if tensor.name not in graph.nodes:
            continue
        if tensor.name not in node.inputs:
            node.inputs.append(tensor.name)
        tied.append([axis, node.inputs.index(tensor.name), read_axis])
        fixed.discard(axis)
    node.attrs = {**node.attrs, "fixed_dims": sorted(fixed), "tied_dims": tied}


_TUPLE_FIELDS = {"values": 0, "indices": 1}  # of max/min/sort/topk results
NEW_FILLED = ("new_zeros", "new_ones", "new_full", "new_empty")  # x gives dtype, device


def _convert(node: fx.Node, modules: dict[str, nn.Module], graph: Graph,
             tensors: set[str]) -> Node:  # fmt: skip
    shape = _meta_shape(node.meta.get("tensor_meta"))
    inputs = [n.name for n in _operands(node) if n.name in graph.nodes]
    if node.op == "placeholder":
        return Node(node.name, "input", shape=shape)
    if node.op == "get_attr":
        target = node.target if not node.target.startswith("_tensor_constant") else (
            f"{node.target}, a tensor made in forward from no parameter or buffer (a "
            "constant, or a plain tensor attribute)")  # fx's name for a value  # fmt: skip
        return Node(node.name, "param", shape=shape, attrs={"target": target})
    if _is_record(node):  # its tensors are the model's outputs
        return Node(node.name, "noop", inputs, label=getattr(node.target, "__name__", "record"))
    if node.op == "call_module" and isinstance(modules[node.target],
                                               parametrize.ParametrizationList):  # fmt: skip
        # a parametrized weight read outside its layer's forward (``layer.weight``): the
        # layer stays whole, as a cut of it would not follow there
        owner = node.target.rpartition(".parametrizations.")[0]
        return Node(node.name, "stop", inputs, shape, label="parametrization",
                    attrs={"reason": f"reads the weight of {owner} outside its forward",
                           "reads_layers": [owner]})  # fmt: skip
    if node.op == "call_module" and inputs and not _unseen_hooks(node, modules[node.target]):
        in_shape = graph[inputs[0]].shape
        found = recurrent_node(node.target, modules[node.target], in_shape, graph)
        if found is not None:  # an LSTM: its input features are cut with its columns
            return Node(node.name, found[0], inputs, shape, layer=node.target,
                        attrs=found[1], label=type(modules[node.target]).__name__)
    if shape is None and node.op == "call_module":
        # a module returning a tuple with None in it (attention without weights) or a
        # nested one (an LSTM's ``out, (h, c)``): no rule reads it, so its inputs stay
        # whole; its matrices count once per input token
        in_shape = graph[inputs[0]].shape if inputs else None
        return _no_rule(node, modules[node.target], inputs, None, in_shape, graph)
    label = getattr(node.target, "__name__", str(node.target))
    if shape is None and _holds_tensors(node.meta.get("tensor_meta")):
        # a function returning a tuple with None in it (``F.multi_head_attention_forward``)
        # or a nested one: no rule reads it, so its inputs stay whole
        return no_rule_stop(node.name, inputs, None, label, graph, modules, node)
    if shape is None:
        return Node(node.name, "noop", inputs, label=str(node.target))
    if node.op == "call_module":
        return _module_node(node, modules[node.target], inputs, shape, graph)
    if node.target is operator.getitem:
        return _getitem(node, inputs, shape, graph)
    if node.target is written:  # ``out[:, :fold] = x[:, 1:, :fold]``: its index as it ran
        dst, value = node.args[0], node.args[2]
        names = [dst.name] + ([value.name] if isinstance(value, fx.Node)
                              and value.name in graph.nodes else [])  # fmt: skip
        kind, attrs = write_spec(node, graph[dst.name].shape)
        return Node(node.name, kind, names, shape, attrs=attrs, label="setitem")
    src = node.args[0] if node.target is getattr else None
    if isinstance(src, fx.Node) and src.name in graph.nodes and isinstance(
            graph[src.name].shape, list) and node.args[1] in _TUPLE_FIELDS:  # fmt: skip
        index = _TUPLE_FIELDS[node.args[1]]  # ``x.max(2).values``: a field of the result
        return Node(node.name, "getitem", inputs[:1], shape, attrs={"index": index})
    if node.op == "call_function" and node.target in FUNCTIONAL:
        return _functional(node, label, shape, modules, graph, tensors)
    if node.target is getattr and node.args[1] in ("real", "imag"):  # of a complex tensor
        return Node(node.name, "identity", inputs[:1], shape, label=f"getattr {node.args[1]}")
    if node.target is getattr and node.args[1] in ("mT", "mH") and shape:  # the last two
        perm = [*range(len(shape) - 2), len(shape) - 1, len(shape) - 2]  # axes swapped
        return Node(node.name, "permute", inputs[:1], shape, attrs={"perm": perm},
                    label=f"getattr {node.args[1]}")  # fmt: skip
    if node.op == "call_method" and node.target in NEW_FILLED:
        # ``x.new_zeros(n, 24)``: x gives its dtype and device only (sizes read from it
        # are size nodes of their own); a tensor made in forward, as torch.export sees it
        return Node(node.name, "param", shape=shape,
                    attrs={"target": node.name, "fill": True, "made": True})  # fmt: skip
    builder = call_rule(node.target)
    if builder is None:
        return no_rule_stop(node.name, inputs, shape, label, graph, modules, node)
    in_shape = graph[inputs[0]].shape if inputs else None
    try:
        kind, attrs = builder(node, in_shape if isinstance(in_shape, tuple) else ())
    except (TypeError, ValueError, KeyError, IndexError):
        computed = any(isinstance(a, fx.Node) for a in [*node.args[1:], *node.kwargs.values()])
        # an axis or size computed in forward (``torch.cat(xs, dim=x.dim() - 3)``), or a
        # call form the rule does not read: its channels stay whole
        why = "computed in forward" if computed else "in a form this rule does not read"
        return Node(node.name, "stop", inputs, shape, label=label,
                    attrs={"reason": f"{label} with arguments {why}"})  # fmt: skip
    if kind == "split":
        attrs["sizes"] = split_sizes(attrs, shape)
    return Node(node.name, kind, inputs, shape, attrs=attrs, label=label)


def _unseen_hooks(node: fx.Node, module: nn.Module) -> bool:
    """Whether the user's hooks of a call's module were left out of the trace (torch.fx
    records a call without them; :meth:`_Tracer._hooked` traces those it can)."""
    return user_hooks(module) and not node.meta.get(HOOKED)


def _hook_words(module: nn.Module) -> str:
    own = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    return "has a forward hook" if any(is_users(h) for h in own) else \
        "runs a global forward hook (register_module_forward_hook)"  # fmt: skip


def _module_node(node, module, inputs, shape, graph: Graph) -> Node:
    name = node.target
    label = type(module).__name__
    found = module_rule(module)  # a parametrized layer's class derives from the layer's
    if found is None or type(module).forward is not found[0].forward or _unseen_hooks(node,
                                                                                     module):
        return _no_rule(node, module, inputs, shape, shape, graph)
    if "forward" in vars(module):
        return _no_rule(node, module, inputs, shape, shape, graph, instance_forward_words(
            module, name))  # fmt: skip
    in_shape = graph[inputs[0]].shape if inputs else None
    (kind, attrs), info = found[1](module, name, in_shape, shape)
    if info.weight is not None and info.weight not in info.params:  # a weight buffer
        graph.layers.setdefault(name, LayerInfo(name, "opaque", plain_params(module)))
        weight = getattr(module, info.weight, None)  # a fixed filter: what it multiplies
        attrs = {"reason": _no_weight_words(module, label, name),
                 "positions": attrs.get("positions", _tokens(shape, graph))}  # fmt: skip
        if torch.is_tensor(weight):
            attrs["weight_elems"] = weight.numel()
        return Node(node.name, "stop", inputs, shape, layer=name, label=label, attrs=attrs)
    if info.params or info.kind in ("conv", "linear", "batchnorm"):
        graph.layers.setdefault(name, info)
    # an unpool's indices too; every input of a layer that keeps some whole (``held``)
    read = inputs if "held" in attrs else inputs[:1 + len(attrs.get("tied", ()))]
    return Node(node.name, kind, read, shape, layer=name, attrs=attrs, label=label)


def _no_weight_words(module: nn.Module, label: str, name: str) -> str:
    """Why a conv or linear layer whose weight is no parameter stays whole."""
    if any(isinstance(h, BasePruningMethod) for h in module._forward_pre_hooks.values()):
        # its mask buffer is named as the masks' own (``weight_mask``)
        return (f"{label} {name}'s weight is computed by torch.nn.utils.prune, whose mask "
                "buffer the filter masks would replace: make that pruning permanent first "
                "(torch.nn.utils.prune.remove(module, 'weight'))")  # fmt: skip
    return f"{label} {name} has no weight parameter"


# lookups read entries of a table and multiply nothing: no FLOPs of a matrix
_LOOKUP_MODULES = (nn.Embedding, nn.EmbeddingBag)
_LOOKUPS = {"embedding", "embedding_bag", "_embedding_bag", "index", "gather", "index_select",
            "take", "take_along_dim"}  # fmt: skip


def _no_rule(node: fx.Node, module: nn.Module, inputs: list[str], shape: Any, tokens_of: Any,
             graph: Graph, reason: str | None = None) -> Node:  # fmt: skip
    """A module no rule reads: a stop whose inputs stay whole, its parameters counted
    (its matrices once per token of ``tokens_of``, :func:`_tokens`)."""
    name, label = node.target, type(module).__name__
    graph.layers.setdefault(name, LayerInfo(name, "opaque", plain_params(module)))
    reason = reason or (f"{label} {name} {_hook_words(module)}, which the trace does not see"
                        if _unseen_hooks(node, module) else node.meta.get(
                            _WHOLE, f"no channel rule for module {label}"))  # fmt: skip
    attrs = {"reason": reason}
    if not isinstance(module, _LOOKUP_MODULES):
        attrs["positions"] = _tokens(tokens_of, graph)
    return Node(node.name, "stop", inputs, shape, layer=name, label=label, attrs=attrs)


# methods that change a tensor's type, device or memory layout, not its values' channels
_CASTS = {"to", "type", "type_as", "contiguous", "float", "half", "double", "bfloat16"}


def _functional(node: fx.Node, label: str, shape, modules, graph: Graph, tensors) -> Node:
    """A function computing a layer from parameters (``F.batch_norm`` on ``bn.weight``)."""

    def resolve(value: fx.Node) -> str:
        while value.op == "call_method" and value.target in _CASTS and isinstance(
                value.args[0], fx.Node):  # ``self.weight.to(x.dtype)``: the weight itself
            value = value.args[0]
        is_tensor = value.op == "get_attr" and value.target in tensors
        return value.target if is_tensor else COMPUTED

    return functional_node(node, label, shape, graph, modules, resolve, CALL_RULES.get(node.target))


def _getitem(node: fx.Node, inputs, shape, graph: Graph) -> Node:
    src, index = node.args[0], node.args[1]
    held = graph[src.name].shape
    if isinstance(held, list) or graph[src.name].op == "stop":
        if isinstance(index, int):
            return Node(node.name, "getitem", [src.name], shape, attrs={"index": index})
        if isinstance(index, slice) and isinstance(held, list):  # x.chunk(4, 1)[1:]
            picked = list(range(len(held)))[index]
            return Node(node.name, "getitem", [src.name], shape, attrs={"index": picked})
    basic = _basic_index(index, graph[src.name].shape, shape)
    if basic is None:
        picked = _picked_axes(index, graph[src.name].shape)
        if picked is not None:  # core rule ``gather``: the other axes pass through
            return Node(node.name, "gather", inputs, shape, label="getitem",
                        attrs={"picked": picked})  # fmt: skip
        return Node(node.name, "stop", inputs, shape, label="getitem",
                    attrs={"reason": "advanced indexing"})  # fmt: skip
    idx, computed = basic
    attrs = {"index": idx, "computed_axes": computed} if computed else {"index": idx}
    return Node(node.name, "index", [src.name], shape, attrs=attrs, label="getitem")


def _picked_axes(index: Any, in_shape: Any) -> list[int] | None:
    """The axes an index of full slices and integer index tensors (or lists) picks along
    (``x[b, idx]``, ``x[:, :, idx]``); None for any other index (a mask, a partial slice,
    an int or None beside an index tensor)."""
    items = index if isinstance(index, tuple) else (index,)
    if not isinstance(in_shape, tuple) or sum(it is Ellipsis for it in items) > 1:
        return None
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items = (*items[:at], *[slice(None)] * (len(in_shape) - len(items) + 1),
                 *items[at + 1:])  # fmt: skip
    picked = []
    for axis, it in enumerate(items):
        if isinstance(it, slice) and it == slice(None):
            continue
        meta = it.meta.get("tensor_meta") if isinstance(it, fx.Node) else None
        ints = isinstance(it, (list, tuple)) and it and all(type(v) is int for v in it)
        if not ints and not (isinstance(meta, TensorMetadata) and not meta.dtype.is_floating_point
                             and meta.dtype != torch.bool):  # fmt: skip
            return None
        picked.append(axis)
    return picked if picked and len(items) <= len(in_shape) else None


def _basic_index(index: Any, in_shape, out_shape) -> tuple[Any, list[int]] | None:
    """Slices, ints, None and Ellipsis; None for any other (advanced) index.

    A slice whose bounds are computed in forward (``y[..., : y.shape[-1] - 1]``) becomes
    one of the length it took on the traced input, and its axis is listed: the core rule
    keeps channels whole there, as the bounds would not follow a cut.
    """
    items = index if isinstance(index, tuple) else (index,)
    if not all(it is None or it is Ellipsis or isinstance(it, (int, slice)) for it in items):
        return None
    computed = [i for i, it in enumerate(items) if isinstance(it, slice)
                and any(isinstance(v, fx.Node) for v in (it.start, it.stop, it.step))]  # fmt: skip
    if not computed:
        return index, []
    if not (isinstance(in_shape, tuple) and isinstance(out_shape, tuple)):
        return None
    spans = [len(in_shape) - sum(it is not None and it is not Ellipsis for it in items)
             if it is Ellipsis else 1 for it in items]  # fmt: skip
    new, axes, in_axis, out_axis = list(items), [], 0, 0
    for i, it in enumerate(items):
        if i in computed:
            new[i] = slice(0, out_shape[out_axis])
            axes.append(in_axis)
        in_axis += 0 if it is None else spans[i]
        out_axis += 0 if isinstance(it, int) else spans[i]
    return (tuple(new) if isinstance(index, tuple) else new[0]), axes


def _holds_tensors(meta: Any) -> bool:
    if isinstance(meta, TensorMetadata):  # a named tuple itself
        return True
    if isinstance(meta, (list, tuple, dict)):
        return any(_holds_tensors(m) for m in (meta.values() if isinstance(meta, dict) else meta))
    return False


def no_rule_stop(name: str, inputs: list[str], shape: Any, label: str, graph: Graph,
                 modules: dict[str, nn.Module], node: fx.Node) -> Node:  # fmt: skip
    """A call no rule reads: a stop whose inputs stay whole. Matrices it reads (an LSTM's,
    attention's projections) count once per token of its first input, kernels once per
    output position of a channels-first conv (a deformable conv's); where it reads
    every parameter of the module it runs in, that module is an opaque layer, listed as
    left in float by quantization (torch.fx calls such a module whole: :func:`_no_rule`)."""
    attrs: dict[str, Any] = {"reason": f"no channel rule for {label}"}
    params = [graph[i] for i in inputs if graph[i].op == "param" and not graph[i].attrs.get(
        "fill") and sum(n > 1 for n in graph[i].shape or ()) >= 2]  # a matrix, not a scale
    if not params or label.split(".")[0] in _LOOKUPS or not _reads_input(inputs, graph):
        # no data in it (an old-style weight norm's ``_weight_norm(v, g)``): weight maths
        return Node(name, "stop", inputs, shape, label=label, attrs=attrs)
    data = [graph[i].shape for i in inputs if graph[i].op != "param"]
    if any(len(p.shape) > 2 for p in params) and isinstance(shape, tuple) and len(shape) > 2:
        attrs["positions"] = math.prod(shape[2:])  # a kernel: a conv's output positions
    else:  # matrices: once per token (the axes before the last) of its first input
        attrs["positions"] = _tokens(data[0], graph) if data else 1
    context = module_path(node, modules)
    module = modules.get(context or "")
    read = {graph[i].attrs.get("target") for i in inputs if graph[i].op == "param"}
    # the module's own call (an LSTM's), reading every parameter it has, children's too
    if context and module is not None and all(
            p.attrs.get("target", "").startswith(f"{context}.") for p in params) and all(
            f"{context}.{n}" in read for n, _ in module.named_parameters()):  # fmt: skip
        graph.layers.setdefault(context, LayerInfo(context, "opaque", plain_params(module)))
        return Node(name, "stop", inputs, shape, layer=context, label=label, attrs=attrs)
    attrs["weight_elems"] = sum(math.prod(p.shape) for p in params)
    return Node(name, "stop", inputs, shape, label=label, attrs=attrs)


def _reads_input(names: list[str], graph: Graph) -> bool:
    """Whether a model input reaches any of the nodes ``names``."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if graph[name].op == "input":
            return True
        todo.extend(graph[name].inputs)
    return False


def _tokens(shape, graph: Graph) -> int:
    """Rows per sample an opaque module's matrices apply to (its output without the last
    axis, over the batch): attention's projections run once per token."""
    first = shape[0] if isinstance(shape, list) and shape else shape
    if not isinstance(first, tuple) or len(first) < 2:
        return 1
    return max(1, math.prod(first[:-1]) // _sample_batch(graph))


def _sample_batch(graph: Graph) -> int:
    """The batch of the model's (first) input in the capture."""
    return next((int(n.shape[0]) for n in graph if n.op == "input" and isinstance(n.shape, tuple)
                 and n.shape and isinstance(n.shape[0], int)), 1) or 1  # fmt: skip


def recurrent_node(layer: str, module: nn.Module, in_shape: Any,
                   graph: Graph) -> tuple[str, dict[str, Any]] | None:  # fmt: skip
    """``(kind, attrs)`` of an RNN, LSTM or GRU ``layer`` (or one step of it, a cell)
    called on a tensor of ``in_shape`` (not a packed sequence), its facts added to
    ``graph.layers``: its first layer's input weights lose the columns of cut input
    features."""
    if not isinstance(module, (nn.RNNBase, nn.RNNCellBase)) or not isinstance(
            in_shape, tuple) or not in_shape:  # fmt: skip
        return None
    params = {n: (tuple(p.shape), _recurrent_roles(n, p))
              for n, p in module.named_parameters(recurse=False)}  # fmt: skip
    graph.layers.setdefault(layer, LayerInfo(layer, "recurrent", params))
    return "recurrent", {"ndim": len(in_shape), "in_features": module.input_size,
                         "positions": _tokens(in_shape, graph)}  # fmt: skip


def _recurrent_roles(name: str, p: torch.Tensor) -> tuple[str | None, ...]:
    """The input weights of the first layer read the input's features (their columns)."""
    if name in ("weight_ih_l0", "weight_ih_l0_reverse", "weight_ih"):  # a cell's: weight_ih
        return (None, "in")
    return (None,) * p.dim()


def _covered_by(targets: Iterable[str]) -> Callable[[str], bool]:
    """Whether a module path is one of ``targets`` (dotted paths), holds one, or lies inside
    one; in time linear in the paths, for models of thousands of modules."""
    targets = set(targets)
    holders = targets | {t[:i] for t in targets for i, c in enumerate(t) if c == "."}

    def covered(name: str) -> bool:
        parts = name.split(".")
        return name in holders or any(".".join(parts[:k]) in targets
                                      for k in range(1, len(parts)))  # fmt: skip

    return covered


def _hold_training_reads(model: nn.Module, gm: fx.GraphModule, graph: Graph,
                         example: tuple[Any, ...], whole_on_failure: bool = False) -> None:
    """Modules only the training forward calls (GoogLeNet's and Inception's aux heads):
    the graph is traced in eval mode, so the channels they read would be cut under them.
    Traced once more in train mode, the layers whose outputs reach such a module stay
    whole. A model that cannot be traced in train mode is run once in it, and those
    layers are found on autograd's graph (:mod:`._eager_reads`)."""
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    traced = _covered_by(called | {n.target for n in gm.graph.nodes if n.op == "get_attr"})
    idle = [name for name, m in model.named_modules()  # (the model itself runs: name "")
            if name and any(True for _ in m.parameters(recurse=False)) and not traced(name)]
    if not idle:
        return
    was_training, attributes = model.training, plain_attributes(model)
    model.train()
    try:
        train = _traced(model, example, whole_on_failure, attributes)
    except Exception:  # noqa: BLE001 - DARTS's drop_path, a detector that needs targets
        put_back(attributes)
        train = None
    finally:
        model.train(was_training)
    if train is None:
        found = training_sources(model, example, idle, called)
        if found is None:  # a forward that needs targets to train: they stay unseen
            say_never_run(idle, graph)
            return
        say_never_run([n for n in idle if n not in found], graph)
    else:
        ran = {n.target for n in train.nodes if n.op in ("call_module", "get_attr")}
        ran_in_training = _covered_by(ran)
        say_never_run([n for n in idle if not ran_in_training(n)], graph)
        found = {node.target: _called_before(node, called) for node in train.nodes
                 if node.op == "call_module" and node.target not in called}  # fmt: skip
    for name, sources in found.items():
        inputs = [n.name for n in gm.graph.nodes if n.op == "call_module" and n.target in sources]
        if inputs:
            graph.add(Node(f"{name}#training", "stop", inputs, label=name,
                           attrs={"reason": "runs only in training and reads these channels"}))


def say_never_run(names: list[str], graph: Graph) -> None:
    """Name the modules with parameters the captured forward never ran (another key of a
    ModuleDict, a branch on a forward argument or on data): what they read is not seen, so
    its channels may be cut under them, and the stripped model then fails there."""
    if not names:
        return
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    text = (f"{shown} did not run in the captured forward on the sample input (another "
            "ModuleDict key, a branch on a forward argument or on data, training-only "
            "code): the channels they "
            "read are not seen and may be cut under them, and ctrl.strip()'s model then fails "
            "if they run. Add the layers feeding them to ignored_scopes, or give an "
            "input_info sample that runs them")  # fmt: skip
    graph.notes.append(text)
    warnings.warn(text, stacklevel=4)


def _called_before(node: fx.Node, called: set[str]) -> set[str]:
    """The targets of the nearest modules in ``called`` whose outputs reach ``node``."""
    found, seen, todo = set(), set(), list(node.all_input_nodes)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_module" and n.target in called:
            found.add(n.target)
        else:
            todo.extend(n.all_input_nodes)
    return found


def count_rows(graph: Graph) -> None:
    """Positions per model sample where the first axis is not the batch: a conv or linear
    layer on ``k`` rows per sample (RoIAlign's boxes, frames folded into the batch, a
    time-major sequence) counts ``k`` times, and a product with a weight matrix
    (``x @ w``, an einsum) counts the weight once per row of its output."""
    batch = _sample_batch(graph)
    for node in graph:
        info = graph.layers.get(node.layer or "")
        if node.op == "einsum" and isinstance(node.shape, tuple):
            count_product(graph, node, batch)
        if node.attrs.get("axis0_rows") and isinstance(node.shape, tuple) and len(node.shape) > 1:
            if node.shape[0] != batch and "positions" in node.attrs:
                rows = int(node.attrs["positions"]) * node.shape[0] / batch
                node.attrs = {**node.attrs, "positions": max(1, round(rows))}
            continue
        if node.op not in ("conv", "linear") or info is None or not isinstance(node.shape, tuple):
            continue
        weight = info.params.get(info.weight or "", ((),))[0]
        batched = len(node.shape) == len(weight) if node.op == "conv" else len(node.shape) > 1
        if batched and node.shape[0] != batch:
            rows = int(node.attrs.get("positions", 1)) * node.shape[0] / batch
            node.attrs = {**node.attrs, "positions": max(1, round(rows))}


def add_unseen_params(model: nn.Module, graph: Graph) -> None:
    """Give every parameter no layer owns a bare ``param`` layer: cut where the graph
    reads it (a layer scale), counted as uncut where only opaque code does. So do the
    buffers the graph reads itself (a per-channel constant kept as a buffer), if saved
    in the state_dict (``resize_to_state_dict`` resizes from it)."""
    owned = {f"{layer}.{p}" if p else layer for layer, info in graph.layers.items()
             for p in info.params}  # fmt: skip
    # the parameters a layer's computed weight (weight_norm, spectral_norm, a
    # parametrization) is made from: the layer lists that weight, and a strip writes it in
    modules = dict(model.named_modules())
    for layer in list(graph.layers):
        module = modules.get(layer)
        if module is None:
            continue
        for attr, sources in computed_weights(module).items():
            owned.update(f"{layer}.{src}" for src in sources)
            if parametrize.is_parametrized(module, attr):
                owned.update(f"{layer}.parametrizations.{attr}.{n}"
                             for n, _ in module.parametrizations[attr].named_parameters())
    read = {n.attrs.get("target") for n in graph if n.op == "param"}
    saved = set(model.state_dict(keep_vars=True))
    # a layer's own buffers (a functional BatchNorm's statistics) are cut with the layer;
    # a mask of flags per channel (``torch.where(mask, y, z)``) is cut as values are
    buffers = [(n, b) for n, b in model.named_buffers() if n in read and n in saved
               and (b.is_floating_point() or b.dtype == torch.bool)
               and n.rpartition(".")[0] not in graph.layers]  # fmt: skip
    kinds = {name: "buffer" for name, _ in buffers}  # cut like a parameter, not counted
    for name, p in [*model.named_parameters(), *buffers]:
        if name in owned or any(name.startswith(f"{layer}.") for layer in graph.layers
                                if graph.layers[layer].kind == "opaque"):  # fmt: skip
            continue
        roles = tuple(f"axis{i}" for i in range(p.dim()))
        kind = kinds.get(name, "param")
        graph.layers[name] = LayerInfo(name, kind, {"": (tuple(p.shape), roles)})
    graph.shared = _shared_params(modules, graph)


def _shared_params(modules: dict[str, nn.Module], graph: Graph) -> list[tuple[str, ...]]:
    """The layers' parameters that are one tensor (``c2.weight = c1.weight``)."""
    holders: dict[int, list[str]] = {}
    for layer, info in graph.layers.items():
        module = modules.get(layer)
        for key in info.params if module is not None else ():
            value = module._parameters.get(key)
            if value is not None:
                holders.setdefault(id(value), []).append(f"{layer}.{key}")
    return [tuple(names) for names in holders.values() if len(names) > 1]
