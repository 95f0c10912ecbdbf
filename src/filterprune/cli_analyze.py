"""``filterprune analyze MODEL``: what pruning would do, before any training.

Runs the pipeline ``prune`` runs (:func:`filterprune.core.workflow.dry_run`: same capture,
options, importance and ranking) on a PyTorch, Keras or ONNX model, without changing it,
and prints the prunable groups (members, filters, share of the FLOPs), what is left whole
and why, and the FLOPs and parameters left at levels 0.1 to 0.9.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

import numpy as np

from .cli_common import (
    UsageError,
    check_output_path,
    level_arg,
    load_config,
    quiet_capture,
    shape_arg,
    with_switches,
)
from .cli_models import (
    ModelSpec,
    build_factory,
    is_keras_model,
    load_keras_model,
    load_torch_model,
    load_weights,
    parse_spec,
)

__all__ = ["add_analyze", "run_analyze", "summarize", "MODEL_HELP", "TORCH_MODEL_HELP"]

MODEL_HELP = ("torchvision:NAME (or a bare torchvision name), timm:NAME, module:factory, "
              "file.py:factory, a .keras or .onnx file, or a pickled .pt model with --trusted")
TORCH_MODEL_HELP = ("a PyTorch model: torchvision:NAME (or a bare torchvision name), timm:NAME, "
                    "module:factory, file.py:factory, or a pickled .pt model with --trusted "
                    "(`analyze` reads .keras and .onnx files too; `convert` cuts .onnx files)")
EXAMPLES = """examples:
  filterprune analyze torchvision:resnet50 --input-size 1,3,224,224
  filterprune analyze resnet18 --level 0.3 --plot resnet18.png --json resnet18.json
  filterprune analyze mypkg.models:build --weights best.pt --config prune.json
  filterprune analyze model.keras
  filterprune analyze model.onnx --prune-first-conv
"""
SWEEP = [round(0.1 * i, 1) for i in range(1, 10)]
_DTYPE = re.compile(r"scalar types?|dtype|\bLong\b|\bHalf\b|BFloat16|\bDouble\b|indices")


def add_analyze(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--input-size", "--input", dest="input", type=shape_arg, metavar="SHAPE",
                   help="sample shape, e.g. 1,3,224,224 (default: the config's, the model "
                   "file's, or 1,3,224,224)")  # fmt: skip
    p.add_argument("--config", metavar="JSON", help="config with a filter_pruning entry")
    p.add_argument("--level", type=level_arg, default=None,
                   help="level to plan for, in [0, 1) (default: the config's target)")
    p.add_argument("--weights", metavar="PT", help="state_dict to load first (read "
                   "weights-only); the importance ranking uses it")  # fmt: skip
    p.add_argument("--trusted", action="store_true", help="allow a pickled full model or "
                   "checkpoint (unpickling runs code from the file)")  # fmt: skip
    p.add_argument("--prune-first-conv", action="store_true",
                   help="let the first conv be pruned (params.prune_first_conv)")
    p.add_argument("--prune-downsample-convs", action="store_true",
                   help="let strided convs be pruned (params.prune_downsample_convs)")
    p.add_argument("--json", metavar="PATH", help="write the groups, plan and sweep as JSON")
    p.add_argument("--plot", metavar="PNG", help="chart: FLOPs kept vs level, and each "
                   "layer's share of the FLOPs")  # fmt: skip
    p.epilog = EXAMPLES


def _open(spec: ModelSpec, args: argparse.Namespace) -> tuple[Any, Any, list[int]]:
    """``(model, frontend, default sample size)`` for the spec's framework."""
    if spec.framework != "torch" and args.weights:
        raise UsageError(f"--weights applies to PyTorch models. Received: MODEL {spec.text}, "
                         "which holds its own weights.")
    if spec.framework == "onnx":
        from .onnx.dry_run import OnnxFrontend, dynamic_note, input_shape, with_input_shape

        if not args.input:
            note = dynamic_note(spec.text)
            if note:
                print(note)
            return spec.text, OnnxFrontend(), input_shape(spec.text)
        try:  # sets the file's dynamic dimensions (a fixed one must match)
            return with_input_shape(spec.text, args.input), OnnxFrontend(), args.input
        except ValueError as err:
            raise UsageError(f"--input-size {','.join(map(str, args.input))} does not fit "
                             f"{spec.text}: {err} Give a shape that keeps the file's fixed "
                             "dimensions, or drop --input-size.") from err
    built = build_factory(spec) if spec.kind == "factory" else None
    if spec.framework == "keras" or is_keras_model(built):
        if built is not None and args.weights:
            raise UsageError(f"--weights applies to PyTorch models. Received: MODEL "
                             f"{spec.text}, which gives a Keras model.")  # fmt: skip
        model = built if built is not None else load_keras_model(spec, trusted=args.trusted)
        from .tensorflow.frontend import KerasFrontend

        shape = [1] + [int(d or 1) for d in model.inputs[0].shape[1:]]
        return model, KerasFrontend(), shape
    from .torch.frontend import TorchFrontend

    model = load_torch_model(spec, trusted=args.trusted, built=built)
    if args.weights:
        load_weights(model, args.weights, trusted=args.trusted)
    return model.eval(), TorchFrontend(), [1, 3, 224, 224]


