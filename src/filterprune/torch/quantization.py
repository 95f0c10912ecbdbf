"""The compression controller for PyTorch quantization-aware training (8-bit by default).

Quantizers go where the core places them (:mod:`filterprune.core.quantization`):

* weights: a :class:`~filterprune.torch.fake_quant.FakeQuantize` child ``weight_quantizer``
  of each conv/linear layer, applied after the pruning mask (:mod:`filterprune.torch.masks`),
  so pruned filters stay exactly zero;
* activations: a tensor made by a module called once in the traced graph is quantized
  where it is made (forward hook, child ``output_quantizer``); any other tensor (the model
  input, a functional op's result, a shared module's output) at the input of the
  conv/linear layers that read it (forward pre-hook, child ``input_quantizer``).

The user's model object is kept; ``state_dict`` gains the quantizers' buffers.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import fx, nn

from ..core.graph import Graph
from ..core.params import QuantizationParams
from ..core.quant_controller import QuantizationControllerBase
from ..core.quantization import QuantizerSpec, QuantizerState
from ..core.workflow import Captured
from ..progress import progress
from ._init_args import model_inputs, random_state_kept
from ._layers import module_path, within
from ._ops import module_rule
from ._snapshot import attributes_kept, restore, snapshot
from ._transformer import guard_fast_paths
from .controller import check_layers_in_place, export_model
from .fake_quant import FakeQuantize, FirstPass, QuantizeInput, QuantizeOutput
from .masks import add_weight_quantizer, is_masked, masked_param, quantized_class

__all__ = ["QuantizationController", "install_quantizers", "set_quantizers_enabled"]

log = logging.getLogger("filterprune")


class QuantizationController(QuantizationControllerBase):
    """Fake-quant on a PyTorch model: range initialisation, statistics, state, strip.

    Created by :func:`filterprune.torch.create_compressed_model` for
    ``{"algorithm": "quantization"}``; not built directly.
    """

    def __init__(self, model: nn.Module, params: QuantizationParams, captured: Captured,
                 frontend: Any) -> None:  # fmt: skip
        self.model = model
        self.captured = captured
        self.frontend = frontend
        super().__init__(params, captured.graph, idle_layers(model, captured))
        lazy = params.num_init_samples == 0
        asked = self.specs
        self.quantizers, self.specs = install_quantizers(model, captured, asked, lazy)
        self.left_in_float += [  # a tensor only functional ops make and read: no hook site
            (s.key, "no module makes or reads it (functional ops alone)")
            for s in asked if s not in self.specs]  # fmt: skip

    # -- workflow hooks --------------------------------------------------------------------
    def start(self, compression_state: dict[str, Any] | None) -> bool:
        """Restore quantizer state, or set weight ranges from the (masked) weights.

        Returns:
            True on a fresh run with quantized weights (BatchNorm statistics may then be
            re-estimated).
        """
        if compression_state is not None:
            self.load_state(compression_state)
            return False
        for spec in self.specs:
            if spec.kind == "weight":
                layer = self.captured.refs[spec.target]
                self.quantizers[spec.key].follow(masked_param(layer, "weight"))
        return any(s.kind == "weight" for s in self.specs)

    def initialize(self, data: Any) -> None:
        """Activation ranges from ``num_init_samples`` samples of the registered loader.

        The model runs in eval mode with activation quantizers recording instead of
        rounding and weight quantizers passing the weights through (the float model's
        ranges, as Keras and NNCF take them); channels that are all zero (pruned) are left
        out of the ranges.

        Raises:
            ConfigError: If ranges need data and none was registered.
        """
        if not self.check_init_data(data):
            return
        collectors, shared = {}, {}
        for spec in self.activation_specs:
            q = self.quantizers[spec.key]
            collectors[spec.key] = shared.setdefault(id(q), self.range_collector(spec))
            q.collector = collectors[spec.key]
        paused = [q for q in self.quantizers.values() if q.spec.kind == "weight" and q.enabled]
        for q in paused:
            q.enabled = False
        try:
            self._run(data, self.params.num_init_samples,
                      after=lambda: [rc.end_batch() for rc in shared.values()])  # fmt: skip
        finally:
            for spec in self.activation_specs:
                self.quantizers[spec.key].collector = None
            for q in paused:
                q.enabled = True
        self.set_quantizer_states(self.collected_states(collectors))

    def _run(self, data: Any, num_samples: int, after: Any = None) -> None:
        was_training = self.model.training
        ref = next(self.model.parameters(), None)
        device = ref.device if ref is not None else None
        self.model.eval()
        seen = 0
        try:
            with torch.no_grad(), random_state_kept(self.model), progress(
                    total=num_samples, desc="Quantizer ranges") as bar:
                for batch in data:
                    inputs = model_inputs(batch, device, self.model)
                    self.model(*inputs)
                    if after is not None:
                        after()
                    seen += int(inputs[0].shape[0])
                    bar.update(int(inputs[0].shape[0]))
                    if seen >= num_samples:
                        break
        finally:
            self.model.train(was_training)

    def distributed(self) -> None:
        """Call under DDP (torchrun) before training: every rank takes rank 0's quantizer
        ranges (each rank initialised them on its own data; DDP copies the buffers but
        not the integer range each quantizer keeps, so the ranks computed apart)."""
        check_layers_in_place(self)
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return
        box = [self.quantizer_states()]
        dist.broadcast_object_list(box, src=0)
        self.set_quantizer_states(box[0])
        if any(q.lazy and not q.initialized for q in self.quantizers.values()):
            log.warning("quantization: ranges set at the first batch "
                        "(`initializer.range.num_init_samples` 0) differ between ranks under "
                        "DDP; initialise them from data before distributed() instead.")  # fmt: skip

    # -- core hooks ------------------------------------------------------------------------
    def quantizer_states(self) -> dict[str, QuantizerState]:
        return {s.key: self.quantizers[s.key].state() for s in self.specs}

    def set_quantizer_states(self, states: dict[str, QuantizerState]) -> None:
        for key, state in states.items():
            self.quantizers[key].set_state(state)

    # -- training --------------------------------------------------------------------------
    def loss(self) -> torch.Tensor:
        """Quantization adds no regulariser: a zero tensor on the model's device."""
        ref = next(self.model.parameters(), None)
        return torch.zeros((), device=ref.device if ref is not None else None)

    # -- output ----------------------------------------------------------------------------
    def strip_model(self, model: nn.Module, **_: Any) -> nn.Module:
        """Freeze the weight quantizers of ``model`` (a copy) on its current weights; the
        result is plain layers plus fake-quant modules, equal to the model in eval mode."""
        for module in model.modules():
            q = module._modules.get("weight_quantizer")
            if isinstance(q, FakeQuantize):
                q.freeze(masked_param(module, "weight"))
                module.__class__ = quantized_class(module)
            if isinstance(module, FakeQuantize):
                module.collector = None
        guard_fast_paths(model, is_masked)
        return model

    def strip(self, do_copy: bool = True, **kwargs: Any) -> nn.Module:
        """The deployable model: layers with frozen fake-quant weights, activation
        quantizers in place (``do_copy=False`` works on the training model)."""
        return self.frontend.strip(self, do_copy=do_copy, **kwargs)

    def export_model(self, save_path: str, save_format: str = "onnx",
                     input_names: list[str] | None = None,
                     output_names: list[str] | None = None) -> None:  # fmt: skip
        """Export to ONNX with QuantizeLinear/DequantizeLinear pairs."""
        export_model(self, save_path, save_format, input_names, output_names)


