"""The render split into tasks a coordinator can spread over workers, on ltx-core's pieces.

Each function is one task of a job plan: encode a prompt, denoise a stage-1 chunk (conditioned on the
previous chunk's tail, video and audio), upsample, one stage-2 denoising step of one spatio-temporal tile,
decode one VAE tile, decode the audio. Tensors out live on the CPU so they can travel through Ray's object
store (`keep_on_device` keeps them on the models' device: `ltx2.render` runs a whole job's one-chunk,
one-tile plan through these same functions in one process); each function moves what it needs to its
models' device.

Recipes:
- `two_stage`: stage 1 at half resolution, guided by the official multimodal guider (CFG, STG, modality
  scale, rescale; separately for video and audio), then latent x2 upsample and a distilled-LoRA refine.
- `distilled`: stage 1 with the distilled sigmas and no guidance, LoRA fused, then the same refine.
On a distilled checkpoint there is no LoRA to fuse (its weights are distilled), and `two_stage` is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

import torch
from ltx_core.components.diffusion_steps import EulerDiffusionStep
from ltx_core.components.guiders import create_multimodal_guider_factory
from ltx_core.components.noisers import GaussianNoiser
from ltx_core.components.protocols import DiffusionStepProtocol
from ltx_core.components.schedulers import LTX2Scheduler
from ltx_core.conditioning import VideoConditionByLatentIndex
from ltx_core.model.audio_vae import decode_audio as vae_decode_audio
from ltx_core.model.upsampler import upsample_video
from ltx_core.tools import LatentTools
from ltx_core.types import LatentState, VideoPixelShape
from ltx_pipelines.utils import samplers
from ltx_pipelines.utils.constants import DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES
from ltx_pipelines.utils.helpers import (
    modality_from_latent_state,
    noise_audio_state,
    noise_video_state,
    simple_denoising_func,
)
from ltx_pipelines.utils.samplers import euler_denoising_loop
from ltx_pipelines.utils.types import DenoisingFunc, PipelineComponents

from jobs.spec import JobValidationError, recipe_problem
from ltx2.lora import LoraSpec
from ltx2.models import ResidentModels
from ltx2.parallel.guidance import guided_denoising_func

if TYPE_CHECKING:
    from ltx2.render import Guidance

StepCallback = Callable[[str, int, int, float], None]
"""Called as (stage, step_done, steps_total, seconds) after every denoising step: progress and metrics."""

samplers.tqdm = partial(samplers.tqdm, disable=True)
"""The official loop's own bar off: steps are reported through `StepCallback`, and the command line draws them;
a bar of a worker thread would draw over the command's own on the same terminal."""


@dataclass(frozen=True)
class Contexts:
    """Encoded text for both modalities (CPU tensors)."""

    video: torch.Tensor
    audio: torch.Tensor


@dataclass(frozen=True)
class ChunkRequest:
    """Stage 1 of one temporal chunk."""

    frames: int
    height: int  # stage-1 pixels (half the output)
    width: int
    fps: float
    seed: int
    recipe: str
    steps: int
    video_guidance: Guidance
    audio_guidance: Guidance
    tail_strength: float = 1.0
    images: tuple[tuple[str, int, float], ...] = ()
    """Conditioning images of this chunk (path, frame within the chunk, strength)."""
    loras: tuple[LoraSpec, ...] = ()
    control: tuple[str, int, float] | None = None
    """IC-LoRA reference (path, downscale factor, strength); the chunk takes its own frames of it."""
    control_lora: LoraSpec | None = None
    first_frame: int = 0
    """The chunk's first frame in the job (where its span of the reference starts)."""


@dataclass(frozen=True)
class ChunkResult:
    video: torch.Tensor  # [1, 128, F', h, w]
    audio: torch.Tensor  # [1, 8, T, 16]
    generator_state: torch.Tensor
    """The noise generator after this chunk: stage 2 continues it, as the official pipeline does."""


class AudioConditionByLatentIndex:
    """Audio counterpart of ltx-core's `VideoConditionByLatentIndex` (same `ConditioningItem` protocol):
    replaces the audio tokens from `latent_idx` with `latent` and sets their denoise strength."""

    def __init__(self, latent: torch.Tensor, strength: float, latent_idx: int = 0) -> None:
        self.latent = latent
        self.strength = strength
        self.latent_idx = latent_idx

    def apply_to(self, latent_state: LatentState, latent_tools: LatentTools) -> LatentState:
        tokens = latent_tools.patchifier.patchify(self.latent)
        start, stop = self.latent_idx, self.latent_idx + tokens.shape[1]
        state = latent_state.clone()
        state.latent[:, start:stop] = tokens
        state.clean_latent[:, start:stop] = tokens
        state.denoise_mask[:, start:stop] = 1.0 - self.strength
        return state


