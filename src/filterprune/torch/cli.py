"""The PyTorch halves of ``filterprune prune -o`` (one shot) and ``report --checkpoint``.

The arguments live in :mod:`filterprune.cli_prune`; the fine-tuning run in
:mod:`filterprune.torch.finetune`. Every file is read with ``torch.load(...,
weights_only=True)`` unless the user passes ``--trusted``.

    filterprune prune resnet50 --config prune.json --weights resnet50.pt -o pruned.pt
    filterprune report resnet50 --config prune.json --checkpoint ckpt.pt --plot layers.png
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from .._atomic import atomic_torch_save, atomic_write_bytes
from ..cli_analyze import dtype_error
from ..cli_common import UsageError, load_config, pruning_child, quiet_capture
from ..cli_models import load_torch_model, load_weights, parse_spec, torch_load
from ..errors import AnalysisError, ConfigError

__all__ = ["load_model", "run_one_shot", "run_checkpoint_report", "compress_quietly"]


def load_model(spec: str, *, trusted: bool = False, weights: str | None = None) -> nn.Module:
    """A model from a MODEL spec (see :mod:`filterprune.cli_models`), with ``weights``."""
    model = load_torch_model(parse_spec(spec), trusted=trusted)
    if weights:
        load_weights(model, weights, trusted=trusted)
    return model


def compress_quietly(model: nn.Module, config: Any, state: Any = None) -> tuple[Any, nn.Module]:
    """``create_compressed_model`` without tracing's own printout; dtype errors named."""
    from . import create_compressed_model

    try:
        with quiet_capture():
            return create_compressed_model(model, config, compression_state=state)
    except AnalysisError as err:
        raise dtype_error(err, "") or err from err.__cause__


def run_one_shot(args: argparse.Namespace) -> int:
    """One-shot pruning (no fine-tuning): mask at the level, strip, save."""
    from .controller import export_onnx

    model = load_model(args.model, trusted=args.trusted, weights=args.weights).eval()
    config = load_config(args.config, args.input, [1, 3, 224, 224], args.level)
    if "quantization" in [a["algorithm"] for a in config.algorithms()]:
        raise UsageError(
            f"--config {args.config}: one-shot pruning (-o, no training) cannot quantize: "
            "activation ranges need data. Fine-tune with --data DIR --epochs N --out RUN_DIR, "
            "or drop the quantization entry."
        )
    ctrl, model = compress_quietly(model, config)
    pruning = pruning_child(ctrl)
    if pruning is not None:
        level = args.level if args.level is not None else pruning.scheduler.target_level
        pruning.set_pruning_level(level)
        pruning.scheduler.current_level = pruning.pruning_level  # what statistics show
    print(ctrl.statistics())
    small = ctrl.strip().eval()
    atomic_torch_save(args.output, small.state_dict())
    print(f"\nwrote {args.output} (rebuild with filterprune.torch.resize_to_state_dict)")
    if args.onnx:
        export_onnx(small, ctrl.captured.sample, args.onnx)
        print(f"wrote {args.onnx}")
    return 0


def run_checkpoint_report(args: argparse.Namespace) -> int:
    """Statistics of a training checkpoint, optionally as a per-layer chart."""
    ckpt = torch_load(args.checkpoint, trusted=args.trusted, what="--checkpoint")
    if not isinstance(ckpt, dict) or "compression_state" not in ckpt or "state_dict" not in ckpt:
        got = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UsageError(
            f"--checkpoint {args.checkpoint} must hold 'state_dict' and 'compression_state' "
            f"(as saved in the README's checkpoint example). Received: {got}.")
    model = load_model(args.target, trusted=args.trusted)
    config = load_config(args.config, args.input, [1, 3, 224, 224])
    try:
        ctrl, model = compress_quietly(model, config, ckpt["compression_state"])
    except ConfigError as err:
        if args.config:
            raise
        raise UsageError(f"--checkpoint {args.checkpoint} was saved under a config other than "
                         f"the default one: {err} Give that config with --config.") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise UsageError(
            f"--checkpoint {args.checkpoint}'s state_dict does not fit MODEL "
            f"({str(err).splitlines()[-1].strip()}). For a `prune --data` run's checkpoint "
            "(its classifier sized to the data), report the run folder: filterprune report "
            "RUN_DIR.") from None
    from .fake_quant import lazy_ranges_paused
    from .frontend import sample_inputs

    with torch.no_grad(), lazy_ranges_paused(model):  # weight quantizers read their ranges
        model.eval()(*sample_inputs(config, model))  # from the weights in a forward
    stats = ctrl.statistics()
    print(stats)
    pruning = pruning_child(ctrl)
    if args.plot and pruning is not None:
        from ..report.charts import filters_kept_chart

        stats = pruning.statistics()
        title = f"FLOPs kept {stats.flops_kept:.2f}, parameters kept {stats.params_kept:.2f}"
        layers = [(s.name, s.filters, s.kept) for s in stats.layers]
        atomic_write_bytes(args.plot, filters_kept_chart(layers, title))
        print(f"\nwrote {args.plot}")
    return 0
