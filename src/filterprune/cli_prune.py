"""``filterprune prune`` and ``filterprune report``: arguments and dispatch.

``prune MODEL --data DIR --epochs N --out RUN_DIR`` fine-tunes while pruning
(:mod:`filterprune.torch.finetune`); ``prune MODEL -o pruned.pt`` prunes at once without
training. ``report RUN_DIR`` writes a run's HTML and Markdown report;
``report MODEL --checkpoint ckpt.pt`` prints a checkpoint's statistics.
Torch is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from .cli_analyze import TORCH_MODEL_HELP
from .cli_common import (
    UsageError,
    check_distinct_paths,
    check_output_folder,
    check_output_path,
    level_arg,
    load_config,
    non_negative,
    non_negative_int,
    positive_int,
    seed_arg,
    shape_arg,
)
from .cli_models import parse_spec

__all__ = ["add_prune", "run_prune", "add_report", "run_report"]

PRUNE_EXAMPLES = """examples:
  # fine-tune while pruning; writes the pruned model, its ONNX forms and a report
  filterprune prune torchvision:resnet18 --data images/ --config prune.json --epochs 10 \\
      --out runs/r18
  filterprune prune mypkg.models:build --weights best.pt --data fashion-mnist --epochs 2 \\
      --out runs/fm --optimizer sgd --lr 0.01
  filterprune prune --resume runs/r18             # continue an interrupted run
  # a config with accuracy_aware_training searches the level (--epochs caps the search)
  filterprune prune mypkg.models:build --weights best.pt --data images/ --config aa.json \\
      --epochs 20 --out runs/aa
  # one shot, no training: mask at the level, strip, save
  filterprune prune resnet50 --config prune.json --weights w.pt -o pruned.pt --onnx pruned.onnx

