"""FP8 matmuls (`ltx2.fp8_linear`) on the tiny model: the official scaled-FP8 format and exclusions, LoRAs fused
the official scaled-FP8 way and restored exactly, renders through plain and compiled blocks. The CPU runs the
same `torch._scaled_mm` code (per-tensor scales) that cuBLAS runs on a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch._dynamo.utils import counters
from torch._subclasses.fake_tensor import FakeTensorMode

from cluster.executor import CapacityError
from cluster.ray_executor import RayExecutor
from cluster.requests import render_request
from cluster.worker_options import WorkerOptions
from jobs.placement import Placement
from jobs.spec import validate_job
from ltx2.fp8_linear import (
    EVERY_BLOCK,
    FP8,
    ScaledMMFp8Linear,
    apply_fp8_linears,
    bitwise_equal,
    excluded,
    quantize_input,
)
from ltx2.render import Renderer
from ltx2.speed import SpeedOptions, apply_compile, apply_speed_options
from tests.conftest import SMALL_JOB


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.fixture()
def fresh(tiny_set):
    """A bf16 model set of its own: FP8 swaps its layers in place."""
    from ltx2.models import load_resident_models

    return load_resident_models(tiny_set, "cpu")


def test_layer_matches_bf16_linear_within_e4m3_precision():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 256).to(torch.bfloat16)
    layer = ScaledMMFp8Linear.from_linear(linear)
    x = torch.randn(2, 9, 64, dtype=torch.bfloat16)
    assert layer.weight.dtype == FP8 and layer.weight.shape == (64, 256)  # stored transposed, as ltx-core does
    assert [name for name, _ in layer.named_parameters()] == ["weight", "weight_scale", "bias"]
    out = layer(x)
    assert out.shape == (2, 9, 256) and out.dtype == torch.bfloat16
    err = rel(out, linear(x))
    assert 0 < err < 0.08, err  # e4m3 keeps 3 mantissa bits: a few % on a random layer
    q, scale = quantize_input(x)
    assert q.dtype == FP8 and q.float().abs().max().item() == 448.0
    assert rel(q.float() * scale, x) < 0.07
    rows = x.reshape(-1, 64) * torch.logspace(-3, 3, 18).reshape(18, 1).to(torch.bfloat16)  # rows 1e6 apart
    q, scale = quantize_input(rows, per_row=True)  # the per_row option (GPUs): one scale per row
    assert scale.shape == (18, 1) and (q.float().abs().amax(dim=1) == 448.0).all()
    assert all(rel(q[i].float() * scale[i], rows[i]) < 0.07 for i in range(18))  # each row to its own precision


def test_official_layers_are_swapped_names_kept_and_weights_halved(fresh):
    model = fresh.transformer.velocity_model
    names = {n for n, _ in model.named_parameters()}
    before = sum(p.nbytes for p in model.parameters())
    swapped = apply_fp8_linears(model)
    assert swapped and all(name.startswith("transformer_blocks.1.") for name in swapped)  # block 0 stays bf16
    modules = dict(model.named_modules())
    assert all(type(modules[name]) is ScaledMMFp8Linear for name in swapped)
    assert all(excluded(name) for name, m in modules.items() if type(m) is torch.nn.Linear)
    after = {n: p for n, p in model.named_parameters()}
    assert set(after) == names | {f"{name}.weight_scale" for name in swapped}
    assert all(after[f"{name}.weight"].dtype == FP8 for name in swapped)
    swapped_bytes = sum(after[f"{name}.weight"].nbytes for name in swapped)
    assert sum(p.nbytes for p in model.parameters()) < before - swapped_bytes + 1024


def test_all_blocks_puts_the_official_bf16_blocks_in_fp8_too(fresh):
    """`fp8_all_blocks`: block 0 (bf16 under the official policy) gets FP8 layers; embeddings and heads stay bf16."""
    model = fresh.transformer.velocity_model
    apply_speed_options(model, SpeedOptions(fp8=True, fp8_all_blocks=True))
    modules = dict(model.named_modules())
    assert type(modules["transformer_blocks.0.attn1.to_q"]) is ScaledMMFp8Linear
    assert type(modules["transformer_blocks.0.ff.net.2"]) is ScaledMMFp8Linear
    assert type(modules["patchify_proj"]) is torch.nn.Linear and type(modules["proj_out"]) is torch.nn.Linear
    assert all(excluded(n, EVERY_BLOCK) for n, m in modules.items() if type(m) is torch.nn.Linear)


def test_the_all_blocks_flag_implies_fp8_and_is_refused_for_gangs(ray_cluster, tiny_set):
    from cluster.cli import build_parser

    args = build_parser().parse_args(["render", "--prompt", "a fox", "--fp8-all-blocks"])
    assert args.fp8_all_blocks and not args.fp8  # the worker turns fp8 on for it
    with pytest.raises(CapacityError, match="drop --fp8 or use --placement replica"):
        RayExecutor(tiny_set, placement=Placement("guidance", 2), options=WorkerOptions(fp8_all_blocks=True))


def test_a_worker_asked_for_all_blocks_turns_fp8_on(tiny_set):
    from cluster.worker import RenderWorker

    worker = RenderWorker(tiny_set, WorkerOptions(device="cpu", fp8_all_blocks=True), warm_lora_originals=False)
    assert worker.info().fp8 is True and worker.info().fp8_all_blocks is True
    block_0 = worker.models.transformer.velocity_model.transformer_blocks[0]
    assert type(block_0.attn1.to_q) is ScaledMMFp8Linear
    worker.model_hashes()  # joins the background hashing thread: exiting while it runs aborts the interpreter


def test_loras_fuse_the_official_scaled_fp8_way_and_restore_exactly(fresh):
    from ltx_core.loader.fuse_loras import _prepare_deltas
    from ltx_core.quantization.fp8_scaled_mm import quantize_weight_to_fp8_per_tensor

    model = fresh.transformer.velocity_model
    apply_fp8_linears(model)
    loras = fresh.loras
    pristine = {k: v.clone() for k, v in model.state_dict().items()}
    loras.use(distilled=True)
    fusion = loras._fusion
    fp8_targets = [t for t in fusion._targets if pristine[t].dtype == FP8]
    assert fp8_targets and set(fusion._scales) == set(fp8_targets)
    params = dict(model.named_parameters())
    for name in fp8_targets:
        scale = name.removesuffix(".weight") + ".weight_scale"
        factors = fusion._factors()  # read again: a fused state drops them
        delta = _prepare_deltas(factors, name, torch.bfloat16, torch.device("cpu"))
        expected, expected_scale = quantize_weight_to_fp8_per_tensor(
            pristine[name].t().float() * pristine[scale] + delta.float()
        )
        assert bitwise_equal(params[name], expected)
        assert torch.equal(params[scale], expected_scale) and not torch.equal(params[scale], pristine[scale])
    loras.use()
    assert all(bitwise_equal(v, pristine[k]) for k, v in model.state_dict().items())


def test_fp8_renders_repeat_exactly_and_compiled_blocks_trace_scaled_mm_whole(fresh, small_render):
    """A two-stage render (the distilled LoRA fused into FP8 weights in stage 2, restored after) gives the same
    output twice, different from bf16; compiled blocks run `_scaled_mm` with no graph breaks, same numbers.
    The second render is the compiled one: it runs on the weights the first render's LoRA fusion restored, so
    one equality pins both (an inexact restore or a compiled difference fails it)."""
    request = render_request(validate_job(SMALL_JOB), fresh.num_layers)
    plain, _ = small_render  # the same job in bf16
    apply_speed_options(fresh.transformer.velocity_model, SpeedOptions(fp8=True))
    first = Renderer(fresh).render(request)
    assert not torch.equal(first.video, plain.video)
    torch._dynamo.reset()
    counters.clear()
    apply_compile(fresh.transformer.velocity_model, backend="eager")
    second = Renderer(fresh).render(request)  # compiled, after the first render's fusion and restore
    assert dict(counters["graph_break"]) == {}
    assert torch.equal(second.video, first.video) and torch.equal(second.audio, first.audio)


def test_gangs_refuse_fp8_before_starting_workers(ray_cluster, tiny_set):
    with pytest.raises(CapacityError, match="drop --fp8 or use --placement replica"):
        RayExecutor(tiny_set, placement=Placement("guidance", 2), options=WorkerOptions(fp8=True))


def test_a_cpu_worker_renders_with_fp8_says_so_and_backs_up_weights_in_their_layout(tiny_set, tmp_path):
    from cluster.worker import RenderWorker

    worker = RenderWorker(tiny_set, WorkerOptions(device="cpu", fp8=True))
    assert worker.info().fp8 is True
    loras = worker.models.loras
    loras.originals_copied()
    params = dict(worker.models.transformer.velocity_model.named_parameters())
    fp8 = [name for name in loras._originals if params[name].dtype == FP8]
    # transposed FP8 weights backed up with their own strides: a restore is one plain copy, no GPU temporary
    assert fp8 and all(not params[name].is_contiguous() for name in fp8)
    assert all(loras._originals[name].stride() == params[name].stride() for name in loras._originals)
    from cluster.worker import render_in_process

    document = render_in_process(worker, validate_job(SMALL_JOB), str(tmp_path)).document
    assert document["media"]["frames"] == 17 and (tmp_path / document["output"]["video"]).stat().st_size > 0


INTERPRETED_FUSION = """
import torch
import ltx_core.loader  # (ltx_core.quantization imports ltx_core.loader first)
from ltx_core.loader.fuse_loras import _fuse_delta_with_scaled_fp8
from ltx_core.loader.primitives import StateDict
from ltx_core.quantization.fp8_scaled_mm import quantize_weight_to_fp8_per_tensor
from ltx2.fp8_linear import FP8
from ltx2.fp8_lora_fusion import BLOCK, requantised_float32

