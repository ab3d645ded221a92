"""One forward of the 19B transformer: official eager vs the farm's speed options, on one GPU.

Random weights (speed does not depend on them), bf16, the official model and inputs from
`bench/anchor/official_forward.py`, the options from `ltx2/speed.py`. For each option set: median
forward time, peak memory, weight memory, and the relative error against the official bf16 output
(max |ours - official| / max |official|; for scale, cuDNN vs flash SDPA differ by 6.8e-3).

    SIZES=704x1280x121,1024x1536x121 python bench/forward_speed.py     # rows → $OUT/forward_speed.json
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gang_forward import anchor, rel, timed

from ltx2.speed import SpeedOptions, apply_speed_options

OPTIONS = {
    "official": SpeedOptions(),
    "compile": SpeedOptions(compile=True),
    "fp8": SpeedOptions(fp8=True),
    "fp8+compile": SpeedOptions(fp8=True, compile=True),
}


def weight_gib(model: torch.nn.Module) -> float:
    total = 0
    for p in model.parameters():
        inner = [getattr(p, n) for n in ("qdata", "scale") if hasattr(p, n)] or [p]
        total += sum(t.numel() * t.element_size() for t in inner)
    return round(total / 2**30, 1)


def main() -> None:
    sizes = [tuple(map(int, s.split("x"))) for s in os.environ.get("SIZES", "704x1280x121,1024x1536x121").split(",")]
    chosen = os.environ.get("OPTIONS", ",".join(OPTIONS)).split(",")
    out = Path(os.environ.get("OUT", "bench/results"))
    inputs = {shape: anchor.inputs(*shape) for shape in sizes}
    reference: dict = {}
    rows = []
    for name in chosen:
        torch.manual_seed(0)
        model, _ = anchor.build_model("default")
        started = time.perf_counter()
        apply_speed_options(model, OPTIONS[name])
        prepare_s = time.perf_counter() - started
        for shape in sizes:
            v, a = inputs[shape]
            with torch.inference_mode():
                first = time.perf_counter()
                model(v, a, None)
                torch.cuda.synchronize()
                first_s = time.perf_counter() - first
                ms, output = timed(lambda v=v, a=a, m=model: m(v, a, None))
            if name == "official":
                reference[shape] = output[0].float().cpu()
            row = {
                "options": name,
                "h": shape[0],
                "w": shape[1],
                "frames": shape[2],
                "ms": round(ms, 1),
                "speedup": None,
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
                "weights_gib": weight_gib(model),
                "prepare_s": round(prepare_s, 1),
                "first_forward_s": round(first_s, 1),
                "rel_err_video": rel(output[0].cpu(), reference[shape]) if shape in reference else None,
                "graphs": counters["stats"]["unique_graphs"],
                "graph_breaks": sum(counters["graph_break"].values()),
            }
            base = next(
                (r for r in rows if r["options"] == "official" and r["h"] == shape[0] and r["w"] == shape[1]), None
            )
            row["speedup"] = round(base["ms"] / ms, 2) if base else 1.0
            rows.append(row)
            print(json.dumps(row), flush=True)
        model = output = None
        gc.collect()
        torch.cuda.empty_cache()
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "forward_speed.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