def _out(tensor: torch.Tensor, keep_on_device: bool) -> torch.Tensor:
    return tensor if keep_on_device else tensor.cpu()


@torch.inference_mode()
def encode_track(
    models: ResidentModels, path: str, start: float, num_frames: int, fps: float, keep_on_device: bool = False
) -> torch.Tensor:
    """The whole job's sound-track latent from `start` for the video's duration, as the official A2V pipeline
    makes it (decode with PyAV, mel + audio VAE encoder, cut to the video's audio latent count); audio-to-video
    chunks take their spans from it."""
    from ltx_core.model.audio_vae import encode_audio
    from ltx_core.types import AudioLatentShape
    from ltx_pipelines.utils.media_io import decode_audio_from_file

    seconds = num_frames / fps
    decoded = decode_audio_from_file(path, models.device, start, seconds)
    if decoded is None:
        raise ValueError(f"{path}: no audio stream")
    latent = encode_audio(decoded, models.audio_encoder)
    frames = AudioLatentShape.from_duration(batch=1, duration=seconds, channels=8, mel_bins=16).frames
    if latent.shape[2] < frames:
        raise ValueError(
            f"{path}: the track gives {latent.shape[2]} audio latents from {start:g} s, the video needs {frames}; "
            "give a slightly longer track or a shorter job"
        )
    return _out(latent[:, :, :frames], keep_on_device)


def image_conditionings(
    models: ResidentModels, images: tuple[tuple[str, int, float], ...], height: int, width: int
) -> list:
    """The official conditioning items for images at this stage's size (resized and centre-cropped to it)."""
    if not images:
        return []
    from ltx_pipelines.utils.args import ImageConditioningInput
    from ltx_pipelines.utils.helpers import combined_image_conditionings

    return combined_image_conditionings(
        [ImageConditioningInput(path, frame, strength) for path, frame, strength in images],
        height,
        width,
        models.video_encoder,
        models.dtype,
        models.device,
    )


def encode_prompt(models: ResidentModels, text: str) -> Contexts:
    with torch.inference_mode():
        hidden, mask = models.text_encoder.encode(text)
        out = models.embeddings_processor.process_hidden_states(hidden, mask)
    return Contexts(video=out.video_encoding.cpu(), audio=out.audio_encoding.cpu())


def _components(models: ResidentModels) -> PipelineComponents:
    return PipelineComponents(dtype=models.dtype, device=models.device)


def stage_1_denoiser(
    models: ResidentModels,
    recipe: str,
    steps: int,
    video_guidance: Guidance,
    audio_guidance: Guidance,
    positive: tuple[torch.Tensor, torch.Tensor],
    negative: tuple[torch.Tensor, torch.Tensor | None] | None,
    loras: tuple[LoraSpec, ...] = (),
    stage_loras: tuple[LoraSpec, ...] = (),
) -> tuple[torch.Tensor, DenoisingFunc]:
    """Stage 1's sigmas and denoising function for a recipe (and the matching LoRA state).

    `two_stage`: the LTX-2 schedule with the official multimodal guider per modality, only the job's LoRAs
    fused; the guided passes run as `models.pass_runner` says (one by one by default, as upstream).
    `distilled`: the distilled sigmas, no guidance, the job's LoRAs and the distilled LoRA fused. Contexts
    are (video, audio). `stage_loras` (an IC-LoRA) are fused for this stage only.
    """
    m = models
    problem = recipe_problem(recipe, m.distilled_checkpoint)
    if problem is not None:  # the head and the workers refuse it earlier: here for any other caller
        raise JobValidationError([problem])
    if recipe == "two_stage":
        m.loras.use(loras, distilled=False, stage=stage_loras)
        sigmas = LTX2Scheduler().execute(steps=steps).to(dtype=torch.float32, device=m.device)
        return sigmas, guided_denoising_func(
            video_guider_factory=create_multimodal_guider_factory(
                params=video_guidance.to_params(), negative_context=negative[0]
            ),
            audio_guider_factory=create_multimodal_guider_factory(
                params=audio_guidance.to_params(), negative_context=negative[1]
            ),
            v_context=positive[0],
            a_context=positive[1],
            transformer=m.transformer,
            run_passes=m.pass_runner,
        )
    m.loras.use(loras, distilled=True, stage=stage_loras)
    sigmas = torch.tensor(DISTILLED_SIGMA_VALUES, dtype=torch.float32, device=m.device)
    return sigmas, simple_denoising_func(positive[0], positive[1], m.transformer)