def dry_run_quietly(frontend: Any, model: Any, config: Any, level: float | None,
                    what: str) -> Any:  # fmt: skip
    """:func:`~filterprune.core.workflow.dry_run` without tracing's own printout, and
    with the dtype named when that is why the model could not run."""
    from .core.workflow import dry_run
    from .errors import AnalysisError

    try:
        with quiet_capture():
            return dry_run(frontend, model, config, level=level)
    except AnalysisError as err:
        raise dtype_error(err, what) or err from err.__cause__


def dtype_error(err: Exception, what: str) -> UsageError | None:
    """A clearer error when tracing failed on the input's dtype, else None."""
    text = str(err)
    if not _DTYPE.search(text):
        return None
    cause = text.split(": ", 1)[-1].split(". Give")[0]
    return UsageError(
        f"MODEL {what} could not run on float32 zero inputs: its input dtype does not fit "
        f"({cause}). filterprune traces models with float32 inputs (images); a model that "
        "takes integer inputs (token ids into an Embedding) cannot be analysed.")


def group_flops_share(analysis: Any) -> dict[int, float]:
    """Per group: the share of the FLOPs in layers that read or write its channels."""
    from .core.flops import count_flops

    full = max(count_flops(analysis.graph), 1)
    out = {}
    for g in analysis.groups:
        keeps = analysis.keeps({g.id: np.zeros(g.size, dtype=bool)})
        out[g.id] = 1.0 - count_flops(analysis.graph, keeps) / full
    return out


def sweep(ctrl: Any) -> list[dict[str, Any]]:
    """FLOPs and parameters kept at each level of :data:`SWEEP` (None: unreachable)."""
    from .errors import ConfigError

    rows = []
    for level in SWEEP:
        try:
            ctrl.set_pruning_level(level)
        except ConfigError:
            rows.append({"level": level, "flops_kept": None, "params_kept": None,
                         "filters_kept": None, "filters": None})  # fmt: skip
            continue
        stats = ctrl.statistics()
        rows.append({"level": level, "flops_kept": stats.flops_kept,
                     "params_kept": stats.params_kept, "filters_kept": stats.current_filters,
                     "filters": stats.full_filters})  # fmt: skip
    return rows


def summarize(ctrl: Any) -> dict[str, Any]:
    """The JSON-able result of ``analyze``: groups, plan, statistics and the level sweep."""
    from .core.flops import layer_flops
    from .core.stats import whole_layers

    analysis, plan = ctrl.analysis, ctrl.plan
    producers = {p for g in analysis.groups for p in g.producers}
    stats = ctrl.statistics()
    # size: channel units (cut whole); filters: of each producer; followers: layers
    # whose filters follow the channels (depthwise convs), cut or kept whole with them
    followers = analysis.followers()
    groups = [{"id": g.id, "size": g.size, "filters": analysis.filters(g), "width": g.width,
               "producers": g.producers, "followers": followers.get(g.id, []),
               "reason": g.reason} for g in analysis.groups]  # fmt: skip
    flops = layer_flops(analysis.graph)
    pruned_all = layer_flops(analysis.graph, analysis.keeps(
        {g.id: np.zeros(g.size, dtype=bool) for g in analysis.prunable_groups}))
    prunable = {name for name, f in flops.items() if pruned_all.get(name, 0) < f}
    full = max(sum(flops.values()), 1)
    data = {
        "groups": groups,
        "group_flops_share": {str(k): v for k, v in group_flops_share(analysis).items()},
        "layer_flops_share": {name: f / full for name, f in flops.items()},
        "prunable_layers": sorted(prunable),
        "kept_whole": {str(k): v for k, v in plan.reasons.items()},
        "whole_layers": [{"layer": names[0], "reason": why,
                          "flops_share": flops.get(names[0], 0) / full}
                         for names, why in whole_layers(analysis.graph, producers)],
        "plan": plan.to_dict(analysis),
        "statistics": stats.to_dict(),
        "level": plan.level,
        "flops_target": bool(ctrl.params.prune_flops),
    }
    data["levels"] = sweep(ctrl)
    return data


