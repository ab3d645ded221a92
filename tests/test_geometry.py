"""Pure planning: chunk cuts, tile coverage, blend weights, the task graph (no torch, no Ray)."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from jobs.geometry import (
    Span,
    audio_latent_frames,
    cut_unit,
    plan_chunks,
    plan_tiles,
    split_axis,
    video_latent_frames,
    weight_sums,
)
from jobs.plan import chunk_seed, describe, plan_job
from jobs.spec import JobValidationError, validate_job


def test_planner_is_pure():
    """Importing the planner in a fresh interpreter pulls in neither torch nor ray."""
    code = "import sys, jobs.plan, jobs.geometry; sys.exit(int('torch' in sys.modules or 'ray' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("seconds", [10, 37, 61])
@pytest.mark.parametrize("fps", [24.0, 25.0, 30.0])
def test_chunks_tile_both_modalities_exactly(seconds, fps):
    frames = (round(seconds * fps) // 8) * 8 + 1
    chunks = plan_chunks(frames, fps, 10.0, 1.0)
    total_video, total_audio = video_latent_frames(frames), audio_latent_frames(frames, fps)
    assert chunks[0].video.start == 0 and chunks[-1].video.stop == total_video
    assert chunks[0].audio.start == 0 and chunks[-1].audio.stop == total_audio
    unit = cut_unit(fps)
    for prev, cur in itertools.pairwise(chunks):
        assert cur.video.start % unit == 0  # cut on the shared grid
        start_seconds = cur.video.start * 8 / fps
        assert cur.audio.start == pytest.approx(start_seconds * 25, abs=1e-9)  # whole audio latent, same instant
        assert cur.overlap_video == prev.video.stop - cur.video.start >= 1
        assert cur.overlap_audio == prev.audio.stop - cur.audio.start >= 1
    for c in chunks:
        assert c.num_frames <= 10 * fps + 1 and (c.num_frames - 1) % 8 == 0
        assert c.audio.size == audio_latent_frames(c.num_frames, fps)  # what ltx-core makes for that clip


def test_cut_grid():
    assert cut_unit(24.0) == 3  # 1 s = 24 frames = 3 video latents = 25 audio latents
    assert cut_unit(25.0) == 1  # every 8 frames = 8 audio latents
    assert cut_unit(30.0) == 3


def test_short_job_is_one_chunk():
    (chunk,) = plan_chunks(121, 24.0, 10.0, 1.0)
    assert chunk.video == Span(0, 16) and chunk.audio == Span(0, 126) and chunk.overlap_video == 0


def test_chunks_that_cannot_advance_are_refused():
    with pytest.raises(ValueError, match="cannot advance"):
        plan_chunks(24 * 30 + 1, 24.0, 2.0, 1.5)


@pytest.mark.parametrize(("length", "tile", "overlap"), [(34, 16, 4), (10, 16, 4), (60, 24, 4), (7, 3, 1), (5, 2, 1)])
def test_split_axis_covers_with_overlap(length, tile, overlap):
    spans = split_axis(length, tile, overlap)
    assert spans[0].start == 0 and spans[-1].stop == length
    assert all(s.size <= tile for s in spans)
    for a, b in itertools.pairwise(spans):
        assert a.stop - b.start >= overlap and b.start > a.start


@pytest.mark.parametrize(
    ("frames", "height", "width", "tile", "overlap"), [(5, 8, 12, 6, 2), (4, 4, 6, 2, 1), (7, 34, 60, 24, 4)]
)
def test_tile_weights_partition_unity(frames, height, width, tile, overlap):
    time_spans = (Span(0, frames),) if frames < 6 else (Span(0, 4), Span(3, 7))
    tiles = plan_tiles(time_spans, height, width, tile, overlap)
    sums = weight_sums(tiles, frames, height, width)
    cells = [v for f in sums for row in f for v in row]
    assert len(cells) == frames * height * width
    assert min(cells) > 0  # every latent cell covered: normalising by the sum is a partition of unity
    for t in tiles:
        assert all(0 < w <= 1 for w in t.time_weights + t.height_weights + t.width_weights)


def test_one_tile_plan_has_unit_weights():
    (tile,) = plan_tiles((Span(0, 3),), 4, 6, 32, 4)
    assert set(tile.time_weights + tile.height_weights + tile.width_weights) == {1.0}


SMALL = {"prompt": "waves", "seed": 7, "height": 128, "width": 192, "num_frames": 17, "steps": 3}


def test_plan_task_graph_and_summary():
    plan = plan_job(
        validate_job(
            {
                **SMALL,
                "duration": 4,
                "num_frames": None,
                "chunk_seconds": 2,
                "chunk_overlap": 0.5,
                "prompt": "a|b|a",
                "tile_pixels": 128,
                "tile_overlap": 64,
            }
        )
    )
    assert len(plan.chunks) == 3 and len(plan.tiles) == 3 * 2
    assert plan.prompts[:2] == ("a", "b") and plan.chunk_prompt == (0, 1, 0)  # distinct prompts encoded once
    ids = {t.id for t in plan.tasks}
    assert all(d in ids for t in plan.tasks for d in t.deps)
    assert tuple(d for d in next(t for t in plan.tasks if t.id == "stage1:1").deps if d.startswith("stage1")) == (
        "stage1:0",
    )
    assert not plan.refine_audio
    summary = plan.summary()
    assert summary["tasks"]["stage2"] == 3 * 6 and summary["tasks"]["encode"] == 3
    text = describe(plan)
    assert "3 chunk(s)" in text and "6 tile(s)" in text


def test_trivial_plan_and_seeds():
    plan = plan_job(validate_job(SMALL))
    assert plan.trivial and plan.refine_audio
    assert plan.chunk_seed == (7,)
    assert chunk_seed(7, 1) != chunk_seed(7, 2) != chunk_seed(8, 1)
    assert chunk_seed(7, 1) == chunk_seed(7, 1)


def test_more_prompts_than_chunks_refused():
    with pytest.raises(JobValidationError, match="3 prompts but the job has 1 chunk"):
        plan_job(validate_job({**SMALL, "prompt": "a|b|c"}))


def test_decode_tile_counts_match_ltx_core():
    """The pure planner's decode tile count equals what ltx-core's decoder tiling produces."""
    import torch
    from ltx_core.model.video_vae import TilingConfig
    from ltx_core.model.video_vae.tiling import SpatialTilingConfig, TemporalTilingConfig

    from ltx2.blending import official_decode_tiles

    for extra in ({}, {"decode_tile_pixels": 96, "decode_tile_frames": 32, "num_frames": 97}):
        plan = plan_job(validate_job({**SMALL, "height": 640, "width": 1024, **extra}))
        tiling = TilingConfig(
            SpatialTilingConfig(plan.decode.tile_pixels, plan.decode.overlap_pixels),
            TemporalTilingConfig(plan.decode.tile_frames, plan.decode.overlap_frames),
        )
        shape = (1, 128, plan.latent_frames, plan.latent_height, plan.latent_width)
        tiles = official_decode_tiles(torch.empty(shape, device="meta"), tiling)
        assert len(tiles) == plan.decode.spatial_tiles * plan.decode.temporal_tiles
