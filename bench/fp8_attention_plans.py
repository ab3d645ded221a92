"""Which cuDNN execution plans can run the farm's FP8 video self-attention, and how fast is each?

`ltx2.fp8_attention` builds its `sdpa_fp8` graph with heuristics A then FALLBACK and runs the first plan
that builds. This lists every plan the heuristics offer (modes A, B and FALLBACK, `build_plan_policy.ALL`)
and times each at the video self-attention shapes (batch 1, 32 heads x 128, [B, S, H, D] e4m3 buffers, as
the worker passes them), so a faster plan than the default would show here.

    PYTHONPATH=/tmp/cudnnsite:. OUT=$OUT python3 bench/fp8_attention_plans.py   # -> $OUT/fp8_attention_plans.json
    env: SIZES=14080,24576 (video tokens)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from fa4_attention import timed
from fp8_attention import ITERS, rms_normed

from ltx2.fp8_attention import _cudnn, _handle, attention_graph, graph_buffers, quantize_tensor

OUT = Path(os.environ.get("OUT", "bench/results"))
SIZES = [int(s) for s in os.environ.get("SIZES", "14080,24576").split(",") if s]
HEADS, DIM = 32, 128
LAYOUTS = {
    "bshd": ((0, 1, 2, 3), (0, 1, 2, 3)),
    "bshd_v_bhds": ((0, 1, 2, 3), (0, 2, 3, 1)),
    "bhsd": ((0, 2, 1, 3), (0, 2, 1, 3)),
}
"""Memory orders of (q and k, v) as permutations of [B, S, H, D]: as the worker passes them; v with the sequence
innermost ([B, H, D, S]: FP8 tensor cores take the second operand K-major, which for P @ V means v transposed);
all [B, H, S, D]."""


def laid_out(x: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """x ([B, S, H, D]) with its memory in `order`, still indexed [B, S, H, D]."""
    inverse = tuple(order.index(i) for i in range(4))
    return x.permute(order).contiguous().permute(inverse)


def main() -> None:
    cudnn = _cudnn()
    rows = []
    for tokens in SIZES:
        (q8, dq), (k8, dk), (v8, dv) = (quantize_tensor(rms_normed(tokens)) for _ in range(3))
        for layout, (qk_order, v_order) in LAYOUTS.items():
            q, k, v = laid_out(q8, qk_order), laid_out(k8, qk_order), laid_out(v8, v_order)
            rows += time_plans(tokens, layout, q, k, v, (dq, dk, dv))
    OUT.mkdir(parents=True, exist_ok=True)
    info = {"device": torch.cuda.get_device_name(0), "cudnn_frontend": getattr(cudnn, "__version__", "?")}
    (OUT / "fp8_attention_plans.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))


def time_plans(tokens: int, layout: str, q8, k8, v8, descales) -> list[dict]:
    """Every plan of the graph for these buffers, timed (or the reason it did not run)."""
    rows = []
    scale = 1 / math.sqrt(DIM)
    handle = _handle(q8.device)
    try:
        graph, tensors, _ = attention_graph(q8, scale, heuristics=("A", "B", "FALLBACK"), build_all=True, v=v8)
    except Exception as exc:  # a layout cuDNN does not support: say so
        return [{"tokens": tokens, "layout": layout, "error": f"{type(exc).__name__}: {exc}"[:300]}]
    out = torch.empty_like(q8)
    buffers = graph_buffers(tensors, q8, k8, v8, out, *descales)
    count = graph.get_execution_plan_count()
    flops = 4 * tokens**2 * HEADS * DIM
    for index in range(count):
        name = graph.get_plan_name_at_index(index)
        row = {"tokens": tokens, "layout": layout, "index": index, "plan": name}
        try:
            size = graph.get_workspace_size_plan_at_index(index)
            workspace = torch.empty(max(size, 1), device="cuda", dtype=torch.uint8)
            run = lambda g=graph, b=buffers, i=index, w=workspace, h=handle: g.execute_plan_at_index(b, w, i, h)  # noqa: E731
            ms = timed(run, ITERS)
            row |= {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1), "workspace": size}
        except Exception as exc:  # a plan that does not build or run: say why, keep going
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
