"""What every ``filterprune`` subcommand shares: its errors, argument types and helpers.

Exit codes: 0 when a command succeeds, 2 for bad usage (an argument, file or config the
user can fix; the message names it and the fix), 1 when a run fails for another reason.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import FilterPruneError

__all__ = ["UsageError", "RunFailed", "shape_arg", "level_arg", "positive_int", "non_negative",
           "check_output_path", "quiet_capture", "pruning_child", "default_config"]  # fmt: skip


class UsageError(FilterPruneError, ValueError):
    """A command-line argument or input file the user can fix (exit code 2)."""


class RunFailed(FilterPruneError, RuntimeError):
    """A run that started but could not finish (exit code 1)."""


def shape_arg(text: str) -> list[int]:
    """``"1,3,224,224"`` -> ``[1, 3, 224, 224]`` (argparse type)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) < 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a shape of positive integers like 1,3,224,224. Received: {text!r}")
    return values


def level_arg(text: str) -> float:
    """A pruning level: a number in [0, 1) (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            "expected a number in [0, 1): the fraction of filters (or of the FLOPs, with "
            f"pruning_flops_target) to remove. Received: {text!r}")
    return value


def _number(text: str, kind: type, low: float, what: str, high: float | None = None) -> Any:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value < low or value != value or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"expected {what}. Received: {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    return _number(text, int, 1, "an integer >= 1")


def non_negative(text: str) -> float:
    """A number >= 0 (argparse type)."""
    return _number(text, float, 0.0, "a number >= 0")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (argparse type)."""
    return _number(text, int, 0, "an integer >= 0")


def seed_arg(text: str) -> int:
    """A random seed: an integer in [0, 2**32) (argparse type). Per-epoch seeds are derived
    from it, and torch's generators refuse seeds past 64 bits."""
    return _number(text, int, 0, "an integer in [0, 4294967295]", high=2**32 - 1)


def check_output_path(option: str, path: str | None, suffix: str | None = None) -> None:
    """Refuse an output path whose folder cannot hold it, before any work is done.

    A missing folder is fine (the writers create it); a folder that is a file, an
    output that is an existing folder, or a name without ``suffix`` (where the format is
    fixed) is a usage error naming the option.
    """
    if not path:
        return
    target = Path(path)
    if suffix and target.suffix.lower() != suffix:
        raise UsageError(f"`{option}` writes {suffix[1:].upper()}: its name must end in "
                         f"{suffix}. Received: {option} {path}.")
    if target.is_dir():
        raise UsageError(f"`{option}` must be a file path. Received: {option} {path}, which "
                         "is a folder. Name a file inside it.")
    _check_parents(option, path, target.parents)


def _check_parents(option: str, path: str, parents: Iterable[Path]) -> None:
    """The nearest of ``parents`` that exists must be a folder that takes new files."""
    for parent in parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"`{option}` must be in a folder. Received: {option} {path}, "
                                 f"but {parent} is a file. Choose another path.")
            try:  # a trial file: permission bits do not tell for root or for /proc
                with tempfile.TemporaryFile(dir=parent):
                    pass
            except OSError as err:
                raise UsageError(f"`{option}` must be in a folder this process can write. "
                                 f"Received: {option} {path}, but {parent} refuses a new file "
                                 f"({err.strerror}). Choose another path.") from None
            return


