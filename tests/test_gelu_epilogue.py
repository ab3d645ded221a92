"""The FF input layer as one matmul-with-GELU op: the official layer's numbers where it runs without cuBLASLt, the
same parameters, and only in compiled bf16 blocks unless asked for."""

from __future__ import annotations

import torch
from ltx_core.model.transformer.gelu_approx import GELUApprox

from ltx2.gelu_epilogue import EpilogueGELUApprox, apply_gelu_epilogue, linear_gelu_tanh
from ltx2.speed import KernelTuning, SigmoidGELUApprox, SpeedOptions, apply_speed_options


def test_linear_gelu_tanh_is_the_official_layer_on_the_cpu():
    layer = GELUApprox(48, 192)
    x = torch.randn(2, 7, 48, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.bfloat16):
        layer, x = layer.to(dtype), x.to(dtype)
        ours = linear_gelu_tanh(x, layer.proj.weight, layer.proj.bias)
        assert ours.shape == (2, 7, 192) and ours.dtype == dtype
        assert torch.equal(ours, layer(x))


def test_ff_layers_get_it_in_place_where_compiled_bf16_blocks_run(tiny_set):
    from ltx2.models import load_resident_models

    def gelu_types(options: SpeedOptions) -> set[type]:
        model = load_resident_models(tiny_set, "cpu", torch.float32).transformer.velocity_model
        names = [n for n, _ in model.named_parameters()]
        apply_speed_options(model, options)
        assert options.fp8 or [n for n, _ in model.named_parameters()] == names  # FP8 layers add their scales
        return {type(m) for m in model.modules() if isinstance(m, GELUApprox)}

    assert gelu_types(SpeedOptions()) == {GELUApprox}
    assert gelu_types(SpeedOptions(compile=True)) == {EpilogueGELUApprox}
    assert gelu_types(SpeedOptions(compile=True, tuning=KernelTuning(gelu_epilogue=False))) == {GELUApprox}
    assert gelu_types(SpeedOptions(compile=True, fp8=True)) == {SigmoidGELUApprox}  # fused with the FP8 cast


def test_projections_without_a_plain_biased_linear_keep_the_official_layer():
    model = torch.nn.Sequential(GELUApprox(8, 32), GELUApprox(8, 32))
    model[1].proj = torch.nn.Linear(8, 32, bias=False)
    apply_gelu_epilogue(model)
    assert type(model[0]) is EpilogueGELUApprox and type(model[1]) is GELUApprox
