"""Prune every keras.applications model: create, strip, compare, reload as ``.keras``.

One subprocess per model, so a crash or a timeout is one row. Writes
``benchmarks/results/keras_zoo.csv`` and ``keras_zoo.md``.

    python benchmarks/keras_zoo.py                        # every model
    python benchmarks/keras_zoo.py ResNet50 MobileNetV2   # some
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SIZES = (32, 64, 75, 96, 128, 160, 224, 299, 331)
FIELDS = ["model", "ok", "input", "layers", "flops_kept", "params_kept", "analysis_s",
          "max_rel_diff", "reload_rel_diff", "unpruned_groups", "reason"]  # fmt: skip
_SKIP = {"imagenet_utils"}


def list_models() -> list[str]:
    import keras

    apps = keras.applications
    return sorted(n for n in dir(apps) if n[0].isupper() and callable(getattr(apps, n))
                  and n not in _SKIP)  # fmt: skip


def _build(name: str):
    import keras

    ctor = getattr(keras.applications, name)
    last = None
    for s in SIZES:
        try:
            # logits (no softmax), so the comparison is not flattened by a saturated softmax
            return ctor(weights=None, input_shape=(s, s, 3), classifier_activation=None), s
        except Exception as err:  # noqa: BLE001 - too small for this model, try the next size
            last = err
    raise RuntimeError(f"no input size in {SIZES} builds {name}: {last}")


def run_one(name: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    from filterprune import NNCFConfig
    from filterprune.core.analysis import analyze
    from filterprune.tensorflow import create_compressed_model
    from filterprune.tensorflow.capture import capture

    tf.config.threading.set_intra_op_parallelism_threads(1)
    keras.utils.set_random_seed(0)
    model, size = _build(name)
    rng = np.random.default_rng(0)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):  # real-scale statistics
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.0, n).astype("float32"))
    sample = [1, size, size, 3]
    t0 = time.perf_counter()
    analyze(capture(model, [sample]).graph)
    analysis_s = time.perf_counter() - t0
    config = NNCFConfig.from_dict({
        "input_info": {"sample_size": sample},
        "compression": {"algorithm": "filter_pruning", "pruning_init": 0.5,
                        "params": {"schedule": "baseline", "prune_first_conv": True,
                                   "prune_downsample_convs": True}},
    })  # fmt: skip
    ctrl, model = create_compressed_model(model, config)
    stats = ctrl.statistics()
    pixels = any(isinstance(layer, keras.layers.Rescaling) for layer in model.layers)
    shape = (2, size, size, 3)
    x = (rng.uniform(0, 255, shape) if pixels else rng.uniform(-1, 1, shape)).astype("float32")
    ref = model(x, training=False).numpy()
    small = ctrl.strip()
    out = small(x, training=False).numpy()
    scale = float(np.abs(ref).max()) or 1.0
    rel = float(np.abs(ref - out).max()) / scale
    path = RESULTS / f".{name}.keras"
    small.save(path)
    reloaded = keras.models.load_model(path)  # stock layers only: no custom_objects
    path.unlink()
    back = reloaded(x, training=False).numpy()
    reload_rel = float(np.abs(back - out).max()) / (float(np.abs(out).max()) or 1.0)
    width_ok = out.shape == ref.shape
    ok = rel <= 1e-4 and reload_rel <= 1e-5 and width_ok and stats.flops_kept < 1.0
    reason = "" if ok else f"rel={rel:.1e} reload={reload_rel:.1e} width_ok={width_ok}"
    if stats.flops_kept >= 1.0:
        reason += " nothing pruned"
    return {
        "model": name, "ok": ok, "input": size, "layers": len(model.layers),
        "flops_kept": round(stats.flops_kept, 3), "params_kept": round(stats.params_kept, 3),
        "analysis_s": round(analysis_s, 2), "max_rel_diff": f"{rel:.1e}",
        "reload_rel_diff": f"{reload_rel:.1e}", "unpruned_groups": len(stats.unpruned),
        "reason": reason.strip(),
    }  # fmt: skip


def main(argv: list[str]) -> None:
    if argv[:1] == ["--one"]:
        print("RESULT " + json.dumps(run_one(argv[1])))
        return
    names = argv or list_models()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        start = time.time()
        try:
            timeout = int(os.environ.get("ZOO_TIMEOUT", 900))
            proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True,
                                  text=True, timeout=timeout)  # fmt: skip
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if line:
                row = json.loads(line[-1][7:])
            else:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                row = {"model": name, "ok": False, "reason": tail[:160]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "ok": False, "reason": "timeout"}
        row["seconds"] = round(time.time() - start)
        rows.append(row)
        print(f"{name:24} {'ok' if row['ok'] else 'FAIL'} {row.get('flops_kept', '')} "
              f"{row['seconds']}s {row.get('reason', '')}", flush=True)  # fmt: skip
    write(rows, partial=bool(argv))


def write(rows: list[dict], partial: bool) -> None:
    import keras
    import tensorflow as tf

    stem = "keras_zoo-partial" if partial else "keras_zoo"
    fields = FIELDS + ["seconds"]
    with open(RESULTS / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    ok = [r for r in rows if r["ok"]]
    over30 = [r for r in ok if r["flops_kept"] <= 0.7]
    lines = [
        "# keras.applications zoo: filter_pruning level 0.5 (baseline), first/downsample convs on",
        "",
        f"{len(ok)}/{len(rows)} models pass (strip == masked within 1e-4 relative, stripped model "
        "saved as .keras and reloaded without custom objects == stripped, output width "
        f"unchanged, FLOPs removed); {len(over30)} remove more than 30% of FLOPs.",
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}; weights=None, "
        "classifier_activation=None (logits), random BN statistics, inference mode, batch 2 "
        "(pixels in [0, 255] for models that rescale, else [-1, 1]), smallest accepted square "
        "input; "
        "analysis = graph capture + grouping; seconds = whole subprocess.",
        "",
        "| " + " | ".join(fields) + " |",
        "|" + "---|" * len(fields),
    ]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k in fields) + " |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
