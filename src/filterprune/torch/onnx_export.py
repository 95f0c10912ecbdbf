"""Write a PyTorch model as ONNX: the current exporter first, the TorchScript one as fallback.

The current exporter (``torch.onnx.export(..., dynamo=True)``, which needs ``onnxscript``)
captures with torch.export and handles what the deprecated TorchScript exporter refuses
(``AdaptiveAvgPool2d(4)`` on a 7x7 map). Every file it writes is checked; one its graph
optimiser broke is written again without the optimiser. Where it fails (an op it has no
translation for), the TorchScript exporter writes the file; a log message says which one
ran, and ``exporter=`` forces one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._atomic import atomic_write

__all__ = ["export_onnx", "EXPORTERS"]

log = logging.getLogger("filterprune")

EXPORTERS = ("auto", "dynamo", "torchscript")
LEGACY_OPSET = 17


def export_onnx(model: nn.Module, sample: Sequence[torch.Tensor], path: str,
                input_names: list[str] | None = None, output_names: list[str] | None = None,
                exporter: str = "auto") -> str:  # fmt: skip
    """Write ``model`` run on ``sample`` as ONNX at ``path`` (atomically).

    Args:
        exporter: ``"auto"`` (the current exporter, falling back to the TorchScript one
            where it fails), ``"dynamo"`` or ``"torchscript"`` to force one.

    Returns:
        The exporter that wrote the file: ``"dynamo"`` or ``"torchscript"``.

    Raises:
        ValueError: For an unknown ``exporter``.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"`exporter` must be one of {list(EXPORTERS)}. "
                         f"Received: exporter={exporter!r}.")  # fmt: skip
    args = tuple(sample)
    names = {"input_names": input_names, "output_names": output_names}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention op has no ONNX form
    try:
        if exporter == "torchscript":
            return _write(path, lambda tmp: _legacy(model, args, tmp, names), "torchscript")
        try:
            return _write(path, lambda tmp: _dynamo(model, args, tmp, names), "dynamo")
        except Exception as err:  # noqa: BLE001 - any failure of the new exporter falls back
            if exporter == "dynamo":
                raise
            log.warning("The current ONNX exporter (dynamo=True) failed (%s); exporting with "
                        "the TorchScript exporter instead.", _short(err))  # fmt: skip
            return _write(path, lambda tmp: _legacy(model, args, tmp, names), "torchscript")
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _write(path: str, write, name: str) -> str:
    atomic_write(path, write, suffix=".onnx")
    log.info("Exported %s with the %s ONNX exporter.", path, name)
    return name


def _dynamo(model: nn.Module, args: tuple, tmp: str, names: dict[str, Any]) -> None:
    """The current exporter. Its graph optimiser has written graphs that read a value no
    node makes (timm's gemma4_vit); such a file is written again without the optimiser."""
    import onnx

    for optimize in (True, False):
        quiet = io.StringIO()  # the exporter prints its progress
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, tmp, dynamo=True, external_data=False, verbose=False,
                              optimize=optimize, **names)  # fmt: skip
        try:
            onnx.checker.check_model(tmp, full_check=True)
            return
        except onnx.checker.ValidationError as err:
            if not optimize:
                raise
            log.info("The optimised ONNX graph is invalid (%s); exporting it unoptimised.",
                     _short(err))  # fmt: skip


def _legacy(model: nn.Module, args: tuple, tmp: str, names: dict[str, Any]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, tmp, dynamo=False, opset_version=LEGACY_OPSET, **names)


def _short(err: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()  # no terminal colours
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"
