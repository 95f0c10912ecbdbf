"""How far int8 runtimes stray from a QAT model's own arithmetic, with and without
``overflow_fix``.

x86 int8 kernels on CPUs without VNNI add pairs of u8 x s8 products in 16 bits with
saturation. A pruned + quantized net (stem, residual block, depthwise and pointwise
convs, linear head; random weights, seeded BatchNorm statistics, half the filters
pruned) is exported with each ``overflow_fix`` setting and cut by ``filterprune
convert``; both files run in ONNX Runtime (every optimization: Q/DQ fused into int8
kernels) and OpenVINO (CPU, ``INFERENCE_PRECISION_HINT`` f32), and each output is
compared with ONNX Runtime's run of the same file with Q/DQ unfused, which computes
what the model defines. On a CPU with VNNI both settings should come out near zero.

    .venv/bin/python benchmarks/int8_overflow.py            # 3 seeds, about a minute
    .venv/bin/python benchmarks/int8_overflow.py --seeds 5

Writes ``benchmarks/results/int8_overflow.md`` and ``int8_overflow.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from filterprune import NNCFConfig
from filterprune._atomic import atomic_write_text
from filterprune.onnx import max_rel_diff, remove_zero_filters, run_onnxruntime
from filterprune.onnx.openvino import run_openvino
from filterprune.torch import create_compressed_model, register_default_init_args

RESULTS = Path(__file__).parent / "results"
FIXES = ("disable", "enable")


def _cbr(cin: int, cout: int, k: int = 3, groups: int = 1, relu: bool = True) -> nn.Module:
    layers = [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]  # fmt: skip
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.a1, self.a2 = _cbr(16, 16), _cbr(16, 16, relu=False)
        self.dw, self.pw = _cbr(16, 16, groups=16), _cbr(16, 24, k=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.a2(self.a1(x)))
        x = self.pw(self.dw(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = Net()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():  # statistics of a trained net's scale, not the init's 0 and 1
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


def _config(fix: str, seed: int) -> NNCFConfig:
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(4, 3, 16, 16, generator=g), torch.zeros(4)) for _ in range(2)]
    prune = {"algorithm": "filter_pruning", "pruning_init": 0.5,
             "params": {"schedule": "baseline", "prune_first_conv": True,
                        "prune_downsample_convs": True}}  # fmt: skip
    quant = {"algorithm": "quantization", "overflow_fix": fix,
             "initializer": {"range": {"num_init_samples": 8},
                             "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}  # fmt: skip
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 3, 16, 16]},
                                   "compression": [prune, quant]})  # fmt: skip
    return register_default_init_args(config, batches)


def measure(fix: str, seed: int, workdir: Path) -> dict:
    ctrl, _ = create_compressed_model(_model(seed), _config(fix, seed))
    path = workdir / f"{fix}-{seed}.onnx"
    ctrl.export_model(str(path))
    masked = onnx.load(str(path))
    cut, _ = remove_zero_filters(masked)
    x = {"x": np.random.default_rng(seed + 100).standard_normal((4, 3, 16, 16)).astype("float32")}
    row = {"overflow_fix": fix, "seed": seed}
    for name, model in (("masked", masked), ("cut", cut)):
        exact = run_onnxruntime(model, x)
        row[f"ort_{name}"] = max_rel_diff(exact, run_onnxruntime(model, x, fused=True))
        row[f"ov_{name}"] = max_rel_diff(exact, run_openvino(model, x))
    row["ov_masked_vs_cut"] = max_rel_diff(run_openvino(masked, x), run_openvino(cut, x))
    return row


def _cpu() -> tuple[str, str]:
    """The CPU's model name and its VNNI flags, from /proc/cpuinfo where there is one."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine(), "unknown"
    info = dict(line.split(":", 1) for line in lines if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = info.get("flags", "").split()
    found = [f for f in ("avx512_vnni", "avx_vnni") if f in flags]
    return info.get("model name", platform.machine()), ", ".join(found) or "none"


def _span(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows]
    lo, hi = min(values), max(values)
    return f"{lo:.3g}" if lo == hi else f"{lo:.3g} to {hi:.3g}"


def report(data: dict) -> str:
    lines = [
        "# int8 runtimes against the model's own arithmetic, by `overflow_fix`",
        "",
        "Produced by `benchmarks/int8_overflow.py`. Relative distance (largest absolute "
        "difference over the largest output magnitude) from ONNX Runtime's run of the same "
        "file with Q/DQ unfused. ONNX Runtime: every optimization (int8 kernels); OpenVINO: "
        "CPU, `INFERENCE_PRECISION_HINT` f32; one thread.",
        "",
        f"Machine: {data['machine']}; VNNI flags: {data['vnni']}. Seeds: {data['seeds']}.",
        "",
        "| overflow_fix | ORT int8, masked | ORT int8, cut | OpenVINO, masked | "
        "OpenVINO, cut | OpenVINO, masked vs cut |",
        "|---|---|---|---|---|---|",
    ]
    for fix in FIXES:
        rows = [r for r in data["rows"] if r["overflow_fix"] == fix]
        keys = ("ort_masked", "ort_cut", "ov_masked", "ov_cut", "ov_masked_vs_cut")
        lines.append(f"| `{fix}` | " + " | ".join(_span(rows, k) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(".cache/int8_overflow"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = [measure(fix, seed, args.workdir) for fix in FIXES for seed in range(args.seeds)]
    name, vnni = _cpu()
    data = {"machine": f"{name}, {os.cpu_count()} cores", "vnni": vnni, "seeds": args.seeds,
            "rows": rows}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "int8_overflow.json", json.dumps(data, indent=1) + "\n")
    text = report(data)
    atomic_write_text(RESULTS / "int8_overflow.md", text)
    print(text)


if __name__ == "__main__":
    main()
