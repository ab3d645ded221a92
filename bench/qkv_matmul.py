"""The video self-attention's q, k and v projections (4 096 -> 4 096 each, bias) at the video token counts: three
matmuls as ltx-core runs them, against one matmul on the three weights concatenated (4 096 -> 12 288) whose output
is split. One larger GEMM has fewer partial waves and reads the normed input once; whether that pays on cuBLAS at
these sizes is what this measures. Median ms of 20 calls and TFLOP/s.

    PYTHONPATH=. OUT=$OUT python3 bench/qkv_matmul.py   # -> $OUT/qkv_matmul.json
    env: TOKENS=14080,24576
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fa4_attention import matmul_row, rel, timed, write_rows

DIM = 4096


def separate(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> list[torch.Tensor]:
    return [F.linear(x, w, b) for w, b in zip(weights, biases, strict=True)]


def fused(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> list[torch.Tensor]:
    """`weights` / `biases` here are the one concatenated weight and bias."""
    return list(F.linear(x, weights[0], biases[0]).split(DIM, dim=-1))


def main() -> None:
    out = Path(os.environ.get("OUT", "bench/results"))
    rows = []
    for tokens in [int(t) for t in os.environ.get("TOKENS", "14080,24576").split(",")]:
        gen = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(1, tokens, DIM, device="cuda", generator=gen).bfloat16()
        weights = [(torch.randn(DIM, DIM, device="cuda", generator=gen) / DIM**0.5).bfloat16() for _ in range(3)]
        biases = [(torch.randn(DIM, device="cuda", generator=gen) * 0.1).bfloat16() for _ in range(3)]
        variants = {
            "three matmuls": (separate, weights, biases),
            "one matmul, split": (fused, [torch.cat(weights)], [torch.cat(biases)]),
        }
        reference = separate(x, weights, biases)
        flop = 3 * 2 * tokens * DIM * DIM
        for name, (fn, w, b) in variants.items():
            with torch.inference_mode():
                ms = timed(lambda fn=fn, args=(x, w, b): fn(*args))
                err = max(rel(a, r) for a, r in zip(fn(x, w, b), reference, strict=True))
            row = matmul_row(tokens, name, ms, flop) | {"max_rel_diff_vs_three": err}
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_rows(out, "qkv_matmul.json", rows)


if __name__ == "__main__":
    main()
