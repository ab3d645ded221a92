"""FP8 matmuls for the transformer: ltx-core's own scaled-FP8 layer format, run by `torch._scaled_mm`.

ltx-core's `fp8_scaled_mm` quantization policy (made for its FP8 checkpoints) swaps Linear layers for
`FP8Linear`: the weight in e4m3, stored transposed (the column-major operand cuBLAS wants), one float32
scale per tensor. It leaves chosen layers in bf16 (`EXCLUDED_LAYER_SUBSTRINGS`: the embeddings and heads,
block 0 and the last five blocks), and its LoRA fusion handles that format (dequantise, add the delta,
re-quantise per tensor). It needs TensorRT-LLM for two calls: a static input quantiser (a calibrated
input scale stored in the checkpoint) and a cuBLAS FP8 matmul.

Here the format, the weight quantiser, the excluded layers and the LoRA fusion are the official ones, and
only those two calls change: the input is quantised per tensor on the fly (scale = amax / 448, so no
calibration is needed and any bf16 checkpoint can be quantised at load), and the matmul is
`torch._scaled_mm` (cuBLAS FP8 on Ada/Hopper; PyTorch's CPU kernel, per-tensor only, runs the same
code in the tests). Under compiled blocks the input's amax, scaling and cast fuse into the neighbouring
kernels. On a GPU each input row gets its own scale (the weight's one scale broadcast over its columns) and
cuBLAS accumulates in its fast FP8 mode: a row's amax fuses into the kernel that writes the row, and with
fast accumulation cuBLAS's row-wise kernel is as fast as its per-tensor one, where without it the row-wise
kernel is the slower (bench/README.md, "Numbers behind the code"). PyTorch's CPU kernel takes per-tensor
scales only.

The same layer runs Lightricks' FP8 checkpoint files: ltx-core's FP8 loading fills its `FP8Linear` layers from
the file (`ltx2.layout.FP8_TRANSFORMER`), and `run_loaded_fp8_layers` gives them this forward.
"""

from __future__ import annotations

import ltx_core.loader  # noqa: F401  (ltx_core.quantization imports fail unless the loader is imported first)
import torch
from ltx_core.quantization.fp8_scaled_mm import (
    EXCLUDED_LAYER_SUBSTRINGS,
    FP8Linear,
    quantize_weight_to_fp8_per_tensor,
)

EVERY_BLOCK = tuple(part for part in EXCLUDED_LAYER_SUBSTRINGS if not part.startswith("transformer_blocks."))
"""The official exclusions without its bf16 blocks (0 and 43-47): every block's linear layers in FP8. ltx-core's
weight-only `fp8_cast` policy stores every block in e4m3 too; its `fp8_scaled_mm` policy, which also quantises
the inputs (with calibrated static scales), keeps those six blocks in bf16."""

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)


class Fp8Error(ValueError):
    """FP8 matmuls asked for where they cannot run."""


