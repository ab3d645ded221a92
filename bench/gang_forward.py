"""Per-forward time and peak memory of each gang mode at the real 19B shape, next to the official path.

Random weights (speed does not depend on their values), bf16, one process per GPU (torch.multiprocessing;
Ray is not on the GPU image), the farm's own parallel code (`ltx2.parallel`) on the official ltx-core
model built by `bench/anchor/official_forward.py`. Per shape:

- `official`: one forward on rank 0 alone, and one guided step (4 passes one by one) — the baseline.
- `batched`: the guided step's 4 passes as one batch-4 forward (one GPU).
- `sequence`: one forward, Ulysses over all ranks; relative error against the official forward.
- `guidance`: one guided step, passes spread over the ranks; relative error against the official step.
- `sharded`: FSDP2 over all ranks: one forward sequence-parallel, one guided step guidance-parallel.

    GPUS=2 SIZES=512x768x121,704x1280x121 python bench/gang_forward.py   # rows → $OUT/gang_forward.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent / "anchor"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import official_forward as anchor
from ltx_core.components.guiders import MultiModalGuider, MultiModalGuiderParams
from ltx_core.model.transformer import X0Model
from ltx_core.types import LatentState

from ltx2.parallel.group import free_loopback_port, init_gang_group
from ltx2.parallel.guidance import DistributedPassRunner, guided_passes, run_batched, run_sequential
from ltx2.parallel.sequence import apply_sequence_parallel, sequence_parallel
from ltx2.parallel.sharding import gang_mesh, local_parameter_bytes, shard_transformer

ITERS = int(os.environ.get("ITERS", "3"))


def timed(fn, iters: int = ITERS) -> tuple[float, object]:
    """Median ms of `iters` calls after one warm-up, and the last result; peak memory reset first."""
    torch.cuda.synchronize()
    out = fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2], out


def peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def same_on_every_rank(*tensors: torch.Tensor) -> None:
    """Rank 0's values everywhere: random weights and inputs drawn per process need not agree."""
    if dist.is_initialized():
        for t in tensors:
            dist.broadcast(t, 0)


def build(attn: str = "default"):
    model, params = anchor.build_model(attn)
    with torch.no_grad():
        same_on_every_rank(*model.parameters(), *(b for b in model.buffers() if b.is_floating_point()))
    return model, params


def guided_inputs(h: int, w: int, f: int):
    v, a = anchor.inputs(h, w, f)
    state = lambda m: LatentState(  # noqa: E731
        latent=m.latent, denoise_mask=torch.ones_like(m.timesteps), positions=m.positions, clean_latent=m.latent
    )
    neg = torch.randn_like(v.context)
    same_on_every_rank(v.latent, v.context, a.latent, a.context, neg)
    params = MultiModalGuiderParams(
        cfg_scale=3.0, stg_scale=1.0, stg_blocks=[29], rescale_scale=0.7, modality_scale=3.0
    )
    vg = MultiModalGuider(params=params, negative_context=neg)
    ag = MultiModalGuider(params=params, negative_context=neg)
    passes = guided_passes(vg, ag, state(v), state(a), v.context, a.context, v.sigma[0], 0)
    return v, a, passes


def rank_main(rank: int, world: int, port: int, sizes: list[tuple[int, int, int]], out: str) -> None:
    device = torch.device("cuda", rank)
    init_gang_group(rank, world, port, device)
    anchor.DEV = device
    torch.cuda.set_device(device)
    model, params = build()
    x0 = X0Model(model)
    sp = apply_sequence_parallel(model, rank, world)
    runner = DistributedPassRunner(rank, world)
    rows: list[dict] = []

    def row(mode: str, shape, ms: float, **extra) -> None:
        if rank == 0:
            r = dict(
                mode=mode,
                gpus=world if mode in ("sequence", "guidance", "sharded") else 1,
                h=shape[0],
                w=shape[1],
                frames=shape[2],
                ms=round(ms, 1),
                peak_gib=peak_gib(),
                **extra,
            )
            rows.append(r)
            print(json.dumps(r), flush=True)

    def replicated(shape) -> None:
        v, a, passes = guided_inputs(*shape)
        with torch.inference_mode():
            ref_fwd = ref_step = None
            if rank == 0:
                ms, ref_fwd = timed(lambda: x0(v, a, None))
                row("official", shape, ms, unit="forward", video_tokens=v.latent.shape[1])
                ms, ref_step = timed(lambda: run_sequential(x0, passes))
                row("official", shape, ms, unit="guided step (4 passes)")
                try:
                    ms, out = timed(lambda: run_batched(x0, passes))
                    row("batched", shape, ms, unit="guided step (4 passes)", rel_err=rel(out[0][0], ref_step[0][0]))
                except torch.OutOfMemoryError:
                    row("batched", shape, float("nan"), unit="guided step (4 passes)", error="OOM")
                torch.cuda.empty_cache()
            dist.barrier()
            with sequence_parallel(sp):
                ms, out = timed(lambda: x0(v, a, None))
            row("sequence", shape, ms, unit="forward", rel_err=rel(out[0], ref_fwd[0]) if rank == 0 else None)
            ms, out = timed(lambda: runner(x0, passes))
            err = rel(out[0][0], ref_step[0][0]) if rank == 0 else None
            row("guidance", shape, ms, unit="guided step (4 passes)", rel_err=err)

    def sharded(shape) -> None:
        v, a, passes = guided_inputs(*shape)
        with torch.inference_mode():
            with sequence_parallel(sp):
                ms, _ = timed(lambda: x0(v, a, None))
            weights = round(local_parameter_bytes(model) / 2**30, 1)
            row("sharded", shape, ms, unit="forward (sequence parallel)", weights_gib_per_gpu=weights)
            ms, _ = timed(lambda: lockstep(x0, passes))
            row("sharded", shape, ms, unit="guided step (guidance parallel)")

    for shape in sizes:
        replicated(shape)
        torch.cuda.empty_cache()
    shard_transformer(model, gang_mesh(device, world))
    torch.cuda.empty_cache()
    lockstep = DistributedPassRunner(rank, world, lockstep=True)
    for shape in sizes:
        sharded(shape)
        torch.cuda.empty_cache()
    if rank == 0:
        info = {
            "device": torch.cuda.get_device_name(0),
            "gpus": world,
            "torch": torch.__version__,
            "params": params,
            "date": time.strftime("%Y-%m-%d"),
        }
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gang_forward.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
        print(json.dumps(info), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    world = int(os.environ.get("GPUS", str(torch.cuda.device_count())))
    sizes = [
        tuple(map(int, s.split("x")))
        for s in os.environ.get("SIZES", "512x768x121,704x1280x121,1024x1536x121").split(",")
    ]
    out = os.environ.get("OUT", "bench/results")
    mp.spawn(rank_main, args=(world, free_loopback_port(), sizes, out), nprocs=world, join=True)


if __name__ == "__main__":
    main()
