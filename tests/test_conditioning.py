"""Image conditioning (image-to-video, keyframes) on the tiny model: validation before compute, the
conditioned latent kept as given, and renders through the plain path and the coordinator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cluster.cli import main
from ltx2 import stages
from ltx2.render import default_audio_guidance, default_video_guidance, image_conditionings
from tests.conftest import SMALL_JOB


@pytest.fixture
def picture(tmp_path):
    """A real PNG with structure (gradient + a square), not the job's size (so it is resized and cropped)."""
    y, x = np.mgrid[0:150, 0:220]
    rgb = np.stack([x * 255 // 220, y * 255 // 150, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    rgb[40:90, 60:120] = (250, 250, 20)
    path = tmp_path / "product.png"
    Image.fromarray(rgb).save(path)
    return path


def _job(tmp_path, **fields):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**SMALL_JOB, **fields}))
    return path


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
    path = _job(tmp_path, images=images)
    assert main(["validate", str(path)]) == 2
    assert words in capsys.readouterr().err


def test_keyframes_in_a_chunked_job_are_refused_with_the_fix(tmp_path, capsys, picture):
    path = _job(tmp_path, num_frames=None, duration=4, chunk_seconds=2, images=[{"path": "product.png", "frame": 40}])
    assert main(["validate", str(path)]) == 2
    assert "keyframes work only for jobs rendered in one piece" in capsys.readouterr().err


def test_image_is_pinned_by_content(tmp_path, capsys, picture):
    path = _job(tmp_path, images=[{"path": "product.png"}])
    assert main(["validate", str(path), "--json"]) == 0
    [image] = json.loads(capsys.readouterr().out)["job"]["images"]
    assert image["path"] == str(picture.resolve()) and len(image["sha256"]) == 64


def _request(images, height=64, width=96, recipe="distilled"):
    return stages.ChunkRequest(
        frames=17,
        height=height,
        width=width,
        fps=24.0,
        seed=3,
        recipe=recipe,
        steps=2,
        video_guidance=default_video_guidance(2),
        audio_guidance=default_audio_guidance(2),
        images=images,
    )


def test_first_frame_latent_is_the_encoded_image(resident, picture):
    """Strength 1 keeps the first latent exactly as encoded: stage 1 returns it unchanged (bf16: exact)."""
    positive = stages.encode_prompt(resident, "a product on a table")
    result = stages.stage1_chunk(resident, _request(((str(picture), 0, 1.0),)), positive, None)
    [item] = image_conditionings(resident, ((str(picture), 0, 1.0),), 64, 96)
    encoded = item.latent.cpu()
    assert torch.equal(result.video[:, :, :1], encoded.to(result.video.dtype))
    plain = stages.stage1_chunk(resident, _request(()), positive, None)
    assert not torch.equal(plain.video[:, :, :1], result.video[:, :, :1])


def test_stage2_state_keeps_the_first_frame_clean_for_every_tile(resident, picture):
    chunk = stages.stage1_chunk(
        resident, _request(((str(picture), 0, 1.0),)), stages.encode_prompt(resident, "x"), None
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

    plain = _job(tmp_path, name="i2v", images=[{"path": "product.png"}])
    result = run("render", str(plain), "--out", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["job"]["images"][0]["sha256"] and doc["media"]["frames"] == 17
    chunked = _job(
        tmp_path,
        name="i2v-long",
        num_frames=None,
        duration=4,
        chunk_seconds=2,
        chunk_overlap=0.5,
        decode_tile_frames=32,
        images=[{"path": "product.png", "strength": 0.9}],
    )
    result = run("render", str(chunked), "--workers", "2", "--out", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["plan"]["chunks"]) == 3 and doc["media"]["frames"] == 97
