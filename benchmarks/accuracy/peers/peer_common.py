"""The peer runners' protocol: their arguments, the baseline they start from and the
``RESULT`` line they print. (The data, fine-tuning and measuring are the harness's.)

``contenders.py`` runs a peer's runner with the peer's venv python (filterprune is not
installed there):

    run_<peer>.py CONTENDER MODEL TARGET SEED --budget JSON --baseline STATE_DICT

The runner prints one line ``RESULT {json}`` with the row's numbers (``val``, ``test``,
``finetune_seconds``, ``flops_params`` from :func:`harness.count_flops`) and whatever
notes the peer needs; everything else it prints is a log. A runner imports this module
before ``harness``: it puts the harness on ``sys.path``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE.parent))
# The harness imports two numpy/torch-only modules of filterprune, which the peer venvs do
# not have: a bare package object lets them load from src/ without running
# filterprune/__init__ (and needing its dependencies).
if importlib.util.find_spec("filterprune") is None:
    _package = types.ModuleType("filterprune")
    _package.__path__ = [str(ROOT / "src" / "filterprune")]
    sys.modules["filterprune"] = _package

import torch  # noqa: E402
from harness import MODELS, Budget  # noqa: E402

RESULT_PREFIX = "RESULT "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The runner's arguments; ``budget`` comes back as a :class:`harness.Budget`."""
    parser = argparse.ArgumentParser(description="Run one peer contender of the benchmark.")
    parser.add_argument("contender")
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("target", type=float, help="fraction of FLOPs to remove")
    parser.add_argument("seed", type=int)
    parser.add_argument("--budget", required=True, help="the Budget's fields as JSON")
    parser.add_argument("--baseline", required=True, type=Path, help="baseline state dict")
    args = parser.parse_args(argv)
    args.budget = Budget(**json.loads(args.budget))
    return args


def runner_argv(contender: str, model: str, target: float, seed: int, budget: Budget,
                baseline: Path) -> list[str]:  # fmt: skip
    """The arguments :func:`parse_args` reads back, in order."""
    budget_json = json.dumps(dataclasses.asdict(budget))
    return [contender, model, repr(target), str(seed), "--budget", budget_json,
            "--baseline", str(baseline)]  # fmt: skip


def load_baseline(args: argparse.Namespace) -> torch.nn.Module:
    """The dense model with the cached baseline weights."""
    model = MODELS[args.model]()
    model.load_state_dict(torch.load(args.baseline))
    return model


def emit(row: dict) -> None:
    """Print the ``RESULT`` line ``contenders.py`` reads."""
    print(RESULT_PREFIX + json.dumps(row), flush=True)