def quantize_input(x: torch.Tensor, per_row: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` in e4m3 with dynamic scales (amax / 448, float32): x ≈ q * scale. One scale for the tensor, or
    with `per_row` one per row of the 2-D `x` (scale shape [rows, 1], as `torch._scaled_mm` takes it)."""
    wide = x.float()
    amax = wide.abs().amax(dim=-1, keepdim=True) if per_row else wide.abs().amax()
    scale = amax.clamp(min=torch.finfo(torch.float32).tiny) / FP8_MAX
    return (wide / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class ScaledMMFp8Linear(FP8Linear):
    """ltx-core's `FP8Linear` (same parameters, same names) with its TensorRT-LLM calls replaced by a
    dynamic input scale and `torch._scaled_mm`. The unused static `input_scale` is dropped."""

    per_row: bool | None = None
    """One input scale per row instead of one per tensor; None: per row on a GPU, per tensor on the CPU
    (PyTorch's CPU kernel takes per-tensor scales only)."""

    fast_accum: bool = True
    """cuBLAS's fast FP8 accumulation (Hopper: the tensor cores' own accumulator, no periodic promotion to
    float32), as torchao's FP8 inference does by default. False: the float32-promoted kernel (bench variant
    `fp8fp32acc`). PyTorch's CPU kernel ignores it."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: torch.device | None = None):
        super().__init__(in_features, out_features, bias=bias, device=device)
        del self.input_scale

    @classmethod
    def from_fp8_linear(cls, layer: FP8Linear) -> ScaledMMFp8Linear:
        """`layer` as ltx-core's FP8 loading filled it from an FP8 file, with this forward: the same weight,
        weight scale and bias tensors (not copied); the file's static `input_scale` is not used."""
        new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, device=torch.device("meta"))
        new.weight, new.weight_scale = layer.weight, layer.weight_scale
        if layer.bias is not None:
            new.bias = layer.bias
        return new

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> ScaledMMFp8Linear:
        """The official per-tensor quantisation of `linear`'s weight (bias kept in its dtype)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=torch.device("meta"))
        weight, scale = quantize_weight_to_fp8_per_tensor(linear.weight.detach())
        layer.weight = torch.nn.Parameter(weight, requires_grad=False)
        layer.weight_scale = torch.nn.Parameter(scale.to(torch.float32), requires_grad=False)
        if linear.bias is not None:
            layer.bias = torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        per_row = rows.is_cuda if self.per_row is None else self.per_row
        q, scale = quantize_input(rows, per_row=per_row)
        weight_scale = self.weight_scale
        if per_row:  # row-wise scaling wants a [1, out] weight scale: the one scale, broadcast
            weight_scale = weight_scale.reshape(1, 1).expand(1, self.out_features).contiguous()
        out = torch._scaled_mm(
            q, self.weight, scale_a=scale, scale_b=weight_scale, out_dtype=x.dtype, use_fast_accum=self.fast_accum
        )
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def fp8_supported(device: torch.device) -> bool:
    """FP8 tensor cores (compute capability 8.9+), or the CPU (PyTorch's per-tensor kernel: slow, exact code)."""
    if device.type == "cpu":
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_unsupported(device: torch.device) -> str | None:
    """Why FP8 matmuls cannot run on `device` (None: they can), naming the device."""
    if fp8_supported(device):
        return None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return (
        "FP8 matmuls need FP8 tensor cores (compute capability 8.9+: L4, L40S, H100, H200, B200), and this worker "
        f"runs on {name}"
    )


def excluded(name: str, keep_bf16: tuple[str, ...] = EXCLUDED_LAYER_SUBSTRINGS) -> bool:
    """Layers the official FP8 policy leaves in bf16 (any name containing one of `keep_bf16`)."""
    return any(part in name for part in keep_bf16)


@torch.no_grad()
def apply_fp8_linears(
    velocity_model: torch.nn.Module,
    keep_bf16: tuple[str, ...] = EXCLUDED_LAYER_SUBSTRINGS,
    per_row: bool | None = None,
    fast_accum: bool = True,
) -> list[str]:
    """Swap the velocity model's Linear layers for `ScaledMMFp8Linear` in place, except those named by
    `keep_bf16` (the official exclusions); parameter names stay the same (`…to_q.weight`, plus
    `…to_q.weight_scale`), so LoRAs still find their targets. `per_row`, `fast_accum`: see `ScaledMMFp8Linear`.
    Returns the names of the swapped layers.
    Apply it before any LoRA is fused (a worker does, at load)."""
    problem = fp8_unsupported(next(velocity_model.parameters()).device)
    if problem is not None:
        raise Fp8Error(f"--fp8: {problem}: drop --fp8")
    names = [
        name
        for name, module in velocity_model.named_modules()
        if type(module) is torch.nn.Linear and not excluded(name, keep_bf16)
    ]
    for name in names:  # one layer at a time: each bf16 weight is freed as soon as its FP8 copy exists
        parent_name, _, attr = name.rpartition(".")
        parent = velocity_model.get_submodule(parent_name) if parent_name else velocity_model
        layer = ScaledMMFp8Linear.from_linear(getattr(parent, attr))
        layer.per_row = per_row
        layer.fast_accum = fast_accum
        setattr(parent, attr, layer)
    return names


def run_loaded_fp8_layers(velocity_model: torch.nn.Module, dtype: torch.dtype) -> list[str]:
    """An FP8 file's transformer as ltx-core's FP8 loading built it (`ltx2.layout.FP8_TRANSFORMER`), made to run
    here: each `FP8Linear` becomes a `ScaledMMFp8Linear` holding the same tensors, and every other floating tensor
    of the state goes to `dtype`, as the bf16 load does (the e4m3 weights and their float32 scales stay).
    Returns the names of the FP8 layers."""
    names = [name for name, module in velocity_model.named_modules() if type(module) is FP8Linear]
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = velocity_model.get_submodule(parent_name) if parent_name else velocity_model
        setattr(parent, attr, ScaledMMFp8Linear.from_fp8_linear(getattr(parent, attr)))
    kept = {f"{name}.{tensor}" for name in names for tensor in ("weight", "weight_scale")}
    with torch.no_grad():
        for key, tensor in velocity_model.state_dict(keep_vars=True).items():
            if key not in kept and tensor.is_floating_point() and tensor.dtype != dtype:
                tensor.data = tensor.data.to(dtype)
    return names


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (FP8 tensors compared as bytes): fused and restored weights against references."""
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8)) if a.dtype == FP8 else torch.equal(a, b)


def scale_name(weight_name: str) -> str:
    """The per-tensor scale parameter that goes with an FP8 weight."""
    return weight_name.removesuffix(".weight") + ".weight_scale"
