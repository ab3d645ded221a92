"""FP8 attention for the video self-attention, through cuDNN's FP8 flash attention (Hopper and newer).

Why: with FP8 matmuls the 19B forward's time is half attention, and torch's SDPA has no FP8 path. cuDNN's
`sdpa_fp8` (reached through the `nvidia-cudnn-frontend` package) runs the video self-attention well ahead of
bf16 cuDNN (bench/README.md, "Numbers behind the code"). q, k and v are quantised to e4m3 with one scale per
tensor (q and k: a bound known from their RMSNorm's weight, `normed_descale`; v: its abs-max), the softmax
probabilities with the fixed scale 448 (they lie in [0, 1]), and the output with v's scale: an attention
output is a convex combination of v's rows, so it never exceeds v's abs-max and cannot overflow. Inside a
compiled block the abs-max, scaling and casts fuse into the kernels around the call, which is a
`torch.library` custom op so that dynamo traces through it.

Only the video self-attention (`attn1`, no mask, the ~46 % of a forward's FLOPs at 1024x1536) is changed;
cross-attention, audio and masked calls keep the official path.
"""

from __future__ import annotations

import math
from typing import Any

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)


class Fp8AttentionError(RuntimeError):
    """cuDNN FP8 attention cannot run here."""


def quantize_tensor(x: torch.Tensor, descale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 values and the float32 descale (`x ≈ values * descale`), one scale for the whole tensor: its
    abs-max / 448 unless a `descale` is given."""
    if descale is None:
        descale = x.detach().abs().amax().float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / descale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), descale


def normed_descale(norm: torch.nn.RMSNorm) -> torch.Tensor:
    """A descale that no output of `norm` can exceed, even after RoPE: RMSNorm over D features leaves
    sum((y_i / w_i)^2) <= D, so |y_i| <= sqrt(D) * max|w|, and RoPE only rotates pairs of features. Known
    before q and k exist, it lets their cast to e4m3 fuse into the kernel that writes them, where an
    abs-max needs a pass over the whole tensor first. Precision is the same (e4m3 is floating point: a
    smaller scale only moves values down its exponent range, far from the subnormals)."""
    features = math.prod(norm.normalized_shape)
    return math.sqrt(features) * norm.weight.detach().abs().amax().float().clamp(min=1e-12) / E4M3_MAX


_GRAPHS: dict[tuple, Any] = {}
_HANDLES: dict[int, Any] = {}


def _cudnn() -> Any:
    try:
        import cudnn
    except ImportError as error:
        raise Fp8AttentionError(
            "fp8 attention needs the cuDNN frontend: pip install nvidia-cudnn-frontend (a CUDA GPU, Hopper or newer)"
        ) from error
    return cudnn


def _handle(device: torch.device) -> Any:
    if device.index not in _HANDLES:
        _HANDLES[device.index] = _cudnn().create_handle()
    return _HANDLES[device.index]


def attention_graph(
    q: torch.Tensor,
    scale: float,
    heuristics: tuple[str, ...] = ("A", "FALLBACK"),
    build_all: bool = False,
    v: torch.Tensor | None = None,
) -> tuple[Any, dict[str, Any], torch.Tensor]:
    """A new `sdpa_fp8` graph for [B, S, H, D] e4m3 buffers of q's shape and strides (v's own strides if
    given): (graph, IR tensors, workspace). Plans come from the named cuDNN heuristics modes; the first that
    builds runs, or with `build_all` every one is built (bench/fp8_attention_plans.py times them)."""
    cudnn = _cudnn()
    handle = _handle(q.device)
    fp8, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    graph = cudnn.pygraph(io_data_type=fp8, intermediate_data_type=f32, compute_data_type=f32, handle=handle)
    view = q.transpose(1, 2)  # [B, H, S, D] over [B, S, H, D] memory, as ltx-core hands q to SDPA
    dims, strides = list(view.shape), list(view.stride())
    t = {n: graph.tensor(name=n, dim=dims, stride=strides, data_type=fp8) for n in ("q", "k")}
    v_strides = strides if v is None else list(v.transpose(1, 2).stride())
    t["v"] = graph.tensor(name="v", dim=dims, stride=v_strides, data_type=fp8)
    scalars = ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
    t |= {n: graph.tensor(name=n, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=f32) for n in scalars}
    t["o"], _stats, t["amax_s"], t["amax_o"] = graph.sdpa_fp8(
        t["q"], t["k"], t["v"], *(t[n] for n in scalars), generate_stats=False, attn_scale=scale, name="attn"
    )
    t["o"].set_output(True).set_dim(dims).set_stride(strides).set_data_type(fp8)
    for n in ("amax_s", "amax_o"):
        t[n].set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([getattr(cudnn.heur_mode, mode) for mode in heuristics])
    graph.check_support()
    if build_all:
        graph.build_plans(cudnn.build_plan_policy.ALL)
    else:
        graph.build_plans()
    workspace = torch.empty(graph.get_workspace_size(), device=q.device, dtype=torch.uint8)
    return graph, t, workspace


def _graph(q: torch.Tensor, scale: float) -> tuple[Any, dict[str, Any], torch.Tensor]:
    """The cached graph for q's shape and device (`attention_graph`)."""
    key = (tuple(q.shape), q.device.index, scale)
    if key not in _GRAPHS:
        _GRAPHS[key] = attention_graph(q, scale)
    return _GRAPHS[key]


