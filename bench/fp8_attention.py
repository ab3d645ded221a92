"""Can cuDNN's FP8 attention be called from Python on an H100, how fast is it against bf16 cuDNN attention,
and how large is its error?

The FP8 forward leaves attention in bf16 (46 % of the FLOPs at 1024x1536, see bench/README.md), and torch
SDPA offers no FP8 attention on the GPU image. The cuDNN frontend's Python graph API (PyPI
`nvidia-cudnn-frontend` 1.32.0, `cudnn.pygraph().sdpa_fp8`) reaches the cuDNN backend's per-tensor-scaled FP8
forward. This times it against torch SDPA on the cuDNN backend in bf16 at the video self-attention shapes of
704x1280x121 (14 080 tokens) and 1024x1536x121 (24 576): batch 1, 32 heads, head dim 128, non-causal; q, k, v
random normal, RMS-normalised per head vector (like LTX-2's qk norm), so all values are O(1).
TFLOP/s = 4 * S^2 * H * D / time; times are medians of 10 synchronised calls after a warm-up.

FP8 recipe, all E4M3: q, k, v scaled by 448 / amax per tensor (descale = amax / 448); the softmax output P by
scale_s = 448 (descale_s = 1/448). O is FP8 as well: a bf16 O is Blackwell-only (cuDNN >= 9.13), per the
frontend's support checks. scale_o = 448 / (1.1 * amax of the bf16 reference) -- an oracle that a deployment
would replace by the Amax_O of an earlier call -- and O is dequantised to compare with the reference:
max |fp8 - ref| / max |ref| and mean |fp8 - ref| / mean |ref|. Quantising q, k, v (amax, scale, cast) and
dequantising O are timed apart. The graph is built once per shape; if it fails, the row carries each
attempt's error (q/k/v/O as [B, H, S, D] views of [B, S, H, D], then contiguous [B, H, S, D]; without Stats,
then with), and a failed `import cudnn` is recorded too.

    pip install --no-deps --target /tmp/cudnnsite \\
        nvidia_cudnn_frontend-1.32.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
    PYTHONPATH=/tmp/cudnnsite:. OUT=$OUT python3 bench/fp8_attention.py    # -> $OUT/fp8_attention.json
    env: SIZES=14080,24576 (video tokens)

The wheel declares nvidia-cutlass-dsl and apache-tvm-ffi; the graph API needs neither (read in its sources;
on a CPU-only Python 3.12, `import cudnn` and building this graph imported no cutlass, tvm_ffi or cuda module):
the pybind module links no cuDNN and dlopens libcudnn.so.9 (LD_LIBRARY_PATH first, then site-packages
nvidia/cudnn/lib, then the loader's search: normally the copy torch already loaded; the env row lists the
files loaded), and the CuTe DSL engines are imported lazily, a missing DSL counting as a decline, so planning
falls to the cuDNN backend, the path wanted here (none of those engines serves FP8 on Hopper). cuda-python is
optional as well (the frontend falls back to ctypes when the graph is given a handle).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from fa4_attention import timed  # bench/: the script's folder
from torch.nn.attention import SDPBackend, sdpa_kernel

from ltx2.fp8_attention import quantize_tensor

OUT = Path(os.environ.get("OUT", "bench/results"))
SIZES = [int(s) for s in os.environ.get("SIZES", "14080,24576").split(",") if s]
BATCH, HEADS, DIM = 1, 32, 128
E4M3_MAX = 448.0
O_HEADROOM = 1.1
SCALARS = ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
ATTEMPTS = [("bshd_views", False), ("bshd_views", True), ("bhsd_contiguous", False), ("bhsd_contiguous", True)]
ITERS = 10  # synchronised calls per median (the docstring's "medians of 10")


def rms_normed(tokens: int) -> torch.Tensor:
    x = torch.randn(BATCH, tokens, HEADS, DIM, device="cuda")
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)


def quantise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor E4M3 as the farm's FP8 attention does it, with the descale as a [1, 1, 1, 1] tensor."""
    values, descale = quantize_tensor(x)
    return values, descale.reshape(1, 1, 1, 1)


