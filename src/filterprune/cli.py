"""The ``filterprune`` command line (also ``python -m filterprune``).

Each subcommand is a pair of functions registered in :data:`SUBCOMMANDS`: one adds
its arguments to an ``argparse`` sub-parser, one runs it and returns the exit code.

    filterprune analyze torchvision:resnet50 --plot resnet50.png
    filterprune prune resnet18 --data images/ --config prune.json --epochs 10 --out runs/r18
    filterprune report runs/r18
    filterprune convert model.onnx -o model_pruned.onnx --report
    filterprune bench dense.onnx pruned.onnx --runtime openvino --batch 1,8 --threads 2

Exit codes: 0 success, 2 bad usage (an argument, file or config to fix: the message
names it and the fix), 1 a run that failed for another reason, 130 interrupted (Ctrl-C),
143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cli_common import (
    RunFailed,
    check_output_path,
    non_negative,
    non_negative_int,
    positive_int,
    shape_arg,
)
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


def _error(message: str, code: int = 2) -> int:
    print(f"filterprune: error: {message}", file=sys.stderr)
    return code


# -- convert -------------------------------------------------------------------------------
def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model with zero filters (e.g. from ctrl.export_model)")
    p.add_argument("-o", "--output", required=True, help="output .onnx or .xml (OpenVINO IR)")
    p.add_argument("--to", choices=("onnx", "openvino"), default=None,
                   help="output format (default: from the output's suffix)")  # fmt: skip
    p.add_argument("--report", action="store_true", help="print what was removed and kept")
    p.add_argument("--report-json", metavar="PATH", help="write the report as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the output equality check")
    p.add_argument("--tolerance", type=non_negative, default=None,
                   help="allowed relative output difference (default 1e-4; 1e-2 for a model "
                        "computing in float16 or bfloat16)")  # fmt: skip
    p.epilog = """examples:
  filterprune convert masked.onnx -o pruned.onnx --report     # remove zero filters
  filterprune convert masked.onnx --to openvino -o pruned.xml # ... as OpenVINO IR
  filterprune convert masked.onnx -o pruned.onnx --report-json report.json
"""


@register_subcommand("convert", "remove zero filters; write ONNX or OpenVINO IR", _add_convert)
def run_convert(args: argparse.Namespace) -> int:
    from ._atomic import atomic_write_text
    from .onnx import remove_zero_filters, save_model

    fmt = args.to or ("openvino" if args.output.endswith(".xml") else "onnx")
    plain = not os.path.exists(args.output) or os.path.isfile(args.output)  # not /dev/null
    if args.to is None and plain and not args.output.endswith((".onnx", ".xml")):
        return _error(f"-o must end in .onnx or .xml (OpenVINO IR), or give --to. Received: "
                      f"-o {args.output}.")  # fmt: skip
    if fmt == "openvino" and not args.output.endswith(".xml"):
        return _error(f"--to openvino writes an .xml file. Received: -o {args.output}.")
    if fmt == "onnx" and args.output.endswith(".xml"):
        return _error("an .xml output is OpenVINO IR: add --to openvino or use an .onnx name.")
    clash = _convert_path_clash(args)
    if clash:
        return _error(clash)
    check_output_path("-o", args.output)
    check_output_path("--report-json", args.report_json)
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


def _convert_path_clash(args: argparse.Namespace) -> str:
    """Why the output paths would overwrite the input or each other ('' if they do not):
    checked before any work, so a typo never costs the model."""
    model, output = Path(args.model).resolve(), Path(args.output).resolve()
    # OpenVINO IR is two files: the .xml and its .bin
    written = {output, output.with_suffix(".bin")} if output.suffix == ".xml" else {output}
    if model in written:
        return (f"the output must not overwrite the input model. Received: -o {args.output} "
                f"and model {args.model}; name another output file.")
    folder = next((p for p in sorted(written) if p.is_dir()), None)
    if folder is not None:  # the IR's .bin beside the .xml: said before any work
        return f"Cannot write {folder}: it is a folder. Give another -o name."
    if not args.report_json:
        return ""
    report = Path(args.report_json).resolve()
    if report == model:
        return (f"--report-json must not overwrite the input model. Received: --report-json "
                f"{args.report_json} and model {args.model}; name a .json file.")
    if report in written:
        return (f"--report-json must not overwrite the output. Received: --report-json "
                f"{args.report_json} and -o {args.output}; name a .json file.")
    return ""


def _write_openvino(model, args: argparse.Namespace, report) -> None:
    from .onnx.convert import default_tolerance
    from .onnx.openvino import check_openvino, read_openvino, save_openvino

    def check(xml: str) -> None:  # the IR as written, read back
        tolerance = default_tolerance(model) if args.tolerance is None else args.tolerance
        note, warning = check_openvino(args.model, xml, tolerance, model)
        report.notes.append(note)
        if warning:
            report.notes.append(f"warning: {warning}")
            print(f"filterprune: warning: {warning}", file=sys.stderr)

    save_openvino(read_openvino(model), args.output, check=None if args.no_verify else check)


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
    p.add_argument("--threads", type=positive_int, default=1,
                   help="intra-op threads (default 1)")  # fmt: skip
    p.add_argument("--seconds", type=non_negative, default=10.0,
                   help="time per batch size (default 10)")  # fmt: skip
    p.add_argument("--warmup", type=non_negative_int, default=3,
                   help="untimed runs each time a model loads (default 3)")  # fmt: skip
    p.add_argument("--runs", type=positive_int, default=20,
                   help="at least this many timed runs (default 20)")  # fmt: skip
    p.add_argument("--turn-seconds", type=non_negative, default=1.0,
                   help="timed seconds per turn (default 1)")  # fmt: skip
    p.add_argument("--input-size", "--input", dest="input", type=shape_arg, metavar="SHAPE",
                   help="the first input's shape, e.g. 1,3,224,224, where the files leave "
                        "sizes past the batch free (its batch is replaced by --batch)")  # fmt: skip
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    p.epilog = """examples:
  filterprune bench dense.onnx pruned.onnx                    # onnxruntime, batch 1, 1 thread
  filterprune bench dense.onnx pruned.onnx --input-size 1,3,224,224   # files with free sizes
  filterprune bench dense.xml pruned.xml --runtime openvino --batch 1,8 --threads 2
  filterprune bench dense.onnx a.onnx b.onnx --seconds 30 --json bench.json
