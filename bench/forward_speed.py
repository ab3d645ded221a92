"""One forward of the 19B transformer: official eager vs the farm's speed options, on one GPU.

Random weights (speed does not depend on them), bf16, the official model and inputs from
`bench/anchor/official_forward.py`, the options from `ltx2/speed.py`. For each option set: median
forward time, peak memory, weight memory, and the relative error against the official bf16 output
(max |ours - official| / max |official|; for scale, cuDNN vs flash SDPA differ by 6.8e-3).

    SIZES=704x1280x121,1024x1536x121 python bench/forward_speed.py     # rows → $OUT/forward_speed.json
    PROFILE=1 OPTIONS=official,compile python bench/forward_speed.py  # + GPU time by kernel kind per row
    ROPE=split …                        # the real checkpoint's RoPE (split, float64 frequencies) instead of
                                        #   the shared anchor's code defaults (interleaved, float32)
    BACK_TO_BACK=8 SIZES=352x640x121 …  # + ms per forward over 8 calls with no sync between them, as a
                                        #   denoising loop calls the model, and ms_launch: host time
                                        #   to issue one forward (CPU launch cost shows here)
    SUSTAIN=30 …                        # + forwards back to back for 30 s under nvidia-smi sampling: ms per
                                        #   forward (all, and the second half: the GPU's steady state),
                                        #   the second half's power, SM clock, share of samples at the
                                        #   power cap or slowed for heat, joules per forward (gpu_power.py)
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gang_forward import anchor, rel, timed
from gpu_power import PowerSampler

from ltx2.fp8_linear import apply_fp8_linears
from ltx2.speed import KernelTuning, SpeedOptions, apply_speed_options


def torchao_rowwise(model: torch.nn.Module) -> None:
    """The FP8 path before ltx2.fp8_linear: torchao, per-row scales, every block linear (bench comparison)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def block_linear(module: torch.nn.Module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and fqn.startswith("transformer_blocks.")

    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=block_linear)


def per_tensor(model: torch.nn.Module) -> None:
    """ltx2.fp8_linear with one input scale per tensor instead of one per row (the GPU default)."""
    apply_fp8_linears(model, per_row=False)


def fp32_accumulation(model: torch.nn.Module) -> None:
    """ltx2.fp8_linear with cuBLAS's float32-promoted accumulation instead of the fast one."""
    apply_fp8_linears(model, fast_accum=False)


BENCH_FP8 = {
    "fp8rowwise": torchao_rowwise,
    "fp8tensor": per_tensor,
    "fp8fp32acc": fp32_accumulation,
}
"""Bench-only FP8 variants, applied before the option set named after the first '+'."""

FP8_EXTRAS = KernelTuning(sigmoid_gelu=True, persistent_reductions=True)
"""What compiled blocks get with `fp8` (`KernelTuning`'s None resolved), for the variants that apply their FP8
layers themselves."""

BF16_WORKER = SpeedOptions(
    compile=True, shared_timesteps=True, fa4_attention=True, split_kv_attention=True, rope_cache=True
)
"""The model options of a bf16 worker on a GPU with FA4 installed (`default_speed_options`); with `fp8`,
`fp8_attention` (and `fp8_all_blocks`), those of `--fp8 --fp8-attention` (`--fp8-all-blocks`) workers."""

