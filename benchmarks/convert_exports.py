"""The zero-filter converter on our own exports, against the in-memory ``strip()``.

Each model (random init) is pruned at level 0.5 (first and downsampling convs
allowed), exported masked with ``ctrl.export_model(...)``, converted, and compared
with the shrunk export (``shrink=True``): the weight shape of every
Conv/Gemm/MatMul, the outputs, and the FLOPs. Keras exports go through tf2onnx
with a dynamic batch; PyTorch exports have a fixed one, written with the current
exporter (``dynamo``, what ``export_model`` uses) or the TorchScript one (``--exporter``):
the converter must read both.

One subprocess per model. Writes ``benchmarks/results/{keras,torch}_convert.md`` and
``.json``; a run of some models updates their rows.

    python benchmarks/convert_exports.py keras                 # the keras.applications set
    python benchmarks/convert_exports.py torch                 # every torchvision classifier
    python benchmarks/convert_exports.py torch resnet18 vit_b_16
    python benchmarks/convert_exports.py torch --exporter torchscript resnet18
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from filterprune._atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"
KERAS_MODELS = ["ConvNeXtTiny", "DenseNet121", "EfficientNetB0", "EfficientNetV2B0",
                "InceptionV3", "InceptionResNetV2", "MobileNet", "MobileNetV2",
                "MobileNetV3Small", "NASNetMobile", "ResNet50", "VGG16", "Xception"]  # fmt: skip
PARAMS = {"schedule": "baseline", "prune_first_conv": True, "prune_downsample_convs": True}


def compare(masked: Path, small: Path, ref, x, ctrl) -> dict:
    """Convert ``masked``; its weights against ``small``'s, its outputs against ``ref``."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from filterprune.onnx import remove_zero_filters
    from filterprune.testing.convert import weight_shapes

    t = time.perf_counter()
    converted, report = remove_zero_filters(str(masked))
    seconds = time.perf_counter() - t
    sess = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    same = weight_shapes(converted) == weight_shapes(onnx.load(str(small)))
    scale = float(np.abs(ref).max()) or 1.0  # torchvision's ViT heads start at zero
    return {"same_weights": same, "rel_diff": float(np.abs(out - ref).max()) / scale,
            "flops_kept": report.flops_kept, "strip_flops_kept": ctrl.statistics().flops_kept,
            "kept_zero": sum(s.kept_zero for s in report.layers), "seconds": seconds}  # fmt: skip


def run_keras(name: str, folder: Path) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    from keras_zoo import _build

    from filterprune import NNCFConfig
    from filterprune.tensorflow import create_compressed_model

    model, size = _build(name)
    config = NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, size, size, 3]},
        "compression": {"algorithm": "filter_pruning", "pruning_init": 0.5, "params": PARAMS}})
    ctrl, model = create_compressed_model(model, config)
    ctrl.export_model(str(folder / "masked.onnx"))
    ctrl.export_model(str(folder / "small.onnx"), shrink=True)
    x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
    ref = model(x, training=False).numpy()
    row = compare(folder / "masked.onnx", folder / "small.onnx", ref, x, ctrl)
    return {"model": name, "input": size, **row}


def run_torch(name: str, exporter: str) -> dict:
    from filterprune.testing.zoo import smallest_input

    try:
        return _run_torch(name, exporter, smallest_input)
    except Exception:  # noqa: BLE001 - the exporter rejects some pool sizes at small inputs
        return _run_torch(name, exporter, lambda model: 224)


