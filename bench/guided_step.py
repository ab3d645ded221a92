"""One guided denoising step (cond, uncond, STG, modality-isolated: 4 passes) on one GPU: the passes one by one
(the official order) against one batch-4 forward (`ltx2.parallel.guidance.run_batched`), with the worker's
speed options.

Why: stage 1 of the two-stage pipeline runs at half the output resolution (352x640 for a 704x1280 job: 3 520
video tokens), where a compiled FP8 forward is short enough that the host's launch work is most of it
(`forward_speed.py` BACK_TO_BACK / ms_launch). One batch-4 forward issues a quarter of the launches for
four times the work per kernel. At full resolution in eager bf16 batching was 2-5 % slower
(`gang_forward.py`). Random weights, the official model and inputs (`bench/anchor/official_forward.py`).

    SIZES=352x640x121,512x768x121 OPTIONS=compile+shared+fa4 python bench/guided_step.py  # → $OUT/guided_step.json
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forward_speed import OPTIONS, save_rows
from gang_forward import anchor, guided_inputs, peak_gib, rel, timed
from ltx_core.model.transformer import X0Model

from ltx2.parallel.guidance import run_batched, run_sequential
from ltx2.speed import apply_speed_options


def main() -> None:
    sizes = [tuple(map(int, s.split("x"))) for s in os.environ.get("SIZES", "352x640x121,512x768x121").split(",")]
    chosen = os.environ.get("OPTIONS", "official,compile+shared+fa4,fp8+fp8attn+compile+shared").split(",")
    out = Path(os.environ.get("OUT", "bench/results"))
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    rows = []
    for name in chosen:
        torch.manual_seed(0)
        model, _ = anchor.build_model("default")
        apply_speed_options(model, OPTIONS[name])
        x0 = X0Model(model)
        for shape in sizes:
            _v, _a, passes = guided_inputs(*shape)
            with torch.inference_mode():
                row: dict = {"options": name, "h": shape[0], "w": shape[1], "frames": shape[2], "passes": len(passes)}
                ms, sequential = timed(lambda p=passes, m=x0: run_sequential(m, p))
                row |= {"sequential_ms": round(ms, 1), "sequential_peak_gib": peak_gib()}
                try:
                    ms, batched = timed(lambda p=passes, m=x0: run_batched(m, p))
                    row |= {"batched_ms": round(ms, 1), "batched_peak_gib": peak_gib()}
                    row["speedup"] = round(row["sequential_ms"] / ms, 2)
                    row["rel_err_batched_vs_sequential"] = max(
                        rel(b[0], s[0]) for b, s in zip(batched, sequential, strict=True)
                    )
                except torch.OutOfMemoryError:
                    row["batched_ms"] = "OOM"
            rows.append(row)
            print(json.dumps(row), flush=True)
            save_rows(out, "guided_step.json", info, rows)
            sequential = batched = None
            torch.cuda.empty_cache()
        model = x0 = None
        gc.collect()
        torch.cuda.empty_cache()
    print(json.dumps(info))


if __name__ == "__main__":
    main()
