"""The report's content as a list of blocks, rendered to HTML or Markdown.

Blocks are tuples: ``("h2", text)``, ``("p", text)``, ``("table", header, rows)``,
``("img", chart name, alt text)``, ``("pre", text)``. :func:`blocks` decides what the
report says; the two renderers only decide how it looks.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

__all__ = ["blocks", "render_html", "render_markdown"]

Block = tuple


def _size(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _ratio(before: float | None, after: float | None, text: str = "{:.3f}x") -> str:
    return text.format(after / before) if before and after is not None else ""


def _before_after(summary: dict[str, Any]) -> Block:
    acc, params, flops = summary["accuracy"], summary["params"], summary.get("flops")
    rows = [["accuracy (validation)", f"{acc[0]:.4f}", f"{acc[1]:.4f}",
             f"{acc[1] - acc[0]:+.4f}"]]  # fmt: skip
    if flops:
        rows.append(["FLOPs per image (conv/linear)", f"{flops[0] / 1e6:,.2f}M",
                     f"{flops[1] / 1e6:,.2f}M", _ratio(*flops)])  # fmt: skip
    if params[0]:
        rows.append(["parameters", f"{params[0]:,}", f"{params[1]:,}", _ratio(*params)])
    size = summary.get("onnx_bytes") or [None, None]
    rows.append(["ONNX file size", _size(size[0]), _size(size[1]), _ratio(*size)])
    lat = summary.get("latency")
    if lat:
        threads = f"{lat['threads']} thread{'s' if lat['threads'] > 1 else ''}"
        rows.append([f"latency (onnxruntime{precision_label(lat)}, CPU, batch 1, {threads}; "
                     "median)",
                     f"{lat['before_ms']:.3f} ms", f"{lat['after_ms']:.3f} ms",
                     _speed(lat["before_ms"], lat["after_ms"])])  # fmt: skip
    return ("table", ["", "before (dense)", "after (pruned)", "change"], rows)


def precision_label(latency: dict[str, Any]) -> str:
    """`` f32``, or `` f32 -> int8`` where the two models run at different precisions (the
    change is then not the cut's alone); empty for a summary written before it was kept."""
    before, after = latency.get("precision") or ("", "")
    if not before:
        return ""
    return f" {before}" if before == after else f" {before} -> {after}"


def _speed(before: float, after: float) -> str:
    """``1.25x faster``, or ``1.11x slower`` (not ``0.90x faster``)."""
    ratio = before / after
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def _epochs_table(history: list[dict[str, Any]]) -> Block:
    def num(v: Any, fmt: str = "{:.4f}") -> str:
        return "" if v is None else fmt.format(v)

    rows = [[str(h["epoch"]), num(h.get("train_loss")), num(h.get("train_accuracy")),
             num(h.get("val_accuracy")), num(h.get("level"), "{:.3f}"),
             num(h.get("flops_kept"), "{:.3f}"), num(h.get("params_kept"), "{:.3f}"),
             num(h.get("lr"), "{:.2e}")] for h in history]  # fmt: skip
    header = ["epoch", "train loss", "train acc", "val acc", "level", "FLOPs kept",
              "params kept", "lr"]  # fmt: skip
    return ("table", header, rows)


def _settings(run: dict[str, Any], history: list[dict[str, Any]]) -> Block:
    s = run["settings"]
    keys = ["model", "data", "epochs", "optimizer", "lr", "weight_decay", "batch_size", "device",
            "seed", "weights", "train_limit", "val_limit"]  # fmt: skip
    rows = [[k, "default" if s.get(k) is None else str(s[k])] for k in keys if k in s]
    used = next((h["lr"] for h in history if h.get("lr")), None)  # the first epoch's
    for row in rows:
        if row == ["lr", "default"] and used is not None:
            row[1] = f"{used:.2e} (the optimizer's default)"
    return ("table", ["setting", "value"], rows)


def blocks(data: dict[str, Any], charts: list[str], name: str) -> tuple[str, list[Block]]:
    """``(title, blocks)`` of the report of a run folder's data."""
    run, history, summary = data["run"], data["history"], data["summary"]
    s = run["settings"]
    done = max([h["epoch"] for h in history] or [0])
    title = f"filterprune: {s['model']} pruned on {s['data']}"
    status = ("finished " + run.get("finished", "") if summary else
              f"in progress: {done} of {s['epochs']} epochs done")  # fmt: skip
    out: list[Block] = [("p", f"Run folder {name}, started {run.get('started', '?')}, {status}. "
                              f"Algorithms: {', '.join(_algorithms(run, summary))}.")]
    if summary:
        out += [("h2", "Before and after"), _before_after(summary)]
        out += [("p", note) for note in summary.get("notes", [])]
    if history:
        out += [("h2", "Training"), ("img", "training", "accuracy and loss per epoch")]
        if "pruning" in charts:
            out.append(("img", "pruning", "pruning level and FLOPs kept per epoch"))
        out.append(_epochs_table(history))
    if summary and "layers" in charts:
        out += [("h2", "Filters kept per layer"), ("img", "layers", "filters kept per layer")]
    if summary and summary.get("unpruned"):
        out.append(("h2", "Left unpruned, and why"))
        rows = [[", ".join(p[:3]) + (" ..." if len(p) > 3 else ""), why]
                for p, why in summary["unpruned"]]  # fmt: skip
        out.append(("table", ["layers", "reason"], rows))
    out += [("h2", "Config"), ("pre", json.dumps(run["config"], indent=2)),
            ("h2", "Settings"), _settings(run, history)]  # fmt: skip
    if summary:
        quantized = "quantization" in (summary.get("algorithms") or [])
        stripped = ("state_dict of the stripped model with its quantizers, which "
                    "resize_to_state_dict does not load: the code below rebuilds the model from "
                    "checkpoint.pt" if quantized else "state_dict with the pruned filters "
                    "removed")  # fmt: skip
        out += [("h2", "How to load the result"),
                ("p", f"The files are in the run folder {name}: model_stripped.pt ({stripped}), "
                      "model.onnx (ONNX, filters removed), model_zeroed.onnx (ONNX, original "
                      "shapes, pruned filters zero)."),
                ("pre", summary["load"])]  # fmt: skip
    return title, out


def _algorithms(run: dict[str, Any], summary: dict[str, Any] | None) -> list[str]:
    if summary and summary.get("algorithms"):
        return summary["algorithms"]
    section = run["config"].get("compression", [])
    return [a["algorithm"] for a in (section if isinstance(section, list) else [section])]


# -- HTML ----------------------------------------------------------------------------------
_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 1000px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f5f8; }
img { max-width: 100%; display: block; margin: 0.8em 0; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 13px; }
"""


def _html_block(block: Block, images: dict[str, bytes]) -> str:
    kind, esc = block[0], html.escape
    if kind in ("h2", "p"):
        return f"<{kind}>{esc(block[1])}</{kind}>"
    if kind == "pre":
        return f"<pre>{esc(block[1])}</pre>"
    if kind == "img":
        data = base64.b64encode(images[block[1]]).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{esc(block[2])}">'
    head = "".join(f"<th>{esc(h)}</th>" for h in block[1])
    rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                   for row in block[2])  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def render_html(data: dict[str, Any], images: dict[str, bytes], name: str) -> str:
    """One self-contained page: inline CSS, charts as data URIs, no script."""
    title, body = blocks(data, list(images), name)
    parts = "\n".join(_html_block(b, images) for b in body)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n"
            '<link rel="icon" href="data:,">\n'
            f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            f"{parts}\n</body>\n</html>\n")  # fmt: skip


# -- Markdown ------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_block(block: Block) -> str:
    kind = block[0]
    if kind == "h2":
        return f"## {block[1]}"
    if kind == "p":
        return block[1]
    if kind == "pre":
        return f"```\n{block[1]}\n```"
    if kind == "img":
        return f"![{block[2]}](report_files/{block[1]}.png)"
    lines = ["| " + " | ".join(map(_md_cell, block[1])) + " |",
             "|" + "---|" * len(block[1])]  # fmt: skip
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block[2]]
    return "\n".join(lines)


def render_markdown(data: dict[str, Any], charts: list[str], name: str) -> str:
    """The same report in Markdown; charts are the PNG files in ``report_files/``."""
    title, body = blocks(data, charts, name)
    return f"# {title}\n\n" + "\n\n".join(_md_block(b) for b in body) + "\n"