--data DIR is an ImageFolder layout (DIR/train/<class>/*.png, DIR/val/<class>/*.png) or
'fashion-mnist'. Without --config the model is pruned to --level (default 0.5) of its
filters over the epochs.
"""
REPORT_EXAMPLES = """examples:
  filterprune report runs/r18          # writes runs/r18/report.html and report.md
  filterprune report resnet50 --config prune.json --checkpoint ckpt.pt --plot layers.png
"""


def add_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", metavar="MODEL", help=TORCH_MODEL_HELP)
    run = p.add_argument_group("fine-tuning run")
    run.add_argument("--data", metavar="DIR", help="ImageFolder root with train/ and val/, "
                     "or 'fashion-mnist'")  # fmt: skip
    run.add_argument("--epochs", type=positive_int, help="epochs of fine-tuning")
    run.add_argument("--out", metavar="RUN_DIR", help="new folder for the run's files")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    run.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw",
                     help="(default adamw)")
    run.add_argument("--lr", type=non_negative, help="peak learning rate of the cosine "
                     "schedule (default 0.01 for sgd, 0.001 for adamw)")  # fmt: skip
    run.add_argument("--weight-decay", type=non_negative, default=1e-4, help="(default 1e-4)")
    run.add_argument("--batch-size", type=positive_int, default=64, help="(default 64)")
    run.add_argument("--workers", type=non_negative_int, default=0, help="data loader workers")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="auto: cuda when present (then with bfloat16 mixed precision)")
    run.add_argument("--seed", type=seed_arg, default=0, help="(default 0)")
    run.add_argument("--train-limit", type=positive_int,
                     help="use N training images, a seeded random subset")
    run.add_argument("--val-limit", type=positive_int,
                     help="use N validation images, a seeded random subset")
    run.add_argument("--log", choices=("none", "tensorboard"), default="none",
                     help="also log scalars to RUN_DIR/tensorboard")  # fmt: skip
    run.add_argument("--bench-threads", type=positive_int, default=1,
                     help="onnxruntime threads for the latency measurement (default 1)")
    run.add_argument("--bench-seconds", type=non_negative, default=3.0,
                     help="seconds of latency measurement per model (default 3)")
    shot = p.add_argument_group("one shot (no training)")
    shot.add_argument("-o", "--output", metavar="PT", help="save the shrunk state_dict here")
    shot.add_argument("--onnx", metavar="PATH", help="also export the shrunk model to ONNX")
    both = p.add_argument_group("both")
    both.add_argument("--config", metavar="JSON", help="config with a filter_pruning entry")
    both.add_argument("--input-size", "--input", dest="input", type=shape_arg, metavar="SHAPE",
                      help="sample shape, e.g. 1,3,224,224")  # fmt: skip
    both.add_argument("--level", type=level_arg, help="one shot: the level (default: the "
                      "config's target); without --config: the target")  # fmt: skip
    both.add_argument("--weights", metavar="PT", help="state_dict to start from (read "
                      "weights-only)")  # fmt: skip
    both.add_argument("--trusted", action="store_true", help="allow a pickled full model or "
                      "weights file (unpickling runs code from the file)")  # fmt: skip
    p.epilog = PRUNE_EXAMPLES


_RUN_ONLY = ("data", "out", "epochs")


def run_prune(args: argparse.Namespace) -> int:
    """Dispatch to a resumed run, a new fine-tuning run, or one-shot pruning."""
    if args.resume:
        return _resume(args)
    if not args.model:
        raise UsageError("MODEL is required (or --resume RUN_DIR). See `filterprune prune "
                         "--help` for examples.")  # fmt: skip
    if args.data or args.out or args.epochs:
        return _new_run(args)
    if args.output:
        check_output_path("-o", args.output)
        check_output_path("--onnx", args.onnx, ".onnx")
        model_file = args.model.rsplit(":", 1)[0] if ".py:" in args.model else args.model
        check_distinct_paths({"-o": args.output, "--onnx": args.onnx},
                             {"MODEL": model_file if Path(model_file).is_file() else None,
                              "--weights": args.weights, "--config": args.config})  # fmt: skip
        from .torch.cli import run_one_shot

        return run_one_shot(args)
    raise UsageError("prune needs --data DIR --epochs N --out RUN_DIR (fine-tune while "
                     "pruning) or -o FILE (prune at once, no training).")  # fmt: skip


def _resume(args: argparse.Namespace) -> int:
    given = [f"--{k}" for k in ("data", "out", "config", "weights") if getattr(args, k)]
    if args.model or given or args.output:
        extra = ", ".join(([args.model] if args.model else []) + given)
        raise UsageError(f"--resume continues {args.resume} with its own settings; drop "
                         f"{extra} (only --epochs may change).")  # fmt: skip
    from .torch.finetune import resume_run

    args.interrupt_hint = f" Continue with --resume {args.resume}."  # read by cli.main
    resume_run(args.resume, args.epochs)
    return 0


def _new_run(args: argparse.Namespace) -> int:
    missing = [f"--{k}" for k in _RUN_ONLY if not getattr(args, k)]
    if missing:
        raise UsageError(f"a fine-tuning run needs --data, --epochs and --out; missing "
                         f"{', '.join(missing)}.")  # fmt: skip
    if args.output or args.onnx:
        raise UsageError("-o/--onnx belong to one-shot pruning; a run with --data writes its "
                         "models into --out.")  # fmt: skip
    spec = parse_spec(args.model)
    if spec.framework != "torch":
        raise UsageError(f"prune fine-tunes PyTorch models; MODEL {spec.text} is a "
                         f"{spec.kind} file. Use the Python API (filterprune.tensorflow) for "
                         "Keras, or `filterprune convert` for an ONNX export with zero filters.")
    check_output_folder("--out", args.out)
    if args.data != "fashion-mnist" and not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data} is not a folder. Give an ImageFolder root with "
                         "train/ and val/, or 'fashion-mnist'.")  # fmt: skip
    if args.log == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise UsageError("--log tensorboard needs the tensorboard package, which is not "
                         "installed: pip install tensorboard (or drop --log).")  # fmt: skip
    fallback = [1, 1, 28, 28] if args.data == "fashion-mnist" else [1, 3, 224, 224]
    config = load_config(args.config, args.input, fallback, args.level, epochs=args.epochs)
    if "accuracy_aware_training" in config:
        from .core.accuracy_aware import check_config

        check_config(config)
    if args.weights and not Path(args.weights).is_file():
        raise UsageError(f"--weights file not found: {args.weights}. Check the path.")
    settings = {k: getattr(args, k) for k in (
        "model", "data", "epochs", "optimizer", "lr", "weight_decay", "batch_size", "workers",
        "device", "seed", "train_limit", "val_limit", "log", "bench_threads", "bench_seconds",
        "trusted")}  # fmt: skip
    settings["weights"] = str(Path(args.weights).resolve()) if args.weights else None
    if not args.config:
        print(f"no --config: pruning {config.algorithms()[0]['params']['pruning_target']:g} "
              f"of the filters over {args.epochs} epochs (exponential schedule)")
    from .torch.finetune import start_run

    args.interrupt_hint = f" Continue with --resume {args.out}."  # read by cli.main
    start_run(settings, config, args.out)
    return 0


# -- report --------------------------------------------------------------------------------
def add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RUN_DIR", help="the --out folder of a `prune --data` "
                   "run (or MODEL, with --checkpoint)")  # fmt: skip
    legacy = p.add_argument_group("statistics of a training checkpoint")
    legacy.add_argument("--checkpoint", metavar="PT", help="torch.save file with 'state_dict' "
                        "and 'compression_state' (read weights-only)")  # fmt: skip
    legacy.add_argument("--config", metavar="JSON", help="the config the checkpoint was "
                        "trained with")  # fmt: skip
    legacy.add_argument("--input-size", "--input", dest="input", type=shape_arg, metavar="SHAPE",
                        help="sample shape, e.g. 1,3,224,224 (without --config)")  # fmt: skip
    legacy.add_argument("--plot", metavar="PNG", help="bar chart of filters kept per layer")
    legacy.add_argument("--trusted", action="store_true", help="allow a checkpoint that needs "
                        "full unpickling (runs code from the file)")  # fmt: skip
    p.epilog = REPORT_EXAMPLES


def run_report(args: argparse.Namespace) -> int:
    """Write a run's report, or print a checkpoint's statistics."""
    if args.checkpoint:
        check_output_path("--plot", args.plot)
        from .torch.cli import run_checkpoint_report

        return run_checkpoint_report(args)
    if args.config or args.plot or args.input:
        raise UsageError("--config, --plot and --input-size go with --checkpoint; a run "
                         f"folder's report needs none of them: filterprune report {args.target}")
    from .report import write_report

    html, md = write_report(args.target)
    print(f"wrote {html} and {md}")
    return 0
