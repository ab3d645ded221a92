"""Image conditioning (image-to-video, keyframes) on the tiny model: validation before compute, the
conditioned latent kept as given, and renders through the plain path and the coordinator."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from cluster.cli import main
from ltx2 import stages
from ltx2.samples import write_picture
from ltx2.stages import image_conditionings
from tests.conftest import SMALL_JOB, THREE_CHUNKS, small_chunk, write_job


@pytest.fixture
def picture(tmp_path):
    """A real PNG with structure (gradient + a square), not the job's size (so it is resized and cropped)."""
    return write_picture(tmp_path / "product.png")


@pytest.mark.parametrize(
    ("images", "words"),
    [
        ([{"path": "missing.png"}], "does not exist"),
        ([{"path": "/etc/hostname"}], "outside the allowed input folders"),
        ([{"path": "job.yaml"}], "not a readable image"),
        ([{"path": "gray.png"}], "convert it to RGB"),
        ([{"path": "product.png", "strength": 2}], "images[0].strength"),
        ([{"path": "product.png", "frame": 17}], "images[0].frame"),
        ([{"path": "product.png"}, {"path": "product.png"}], "pins the same frame twice"),
    ],
    ids=["missing", "outside the roots", "not an image", "grayscale", "strength", "frame past the end", "twice"],
)
def test_bad_images_are_refused_before_compute(tmp_path, capsys, picture, images, words):
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "gray.png")
    path = write_job(tmp_path, images=images)
    assert main(["validate", str(path)]) == 2
    assert words in capsys.readouterr().err


def test_each_image_lands_in_the_first_chunk_that_holds_its_frame():
    from jobs.plan import plan_job
    from jobs.spec import validate_job

    plan = plan_job(
        validate_job(
            {
                **SMALL_JOB,
                "num_frames": None,
                "duration": 4,
                "chunk_seconds": 2,
                "chunk_overlap": 0.5,
                "images": [{"path": "a.png"}, {"path": "b.png", "frame": 40}, {"path": "c.png", "frame": 96}],
            }
        )
    )
    assert len(plan.chunks) == 3
    for i, frame in enumerate([0, 40, 96]):
        first = min(c.index for c in plan.chunks if c.first_frame <= frame < c.first_frame + c.num_frames)
        assert (i, frame - plan.chunks[first].first_frame) in plan.chunk_images[first]
    placed = [i for chunk in plan.chunk_images for i, _ in chunk]
    assert sorted(placed) == [0, 1, 2]  # each image exactly once
    assert all(frame > 0 for chunk in plan.chunk_images[1:] for _, frame in chunk)  # never on a tail's frame 0


def test_image_is_pinned_by_content(tmp_path, capsys, picture):
    path = write_job(tmp_path, images=[{"path": "product.png"}])
    assert main(["validate", str(path), "--json"]) == 0
    [image] = json.loads(capsys.readouterr().out)["job"]["images"]
    assert image["path"] == str(picture.resolve()) and len(image["sha256"]) == 64


def test_first_frame_latent_is_the_encoded_image(resident, picture):
    """Strength 1 keeps the first latent exactly as encoded: stage 1 returns it unchanged (bf16: exact)."""
    positive = stages.encode_prompt(resident, "a product on a table")
    result = stages.stage1_chunk(resident, small_chunk(images=((str(picture), 0, 1.0),)), positive, None)
    [item] = image_conditionings(resident, ((str(picture), 0, 1.0),), 64, 96)
    encoded = item.latent.cpu()
    assert torch.equal(result.video[:, :, :1], encoded.to(result.video.dtype))
    plain = stages.stage1_chunk(resident, small_chunk(), positive, None)
    assert not torch.equal(plain.video[:, :, :1], result.video[:, :, :1])


def test_stage2_state_keeps_the_first_frame_clean_for_every_tile(resident, picture):
    chunk = stages.stage1_chunk(
        resident, small_chunk(images=((str(picture), 0, 1.0),)), stages.encode_prompt(resident, "x"), None
    )
    upscaled = stages.upsample(resident, chunk.video)
    state = stages.stage2_init(
        resident, upscaled, chunk.audio, 17, 128, 192, 24.0, chunk.generator_state, True, ((str(picture), 0, 1.0),)
    )
    first = 128 // 32 * 192 // 32  # tokens of the first latent frame
    assert torch.all(state.video.denoise_mask[:, :first] == 0) and torch.all(state.video.denoise_mask[:, first:] == 1)
    [item] = image_conditionings(resident, ((str(picture), 0, 1.0),), 128, 192)
    tokens = item.latent.flatten(2).transpose(1, 2).cpu()  # [1, h*w, 128]: the patchifier's order (1x1x1 patches)
    assert torch.equal(state.video.latent[:, :first], tokens.to(state.video.latent.dtype))


