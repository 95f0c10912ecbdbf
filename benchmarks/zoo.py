"""Prune every torchvision classification model: create, strip, compare, export.

One subprocess per model, so a crash or a timeout is one row. Writes
``benchmarks/results/zoo.csv`` and ``zoo.md``.

    python benchmarks/zoo.py                 # every model
    python benchmarks/zoo.py resnet18 vgg11  # some (zoo-partial.csv/.md)
    python benchmarks/zoo.py --merge         # put zoo-partial rows into zoo.csv/.md
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from _isolated import (
    FLOAT64_NOTE,
    RESULTS,
    markdown_table,
    merged_rows,
    one_model_main,
    run_tables,
    write_csv,
)

from filterprune._atomic import atomic_write_text

FIELDS = ["model", "ok", "input", "flops_kept", "flops_kept_x1", "params_kept", "analysis_s",
          "capture", "exporter", "max_rel_diff", "onnx_rel_diff", "unpruned_groups",
          "reason", "float64"]  # fmt: skip


def _peers_path() -> Path:
    """``shared/reference/peers-zoo.md`` beside the checkout (main or a worktree under it)."""
    found = [p / "shared" / "reference" / "peers-zoo.md" for p in Path(__file__).resolve().parents]
    return next((p for p in found if p.exists()), found[2])


PEERS = Path(os.environ.get("PEERS_ZOO", _peers_path()))

# Why the table once said exactly 0.0 for three ConvNeXt models (measured on convnext_tiny).
CONVNEXT = [
    "ConvNeXt: with torchvision's own init, convnext_tiny/small/base reported a max_rel_diff "
    "of exactly 0.0. Every ConvNeXt block multiplies its branch by a layer scale of 1e-6 "
    "before adding it to the residual stream, and every cut lies inside a branch (the stream's "
    "channels stay whole: LayerNorm normalises over them; only the 4x MLP hidden channels, "
    "`block.3`/`block.5`, are cut). The stripped model's rounding differences, about 1e-7 of "
    "the branch, were scaled to about 1e-13 of the stream, below float32 resolution, so they "
    "vanished: a wrong cut in a branch would have vanished the same way. With the layer "
    "scales redrawn by `nondegenerate` (around 1e-6 +- 0.5) the branches count and the "
    "difference is ordinary rounding, nonzero: 7.7e-07 / 7.3e-07 / 9.4e-07 / 9.5e-07 for "
    "tiny / small / base / large (convnext_tiny gives 0.0e+00 on the same run with the plain "
    "init).",
]


def load_peers() -> dict[str, tuple[str, str]]:
    """model -> (Torch-Pruning MACs kept, NNCF MACs kept) from the shared reference table."""
    peers: dict[str, tuple[str, str]] = {}
    if not PEERS.exists():
        return peers
    for line in PEERS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6 or not cells[1].startswith(("✔", "✘")):
            continue
        tp = cells[2] if cells[1] == "✔" else "fail"
        nncf = cells[5] if cells[4] == "✔" else "fail"
        peers[cells[0]] = (tp, nncf)
    return peers


def run_one(name: str) -> dict:
    from filterprune.testing.zoo import check_model

    return check_model(name, unrounded=True)


def main(argv: list[str]) -> None:
    if one_model_main(argv, run_one):
        return
    if argv[:1] == ["--merge"]:
        merge_partial()
        return
    import torchvision

    names = argv or sorted(torchvision.models.list_models(module=torchvision.models))
    partial = bool(argv)
    run_tables(__file__, names, stem(partial), lambda rows: write(rows, partial))


def stem(partial: bool) -> str:
    return "zoo-partial" if partial else "zoo"


def merge_partial() -> None:
    """Put the rows of ``zoo-partial.csv`` (a run of some models) into ``zoo.csv``/``.md``."""
    write(sorted(merged_rows("zoo"), key=lambda r: r["model"]), partial=False)


def write(rows: list[dict], partial: bool) -> None:
    write_csv(RESULTS / f"{stem(partial)}.csv", rows, FIELDS)
    ok = [r for r in rows if r["ok"]]
    over30 = [r for r in ok if r["flops_kept"] <= 0.7]
    peers = load_peers()
    fields = FIELDS[:5] + ["TP", "NNCF"] + FIELDS[5:]
    for r in rows:
        r["TP"], r["NNCF"] = peers.get(r["model"], ("", ""))
    lines = [
        "# torchvision zoo: filter_pruning level 0.5 (baseline), first/downsample convs on",
        "",
        f"{len(ok)}/{len(rows)} models pass (strip == masked within 1e-4 relative, ONNX Runtime "
        f"== stripped, classifier width unchanged); {len(over30)} remove more than 30% of FLOPs.",
        "Random init made non-degenerate (`filterprune.testing.zoo.nondegenerate`: every "
        "constant parameter redrawn, real-scale BatchNorm statistics), eval mode, batch 2, "
        "smallest accepted square input; analysis = capture + grouping, 1 thread; capture: "
        "torch.fx or the torch.export fallback; exporter: the ONNX exporter that wrote the file.",
        "",
        "Peers (TP = Torch-Pruning 1.6.1, NNCF 2.19.0): MACs kept at level 0.5 from "
        "../shared/reference/peers-zoo.md (NNCF with its defaults: first/downsample convs off).",
        "flops_kept_x1: the same with `filters_multiple_of` 1 (no rounding to multiples of 8).",
        "",
        *CONVNEXT,
        "",
        FLOAT64_NOTE,
        "",
        *markdown_table(rows, fields),
    ]
    atomic_write_text(RESULTS / f"{stem(partial)}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