def report_step(
    on_step: StepCallback | None, stage: str, done: int, total: int, started: float, out: torch.Tensor | None
) -> None:
    """Tell `on_step` a step is done, timed from `started` to the end of its GPU work (`out`'s device)."""
    if on_step is None:
        return
    if out is not None and out.is_cuda:
        torch.cuda.synchronize(out.device)
    on_step(stage, done, total, time.perf_counter() - started)


def _loop(
    denoise_fn: DenoisingFunc,
    stage: str,
    on_step: StepCallback | None,
    before_last_step: Callable[[], object] | None = None,
) -> Callable:
    """The official Euler loop, with a per-step callback for progress and metrics, and a hook run as the
    last step starts (the next stage's LoRA prefetch)."""

    def loop(
        sigmas: torch.Tensor, video_state: LatentState, audio_state: LatentState, stepper: DiffusionStepProtocol
    ) -> tuple[LatentState, LatentState]:
        total = len(sigmas) - 1

        def counted(video: LatentState, audio: LatentState, s: torch.Tensor, index: int) -> tuple:
            started = time.perf_counter()
            if before_last_step is not None and index == total - 1:
                before_last_step()
            out = denoise_fn(video, audio, s, index)
            report_step(on_step, stage, index + 1, total, started, out[0])
            return out

        return euler_denoising_loop(
            sigmas=sigmas, video_state=video_state, audio_state=audio_state, stepper=stepper, denoise_fn=counted
        )

    return loop


@torch.inference_mode()
def stage1_chunk(
    models: ResidentModels,
    request: ChunkRequest,
    positive: Contexts,
    negative: Contexts | None,
    tail_video: torch.Tensor | None = None,
    tail_audio: torch.Tensor | None = None,
    on_step: StepCallback | None = None,
    track: torch.Tensor | None = None,
    before_last_step: Callable[[], object] | None = None,
    keep_on_device: bool = False,
) -> ChunkResult:
    """Denoise one chunk from pure noise; its first latents are the previous chunk's tail (both modalities).

    With `track` (audio-to-video: this chunk's span of the encoded sound track) the audio is frozen to it
    instead of generated, and only the video is denoised. `before_last_step` runs as the last step starts
    (the next stage's LoRA prefetch)."""
    m, dev = models, models.device
    generator = torch.Generator(device=dev).manual_seed(request.seed)
    noiser = GaussianNoiser(generator=generator)
    shape = VideoPixelShape(batch=1, frames=request.frames, width=request.width, height=request.height, fps=request.fps)
    video_cond = []
    audio_cond = []
    if tail_video is not None:
        video_cond.append(VideoConditionByLatentIndex(tail_video.to(dev, m.dtype), request.tail_strength, 0))
    if track is not None:
        audio_cond.append(AudioConditionByLatentIndex(track.to(dev, m.dtype), strength=1.0, latent_idx=0))
    elif tail_audio is not None:
        audio_cond.append(AudioConditionByLatentIndex(tail_audio.to(dev, m.dtype), request.tail_strength, 0))
    video_cond += image_conditionings(m, request.images, request.height, request.width)
    if request.control is not None:
        from ltx2.control import reference_conditioning

        video_cond += reference_conditioning(
            m, request.control, request.first_frame, request.frames, request.height, request.width
        )
    sigmas, denoise_fn = stage_1_denoiser(
        m,
        request.recipe,
        request.steps,
        request.video_guidance,
        request.audio_guidance,
        (positive.video.to(dev), positive.audio.to(dev)),
        # A frozen track's audio guider has no negative context, as in the official audio-to-video pipeline
        # (`A2VidPipelineTwoStage`): its unconditional pass keeps the positive audio context.
        (negative.video.to(dev), None if track is not None else negative.audio.to(dev))
        if negative is not None
        else None,
        request.loras,
        (request.control_lora,) if request.control_lora is not None else (),
    )
    comps = _components(m)
    video_state, video_tools = noise_video_state(shape, noiser, video_cond, comps, m.dtype, dev)
    audio_state, audio_tools = noise_audio_state(shape, noiser, audio_cond, comps, m.dtype, dev)
    video_state, audio_state = _loop(denoise_fn, "stage_1", on_step, before_last_step)(
        sigmas, video_state, audio_state, EulerDiffusionStep()
    )
    video = video_tools.unpatchify(video_tools.clear_conditioning(video_state)).latent
    audio = audio_tools.unpatchify(audio_tools.clear_conditioning(audio_state)).latent
    return ChunkResult(
        video=_out(video, keep_on_device), audio=_out(audio, keep_on_device), generator_state=generator.get_state()
    )


