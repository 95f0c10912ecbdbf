"""The charts of ``analyze --plot`` and of the run report, as PNG bytes (matplotlib).

Each function takes plain numbers (no framework objects) and returns the encoded
image, so the report can inline it as a data URI and the CLI can write it atomically.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from ..cli_common import UsageError

__all__ = ["levels_chart", "layer_share_chart", "filters_kept_chart", "training_chart",
           "pruning_chart"]  # fmt: skip

BLUE, GREY, ORANGE = "#3b7dd8", "#c8c8c8", "#e8892b"


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("Charts need matplotlib, which is not installed: "
                         "pip install matplotlib.") from None
    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def levels_chart(levels: Sequence[dict[str, Any]], chosen: float | None, axis_label: str,
                 ax: Any = None) -> bytes | None:  # fmt: skip
    """FLOPs and parameters kept against the pruning level (``analyze``'s sweep)."""
    plt = _pyplot()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    ok = [r for r in levels if r.get("flops_kept") is not None]
    ax.plot([r["level"] for r in ok], [r["flops_kept"] for r in ok], "o-", color=BLUE,
            label="FLOPs kept")  # fmt: skip
    ax.plot([r["level"] for r in ok], [r["params_kept"] for r in ok], "s--", color=ORANGE,
            label="parameters kept")  # fmt: skip
    if chosen is not None:
        ax.axvline(chosen, color="#888888", linestyle=":", label=f"level {chosen:g}")
    ax.set_xlabel(axis_label)
    ax.set_ylabel("fraction kept")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title("What each level leaves")
    return _png(fig) if fig is not None else None


def layer_share_chart(shares: Sequence[tuple[str, float, bool]], top: int = 60,
                      ax: Any = None) -> bytes | None:  # fmt: skip
    """Each layer's share of the model's FLOPs, in model order; prunable layers in colour.

    Beyond ``top`` layers, the largest ``top`` are shown and the rest summed in one bar.
    """
    plt = _pyplot()
    largest = {s[0] for s in sorted(shares, key=lambda s: -s[1])[:top]}
    shown = [s for s in shares if s[0] in largest]
    rest = [s for s in shares if s[0] not in largest]
    if rest:
        shown.append((f"{len(rest)} other layers", sum(s[1] for s in rest), False))
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, _bars_height(len(shown))))
    names = [s[0] for s in shown]
    ax.barh(range(len(shown)), [100 * s[1] for s in shown],
            color=[BLUE if s[2] else GREY for s in shown])  # fmt: skip
    ax.set_yticks(range(len(shown)), names)
    ax.invert_yaxis()
    ax.set_xlabel("% of the model's FLOPs (blue: pruning can shrink it, grey: kept whole)")
    ax.set_title("Each layer's share of the FLOPs")
    ax.tick_params(axis="y", labelsize=7 if len(shown) > 30 else 8)
    return _png(fig) if fig is not None else None


def _bars_height(rows: int) -> float:
    return max(4.5, 0.17 * rows + 1.5)


def analysis_chart(levels: Sequence[dict[str, Any]], chosen: float | None, axis_label: str,
                   shares: Sequence[tuple[str, float, bool]]) -> bytes:  # fmt: skip
    """``analyze --plot``: the level sweep beside each layer's FLOPs share."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, _bars_height(min(len(shares), 61))),
                                      gridspec_kw={"width_ratios": [1, 1.2]})  # fmt: skip
    levels_chart(levels, chosen, axis_label, ax=left)
    layer_share_chart(shares, ax=right)
    return _png(fig)


def filters_kept_chart(layers: Sequence[tuple[str, int, int]], title: str) -> bytes:
    """Horizontal bars per prunable layer: all filters in grey, kept ones in colour."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(layers) + 1.5))
    names = [name for name, _, _ in layers]
    ax.barh(names, [n for _, n, _ in layers], color=GREY, label="pruned")
    ax.barh(names, [k for _, _, k in layers], color=BLUE, label="kept")
    ax.invert_yaxis()
    ax.set_xlabel("filters")
    ax.set_title(title)
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(loc="lower right")
    return _png(fig)


def _epoch_axis(ax: Any, label: str = "epoch") -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)


def training_chart(history: Sequence[dict[str, Any]]) -> bytes:
    """Accuracy (train, validation) and training loss per epoch."""
    plt = _pyplot()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [h["epoch"] for h in history]
    trained = [h for h in history if h.get("train_loss") is not None]
    acc_ax.plot(epochs, [h["val_accuracy"] for h in history], "o-", color=BLUE,
                label="validation")  # fmt: skip
    acc_ax.plot([h["epoch"] for h in trained], [h["train_accuracy"] for h in trained], "s--",
                color=ORANGE, label="training")  # fmt: skip
    acc_ax.set_title("Accuracy")
    loss_ax.plot([h["epoch"] for h in trained], [h["train_loss"] for h in trained], "o-",
                 color=ORANGE, label="training")  # fmt: skip
    if any(h.get("val_loss") is not None for h in history):
        loss_ax.plot(epochs, [h.get("val_loss") for h in history], "s--", color=BLUE,
                     label="validation")  # fmt: skip
    loss_ax.set_title("Loss")
    for ax in (acc_ax, loss_ax):
        _epoch_axis(ax, "epoch (0: before fine-tuning)")
        ax.legend()
    return _png(fig)


def pruning_chart(history: Sequence[dict[str, Any]]) -> bytes:
    """Pruning level and FLOPs kept per epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    rows = [h for h in history if h.get("flops_kept") is not None]
    epochs = [h["epoch"] for h in rows]
    ax.plot(epochs, [h["level"] for h in rows], "o-", color=ORANGE, label="pruning level")
    ax.plot(epochs, [h["flops_kept"] for h in rows], "s-", color=BLUE, label="FLOPs kept")
    ax.plot(epochs, [h["params_kept"] for h in rows], "^--", color="#5aa469",
            label="parameters kept")  # fmt: skip
    ax.set_ylim(0, 1.05)
    _epoch_axis(ax)
    ax.set_title("Pruning per epoch")
    ax.legend(loc="lower left")
    return _png(fig)
