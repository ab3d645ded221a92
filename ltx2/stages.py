"""The render split into tasks a coordinator can spread over workers, on ltx-core's pieces.

Each function is one task of a job plan: encode a prompt, denoise a stage-1 chunk (conditioned on the
previous chunk's tail, video and audio), upsample, one stage-2 denoising step of one spatio-temporal tile,
decode one VAE tile, decode the audio. Tensors in and out live on the CPU so they can travel through
Ray's object store; each function moves what it needs to its models' device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from ltx_core.components.diffusion_steps import EulerDiffusionStep
from ltx_core.components.noisers import GaussianNoiser
from ltx_core.conditioning import VideoConditionByLatentIndex
from ltx_core.model.audio_vae import decode_audio as vae_decode_audio
from ltx_core.model.upsampler import upsample_video
from ltx_core.tools import LatentTools
from ltx_core.types import LatentState, VideoPixelShape
from ltx_pipelines.utils.constants import STAGE_2_DISTILLED_SIGMA_VALUES
from ltx_pipelines.utils.helpers import (
    modality_from_latent_state,
    noise_audio_state,
    noise_video_state,
)
from ltx_pipelines.utils.types import PipelineComponents

from ltx2.lora import LoraSpec
from ltx2.models import ResidentModels
from ltx2.render import Guidance, StepCallback, _loop, encode_audio_track, image_conditionings, stage_1_denoiser


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


@torch.inference_mode()
def encode_track(models: ResidentModels, path: str, start: float, num_frames: int, fps: float) -> torch.Tensor:
    """The whole job's sound-track latent (CPU), for audio-to-video chunks to take their spans from."""
    return encode_audio_track(models, path, start, num_frames, fps).cpu()


def encode_prompt(models: ResidentModels, text: str) -> Contexts:
    with torch.inference_mode():
        hidden, mask = models.text_encoder.encode(text)
        out = models.embeddings_processor.process_hidden_states(hidden, mask)
    return Contexts(video=out.video_encoding.cpu(), audio=out.audio_encoding.cpu())


def _components(models: ResidentModels) -> PipelineComponents:
    return PipelineComponents(dtype=models.dtype, device=models.device)


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
) -> ChunkResult:
    """Denoise one chunk from pure noise; its first latents are the previous chunk's tail (both modalities).

    With `track` (audio-to-video: this chunk's span of the encoded sound track) the audio is frozen to it
    instead of generated, and only the video is denoised."""
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
        (negative.video.to(dev), negative.audio.to(dev)) if negative is not None else None,
        request.loras,
        (request.control_lora,) if request.control_lora is not None else (),
    )
    comps = _components(m)
    video_state, video_tools = noise_video_state(shape, noiser, video_cond, comps, m.dtype, dev)
    audio_state, audio_tools = noise_audio_state(shape, noiser, audio_cond, comps, m.dtype, dev)
    video_state, audio_state = _loop(denoise_fn, "stage_1", on_step)(
        sigmas, video_state, audio_state, EulerDiffusionStep()
    )
    video = video_tools.unpatchify(video_tools.clear_conditioning(video_state)).latent
    audio = audio_tools.unpatchify(audio_tools.clear_conditioning(audio_state)).latent
    return ChunkResult(video=video.cpu(), audio=audio.cpu(), generator_state=generator.get_state())


@torch.inference_mode()
def upsample(models: ResidentModels, video: torch.Tensor) -> torch.Tensor:
    latent = video.to(models.device, models.dtype)
    return upsample_video(latent=latent[:1], video_encoder=models.video_encoder, upsampler=models.upsampler).cpu()


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
) -> Stage2State:
    """Noise the upscaled latent to the first stage-2 sigma with the generator continued from stage 1.

    With `refine_audio` False (tiled refine) the audio keeps its stage-1 latent: denoise mask 0, so it is
    neither noised nor changed, and every tile sees the same audio.
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
    return Stage2State(
        _to(video_state, "cpu"), _to(audio_state, "cpu"), tuple(upscaled.shape), tuple(audio.shape), keyframes
    )


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """The X0 prediction of one tile at one stage-2 step (job LoRAs + distilled LoRA fused), on the CPU."""
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
    return denoised_video.cpu(), denoised_audio.cpu()


def stage2_advance(state: LatentState, denoised: torch.Tensor, step_index: int) -> LatentState:
    """The official Euler update of one modality's full state (what `euler_denoising_loop` does per step)."""
    from ltx_pipelines.utils.helpers import post_process_latent

    sigmas = stage2_sigmas()
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
