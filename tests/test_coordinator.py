"""Planned renders on 3 CPU workers of the in-process executor: tiles, chunks, tracing, sharing the workers (the
coordinator sees only the executor interface; tests/test_executor.py holds both backends to it)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from cluster.coordinator import Coordinator
from cluster.local_executor import LocalExecutor
from jobs.plan import plan_job
from jobs.spec import validate_job
from tests.conftest import SMALL_JOB


@pytest.fixture(scope="module")
def pool(tiny_set):
    pool = LocalExecutor(tiny_set, num_workers=3)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def coordinator(pool) -> Coordinator:
    return Coordinator(pool)


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]).astype(np.float32)


def _audio(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray() for f in c.decode(c.streams.audio[0])], axis=1)


def test_one_tile_plan_is_bit_identical_to_the_untiled_render(pool, coordinator, tmp_path):
    job = validate_job(SMALL_JOB)
    plan = plan_job(job)
    assert plan.trivial
    [planned] = coordinator.run([plan], tmp_path / "planned")
    reference = pool.render(job, tmp_path / "reference").document  # the plain resident-model render on a worker
    assert planned["content_sha256"] == reference["content_sha256"]
    assert planned["media"]["frames"] == reference["media"]["frames"] == 17


TILE_JOB = {**SMALL_JOB, "height": 256, "width": 256, "tile_pixels": 192, "tile_overlap": 64}


def test_tiled_refine_stays_close_to_untiled_and_has_no_seams(coordinator, tmp_path):
    """2x2 tiles (latent spans [0,6) and [2,8) on both axes) against the untiled render of the same seed.

    Bound: both start from the same stage-1 latent and the same stage-2 noise; only the refine's attention
    context (a tile's crop instead of the frame, stage-1 audio) differs, so the change must stay well below
    what a different seed changes: mean |tiled - untiled| < 0.5 x mean |seed 8 - seed 7| (seen: 9.9 vs 45.9).
    """
    plans = [
        plan_job(validate_job(TILE_JOB)),
        plan_job(validate_job({**TILE_JOB, "tile_pixels": 1024})),
        plan_job(validate_job({**TILE_JOB, "tile_pixels": 1024, "seed": 8})),
    ]
    assert [len(p.tiles) for p in plans] == [4, 1, 1]
    docs = coordinator.run(plans, tmp_path)
    tiled, untiled, other = (_frames(tmp_path / d["output"]["video"]) for d in docs)
    tiling_change = np.abs(tiled - untiled).mean()
    seed_change = np.abs(other - untiled).mean()
    assert 0 < tiling_change < 0.5 * seed_change
    # Seam metric: mean horizontal/vertical pixel step at the tile borders (pixels 64 and 192, where one
    # tile's weight ramp ends) against the steps everywhere else.
    for axis in (1, 2):  # rows, columns of [frames, height, width, rgb]
        steps = np.abs(np.diff(tiled, axis=axis)).mean(axis=tuple(a for a in range(4) if a != axis))
        seams = [steps[63], steps[191]]
        inside = np.delete(steps, [63, 191])
        assert max(seams) <= np.percentile(inside, 95) * 1.1, (seams, np.percentile(inside, 95))


def test_three_chunk_render_is_continuous_with_audio(coordinator, tmp_path):
    job = validate_job(
        {
            **SMALL_JOB,
            "num_frames": None,
            "duration": 4,
            "chunk_seconds": 2,
            "chunk_overlap": 0.5,
            "prompt": "waves on rocks|gulls overhead|rain begins",
            "decode_tile_frames": 32,
        }
    )
    plan = plan_job(job)
    assert len(plan.chunks) == 3
    [doc] = coordinator.run([plan], tmp_path)
    video = tmp_path / doc["output"]["video"]
    media = doc["media"]
    assert media["frames"] == 97 == job.num_frames
    assert abs(media["audio_seconds"] - media["video_seconds"]) < 0.04  # within one audio latent
    frames = _frames(video)
    steps = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    boundary = set()
    for c in plan.chunks[1:]:
        # the cross-faded region and the frames just after it
        boundary.update(range(max(0, c.first_frame - 2), c.first_frame + c.overlap_video * 8 + 2))
    at_boundaries = [steps[i] for i in sorted(boundary) if i < len(steps)]
    elsewhere = [s for i, s in enumerate(steps) if i not in boundary]
    assert max(at_boundaries) <= max(elsewhere) * 1.05
    for c in plan.chunks[1:]:
        assert c.audio.start / 25 == pytest.approx(c.first_frame / 24)  # cuts at the same instant
    audio = _audio(video)
    window = 240  # 10 ms
    rms = np.sqrt((np.diff(audio, axis=1) ** 2).mean(axis=0))
    rms = rms[: rms.size // window * window].reshape(-1, window).mean(axis=1)
    cut_windows = {int(c.audio.start / 25 * 100) + d for c in plan.chunks[1:] for d in (-1, 0, 1)}
    cut = [rms[i] for i in sorted(cut_windows) if i < rms.size]
    rest = [r for i, r in enumerate(rms) if i not in cut_windows]
    assert max(cut) <= max(rest) * 1.05


def test_tasks_spread_over_all_workers_and_concurrent_jobs_finish(coordinator, pool, tmp_path):
    jobs = [validate_job({**TILE_JOB, "seed": s, "name": f"job{s}"}) for s in (21, 22)]
    docs = coordinator.run([plan_job(j) for j in jobs], tmp_path)
    assert [d["resolved"]["seed"] for d in docs] == [21, 22]
    workers = {w.name for w in pool.workers}
    spread = [{t["worker"] for t in d["trace"] if t["kind"] in ("stage2", "decode")} for d in docs]
    assert set().union(*spread) == workers  # the two jobs' tiles kept every worker busy
    assert all(len(s) >= 2 for s in spread)  # each job's tiles ran on several workers (which ones: timing)
    for d in docs:
        trace = d["trace"]
        assert all(t["end"] >= t["start"] for t in trace)
        assert {"stage1", "upsample", "stage2_init", "stage2", "decode", "audio"} <= {t["kind"] for t in trace}
        assert all("peak_vram_bytes" in t for t in trace)
        assert (tmp_path / d["output"]["video"]).is_file()
    encodes = [t for d in docs for t in d["trace"] if t["kind"] == "encode"]
    assert len(encodes) <= 2  # the shared prompt and the negative: encoded once for both jobs (or earlier)
    assert len(list(tmp_path.glob("*.json"))) == 2
