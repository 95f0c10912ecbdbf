"""``filterprune analyze | prune | report`` for PyTorch models.

MODEL is a torchvision model name (``resnet50``, random init) or ``package.module:factory``,
a callable returning an ``nn.Module``.

    filterprune analyze resnet50 --input 1,3,224,224 --level 0.5
    filterprune prune resnet50 --config prune.json --weights resnet50.pt -o pruned.pt
    filterprune report resnet50 --config prune.json --checkpoint ckpt.pt --plot layers.png
"""

from __future__ import annotations

import argparse
import importlib
import json

import torch
from torch import nn

from .._atomic import atomic_write, atomic_write_text
from ..core.config import Config
from ..core.workflow import dry_run
from ..errors import ConfigError
from .frontend import TorchFrontend

__all__ = ["load_model", "add_analyze", "run_analyze", "add_prune", "run_prune", "add_report",
           "run_report"]  # fmt: skip


def load_model(spec: str) -> nn.Module:
    """A model from a torchvision name or ``module:factory``."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        return factory()
    import torchvision

    names = torchvision.models.list_models()
    if spec not in names:
        raise ConfigError(
            f"MODEL must be a torchvision model name or 'module:factory'. Received: {spec!r}. "
            f"Known torchvision names include: {', '.join(names[:8])}, ..."
        )
    return torchvision.models.get_model(spec, weights=None)


def _shape(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        message = f"expected a shape like 1,3,224,224. Received: {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="torchvision model name or module:factory")
    p.add_argument("--input", type=_shape, default=None, help="sample shape, e.g. 1,3,224,224")
    p.add_argument("--config", help="JSON config (NNCF format) with a filter_pruning entry")


def _config(args: argparse.Namespace, level: float | None = None) -> Config:
    if args.config:
        config = Config.from_json(args.config)
    else:
        config = Config.from_dict({
            "input_info": {"sample_size": args.input or [1, 3, 224, 224]},
            "compression": {"algorithm": "filter_pruning", "pruning_init": level or 0.0,
                            "params": {"schedule": "baseline",
                                       "pruning_target": level or 0.5}},
        })  # fmt: skip
    if args.input:
        config["input_info"] = {"sample_size": args.input}
    return config


# -- analyze -------------------------------------------------------------------------------
def add_analyze(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--level", type=float, default=None,
                   help="level to plan for (default: the config's target)")  # fmt: skip
    p.add_argument("--prune-first-conv", action="store_true")
    p.add_argument("--prune-downsample-convs", action="store_true")
    p.add_argument("--json", metavar="PATH", help="write the groups as JSON")
    p.add_argument("--weights", help="state_dict to load first (torch.save file); the "
                   "importance ranking uses it")  # fmt: skip


def _with_switches(config: Config, args: argparse.Namespace) -> Config:
    """``config`` with the command line's structural switches turned on."""
    switches = {k: True for k in ("prune_first_conv", "prune_downsample_convs")
                if getattr(args, k, False)}  # fmt: skip
    if not switches:
        return config
    data = json.loads(json.dumps(dict(config)))
    algos = data["compression"] if isinstance(data["compression"], list) else [data["compression"]]
    for algo in algos:
        if algo["algorithm"] == "filter_pruning":
            algo.setdefault("params", {}).update(switches)
    return Config.from_dict(data)


