"""``results.md`` and one accuracy-vs-FLOPs plot per model and budget, from ``results.jsonl``."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from contenders import OURS, PEERS, REFERENCE
from paired import paired_table

HEADER = """# Accuracy benchmark results (Fashion-MNIST)

Produced by `benchmarks/accuracy/run.py`; every number below is measured (rows of
`results.jsonl`). Budget `full` is the issue's (6 baseline + 4 fine-tuning epochs on 55k
images); `smoke-...` rows are reduced checks (epochs, training and test images in the
tag) and say nothing about the full-budget ranking. FLOPs and parameters are counted by
one forward-hook counter on the physically pruned model. `fine-tune s` is the wall time
as measured, under whatever else the machine ran then: compare it only between rows run
side by side (`benchmarks/accuracy/walltime.py` measures it that way).

Ours (`benchmarks/accuracy/contenders.py`):

- `ours-default`: the seed's defaults (geometric median, exponential schedule, two steps,
  kept counts in multiples of 8, blocks of 8 allocated across groups). Since 2026-12-05 the
  allocation divides each group's scores by their mean and counts double a block that takes
  a group past the uniform level reaching the target. Rows of the committed grid (baseline
  0.9243; `ours-oneshot`'s too) ran the allocation before (scores divided by their
  largest, blocks as they score), which the shipped-baseline grid keeps as
  `ours-default-maxnorm` (commit fc1b6ec), run beside the new rows.
- `ours-best`: the committed recipe `fmnist_recipe.json`: masks chosen once before
  fine-tuning by `coupled_L2` (a channel scored by its filters, the scale and shift of
  its BatchNorm and its readers' input columns, each tensor's share relative to that
  tensor's mean), no rounding of kept counts (one uniform level, the one just short of
  the target topped up channel by channel, least important first), the model shrunk at
  once so all of fine-tuning runs at pruned cost. Its rows were run as `ours-coupled`
  and renamed when it became the recipe (`renamed_from` in `results.jsonl`).
- `ours-l2`: the same scored by the filters' L2 norm, the recipe before (its rows were
  `ours-best`'s). Rows finished before 2026-12-02 10:00 also re-estimated BatchNorm at
  the cut (2,048 images); the recipe dropped it because training-mode BatchNorm
  normalizes by the batch and four epochs of running averages forget the start: rerun
  without it, seed 0 at 50% ended at the same validation and test accuracy (0.9302,
  0.9251).
- `ours-best-kd`: `ours-best` plus softmax distillation from the dense model at T=4
  (scale 1).
- `ours-best-cl`: `ours-best` with the cut model laid out channels last
  (`shrunk_memory_format`), which trains its convs faster on this CPU; the same numbers
  up to float rounding.
- `ours-best-cl-refit`: `ours-best-cl` with the kept weights refit at the cut by least
  squares to the dense model's layer outputs (`reconstruction_after_mask_change`, 512
  training images): 0.92 validation accuracy before fine-tuning instead of 0.10.
- `ours-best-cl-refit-kd`: `ours-best-cl-refit` plus softmax distillation from the dense
  model at T=4 (scale 1): does a teacher add to a cut that starts at the baseline's
  accuracy?
- `ours-oneshot`: `ours-l2` with kept counts in multiples of 8 (groups take their own
  levels); `-kd`: plus softmax distillation from the dense model at T=4; `-kd-m1`:
  `ours-l2` plus that distillation; `-m1-inner`: no rounding and the residual stream whole (the
  first conv and the 1x1 shortcut convs in `ignored_scopes`), only the blocks' inner
  channels cut; `ours-legr`: `ours-l2` with levels from a LeGR search (60 candidates, each
  trained 20 steps and scored on 1,000 validation images; the search's seconds are the
  row's `init_seconds`, not in its fine-tune seconds).
- Rows measured before the top-up: `-m1-level` (the smallest uniform level that removes
  enough: 0.527 removed at a 0.5 target) and `ours-taylor-kd-2step` (the recipe committed
  before: Taylor importance, two steps, BN re-estimation after each mask change, shrink
  when frozen, softmax distillation at T=4).

The peers run in their own venvs (`benchmarks/accuracy/peers/`, exact pins, torch 2.14.1)
with the same baseline, data, data order, optimizer, learning-rate schedule and
fine-tuning loop as ours. How each reaches the target and how its FLOPs are counted:

- `nncf-*`: `ours-default`'s entries run by NNCF (`nncf-global` with `all_weights`). NNCF
  only zeroes pruned filters (it cuts them when exporting to OpenVINO IR), so these rows
  count the model that removing its zeroed channels would leave (the same counter, on
  live channels only); NNCF's own count is in each row's `flops_kept_nncf`. NNCF keeps a
  multiple of 8 filters per group, so the per-group (uniform) level jumps: on ResNet-20 a
  target of 0.5 removes about 75% of the FLOPs. Read these rows by FLOPs kept.
- `tp-*`: the per-layer channel ratio is found by bisection so that the kept FLOPs lie
  within 0.02 of `1 - target`; `tp-iterative` prunes in two steps, at the start of the
  first two fine-tuning epochs, and restarts the optimizer's momentum after each;
  `tp-oneshot` cuts at the start of the first (rows finished before 2026-12-02 10:00 cut
  before the fine-tuning clock started: about 0.2 s, and the same training). One ratio
  moves every layer at once, so the kept FLOPs move in steps: at 0.7 on ResNet-20 the
  nearest keeps 0.3173 (the next 0.2764), short of the target. Ours is also run at that
  step, target 0.6826, which lands on the very same widths (9/18/36 channels): those rows
  differ from `tp-oneshot`'s at 0.7 only in which channels are cut. (Rows at 0.6827 asked
  for 0.3173 or less, one channel of the last stage fewer: 0.3120 kept.)