def graph_buffers(
    tensors: dict[str, Any],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    descale_q: torch.Tensor,
    descale_k: torch.Tensor,
    descale_v: torch.Tensor,
) -> dict[Any, torch.Tensor]:
    """The variant pack of one call: the graph's IR tensors bound to [B, S, H, D] e4m3 buffers (viewed as
    [B, H, S, D]) and the float32 scales; the output is at v's scale."""
    one = torch.ones(1, 1, 1, 1, device=q.device)
    buffers = {
        "q": q.transpose(1, 2),
        "k": k.transpose(1, 2),
        "v": v.transpose(1, 2),
        "o": out.transpose(1, 2),
        "descale_q": descale_q.reshape(1, 1, 1, 1),
        "descale_k": descale_k.reshape(1, 1, 1, 1),
        "descale_v": descale_v.reshape(1, 1, 1, 1),
        "descale_s": one / E4M3_MAX,
        "scale_s": one * E4M3_MAX,
        "scale_o": 1 / descale_v.reshape(1, 1, 1, 1),
        "amax_s": torch.empty(1, 1, 1, 1, device=q.device),
        "amax_o": torch.empty(1, 1, 1, 1, device=q.device),
    }
    return {tensors[n]: buffers[n] for n in tensors}


@torch.library.custom_op("ltx2::cudnn_sdpa_fp8", mutates_args=())
def cudnn_sdpa_fp8(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    descale_q: torch.Tensor,
    descale_k: torch.Tensor,
    descale_v: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of e4m3 q, k, v laid out [B, S, H, D]; the output is e4m3 at v's scale (`o * descale_v`)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the graph is built for this layout
    graph, tensors, workspace = _graph(q, scale)
    handle = _handle(q.device)
    _cudnn().set_stream(handle=handle, stream=torch.cuda.current_stream(q.device).cuda_stream)
    out = torch.empty_like(q)
    graph.execute(graph_buffers(tensors, q, k, v, out, descale_q, descale_k, descale_v), workspace, handle=handle)
    return out


@cudnn_sdpa_fp8.register_fake
def _(q, k, v, descale_q, descale_k, descale_v, scale):  # shapes only, for tracing
    return torch.empty_like(q)


class Fp8CudnnAttention:
    """An ltx-core attention callable `(q, k, v, heads, mask) -> out` ([B, S, H*D] in and out) running FP8
    cuDNN attention; masked calls fall back to the official PyTorch SDPA path. Given the layer's q/k norms,
    q and k are quantised with the norms' bound (`normed_descale`), v with its abs-max."""

    def __init__(self, q_norm: torch.nn.RMSNorm | None = None, k_norm: torch.nn.RMSNorm | None = None) -> None:
        from ltx_core.model.transformer.attention import PytorchAttention

        self.fallback = PytorchAttention()
        self.norms = (q_norm, k_norm)

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if mask is not None:
            return self.fallback(q, k, v, heads, mask)
        b, s, inner = q.shape
        dim = inner // heads
        descales = [None if norm is None else normed_descale(norm) for norm in self.norms] + [None]
        (q8, dq), (k8, dk), (v8, dv) = (
            quantize_tensor(t.view(b, -1, heads, dim), d) for t, d in zip((q, k, v), descales, strict=True)
        )
        out = torch.ops.ltx2.cudnn_sdpa_fp8(q8, k8, v8, dq, dk, dv, 1 / math.sqrt(dim))
        return (out.float() * dv).to(q.dtype).reshape(b, s, inner)


def apply_fp8_attention(velocity_model: torch.nn.Module) -> torch.nn.Module:
    """Give every block's video self-attention the FP8 cuDNN callable (before compiling the blocks)."""
    device = next(velocity_model.parameters()).device
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (9, 0):
        raise Fp8AttentionError(
            f"fp8 attention needs a Hopper-or-newer CUDA GPU (H100, H200, B200); this model is on {device}: "
            f"drop the fp8_attention option"
        )
    _cudnn()
    for block in velocity_model.transformer_blocks:
        block.attn1.attention_function = Fp8CudnnAttention(block.attn1.q_norm, block.attn1.k_norm)
    return velocity_model
