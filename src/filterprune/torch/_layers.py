"""Functions that compute a layer from parameters passed in, read as that layer.

``F.batch_norm(x, bn.running_mean, ..., bn.weight, bn.bias)`` inside timm's
``BatchNormAct2d``, or ``aten.conv2d(x, conv.weight, conv.bias)`` as torch.export
records every convolution, use the same parameters as the module forms
``nn.BatchNorm2d`` and ``nn.Conv2d``, so they get the same rule, keyed to the module
that owns those parameters (the layer name is the module path, as for a module call).
Both captures (torch.fx and torch.export) go through :func:`functional_node`.

A module of the user's own that passes its own ``weight`` (and ``bias``) to such a
function in its forward (``F.conv2d(x, self.weight, self.bias, self.stride)``) is that
layer too, built from the call's arguments: the masks then run its own forward, reading
its parameters masked (see :func:`~filterprune.torch.masks.keeps_own_forward`).

A layer is only cut where the masks can follow it: the masks wrap the owning module's
forward, so a convolution or linear layer must run the forward of its torch class
(a ``Conv2dSame`` that pads in its own forward stays whole, with the reason); a
per-channel layer (BatchNorm, PReLU) may run any forward.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ..core.graph import Graph, LayerInfo, Node
from ._copy import computed_weights
from ._ops import (
    FUNCTIONAL,
    Functional,
    channels_layer,
    conv_layer,
    deform_layer,
    layer_form,
    linear_layer,
    module_rule,
    probe_forwards,
    scalar_layer,
)
from .masks import keeps_own_forward, masks_channels

__all__ = ["functional_node", "plain_params", "owner_of", "module_path", "split_sizes", "within",
           "instance_forward_words", "COMPUTED"]

COMPUTED = "<computed>"  # an argument that is a tensor computed in forward, not a parameter


@dataclass
class Parts:
    """What a capture needs to emit one node: the rule, its attributes, the layer."""

    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None
    info: LayerInfo | None = None


def plain_params(module: nn.Module) -> dict:
    """Every parameter of ``module`` with no axis that can be cut."""
    return {n: (tuple(p.shape), (None,) * p.dim()) for n, p in module.named_parameters()}


def owner_of(name: str) -> tuple[str, str]:
    """``("blocks.0.bn", "weight")`` for the parameter ``blocks.0.bn.weight``."""
    owner, _, attr = name.rpartition(".")
    return owner, attr


def _positions(spec: Functional, in_shape: Any, out_shape: Any) -> int | None:
    """Positions per sample a conv or linear weight is applied at: the output's, the
    input's for a transposed conv (``None``: an embedding, which multiplies nothing)."""
    if nn.Embedding in spec.forms:
        return None
    transposed = any(issubclass(f, nn.modules.conv._ConvTransposeNd) for f in spec.forms)
    shape = in_shape if transposed else out_shape
    if not isinstance(shape, tuple) or len(shape) < 2:
        return 1
    return math.prod(shape[1:-1] if nn.Linear in spec.forms else shape[2:])


def _opaque(reason: str, context: str | None, modules: dict[str, nn.Module], graph_layers: dict,
            positions: int | None, reads: list[str] | None = None,
            weight_elems: int | None = None, learned: bool = True) -> Parts:  # fmt: skip
    """A stop that still counts the parameters (and, for a conv or linear op, the FLOPs)
    of the module it runs in; ``reads``: other layers whose weights it reads (core
    ``reads_layers``: they stay whole too); ``weight_elems``: the size of the weight a conv
    or linear op reads (computed in forward, or another module's), which its FLOPs count
    instead of the module's parameters; ``learned``: that weight is trained (not a fixed
    filter in a buffer), so the layers after the op are not first ones."""
    module = modules.get(context or "")
    attrs: dict[str, Any] = {"reason": reason}
    if positions is not None and learned:  # a conv or linear op: later layers are not first
        attrs["weighted"] = True
    if reads:
        attrs["reads_layers"] = reads
    if weight_elems is not None and positions is not None:
        attrs.update(positions=positions, weight_elems=weight_elems)
    if positions is not None:  # per row of the first axis: count_rows scales it to the batch
        attrs["axis0_rows"] = True
    if not context or module is None or not plain_params(module):
        return Parts("stop", attrs)
    graph_layers.setdefault(context, LayerInfo(context, "opaque", plain_params(module)))
    if positions is not None:
        attrs["positions"] = positions
    return Parts("stop", attrs, layer=context)


