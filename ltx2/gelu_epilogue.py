"""The FF input layer's bias and tanh GELU applied by cuBLASLt to the matmul's accumulator (its GELU epilogue).

Why: compiled, the layer is a cuBLAS matmul writing the 16 384-wide hidden state and a fused kernel reading it back to
apply the GELU and write it again, the largest of the fused kernels by bytes moved. `torch._addmm_activation(...,
use_gelu=True)` is cuBLASLt's bias + GELU epilogue, the same tanh GELU, applied before the hidden state is written once,
so the layer takes less time (bench/README.md, "Numbers behind the code"). It is called through a `torch.library` custom
op: traced as itself, inductor would decompose it back into a matmul and a GELU kernel. The GELU is computed from the
float32 accumulator instead of the bf16-rounded matmul output, the only difference from the official layer.
"""

from __future__ import annotations

import torch
from ltx_core.model.transformer.gelu_approx import GELUApprox

from ltx2.speed import swap_module_class


@torch.library.custom_op("ltx2::linear_gelu_tanh", mutates_args=())
def linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu(x @ weight.T + bias, approximate="tanh") over the last dim of x; on CUDA in one cuBLASLt call."""
    rows = x.reshape(-1, x.shape[-1])
    if x.is_cuda:
        out = torch._addmm_activation(bias, rows, weight.t(), use_gelu=True)
    else:  # the official arithmetic (workers on the CPU do not compile, tests compare against it)
        out = torch.nn.functional.gelu(torch.nn.functional.linear(rows, weight, bias), approximate="tanh")
    return out.reshape(*x.shape[:-1], weight.shape[0])


@linear_gelu_tanh.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


class EpilogueGELUApprox(GELUApprox):
    """ltx-core's `GELUApprox` (the FF input projection + tanh GELU) as one `linear_gelu_tanh` call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_gelu_tanh(x, self.proj.weight, self.proj.bias)


def apply_gelu_epilogue(velocity_model: torch.nn.Module) -> torch.nn.Module:
    """Give every ltx-core `GELUApprox` whose projection is a plain bf16/float `nn.Linear` with a bias the epilogue
    form, in place: same parameters and names (FP8 projections keep theirs: their GELU fuses with the input cast)."""

    def plain_linear(layer: GELUApprox) -> bool:
        return type(layer.proj) is torch.nn.Linear and layer.proj.bias is not None

    return swap_module_class(velocity_model, GELUApprox, EpilogueGELUApprox, where=plain_linear)