def test_image_to_video_renders_plain_and_chunked(tmp_path, picture):
    """Through the command line as users run it (a subprocess with its own embedded Ray)."""
    from tests.test_cli import run

    plain = write_job(tmp_path, name="i2v", images=[{"path": "product.png"}])
    result = run("render", "--tiny", str(plain), "--out", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["job"]["images"][0]["sha256"] and doc["media"]["frames"] == 17
    chunked = write_job(
        tmp_path,
        name="i2v-long",
        **THREE_CHUNKS,
        images=[{"path": "product.png", "strength": 0.9}],
    )
    result = run("render", "--tiny", str(chunked), "--workers", "2", "--out", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["plan"]["chunks"]) == 3 and doc["media"]["frames"] == 97


def test_stage2_keyframe_tokens_are_clean_and_carved_by_the_tiles(resident, picture):
    """A keyframe's tokens sit after the grid, clean (strength 1), and a tile carries its spatial crop."""
    chunk = stages.stage1_chunk(
        resident, small_chunk(images=((str(picture), 8, 1.0),)), stages.encode_prompt(resident, "x"), None
    )
    upscaled = stages.upsample(resident, chunk.video)
    images = ((str(picture), 0, 1.0), (str(picture), 9, 1.0))
    state = stages.stage2_init(
        resident, upscaled, chunk.audio, 17, 128, 192, 24.0, chunk.generator_state, False, images
    )
    _, _, t, h, w = state.video_shape
    assert state.keyframes == ((t * h * w, 2),)  # frame 9 is in latent frame 2 (frames 9..16)
    assert state.video.latent.shape[1] == t * h * w + h * w
    assert torch.all(state.video.denoise_mask[:, t * h * w :] == 0)
    index, frames = stages.tile_tokens(state.video_shape, state.keyframes, (1, 3), (0, 2), (2, 5))
    assert len(index) == 2 * 2 * 3 + 2 * 3 and torch.all(frames[-6:] == 2)
    assert set(index[-6:].tolist()) == {t * h * w + r * w + c for r in range(2) for c in range(2, 5)}
    none, _ = stages.tile_tokens(state.video_shape, state.keyframes, (0, 2), (0, 2), (2, 5))
    assert len(none) == 2 * 2 * 3  # the keyframe's latent frame is not in this tile's time span
    assert stages.unpatchify_video(state.video, state.video_shape).shape == upscaled.shape


def test_keyframes_render_through_chunks_and_tiles(tmp_path, picture):
    from tests.test_cli import run

    job = write_job(
        tmp_path,
        name="storyboard",
        num_frames=None,
        duration=4,
        chunk_seconds=2,
        chunk_overlap=0.5,
        tile_pixels=128,
        tile_overlap=64,
        decode_tile_frames=32,
        images=[{"path": "product.png"}, {"path": "product.png", "frame": 40}, {"path": "product.png", "frame": 90}],
    )
    result = run("render", "--tiny", str(job), "--workers", "2", "--out", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["plan"]["chunks"]) == 3 and len(doc["plan"]["stage2_tiles"]) > 3
    assert sorted(i for c in doc["plan"]["chunks"] for i, _ in c["images"]) == [0, 1, 2]
    assert doc["media"]["frames"] == 97


def test_two_chunk_image_to_video_keeps_the_first_frame(resident, picture):
    """Chunk 0 carries the image, chunk 1 continues from its tail; the stitched latent still starts with the
    encoded image exactly (what the coordinator's stitch task does, in-process)."""
    from jobs.plan import plan_job
    from jobs.spec import validate_job
    from ltx2.blending import crossfade_into

    plan = plan_job(
        validate_job({**SMALL_JOB, "num_frames": 65, "chunk_seconds": 2.0, "chunk_overlap": 0.5, "recipe": "distilled"})
    )
    assert len(plan.chunks) == 2
    positive = stages.encode_prompt(resident, "a product on a table")
    first, second = plan.chunks
    image = ((str(picture), 0, 1.0),)
    r0 = stages.stage1_chunk(resident, replace(small_chunk(images=image), frames=first.num_frames), positive, None)
    r1 = stages.stage1_chunk(
        resident,
        replace(small_chunk(), frames=second.num_frames, seed=plan.chunk_seed[1]),
        positive,
        None,
        tail_video=r0.video[:, :, -second.overlap_video :],
        tail_audio=r0.audio[:, :, -second.overlap_audio :],
    )
    video = torch.zeros(*r0.video.shape[:2], plan.latent_frames, *r0.video.shape[3:], dtype=r0.video.dtype)
    crossfade_into(video, r0.video, first.video.start, first.overlap_video)
    crossfade_into(video, r1.video, second.video.start, second.overlap_video)
    [item] = image_conditionings(resident, image, 64, 96)
    assert torch.equal(video[:, :, :1], item.latent.cpu().to(video.dtype))
    assert not torch.equal(video[:, :, -1:], torch.zeros_like(video[:, :, -1:]))  # chunk 1 filled the rest
