"""Lightricks' own pipeline classes against the farm: the same job and seed, the same frames and audio, bit for bit.

Each official class of ltx-pipelines 1.0.0 that the farm mirrors runs here as published, on the tiny checkpoint set
on the CPU: its constructor, its `ModelLedger` building every model from the files on every call, its `__call__`
with the arguments its own command line passes (the official defaults of `detect_params` for the tiny checkpoint,
the STG block at the tiny model's depth). Two things are replaced, nothing else:
- The text encoder. ltx-core builds Gemma-3-12B from a hard-coded config and cannot load the tiny Gemma folder
  (`test_the_official_text_path_cannot_load_the_tiny_gemma`), so the pipeline module's `encode_prompts` returns the
  encodings the farm renders with, for the same texts (`same_encodings`).
- `torch.cuda.synchronize`, which the classes call between stages whatever their device: a no-op (nothing to wait for).
Both sides render in bfloat16 (the classes hard-code it; the farm's CPU tests use it too), the farm in its exact
mode: a guided step's passes one by one, as upstream (its GPU workers batch them where the video is short, which
rounds differently: held to the official function by `tests/test_guided_passes.py`).

The tiny set has no distilled checkpoint: its distilled weights are the dev weights with the distilled LoRA fused
(the farm renders the distilled recipe that way). The classes that take a distilled checkpoint get the dev file
with the distilled LoRA among their `loras`, fused by ltx-core's own builder; the IC-LoRA class's stage-2 ledger,
built with no LoRA for a distilled file, gets the distilled LoRA alone.

Where the farm differs: an image at frame 0 of a keyframe job (`test_keyframe_interpolation_pipeline`).
"""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps
from ltx_core.model.video_vae import TilingConfig
from ltx_core.text_encoders.gemma.embeddings_processor import EmbeddingsProcessorOutput
from ltx_pipelines import (
    A2VidPipelineTwoStage,
    DistilledPipeline,
    ICLoraPipeline,
    KeyframeInterpolationPipeline,
    TI2VidTwoStagesPipeline,
    a2vid_two_stage,
    distilled,
    ic_lora,
    keyframe_interpolation,
    ti2vid_two_stages,
)
from ltx_pipelines.utils.args import ImageConditioningInput
from ltx_pipelines.utils.constants import DEFAULT_NEGATIVE_PROMPT, detect_params
from ltx_pipelines.utils.media_io import decode_audio_from_file
from ltx_pipelines.utils.model_ledger import ModelLedger

from cluster.requests import render_request
from jobs.spec import validate_job
from ltx2.media import SourceAudio, write_mp4
from ltx2.parallel.guidance import run_sequential
from ltx2.render import Renderer, RenderOutput, tiling_config
from ltx2.samples import write_clip, write_picture, write_track
from ltx2.tiny import write_tiny_lora

CPU = torch.device("cpu")

JOB = {
    "prompt": "waves crash on black rocks, gulls cry",
    "seed": 7,
    "height": 64,
    "width": 128,
    "num_frames": 9,
    "frame_rate": 24.0,
    "steps": 2,
}
"""A small two-stage job: stage 1 at 32x64 (1x2 latents), 2 latent frames, 2 guided steps."""

TINY_STG_BLOCKS = [1]
"""The official STG block (29 of 48) at the tiny model's depth (2 blocks)."""

IC_DOWNSCALE = 2
"""The IC-LoRA's `reference_downscale_factor`: its reference is encoded at half the stage-1 size."""


@pytest.fixture(scope="module")
def farm(resident) -> Renderer:
    """The farm's renderer on the resident models: its prompt cache holds the encodings both sides use."""
    return Renderer(resident)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_set) -> Path:
    folder = tmp_path_factory.mktemp("official-inputs")
    write_picture(folder / "picture.png")
    write_picture(folder / "ending.png", color=(30, 200, 240))
    write_clip(folder / "depth.mp4", 20)
    write_track(folder / "track.wav", 1.0)
    write_tiny_lora(
        folder / "ic.safetensors",
        tiny_set.checkpoint,
        seed=5,
        targets="attn1",
        metadata={"reference_downscale_factor": str(IC_DOWNSCALE)},
    )
    return folder


@pytest.fixture(scope="module")
def official(farm):
    """The official modules with their two replacements (see the module docstring), for this module's tests."""

    def same_encodings(
        prompts: list[str], model_ledger: object, *, enhance_first_prompt: bool = False, **_enhance: object
    ) -> list[EmbeddingsProcessorOutput]:
        assert not enhance_first_prompt  # prompt enhancement generates text with Gemma: not mirrored
        # the pipelines read the two encodings only; the mask went into them already
        return [EmbeddingsProcessorOutput(c.video, c.audio, None) for c in map(farm.prompts.get, prompts)]

    with pytest.MonkeyPatch.context() as patch:
        for module in (ti2vid_two_stages, distilled, a2vid_two_stage, ic_lora, keyframe_interpolation):
            patch.setattr(module, "encode_prompts", same_encodings)
        patch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        # `cleanup_memory` runs gc.collect() six times a call over every object of the test session: frozen, they
        # are not walked again (no tensor is touched either way)
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()


