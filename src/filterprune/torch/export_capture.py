"""Read a PyTorch model into the core graph with torch.export (non-strict).

For models torch.fx cannot trace: data-dependent control flow, iterating a tensor
(``list(x.chunk(2, 1))`` in YOLOv8's C2f), Python math on sizes. torch.export records
ATen ops with static shapes, and parameters and buffers as graph inputs named by the
graph signature, so each op maps back to the parameters it reads: a layer
(``aten.conv2d`` on ``blocks.0.conv.weight``) is keyed to the module owning them,
``blocks.0.conv``, the name fx gives its module call. The rules, groups and plans
are the same as for an fx capture.

Where export meets a data-dependent branch, ``torch.export.draft_export`` takes it as
it runs on the sample; ``graph.notes`` lists each such place.
"""

from __future__ import annotations

import contextlib
import io
import logging
import operator
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from ..core.graph import BARE_KINDS, Graph, Node
from ..core.workflow import Captured
from ..errors import AnalysisError
from ._aten import aten_rule
from ._copy import computed_weights
from ._hops import inline_context_blocks
from ._layers import COMPUTED, arg_of, functional_node, module_path, split_sizes
from ._ops import FUNCTIONAL, VIEW_WRITE
from .capture import (
    NEW_FILLED,
    add_unseen_params,
    count_rows,
    no_rule_stop,
    recurrent_node,
    say_never_run,
)

__all__ = ["capture_export", "export_program"]

_TENSOR_INPUTS = ("PARAMETER", "BUFFER", "CONSTANT_TENSOR")
_RECURRENT = tuple(getattr(torch.ops.aten, n) for n in (
    "lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell",
    "rnn_relu_cell"))  # fmt: skip
# tensors made in forward with one value everywhere: cut with what is written into them;
# ``x.new_zeros(...)`` reads only the dtype and device of x
_NEW_FILLS = tuple(getattr(torch.ops.aten, name).default for name in NEW_FILLED)
_FILLS = tuple(getattr(getattr(torch.ops.aten, name), overload)
               for name, overload in (("zeros", "default"), ("ones", "default"),
                                      ("empty", "memory_format"), ("full", "default"))) \
    + _NEW_FILLS  # fmt: skip


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch.export logs every guard and specialisation, and prints the graph of a failed
    attempt; the notes say what matters."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):  # fmt: skip
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_program(model: nn.Module, example: tuple[torch.Tensor, ...]):
    """``(ExportedProgram, notes)``: torch.export (non-strict) of ``model`` in eval mode;
    where it fails, ``draft_export``, with a note per data-dependent place it specialised;
    where that fails too, the strict torch.export.

    Raises:
        AnalysisError: When neither can capture the model.
    """
    was_training = model.training
    model.eval()  # the inference path, as fx captures it
    try:
        with quiet():
            try:
                return torch.export.export(model, tuple(example), strict=False), []
            except Exception as err:  # noqa: BLE001 - any failure: try the lenient capture
                first = err
            try:
                program = torch.export.draft_export(model, tuple(example))
            except Exception as err:  # noqa: BLE001 - the strict capture reads Python
                draft = err  # (``x.data``, layers made in forward) the others cannot
                try:
                    return torch.export.export(model, tuple(example), strict=True), []
                except Exception as strict:  # noqa: BLE001 - reported with the others
                    raise AnalysisError(
                        f"torch.export could not capture {type(model).__name__}: "
                        f"{_first_line(first)}; draft_export: {_first_line(draft)}; "
                        f"strict: {_first_line(strict)}") from strict  # fmt: skip
        return program, _draft_notes(program)
    finally:
        model.train(was_training)


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:400]}" if lines else type(err).__name__


def _draft_notes(program: Any) -> list[str]:
    """One note per place draft_export specialised (a data-dependent branch, ...)."""
    report = getattr(program, "_report", None)
    if report is None:
        return []
    files = _file_names(report)
    notes = []
    for failure in report.failures:
        data = failure.data if isinstance(failure.data, dict) else {}
        frame = (data.get("user_stack") or [{}])[-1]
        where = f"{files.get(frame.get('filename'), '?')}:{frame.get('line', '?')}"
        code = f" ({frame['loc']})" if frame.get("loc") else ""
        kind = failure.failure_type.name.lower().replace("_", " ")
        taken = f", taken as {data['result']}" if "result" in data else ""
        notes.append(f"{kind} at {where}{code}: specialised to the sample input{taken}")
    return notes


