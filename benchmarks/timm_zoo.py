"""Prune one model of every timm architecture family: create, strip, compare, export.

A family is a timm model module (``resnet``, ``efficientnet``, ``vision_transformer``...);
its representative is its smallest model by parameter count (``test_*`` models left
out), listed in ``results/timm_families.json``. Random init (``pretrained=False``, no
weights are downloaded), made non-degenerate before comparing. One subprocess per
model. Writes ``benchmarks/results/timm_zoo.csv`` and ``timm_zoo.md``.

    python benchmarks/timm_zoo.py                   # every family
    python benchmarks/timm_zoo.py efficientnet_b0   # some models (timm_zoo-partial)
    python benchmarks/timm_zoo.py --merge           # put the partial rows into timm_zoo
    python benchmarks/timm_zoo.py --families        # rebuild timm_families.json (slow)

Tables are rewritten after every model; a killed run started again goes on where it
stopped (``timm_zoo.progress.json``).
"""

from __future__ import annotations

import json
import sys

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

FAMILIES = RESULTS / "timm_families.json"
FIELDS = ["family", "model", "ok", "cut", "input", "flops_kept", "params_kept", "analysis_s",
          "capture", "exporter", "max_rel_diff", "onnx_rel_diff", "unpruned_groups", "reason",
          "top_reason", "float64"]  # fmt: skip


def build_families() -> dict[str, str]:
    """Family -> its smallest model by parameter count (built on the meta device)."""
    import timm
    import torch
    from timm.models._registry import _model_to_module

    sizes: dict[str, list[tuple[int, str]]] = {}
    for name in timm.list_models():
        if name.startswith("test_"):
            continue
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        count = sum(p.numel() for p in model.parameters())
        sizes.setdefault(_model_to_module[name], []).append((count, name))
    return {family: min(found)[1] for family, found in sorted(sizes.items())}


def families() -> dict[str, str]:
    if not FAMILIES.exists():
        atomic_write_text(FAMILIES, json.dumps(build_families(), indent=1) + "\n")
    return json.loads(FAMILIES.read_text())


def run_one(name: str) -> dict:
    from filterprune.testing.zoo import check_timm

    return check_timm(name)


def main(argv: list[str]) -> None:
    if one_model_main(argv, run_one):
        return
    if argv[:1] == ["--families"]:
        atomic_write_text(FAMILIES, json.dumps(build_families(), indent=1) + "\n")
        return
    if argv[:1] == ["--merge"]:
        write(sorted(merged_rows("timm_zoo"), key=lambda r: r["family"]), partial=False)
        return
    family_of = {model: family for family, model in families().items()}
    partial = bool(argv)
    run_tables(__file__, argv or list(family_of), stem(partial), lambda rows: write(rows, partial),
               extra=lambda n: {"family": family_of.get(n, "")})  # fmt: skip


def stem(partial: bool) -> str:
    return "timm_zoo-partial" if partial else "timm_zoo"


def write(rows: list[dict], partial: bool) -> None:
    for r in rows:
        r["cut"] = bool(r["ok"]) and r.get("flops_kept") != "" and float(r["flops_kept"]) < 0.9
    write_csv(RESULTS / f"{stem(partial)}.csv", rows, FIELDS)
    ok = [r for r in rows if r["ok"]]
    cut = [r for r in rows if r["cut"]]
    export = [r for r in rows if r.get("capture") == "torch.export"]
    lines = [
        "# timm: one model per architecture family, filter_pruning level 0.5 (baseline), "
        "first/downsample convs on",
        "",
        f"{len(cut)}/{len(rows)} families ({len(cut) / max(1, len(rows)):.0%}) prune and cut "
        f"more than 10% of FLOPs (`cut`); {len(ok)}/{len(rows)} pass the checks (strip == "
        "masked within 1e-4 relative on every output, ONNX Runtime == stripped, output shape "
        f"unchanged, some FLOPs cut); {len(export)} captured with the torch.export fallback.",
        "",
        "timm 1.0.31, `pretrained=False`, random init made non-degenerate "
        "(`filterprune.testing.zoo.nondegenerate`), eval mode, batch 2, at the input size of "
        "the model's pretrained config. Representative: the family's smallest model by "
        "parameters "
        "(`timm_families.json`). analysis = capture + grouping, 1 thread. exporter: the ONNX "
        "exporter that wrote the file (dynamo: the current one). top_reason: the most frequent "
        "reason a group stays whole.",
        "",
        FLOAT64_NOTE,
        "",
        "Not cut by more than 10%:",
        "",
        *[f"- {r['family']} ({r['model']}): {why_not(r)}" for r in rows if not r["cut"]],
        "",
        *markdown_table(rows, FIELDS),
    ]
    atomic_write_text(RESULTS / f"{stem(partial)}.md", "\n".join(lines) + "\n")


# Why a family is not cut, where the row's reason alone does not say (looked into by hand).
WHY = {
    "mambaout_femto": "each block splits fc1's output with sizes fixed in code "
    "(`split_indices`) and LayerNorm (channels last) ties the stream: no group is free",
    "gmlp_ti16_224": "the spatial gating unit normalises half of fc1's output with LayerNorm "
    "and multiplies the other half by it, and LayerNorm ties the stream: no group is free",
    "mobilenetv5_base": "fx cannot trace it; in the torch.export graph every reshape size is "
    "a literal, so the reshapes of its attention and norms fix their channels (safe, not cut)",
    "nf_regnet_b0": "its ScaledStdConv2d standardise each filter over all of its input "
    "channels in forward: a cut input channel would change every filter's statistics, so no "
    "conv's input is cut (only a few outputs feeding nothing else)",
    "levit_128s": "LinearNorm ends in `reshape_as`, which has no channel rule under torch.fx",
    "deepseek_vit_412m": "not measured: over the 420 s per model on one shared core "
    "(412M parameters)",
    "gemma4_vit_167m": "not measured: over the 420 s per model on one shared core",
}


def why_not(row: dict) -> str:
    reason = row.get("reason") or f"FLOPs kept {row.get('flops_kept')}"
    why = WHY.get(row["model"], "")
    top = row.get("top_reason") or ""
    return "; ".join(part for part in (reason, why, f"most frequent: {top}" if top else "") if part)


if __name__ == "__main__":
    main(sys.argv[1:])