def run_analyze(args: argparse.Namespace) -> int:
    """Print the pruning groups of a model, why some are left alone, and a FLOPs estimate.

    Runs the pipeline ``prune`` runs (same capture, options, importance), without masks.
    """
    model = load_model(args.model).eval()
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu"))
    config = _with_switches(_config(args), args)
    ctrl = dry_run(TorchFrontend(), model, config, level=args.level)
    analysis, plan = ctrl.analysis, ctrl.plan
    print(f"{'group':>5} {'channels':>8}  {'producers':<44} status")
    for g in analysis.groups:
        status = f"prunable, keeps {int(plan.kept[g.id].sum())}" if g.prunable else g.reason
        more = f" (+{len(g.producers) - 2})" if len(g.producers) > 2 else ""
        head = ", ".join(g.producers[:2]) + more
        print(f"{g.id:>5} {g.size:>8}  {head:<44} {status}")
    stats = ctrl.statistics()
    print(f"\n{len(analysis.prunable_groups)} of {len(analysis.groups)} groups prunable; "
          f"FLOPs {stats.full_flops / 1e9:.3f}G; at level {plan.level:g}: "
          f"{stats.flops_kept:.3f} of the FLOPs kept")  # fmt: skip
    if args.json:
        groups = [{"id": g.id, "size": g.size, "producers": g.producers, "reason": g.reason}
                  for g in analysis.groups]  # fmt: skip
        data = {"groups": groups, "plan": plan.to_dict(analysis),
                "statistics": stats.to_dict()}  # fmt: skip
        atomic_write_text(args.json, json.dumps(data, indent=2))
    return 0


# -- prune ---------------------------------------------------------------------------------
def add_prune(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--weights", help="state_dict to load first (torch.save file)")
    p.add_argument("--level", type=float, default=None, help="level (default: pruning_target)")
    p.add_argument("-o", "--output", required=True, help="where to save the shrunk state_dict")
    p.add_argument("--onnx", help="also export the shrunk model to this ONNX file")


def run_prune(args: argparse.Namespace) -> int:
    """One-shot pruning (no fine-tuning): mask at the level, strip, save."""
    from . import create_compressed_model
    from .controller import export_onnx

    model = load_model(args.model)
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu"))
    config = _config(args, args.level)
    ctrl, model = create_compressed_model(model.eval(), config)
    level = args.level if args.level is not None else ctrl.scheduler.target_level
    ctrl.set_pruning_level(level)
    print(ctrl.statistics())
    small = ctrl.strip().eval()
    atomic_write(args.output, lambda tmp: torch.save(small.state_dict(), tmp))
    print(f"\nwrote {args.output} (rebuild with filterprune.torch.resize_to_state_dict)")
    if args.onnx:
        export_onnx(small, ctrl.sample, args.onnx)
        print(f"wrote {args.onnx}")
    return 0


# -- report --------------------------------------------------------------------------------
def add_report(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--checkpoint", required=True,
                   help="torch.save file with 'state_dict' and 'compression_state'")  # fmt: skip
    p.add_argument("--plot", metavar="PNG", help="bar chart of filters kept per layer")


def run_report(args: argparse.Namespace) -> int:
    """Statistics of a training checkpoint, optionally as a per-layer chart."""
    from . import create_compressed_model

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "compression_state" not in ckpt:
        raise ConfigError(
            f"--checkpoint must hold 'state_dict' and 'compression_state' (as saved in the "
            f"README's checkpoint example). Received keys: {sorted(ckpt)[:8]}."
        )
    ctrl, model = create_compressed_model(load_model(args.model), _config(args),
                                          compression_state=ckpt["compression_state"])  # fmt: skip
    model.load_state_dict(ckpt["state_dict"])
    stats = ctrl.statistics()
    print(stats)
    if args.plot:
        plot_layers(stats, args.plot)
        print(f"\nwrote {args.plot}")
    return 0


def plot_layers(stats, path: str) -> None:
    """Horizontal bars: filters per prunable layer, kept part in colour."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ConfigError("--plot needs matplotlib: pip install matplotlib.") from err
    layers = stats.layers
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(layers) + 1.5))
    names = [s.name for s in layers]
    ax.barh(names, [s.filters for s in layers], color="#dddddd", label="pruned")
    ax.barh(names, [s.kept for s in layers], color="#3b7dd8", label="kept")
    ax.invert_yaxis()
    ax.set_xlabel("filters")
    ax.set_title(f"FLOPs kept {stats.flops_kept:.2f}, parameters kept {stats.params_kept:.2f}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100), suffix=".png")
    finally:
        plt.close(fig)
