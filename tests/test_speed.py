"""Speed options applied to the unmodified ltx-core model: compiled blocks trace whole and give the same numbers."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from cluster.worker_options import WorkerOptions
from ltx2 import stages
from ltx2.speed import (
    KernelTuning,
    SigmoidGELUApprox,
    SpeedOptions,
    apply_compile,
    apply_sigmoid_gelu,
    apply_speed_options,
    gelu_tanh_by_sigmoid,
    traceable_attention,
)
from tests.conftest import SMALL_JOB, small_chunk


@pytest.fixture()
def fresh32(tiny_set):
    """A model set of its own: compiling changes the model in place."""
    from ltx2.models import load_resident_models

    return load_resident_models(tiny_set, "cpu", torch.float32)


def _chunk(models, recipe: str):
    positive = stages.encode_prompt(models, "waves crash on black rocks, gulls cry")
    negative = stages.encode_prompt(models, "blurry") if recipe == "two_stage" else None
    return stages.stage1_chunk(models, small_chunk(recipe=recipe), positive, negative)


def test_attention_enum_resolves_to_the_callable_it_dispatches_to():
    from ltx_core.model.transformer.attention import AttentionFunction, PytorchAttention

    assert isinstance(traceable_attention(AttentionFunction.PYTORCH), PytorchAttention)
    assert isinstance(traceable_attention(AttentionFunction.DEFAULT), PytorchAttention)  # no xformers here
    custom = object()
    assert traceable_attention(custom) is custom  # e.g. a gang's sequence-parallel attention


def test_compiled_blocks_trace_without_breaks_share_one_graph_and_match_eager(fresh32):
    """Unperturbed passes of every block run one graph (not one per block), with no graph breaks, also through
    the fusible RoPE, the GELU epilogue op and the split-KV attention wrapper that compiled blocks get (all
    give eager's numbers on the CPU, up to float32 rounding in the traced RoPE)."""
    from ltx2.fusible_rope import apply_fusible_rope
    from ltx2.gelu_epilogue import apply_gelu_epilogue
    from ltx2.split_kv_attention import apply_split_kv_attention

    eager = _chunk(fresh32, "two_stage")
    names = [n for n, _ in fresh32.transformer.velocity_model.named_parameters()]
    torch._dynamo.reset()
    counters.clear()
    apply_split_kv_attention(apply_gelu_epilogue(apply_fusible_rope(fresh32.transformer.velocity_model)))
    apply_compile(fresh32.transformer.velocity_model, backend="eager")
    distilled = _chunk(fresh32, "distilled")  # one unperturbed pass per step
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    compiled = _chunk(fresh32, "two_stage")  # cond, uncond, STG at one block, modality-isolated
    assert dict(counters["graph_break"]) == {}
    # the fusible RoPE's traced form is a written-out sum (`ltx2.fusible_rope._rotate_halves`): float32
    # rounding apart (~1e-5 at values up to 5 here), eager's numbers
    torch.testing.assert_close(compiled.video, eager.video, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled.audio, eager.audio, rtol=1e-4, atol=1e-4)
    assert distilled.video.shape == eager.video.shape
    # in place: parameter names (what LoRA fusion and checkpoints address) are unchanged
    assert [n for n, _ in fresh32.transformer.velocity_model.named_parameters()] == names


def test_a_compile_mode_with_inductor_options_is_refused_with_the_fix():
    """torch.compile takes a mode or options: asking for both names what to turn off instead of failing deep
    inside torch (persistent reductions come with inductor's default mode only)."""
    model = torch.nn.Module()
    model.transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    asked = SpeedOptions(compile=True, tuning=KernelTuning(compile_mode="reduce-overhead", persistent_reductions=True))
    with pytest.raises(ValueError, match="turn off tune / persistent_reductions"):
        apply_speed_options(model, asked)
    apply_speed_options(model, SpeedOptions(compile=True, tuning=KernelTuning(compile_mode="reduce-overhead")))
    assert SpeedOptions(compile=True, fp8=True).reductions_persistent()
    assert SpeedOptions(compile=True).reductions_persistent()
    assert not SpeedOptions(compile=True).reductions_persistent(gpu=False)  # inductor's CPU code: no Triton
    assert SpeedOptions(compile=True, tuning=KernelTuning(persistent_reductions=True)).reductions_persistent(gpu=False)
    assert not SpeedOptions(compile=True, tuning=KernelTuning(persistent_reductions=False)).reductions_persistent()
    reduce_overhead = KernelTuning(compile_mode="reduce-overhead")
    assert not SpeedOptions(compile=True, fp8=True, tuning=reduce_overhead).reductions_persistent()
    assert not SpeedOptions(fp8=True).reductions_persistent()


def test_sigmoid_gelu_is_the_official_tanh_gelu_and_comes_with_compiled_fp8(fresh32):
    """The FF layers' GELU through a sigmoid: the same function (float32 rounding), the same parameters, and
    only where it pays (compiled FP8 matmuls) unless asked for."""
    from ltx_core.model.transformer.gelu_approx import GELUApprox

    x = torch.linspace(-12, 12, 4001, dtype=torch.float64)
    assert torch.allclose(gelu_tanh_by_sigmoid(x), torch.nn.functional.gelu(x, approximate="tanh"), atol=1e-12)
    assert SpeedOptions(fp8=True, compile=True).gelu_by_sigmoid()
    assert not SpeedOptions(compile=True).gelu_by_sigmoid() and not SpeedOptions(fp8=True).gelu_by_sigmoid()
    assert SpeedOptions(compile=True, tuning=KernelTuning(sigmoid_gelu=True)).gelu_by_sigmoid()

    model = fresh32.transformer.velocity_model
    eager = _chunk(fresh32, "distilled")
    names = [n for n, _ in model.named_parameters()]
    apply_sigmoid_gelu(model)
    swapped = [m for m in model.modules() if isinstance(m, GELUApprox)]
    assert swapped and all(type(m) is SigmoidGELUApprox for m in swapped)
    assert [n for n, _ in model.named_parameters()] == names
    sigmoid = _chunk(fresh32, "distilled")
    assert torch.allclose(sigmoid.video, eager.video, atol=1e-4)
    assert torch.allclose(sigmoid.audio, eager.audio, atol=1e-4)


def test_inductor_compiled_blocks_agree_with_eager(fresh32):
    """The real backend (inductor, CPU code here) within float32 rounding of eager."""
    eager = _chunk(fresh32, "distilled")
    torch._dynamo.reset()
    apply_speed_options(fresh32.transformer.velocity_model, SpeedOptions(compile=True))
    compiled = _chunk(fresh32, "distilled")
    scale = eager.video.abs().max()
    assert (compiled.video - eager.video).abs().max() <= 1e-4 * scale


def test_compiled_blocks_follow_lora_fusion_in_place(fresh32):
    """A whole two-stage render (stage 2 fuses the distilled LoRA into the compiled blocks' weights, the
    next render restores them) equals the eager render exactly: graphs read the live weights."""
    from cluster.requests import render_request
    from jobs.spec import validate_job
    from ltx2.render import Renderer

    request = render_request(validate_job(SMALL_JOB), fresh32.num_layers)
    eager = Renderer(fresh32).render(request)
    torch._dynamo.reset()
    apply_compile(fresh32.transformer.velocity_model, backend="eager")
    renderer = Renderer(fresh32)
    for _ in range(2):  # the second render starts with the LoRA fused by the first's stage 2
        compiled = renderer.render(request)
        assert torch.equal(compiled.video, eager.video) and torch.equal(compiled.audio, eager.audio)


def test_gangs_refuse_compiled_blocks_before_starting_workers(ray_cluster, tiny_set):
    from cluster.executor import CapacityError
    from cluster.ray_executor import RayExecutor
    from jobs.placement import Placement

    with pytest.raises(CapacityError, match="drop --compile or use --placement replica"):
        RayExecutor(tiny_set, placement=Placement("sequence", 2), options=WorkerOptions(compile=True))
    with pytest.raises(CapacityError, match="drop --fp8-attention or use --placement replica"):
        RayExecutor(tiny_set, placement=Placement("guidance", 2), options=WorkerOptions(fp8_attention=True))
    with pytest.raises(CapacityError, match="drop --batched-passes or use --placement replica"):
        RayExecutor(tiny_set, placement=Placement("guidance", 2), options=WorkerOptions(batched_passes=True))


def test_fp8_attention_is_refused_before_starting_cpu_workers(ray_cluster, tiny_set):
    from cluster.executor import CapacityError
    from cluster.ray_executor import RayExecutor

    with pytest.raises(CapacityError, match=r"needs a Hopper-or-newer GPU.*drop --fp8-attention"):
        RayExecutor(tiny_set, options=WorkerOptions(device="cpu", fp8_attention=True))


def test_workers_compile_and_batch_guided_passes_by_default_on_gpus_only():
    from ltx2.parallel.guidance import (
        BATCHED_PASSES_MAX_TOKENS,
        BATCHED_PASSES_MAX_TOKENS_FP8,
        batched_passes_max_tokens,
    )
    from ltx2.speed import default_speed_options

    gpu, cpu = default_speed_options("cuda:0"), default_speed_options("cpu")
    assert gpu.compile and not cpu.compile
    assert gpu.split_kv_attention and not cpu.split_kv_attention  # a CUDA kernel
    assert gpu.rope_cache and cpu.rope_cache  # the same numbers everywhere
    assert gpu.batched_passes and not cpu.batched_passes
    # FP8 matmuls with FP8 attention batch longer sequences too (measured: stage 1 of 1024x1536); the rest not
    assert batched_passes_max_tokens(fp8=True, fp8_attention=True) == BATCHED_PASSES_MAX_TOKENS_FP8 == 6144
    for fp8, fp8_attention in [(False, False), (True, False), (False, True)]:
        assert batched_passes_max_tokens(fp8, fp8_attention) == BATCHED_PASSES_MAX_TOKENS == 4096


def test_fp8_attention_quantises_per_tensor_within_e4m3_precision_and_refuses_the_cpu(fresh32):
    """The FP8 attention option (cuDNN, Hopper only: measured in bench/) quantises q, k, v with one scale
    each, never past e4m3's range; on a CPU model it refuses with the fix instead of failing mid-render."""
    from ltx2.fp8_attention import E4M3_MAX, Fp8AttentionError, quantize_tensor

    x = torch.randn(1, 64, 4, 32) * 7.0
    values, descale = quantize_tensor(x)
    assert values.dtype == torch.float8_e4m3fn
    assert values.float().abs().max().item() == E4M3_MAX  # the abs-max lands on the top of the range
    assert (values.float() * descale - x).abs().max() <= x.abs().max() / 16  # 3 mantissa bits
    with pytest.raises(Fp8AttentionError, match="drop the fp8_attention option"):
        apply_speed_options(fresh32.transformer.velocity_model, SpeedOptions(fp8_attention=True))


def test_fp8_attention_bound_for_q_and_k_holds_after_the_norm_and_rope(fresh32):
    """q and k are cast to e4m3 with a scale known before they exist (from their RMSNorm's weight): every
    value the real blocks hand to attention (norm, then RoPE) lies inside it, each within e4m3 precision."""
    from ltx_core.model.transformer.attention import PytorchAttention

    from ltx2.fp8_attention import E4M3_MAX, normed_descale, quantize_tensor

    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    attention = PytorchAttention()

    def recording(layer):
        def call(q, k, v, heads, mask=None):
            seen.append((q, k, normed_descale(layer.q_norm), normed_descale(layer.k_norm)))
            return attention(q, k, v, heads, mask)

        return call

    generator = torch.Generator().manual_seed(0)
    for block in fresh32.transformer.velocity_model.transformer_blocks:
        for norm in (block.attn1.q_norm, block.attn1.k_norm):  # uneven weights, as trained norms have
            norm.weight.data.copy_(torch.rand(norm.weight.shape, generator=generator) * 3 + 0.05)
        block.attn1.attention_function = recording(block.attn1)
    _chunk(fresh32, "distilled")
    assert len(seen) >= len(fresh32.transformer.velocity_model.transformer_blocks)
    for q, k, q_descale, k_descale in seen:
        for x, descale in ((q, q_descale), (k, k_descale)):
            assert x.abs().max() <= descale * E4M3_MAX * (1 + 1e-6)  # never clipped
            values, _ = quantize_tensor(x, descale)
            error = (values.float() * descale - x).abs()
            assert (error <= x.abs() / 16 + descale * 2**-9).all()  # 3 mantissa bits, or a subnormal step


def test_shared_timesteps_collapse_only_uniform_rows_and_give_the_same_render(fresh32):
    """Tokens that share a timestep reach the model as one per batch row (the model broadcasts it); a
    modality with conditioning tokens (timestep 0 among noisy ones) keeps its per-token values."""
    from ltx_core.model.transformer.modality import Modality

    from ltx2.speed import apply_shared_timesteps, shared_timestep

    def modality(timesteps: torch.Tensor) -> Modality:
        return Modality(
            latent=torch.zeros(2, 5, 4),
            sigma=timesteps[:, 0],
            timesteps=timesteps,
            positions=torch.zeros(2, 3, 5),
            context=torch.zeros(2, 1, 4),
        )

    uniform = modality(torch.tensor([[0.7] * 5, [0.2] * 5]).unsqueeze(-1))  # (B, T, 1), as the pipelines make
    assert torch.equal(shared_timestep(uniform).timesteps, torch.tensor([[[0.7]], [[0.2]]]))
    conditioned = modality(torch.tensor([[0.0, 0.7, 0.7, 0.7, 0.7], [0.2] * 5]).unsqueeze(-1))
    assert shared_timestep(conditioned) is conditioned

    per_token = _chunk(fresh32, "two_stage")
    seen: list[tuple[int, ...]] = []
    model = fresh32.transformer.velocity_model
    apply_shared_timesteps(model)
    probe = model.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].timesteps.shape)))
    try:
        shared = _chunk(fresh32, "two_stage")
    finally:
        probe.remove()
    assert seen and all(shape[1] == 1 for shape in seen), seen
    assert torch.allclose(shared.video, per_token.video, atol=1e-5 * per_token.video.abs().max())
    assert torch.allclose(shared.audio, per_token.audio, atol=1e-5 * per_token.audio.abs().max())


