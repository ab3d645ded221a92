"""Does the memory layout of q/k/v change cuDNN attention's speed on this GPU?

The compiled blocks run the same cuDNN kernel as the official eager path but measured 10-15 % slower
attention in the forward profile (H100, 2026-11-26). Eager hands SDPA [B, H, S, D] views of [B, S, H, D]
tensors; inductor may hand it contiguous [B, H, S, D]. This times both layouts alone (no other kernels
around), at the video self-attention shapes of 704x1280x121 and 1024x1536x121.

    python bench/attention_layout.py     # JSON lines
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def timed(fn, iters: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3


def main() -> None:
    heads, dim = 32, 128
    for tokens in (14080, 24576):
        bshd = [torch.randn(1, tokens, heads, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
        layouts = {
            "bshd_views (eager)": [t.transpose(1, 2) for t in bshd],
            "bhsd_contiguous": [t.transpose(1, 2).contiguous() for t in bshd],
        }
        flops = 4 * tokens * tokens * heads * dim
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
            for name, (q, k, v) in layouts.items():
                with sdpa_kernel(backend):
                    ms = timed(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v))
                print(
                    json.dumps(
                        {
                            "tokens": tokens,
                            "backend": backend.name,
                            "layout": name,
                            "ms": round(ms, 3),
                            "tflops": round(flops / ms / 1e9, 1),
                        }
                    ),
                    flush=True,
                )
    print(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
