"""The fusible RoPE is ltx-core's RoPE: bit-identical in eager, on the functions and on a whole render."""

from __future__ import annotations

import pytest
import torch
from ltx_core.model.transformer import rope as official
from ltx_core.model.transformer.attention import Attention

from ltx2 import stages
from ltx2.fusible_rope import FusibleRopeAttention, _calling, apply_fusible_rope, fusible_rotary_emb
from ltx2.speed import KernelTuning, SpeedOptions, apply_speed_options
from tests.conftest import small_chunk


def _freqs(rope_type: official.LTXRopeType, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Real ltx-core frequencies for a small video grid (4 heads of 32)."""
    grid = torch.stack(
        torch.meshgrid(torch.arange(3.0), torch.arange(4.0), torch.arange(5.0), indexing="ij"), 0
    ).reshape(1, 3, -1)
    grid = torch.stack((grid, grid + 1), -1)  # start and end of each latent
    return official.precompute_freqs_cis(
        grid, dim=128, out_dtype=dtype, num_attention_heads=4, rope_type=rope_type, use_middle_indices_grid=True
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rope_type", list(official.LTXRopeType))
def test_fusible_rotary_emb_equals_ltx_core_bit_for_bit(rope_type, dtype):
    freqs = _freqs(rope_type, dtype)
    x = torch.randn(2, 60, 128, generator=torch.Generator().manual_seed(0)).to(dtype)
    freqs = tuple(f.expand(2, *f.shape[1:]) for f in freqs)  # a batch of two
    ours = fusible_rotary_emb(x, freqs, rope_type)
    theirs = official.apply_rotary_emb(x, freqs, rope_type)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert torch.equal(ours, theirs)
    if rope_type is official.LTXRopeType.SPLIT:  # q/k already split into heads: (B, H, T, D)
        heads = x.reshape(2, 60, 4, 32).swapaxes(1, 2)
        ours, theirs = fusible_rotary_emb(heads, freqs, rope_type), official.apply_rotary_emb(heads, freqs, rope_type)
        assert torch.equal(ours, theirs)


def test_traced_split_rotary_emb_is_ltx_core_without_addcmul():
    """Traced for compiling, the rotation is a written-out sum: no `addcmul` for inductor to store in float32
    before the cast (`_rotate_halves`), and still ltx-core's RoPE."""
    graphs = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):  # keeps the traced graph
        graphs.append(gm)
        return gm.forward

    freqs = _freqs(official.LTXRopeType.SPLIT, torch.float32)
    x = torch.randn(1, 60, 128, generator=torch.Generator().manual_seed(1))
    traced = torch.compile(fusible_rotary_emb, backend=backend, fullgraph=True)
    ours = traced(x, freqs, official.LTXRopeType.SPLIT)
    exact = official.apply_rotary_emb(x.double(), tuple(f.double() for f in freqs), official.LTXRopeType.SPLIT)
    assert len(graphs) == 1 and "addcmul" not in graphs[0].code and " + " in graphs[0].code
    torch.testing.assert_close(ours.double(), exact, rtol=1e-6, atol=1e-6)


def test_attention_layers_get_it_in_place_and_render_the_same_bits(tiny_set):
    from ltx2.models import load_resident_models

    models = load_resident_models(tiny_set, "cpu", torch.float32)
    positive = stages.encode_prompt(models, "waves crash on black rocks, gulls cry")
    chunk = small_chunk(recipe="distilled")
    before = stages.stage1_chunk(models, chunk, positive, None)
    model = models.transformer.velocity_model
    names = [n for n, _ in model.named_parameters()]
    apply_fusible_rope(model)
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    assert layers and all(type(m) is FusibleRopeAttention for m in layers)
    assert [n for n, _ in model.named_parameters()] == names
    after = stages.stage1_chunk(models, chunk, positive, None)
    assert torch.equal(after.video, before.video) and torch.equal(after.audio, before.audio)


def test_compiled_blocks_get_the_fusible_rope_unless_turned_off(tiny_set):
    from ltx2.models import load_resident_models

    for options, expected in ((SpeedOptions(), Attention), (SpeedOptions(compile=True), FusibleRopeAttention)):
        model = load_resident_models(tiny_set, "cpu", torch.float32).transformer.velocity_model
        apply_speed_options(model, options)
        assert {type(m) for m in model.modules() if isinstance(m, Attention)} == {expected}
    model = load_resident_models(tiny_set, "cpu", torch.float32).transformer.velocity_model
    apply_speed_options(model, SpeedOptions(compile=True, tuning=KernelTuning(fusible_rope=False)))
    assert {type(m) for m in model.modules() if isinstance(m, Attention)} == {Attention}


def test_rebinding_a_name_the_code_does_not_look_up_is_refused():
    assert FusibleRopeAttention.forward.__globals__["apply_rotary_emb"] is fusible_rotary_emb
    assert Attention.forward.__globals__["apply_rotary_emb"] is official.apply_rotary_emb  # ltx-core untouched
    with pytest.raises(RuntimeError, match="no longer looks up"):
        _calling(Attention.forward, apply_rotary_embedding=fusible_rotary_emb)