generator = torch.Generator().manual_seed(0)
for rows, columns in [(8, 16), (3, BLOCK + 7), (300, 129)]:  # one short block; a partial last block; ten blocks
    weight, scale = quantize_weight_to_fp8_per_tensor(torch.randn(rows, columns, generator=generator) * 0.05)
    delta = (torch.randn(rows, columns, generator=generator) * 0.02).to(torch.bfloat16)
    delta.view(-1)[5] = 3.0  # an outlier: the new scale comes from the delta
    sd = StateDict(sd={"w.weight": weight, "w.weight_scale": scale}, device=weight.device, size=0, dtype={FP8})
    official = _fuse_delta_with_scaled_fp8(delta, weight, "w.weight", "w.weight_scale", sd)
    values, new_scale = requantised_float32(weight, scale, delta)
    assert torch.equal(new_scale, official["w.weight_scale"]), (new_scale, official["w.weight_scale"])
    assert torch.equal(values.to(FP8).t().view(torch.uint8), official["w.weight"].view(torch.uint8))
    assert not torch.equal(new_scale, scale)
print("same")
"""


def test_the_fp8_lora_fusion_kernels_do_the_official_arithmetic_in_tritons_interpreter():
    """`ltx2.fp8_lora_fusion`'s two Triton passes, run by Triton's CPU interpreter: the new scale and the values
    cast to e4m3 equal ltx-core's scaled-FP8 fusion bit for bit. (The interpreter's own e4m3 cast rounds
    differently from a GPU's, so torch casts here; `bench/lora_fusion.py` checks the in-kernel cast on a GPU.)"""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", INTERPRETED_FUSION], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr[-3000:]


def test_the_fp8_lora_fusion_kernels_take_gpu_fp8_weights_of_the_scaled_mm_layout_only():
    from ltx2 import fp8_lora_fusion

    weight = torch.zeros(16, 8, dtype=FP8).t()  # [in, out] view of a contiguous [out, in]: the layer's layout
    scale = torch.ones((), dtype=torch.float32)
    assert not fp8_lora_fusion.applies(weight, scale)  # the CPU: ltx-core's own fusion
    with FakeTensorMode():  # CUDA tensors without a GPU: only layouts, dtypes and devices are looked at
        gpu = torch.empty(16, 8, dtype=FP8, device="cuda").t()
        gpu_scale = torch.empty((), dtype=torch.float32, device="cuda")
        assert fp8_lora_fusion.applies(gpu, gpu_scale) == (fp8_lora_fusion.triton is not None)
        assert not fp8_lora_fusion.applies(gpu.t(), gpu_scale)  # a row-major [in, out]: the official path
        assert not fp8_lora_fusion.applies(gpu.to(torch.bfloat16), gpu_scale)
