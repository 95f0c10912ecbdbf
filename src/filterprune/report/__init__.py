"""The report of a fine-tuning run: one self-contained HTML page, and Markdown.

``filterprune report RUN_DIR`` (and the end of ``filterprune prune --data``) reads the
run folder's ``run.json``, ``history.json`` and ``summary.json`` and writes
``report.html`` (charts inlined as data URIs: the page needs no other file and no
network) and ``report.md`` (charts as PNG files in ``report_files/``). Nothing here
imports a deep learning framework; an unfinished run gets a report of its epochs so far.

Example:
    >>> html_path, md_path = write_report("runs/resnet18")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_bytes, atomic_write_text
from ..cli_common import UsageError
from . import charts
from .page import render_html, render_markdown

__all__ = ["write_report", "read_run_folder"]


def _read(path: Path, required: bool) -> Any:
    if not path.is_file():
        if required:
            raise UsageError(f"{path.parent} is not a run folder: {path.name} is missing. Give "
                             "the --out folder of a `filterprune prune --data ...` run.")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"{path} cannot be read ({err}).") from None


def read_run_folder(folder: str | Path) -> dict[str, Any]:
    """``run``, ``history`` and ``summary`` (None until the run finishes) of a run folder."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"RUN_DIR {folder} is not a folder. Give the --out folder of a "
                         "`filterprune prune --data ...` run.")
    return {"run": _read(root / "run.json", True),
            "history": _read(root / "history.json", False) or [],
            "summary": _read(root / "summary.json", False)}  # fmt: skip


def _charts(data: dict[str, Any]) -> dict[str, bytes]:
    """Chart name -> PNG bytes, for the charts the run's data allows."""
    history, summary = data["history"], data["summary"]
    out = {}
    if history:
        out["training"] = charts.training_chart(history)
    if any(h.get("flops_kept") is not None for h in history):
        out["pruning"] = charts.pruning_chart(history)
    if summary and summary.get("layers"):
        layers = [tuple(x) for x in summary["layers"]]
        kept = sum(k for _, _, k in layers) / max(sum(n for _, n, _ in layers), 1)
        out["layers"] = charts.filters_kept_chart(
            layers, f"Filters kept per prunable layer ({kept:.0%} of them in all)")
    return out


def write_report(folder: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` (with ``report_files/*.png``) in ``folder``.

    Returns:
        The paths of the HTML page and of the Markdown file.

    Raises:
        UsageError: ``folder`` is not a run folder.
    """
    root = Path(folder)
    data = read_run_folder(root)
    images = _charts(data)
    for name, png in images.items():
        atomic_write_bytes(root / "report_files" / f"{name}.png", png)
    html_path, md_path = root / "report.html", root / "report.md"
    atomic_write_text(html_path, render_html(data, images, root.name))
    atomic_write_text(md_path, render_markdown(data, sorted(images), root.name))
    return html_path, md_path