OPTIONS = {
    "official": SpeedOptions(),
    "compile": SpeedOptions(compile=True),
    "fp8": SpeedOptions(fp8=True),
    "fp8+compile": SpeedOptions(fp8=True, compile=True),
    "fp8attn+compile": SpeedOptions(fp8_attention=True, compile=True),
    "fp8+fp8attn+compile": SpeedOptions(fp8=True, fp8_attention=True, compile=True),
    "fp8rowwise+compile": SpeedOptions(compile=True),
    "fp8all+compile": SpeedOptions(fp8=True, fp8_all_blocks=True, compile=True),
    "fp8rowwise+fp8attn+compile": SpeedOptions(fp8_attention=True, compile=True),
    "fp8all+fp8attn+compile": SpeedOptions(fp8=True, fp8_all_blocks=True, fp8_attention=True, compile=True),
    "fp8tensor+fp8attn+compile": SpeedOptions(fp8_attention=True, compile=True, tuning=FP8_EXTRAS),
    "fp8fp32acc+compile": SpeedOptions(compile=True, tuning=FP8_EXTRAS),
    "fp8fp32acc+fp8attn+compile": SpeedOptions(fp8_attention=True, compile=True, tuning=FP8_EXTRAS),
    "fp8+fp8attn+compile+tanh": SpeedOptions(
        fp8=True, fp8_attention=True, compile=True, tuning=KernelTuning(sigmoid_gelu=False)
    ),
    "fp8+fp8attn+compile+tune": SpeedOptions(
        fp8=True, fp8_attention=True, compile=True, tuning=KernelTuning(tune_fused_kernels=True)
    ),
    "fp8all+fp8attn+compile+tune": SpeedOptions(
        fp8=True, fp8_all_blocks=True, fp8_attention=True, compile=True, tuning=KernelTuning(tune_fused_kernels=True)
    ),
    "compile+shared": SpeedOptions(compile=True, shared_timesteps=True),
    "compile+shared+oldrope": SpeedOptions(
        compile=True, shared_timesteps=True, tuning=KernelTuning(fusible_rope=False)
    ),
    "compile+shared+persist": SpeedOptions(
        compile=True, shared_timesteps=True, tuning=KernelTuning(persistent_reductions=True)
    ),
    "fp8+fp8attn+compile+shared+oldrope": SpeedOptions(
        fp8=True, fp8_attention=True, compile=True, shared_timesteps=True, tuning=KernelTuning(fusible_rope=False)
    ),
    "fp8+fp8attn+compile+shared": SpeedOptions(fp8=True, fp8_attention=True, compile=True, shared_timesteps=True),
    "fp8all+fp8attn+compile+shared": SpeedOptions(
        fp8=True, fp8_all_blocks=True, fp8_attention=True, compile=True, shared_timesteps=True
    ),
    "compile+fa4": SpeedOptions(compile=True, fa4_attention=True),
    "fp8+fp8attn+compile+fa4": SpeedOptions(fp8=True, fp8_attention=True, compile=True, fa4_attention=True),
    "compile+shared+fa4": SpeedOptions(compile=True, shared_timesteps=True, fa4_attention=True),
    "compile+shared+fa4+noepilogue": SpeedOptions(
        compile=True, shared_timesteps=True, fa4_attention=True, tuning=KernelTuning(gelu_epilogue=False)
    ),
    "compile+shared+noepilogue": SpeedOptions(
        compile=True, shared_timesteps=True, tuning=KernelTuning(gelu_epilogue=False)
    ),
    "compile+shared+fa4+persist": SpeedOptions(
        compile=True, shared_timesteps=True, fa4_attention=True, tuning=KernelTuning(persistent_reductions=True)
    ),
    "compile+shared+fa4+splitkv": SpeedOptions(
        compile=True, shared_timesteps=True, fa4_attention=True, split_kv_attention=True
    ),
    "compile+shared+fa4+splitkv+ropecache": BF16_WORKER,
    "compile+shared+fa4+splitkv+ropecache+looped": replace(
        BF16_WORKER, tuning=KernelTuning(persistent_reductions=False)
    ),
    "compile+shared+fa4+splitkv+ropecache+graph": BF16_WORKER,
    "fp8+fp8attn+compile+shared+fa4+splitkv+ropecache": replace(BF16_WORKER, fp8=True, fp8_attention=True),
    "fp8all+fp8attn+compile+shared+fa4+splitkv+ropecache": replace(
        BF16_WORKER, fp8=True, fp8_all_blocks=True, fp8_attention=True
    ),
    "compile+shared+fa4+oldrope": SpeedOptions(
        compile=True, shared_timesteps=True, fa4_attention=True, tuning=KernelTuning(fusible_rope=False)
    ),
    "fp8+fp8attn+compile+shared+fa4": SpeedOptions(
        fp8=True, fp8_attention=True, compile=True, shared_timesteps=True, fa4_attention=True
    ),
    "fp8all+fp8attn+compile+shared+fa4": SpeedOptions(
        fp8=True, fp8_all_blocks=True, fp8_attention=True, compile=True, shared_timesteps=True, fa4_attention=True
    ),
    "compile+tune": SpeedOptions(compile=True, tuning=KernelTuning(tune_fused_kernels=True)),
    "compile+persist": SpeedOptions(compile=True, tuning=KernelTuning(persistent_reductions=True)),
    "fp8+fp8attn+compile+looped": SpeedOptions(
        fp8=True, fp8_attention=True, compile=True, tuning=KernelTuning(persistent_reductions=False)
    ),
    "compile+autotune": SpeedOptions(compile=True, tuning=KernelTuning(compile_mode="max-autotune-no-cudagraphs")),
    "compile+cudagraphs": SpeedOptions(compile=True, tuning=KernelTuning(compile_mode="reduce-overhead")),
}