def idle_layers(model: nn.Module, captured: Captured) -> dict[str, str]:
    """Layers of the graph whose module is never called when ``model`` runs its sample
    input (eval mode, no grad: how it is validated), each with why: other code reads
    their weight itself (``nn.MultiheadAttention`` reads ``out_proj.weight``; a forward
    calls ``F.conv2d(x, self.conv.weight)``). A quantizer applies in the module's forward
    and would never run there, while statistics called the layer quantized."""
    layers = {name: captured.refs[name] for name in captured.graph.layers
              if isinstance(captured.refs.get(name), nn.Module)}  # fmt: skip
    if not layers or not captured.sample:
        return {}
    called: set[str] = set()
    before = snapshot(model)
    try:
        with attributes_kept(model):  # the recorders set below go with the rest
            for name, module in layers.items():
                # a hook keeps torch's fused transformer kernel off (it skips the layers);
                # the forward records a call that passes by __call__ (``fc.forward(x)``)
                module.register_forward_pre_hook(lambda *_, name=name: called.add(name))
                module.forward = _recorded(module.forward, name, called)
            model.eval()
            with torch.no_grad():
                model(*captured.sample)
    except Exception as err:  # noqa: BLE001 - the capture ran it; say so and go on
        log.info("quantization: the sample input did not run (%s); every layer is taken "
                 "as called", err)
        return {}
    finally:
        restore(before)
    modules = dict(model.named_modules())
    idle = {}
    for name in layers.keys() - called:
        parent = name.rpartition(".")[0]
        who = f"{type(modules[parent]).__name__} {parent}" if parent else "the model's forward"
        idle[name] = (f"its forward never runs: {who} reads its weight itself, where a "
                      "quantizer on it would not apply")
    return idle


