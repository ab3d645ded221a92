"""bf16 attention through FlashAttention-4's forward kernel (`flash-attn-4` on PyPI, Hopper and Blackwell).

Why: a third of a compiled bf16 forward is attention, and FA4's Hopper forward (written in the CuTe DSL, compiled at the
first call of a shape) runs the video self-attention faster than cuDNN through torch SDPA (bench/README.md, "Numbers
behind the code"); the official FlashAttention-3 path has no wheel. Same arithmetic as flash attention anywhere (the
output differs from cuDNN's as torch's own flash backend does). The kernel is called through a `torch.library` custom op
so that compiled blocks trace through it; masked calls, other dtypes and GPUs the kernel does not serve keep the
official SDPA path.
"""

from __future__ import annotations

import functools

import torch

KERNEL_ARCHES = (9, 10)
"""Compute capability majors whose FA4 forward the farm uses: Hopper (H100/H200) and Blackwell (B200)."""

MIN_TOKENS = 8192
"""Shortest query and key sequence FA4 is given; shorter calls keep cuDNN SDPA: below it FA4's Python launch
costs what its kernel saves, or more (bench/README.md). So it serves the video self-attention at full
resolution, not stage 1, the audio or text layers."""


class Fa4AttentionError(RuntimeError):
    """FlashAttention-4 cannot run here."""


@functools.cache
def _interface():
    try:
        from flash_attn.cute import interface
    except ImportError as error:
        raise Fa4AttentionError(
            "fa4 attention needs FlashAttention-4: pip install '.[fa4]' (a Hopper or Blackwell GPU)"
        ) from error
    return interface


def fa4_available(device: torch.device | str) -> bool:
    """Whether FA4 serves this device: a Hopper or Blackwell CUDA GPU, and the package imports."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability(device)[0] not in KERNEL_ARCHES:
        return False
    try:
        _interface()
    except Fa4AttentionError:
        return False
    return True


@torch.library.custom_op("ltx2::fa4_attention", mutates_args=(), device_types="cuda")
def fa4_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal attention of q, k, v laid out [B, S, H, D] (scale 1/sqrt(D)); the output is [B, S, H, D]."""
    return _interface().flash_attn_func(q.contiguous(), k.contiguous(), v.contiguous())[0]


@fa4_attention.register_fake
def _(q, k, v):  # shapes only, for tracing
    return q.new_empty(*q.shape[:-1], v.shape[-1])


def kernel_serves(q: torch.Tensor, head_dim: int) -> bool:
    """What FA4's forward takes: 16-bit floats on a CUDA device, head dims of 8-256 in steps of 8."""
    return q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and head_dim % 8 == 0 and 8 <= head_dim <= 256


class Fa4Attention:
    """An ltx-core attention callable `(q, k, v, heads, mask) -> out` ([B, S, H*D] in and out) running FA4;
    masked calls, sequences shorter than `min_tokens` and inputs the kernel does not take run the official
    PyTorch SDPA path (compiled blocks have static shapes, so the choice is made once per shape)."""

    def __init__(self, min_tokens: int = MIN_TOKENS) -> None:
        from ltx_core.model.transformer.attention import PytorchAttention

        self.fallback = PytorchAttention()
        self.min_tokens = min_tokens

    def serves(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None) -> bool:
        """Whether this call goes to FA4 (else to the official SDPA path)."""
        long = min(q.shape[1], k.shape[1]) >= self.min_tokens
        same_dtype = k.dtype == q.dtype and v.dtype == q.dtype
        return long and mask is None and same_dtype and kernel_serves(q, q.shape[-1] // heads)

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not self.serves(q, k, v, heads, mask):
            return self.fallback(q, k, v, heads, mask)
        b, s, inner = q.shape
        dim = inner // heads
        out = torch.ops.ltx2.fa4_attention(*(t.view(b, -1, heads, dim) for t in (q, k, v)))
        return out.reshape(b, s, inner)


def apply_fa4_attention(velocity_model: torch.nn.Module) -> torch.nn.Module:
    """Give every ltx-core attention layer that still runs the official attention the FA4 callable (before
    compiling the blocks; layers given another callable, e.g. FP8 attention, keep theirs)."""
    from ltx_core.model.transformer.attention import Attention, AttentionFunction

    device = next(velocity_model.parameters()).device
    if not fa4_available(device):
        _interface()  # says what to install if that is what is missing
        raise Fa4AttentionError(
            f"fa4 attention needs a Hopper or Blackwell CUDA GPU (H100, H200, B200); this model is on {device}: "
            "drop the fa4_attention option"
        )
    for module in velocity_model.modules():
        if isinstance(module, Attention) and isinstance(module.attention_function, AttentionFunction):
            module.attention_function = Fa4Attention()
    return velocity_model