def lora(path: Path | str) -> LoraPathStrengthAndSDOps:
    """A LoRA at strength 1 as the official command line passes it (ComfyUI key names mapped)."""
    return LoraPathStrengthAndSDOps(str(path), 1.0, LTXV_LORA_COMFY_RENAMING_MAP)


def call_arguments(job: dict) -> dict:
    """The job's own fields as the official `__call__` takes them."""
    return {
        "prompt": job["prompt"],
        "seed": job["seed"],
        "height": job["height"],
        "width": job["width"],
        "num_frames": job["num_frames"],
        "frame_rate": job["frame_rate"],
        "images": [
            ImageConditioningInput(image["path"], image.get("frame", 0), image.get("strength", 1.0))
            for image in job.get("images", [])
        ],
    }


def guided_arguments(job: dict, tiny_set) -> dict:
    """`call_arguments` with the guided stage 1's: the official negative prompt, the job's steps, and the official
    command line's guidance for this checkpoint (`detect_params`), the STG block at the tiny depth."""
    params = detect_params(str(tiny_set.checkpoint))
    return {
        **call_arguments(job),
        "negative_prompt": DEFAULT_NEGATIVE_PROMPT,
        "num_inference_steps": job["steps"],
        "video_guider_params": replace(params.video_guider_params, stg_blocks=TINY_STG_BLOCKS),
        "audio_guider_params": replace(params.audio_guider_params, stg_blocks=TINY_STG_BLOCKS),
    }


def dev_pipeline(cls: type, tiny_set):
    """One of the classes on the dev checkpoint with the distilled LoRA for stage 2 (two-stage, A2Vid, keyframes)."""
    return cls(
        checkpoint_path=str(tiny_set.checkpoint),
        distilled_lora=[lora(tiny_set.distilled_lora)],
        spatial_upsampler_path=str(tiny_set.spatial_upsampler),
        gemma_root=str(tiny_set.gemma_root),
        loras=[],
        device=CPU,
    )


def run_official(pipeline, **arguments) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 frames [f, h, w, 3], waveform) of an official call, decoded in the official command line's tiles."""
    with torch.inference_mode():
        video, audio = pipeline(**arguments, tiling_config=TilingConfig.default())
        return torch.cat(list(video)), audio.waveform


def run_farm(farm: Renderer, job: dict) -> RenderOutput:
    assert farm.models.pass_runner is run_sequential  # the exact mode: a guided step's passes one by one
    request = render_request(validate_job(job), farm.models.num_layers)
    assert tiling_config(request.decode_tiling) == TilingConfig.default()  # the same decode tiles
    return farm.render(request)


def assert_same(official: tuple[torch.Tensor, torch.Tensor], ours: RenderOutput) -> None:
    frames, waveform = official
    assert frames.dtype == ours.video.dtype == torch.uint8
    assert torch.equal(frames, ours.video), f"frames differ by up to {(frames.int() - ours.video.int()).abs().max()}"
    assert torch.equal(waveform.float(), ours.audio), f"audio differs by up to {(waveform - ours.audio).abs().max()}"


def test_the_official_text_path_cannot_load_the_tiny_gemma(tiny_set):
    """Why the prompt encodings are replaced: ltx-core sizes Gemma and the text projection for the 12B model. If this
    fails, the official text encoder loads the tiny folder: run it as is instead of `same_encodings`."""
    ledger = ModelLedger(
        dtype=torch.bfloat16,
        device=CPU,
        checkpoint_path=str(tiny_set.checkpoint),
        gemma_root_path=str(tiny_set.gemma_root),
    )
    for build in (ledger.text_encoder, ledger.gemma_embeddings_processor):
        with pytest.raises(RuntimeError, match="size mismatch"):
            build()


def test_two_stage_pipeline(official, farm, tiny_set):
    """`TI2VidTwoStagesPipeline` (text-to-video): guided stage 1 with the official negative prompt, distilled-LoRA
    stage 2."""
    pipeline = dev_pipeline(TI2VidTwoStagesPipeline, tiny_set)
    official_out = run_official(pipeline, **guided_arguments(JOB, tiny_set))
    assert_same(official_out, run_farm(farm, JOB))


