"""What a conversion removed, per layer, and why anything was kept."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..core._validation import listed
from ..core.flops import count_flops, count_params, layer_flops
from ._ops import foreign_fix, foreign_ops
from .capture import Captured
from .zero_filters import Decision, out_nonzero

__all__ = ["LayerReport", "ConversionReport", "build_report"]


@dataclass(frozen=True)
class LayerReport:
    """One producer layer (Conv, Gemm, MatMul).

    Attributes:
        name: The ONNX node name.
        op: The ONNX op type.
        filters: Output channels before.
        removed: Output channels removed.
        zero_filters: Filters whose weights and bias are all zero.
        kept_zero: Zero filters that stay.
        reason: Why (the first reason met), empty if none stay.
    """

    name: str
    op: str
    filters: int
    removed: int
    zero_filters: int
    kept_zero: int
    reason: str = ""


@dataclass
class ConversionReport:
    """Returned by :func:`filterprune.onnx.remove_zero_filters`; ``str()`` is a table."""

    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    layers: list[LayerReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    max_rel_diff: float | None = None

    @property
    def flops_kept(self) -> float:
        return self.flops_after / self.flops_before if self.flops_before else 1.0

    @property
    def removed(self) -> int:
        return sum(layer.removed for layer in self.layers)

    @property
    def changed(self) -> bool:
        return self.removed > 0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["flops_kept"] = self.flops_kept
        out["removed"] = self.removed
        return out

    def __str__(self) -> str:
        lines = [
            "Zero-filter removal",
            f"  FLOPs     : {self.flops_after / 1e6:,.2f}M of {self.flops_before / 1e6:,.2f}M "
            f"({self.flops_kept:.1%} kept)",
            f"  parameters: {self.params_after:,} of {self.params_before:,}",
            f"  filters removed: {self.removed:,}",
        ]
        if self.max_rel_diff is not None:
            lines.append(f"  outputs checked: max relative difference {self.max_rel_diff:.2e}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        lines += ["", "  zero: filters found all zero; zero kept: of those, the ones left in "
                  "(why: below)",
                  f"  {'layer':<48} {'filters':>7} {'removed':>7} {'zero':>5} {'zero kept':>9}"]
        for s in self.layers:
            lines.append(f"  {s.name[-48:]:<48} {s.filters:>7} {s.removed:>7} "
                         f"{s.zero_filters:>5} {s.kept_zero:>9}")  # fmt: skip
        kept = [s for s in self.layers if s.kept_zero]
        if kept:
            lines += ["", "  zero filters kept:"]
            for s in kept:
                lines.append(f"    {s.name}: {s.kept_zero} kept: {s.reason}")
        return "\n".join(lines)


def build_report(cap: Captured, decision: Decision) -> ConversionReport:
    graph = cap.graph
    keeps = decision.keeps()
    uf = decision.analysis.state.uf
    layers = []
    for layer in decision.analysis.state.producers:
        ids = decision.analysis.state.uses[layer]["out"].ids
        zero = decision.zero_rows.get(layer, np.zeros(ids.size, dtype=bool))
        kept = keeps.get(layer, {}).get("out", np.ones(ids.size, dtype=bool))
        stay = zero & kept
        reason = ""
        if stay.any():
            root = int(uf.roots(ids[np.flatnonzero(stay)[:1]])[0])
            reason = decision.reasons.get(root, "")
        op = _op_type(cap, layer)
        layers.append(LayerReport(layer, op, int(ids.size), int((~kept).sum()), int(zero.sum()),
                                  int(stay.sum()), reason))  # fmt: skip
    layers += _whole_layers(cap, set(decision.analysis.state.producers))
    return ConversionReport(
        flops_before=count_flops(graph), flops_after=count_flops(graph, keeps),
        params_before=count_params(graph), params_after=count_params(graph, keeps),
        layers=layers, notes=[*cap.notes, *_foreign_note(cap), *_uncounted_note(cap)],
    )  # fmt: skip


def _uncounted_note(cap: Captured) -> list[str]:
    """Which conv and linear layers the FLOPs leave out (their output shapes unknown), and
    which they count at size 1 along a dimension computed at run time (a free batch
    folded into an upsampling reshape)."""
    counted = layer_flops(cap.graph)
    missing = [name for name, info in cap.graph.layers.items()
               if info.kind in ("conv", "linear") and name not in counted]  # fmt: skip
    notes = []
    if missing:
        notes.append(f"FLOPs leave out {len(missing)} layer(s) whose output shape the file "
                     f"does not give ({listed(missing)}): FLOPs before and after count the rest")
    if cap.sized_at_one:
        notes.append(f"FLOPs count {len(cap.sized_at_one)} layer(s) at size 1 along output "
                     f"dimensions the file computes at run time ({listed(cap.sized_at_one)})")
    return notes


def _op_type(cap: Captured, layer: str) -> str:
    return cap.model.graph.node[cap.layer_node[layer]].op_type if layer in cap.layer_node else ""


def _whole_layers(cap: Captured, producers: set[str]) -> list[LayerReport]:
    """Rows for the layers whose node stays whole (an output shape the file does not
    give), which feed no group: their zero filters stay, with the node's reason."""
    rows = []
    reasons = {n.layer: n.attrs.get("reason", "") for n in cap.graph
               if n.layer and n.op == "stop"}  # fmt: skip
    for layer, info in cap.graph.layers.items():
        if layer in producers or layer not in reasons or "W" not in info.params:
            continue
        w = cap.arrays.get(layer, {}).get("W")
        roles = info.params["W"][1]
        if w is None or "out" not in roles:
            continue
        out = roles.index("out")
        zero = ~np.moveaxis(w, out, 0).reshape(w.shape[out], -1).any(axis=1)
        bias = cap.arrays[layer].get("B")
        if bias is not None:  # a constant output is no zero filter
            zero &= ~out_nonzero(bias, info.params["B"][1], zero.size)
        op = _op_type(cap, layer)
        why = f"{op}: {reasons[layer] or 'left whole'}" if zero.any() else ""
        rows.append(LayerReport(layer, op, int(w.shape[out]), 0, int(zero.sum()),
                                int(zero.sum()), why))  # fmt: skip
    return rows


def _foreign_note(cap: Captured) -> list[str]:
    """Why a quantized-operator or onnxruntime-optimized file shows no layers: its
    weighted ops hold their weights in forms the converter does not read."""
    ops = foreign_ops(cap.model) if cap.model is not None else []
    if not ops:
        return []
    return [f"unsupported ops {', '.join(ops)} (quantized-operator format or onnxruntime "
            f"optimizations): their layers are not analysed or cut; {foreign_fix(ops)}"]
