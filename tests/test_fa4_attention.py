"""FlashAttention-4 attention (`ltx2.fa4_attention`): where it is used, where it is refused, and that every
call it does not serve runs the official SDPA path unchanged. The kernel itself needs a Hopper or Blackwell
GPU; bench/gpu_smoke.py and bench/forward_speed.py run it there."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from cluster.worker_options import WorkerOptions
from ltx2.fa4_attention import (
    MIN_TOKENS,
    Fa4Attention,
    Fa4AttentionError,
    apply_fa4_attention,
    fa4_available,
    kernel_serves,
)
from ltx2.speed import SpeedOptions, apply_speed_options, default_speed_options


def test_the_cpu_never_gets_fa4_and_asking_for_it_says_what_to_do(resident):
    assert not fa4_available("cpu") and not default_speed_options("cpu").fa4_attention
    if not torch.cuda.is_available():
        assert not fa4_available("cuda:0") and not default_speed_options("cuda:0").fa4_attention
    model = resident.transformer.velocity_model
    with pytest.raises(Fa4AttentionError, match=r"pip install '\.\[fa4\]'|drop the fa4_attention option"):
        apply_fa4_attention(model)
    with pytest.raises(Fa4AttentionError):
        apply_speed_options(model, SpeedOptions(fa4_attention=True))


def test_calls_the_kernel_does_not_take_run_the_official_sdpa_path():
    from ltx_core.model.transformer.attention import PytorchAttention

    q, k, v = (torch.randn(2, 12, 4 * 16) for _ in range(3))
    mask = torch.zeros(2, 12, 12)
    assert torch.equal(Fa4Attention()(q, k, v, 4), PytorchAttention()(q, k, v, 4))  # a CPU tensor
    assert torch.equal(Fa4Attention()(q, k, v, 4, mask), PytorchAttention()(q, k, v, 4, mask))
    bf16 = q.bfloat16()
    assert not kernel_serves(q, 16)  # float32 on the CPU
    assert not kernel_serves(bf16, 16)  # not on a GPU
    assert not kernel_serves(torch.empty(1, device="meta", dtype=torch.bfloat16), 12)  # head dim not 8k


def test_only_long_unmasked_sequences_go_to_the_kernel():
    """FA4's launch costs more than SDPA's: short calls (audio, text, stage-1 video) keep SDPA (MIN_TOKENS)."""
    fa4 = Fa4Attention(min_tokens=64)
    with FakeTensorMode():  # CUDA tensors without a GPU: only shapes, dtypes and devices are looked at
        long, short = (torch.empty(1, n, 4 * 32, dtype=torch.bfloat16, device="cuda") for n in (64, 63))
        assert fa4.serves(long, long, long, 4, None)
        assert not fa4.serves(short, short, short, 4, None)  # a short self-attention
        assert not fa4.serves(long, short, short, 4, None)  # long queries onto a short key sequence
        assert not fa4.serves(short, long, long, 4, None)
        assert not fa4.serves(long, long, long, 4, torch.zeros(1, 64, 64, device="cuda"))  # masked
        assert not fa4.serves(long, long.float(), long, 4, None)  # mixed dtypes
        assert not fa4.serves(long, long, long, 5, None)  # head dim 25.6: not whole
    assert Fa4Attention().min_tokens == MIN_TOKENS


def test_the_op_traces_with_the_shapes_the_kernel_returns():
    """Compiled blocks trace the custom op through its fake: [B, S, H, D] in, [B, S, H, Dv] out."""
    with FakeTensorMode():
        q = torch.empty(1, 20, 4, 64, dtype=torch.bfloat16)
        kv = torch.empty(1, 7, 4, 64, dtype=torch.bfloat16)
        out = torch.ops.ltx2.fa4_attention(q, kv, kv)
    assert out.shape == (1, 20, 4, 64) and out.dtype == torch.bfloat16


def test_pools_refuse_fa4_where_it_cannot_run_before_starting_workers(ray_cluster, tiny_set):
    from cluster.executor import CapacityError
    from cluster.ray_executor import RayExecutor
    from jobs.placement import Placement

    with pytest.raises(CapacityError, match=r"needs a Hopper-or-newer GPU.*drop --fa4-attention"):
        RayExecutor(tiny_set, options=WorkerOptions(device="cpu", fa4_attention=True))
    with pytest.raises(CapacityError, match="drop --fa4-attention or use --placement replica"):
        RayExecutor(tiny_set, placement=Placement("sequence", 2), options=WorkerOptions(fa4_attention=True))