def test_distilled_pipeline(official, farm, tiny_set, inputs):
    """`DistilledPipeline` (image-to-video here: the first frame pinned): 8 distilled sigmas, no guidance, the same
    weights in both stages."""
    job = {**JOB, "recipe": "distilled", "images": [{"path": str(inputs / "picture.png")}]}
    pipeline = DistilledPipeline(
        distilled_checkpoint_path=str(tiny_set.checkpoint),
        gemma_root=str(tiny_set.gemma_root),
        spatial_upsampler_path=str(tiny_set.spatial_upsampler),
        loras=[lora(tiny_set.distilled_lora)],
        device=CPU,
    )
    assert_same(run_official(pipeline, **call_arguments(job)), run_farm(farm, job))


@pytest.fixture(scope="module")
def audio_to_video(official, farm, tiny_set, inputs, tmp_path_factory):
    """`A2VidPipelineTwoStage` and the farm on an audio-to-video job: (official frames, the official class's audio,
    the farm's output, the sound of the farm's MP4 decoded the official way)."""
    track = inputs / "track.wav"
    job = {**JOB, "audio": {"path": str(track)}}
    pipeline = dev_pipeline(A2VidPipelineTwoStage, tiny_set)
    seconds = JOB["num_frames"] / JOB["frame_rate"]
    arguments = guided_arguments(job, tiny_set)
    del arguments["audio_guider_params"]  # the class gives the frozen track no guidance
    frames, waveform = run_official(
        pipeline,
        **arguments,
        audio_path=str(track),
        audio_max_duration=seconds,  # what the official command line passes
    )
    ours = run_farm(farm, job)
    mp4 = tmp_path_factory.mktemp("a2v") / "a2v.mp4"
    write_mp4(mp4, ours.video, JOB["frame_rate"], None, 0, source_audio=SourceAudio(str(track)))
    carried = decode_audio_from_file(str(mp4), CPU, 0.0, seconds).waveform.squeeze(0)
    return frames, waveform, ours, carried


def test_audio_to_video_pipeline_sound(audio_to_video):
    """The official class returns the track itself as its audio (decoded for the video's duration); the farm carries
    the track into its MP4 (FLAC for a 16-bit source): decoded the official way, the same samples."""
    _, waveform, ours, carried = audio_to_video
    assert ours.audio is None  # the output's sound is the track, not a re-synthesis
    assert torch.equal(carried, waveform)


def test_audio_to_video_pipeline_frames(audio_to_video):
    """`A2VidPipelineTwoStage`: the track's latent frozen in both stages, video-only denoising, guided stage 1."""
    frames, _, ours, _ = audio_to_video
    assert torch.equal(frames, ours.video), f"frames differ by up to {(frames.int() - ours.video.int()).abs().max()}"


def test_ic_lora_pipeline(official, farm, tiny_set, inputs):
    """`ICLoraPipeline` with a given control pass (depth): the reference encoded at the stage-1 size over the LoRA's
    downscale factor and appended to stage 1 with the IC-LoRA fused; stage 2 refines without either."""
    job = {
        **JOB,
        "height": 128,  # the reference at 32x64: the VAE's 32-pixel grid
        "width": 256,
        "recipe": "distilled",
        "control": {"kind": "depth", "path": str(inputs / "depth.mp4"), "lora": str(inputs / "ic.safetensors")},
    }
    pipeline = ICLoraPipeline(
        distilled_checkpoint_path=str(tiny_set.checkpoint),
        spatial_upsampler_path=str(tiny_set.spatial_upsampler),
        gemma_root=str(tiny_set.gemma_root),
        loras=[lora(inputs / "ic.safetensors"), lora(tiny_set.distilled_lora)],
        device=CPU,
    )
    assert pipeline.reference_downscale_factor == IC_DOWNSCALE
    # stage 2 on the distilled weights without the IC-LoRA: what the class's own stage-2 ledger builds from a
    # distilled file, here the dev file with the distilled LoRA (see the module docstring)
    pipeline.stage_2_model_ledger = pipeline.stage_2_model_ledger.with_loras((lora(tiny_set.distilled_lora),))
    official_out = run_official(pipeline, **call_arguments(job), video_conditioning=[(str(inputs / "depth.mp4"), 1.0)])
    assert_same(official_out, run_farm(farm, job))


def test_keyframe_interpolation_pipeline(official, farm, tiny_set, inputs):
    """`KeyframeInterpolationPipeline`: images appended as guiding latents at their frames, in both stages, guided
    stage 1. Keyframes after frame 0 are the same conditioning in both; an image at frame 0 is not: the farm
    replaces the first latent with it (the official two-stage and distilled pipelines' `combined_image_conditionings`,
    docs/jobs.md, "Conditioned jobs"), where this class appends it as a guiding latent too."""
    job = {
        **JOB,
        "images": [
            {"path": str(inputs / "picture.png"), "frame": 4, "strength": 0.9},
            {"path": str(inputs / "ending.png"), "frame": 8},
        ],
    }
    pipeline = dev_pipeline(KeyframeInterpolationPipeline, tiny_set)
    official_out = run_official(pipeline, **guided_arguments(job, tiny_set))
    assert_same(official_out, run_farm(farm, job))