def format_summary(data: dict[str, Any], header: str) -> str:
    """The printed report of :func:`summarize`'s result."""
    share = data["group_flops_share"]
    kept = {tuple(g["producers"]): len(g["kept"]) for g in data["plan"]["groups"]}
    lines = [header, "",
             f"{'group':>5} {'filters':>7} {'members':>7} {'FLOPs':>6}  {'status':<26} layers"]
    for g in data["groups"]:
        members = g["producers"] + g["followers"]
        head = ", ".join(members[:2]) + (f" (+{len(members) - 2})" if len(members) > 2 else "")
        why = data["kept_whole"].get(str(g["id"]))
        units = kept.get(tuple(g["producers"]), g["size"])
        status = f"prunable, keeps {units * g['width']}" if not g["reason"] else "left whole"
        status = "kept whole by selection" if why else status
        lines.append(f"{g['id']:>5} {g['filters']:>7} {len(members):>7} "
                     f"{share[str(g['id'])]:>6.1%}  {status:<26} {head}")  # fmt: skip
    left = [(g, g["reason"]) for g in data["groups"] if g["reason"]]
    left += [(data["groups"][int(k)], v) for k, v in data["kept_whole"].items()]
    if left or data["whole_layers"]:
        lines += ["", "What is left whole, and why:"]
        for g, why in left:
            members = g["producers"] + g["followers"]
            names = ", ".join(members[:3]) + (" ..." if len(members) > 3 else "")
            lines.append(f"  group {g['id']} ({names}, {share[str(g['id'])]:.1%} of the "
                         f"FLOPs): {why}")  # fmt: skip
        for w in data["whole_layers"]:  # in no group: an op without a rule runs in them
            lines.append(f"  layer {w['layer']} ({w['flops_share']:.1%} of the FLOPs): "
                         f"{w['reason']}")  # fmt: skip
    what = ("the fraction of the FLOPs removed" if data["flops_target"]
            else "the fraction of filters removed from each prunable group")  # fmt: skip
    lines += ["", f"What each level leaves (level = {what}):",
              f"  {'level':>5}  {'FLOPs kept':>10}  {'params kept':>11}"]
    for row in data["levels"]:
        if row["flops_kept"] is None:
            lines.append(f"  {row['level']:>5.1f}  {'unreachable':>10}")
        else:
            lines.append(f"  {row['level']:>5.1f}  {row['flops_kept']:>10.3f}  "
                         f"{row['params_kept']:>11.3f}")  # fmt: skip
    stats = data["statistics"]
    n_prunable = sum(1 for g in data["groups"] if not g["reason"])
    lines.append(f"\n{n_prunable} of {len(data['groups'])} groups prunable; FLOPs "
                 f"{stats['full_flops'] / 1e9:.3f}G; at level {data['level']:g}: "
                 f"{stats['flops_kept']:.3f} of the FLOPs kept, "
                 f"{stats['params_kept']:.3f} of the parameters")  # fmt: skip
    return "\n".join(lines)


def run_analyze(args: argparse.Namespace) -> int:
    """Print (and optionally write) what pruning would do to MODEL."""
    from ._atomic import atomic_write_bytes, atomic_write_text
    from .core.config import Config
    from .errors import AnalysisError

    check_output_path("--json", args.json)
    check_output_path("--plot", args.plot)
    spec = parse_spec(args.model)
    model, frontend, fallback = _open(spec, args)
    config = load_config(args.config, args.input, fallback, args.level)
    config = Config.from_dict(with_switches(config, {
        "prune_first_conv": args.prune_first_conv,
        "prune_downsample_convs": args.prune_downsample_convs}))  # fmt: skip
    try:
        ctrl = dry_run_quietly(frontend, model, config, args.level, spec.text)
    except AnalysisError as err:
        if args.input or config.get("input_info", {}).get("sample_size") != fallback or \
                "(from `input_info`)" not in str(err):  # fmt: skip
            raise
        size = ",".join(map(str, fallback))
        raise UsageError(f"{err} No input size was given, so analyze tried its default "
                         f"{size}: give the model's as --input-size N,C,H,W, or as "
                         "`input_info` in --config.") from err
    data = summarize(ctrl)
    size = "x".join(map(str, config.sample_sizes()[0])) if config.sample_sizes() else "?"
    full = data["statistics"]
    header = (f"MODEL {spec.text} ({frontend.name}), input {size}: "
              f"{full['full_flops'] / 1e9:.3f} GFLOPs in conv/linear layers, "
              f"{full['full_params'] / 1e6:.3f}M parameters in layers with weights")  # fmt: skip
    print(format_summary(data, header))
    if args.json:
        data.update(model=spec.text, framework=frontend.name, input_size=size)
        atomic_write_text(args.json, json.dumps(data, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        from .report.charts import analysis_chart

        shares = [(n, s, n in data["prunable_layers"])
                  for n, s in data["layer_flops_share"].items()]  # fmt: skip
        axis = "FLOPs removed" if data["flops_target"] else "level (filters removed per group)"
        png = analysis_chart(data["levels"], data["level"], axis, shares)
        atomic_write_bytes(args.plot, png)
        print(f"wrote {args.plot}")
    return 0