@torch.inference_mode()
def upsample(models: ResidentModels, video: torch.Tensor, keep_on_device: bool = False) -> torch.Tensor:
    latent = video.to(models.device, models.dtype)
    upscaled = upsample_video(latent=latent[:1], video_encoder=models.video_encoder, upsampler=models.upsampler)
    return _out(upscaled, keep_on_device)


def stage2_sigmas() -> torch.Tensor:
    return torch.tensor(STAGE_2_DISTILLED_SIGMA_VALUES, dtype=torch.float32)


@dataclass(frozen=True)
class Stage2State:
    """The full-frame stage-2 states of both modalities (patchified, CPU) and how to unpatchify them."""

    video: LatentState
    audio: LatentState
    video_shape: tuple[int, ...]  # [1, 128, T, H, W]
    audio_shape: tuple[int, ...]  # [1, 8, Ta, 16]
    keyframes: tuple[tuple[int, int], ...] = ()
    """(first token, latent frame) of each keyframe's tokens, appended after the T·H·W grid tokens as the
    official keyframe conditioning appends them (one latent frame of H·W tokens each)."""


def _to(state: LatentState, device: torch.device | str) -> LatentState:
    return LatentState(
        latent=state.latent.to(device),
        denoise_mask=state.denoise_mask.to(device),
        positions=state.positions.to(device),
        clean_latent=state.clean_latent.to(device),
        attention_mask=None if state.attention_mask is None else state.attention_mask.to(device),
    )


