"""Anchor: the official ltx-core 19B audio+video transformer, random weights, one GPU.

Times one forward pass (the unit of every denoising step) at the resolutions a farm
meets, and reports achieved TFLOP/s from an analytic FLOP count. Weights are random:
speed does not depend on their values.
"""

import json
import os
import sys
import time

import torch

from ltx_core.components.noisers import GaussianNoiser
from ltx_core.guidance.perturbations import BatchedPerturbationConfig
from ltx_core.model.transformer.model_configurator import LTXModelConfigurator
from ltx_core.types import VideoPixelShape
from ltx_pipelines.utils.helpers import modality_from_latent_state, noise_audio_state, noise_video_state
from ltx_pipelines.utils.types import PipelineComponents

DEV = torch.device(os.environ.get("DEVICE", "cuda"))
DT = torch.bfloat16
CTX_TOKENS = int(os.environ.get("CTX_TOKENS", "1024"))
CAPTION_CH = 3840  # Gemma-3-12B hidden size


def cuda(fn, *a):
    return getattr(torch.cuda, fn)(*a) if DEV.type == "cuda" else 0


CONFIG = {
    "transformer": {
        "caption_channels": CAPTION_CH,
        "num_layers": int(os.environ.get("LAYERS", "48")),
        "num_attention_heads": 32,
        "attention_head_dim": 128,
        "audio_num_attention_heads": 32,
        "audio_attention_head_dim": 64,
        # values the official configurator insists on
        "dropout": 0.0,
        "attention_bias": True,
        "num_vector_embeds": None,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000,
        "use_linear_projection": False,
        "only_cross_attention": False,
        "cross_attention_norm": True,
        "double_self_attention": False,
        "upcast_attention": False,
        "standardization_norm": "rms_norm",
        "norm_elementwise_affine": False,
        "qk_norm": "rms_norm",
        "positional_embedding_type": "rope",
        "use_audio_video_cross_attention": True,
        "share_ff": False,
        "av_cross_ada_norm": True,
        "use_middle_indices_grid": True,
    }
}
ROPE = os.environ.get("ROPE", "interleaved")
"""The shared anchor (../shared/bench) leaves ltx-core's code defaults: interleaved RoPE, float32 frequencies.
The real 19B checkpoint's metadata says split RoPE with float64 frequencies (DESIGN.md); ROPE=split builds that."""
if ROPE == "split":
    CONFIG["transformer"] |= {"rope_type": "split", "frequencies_precision": "float64"}
elif ROPE != "interleaved":
    raise SystemExit(f"ROPE={ROPE!r}: use 'interleaved' (the shared anchor) or 'split' (the real checkpoint)")


def build_model(attn: str):
    cfg = json.loads(json.dumps(CONFIG))
    cfg["transformer"]["attention_type"] = attn
    with torch.device("meta"):
        m = LTXModelConfigurator.from_config(cfg)
    m = m.to_empty(device=DEV).to(DT)
    g = torch.Generator(device=DEV).manual_seed(0)
    n = 0
    for p in m.parameters():
        p.data.normal_(0, 0.02, generator=g)
        n += p.numel()
    for b in m.buffers():
        if b.is_floating_point():
            b.data.normal_(0, 0.02, generator=g)
    m.eval().requires_grad_(False)
    if os.environ.get("COMPILE"):
        for i, blk in enumerate(m.transformer_blocks):
            m.transformer_blocks[i] = torch.compile(blk, dynamic=False)
    return m, n


def inputs(h, w, frames, fps=24.0):
    comp = PipelineComponents(dtype=DT, device=DEV)
    shape = VideoPixelShape(batch=1, frames=frames, height=h, width=w, fps=fps)
    gen = torch.Generator(device=DEV).manual_seed(1)
    vs, _ = noise_video_state(shape, GaussianNoiser(gen), [], comp, DT, DEV)
    aus, _ = noise_audio_state(shape, GaussianNoiser(gen), [], comp, DT, DEV)
    sigma = torch.tensor([0.7], device=DEV)
    vctx = torch.randn(1, CTX_TOKENS, CAPTION_CH, device=DEV, dtype=DT)
    actx = torch.randn(1, CTX_TOKENS, CAPTION_CH, device=DEV, dtype=DT)
    v = modality_from_latent_state(vs, vctx, sigma)
    a = modality_from_latent_state(aus, actx, sigma)
    return v, a