KERNEL_KINDS = (  # first match wins; inductor names its kernels after every op they fuse (…_scaled_mm_…)
    ("fused (triton)", ("triton",)),
    ("attention", ("fmha", "sdpa", "flash", "attention", "cudnn")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "scaled_mm", "sm90_")),
    ("copy / cast", ("copy", "memcpy", "memset", "cast", "elementwise")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in lowered for k in keys)), "other")


def kernel_events(fn) -> list[dict]:
    """The GPU kernels of one call of `fn`, as the profiler's trace lists them (name, start and duration in µs)."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as trace:
        prof.export_chrome_trace(trace.name)
        return [e for e in json.loads(Path(trace.name).read_text())["traceEvents"] if e.get("cat") == "kernel"]


def top_kernels(events: list[dict], count: int = 15) -> list[dict]:
    """The kernels of `events` taking the most GPU time, by name (first 120 characters), with their call counts."""
    by_name: dict[str, list] = {}
    for e in events:
        entry = by_name.setdefault(e["name"][:120], [0.0, 0])
        entry[0] += e["dur"] / 1e3
        entry[1] += 1
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:count]
    return [{"name": n, "ms": round(v[0], 2), "calls": v[1]} for n, v in top]


def idle_gaps(events: list[dict], largest: int = 12) -> dict:
    """Where the GPU sat idle between kernels: idle ms before the first and after the last 10 % of the kernels
    (the unblocked prologue and epilogue vs. the blocks), and the largest gaps with the kernels around them."""
    events = sorted(events, key=lambda e: e["ts"])
    gaps = []
    for i, (before, after) in enumerate(itertools.pairwise(events)):
        gap = after["ts"] - (before["ts"] + before["dur"])
        if gap > 0:
            gaps.append((gap / 1e3, i, before["name"][:60], after["name"][:60]))
    tenth = len(events) // 10
    first_fused = next((i for i, e in enumerate(events) if e["name"].startswith("triton")), len(events))
    prologue = events[:first_fused]
    return {
        "before_first_fused_kernel": {  # the model's eager prologue (embeddings, RoPE tables) and the first call
            "kernels": len(prologue),
            "busy_ms": round(sum(e["dur"] for e in prologue) / 1e3, 1),
            "idle_ms": round(sum(g[0] for g in gaps if g[1] < first_fused), 1),
            "top": top_kernels(prologue, 10),
        },
        "first_tenth_of_kernels_ms": round(sum(g[0] for g in gaps if g[1] < tenth), 1),
        "last_tenth_of_kernels_ms": round(sum(g[0] for g in gaps if g[1] >= len(events) - tenth), 1),
        "gaps_over_50us": sum(1 for g in gaps if g[0] > 0.05),
        "gaps_over_50us_ms": round(sum(g[0] for g in gaps if g[0] > 0.05), 1),
        "largest": [
            {"ms": round(g[0], 3), "kernel_index": g[1], "before": g[2], "after": g[3]}
            for g in sorted(gaps, reverse=True)[:largest]
        ],
    }


def kernel_profile(fn) -> dict:
    """GPU time of one call by kernel kind (from the profiler's trace), the top kernels, and the time the
    GPU sat idle inside the call (launch gaps)."""
    events = kernel_events(fn)
    by_kind: dict[str, float] = {}
    for e in events:
        by_kind[kernel_kind(e["name"])] = by_kind.get(kernel_kind(e["name"]), 0.0) + e["dur"] / 1e3
    span = (max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)) / 1e3
    busy = sum(by_kind.values())
    return {
        "span_ms": round(span, 1),
        "kernel_ms": round(busy, 1),
        "idle_ms": round(span - busy, 1),
        "idle_gaps": idle_gaps(events),
        "kernels": len(events),
        "by_kind_ms": {k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top": top_kernels(events),
    }


def save_rows(out: Path, name: str, info: dict, rows: list[dict]) -> None:
    """Write the rows so far (a long run that is cut off keeps what it measured)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps({"info": info, "rows": rows}, indent=1))


def weight_gib(model: torch.nn.Module) -> float:
    total = 0
    for p in model.parameters():
        inner = [getattr(p, n) for n in ("qdata", "scale") if hasattr(p, n)] or [p]
        total += sum(t.numel() * t.element_size() for t in inner)
    return round(total / 2**30, 1)