def check_output_folder(option: str, path: str) -> None:
    """Refuse a run folder that is a file or sits where no folder can be made, before
    any work; an existing folder is the caller's to judge (empty, or a run to resume)."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UsageError(f"`{option}` must be a folder. Received: {option} {path}, which is a "
                         "file. Name a new folder.")  # fmt: skip
    _check_parents(option, path, [target, *target.parents])


def check_distinct_paths(outputs: dict[str, str | None], inputs: dict[str, str | None]) -> None:
    """Refuse an output path that is an input's, or another output's, before any work:
    a typo must never cost a file (``-o w.pt`` with ``--weights w.pt``)."""
    seen: dict[Path, str] = {}
    for option, path in inputs.items():
        if path:
            seen.setdefault(Path(path).resolve(), f"{option} {path}")
    for option, path in outputs.items():
        if not path:
            continue
        resolved = Path(path).resolve()
        if resolved in seen:
            raise UsageError(f"`{option}` would overwrite {seen[resolved]}. Received: {option} "
                             f"{path}. Name another file.")  # fmt: skip
        seen[resolved] = f"{option} {path}"


@contextlib.contextmanager
def quiet_capture() -> Iterator[None]:
    """Hide what tracing prints on its own (torch.fx's ShapeProp prints a traceback
    before re-raising): our error message says what failed and how to fix it. Warnings
    (Python's and this package's log records) still reach the real stderr: they were
    printed into the sink, and a misspelt config key went unsaid."""
    err, shown = sys.stderr, warnings.showwarning
    log = logging.getLogger("filterprune")
    handler = None if log.hasHandlers() else logging.StreamHandler(err)  # else the user's
    if handler is not None:
        handler.setLevel(logging.WARNING)
        log.addHandler(handler)

    def show(message, category, filename, lineno, file=None, line=None):
        shown(message, category, filename, lineno, err if file is None else file, line)

    warnings.showwarning = show
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        warnings.showwarning = shown
        if handler is not None:
            log.removeHandler(handler)


def pruning_child(ctrl: Any) -> Any:
    """The filter pruning controller of ``ctrl`` (itself, or a composite's child), or None."""
    if hasattr(ctrl, "child_ctrls"):
        try:
            return ctrl.get("filter_pruning")
        except KeyError:
            return None
    return ctrl if getattr(ctrl, "name", None) == "filter_pruning" else None


def default_config(sample_size: list[int], level: float | None, epochs: int | None = None,
                   ) -> dict[str, Any]:  # fmt: skip
    """The config a command uses without ``--config``: filter pruning to ``level``
    (0.5 by default), at once or, for a training run of ``epochs``, over the epochs."""
    target = 0.5 if level is None else level
    if epochs is None:
        algo = {"algorithm": "filter_pruning", "pruning_init": target,
                "params": {"schedule": "baseline", "pruning_target": target}}  # fmt: skip
    else:
        algo = {"algorithm": "filter_pruning", "pruning_init": 0.0,
                "params": {"schedule": "exponential", "pruning_target": target,
                           "pruning_steps": max(1, epochs - 1)}}  # fmt: skip
    return {"input_info": {"sample_size": list(sample_size)}, "compression": algo}


def with_switches(config: dict[str, Any], switches: dict[str, bool]) -> dict[str, Any]:
    """A copy of ``config`` with the given ``filter_pruning`` params set (the command
    line's ``--prune-first-conv`` and ``--prune-downsample-convs``)."""
    data = json.loads(json.dumps(dict(config)))
    on = {k: True for k, v in switches.items() if v}
    if on:
        section = data.get("compression", [])
        for algo in section if isinstance(section, list) else [section]:
            if algo.get("algorithm") == "filter_pruning":
                algo.setdefault("params", {}).update(on)
    return data


def load_config(path: str | None, sample_size: list[int] | None, fallback: list[int],
                level: float | None = None, epochs: int | None = None) -> Any:  # fmt: skip
    """The validated config of ``--config`` (or the default one) with ``--input-size``.

    Args:
        path: The ``--config`` file, or None for :func:`default_config`.
        sample_size: ``--input-size``; overrides the config's ``input_info``.
        fallback: The sample size when neither gives one (from the model or data).
    """
    from .core.config import Config

    if path:
        config = Config.from_json(path)
        if sample_size or "input_info" not in config:
            config["input_info"] = {"sample_size": sample_size or fallback}
        return config
    return Config.from_dict(default_config(sample_size or fallback, level, epochs))
