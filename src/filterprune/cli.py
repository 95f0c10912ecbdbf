"""The ``filterprune`` command line.

Each subcommand is a pair of functions registered in :data:`SUBCOMMANDS`: one adds
its arguments to an ``argparse`` sub-parser, one runs it and returns the exit code.
Adding a subcommand (``analyze``, ``prune``, ``report``) is one more pair.

    filterprune convert model.onnx -o model_pruned.onnx --report
    filterprune convert model.onnx --to openvino -o model.xml
    filterprune bench dense.onnx pruned.onnx --runtime openvino --batch 1,8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import FilterPruneError

__all__ = ["main", "register_subcommand", "SUBCOMMANDS"]

Adder = Callable[[argparse.ArgumentParser], None]
Runner = Callable[[argparse.Namespace], int]
SUBCOMMANDS: dict[str, tuple[str, Adder, Runner]] = {}


def register_subcommand(name: str, help_text: str, add: Adder) -> Callable[[Runner], Runner]:
    """Register ``run`` as subcommand ``name``; ``add`` declares its arguments."""

    def wrap(run: Runner) -> Runner:
        if name in SUBCOMMANDS:
            raise ValueError(f"A subcommand named {name!r} is already registered.")
        SUBCOMMANDS[name] = (help_text, add, run)
        return run

    return wrap


def _error(message: str) -> int:
    print(f"filterprune: error: {message}", file=sys.stderr)
    return 2


# -- convert -------------------------------------------------------------------------------
def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model with zero filters (e.g. from ctrl.export_model)")
    p.add_argument("-o", "--output", required=True, help="output .onnx or .xml (OpenVINO IR)")
    p.add_argument("--to", choices=("onnx", "openvino"), default=None,
                   help="output format (default: from the output's suffix)")  # fmt: skip
    p.add_argument("--report", action="store_true", help="print what was removed and kept")
    p.add_argument("--report-json", metavar="PATH", help="write the report as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the output equality check")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="allowed relative output difference (default 1e-4)")  # fmt: skip


@register_subcommand("convert", "remove zero filters; write ONNX or OpenVINO IR", _add_convert)
def run_convert(args: argparse.Namespace) -> int:
    from ._atomic import atomic_write_text
    from .onnx import remove_zero_filters, save_model

    fmt = args.to or ("openvino" if args.output.endswith(".xml") else "onnx")
    if fmt == "openvino" and not args.output.endswith(".xml"):
        return _error(f"--to openvino writes an .xml file. Received: -o {args.output}.")
    if fmt == "onnx" and args.output.endswith(".xml"):
        return _error("an .xml output is OpenVINO IR: add --to openvino or use an .onnx name.")
    if Path(args.output).resolve() == Path(args.model).resolve():
        return _error("the output must not overwrite the input model.")
    model, report = remove_zero_filters(args.model, verify=not args.no_verify,
                                        tolerance=args.tolerance)  # fmt: skip
    if fmt == "onnx":
        save_model(model, args.output)
    else:
        _write_openvino(model, args, report)
    if args.report:
        print(report)
    if args.report_json:
        atomic_write_text(args.report_json, json.dumps(report.to_dict(), indent=2))
    kept = report.flops_kept
    print(f"wrote {args.output}: {report.removed} filters removed, FLOPs kept {kept:.3f}"
          + ("" if report.changed else f" ({'; '.join(report.notes[-1:])})"))  # fmt: skip
    return 0


def _write_openvino(model, args: argparse.Namespace, report) -> None:
    from .onnx.openvino import check_openvino, read_openvino, save_openvino

    ov_model = read_openvino(model)
    if not args.no_verify:
        report.notes.append(check_openvino(args.model, ov_model, args.tolerance))
    save_openvino(ov_model, args.output)


# -- bench ---------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        message = f"expected integers like 1,8. Received: {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1. Received: {text!r}")
    return values


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("dense", help="the baseline model (.onnx, or .xml for OpenVINO)")
    p.add_argument("pruned", nargs="+", help="model(s) to compare with it")
    p.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime")
    p.add_argument("--batch", type=_ints, default=[1], help="batch sizes, e.g. 1,8")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--seconds", type=float, default=10.0, help="time per batch size")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs each time a model loads")
    p.add_argument("--runs", type=int, default=20, help="at least this many timed runs")
    p.add_argument("--turn-seconds", type=float, default=1.0, help="timed seconds per turn")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON")


@register_subcommand("bench", "latency of a dense and a pruned model, side by side", _add_bench)
def run_bench(args: argparse.Namespace) -> int:
    from ._atomic import atomic_write_text
    from .onnx.bench import benchmark, format_table

    paths = [args.dense, *args.pruned]
    labels = [Path(p).stem for p in paths]
    if len(set(labels)) != len(labels):
        labels = [f"{i}:{s}" for i, s in enumerate(labels)]
    for p in paths:
        if not Path(p).is_file():
            return _error(f"no such model file: {p!r}.")
    rows = benchmark(dict(zip(labels, paths, strict=True)), runtime=args.runtime,
                     batches=args.batch, threads=args.threads, warmup=args.warmup,
                     min_runs=args.runs, seconds=args.seconds,
                     turn_seconds=args.turn_seconds)  # fmt: skip
    print(format_table(rows))
    if args.json:
        text = json.dumps([r.to_dict() for r in rows], indent=2)
        atomic_write_text(args.json, text)
    return 0


# -- analyze, prune, report (PyTorch models) ---------------------------------------------
def _register_model_commands() -> None:
    """Add the PyTorch subcommands when torch is installed (the others need only ONNX)."""
    if "analyze" in SUBCOMMANDS:
        return
    try:
        from .torch import cli as torch_cli
    except ImportError:
        return
    register_subcommand("analyze", "pruning groups of a model and why any are left alone",
                        torch_cli.add_analyze)(torch_cli.run_analyze)  # fmt: skip
    register_subcommand("prune", "one-shot prune a model and save the shrunk weights",
                        torch_cli.add_prune)(torch_cli.run_prune)  # fmt: skip
    register_subcommand("report", "statistics of a training checkpoint (and a plot)",
                        torch_cli.add_report)(torch_cli.run_report)  # fmt: skip


# -- entry point ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="filterprune", description="Filter pruning: remove zero filters from exported "
        "models (convert) and measure the speed-up (bench).")  # fmt: skip
    _register_model_commands()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input or failure)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (FilterPruneError, ValueError, TypeError, OSError) as err:
        return _error(str(err))


if __name__ == "__main__":
    sys.exit(main())