def test_worker_options_resolve_on_the_device_and_name_what_a_pool_cannot_run_as_flags():
    """A pool's options are the device's defaults with the user's choices over them (`--fp8-all-blocks` implies
    `--fp8`); what a pool cannot run is one line per flag, with the fix."""
    from jobs.placement import REPLICA, Placement
    from ltx2.speed import default_speed_options

    assert WorkerOptions().speed("cpu") == default_speed_options("cpu")
    cpu = WorkerOptions(fp8_all_blocks=True, compile=True).speed("cpu")
    assert cpu.fp8 and cpu.fp8_all_blocks and cpu.compile and cpu.rope_cache  # the rest stays the device's
    assert WorkerOptions(compile=False, fa4_attention=False).problems(Placement("sequence", 2), True) == []
    assert WorkerOptions(fp8_attention=True).problems(REPLICA, True) == []
    gang = WorkerOptions(fp8_all_blocks=True, batched_passes=True).problems(Placement("guidance", 2), True)
    assert [line.split()[0] for line in gang] == ["--fp8", "--fp8-all-blocks", "--batched-passes"]
    assert all(line.endswith("or use --placement replica") for line in gang)
    (cpu_problem,) = WorkerOptions(fa4_attention=True).problems(REPLICA, False)
    assert "needs a Hopper-or-newer GPU" in cpu_problem and cpu_problem.endswith("drop --fa4-attention")