def _say_idle(model: nn.Module, graph: Any) -> None:
    """Name the layers the captured forward never ran (:func:`.capture.say_never_run`)."""
    used = {i for n in graph for i in n.inputs}  # every parameter is a placeholder, read or not
    read = {n.attrs.get("target") for n in graph if n.op == "param" and n.name in used}
    called = {k for k, info in graph.layers.items() if info.kind not in BARE_KINDS}
    say_never_run([name for name, m in model.named_modules()
                   if name and name not in called
                   and any(True for _ in m.parameters(recurse=False))
                   and not any(f"{name}.{p}" in read
                               for p, _ in m.named_parameters(recurse=False))], graph)  # fmt: skip


def _file_names(report: Any) -> dict[int, str]:
    """File id -> name for the report's stacks: a file interned before this export (by an
    earlier one in the process) is only in torch's table."""
    names = dict(getattr(report, "str_to_filename", {}) or {})
    try:
        from torch._logging.structured import INTERN_TABLE
    except ImportError:  # a torch without the table: ids stay unnamed
        return names
    return {**{i: name for name, i in INTERN_TABLE.items()}, **names}


def capture_export(model: nn.Module, example: tuple[torch.Tensor, ...]) -> Captured:
    """Capture ``model`` with torch.export on ``example`` and build the core graph.

    Returns:
        A :class:`~filterprune.core.workflow.Captured` like the fx capture's, with the
        ``ExportedProgram`` as ``extra["program"]``.
    """
    program, notes = export_program(model, example)
    inline_context_blocks(program.graph_module)
    _first_paths(model, program.graph)
    builder = _Builder(model, program)
    for node in program.graph.nodes:
        builder.add(node)
    add_unseen_params(model, builder.graph)
    count_rows(builder.graph)
    graph = builder.graph
    graph.notes.append("captured with torch.export (non-strict)"
                       + (", data-dependent branches as they ran on input_info" if notes else ""))
    graph.notes.extend(notes)
    _say_idle(model, graph)
    modules = builder.modules
    refs = {name: modules[name] for name in graph.layers if name in modules}
    return Captured(graph, sample=tuple(example), refs=refs,
                    extra={"program": program, "capture": "torch.export"})  # fmt: skip


# kinds whose rule reads no size of an axis known only at run time (a batch of regions,
# RoIAlign per level of a feature pyramid): such an axis is taken as 1 for them
_DYNAMIC_SAFE = ("identity", "sample", "put")


def _written_base(node: fx.Node) -> fx.Node | None:
    """The tensor an op in place writes into through views (``copy_`` into ``slice`` of
    ``select`` of it); None for any other node."""
    schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
    alias = schema.arguments[0].alias_info if schema is not None and schema.arguments else None
    if alias is None or not alias.is_write or not node.args or \
            not isinstance(node.args[0], fx.Node):  # fmt: skip
        return None
    view, base = node.args[0], None
    while view.op == "call_function" and view.args and isinstance(view.args[0], fx.Node):
        returns = getattr(view.target, "_schema", None)
        returns = returns.returns if returns is not None else ()
        if not returns or returns[0].alias_info is None or returns[0].alias_info.is_write:
            break
        base = view = view.args[0]
    return base


def _dynamic(value: Any) -> bool:
    """Whether a fake tensor has an axis whose size is known only at run time."""
    return isinstance(value, torch.Tensor) and not all(isinstance(d, int) for d in value.shape)


def _shape(value: Any, dynamic: bool = False) -> Any:
    """Static shape of a fake tensor; a list for several; ``None`` for the rest or for a
    size only known at run time (data-dependent), which ``dynamic`` takes as 1."""
    if isinstance(value, torch.Tensor):
        dims = tuple(value.shape)
        if dynamic:
            return tuple(d if isinstance(d, int) else 1 for d in dims)
        return tuple(int(d) for d in dims) if all(isinstance(d, int) for d in dims) else None
    if isinstance(value, (list, tuple)) and value and all(map(torch.is_tensor, value)):
        shapes = [_shape(v) for v in value]
        return shapes if all(s is not None for s in shapes) else None
    return None


def _holds_tensors(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_holds_tensors(v) for v in value)
    return isinstance(value, torch.Tensor)


def _first_names(named: list[tuple[str, Any]]) -> dict[str, str]:
    """Each later name of an object named twice -> its first name."""
    first: dict[int, str] = {}
    return {name: first[id(v)] for name, v in named if first.setdefault(id(v), name) != name}


