"""Attention from a few queries to many keys through torch's flash SDPA backend, which splits the keys over the
GPU's SMs (split-KV, "flash-decoding").

Why: in the video-to-audio cross-attention 126 audio tokens attend to 14 080-24 576 video tokens. cuDNN (what
the official path's SDPA picks) gives such a call one query tile per head, 32 thread blocks on a 132-SM H100,
where the flash backend splits the keys and is markedly faster (bench/README.md, "Numbers behind the
code"; FA4's split-KV forward is Blackwell-only). Same arithmetic as flash
attention anywhere; longer query sequences keep the layer's own kernel.
"""

from __future__ import annotations

import torch

MAX_QUERY_TOKENS = 256
"""Longest query sequence sent to the split-KV kernel: up to two 128-row query tiles per head, so 32 heads
leave most of a GPU's SMs idle unless the keys are split."""

MIN_KEY_TOKENS = 4096
"""Shortest key sequence worth splitting (at 126 x 1 024 both kernels take the same time: bench/README.md)."""


def splits_keys(q_tokens: int, k_tokens: int, head_dim: int, dtype: torch.dtype, masked: bool) -> bool:
    """Whether a call of this shape goes to the split-KV flash kernel: few queries, many keys, no mask, and
    what the flash backend takes (16-bit floats, head dims up to 256 in steps of 8)."""
    takes = dtype in (torch.bfloat16, torch.float16) and head_dim % 8 == 0 and head_dim <= 256
    return takes and not masked and q_tokens <= MAX_QUERY_TOKENS and k_tokens >= MIN_KEY_TOKENS


class SplitKvAttention:
    """An ltx-core attention callable `(q, k, v, heads, mask) -> out` ([B, S, H*D] in and out) that sends
    few-query, many-key calls on a CUDA GPU to torch's flash kernel and every other call to `inner`, the
    layer's own callable (compiled blocks have static shapes, so the choice is made once per shape)."""

    def __init__(self, inner: object) -> None:
        from ltx2.speed import traceable_attention

        self.inner = traceable_attention(inner)

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, q_tokens, inner = q.shape
        dim = inner // heads
        same_dtype = k.dtype == q.dtype and v.dtype == q.dtype
        if not (q.is_cuda and same_dtype and splits_keys(q_tokens, k.shape[1], dim, q.dtype, mask is not None)):
            return self.inner(q, k, v, heads, mask)
        q, k, v = (t.view(b, -1, heads, dim).transpose(1, 2) for t in (q, k, v))
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]
        return out.transpose(1, 2).reshape(b, q_tokens, inner)


def apply_split_kv_attention(velocity_model: torch.nn.Module) -> torch.nn.Module:
    """Wrap every ltx-core attention layer that runs the official attention or FA4 (after those are chosen,
    before the blocks are compiled); layers given another callable (a gang's sequence-parallel attention,
    FP8 attention) keep theirs."""
    from ltx_core.model.transformer.attention import Attention, AttentionFunction, PytorchAttention

    from ltx2.fa4_attention import Fa4Attention

    for module in velocity_model.modules():
        if isinstance(module, Attention) and isinstance(
            module.attention_function, AttentionFunction | PytorchAttention | Fa4Attention
        ):
            module.attention_function = SplitKvAttention(module.attention_function)
    return velocity_model
