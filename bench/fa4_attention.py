"""FlashAttention-4's Hopper forward (CuTe DSL, PyPI `flash-attn-4`) against cuDNN SDPA, bf16, at the video
self-attention shapes: is there a faster bf16 attention kernel on an H100 than the one the farm uses?

The bf16 forward is ~1/3 attention (cuDNN through torch SDPA, 315 / 868 ms of 938 / 1 905 at 704x1280 /
1024x1536, bench/README.md), and the issue asks for "the fastest attention kernel the machine has". FA3 has
no wheel in the registries; FA4 (`flash_attn.cute`, pure Python + the CuTe DSL's compiler) has a Hopper
forward (`FlashAttentionForwardSm90`, compiled at the first call of a shape). Batch 1, 32 heads, head dim
128, non-causal; q, k, v random normal, RMS-normalised per head vector (LTX-2's q/k norm keeps them O(1)).
TFLOP/s = 4 * S^2 * H * D / time; medians of 20 synchronised calls after a warm-up. Error: max |x - ref| /
max |ref| against cuDNN's output (for scale, cuDNN vs flash SDPA differ by ~7e-3 on the whole model).
FA4's tile shapes are tried too: its Python default (128 x 128) and the FA3 C++ one (128 x 176).

    PYTHONPATH=<site with flash-attn-4 + nvidia-cutlass-dsl>:. OUT=$OUT python3 bench/fa4_attention.py
    env: SIZES=14080,24576 (video tokens; QxKV for cross-attention, e.g. 24576x1024 for the text layer);
         TILES=128x128,128x176; HEAD_DIM=128 (64: the audio-video cross-attentions, inner dim 2 048)
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, DIM = 32, int(os.environ.get("HEAD_DIM", "128"))


def timed(fn, iters: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref.float()).abs().max() / ref.float().abs().max())


def matmul_row(tokens: int, variant: str, ms: float, flop: int) -> dict:
    """One timed variant of a matmul bench (ff_epilogue.py, qkv_matmul.py): its time and TFLOP/s."""
    return {"tokens": tokens, "variant": variant, "ms": round(ms, 3), "tflops": round(flop / ms / 1e9, 1)}


def write_rows(out: Path, filename: str, rows: list[dict]) -> None:
    """A bench's rows as JSON under `out`, with the device and torch version they were measured with."""
    out.mkdir(parents=True, exist_ok=True)
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    (out / filename).write_text(json.dumps({"info": info, "rows": rows}, indent=1))


def candidates(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fa4, tiles) -> dict:
    """The kernels to time on [B, S, H, D] q, k, v; each returns [B, S, H, D]."""
    heads_first = [t.transpose(1, 2) for t in (q, k, v)]  # what ltx-core hands SDPA: strided views

    def sdpa(backend: SDPBackend) -> torch.Tensor:
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(*heads_first).transpose(1, 2)

    kernels = {
        "cudnn_sdpa": lambda: sdpa(SDPBackend.CUDNN_ATTENTION),
        "flash_sdpa": lambda: sdpa(SDPBackend.FLASH_ATTENTION),
    }
    if fa4 is not None:
        kernels["fa4"] = lambda: fa4.flash_attn_func(q, k, v)[0]
        kernels["fa4_split_kv"] = lambda: fa4.flash_attn_func(q, k, v, num_splits=0)[0]  # its split heuristic
        for tile_m, tile_n in tiles:
            kernels[f"fa4_{tile_m}x{tile_n}"] = lambda m=tile_m, n=tile_n: fa4._flash_attn_fwd(q, k, v, tile_mn=(m, n))[
                0
            ]
    return kernels


def main() -> None:
    out = Path(os.environ.get("OUT", "bench/results"))
    sizes = os.environ.get("SIZES", "14080,24576").split(",")
    tiles = [tuple(map(int, t.split("x"))) for t in os.environ.get("TILES", "128x128,128x176").split(",")]
    rows: list[dict] = []
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    try:
        from flash_attn.cute import interface as fa4
    except Exception as exc:  # recorded: the point is whether it imports there at all
        fa4 = None
        info["fa4_import_error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(info), flush=True)
    for size in sizes:
        q_tokens, kv_tokens = (int(n) for n in (size.split("x") * 2)[:2])
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (
            F.rms_norm(torch.randn(1, n, HEADS, DIM, device="cuda", generator=gen), (DIM,)).bfloat16()
            for n in (q_tokens, kv_tokens, kv_tokens)
        )
        flop = 4 * q_tokens * kv_tokens * HEADS * DIM
        kernels = candidates(q, k, v, fa4, tiles)
        reference = kernels["cudnn_sdpa"]()
        for name, fn in kernels.items():
            row: dict = {"tokens": q_tokens, "kv_tokens": kv_tokens, "kernel": name}
            try:
                started = time.perf_counter()
                first = fn()
                torch.cuda.synchronize()
                row["first_call_s"] = round(time.perf_counter() - started, 2)
                ms = timed(fn)
                row |= {"ms": round(ms, 3), "tflops": round(flop / ms / 1e9, 1), "rel_err": rel(first, reference)}
            except Exception as exc:  # a kernel that refuses a shape is a result
                row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "fa4_attention.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