def _first_paths(model: nn.Module, graph: fx.Graph) -> None:
    """Module paths in ``graph``'s records named as ``named_modules`` names them: torch.export
    names a module registered twice (stable-baselines3's shared feature extractor) by the
    name the forward reached it through, and its parameters by another."""
    first = _first_names(list(model.named_modules(remove_duplicate=False)))
    if not first:
        return
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack")
        for key, (path, kind) in list((stack or {}).items()):
            if isinstance(path, str):
                head = "L['self']." if path.startswith("L['self'].") else ""
                stack[key] = (head + first.get(path.removeprefix(head), path.removeprefix(head)),
                              kind)  # fmt: skip


def _weight_sources(model: nn.Module) -> dict[str, str]:
    """Each parameter or buffer a computed weight is made from -> that weight's name
    (``conv.weight_v`` -> ``conv.weight``)."""
    out = {}
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        for attr, own in computed_weights(module).items():
            # and the buffers a legacy hook keeps beside them (spectral_norm's weight_u)
            own += tuple(n for n in module._buffers if n.startswith(f"{attr}_"))
            out.update({f"{prefix}{name}": f"{prefix}{attr}" for name in own})
            if parametrize.is_parametrized(module, attr):
                inner = module.parametrizations[attr]
                out.update({f"{prefix}parametrizations.{attr}.{name}": f"{prefix}{attr}"
                            for name, _ in [*inner.named_parameters(), *inner.named_buffers()]})
    return out


