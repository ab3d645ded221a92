"""The coordinator's tensor steps without Ray: cross-fades, colour anchoring, per-step tile blending."""

from __future__ import annotations

import pytest
import torch

from jobs.plan import plan_job
from jobs.spec import validate_job
from ltx2 import stages
from ltx2.blending import anchor_statistics, blend_tiles, crossfade_into
from ltx2.stages import tile_token_index


def test_crossfade_ramps_from_previous_to_next_chunk():
    target = torch.zeros(1, 1, 8, 1, 1)
    target[:, :, :5] = 1.0  # previous chunk covers [0, 5)
    crossfade_into(target, torch.full((1, 1, 5, 1, 1), 3.0), start=3, overlap=2)
    assert target.flatten().tolist() == pytest.approx([1.0, 1.0, 1.0, 1 + 2 / 3, 1 + 4 / 3, 3.0, 3.0, 3.0])


def test_crossfade_of_identical_overlap_is_exact():
    prev = torch.randn(1, 4, 6, 2, 2, dtype=torch.bfloat16)
    target = torch.zeros(1, 4, 8, 2, 2, dtype=torch.bfloat16)
    target[:, :, :6] = prev
    nxt = torch.randn(1, 4, 5, 2, 2, dtype=torch.bfloat16)
    nxt[:, :, :3] = prev[:, :, 3:6]
    crossfade_into(target, nxt, start=3, overlap=3)
    assert torch.equal(target[:, :, :6], prev)


def test_anchor_statistics_matches_reference_channels():
    ref = torch.randn(1, 3, 5, 4, 4) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1, 1) + 3
    drifted = torch.randn(1, 3, 5, 4, 4) * 4 - 1
    out = anchor_statistics(drifted, ref)
    dims = (0, 2, 3, 4)
    assert torch.allclose(out.mean(dims), ref.mean(dims), atol=1e-4)
    assert torch.allclose(out.std(dims), ref.std(dims), atol=1e-3)


@pytest.mark.parametrize("keyframes", [(), (9, 15)], ids=["grid only", "with keyframe tokens"])
def test_blending_identical_predictions_returns_them_and_covers_every_token(keyframes):
    from ltx_core.types import LatentState

    plan = plan_job(
        validate_job(
            {"prompt": "x", "height": 256, "width": 384, "num_frames": 17, "tile_pixels": 128, "tile_overlap": 64}
        )
    )
    assert len(plan.tiles) > 4
    shape = (1, 128, plan.latent_frames, plan.latent_height, plan.latent_width)
    grid = plan.latent_frames * plan.latent_height * plan.latent_width
    per_frame = plan.latent_height * plan.latent_width
    slots = tuple((grid + k * per_frame, (f + 7) // 8) for k, f in enumerate(keyframes))
    full = torch.randn(1, grid + len(keyframes) * per_frame, 128)
    state = stages.Stage2State(
        LatentState(full, full[..., :1], torch.zeros(1, 3, full.shape[1], 2), full), None, shape, (), slots
    )
    preds = []
    for t in plan.tiles:
        index, _ = stages.tile_tokens(
            shape, slots, (t.time.start, t.time.stop), (t.height.start, t.height.stop), (t.width.start, t.width.stop)
        )
        preds.append(full[:, index])
    assert torch.allclose(blend_tiles(plan, state, preds), full, atol=1e-6)  # weights sum to one everywhere


def test_tile_token_index_matches_patchifier_order():
    from ltx_core.components.patchifiers import VideoLatentPatchifier

    latent = torch.randn(1, 2, 3, 4, 5)
    tokens = VideoLatentPatchifier(patch_size=1).patchify(latent)
    index = tile_token_index(tuple(latent.shape), (1, 3), (2, 4), (0, 2))
    expected = VideoLatentPatchifier(patch_size=1).patchify(latent[:, :, 1:3, 2:4, 0:2].contiguous())
    assert torch.equal(tokens[:, index], expected)
