"""The FF hidden layer's fused kernel alone: the official tanh GELU vs the same function through a sigmoid
(`ltx2.speed.gelu_tanh_by_sigmoid`), compiled, at the 1024x1536x121 shape (24 576 tokens x 16 384 features):
bias + GELU in bf16 (the bf16 worker), and bias + GELU + per-row e4m3 cast (the FP8 worker's input of the FF
output layer). Median ms of 20 calls, and the largest difference between the two GELUs.

    PYTHONPATH=. OUT=$OUT python3 bench/gelu_kernels.py   # -> $OUT/gelu_kernels.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gang_forward import timed

from ltx2.fp8_linear import quantize_input
from ltx2.speed import gelu_tanh_by_sigmoid

OUT = Path(os.environ.get("OUT", "bench/results"))
ROWS, FEATURES = 24_576, 16_384


def official(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


def main() -> None:
    torch.manual_seed(0)
    h = torch.randn(ROWS, FEATURES, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(FEATURES, device="cuda", dtype=torch.bfloat16) * 0.1
    rows = []
    outputs = {}
    for name, gelu in (("tanh", official), ("sigmoid", gelu_tanh_by_sigmoid)):
        bf16 = torch.compile(lambda x, b, g=gelu: g(x + b), dynamic=False)
        fp8 = torch.compile(lambda x, b, g=gelu: quantize_input(g(x + b), per_row=True), dynamic=False)
        persistent = torch.compile(
            lambda x, b, g=gelu: quantize_input(g(x + b), per_row=True),
            dynamic=False,
            options={"triton.multi_kernel": 1},
        )
        for kind, fn in (("bf16", bf16), ("fp8_rows", fp8), ("fp8_rows_persistent", persistent)):
            with torch.inference_mode():
                ms, out = timed(lambda fn=fn: fn(h, bias), iters=20)
            outputs[(name, kind)] = out
            traffic = h.numel() * 2 + (out.numel() * 2 if kind == "bf16" else out[0].numel())
            row = {"gelu": name, "kernel": kind, "ms": round(ms, 3), "gb_per_s": round(traffic / ms / 1e6)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    a, b = outputs[("tanh", "bf16")].float(), outputs[("sigmoid", "bf16")].float()
    diff = {
        "max_abs_diff_bf16": (a - b).abs().max().item(),
        "bf16_values_differing": (a != b).float().mean().item(),
        "fp8_values_differing": (
            outputs[("tanh", "fp8_rows")][0].float() != outputs[("sigmoid", "fp8_rows")][0].float()
        )
        .float()
        .mean()
        .item(),
    }
    print(json.dumps(diff))
    OUT.mkdir(parents=True, exist_ok=True)
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "shape": [ROWS, FEATURES]}
    (OUT / "gelu_kernels.json").write_text(json.dumps({"info": info, "rows": rows, "diff": diff}, indent=1))


if __name__ == "__main__":
    main()
