"""The compiled forward's fused (Triton) kernels one by one: bytes each moves, GPU time, achieved bandwidth.

Why: the bf16 compiled forward spends 140-185 ms of 1.8 s at 1024×1536×121 in inductor's fused kernels
(norms, modulation, RoPE, gates, residuals, GELU), memory-bound work between the matmuls and attention.
This says which kernels move the bytes and which run far below the HBM's ~3 TB/s, with their sources,
so that fusion work goes where it pays. Bytes are inductor's own estimate (`TORCHINDUCTOR_BENCHMARK_KERNEL`,
which adds it to each kernel's metadata without changing what runs); times are from the profiler during
one real forward.

    SIZE=1024x1536x121 OPTIONS=compile+shared OUT=$OUT python bench/fused_kernels.py

SOURCES=n writes the sources of the n slowest fused kernels (default 5).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_BENCHMARK_KERNEL", "1")

import torch
from torch._inductor.runtime.triton_heuristics import CachingAutotuner

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forward_speed import OPTIONS, kernel_events, kernel_kind
from gang_forward import anchor

from ltx2.speed import apply_speed_options


def kernel_times(fn) -> dict[str, list[float]]:
    """GPU ms and call count per kernel name over one call of `fn`."""
    by_name: dict[str, list[float]] = {}
    for e in kernel_events(fn):
        entry = by_name.setdefault(e["name"], [0.0, 0])
        entry[0] += e["dur"] / 1e3
        entry[1] += 1
    return by_name


def inductor_kernels() -> dict[str, CachingAutotuner]:
    """Every Triton kernel inductor has loaded in this process, by the name the profiler shows."""
    found = {}
    for k in gc.get_objects():
        try:
            if isinstance(k, CachingAutotuner) and "kernel_name" in k.inductor_meta:
                found[k.inductor_meta["kernel_name"]] = k
        except ReferenceError:  # a dead weak proxy among gc's objects
            continue
    return found


def main() -> None:
    h, w, f = map(int, os.environ.get("SIZE", "1024x1536x121").split("x"))
    name = os.environ.get("OPTIONS", "compile+shared")
    out = Path(os.environ.get("OUT", "bench/results"))
    torch.manual_seed(0)
    model, _ = anchor.build_model("default")
    apply_speed_options(model, OPTIONS[name])
    v, a = anchor.inputs(h, w, f)
    with torch.inference_mode():
        for _ in range(3):
            model(v, a, None)
        torch.cuda.synchronize()
        by_name = kernel_times(lambda: model(v, a, None))
    kernels = inductor_kernels()
    rows = []
    for kname, (ms, calls) in by_name.items():
        row = {"kernel": kname, "kind": kernel_kind(kname), "calls": int(calls), "ms": round(ms, 2)}
        if kname in kernels:
            gb = kernels[kname].inductor_meta.get("kernel_num_gb")
            if gb is not None:
                row["gb_per_call"] = round(gb, 4)
                row["tb_per_s"] = round(gb * calls / ms, 2)  # GB/ms = TB/s
        rows.append(row)
    rows.sort(key=lambda r: -r["ms"])
    fused = [r for r in rows if r["kind"] == "fused (triton)"]
    summary = {
        "fused_ms": round(sum(r["ms"] for r in fused), 1),
        "fused_gb": round(sum(r.get("gb_per_call", 0) * r["calls"] for r in fused), 1),
        "by_kind_ms": {},
    }
    for r in rows:
        summary["by_kind_ms"][r["kind"]] = round(summary["by_kind_ms"].get(r["kind"], 0) + r["ms"], 1)
    info = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "shape": [h, w, f],
        "options": name,
        "rope": anchor.ROPE,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "fused_kernels.json").write_text(json.dumps({"info": info, "summary": summary, "rows": rows}, indent=1))
    sources = out / "fused_kernels_src"
    sources.mkdir(exist_ok=True)
    for r in fused[: int(os.environ.get("SOURCES", "5"))]:
        kernel = kernels.get(r["kernel"])
        if kernel is not None:
            (sources / f"{r['kernel']}.py").write_text(kernel.fn.src)
    print(json.dumps(summary, indent=1))
    for r in fused[:25]:
        print(r)


if __name__ == "__main__":
    main()