def build_fp8(cudnn, handle, q, k, v, o, stats):
    """The sdpa_fp8 graph for these buffers ([B, H, S, D], any strides): (graph, IR tensors by name)."""
    fp8, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    g = cudnn.pygraph(io_data_type=fp8, intermediate_data_type=f32, compute_data_type=f32, handle=handle)
    t = {
        n: g.tensor(name=n, dim=list(x.shape), stride=list(x.stride()), data_type=fp8)
        for n, x in zip("qkv", (q, k, v), strict=True)
    }
    t |= {n: g.tensor(name=n, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=f32) for n in SCALARS}
    # positional order: q, k, v, descale_q, descale_k, descale_v, descale_s, scale_s, scale_o
    t["o"], t["stats"], t["amax_s"], t["amax_o"] = g.sdpa_fp8(
        t["q"],
        t["k"],
        t["v"],
        *(t[n] for n in SCALARS),
        generate_stats=stats,
        attn_scale=1 / math.sqrt(DIM),
        name="attn",
    )
    t["o"].set_output(True).set_dim(list(o.shape)).set_stride(list(o.stride())).set_data_type(fp8)
    for n in ("amax_s", "amax_o"):
        t[n].set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)
    if stats:
        b, h, s, _ = o.shape
        t["stats"].set_output(True).set_dim([b, h, s, 1]).set_stride([h * s, s, 1, 1]).set_data_type(f32)
    else:
        del t["stats"]
    steps = [
        ("validate", g.validate),
        ("build_operation_graph", g.build_operation_graph),
        ("create_execution_plans", lambda: g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])),
        ("check_support", g.check_support),
        ("build_plans", g.build_plans),
    ]
    for stage, step in steps:
        try:
            step()
        except Exception as exc:
            raise RuntimeError(f"{stage}: {type(exc).__name__}: {exc}") from exc
    return g, t