class _Builder:
    """Adds one core node per node of an exported graph."""

    def __init__(self, model: nn.Module, program: Any) -> None:
        self.graph = Graph()
        self.modules = dict(model.named_modules())
        self.tensors: dict[str, str] = {}  # placeholder -> parameter, buffer or constant name
        self.user_outputs: list[str] = []
        self.dynamic: set[str] = set()  # nodes with an axis known only at run time, as 1
        self.sources = _weight_sources(model)
        self.computed: dict[str, str] = {}  # a computed weight -> the layer attribute it is
        self.weight_ops: dict[str, fx.Node] = {}  # the ops computing them
        self.written: dict[str, str] = {}  # a tensor written through a view -> its marker
        first = _first_names([*model.named_parameters(remove_duplicate=False),
                              *model.named_buffers(remove_duplicate=False)])  # fmt: skip
        for spec in program.graph_signature.input_specs:
            if spec.kind.name in _TENSOR_INPUTS and spec.target is not None:
                self.tensors[spec.arg.name] = first.get(spec.target, spec.target)
        values = next(n for n in program.graph.nodes if n.op == "output").args[0]
        for spec, value in zip(program.graph_signature.output_specs, values, strict=True):
            if spec.kind.name == "USER_OUTPUT" and isinstance(value, fx.Node):
                self.user_outputs.append(value.name)  # by position: a block inlined renames
        self._find_computed_weights(program.graph)

    def add(self, node: fx.Node) -> None:
        if node.op == "output":
            outputs = [self.written.get(n, n) for n in self.user_outputs]
            self.graph.outputs = [n for n in outputs if n in self.graph.nodes]
            return
        core = self._convert(node)
        core.inputs = [self.written.get(name, name) for name in core.inputs]
        self.graph.add(core)
        base = _written_base(node)
        if base is not None and base.name in self.graph.nodes:
            # ``cost[:, :c, i] = x``: a copy_ into a view of ``cost``, which later reads of
            # ``cost`` do not name; they read a marker holding both (else: reaches no output)
            name, before = f"{node.name}_into_{base.name}", self.written.get(base.name, base.name)
            self.graph.add(Node(name, "stop", [before, node.name], self.graph[before].shape,
                                label="write into a view", attrs={"reason": VIEW_WRITE}))
            self.written[base.name] = name

    def _inputs(self, node: fx.Node) -> list[str]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
        return [n.name for n in dict.fromkeys(found) if n.name in self.graph.nodes]

    def _convert(self, node: fx.Node) -> Node:
        shape = _shape(node.meta.get("val"))
        inputs = self._inputs(node)
        label = str(node.target).removeprefix("aten.").removesuffix(".default") \
            if isinstance(node.target, torch._ops.OpOverload) else getattr(
                node.target, "__name__", str(node.target))  # a function: not its address
        if node.name in self.weight_ops:  # read as the layer's weight: nothing to check
            return Node(node.name, "noop", inputs, label=label)
        if node.op == "placeholder":
            if node.name in self.tensors:
                return Node(node.name, "param", shape=shape,
                            attrs={"target": self.tensors[node.name]})  # fmt: skip
            return Node(node.name, "input", shape=shape)
        if node.op != "call_function":
            return Node(node.name, "stop", inputs, shape, label=label,
                        attrs={"reason": f"no channel rule for {node.op} {label}"})  # fmt: skip
        if shape is None and not _holds_tensors(node.meta.get("val")):
            return Node(node.name, "noop", inputs, label=label)  # sizes, asserts, flags
        dynamic = _dynamic(node.meta.get("val"))
        if dynamic and aten_rule(node.target) is not None:
            shape = _shape(node.meta.get("val"), dynamic=True)
        if shape is None:
            return Node(node.name, "stop", inputs, label=label,
                        attrs={"reason": "a size known only at run time"})  # fmt: skip
        if node.target is operator.getitem:
            return self._getitem(node, inputs, shape)
        if node.target in FUNCTIONAL:
            return self._functional(node, label, shape)
        found = self._recurrent(node, inputs, shape)
        if found is not None:
            return found
        build = aten_rule(node.target)
        if build is None:
            if not inputs or node.target in _NEW_FILLS:  # made in forward (zeros, arange)
                return Node(node.name, "param", shape=shape, attrs={
                    "target": node.name, "fill": node.target in _FILLS, "made": True})
            return no_rule_stop(node.name, inputs, shape, label, self.graph, self.modules, node)
        in_shape = self.graph[inputs[0]].shape if inputs else None
        kind, attrs = build(node, in_shape if isinstance(in_shape, tuple) else ())
        if kind not in _DYNAMIC_SAFE and (dynamic or self.dynamic.intersection(inputs)):
            kind, attrs = "stop", {"reason": "a size known only at run time"}
            shape = None if dynamic else shape  # no rule reads the 1 standing in for it
        if dynamic:
            self.dynamic.add(node.name)
        if kind == "split":
            attrs["sizes"] = split_sizes(attrs, shape)
        return Node(node.name, kind, inputs, shape, attrs=attrs, label=label)

    def _recurrent(self, node: fx.Node, inputs: list[str], shape: Any) -> Node | None:
        """An RNN, LSTM or GRU module's own call (``aten.lstm`` reading every parameter
        it has), or a cell's (``aten.lstm_cell``): a recurrent layer, as torch.fx sees the
        module call."""
        if getattr(node.target, "_overloadpacket", None) not in _RECURRENT or not inputs:
            return None
        layer = module_path(node, self.modules)
        module = self.modules.get(layer or "")
        read = {self.graph[i].attrs.get("target") for i in inputs}
        if module is None or any(f"{layer}.{n}" not in read for n, _ in module.named_parameters()):
            return None
        found = recurrent_node(layer, module, self.graph[inputs[0]].shape, self.graph)
        if found is None:
            return None
        return Node(node.name, found[0], inputs, shape, layer=layer, attrs=found[1],
                    label=type(module).__name__)  # fmt: skip

    def _getitem(self, node: fx.Node, inputs: list[str], shape: Any) -> Node:
        index = node.args[1]
        if isinstance(index, int) and isinstance(self.graph[inputs[0]].shape, list):
            return Node(node.name, "getitem", inputs[:1], shape, attrs={"index": index})
        return Node(node.name, "stop", inputs, shape, label="getitem",
                    attrs={"reason": "indexes a value that is not a tuple of tensors"})  # fmt: skip

    def _functional(self, node: fx.Node, label: str, shape: Any) -> Node:
        return functional_node(node, label, shape, self.graph, self.modules, self._resolve,
                               aten_rule(node.target))  # fmt: skip

    def _resolve(self, value: fx.Node) -> str:
        return self.tensors.get(value.name) or self.computed.get(value.name, COMPUTED)

    def _find_computed_weights(self, graph: fx.Graph) -> None:
        """Weights that ``weight_norm``, ``spectral_norm`` or a parametrization computes
        from one layer's parameters (export records the computation): the layer reads
        them as its attribute ``conv.weight``, as torch.fx sees it, and the ops computing
        them become no-ops (they would hold the parameters they read)."""
        for node in graph.nodes:
            spec = FUNCTIONAL.get(node.target) if node.op == "call_function" else None
            for where in (spec.params.values() if spec else ()):
                value = arg_of(node, where)
                if not isinstance(value, fx.Node) or value.name in self.tensors:
                    continue
                ops, leaves, todo = {}, set(), [value]
                while todo and len(ops) < 64:  # a norm's computation is a few ops
                    n = todo.pop()
                    if n.op == "placeholder":
                        leaves.add(self.tensors.get(n.name))
                    elif n.name not in ops:
                        ops[n.name] = n
                        todo.extend(n.all_input_nodes)
                owners = {self.sources.get(leaf) for leaf in leaves}
                private = all(u.name in ops or u is node for n in ops.values() for u in n.users)
                if not todo and len(owners) == 1 and None not in owners and private:
                    self.computed[value.name] = owners.pop()
                    self.weight_ops.update(ops)