def flops(nv, na, layers, ctx):
    # per layer: video self-attn + cross-attn(text) + FF(4x); audio same at 2048; a<->v cross both ways
    dv, da = 4096, 2048
    f = 0
    f += 2 * nv * (4 * dv * dv) + 4 * nv * nv * dv  # video self-attn proj + scores
    f += 2 * nv * (2 * dv * dv) + 2 * ctx * (2 * dv * dv) + 4 * nv * ctx * dv  # video text cross-attn
    f += 2 * nv * (8 * dv * dv)  # video FF (4x, two mats)
    f += 2 * na * (4 * da * da) + 4 * na * na * da
    f += 2 * na * (2 * da * da) + 2 * ctx * (2 * da * da) + 4 * na * ctx * da
    f += 2 * na * (8 * da * da)
    # a<->v cross-attn at audio width: q from one, kv from other, both directions
    f += 2 * (nv + na) * (4 * da * dv) + 8 * nv * na * da
    return f * layers


def sdpa_ctx():
    name = os.environ.get("SDPA_BACKEND")
    if not name:
        import contextlib

        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [
            {
                "cudnn": SDPBackend.CUDNN_ATTENTION,
                "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION,
            }[name]
        ]
    )


def time_fwd(m, v, a, iters=5):
    pert = BatchedPerturbationConfig.empty(1)
    with torch.inference_mode(), sdpa_ctx():
        for _ in range(2):
            m(v, a, pert)
        if DEV.type == "cuda":
            torch.cuda.synchronize()
        ts = []
        for _ in range(iters):
            t = time.perf_counter()
            m(v, a, pert)
            if DEV.type == "cuda":
                torch.cuda.synchronize()
            ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    print("torch", torch.__version__, torch.cuda.get_device_name(0) if DEV.type == "cuda" else "cpu", flush=True)
    sizes = [
        tuple(map(int, s.split("x")))
        for s in os.environ.get("SIZES", "512x768x121,704x1280x121,1024x1536x121,704x1280x241").split(",")
    ]
    attns = sys.argv[1:] or ["default"]
    rows = []
    for attn in attns:
        t0 = time.time()
        m, n = build_model(attn)
        print(
            f"attn={attn} params={n / 1e9:.2f}B built in {time.time() - t0:.1f}s "
            f"mem={cuda('memory_allocated') / 2**30:.1f}GiB",
            flush=True,
        )
        for h, w, f in sizes:
            v, a = inputs(h, w, f)
            nv, na = v.latent.shape[1], a.latent.shape[1]
            cuda("reset_peak_memory_stats")
            try:
                ms = time_fwd(m, v, a)
            except torch.OutOfMemoryError:
                print(f"{h}x{w}x{f}: OOM", flush=True)
                cuda("empty_cache")
                continue
            fl = flops(nv, na, len(m.transformer_blocks), CTX_TOKENS)
            peak = cuda("max_memory_allocated") / 2**30
            r = dict(
                attn=attn,
                sdpa=os.environ.get("SDPA_BACKEND", "auto"),
                compiled=bool(os.environ.get("COMPILE")),
                h=h,
                w=w,
                frames=f,
                video_tokens=nv,
                audio_tokens=na,
                fwd_ms=round(ms, 1),
                tflops=round(fl / ms / 1e9, 1),
                peak_gib=round(peak, 1),
            )
            rows.append(r)
            print(json.dumps(r), flush=True)
            del v, a
            cuda("empty_cache")
        del m
        cuda("empty_cache")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "anchor_ltx_core.json"), "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
