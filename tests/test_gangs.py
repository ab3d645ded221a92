"""Gangs on the local Ray cluster (2 CPU ranks, gloo, float32 tiny model): exact, and rebuilt after a kill.

Each mode's output is compared with one process running the same task on the same inputs. Sequence parallel and
sharded gangs are bit-identical (`torch.equal`). A guidance gang batches its share of a step's passes, which the
single CPU worker runs one by one: in float32 the batched matmuls round differently, so it is held to a relative
error (max |gang - single| / max |single|) ≤ 1e-5 (reached: up to 2.4e-6). The reached values are printed (pytest -s).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray
import torch

from cluster.gang import Gang
from cluster.worker_options import WorkerOptions
from jobs.placement import Placement
from ltx2 import stages
from ltx2.render import default_audio_guidance, default_video_guidance

GUIDANCE_BOUND = 1e-5  # guidance gangs only: passes batched per rank (see the module's docstring)
CPU_FLOAT32 = WorkerOptions(device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def single(tiny_set, ray_cluster):
    """The reference: one ordinary worker actor (same thread settings as the gang's members)."""
    from cluster.worker import RenderWorker

    actor = ray.remote(RenderWorker).options(num_cpus=1).remote(tiny_set, CPU_FLOAT32, "single")
    yield actor
    ray.kill(actor)


def _gang(tiny_set, mode: str, **kwargs):
    return (
        ray.remote(Gang)
        .options(num_cpus=0, max_concurrency=4)
        .remote(tiny_set, Placement(mode, 2), CPU_FLOAT32, f"gang-{mode}", collective_timeout_s=60, **kwargs)
    )


def _encode(actor, text: str) -> stages.Contexts:
    value, _ = actor.task.options(num_returns=2).remote("encode", text, text=text)
    return ray.get(value)


def _stage1_args(single, height: int, width: int, steps: int = 3) -> dict:
    request = stages.ChunkRequest(
        frames=17,
        height=height,
        width=width,
        fps=24.0,
        seed=5,
        recipe="two_stage",
        steps=steps,
        video_guidance=default_video_guidance(2),
        audio_guidance=default_audio_guidance(2),
    )
    return {
        "request": request,
        "positive": _encode(single, "a red kite over dunes, wind"),
        "negative": _encode(single, "blurry"),
        "previous": None,
        "overlap_video": 0,
        "overlap_audio": 0,
    }


def _run(actor, kind: str, **kwargs):
    value, trace = actor.task.options(num_returns=2).remote(kind, kind, **kwargs)
    return ray.get(value), ray.get(trace)


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref.float()).abs().max() / ref.float().abs().max())


def _check(name: str, ours: torch.Tensor, ref: torch.Tensor, exact: bool) -> None:
    error = _relative_error(ours, ref)
    print(f"{name}: relative error {error:.2e}")
    if exact:
        assert torch.equal(ours, ref), (name, error)
    else:
        assert error <= GUIDANCE_BOUND, (name, error)
    assert not torch.equal(ref, torch.zeros_like(ref))


# 96x160 stage-1 pixels, 17 frames: 3 x 3 x 5 = 45 video tokens, an uneven split over 2 ranks (23 + 22).
UNEVEN = (96, 160)
EVEN = (64, 128)  # 3 x 2 x 4 = 24 tokens


@pytest.mark.parametrize("mode", ["sequence", "guidance", "sharded"])
def test_gang_stage1_equals_one_process(tiny_set, single, mode):
    gang = _gang(tiny_set, mode)
    try:
        for shape in (UNEVEN, EVEN):
            args = _stage1_args(single, *shape)
            ref, _ = _run(single, "stage1", **args)
            ours, trace = _run(gang, "stage1", **args)
            expected = "sequence" if mode == "sequence" else "guidance"
            assert trace.parallelism == expected and trace.gang.ranks == 2
            for output in ("video", "audio"):
                exact = mode != "guidance"
                _check(f"{mode} stage 1 {shape} {output}", getattr(ours, output), getattr(ref, output), exact)
    finally:
        ray.get(gang.shutdown.remote())
        ray.kill(gang)


@pytest.mark.parametrize("mode", ["sequence", "sharded"])
def test_gang_stage2_tile_equals_one_process(tiny_set, single, mode):
    """Stage 2 is one pass with the distilled LoRA fused: sequence parallel, and LoRA fusion into shards."""
    args = _stage1_args(single, *UNEVEN)
    chunk, _ = _run(single, "stage1", **args)
    upscaled, _ = _run(single, "upsample", video=chunk.video)
    state, _ = _run(
        single,
        "stage2_init",
        upscaled=upscaled,
        audio=chunk.audio,
        num_frames=17,
        height=192,
        width=320,
        fps=24.0,
        generator_state=chunk.generator_state,
        refine_audio=True,
    )
    t, h, w = state.video_shape[2:]
    tile = {
        "state": state,
        "contexts": args["positive"],
        "step_index": 0,
        "time": (0, t),
        "height": (0, h),
        "width": (0, w),
        "audio_span": (0, state.audio_shape[2]),
        "time_origin": 0.0,
    }
    ref, _ = _run(single, "stage2", **tile)
    gang = _gang(tiny_set, mode)
    try:
        ours, trace = _run(gang, "stage2", **tile)
        assert trace.parallelism == "sequence"
        for name, o, r in (("video", ours[0], ref[0]), ("audio", ours[1], ref[1])):
            _check(f"{mode} stage 2 {name}", o, r, exact=True)
    finally:
        ray.get(gang.shutdown.remote())
        ray.kill(gang)


def test_killed_member_rebuilds_the_gang_and_the_retry_is_identical(tiny_set, single):
    args = _stage1_args(single, *EVEN, steps=30)
    gang = _gang(tiny_set, "guidance")
    try:
        undisturbed, _ = _run(gang, "stage1", **args)
        victim = ray.get(gang.info.remote()).gang.member_pids[1]
        value, trace = gang.task.options(num_returns=2).remote("stage1", "stage1", **args)
        deadline = time.monotonic() + 60
        while ray.get(gang.progress.remote()).step < 3:  # mid-task, inside the collectives
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)  # a member process this test's gang started
        retried, trace = ray.get(value), ray.get(trace)
        info = ray.get(gang.info.remote())
        assert trace.rebuilds == 1 and info.gang.rebuilds == 1
        assert victim not in info.gang.member_pids
        assert torch.equal(retried.video, undisturbed.video) and torch.equal(retried.audio, undisturbed.audio)
    finally:
        ray.get(gang.shutdown.remote())
        ray.kill(gang)


def test_a_failing_task_is_not_retried_by_rebuilding(tiny_set, single):
    gang = _gang(tiny_set, "sequence")
    try:
        with pytest.raises(ray.exceptions.RayTaskError, match=r"unknown task kind 'unknown_kind'"):
            _run(gang, "unknown_kind")
        assert ray.get(gang.info.remote()).gang.rebuilds == 0
    finally:
        ray.get(gang.shutdown.remote())
        ray.kill(gang)