def _recorded(forward: Any, name: str, called: set[str]) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        called.add(name)
        return forward(*args, **kwargs)

    return run


def install_quantizers(
    model: nn.Module, captured: Captured, specs: list[QuantizerSpec], lazy: bool
) -> tuple[dict[str, FakeQuantize], list[QuantizerSpec]]:
    """Put a fake-quant module on ``model`` for every spec it can carry.

    Returns:
        The quantizers by spec key (two keys may share one module when a layer reads two
        tensors) and the specs placed; a tensor that no module makes or reads is left in
        float (logged).
    """
    gm: fx.GraphModule | None = captured.extra.get("gm")
    sites = _FxSites(model, gm, captured.graph) if gm is not None else _LayerSites(model,
                                                                                  captured)
    quantizers, placed, hooked = {}, [], {}
    for spec in specs:
        if spec.kind == "weight":
            q = _weight_quantizer(captured.refs.get(spec.target), spec)
        else:
            maker = sites.maker(spec)
            if maker is not None:
                q = FakeQuantize(spec, lazy)
                maker.add_module("output_quantizer", q)
                maker.register_forward_hook(QuantizeOutput(q))
            else:
                q = _input_quantizer(sites.readers(spec), spec, lazy, hooked)
        if q is None:
            log.info("left in float: %s (no module makes or reads it)", spec.key)
            continue
        quantizers[spec.key] = q
        placed.append(spec)
    guard_fast_paths(model, is_masked)
    waiting = list({id(q): q for q in quantizers.values() if q.lazy}.values())
    if waiting:  # a lazy range covers every call of the model's first pass
        window = FirstPass(waiting)
        model.register_forward_pre_hook(window.start)
        model.register_forward_hook(window.end)
    return quantizers, placed


def _own_reader(nodes: dict[str, fx.Node], graph: Graph, modules: dict[str, nn.Module],
                consumer: str, target: str) -> nn.Module | None:  # fmt: skip
    """The module of the user's own whose call of ``F.conv2d`` (or another layer function)
    is ``consumer``, where tensor ``target`` is that module's one tensor input, or a zero
    padding of it in its forward (which rounds the same either side): its input quantizer
    rounds ``target`` then. ``None`` otherwise (a forward taking ``skip, x``)."""
    owner = graph[consumer].layer if consumer in graph.nodes else None
    node = nodes.get(target)
    if owner not in modules or node is None:
        return None

    def inside(n: fx.Node) -> bool:
        return within(module_path(n, modules), owner)

    if inside(node):
        if not _zero_pad(node) or not isinstance(node.args[0], fx.Node) or inside(node.args[0]):
            return None
        node = node.args[0]
    tensors = {a for n in nodes.values() if inside(n) for a in n.all_input_nodes
               if not inside(a) and a.name in graph.nodes and graph[a.name].op != "param"}
    return modules[owner] if tensors == {node} else None


