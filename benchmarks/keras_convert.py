"""The zero-filter converter on Keras exports: keras.applications models pruned at
level 0.5, exported masked with ``ctrl.export_model("m.onnx")`` (tf2onnx, dynamic
batch), converted, and compared with the shrunk export of ``strip()``: the weight
shapes of every Conv/Gemm/MatMul, the outputs, and the FLOPs.

One subprocess per model. Writes ``benchmarks/results/keras_convert.md``.

    python benchmarks/keras_convert.py                   # the default models
    python benchmarks/keras_convert.py ResNet50 VGG16    # some
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODELS = ["ConvNeXtTiny", "DenseNet121", "EfficientNetB0", "EfficientNetV2B0", "InceptionV3",
          "InceptionResNetV2", "MobileNet", "MobileNetV2", "MobileNetV3Small", "NASNetMobile",
          "ResNet50", "VGG16", "Xception"]  # fmt: skip
WEIGHTED = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def weight_shapes(model) -> list[tuple[int, ...]]:
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in WEIGHTED and len(n.input) > 1]
    return sorted(inits[n.input[1]] for n in nodes if n.input[1] in inits)


def run_one(name: str, folder: Path) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import onnx
    import onnxruntime as ort
    from keras_zoo import _build

    from filterprune import NNCFConfig
    from filterprune.onnx import remove_zero_filters
    from filterprune.tensorflow import create_compressed_model

    model, size = _build(name)
    params = {"schedule": "baseline", "prune_first_conv": True, "prune_downsample_convs": True}
    config = NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, size, size, 3]},
        "compression": {"algorithm": "filter_pruning", "pruning_init": 0.5, "params": params}})
    ctrl, model = create_compressed_model(model, config)
    ctrl.export_model(str(folder / "masked.onnx"))
    ctrl.export_model(str(folder / "small.onnx"), shrink=True)
    t = time.perf_counter()
    converted, report = remove_zero_filters(str(folder / "masked.onnx"))
    seconds = time.perf_counter() - t
    x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
    sess = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = model(x, training=False).numpy()
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    small = onnx.load(str(folder / "small.onnx"))
    return {"model": name, "input": size, "same_weights": weight_shapes(converted) ==
            weight_shapes(small), "rel_diff": float(np.abs(out - ref).max() / np.abs(ref).max()),
            "flops_kept": report.flops_kept, "strip_flops_kept": ctrl.statistics().flops_kept,
            "kept_zero": sum(s.kept_zero for s in report.layers), "seconds": seconds}  # fmt: skip


def main() -> None:
    names = sys.argv[1:] or MODELS
    if names[0] == "--one":
        with tempfile.TemporaryDirectory() as tmp:
            print("RESULT " + json.dumps(run_one(names[1], Path(tmp))), flush=True)
        return
    rows = []
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True,
                              text=True, cwd=Path(__file__).parent)  # fmt: skip
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        row = json.loads(lines[-1][7:]) if lines else {
            "model": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        print(row, flush=True)
        rows.append(row)
    lines = ["# Zero-filter converter on Keras exports", "",
             "keras.applications, random init, level 0.5 (first and downsampling convs "
             "allowed), exported masked with `ctrl.export_model(\"m.onnx\")` (tf2onnx, dynamic "
             "batch) and converted. *same weights*: every Conv/Gemm/MatMul weight has the shape "
             "it has in the shrunk export (`shrink=True`). FLOPs: the converter's count of the "
             "ONNX graph, and the Keras frontend's count.", "",
             "| model | input | same weights | max rel diff | FLOPs kept (ONNX) | FLOPs kept "
             "(Keras) | zero filters kept | converter s |", "|" + "---|" * 8]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | error: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['input']} | {'yes' if r['same_weights'] else 'NO'} "
                     f"| {r['rel_diff']:.1e} | {r['flops_kept']:.3f} "
                     f"| {r['strip_flops_kept']:.3f} | {r['kept_zero']} | {r['seconds']:.1f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "keras_convert.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
