"""What the zoo benchmarks share: one subprocess per model, result tables.

A run is resumable: each finished row goes at once into ``results/<stem>.progress.json``
(written atomically), and a run started again skips the models found there. The progress
file is removed once the final tables are written; delete it to start over.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from filterprune._atomic import atomic_write, atomic_write_text

RESULTS = Path(__file__).parent / "results"
FLOAT64_NOTE = (
    "float64: for a model whose float32 rounding alone exceeds 1e-4 (its own float32 output "
    "that far from its float64 one), the comparisons made again in float64: stripped == "
    "masked within 1e-9 (an exact cut leaves only rounding), ONNX Runtime no further from "
    "the float64 model than 4x PyTorch's own float32 run (`filterprune.testing.zoo`)."
)


def one_model_main(argv: list[str], run_one: Callable[[str], dict]) -> bool:
    """Handle ``--one NAME`` (the subprocess side): print the row. True if handled."""
    if argv[:1] != ["--one"]:
        return False
    import torch

    torch.set_num_threads(int(os.environ.get("ZOO_THREADS", 1)))
    print("RESULT " + json.dumps(run_one(argv[1])), flush=True)
    return True


def run_isolated(script: str, name: str) -> dict:
    """Run ``script --one name`` in a subprocess; a crash or a timeout is one failed row."""
    limit = int(os.environ.get("ZOO_TIMEOUT", 900))
    try:
        proc = subprocess.run([sys.executable, script, "--one", name], capture_output=True,
                              text=True, timeout=limit)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"model": name, "ok": False, "reason": f"timeout ({limit}s)"}
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if line:
        return json.loads(line[-1][7:])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": name, "ok": False, "reason": tail[:500]}


def run_all(script: str, names: Iterable[str], extra: Callable[[str], dict] | None = None,
            progress: Path | None = None,
            on_row: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Every model in its own subprocess, printing one line per model as it ends.

    Args:
        progress: Where the rows finished so far are kept (JSON); models already there
            are not run again, so a killed run goes on where it stopped.
        on_row: Called with the rows so far after each model (to rewrite the tables).
    """
    done = {r["model"]: r for r in json.loads(progress.read_text())} if (
        progress and progress.exists()) else {}  # fmt: skip
    rows = []
    for name in names:
        if name in done:
            rows.append(done[name])
            continue
        start = time.time()
        row = {**(extra(name) if extra else {}), **run_isolated(script, name)}
        rows.append(row)
        done[name] = row
        if progress:
            atomic_write_text(progress, json.dumps(list(done.values()), indent=0) + "\n")
        if on_row:
            on_row(rows)
        print(f"{name:36} {'ok' if row.get('ok') else 'FAIL'} {row.get('flops_kept', '')} "
              f"{time.time() - start:.0f}s {row.get('reason', '')}", flush=True)  # fmt: skip
    return rows


def run_tables(script: str, names: list[str], stem: str, write: Callable[[list[dict]], None],
               extra: Callable[[str], dict] | None = None) -> None:
    """Run ``names`` (resuming from ``<stem>.progress.json``), rewriting the tables with
    ``write(rows)`` after each model; the progress file goes once they are complete."""
    progress = RESULTS / f"{stem}.progress.json"
    write(run_all(script, names, extra=extra, progress=progress, on_row=write))
    progress.unlink(missing_ok=True)


def merged_rows(stem: str) -> list[dict]:
    """The rows of ``<stem>.csv`` with those of ``<stem>-partial.csv`` put in (by model)."""
    rows = {r["model"]: r for r in read_csv(RESULTS / f"{stem}.csv")}
    rows.update((r["model"], r) for r in read_csv(RESULTS / f"{stem}-partial.csv"))
    return list(rows.values())


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    """Write ``rows`` to ``path`` atomically (only ``fields``, in that order)."""
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text.getvalue(), newline=""))


def read_csv(path: Path) -> list[dict]:
    """Rows as written by :func:`write_csv` (``ok`` a bool, ``flops_kept`` a float)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["ok"] = r["ok"] == "True"
        r["flops_kept"] = float(r["flops_kept"]) if r.get("flops_kept") else ""
    return rows


def markdown_table(rows: list[dict], fields: list[str]) -> list[str]:
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    for r in rows:
        cells = [str(r.get(k, "")).replace("|", "/") for k in fields]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