@torch.inference_mode()
def stage2_init(
    models: ResidentModels,
    upscaled: torch.Tensor,
    audio: torch.Tensor,
    num_frames: int,
    height: int,
    width: int,
    fps: float,
    generator_state: torch.Tensor,
    refine_audio: bool,
    images: tuple[tuple[str, int, float], ...] = (),
    keep_on_device: bool = False,
) -> Stage2State:
    """Noise the upscaled latent to the first stage-2 sigma with the generator continued from stage 1.

    With `refine_audio` False (tiled refine, audio-to-video) the audio keeps its stage-1 latent: denoise
    mask 0, so it is neither noised nor changed, and every tile sees the same audio.
    """
    m, dev = models, models.device
    generator = torch.Generator(device=dev)
    generator.set_state(generator_state)
    noiser = GaussianNoiser(generator=generator)
    sigma0 = float(STAGE_2_DISTILLED_SIGMA_VALUES[0])
    shape = VideoPixelShape(batch=1, frames=num_frames, width=width, height=height, fps=fps)
    comps = _components(m)
    conditionings = image_conditionings(m, images, height, width)  # the tiles carve these tokens too
    video_state, _ = noise_video_state(
        shape, noiser, conditionings, comps, m.dtype, dev, sigma0, upscaled.to(dev, m.dtype)
    )
    if refine_audio:
        audio_state, _ = noise_audio_state(shape, noiser, [], comps, m.dtype, dev, sigma0, audio.to(dev, m.dtype))
    else:
        frozen = [AudioConditionByLatentIndex(audio.to(dev, m.dtype), strength=1.0, latent_idx=0)]
        audio_state, _ = noise_audio_state(shape, noiser, frozen, comps, m.dtype, dev, sigma0, audio.to(dev, m.dtype))
    grid = upscaled.shape[2] * upscaled.shape[3] * upscaled.shape[4]
    per_frame = upscaled.shape[3] * upscaled.shape[4]
    keyframes = tuple(
        (grid + k * per_frame, (frame + 7) // 8) for k, frame in enumerate(f for _, f, _ in images if f != 0)
    )
    if not keep_on_device:
        video_state, audio_state = _to(video_state, "cpu"), _to(audio_state, "cpu")
    return Stage2State(video_state, audio_state, tuple(upscaled.shape), tuple(audio.shape), keyframes)


def whole_frame(video_shape: tuple[int, ...]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(time, height, width) latent spans of the one tile that covers the whole video: its `tile_tokens` are
    every token of the stage-2 state in order (the grid, then each keyframe's whole frame)."""
    _, _, frames, rows, cols = video_shape
    return (0, frames), (0, rows), (0, cols)


def tile_token_index(
    video_shape: tuple[int, ...], time: tuple[int, int], height: tuple[int, int], width: tuple[int, int]
) -> torch.Tensor:
    """Indices of a tile's tokens in the patchified (frame, row, column)-ordered video token sequence."""
    _, _, _, rows, cols = video_shape
    t = torch.arange(*time)[:, None, None]
    h = torch.arange(*height)[None, :, None]
    w = torch.arange(*width)[None, None, :]
    return ((t * rows + h) * cols + w).reshape(-1)


def tile_tokens(
    video_shape: tuple[int, ...],
    keyframes: tuple[tuple[int, int], ...],
    time: tuple[int, int],
    height: tuple[int, int],
    width: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """A tile's tokens in the full stage-2 state: its grid tokens, then the same spatial crop of every
    keyframe whose latent frame lies in the tile's time span. Also returns each token's latent frame
    (for the blend weights)."""
    _, _, _, rows, cols = video_shape
    index = [tile_token_index(video_shape, time, height, width)]
    frames = [torch.arange(*time).repeat_interleave((height[1] - height[0]) * (width[1] - width[0]))]
    crop = tile_token_index((1, 0, 1, rows, cols), (0, 1), height, width)
    for first, frame in keyframes:
        if time[0] <= frame < time[1]:
            index.append(first + crop)
            frames.append(torch.full_like(crop, frame))
    return torch.cat(index), torch.cat(frames)


def _select(state: LatentState, index: torch.Tensor, time_origin: float) -> LatentState:
    index = index.to(state.latent.device)
    positions = state.positions[:, :, index].clone()
    positions[:, 0] -= time_origin  # each temporal window restarts its clock, inside RoPE's 20 s range
    return LatentState(
        latent=state.latent[:, index],
        denoise_mask=state.denoise_mask[:, index],
        positions=positions,
        clean_latent=state.clean_latent[:, index],
    )


@torch.inference_mode()
def stage2_tile_denoise(
    models: ResidentModels,
    state: Stage2State,
    contexts: Contexts,
    step_index: int,
    time: tuple[int, int],
    height: tuple[int, int],
    width: tuple[int, int],
    audio_span: tuple[int, int],
    time_origin: float,
    loras: tuple[LoraSpec, ...] = (),
    keep_on_device: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The X0 prediction of one tile at one stage-2 step (job LoRAs + distilled LoRA fused), video tokens in
    `tile_tokens` order."""
    m, dev = models, models.device
    m.loras.use(loras, distilled=True)
    sigmas = stage2_sigmas().to(dev)
    index, _ = tile_tokens(state.video_shape, state.keyframes, time, height, width)
    video = _to(_select(state.video, index, time_origin), dev)
    audio = _to(_select(state.audio, torch.arange(*audio_span), time_origin), dev)
    sigma = sigmas[step_index]
    denoised_video, denoised_audio = m.transformer(
        video=modality_from_latent_state(video, contexts.video.to(dev), sigma),
        audio=modality_from_latent_state(audio, contexts.audio.to(dev), sigma),
        perturbations=None,
    )
    return _out(denoised_video, keep_on_device), _out(denoised_audio, keep_on_device)


def stage2_advance(state: LatentState, denoised: torch.Tensor, step_index: int) -> LatentState:
    """The official Euler update of one modality's full state (what `euler_denoising_loop` does per step),
    where the state lies."""
    from ltx_pipelines.utils.helpers import post_process_latent

    sigmas = stage2_sigmas().to(state.latent.device)
    denoised = post_process_latent(denoised, state.denoise_mask, state.clean_latent)
    return replace(state, latent=EulerDiffusionStep().step(state.latent, denoised, sigmas, step_index))


def unpatchify_video(state: LatentState, video_shape: tuple[int, ...]) -> torch.Tensor:
    _, c, t, h, w = video_shape  # conditioning tokens appended after the grid (keyframes) are dropped
    return state.latent[:, : t * h * w].reshape(1, t, h, w, c).permute(0, 4, 1, 2, 3).contiguous()


def unpatchify_audio(state: LatentState, audio_shape: tuple[int, ...]) -> torch.Tensor:
    _, c, t, f = audio_shape
    return state.latent.reshape(1, t, c, f).permute(0, 2, 1, 3).contiguous()


@torch.inference_mode()
def decode_video_tile(models: ResidentModels, latent: torch.Tensor) -> torch.Tensor:
    """VAE-decode one latent tile to pixels in [-1, 1] ([1, 3, F, H, W], CPU, the decoder's dtype)."""
    return models.video_decoder(latent.to(models.device, models.dtype)).cpu()


@torch.inference_mode()
def decode_audio(models: ResidentModels, audio: torch.Tensor) -> tuple[torch.Tensor, int]:
    out = vae_decode_audio(audio.to(models.device, models.dtype), models.audio_decoder, models.vocoder)
    return out.waveform.float().cpu(), int(out.sampling_rate)