def sustained(fn, seconds: float) -> dict:
    """`fn` called back to back for `seconds` (synchronised every call) under power sampling: the GPU's power,
    clock and power-cap share at that load, and the energy of one call. The second half is reported apart:
    a lent H100 heats up under load (to 80+ C, where it also slows for heat), so the first seconds of a run
    are faster than its steady state and an option set measured after another one starts hotter."""
    times, power_by_half = [], []
    with torch.inference_mode():
        for half in (0, 1):
            with PowerSampler() as power:
                ends = time.perf_counter() + seconds / 2
                while time.perf_counter() < ends:
                    started = time.perf_counter()
                    fn()
                    torch.cuda.synchronize()
                    times.append((half, (time.perf_counter() - started) * 1e3))
            power_by_half.append(power)
    result = {"forwards": len(times), "ms_mean": round(sum(t for _, t in times) / len(times), 1)}
    steady = [t for half, t in times if half == 1]
    result["steady_ms_mean"] = round(sum(steady) / len(steady), 1) if steady else None
    result |= (power_by_half[1] if power_by_half[1].samples else power_by_half[0]).summary()
    if "watts_mean" in result and steady:
        result["joules_per_forward"] = round(result["watts_mean"] * result["steady_ms_mean"] / 1e3, 1)
    return result


GRAPH_SUFFIX = "+graph"
"""Option sets ending so replay the whole forward as one CUDA graph (bench only: the inputs here are the same
tensors every call). Per-block graphs (`reduce-overhead`) fail, since each block's output feeds the next; this
measures what the GPU's idle time between kernels (10-18 ms a forward in PROFILE rows) is worth."""


def graphed_forward(model: torch.nn.Module, v: object, a: object) -> object:
    """`model(v, a, None)` captured once as a CUDA graph (after a warm-up on a side stream, as torch's docs do),
    returned as a callable that replays it. One timestep per row is applied to the inputs first: the pre-hook's
    check reads values (a device sync), which a capture cannot hold; given shared ones, the hook does nothing."""
    from ltx2.speed import shared_timestep

    v, a = shared_timestep(v), shared_timestep(a)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        model(v, a, None)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        output = model(v, a, None)

    def replay() -> object:
        graph.replay()
        return output

    return replay


def main() -> None:
    sizes = [tuple(map(int, s.split("x"))) for s in os.environ.get("SIZES", "704x1280x121,1024x1536x121").split(",")]
    chosen = os.environ.get("OPTIONS", ",".join(OPTIONS)).split(",")
    out = Path(os.environ.get("OUT", "bench/results"))
    back_to_back = int(os.environ.get("BACK_TO_BACK", "0"))
    sustain_s = float(os.environ.get("SUSTAIN", "0"))
    inputs = {shape: anchor.inputs(*shape) for shape in sizes}
    reference: dict = {}
    rows = []
    info = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "rope": anchor.ROPE,
    }
    for name in chosen:
        torch.manual_seed(0)
        model, _ = anchor.build_model("default")
        started = time.perf_counter()
        if name.split("+")[0] in BENCH_FP8:
            BENCH_FP8[name.split("+")[0]](model)
        apply_speed_options(model, OPTIONS[name])
        prepare_s = time.perf_counter() - started
        for shape in sizes:
            v, a = inputs[shape]
            with torch.inference_mode():
                first = time.perf_counter()
                model(v, a, None)
                torch.cuda.synchronize()
                first_s = time.perf_counter() - first
                forward = lambda v=v, a=a, m=model: m(v, a, None)  # noqa: E731
                if name.endswith(GRAPH_SUFFIX):
                    forward = graphed_forward(model, v, a)
                ms, output = timed(forward)
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
            if back_to_back:
                with torch.inference_mode():
                    torch.cuda.synchronize()
                    started = time.perf_counter()
                    for _ in range(back_to_back):
                        forward()
                    torch.cuda.synchronize()
                row["ms_back_to_back"] = round((time.perf_counter() - started) * 1e3 / back_to_back, 1)
                with torch.inference_mode():  # host time to issue one forward: above `ms`, the CPU is the limit
                    torch.cuda.synchronize()
                    started = time.perf_counter()
                    forward()
                    row["ms_launch"] = round((time.perf_counter() - started) * 1e3, 1)
                    torch.cuda.synchronize()
            if sustain_s:
                row["sustained"] = sustained(forward, sustain_s)
            if os.environ.get("PROFILE"):
                with torch.inference_mode():
                    row["profile"] = kernel_profile(forward)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
            save_rows(out, "forward_speed.json", info, rows)
        model = output = forward = None
        gc.collect()
        torch.cuda.empty_cache()
    print(json.dumps(info))


if __name__ == "__main__":
    main()
