"""The framework-free model graph that channel analysis runs on.

A frontend (PyTorch, Keras, ONNX) turns its model into a :class:`Graph`: one
:class:`Node` per operation, in topological order, each naming the rule that
describes how channels flow through it (``op``), its tensor inputs, its output
shape and the layer that owns its weights.

Example:
    >>> g = Graph()
    >>> _ = g.add(Node("x", "input", shape=(1, 3, 8, 8)))
    >>> _ = g.add(Node("conv", "conv", ["x"], shape=(1, 4, 8, 8), layer="conv",
    ...                attrs={"groups": 1, "in_channels": 3, "out_channels": 4}))
    >>> g.outputs = ["conv"]
    >>> [n.name for n in g]
    ['x', 'conv']
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Node", "Graph", "LayerInfo", "BARE_KINDS"]

Shape = tuple[int, ...]
# Layer kinds of one tensor a frontend cuts by its own dotted name (a layer scale, a buffer).
BARE_KINDS = ("param", "buffer")


@dataclass
class Node:
    """One operation of the model.

    Attributes:
        name: Unique node name.
        op: Key of the propagation rule in :mod:`filterprune.core.rules`.
        inputs: Names of the nodes whose outputs are tensor operands, in order.
        shape: Output shape with the batch axis; a list of shapes for an op with
            several outputs; ``None`` for a non-tensor value.
        layer: Name of the layer owning the weights this op uses, if any.
        attrs: Rule parameters (axis, groups, target shape, ...).
        label: Human-readable op name for messages (e.g. ``"torch.roll"``).
    """

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    shape: Any = None
    layer: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    label: str = ""


@dataclass
class LayerInfo:
    """Static facts about a weighted layer, for FLOPs/params accounting.

    Attributes:
        name: Layer name (as the frontend names it, e.g. ``layer1.0.conv1``).
        kind: ``conv``, ``linear``, ``batchnorm``, ``layernorm``, ``param``, ``buffer`` (a
            tensor cut like a parameter, not counted as one)...
        params: Parameter name -> (shape, axis roles); a role is ``"out"``,
            ``"in"``, ``"channel"`` or ``None`` for an axis that is never cut.
        groups: Convolution groups (1 otherwise).
        stride: Largest stride of a convolution that downsamples (1 otherwise, and for a
            transposed convolution, whose stride upsamples).
        weight: Name of the main weight (its size times output positions gives MACs).
        transposed: A transposed convolution: with groups, its weight's ``"out"`` axis
            holds ``out/groups`` entries (one per output channel of a group).
    """

    name: str
    kind: str
    params: dict[str, tuple[Shape, tuple[str | None, ...]]] = field(default_factory=dict)
    groups: int = 1
    stride: int = 1
    weight: str | None = None
    transposed: bool = False


class Graph:
    """A topologically ordered set of :class:`Node` plus layer facts.

    ``notes`` hold what the frontend's capture wants a user to know (which capture ran,
    data-dependent branches taken as they ran on the sample); statistics list them.
    ``shared``: parameter names (``layer.param``) that are one tensor, one tuple per tensor
    (a weight tied between two convs): counted once where both keep the same entries.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.outputs: list[str] = []
        self.layers: dict[str, LayerInfo] = {}
        self.notes: list[str] = []
        self.shared: list[tuple[str, ...]] = []
        # module path -> its class as NNCF's scopes name it ("" for the model): NNCF
        # ``{re}`` scopes may pick layers by class (``.*InvertedResidual\[2\].*``)
        self.scope_types: dict[str, str] = {}

    def add(self, node: Node) -> Node:
        """Append ``node``; its inputs must already be in the graph."""
        if node.name in self.nodes:
            raise ValueError(f"Duplicate node name {node.name!r}.")
        for name in node.inputs:
            if name not in self.nodes:
                raise ValueError(
                    f"Node {node.name!r} reads {name!r}, which is not in the graph yet; "
                    "nodes must be added in topological order."
                )
        self.nodes[node.name] = node
        return node

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    @property
    def inputs(self) -> list[str]:
        return [n.name for n in self if n.op == "input"]

    def scope_names(self) -> list[str]:
        """Every name a scope pattern may refer to: the layers, then the ops."""
        names = [*self.layers, *(node.layer or node.name for node in self)]
        return list(dict.fromkeys(names))