def _run_torch(name: str, exporter: str, input_size) -> dict:
    import torch
    import torchvision

    from filterprune.testing.convert import check_convert

    torch.set_num_threads(1)
    model = torchvision.models.get_model(name, weights=None).eval()
    size = input_size(model)
    return {"model": name, "input": size, **check_convert(model, size, exporter)}


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--one"]:
        if args[1] == "keras":
            with tempfile.TemporaryDirectory() as tmp:
                row = run_keras(args[2], Path(tmp))
        else:
            row = run_torch(args[2], args[3])
        print("RESULT " + json.dumps(row), flush=True)
        return
    if not args or args[0] not in ("keras", "torch"):
        sys.exit("usage: convert_exports.py keras|torch [--exporter NAME] [MODEL ...]")
    frontend, names, exporter = args[0], args[1:], "dynamo"
    if names[:1] == ["--exporter"]:
        exporter, names = names[1], names[2:]
    if not names and frontend == "keras":
        names = KERAS_MODELS
    elif not names:
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
    rows = []
    for name in names:
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", frontend, name, exporter],
                                  capture_output=True, text=True, timeout=900,
                                  cwd=Path(__file__).parent)  # fmt: skip
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            error = (proc.stderr.strip().splitlines() or ["?"])[-1]
        except subprocess.TimeoutExpired:
            lines, error = [], "timed out after 900 s"
        row = json.loads(lines[-1][7:]) if lines else {"model": name, "error": error}
        if frontend == "torch":
            row.setdefault("exporter", exporter)
        print(row, flush=True)
        rows.append(row)
    write(frontend, rows)


def _key(row: dict, frontend: str) -> tuple[str, str]:
    if frontend == "torch":  # rows written before the exporter was recorded: TorchScript
        row.setdefault("exporter", "torchscript")
    return row["model"], row.get("exporter", "")


def write(frontend: str, new_rows: list[dict]) -> None:
    """Merge ``new_rows`` into the saved rows of ``frontend`` and write the table."""
    saved = RESULTS / f"{frontend}_convert.json"
    rows = {_key(r, frontend): r
            for r in (json.loads(saved.read_text()) if saved.exists() else [])}
    rows.update((_key(r, frontend), r) for r in new_rows)
    rows = [rows[k] for k in sorted(rows)]
    atomic_write_text(saved, json.dumps(rows, indent=1) + "\n")
    text = "\n".join(markdown(frontend, rows)) + "\n"
    atomic_write_text(RESULTS / f"{frontend}_convert.md", text)


def markdown(frontend: str, rows: list[dict]) -> list[str]:
    how = ("keras.applications, exported with tf2onnx, dynamic batch" if frontend == "keras"
           else "torchvision, exported with torch.onnx, batch 1: the current exporter "
                "(`dynamo`, what `export_model` uses) or the TorchScript one (`torchscript`, "
                "opset 17; rows measured before `export_model` moved to the current one)")
    counts = []
    for exporter in sorted({r.get("exporter", "") for r in rows}):
        part = [r for r in rows if r.get("exporter", "") == exporter]
        same = sum(1 for r in part if r.get("same_weights"))
        counts.append(f"**{same} of {len(part)}**" + (f" ({exporter})" if exporter else ""))
    lines = [f"# Zero-filter converter on {frontend} exports", "",
             f"{how}; random init, level 0.5 (first and downsampling convs allowed), exported "
             "masked with `ctrl.export_model(...)` and converted. *same weights*: every "
             "Conv/Gemm/MatMul weight has the shape it has in the shrunk export "
             "(`shrink=True`). FLOPs: the converter's count of the ONNX graph, and the "
             f"frontend's count. {', '.join(counts)} have the same weights.", "",
             "| model | exporter | input | same weights | max rel diff | FLOPs kept (ONNX) "
             "| FLOPs kept (frontend) | zero filters kept | converter s |",
             "|" + "---|" * 9]  # fmt: skip
    for r in rows:
        exporter = r.get("exporter", "")
        if "error" in r:
            lines.append(f"| {r['model']} | {exporter} | | error: {r['error'][:120]} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {exporter} | {r['input']} | "
                     f"{'yes' if r['same_weights'] else 'NO'} "
                     f"| {r['rel_diff']:.1e} | {r['flops_kept']:.3f} "
                     f"| {r['strip_flops_kept']:.3f} | {r['kept_zero']} | {r['seconds']:.1f} |")
    return lines


if __name__ == "__main__":
    main()