_PADS = (torch.nn.functional.pad, torch._C._nn.pad, torch.ops.aten.pad.default,
         torch.ops.aten.constant_pad_nd.default)  # fmt: skip


def _zero_pad(node: fx.Node) -> bool:
    if node.target not in _PADS:
        return False
    if node.target is torch.ops.aten.constant_pad_nd.default:
        return node.kwargs.get("value", node.args[2] if len(node.args) > 2 else 0) == 0
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
    return mode == "constant" and value in (None, 0)


class _FxSites:
    """Where a tensor of a torch.fx graph can be quantized: the module that alone makes
    it (called once), or the modules that read it (see :func:`_own_reader` for a module
    of the user's own that passes its weight to ``F.conv2d``)."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule, graph: Graph) -> None:
        self.graph = graph
        self.nodes = {n.name: n for n in gm.graph.nodes}
        self.calls: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op == "call_module":
                self.calls[n.target] = self.calls.get(n.target, 0) + 1
        self.modules = dict(model.named_modules())

    def maker(self, spec: QuantizerSpec) -> nn.Module | None:
        node = self.nodes[spec.target]
        once = node.op == "call_module" and self.calls[node.target] == 1 and node.target
        return self.modules[node.target] if once else None

    def readers(self, spec: QuantizerSpec) -> list[nn.Module]:
        found = []
        for c in spec.consumers:
            if self.nodes[c].op == "call_module":
                found.append(self.modules[self.nodes[c].target])
            else:
                found.append(_own_reader(self.nodes, self.graph, self.modules, c, spec.target))
        return [m for m in found if m is not None]


class _LayerSites:
    """The same for a graph captured with torch.export, whose nodes name no module: a
    tensor is quantized as the input of the layers that read it (one no layer reads, a
    model output, stays float)."""

    def __init__(self, model: nn.Module, captured: Captured) -> None:
        self.captured = captured
        self.modules = dict(model.named_modules())
        program = captured.extra.get("program")
        self.nodes = {n.name: n for n in program.graph.nodes} if program is not None else {}

    def maker(self, spec: QuantizerSpec) -> None:
        return None

    def readers(self, spec: QuantizerSpec) -> list[nn.Module]:
        graph, refs = self.captured.graph, self.captured.refs
        found = []
        for c in spec.consumers:
            module = refs.get(graph[c].layer or "") if c in graph.nodes else None
            if module is not None and module_rule(module) is None:  # the user's own
                module = _own_reader(self.nodes, graph, self.modules, c, spec.target)
            found.append(module)
        return list({id(m): m for m in found if m is not None}.values())


def _weight_quantizer(layer: nn.Module | None, spec: QuantizerSpec) -> FakeQuantize | None:
    if layer is None or not isinstance(getattr(layer, "weight", None), torch.Tensor):
        return None
    q = FakeQuantize(spec)
    add_weight_quantizer(layer, q)
    return q


def _input_quantizer(readers: list[nn.Module], spec: QuantizerSpec, lazy: bool,
                     hooked: dict[int, FakeQuantize]) -> FakeQuantize | None:  # fmt: skip
    """One quantizer for the input of every reader; a reader already hooked for another
    tensor (a layer called twice) shares its quantizer, whose range then covers both."""
    if not readers:
        return None
    q = next((hooked[id(r)] for r in readers if id(r) in hooked), None)
    if q is None:
        q = FakeQuantize(spec, lazy)
        readers[0].add_module("input_quantizer", q)  # the one owner: state_dict and cuts
    for r in readers:
        if id(r) not in hooked:
            hooked[id(r)] = q
            r.register_forward_pre_hook(QuantizeInput(q))
    return q


def set_quantizers_enabled(model: nn.Module, enabled: bool) -> nn.Module:
    """Turn every fake-quant module of ``model`` on or off (off: the float model with the
    same weights, e.g. to measure what rounding costs). Returns ``model``."""
    for module in model.modules():
        if isinstance(module, FakeQuantize):
            module.enabled = enabled
    return model