def functional_node(node: fx.Node, label: str, shape: Any, graph: Graph,
                    modules: dict[str, nn.Module], resolve: Callable[[fx.Node], str],
                    rule: Callable | None) -> Node:  # fmt: skip
    """The core node of a function call that computes a layer (``node.target`` is in
    :data:`~filterprune.torch._ops.FUNCTIONAL`), in an fx or an exported graph.

    Args:
        resolve: The dotted name of the parameter or buffer a graph value is, or
            :data:`COMPUTED`.
        rule: The capture's call rule for ``node.target`` (used without parameters).
    """
    spec = FUNCTIONAL[node.target]
    data = arg_of(node, spec.data)
    if not isinstance(data, fx.Node) or data.name not in graph.nodes:
        data = None
    params = {}
    for slot, where in spec.params.items():
        value = arg_of(node, where)
        if isinstance(value, fx.Node):
            params[slot] = resolve(value)
    in_shape = graph[data.name].shape if data is not None else None
    weight = arg_of(node, spec.params["weight"]) if "weight" in spec.params else None
    options = {key: arg_of(node, where) for key, where in spec.options.items()}
    parts = _parts(
        spec, label, params, modules, in_shape, shape,
        call=(lambda: rule(node, in_shape or ())) if rule else None,
        options={key: value for key, value in options.items() if value is not None},
        readers=tuple(module_path(u, modules) for u in node.users),
        context=module_path(node, modules), graph_layers=graph.layers,
        weight_elems=_elements(weight) if isinstance(weight, fx.Node) else None,
        learned=isinstance(weight, fx.Node) and _from_parameters(weight, resolve, modules),
        data_path=module_path(data, modules) if data is not None else None,
    )  # fmt: skip
    inputs = [data.name] if data is not None else []
    for where in spec.held:  # other tensors read whole: a stop's, or a conv's ``held``
        value = arg_of(node, where)
        if isinstance(value, fx.Node) and value.name in graph.nodes and inputs:
            inputs.append(value.name)
    return Node(node.name, parts.kind, inputs, shape, layer=parts.layer, attrs=parts.attrs,
                label=label)  # fmt: skip


def _from_parameters(value: fx.Node, resolve: Callable[[fx.Node], str],
                     modules: dict[str, nn.Module]) -> bool:  # fmt: skip
    """Whether a weight is, or is computed from, a parameter: trained, not a fixed blur
    or colour matrix kept in a buffer."""
    todo, seen = [value], set()
    while todo and len(seen) < 64:
        n = todo.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        owner, attr = owner_of(resolve(n))
        if owner in modules and attr in modules[owner]._parameters:
            return True
        todo.extend(n.all_input_nodes)
    return bool(todo)  # too far to tell: taken as trained


def _elements(value: Any) -> int | None:
    """The number of elements of a traced tensor (fx's shape propagation, or torch.export's
    fake value), or None."""
    meta = getattr(value, "meta", {})
    found = meta.get("tensor_meta") or meta.get("val")
    shape = getattr(found, "shape", None)
    return math.prod(int(d) for d in shape) if shape is not None else None


def split_sizes(attrs: dict[str, Any], shapes: list[tuple[int, ...]]) -> list[int]:
    """Sizes of a split's pieces along its axis (1 each for ``unbind``, whose pieces lose
    the axis)."""
    if attrs.get("squeeze"):
        return [1] * len(shapes)
    return [s[attrs["axis"]] for s in shapes]


def arg_of(node: fx.Node, where: tuple[int, str]) -> Any:
    """The argument at ``(position, keyword)`` of a call."""
    position, keyword = where
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(keyword)


