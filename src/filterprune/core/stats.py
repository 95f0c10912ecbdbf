"""Pruning statistics: what the model lost, per layer, and what was left alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .analysis import Analysis
from .flops import layer_flops
from .rules import INPUT_REASON

__all__ = ["LayerStat", "PruningStatistics", "collect_statistics", "whole_layers"]


@dataclass(frozen=True)
class LayerStat:
    name: str
    filters: int
    kept: int

    @property
    def level(self) -> float:
        return 1.0 - self.kept / self.filters if self.filters else 0.0


@dataclass
class PruningStatistics:
    """Numbers a user checks after each epoch; ``str()`` gives a readable table."""

    full_flops: int
    current_flops: int
    full_params: int
    current_params: int
    full_filters: int
    current_filters: int
    current_level: float
    target_level: float
    layers: list[LayerStat] = field(default_factory=list)
    unpruned: list[tuple[list[str], str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def flops_kept(self) -> float:
        return self.current_flops / self.full_flops if self.full_flops else 1.0

    @property
    def params_kept(self) -> float:
        return self.current_params / self.full_params if self.full_params else 1.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["flops_kept"], out["params_kept"] = self.flops_kept, self.params_kept
        return out

    def __str__(self) -> str:
        lines = [
            "Filter pruning statistics",
            f"  pruning level     : {self.current_level:.3f} (target {self.target_level:.3f})",
            f"  FLOPs             : {self.current_flops / 1e6:,.2f}M of "
            f"{self.full_flops / 1e6:,.2f}M ({self.flops_kept:.1%} kept)",
            f"  parameters        : {self.current_params:,} of {self.full_params:,} "
            f"({self.params_kept:.1%} kept)",
            f"  filters (prunable): {self.current_filters:,} of {self.full_filters:,}",
            "",
            f"  {'layer':<44} {'filters':>8} {'kept':>6} {'level':>6}",
        ]
        for s in self.layers:
            lines.append(f"  {s.name:<44} {s.filters:>8} {s.kept:>6} {s.level:>6.2f}")
        if self.unpruned:
            lines += ["", "  left unpruned:"]
            for producers, reason in self.unpruned:
                head = ", ".join(producers[:3]) + (" ..." if len(producers) > 3 else "")
                lines.append(f"    {head}: {reason}")
        if self.notes:
            lines += ["", "  capture:"] + [f"    {note}" for note in self.notes]
        return "\n".join(lines)


def collect_statistics(
    analysis: Analysis,
    keeps: dict[str, dict[str, np.ndarray]],
    *,
    full_flops: int,
    full_params: int,
    current_params: int,
    current_level: float,
    target_level: float,
    reasons: dict[int, str] | None = None,
) -> PruningStatistics:
    layers = []
    for group in analysis.prunable_groups:
        for layer in group.producers:
            if any(s.name == layer for s in layers):
                continue
            vec = keeps.get(layer, {}).get("out")
            n = int(analysis.state.uses[layer]["out"].ids.size)
            layers.append(LayerStat(layer, n, int(vec.sum()) if vec is not None else n))
    # filters of the layers, not channel units of the groups (a group coupling channels
    # in pairs, or several layers adding into one stream, is not one filter per unit)
    full_filters, current_filters = sum(s.filters for s in layers), sum(s.kept for s in layers)
    followers, unmade = _followers(analysis)
    unpruned = [(g.producers + followers.get(g.id, []), g.reason or "")
                for g in analysis.groups if not g.prunable]  # fmt: skip
    unpruned += [([layer], _unmade(analysis, layer)) for layer in unmade]
    unpruned += [(analysis.groups[gid].producers, why) for gid, why in (reasons or {}).items()]
    unpruned += whole_layers(analysis.graph, {p for g in analysis.groups for p in g.producers})
    return PruningStatistics(
        full_flops=full_flops,
        current_flops=sum(layer_flops(analysis.graph, keeps).values()),
        full_params=full_params,
        current_params=current_params,
        full_filters=full_filters,
        current_filters=current_filters,
        current_level=current_level,
        target_level=target_level,
        layers=layers,
        unpruned=unpruned,
        notes=list(analysis.graph.notes),
    )


_UNMADE = ("its filters follow channels no layer makes (the model input: a depthwise "
           "conv, or a grouped conv as wide as its input), which stay whole")


def _unmade(analysis: Analysis, layer: str) -> str:
    """Why ``layer``, whose filters follow channels of no group, stays whole: they come
    from the model input, or an op holds them apart from the layer making them (a flip
    over the channels): that op's reason."""
    uf = analysis.state.uf
    ins = analysis.state.uses.get(layer, {}).get("in")
    roots = [] if ins is None else dict.fromkeys(uf.find(int(r)) for r in ins.ids.ravel())
    why = next((uf.reasons[r] for r in roots if uf.reasons.get(r)), None)
    if why in (None, INPUT_REASON):
        return _UNMADE
    return ("its filters follow its input's channels (a depthwise conv, or a grouped conv as "
            f"wide as its input), which stay whole: {why}")


def _followers(analysis: Analysis) -> tuple[dict[int, list[str]], list[str]]:
    """Group id -> the layers whose filters follow held groups' channels without making
    them (a grouped or depthwise conv after the first conv): whole with them, listed
    with the first of them; and the layers whose filters follow channels of no group
    (a depthwise conv on the model input)."""
    out: dict[int, list[str]] = {}
    unmade = []
    for layer, found in analysis.followed().items():
        if None in found:
            if all(f is None for f in found):  # (some of a concat with the input: cut)
                unmade.append(layer)
            continue
        ids = list(dict.fromkeys(found))
        if not any(analysis.groups[i].prunable for i in ids):
            out.setdefault(ids[0], []).append(layer)
    return out, unmade


def whole_layers(graph, producers: set[str]) -> list[tuple[list[str], str]]:
    """Weighted layers an op without a rule runs in or reads (an LSTM, a hooked conv, a
    model's own parameter passed to ``F.conv2d``, a deformable conv's weight): whole, with
    the stop's reason (they are no group's ``producers``, so groups do not list them)."""
    out: dict[str, str] = {}
    for node in graph:
        if node.op != "stop":
            continue
        info = graph.layers.get(node.layer or "")
        runs_in = [node.layer] if info is not None and info.kind == "opaque" else []
        params = [graph[i].attrs.get("target") for i in node.inputs if graph[i].op == "param"]
        for layer in [*runs_in, *node.attrs.get("reads_layers", ()), *params]:
            info = graph.layers.get(layer)
            # a layer run whole is listed with any weights (a SincNet layer builds its
            # kernel from 1-D cutoffs); one read whole, with a matrix
            if layer not in producers and info is not None and any(
                    len(shape) >= (1 if layer in runs_in else 2)
                    for shape, _ in info.params.values()):  # fmt: skip
                out.setdefault(layer, node.attrs.get("reason", "no channel rule"))
    return [([layer], reason) for layer, reason in out.items()]