"""


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
        if p.endswith(".xml") and args.runtime != "openvino":
            return _error(f"{p!r} is an OpenVINO IR: add --runtime openvino.")
    if args.threads > (os.cpu_count() or args.threads):
        print(f"filterprune: warning: --threads {args.threads} is more than this machine's "
              f"{os.cpu_count()} CPUs; the timings measure the threads' contention.",
              file=sys.stderr)  # fmt: skip
    check_output_path("--json", args.json)
    rows = benchmark(dict(zip(labels, paths, strict=True)), runtime=args.runtime,
                     batches=args.batch, threads=args.threads, warmup=args.warmup,
                     min_runs=args.runs, seconds=args.seconds,
                     turn_seconds=args.turn_seconds, input_size=args.input)  # fmt: skip
    print(format_table(rows))
    if args.json:
        text = json.dumps([r.to_dict() for r in rows], indent=2)
        atomic_write_text(args.json, text)
    return 0


# -- analyze, prune, report ---------------------------------------------------------------
def _register_model_commands() -> None:
    """Add ``analyze``, ``prune`` and ``report``; they import torch or TensorFlow only when
    they run, and only the one the model needs."""
    if "analyze" in SUBCOMMANDS:
        return
    from . import cli_analyze, cli_prune

    register_subcommand("analyze", "what pruning would do to a model: groups, reasons, "
                        "FLOPs per level", cli_analyze.add_analyze)(cli_analyze.run_analyze)
    register_subcommand("prune", "fine-tune while pruning (or prune at once) and write the "
                        "pruned model", cli_prune.add_prune)(cli_prune.run_prune)
    register_subcommand("report", "HTML and Markdown report of a run (or a checkpoint's "
                        "statistics)", cli_prune.add_report)(cli_prune.run_report)


# -- entry point ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="filterprune", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Filter pruning from the shell: analyze a model, prune it while "
        "fine-tuning, report on the run, remove zero filters from ONNX exports (convert) "
        "and measure the speed-up (bench).",
        epilog="\n\n".join(__doc__.split("\n\n")[2:4]))  # fmt: skip
    parser.add_argument("--traceback", action="store_true",
                        help="show the Python traceback of an error (for bug reports)")
    _register_model_commands()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        add(p)
        p.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)  # also after the command, as errors suggest
        p.set_defaults(run=run)
    return parser


# Errors the user fixes by changing an argument, a file or a config: exit code 2.
_USAGE = (FilterPruneError, ValueError, TypeError, FileNotFoundError, IsADirectoryError,
          NotADirectoryError, FileExistsError)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad usage, 1 failure)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or argparse's own usage error (code 2)
        return int(done.code or 0) if not isinstance(done.code, str) else 2
    if os.getcwd() not in sys.path:  # modules next to the user, as `python -m` finds them
        sys.path.append(os.getcwd())
    stdout, sys.stdout = sys.stdout, _ReaderMayLeave(sys.stdout)
    term = _on_sigterm()
    try:
        code = int(args.run(args))
        return 141 if sys.stdout.left else code  # 128 + SIGPIPE, as shell tools end
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (a job scheduler's stop)
        code = 143 if isinstance(stop, _Terminated) else 130
        return _error("interrupted." + getattr(args, "interrupt_hint", ""), code)
    except Exception as err:  # noqa: BLE001 - every error ends as one sentence and an exit code
        if args.traceback or os.environ.get("FILTERPRUNE_TRACEBACK"):
            raise
        if isinstance(err, RunFailed) or not isinstance(err, _USAGE):
            return _error(f"{_describe(err)} (add --traceback for details)"
                          if not isinstance(err, RunFailed) else str(err), 1)  # fmt: skip
        return _error(str(err))
    finally:
        sys.stdout = stdout
        if term is not None:
            signal.signal(signal.SIGTERM, term)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command runs: writes in progress are undone as for
    Ctrl-C (no half-written file), and a run says how to resume."""


def _on_sigterm() -> Any:
    """Raise :class:`_Terminated` on SIGTERM while a command runs; returns the handler
    it replaced (None where none can be set: off the main thread)."""
    pid = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != pid:  # a forked helper (a runtime's telemetry) ends as it would
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise _Terminated()

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        return None


class _ReaderMayLeave:
    """Standard output whose reader may leave (`| head`): what follows goes nowhere and
    the command runs on, so the files it writes are still written."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.left = stream, False

    def write(self, text: str) -> int:
        return self._quietly(self.stream.write, text) or len(text)

    def flush(self) -> None:
        self._quietly(self.stream.flush)

    def _quietly(self, call: Any, *args: Any) -> Any:
        if self.left:
            return None
        try:
            return call(*args)
        except BrokenPipeError:
            self.left = True
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())  # none at exit
            return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _describe(err: BaseException) -> str:
    """A one-line account of an unexpected error."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