def module_path(node: Any, modules: dict[str, nn.Module]) -> str | None:
    """Path of the innermost module a traced or exported op ran in (its metadata)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return _unslice(path.removeprefix("L['self']."), modules) if isinstance(path, str) else None


_SLICES = re.compile(r"((?:\.slice\((?:None|-?\d+), (?:None|-?\d+), (?:None|-?\d+)\))+)\.(\d+)")
_ARGS = re.compile(r"slice\((None|-?\d+), (None|-?\d+), (None|-?\d+)\)")


def _unslice(path: str, modules: dict[str, nn.Module]) -> str:
    """``blocks.slice(1, None, None).0`` -> ``blocks.1``: torch.export names a module of a
    sliced ``ModuleList`` (``for blk in self.blocks[-2:]``) after the slices when the model
    shares a module (diffusers' activations), where ``named_modules`` has its index; read
    against the list's length. A path it cannot read stays as it is."""
    while (found := _SLICES.search(path)) is not None:
        container = modules.get(path[: found.start()])
        if container is None or not hasattr(container, "__len__"):
            return path
        picked = range(len(container))
        for args in _ARGS.findall(found[1]):
            picked = picked[slice(*(None if a == "None" else int(a) for a in args))]
        if int(found[2]) >= len(picked):
            return path
        path = f"{path[: found.start()]}.{picked[int(found[2])]}{path[found.end():]}"
    return path


def _parts(spec: Functional, label: str, params: dict[str, str],
           modules: dict[str, nn.Module], in_shape: Any, out_shape: Any,
           call: Callable[[], tuple[str, dict]] | None, context: str | None,
           graph_layers: dict, weight_elems: int | None = None, learned: bool = True,
           data_path: str | None = None, options: dict[str, Any] | None = None,
           readers: tuple[str | None, ...] = ()) -> Parts:  # fmt: skip
    """The node parts of a function call that computes a layer.

    Args:
        spec: The function's entry in :data:`~filterprune.torch._ops.FUNCTIONAL`.
        label: The function's name, for reasons.
        params: Parameter slot -> the dotted name of the parameter or buffer passed there,
            or :data:`COMPUTED`; slots passed ``None`` are left out.
        modules: ``model.named_modules()``.
        in_shape, out_shape: Shapes of the activation and of the result.
        call: Builds the rule from the call's own arguments, for a layer without
            parameters (``F.layer_norm`` without affine); ``None`` where there is none.
        context: Path of the module the call runs in (for the FLOPs of a stopped layer).
        graph_layers: The graph's layer table; the layer's facts are added to it.
        weight_elems: The size of the weight passed (the FLOPs of a call that reads one
            computed in forward, or another layer's).
        learned: That weight is, or is computed from, a parameter.
        data_path: Path of the module the activation was computed in.
        options: A convolution's ``stride`` and ``groups`` as the call passes them.
        readers: Paths of the modules the ops reading the result run in.
    """
    weighted = not spec.per_channel
    positions = _positions(spec, in_shape, out_shape) if weighted else None
    computed = [slot for slot, name in params.items() if name == COMPUTED]
    if computed:
        why = f"{label} reads a {computed[0]} computed in forward, not a parameter"
        return _opaque(why, context, modules, graph_layers, positions,
                       weight_elems=weight_elems, learned=learned)  # fmt: skip
    if not params:
        if _own_norm(spec, context, modules):
            build = module_rule(modules[context])[1]
            return _built(build, modules[context], context, in_shape, out_shape, context,
                          graph_layers)  # fmt: skip
        return _without_params(spec, label, call)
    owners = {owner_of(name)[0] for name in params.values()}
    named = all(owner_of(name)[1] == slot for slot, name in params.items())
    owner = owners.pop()
    module = modules.get(owner)
    found = module_rule(module) if module is not None else None
    if owners or not named or module is None:
        why = f"{label} reads parameters that are not one layer's ({', '.join(params.values())})"
        if not owners and owner and module is not None:  # by other names (NoisyNet's mu)
            why = (f"{label} reads {type(module).__name__} {owner}'s "
                   f"{', '.join(owner_of(n)[1] for n in params.values())} as its "
                   f"{', '.join(params)}: masks follow parameters named so only")  # fmt: skip
        # a parameter of the model itself (owner "") is its own layer in the graph
        reads = sorted({owner_of(name)[0] or name for name in params.values()} - {context or ""})
        return _opaque(why, context, modules, graph_layers, positions, reads, weight_elems,
                       learned)  # fmt: skip
    if "forward" in vars(module):  # a module's own layer too: masks shadow its weight in
        # its class's forward only
        return _opaque(instance_forward_words(module, owner), owner, modules, graph_layers,
                       positions)  # fmt: skip
    if found is None and owner == context:
        alone = not within(data_path, owner) and not any(within(p, owner) for p in readers)
        own = _own_layer(spec, label, module, owner, params, in_shape, out_shape, options or {},
                         alone)  # fmt: skip
        if isinstance(own, str):
            return _opaque(own, owner, modules, graph_layers, positions, weight_elems=weight_elems)
        if own is not None:
            return _own_parts(own, label, module, owner, in_shape, out_shape, graph_layers,
                              positions, weight_elems, modules)  # fmt: skip
    if found is None or found[0] not in spec.forms:
        if call is not None and not weighted:  # LayerNorm, GroupNorm: nothing to cut or mask
            kind, attrs = call()
            graph_layers.setdefault(owner, LayerInfo(owner, kind, plain_params(module)))
            return Parts(kind, attrs, layer=owner)
        why = f"{label} reads parameters of {type(module).__name__} {owner}: no channel rule"
        # counted by the weight it reads: the owner may be another call's layer already
        return _opaque(why, owner, modules, graph_layers, positions, weight_elems=weight_elems)
    cls, build = found
    inside = within(data_path, owner)
    if masks_channels(type(module)) and inside and not _same_forward(module, cls, in_shape):
        why = (f"{type(module).__name__} {owner} computes what it passes to {label} in its "
               f"own forward, and not what {cls.__name__} computes (a reshape around it?); "
               "masks zero axis 1 of its output")  # fmt: skip
        return _opaque(why, owner, modules, graph_layers, positions)
    if weighted and not keeps_own_forward(type(module)) \
            and not _same_forward(module, cls, in_shape, inside):  # fmt: skip
        why = (f"{type(module).__name__} {owner} runs its own forward around {label} and a "
               "parametrization computes its weight; masks follow only the forward of its "
               "torch class there")  # fmt: skip
        return _opaque(why, owner, modules, graph_layers, positions)
    parts = _built(build, module, owner, in_shape, out_shape, context, graph_layers)
    if weighted and not within(context or "", owner):  # its masks act in its forward only:
        # a cut input may read what is no longer zero there (a sigmoid of a cut channel);
        # its own filters are zeroed by what reads them, as any layer's
        parts.attrs["in_held"] = (f"reads {type(module).__name__} {owner}'s parameters "
                                  "outside its forward, where masks do not act")  # fmt: skip
    return parts


def instance_forward_words(module: nn.Module, name: str) -> str:
    """Why a layer whose forward is set on the instance stays whole."""
    return (f"{type(module).__name__} {name}'s forward is set on the instance ({name}.forward "
            "= ...): masks and quantizers act in its class's forward, which that goes around")


def within(path: str | None, owner: str) -> bool:
    """Whether module path ``path`` is ``owner`` or inside it."""
    return path is not None and (path + ".").startswith(owner + ".")


def _own_parts(build: Callable, label: str, module: nn.Module, owner: str, in_shape: Any,
               out_shape: Any, graph_layers: dict, positions: int | None,
               weight_elems: int | None, modules: dict[str, nn.Module]) -> Parts:  # fmt: skip
    """The parts of an own layer's call; a call that reads the weight as another layer than
    an earlier call of the module did (a conv, then a transposed conv: a tied autoencoder)
    stops, and so keeps that layer whole."""
    (kind, attrs), info = build(module, owner, in_shape, out_shape)
    known = graph_layers.get(owner)
    if known is not None and (known.kind, known.transposed, known.groups, known.params) != (
            info.kind, info.transposed, info.groups, info.params):  # fmt: skip
        why = (f"{label} reads {type(module).__name__} {owner}'s parameters as another layer "
               "than its other call does")  # fmt: skip
        return _opaque(why, owner, modules, graph_layers, positions, weight_elems=weight_elems)
    return _built(build, module, owner, in_shape, out_shape, owner, graph_layers)


def _own_layer(spec: Functional, label: str, module: nn.Module, owner: str,
               params: dict[str, str], in_shape: Any, out_shape: Any,
               options: dict[str, Any], alone: bool) -> Callable | str | None:  # fmt: skip
    """The builder of the layer a module of the user's own computes by passing its own
    parameters (``params``: slot -> dotted name) to a layer function in its forward; a
    reason where that layer cannot be cut; ``None`` where the function has no such form
    (a LayerNorm's or GroupNorm's statistics span channels: the usual path reads it).
    ``alone``: the call reads the module's input and gives its output (nothing else in
    its forward), as a per-channel layer must, whose masks zero channels of its output."""
    names = {owner_of(name)[1] for name in params.values()}
    kind = type(module).__name__
    shadowed = sorted(n for n in names if isinstance(getattr(type(module), n, None), property))
    if shadowed:
        return (f"{label} reads {kind} {owner}'s {shadowed[0]}, a property of its class, "
                "which the masks cannot shadow")  # fmt: skip
    form = layer_form(spec.forms)
    if form is None or not isinstance(in_shape, tuple) or not isinstance(out_shape, tuple) \
            or len(in_shape) < 2:  # fmt: skip
        return None
    if form == "channels":
        count = in_shape[1]
        shapes = [tuple(p.shape) for n, p in module.named_parameters(recurse=False) if n in names]
        if shapes and count > 1 and all(math.prod(s) == 1 for s in shapes):
            return lambda m, name, *_: scalar_layer(m, name, names)  # one PReLU slope
        if not alone:  # its masks zero axis 1 of the module's output, not of the call's
            return (f"{label} in {kind} {owner}, which computes more around it in its "
                    "forward")  # fmt: skip
        if any(s != (count,) for s in shapes):
            return None
        return lambda m, name, *_: channels_layer(m, name, count, names)
    weights = computed_weights(module)
    if any(n not in module._parameters and n not in weights for n in names):
        return None  # a buffer: a fixed filter, not a learned layer
    shape = tuple(module.weight.shape)
    if form == "linear":
        return lambda m, name, i, o: linear_layer(m, name, o, (shape[1], shape[0]), names)
    groups, stride = options.get("groups", 1), options.get("stride", 1)
    strides = list(stride) if isinstance(stride, (tuple, list)) else [stride]
    strides += [options["stride_w"]] if "stride_w" in options else []  # deform_conv2d's
    if not all(isinstance(v, int) for v in [groups, *strides]):
        return f"{label} in {kind} {owner} with a stride or group count computed in forward"
    stride = max(strides)
    transposed = form == "transposed"
    cin, cout = (shape[0], shape[1] * groups) if transposed else (shape[1] * groups, shape[0])
    if groups > 1 and groups == cin:
        return (f"{label} in {kind} {owner} is depthwise (groups={groups}), a group count "
                "its own code passes, which a cut would change")  # fmt: skip
    if form == "deform":
        return lambda m, name, i, o: deform_layer(m, name, o, (cin, cout), groups, stride, names)
    return lambda m, name, i, o: conv_layer(m, name, i, o, (cin, cout), groups, stride,
                                            transposed, names)  # fmt: skip


def _built(build: Callable, module: nn.Module, owner: str, in_shape: Any, out_shape: Any,
           context: str | None, graph_layers: dict) -> Parts:  # fmt: skip
    """The parts of ``module``'s rule, its facts added to the layer table."""
    (kind, attrs), info = build(module, owner, in_shape, out_shape)
    if kind == "groupnorm" and context != owner:  # another module's code passes the count
        attrs = {**attrs, "rewritable": False}
    if info.params or info.kind in ("conv", "linear", "batchnorm"):
        graph_layers.setdefault(owner, info)
    return Parts(kind, dict(attrs), layer=owner)


def _own_norm(spec: Functional, context: str | None, modules: dict[str, nn.Module]) -> bool:
    """Whether a call without parameters is the forward of a GroupNorm or InstanceNorm
    without affine parameters (torch.export records it so): that module is the layer, its
    count cut."""
    module = modules.get(context or "")
    if nn.GroupNorm in spec.forms and isinstance(module, nn.GroupNorm):
        return True
    # an InstanceNorm without affine parameters or running statistics: its num_features
    # follows the cut (else the stripped module keeps the dense count, and torch warns)
    return nn.InstanceNorm2d in spec.forms and isinstance(
        module, nn.modules.instancenorm._InstanceNorm)  # fmt: skip


def _same_forward(module: nn.Module, cls: type[nn.Module], in_shape: Any,
                  inside: bool = False) -> bool:  # fmt: skip
    """Whether ``module`` computes what the forward of its torch class ``cls`` computes.

    Masks run a subclass's own forward (:func:`~filterprune.torch.masks.keeps_own_forward`)
    except where a parametrization computes its weight: there they run the torch class's
    forward, so such a subclass is only cut where both agree, checked on a random input.
    ``inside``: the call's input was computed in the module's own forward (a static
    padding before ``F.conv2d``), which the probe, fed that input, would miss.
    """
    if type(module).forward is cls.forward:
        return True
    if inside:
        return False
    outs = probe_forwards(module, in_shape, type(module).forward, cls.forward)
    if outs is None:
        return False
    own, base = outs
    return isinstance(own, torch.Tensor) and own.shape == base.shape and torch.equal(own, base)


def _without_params(spec: Functional, label: str, call) -> Parts:
    """A layer function called without parameters: normalisation over its own axes."""
    if call is not None:
        kind, attrs = call()
        return Parts(kind, attrs)
    if spec.per_channel:  # batch or instance statistics of each channel on its own
        return Parts("identity")
    return Parts("stop", {"reason": f"{label} without a weight"})