- `modelopt-fastnas`: channel counts in multiples of 8 (FastNAS's default of 32 leaves
  ResNet-20 nothing to prune), candidates scored on 1,000 validation images.

`dense-finetune` is a reference, not a contender: the dense baseline given the same
fine-tuning, nothing pruned (target 0.0, drawn as a black star). The baseline is trained
for 6 epochs only, so every row gains from the 4 more; this row shows how much.
"""

PAIRED = """## Ours-best against each peer, seed by seed

A seed fixes the data order and augmentation, the same for every contender, so the
difference on one seed cancels what the seed alone moves. Below: `ours-best` (and
`ours-best-cl`, `ours-best-cl-refit` and `ours-best-cl-refit-kd`, where they ran) minus the
peer in test-accuracy points on each seed both ran at that target (each variant also
minus the one it adds to), their mean with a 95% Student-t interval, and the verdict:
*ahead* or *behind* where the whole interval is on one side of zero, else *within seed
noise* (`benchmarks/accuracy/paired.py`). A peer
is compared at the same target, and also at another target where both kept the same
FLOPs (Torch-Pruning stops at 0.3173 kept for a 0.7 target; ours run at 0.6826 lands on
the very same widths)."""


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} (n={len(values)})"


def read_rows(results: Path) -> list[dict]:
    """The rows of ``results`` (none when the file does not exist yet)."""
    if not results.exists():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def write_report(results: Path, out: Path) -> None:
    rows = read_rows(results)
    groups = defaultdict(list)
    for r in rows:
        groups[(r["budget"], r["model"], r["target"], r["contender"])].append(r)
    lines = [HEADER, "| budget | model | FLOPs removed (target) | contender | test accuracy "
             "| baseline | FLOPs kept | params kept | fine-tune s |", "|---" * 9 + "|"]
    for (budget, model, target, contender), rs in sorted(groups.items()):
        lines.append(
            f"| {budget} | {model} | {target} | {contender} | {_fmt([r['test'] for r in rs])} "
            f"| {rs[0]['baseline_test']:.4f} | {_fmt([r['flops_kept'] for r in rs])} "
            f"| {_fmt([r['params_kept'] for r in rs])} "
            f"| {statistics.mean(r['finetune_seconds'] for r in rs):.0f} |")  # fmt: skip
    lines += ["", PAIRED]
    # the recipe, its variants, and the refit with a teacher (also against it without one)
    for ours, others in (("ours-best", [*PEERS]), ("ours-best-cl", [*PEERS]),
                         ("ours-best-cl-refit", [*PEERS, "ours-best-cl"]),
                         ("ours-best-cl-refit-kd", [*PEERS, "ours-best-cl-refit"])):
        table = paired_table(rows, ours, others)
        if len(table) > 2:  # a header only: no pair ran
            lines += ["", f"`{ours}` minus the peer:", "", *table]
    budgets = sorted({k[0] for k in groups})
    lines += ["", f"Budgets with rows: {', '.join(budgets) or 'none'}"
              + ("" if "full" in budgets else "; the full budget has no row yet") + "."]
    measured = {k[3] for k in groups}
    missing = [c for c in (*OURS, *PEERS, *REFERENCE) if c not in measured]
    lines += ["", "Not measured (no row yet): " + (", ".join(
        f"{c} ({PEERS[c]})" if c in PEERS else c for c in missing) or "none") + "."]  # fmt: skip
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plots(groups, out)


def _plots(groups, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    by_plot = defaultdict(dict)
    for (budget, model, _, contender), rs in groups.items():
        by_plot[(budget, model)].setdefault(contender, []).append(rs)
    colours = plt.get_cmap("tab20").colors
    main = ("ours-best", "ours-l2", "ours-default", *PEERS)  # strong hues; variants pale
    for (budget, model), series in by_plot.items():
        fig, ax = plt.subplots(figsize=(8, 4.5))
        order = sorted(series.items(), key=lambda item: (item[0] not in main, item[0]))
        for i, (contender, runs) in enumerate(order):
            # one point per target: mean over seeds, the seeds' spread as an error bar
            pts = sorted((statistics.mean(r["flops_kept"] for r in rs),
                          statistics.mean(r["test"] for r in rs),
                          statistics.stdev(r["test"] for r in rs) if len(rs) > 1 else 0.0)
                         for rs in runs)  # fmt: skip
            xs, ys, err = zip(*pts, strict=True)
            if contender in REFERENCE:
                ax.errorbar(xs, ys, yerr=err, fmt="*", markersize=12, color="black",
                            capsize=3, label=contender)  # fmt: skip
                continue
            peer = contender in PEERS
            ax.errorbar(xs, ys, yerr=err, fmt="s--" if peer else "o-", capsize=3,
                        color=colours[(2 * i) % 20 + (i // 10) % 2],  # ten hues, then pale
                        label=contender)  # fmt: skip
        base = next(iter(next(iter(series.values()))))[0]["baseline_test"]
        ax.axhline(base, color="grey", linestyle=":", label="dense baseline")
        ax.set_xlabel("FLOPs kept (lower: smaller model)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{model} ({budget}): ours solid, peers dashed")
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"plot-{model}-{budget}.png", dpi=100)
        plt.close(fig)
