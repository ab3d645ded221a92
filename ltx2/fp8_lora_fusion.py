"""The official scaled-FP8 LoRA fusion in two Triton passes: the same weights, bit for bit, without float32 copies.

ltx-core fuses a LoRA delta into a scaled-FP8 weight (`fuse_loras._fuse_delta_with_scaled_fp8`) by dequantising
the whole weight to float32, adding the delta, taking the amax and requantising: about ten full-size float32
kernels, ~66 bytes of memory traffic per weight element. On a 19B FP8 worker that fusion of the distilled LoRA,
before every stage 2, would be the largest piece of a lone job's time outside the model (bench/README.md). Here the same
float32 arithmetic runs in registers: one pass reads the FP8 weight and the bf16 delta for the amax, a second
requantises in place (7 bytes per element). It is the official arithmetic operation for operation (a multiply
then an add, never a fused multiply-add; the new scale as torch computes `fp8_max / max_abs`: an IEEE reciprocal,
then a multiply; round-to-nearest-even into e4m3), so the fused weights equal the official fusion's:
`bench/lora_fusion.py` checks every tensor of the 19B model on a GPU.
"""

from __future__ import annotations

import torch

from ltx2.fp8_linear import FP8, FP8_MAX

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only torch build: the official fusion runs instead
    triton = None

BLOCK = 4096
"""Weight elements per Triton program."""

if triton is not None:

    @triton.jit
    def _amax_kernel(weight_ptr, scale_ptr, delta_ptr, stats_ptr, n, BLOCK: tl.constexpr):
        """stats[0] = max |weight * scale + delta| (atomically, over blocks; zeroed before), stats[1] = scale."""
        block = tl.program_id(0)
        offsets = block * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        scale = tl.load(scale_ptr)
        weight = tl.load(weight_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        delta = tl.load(delta_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        fused = weight * scale + delta
        tl.atomic_max(stats_ptr, tl.max(tl.abs(fused), axis=0))
        if block == 0:
            tl.store(stats_ptr + 1, scale)

    @triton.jit
    def _requantise_kernel(
        weight_ptr, scale_ptr, delta_ptr, stats_ptr, out_ptr, n, FP8_LIMIT: tl.constexpr, BLOCK: tl.constexpr
    ):
        """out = (weight * old scale + delta) * new scale, clamped to ±FP8_LIMIT, in `out_ptr`'s dtype (the
        weight itself, in place, on a GPU); block 0 writes the new weight scale. The new scale is ltx-core's
        `fp8_max / max_abs`, which torch evaluates as `reciprocal(max_abs) * fp8_max` (IEEE division, then a
        multiply); the weight scale is its reciprocal."""
        block = tl.program_id(0)
        offsets = block * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        new_scale = tl.math.div_rn(1.0, tl.load(stats_ptr)) * FP8_LIMIT
        weight = tl.load(weight_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        delta = tl.load(delta_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        fused = weight * tl.load(stats_ptr + 1) + delta
        scaled = tl.minimum(tl.maximum(fused * new_scale, -FP8_LIMIT), FP8_LIMIT)
        tl.store(out_ptr + offsets, scaled.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)
        if block == 0:
            tl.store(scale_ptr, tl.math.div_rn(1.0, new_scale))


def applies(weight: torch.Tensor, weight_scale: torch.Tensor) -> bool:
    """Whether `fuse_into_scaled_fp8_` takes this weight: an FP8 weight on a GPU stored as `ScaledMMFp8Linear`
    stores it (the [in, out] transpose of a contiguous [out, in] tensor) with one float32 scale, and Triton."""
    return (
        triton is not None
        and weight.is_cuda
        and weight.dtype == FP8
        and weight.dim() == 2
        and weight.t().is_contiguous()
        and weight_scale.numel() == 1
        and weight_scale.dtype == torch.float32
    )


def _fuse(weight_rows: torch.Tensor, weight_scale: torch.Tensor, delta: torch.Tensor, out: torch.Tensor) -> None:
    """Both passes; `weight_scale` is replaced by the new one. Two launches and one fill per weight: at 19B
    (~1,200 fused layers) the host's launch time is most of a fusion."""
    n = weight_rows.numel()
    blocks = triton.cdiv(n, BLOCK)
    stats = torch.zeros(2, dtype=torch.float32, device=weight_rows.device)
    _amax_kernel[(blocks,)](weight_rows, weight_scale, delta, stats, n, BLOCK, enable_fp_fusion=False)
    _requantise_kernel[(blocks,)](
        weight_rows, weight_scale, delta, stats, out, n, FP8_MAX, BLOCK, enable_fp_fusion=False
    )


@torch.no_grad()
def fuse_into_scaled_fp8_(weight: torch.Tensor, weight_scale: torch.Tensor, delta: torch.Tensor) -> None:
    """In place: `weight` and `weight_scale` become the official `_fuse_delta_with_scaled_fp8(delta, weight, …)`
    result. `delta` is the bf16 [out, in] sum of the LoRA products (`fuse_loras._prepare_deltas`). Check
    `applies` first."""
    rows = weight.t()
    if delta.shape != rows.shape:
        raise ValueError(f"LoRA delta of shape {tuple(delta.shape)} for a weight of {tuple(rows.shape)}")
    _fuse(rows, weight_scale, delta.contiguous(), rows)


def requantised_float32(
    weight: torch.Tensor, weight_scale: torch.Tensor, delta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clamped, scaled float32 values the second pass casts to e4m3, as a [out, in] tensor, and the new
    weight scale: the two kernels' arithmetic, for tests in Triton's CPU interpreter (whose e4m3 cast rounds
    differently from a GPU's, so the cast is left to torch there)."""
    rows = weight.t()
    out = torch.empty(rows.shape, dtype=torch.float32, device=rows.device)
    new_scale = weight_scale.clone()
    _fuse(rows, new_scale, delta.contiguous(), out)
    return out, new_scale