def fp8_row(cudnn, handle, cache, tokens, qkv, ref, ref_ms) -> dict:
    flops = 4 * tokens * tokens * HEADS * DIM
    row: dict = {"tokens": tokens, "kind": "cudnn_fp8_e4m3", "failed_attempts": []}
    quant_ms = timed(lambda: [quantise(x) for x in qkv], ITERS)
    (q8, dq), (k8, dk), (v8, dv) = (quantise(x) for x in qkv)  # [B, S, H, D]
    amax_ref = ref.abs().amax().float().item()
    scale_o = E4M3_MAX / (O_HEADROOM * amax_ref)
    one = torch.ones(1, 1, 1, 1, device="cuda")
    scalars = {"descale_q": dq, "descale_k": dk, "descale_v": dv, "descale_s": one / E4M3_MAX}
    scalars |= {"scale_s": one * E4M3_MAX, "scale_o": one * scale_o}
    for layout, stats in ATTEMPTS:
        views = [x.transpose(1, 2) for x in (q8, k8, v8)]  # [B, H, S, D] strided
        if layout == "bhsd_contiguous":
            views = [x.contiguous() for x in views]
        q, k, v = views
        o = torch.empty_like(v)  # same layout as v
        buffers = {"q": q, "k": k, "v": v, "o": o, **scalars}
        buffers |= {n: torch.zeros(1, 1, 1, 1, device="cuda") for n in ("amax_s", "amax_o")}
        if stats:
            buffers["stats"] = torch.empty(BATCH, HEADS, tokens, 1, device="cuda")
        try:
            key = (tokens, layout, stats)
            if key not in cache:
                start = time.perf_counter()
                g, t = build_fp8(cudnn, handle, q, k, v, o, stats)
                workspace = torch.empty(g.get_workspace_size(), device="cuda", dtype=torch.uint8)
                cache[key] = (g, t, workspace, time.perf_counter() - start)
            g, t, workspace, build_s = cache[key]
            pack = {t[n]: buffers[n] for n in t}
            attn_ms = timed(
                lambda g=g, pack=pack, workspace=workspace: g.execute(pack, workspace, handle=handle), ITERS
            )
        except Exception as exc:
            row["failed_attempts"].append(f"{layout}, stats={stats}: {type(exc).__name__}: {exc}"[:4000])
            continue
        inv_o = torch.tensor(1 / scale_o, device="cuda")
        dequant_ms = timed(lambda o=o, inv_o=inv_o: o.to(torch.bfloat16).mul_(inv_o), ITERS)
        out = o.float() / scale_o
        ref32 = ref.float()
        diff = (out - ref32).abs()
        try:
            engine = g.selected_engine.name if g.selected_engine is not None else "cudnn backend"
            plan = g.get_plan_name_at_index(getattr(g, "_plan_index", 0))
        except Exception as exc:
            engine = plan = f"? ({type(exc).__name__}: {exc})"
        row |= {
            "layout": layout,
            "generate_stats": stats,
            "engine": engine,
            "plan": plan,
            "build_s": round(build_s, 2),
            "workspace_mib": round(workspace.numel() / 2**20, 1),
            "attn_ms": round(attn_ms, 3),
            "tflops": round(flops / attn_ms / 1e9, 1),
            "quant_qkv_ms": round(quant_ms, 3),
            "dequant_o_ms": round(dequant_ms, 3),
            "speedup_attn_vs_bf16": round(ref_ms / attn_ms, 3),
            "speedup_with_quant_vs_bf16": round(ref_ms / (attn_ms + quant_ms + dequant_ms), 3),
            "rel_max_err": (diff.max() / ref32.abs().max()).item(),
            "rel_mean_abs_err": (diff.mean() / ref32.abs().mean()).item(),
            "nan_count": int(torch.isnan(out).sum().item()),
            "amax_ref": amax_ref,
            "amax_o_cudnn": buffers["amax_o"].item(),
            "amax_s_cudnn": buffers["amax_s"].item(),
            "scale_o": scale_o,
        }
        return row
    row["error"] = "every attempt failed"
    return row


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    env = {
        "kind": "env",
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_cudnn": torch.backends.cudnn.version(),
    }
    cudnn = handle = None
    try:
        import cudnn

        handle = cudnn.create_handle()
        cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
        env |= {"cudnn_frontend": cudnn.__version__, "cudnn_backend": cudnn.backend_version_string()}
    except Exception as exc:
        env["cudnn_import_error"] = f"{type(exc).__name__}: {exc}"
        cudnn = None
    with open("/proc/self/maps") as maps:  # which libcudnn copies this process runs (torch's, the frontend's)
        env["libcudnn_loaded"] = sorted({line.split()[-1] for line in maps if "/libcudnn.so" in line})
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        (OUT / "fp8_attention.json").write_text(json.dumps(rows, indent=1) + "\n")

    emit(env)
    cache: dict = {}
    for tokens in SIZES:
        qkv = [rms_normed(tokens) for _ in range(3)]  # [B, S, H, D]
        q, k, v = (x.transpose(1, 2) for x in qkv)  # [B, H, S, D] views, as ltx-core hands them to SDPA
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            ref = F.scaled_dot_product_attention(q, k, v)
            ref_ms = timed(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), ITERS)
        flops = 4 * tokens * tokens * HEADS * DIM
        emit(
            {
                "tokens": tokens,
                "kind": "torch_sdpa_cudnn_bf16",
                "ms": round(ref_ms, 3),
                "tflops": round(flops / ref_ms / 1e9, 1),
            }
        )
        if cudnn is None:
            emit({"tokens": tokens, "kind": "cudnn_fp8_e4m3", "error": env["cudnn_import_error"]})
        else:
            try:
                emit(fp8_row(cudnn, handle, cache, tokens, qkv, ref, ref_ms))
            except Exception as exc:
                emit({"tokens": tokens, "kind": "cudnn_fp8_e4m3", "error": f"{type(exc).__name__}: {exc}"[:4000]})
        del qkv, q, k, v, ref
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
