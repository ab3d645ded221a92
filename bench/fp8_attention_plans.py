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
from fp8_attention import rms_normed, timed

from ltx2.fp8_attention import _cudnn, _handle, attention_graph, graph_buffers, quantize_tensor

OUT = Path(os.environ.get("OUT", "bench/results"))
SIZES = [int(s) for s in os.environ.get("SIZES", "14080,24576").split(",") if s]
HEADS, DIM = 32, 128


def main() -> None:
    cudnn = _cudnn()
    rows = []
    for tokens in SIZES:
        (q8, dq), (k8, dk), (v8, dv) = (quantize_tensor(rms_normed(tokens)) for _ in range(3))
        scale = 1 / math.sqrt(DIM)
        handle = _handle(q8.device)
        graph, tensors, _ = attention_graph(q8, scale, heuristics=("A", "B", "FALLBACK"), build_all=True)
        out = torch.empty_like(q8)
        buffers = graph_buffers(tensors, q8, k8, v8, out, dq, dk, dv)
        count = graph.get_execution_plan_count()
        flops = 4 * tokens**2 * HEADS * DIM
        for index in range(count):
            name = graph.get_plan_name_at_index(index)
            row = {"tokens": tokens, "index": index, "plan": name}
            try:
                size = graph.get_workspace_size_plan_at_index(index)
                workspace = torch.empty(max(size, 1), device="cuda", dtype=torch.uint8)
                run = lambda g=graph, b=buffers, i=index, w=workspace, h=handle: g.execute_plan_at_index(b, w, i, h)  # noqa: E731
                ms = timed(run)
                row |= {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1), "workspace": size}
            except Exception as exc:  # a plan that does not build or run: say why, keep going
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)
            print(json.dumps(row), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    info = {"device": torch.cuda.get_device_name(0), "cudnn_frontend": getattr(cudnn, "__version__", "?")}
    (OUT / "fp8_attention_plans.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