def test_a_gang_member_runs_without_exactly_the_options_gang_pools_refuse():
    """One table (`REPLICA_ONLY`) says what does not compose with a gang's parallel modes: the member drops it, the
    pool refuses it; the rest (one timestep per row, the RoPE cache, split-KV) composes."""
    from dataclasses import replace

    from cluster.worker_options import SPEED_CHOICES
    from ltx2.configure import REPLICA_ONLY, composable
    from ltx2.parallel.group import GangGroup
    from ltx2.parallel.modes import ParallelMode
    from ltx2.speed import default_speed_options

    speed = replace(default_speed_options("cuda:0"), fp8=True, fp8_attention=True, fa4_attention=True)
    member = composable(speed, ParallelMode(GangGroup(0, 2, torch.device("cuda:0")), sharded=False))
    assert not any(getattr(member, name) for name in REPLICA_ONLY)
    assert member.shared_timesteps and member.rope_cache and member.split_kv_attention
    assert composable(speed, None) is speed  # a replica keeps all
    assert set(REPLICA_ONLY) == set(SPEED_CHOICES)


def test_configured_models_apply_a_rung_over_the_pass_runner_and_restore_it(fresh32):
    """Per call, the job's rung goes over the pass runner configuration chose (batched short steps one by one on
    `sequential_passes`) and is undone after; a replica asked for a gang's parallelism refuses with the fix."""
    from ltx2.configure import configure
    from ltx2.parallel.guidance import BatchedWhenShort, run_sequential

    configured = configure(fresh32, SpeedOptions(batched_passes=True))
    assert isinstance(fresh32.pass_runner, BatchedWhenShort)
    assert fresh32.loras.parked == [configured.fp8_weights, configured.streaming]
    with configured.running("sequential_passes"):
        assert fresh32.pass_runner is run_sequential
        assert not configured.fp8_weights.active and not configured.streaming.active
    assert isinstance(fresh32.pass_runner, BatchedWhenShort)
    with pytest.raises(ValueError, match="outside a gang: give None"), configured.running(None, "sequence"):
        pass
