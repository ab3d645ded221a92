"""Text → video + audio on resident models, driving ltx-core's and ltx-pipelines' lower-level pieces.

The official pipeline classes reload every model on every call; this renderer runs the same recipes
(the same noiser, schedulers, guiders, denoising loops, upsampler and decoders, in the same order, so the
same random draws) on models that stay loaded.

Recipes:
- `two_stage`: stage 1 at half resolution, guided by the official multimodal guider (CFG, STG, modality
  scale, rescale; separately for video and audio), then latent x2 upsample and a distilled-LoRA refine.
- `distilled`: stage 1 with the distilled sigmas and no guidance, LoRA fused, then the same refine.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from ltx_core.components.diffusion_steps import EulerDiffusionStep
from ltx_core.components.guiders import MultiModalGuiderParams, create_multimodal_guider_factory
from ltx_core.components.noisers import GaussianNoiser
from ltx_core.components.protocols import DiffusionStepProtocol
from ltx_core.components.schedulers import LTX2Scheduler
from ltx_core.model.audio_vae import decode_audio as vae_decode_audio
from ltx_core.model.upsampler import upsample_video
from ltx_core.model.video_vae import SpatialTilingConfig, TemporalTilingConfig, TilingConfig
from ltx_core.types import LatentState, VideoPixelShape
from ltx_pipelines.utils.constants import DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES
from ltx_pipelines.utils.helpers import (
    denoise_audio_video,
    denoise_video_only,
    simple_denoising_func,
)
from ltx_pipelines.utils.samplers import euler_denoising_loop
from ltx_pipelines.utils.types import DenoisingFunc, PipelineComponents

from ltx2.lora import LoraSpec
from ltx2.models import ResidentModels
from ltx2.parallel.guidance import guided_denoising_func
from ltx2.video_decode import decode_video_runs

Recipe = Literal["two_stage", "distilled"]
RECIPES: tuple[str, ...] = ("two_stage", "distilled")


@dataclass(frozen=True)
class Guidance:
    """Multimodal guidance of one modality (the fields of ltx-core's `MultiModalGuiderParams`)."""

    cfg: float
    stg: float
    modality: float
    rescale: float
    stg_blocks: tuple[int, ...]
    skip_step: int = 0

    def to_params(self) -> MultiModalGuiderParams:
        return MultiModalGuiderParams(
            cfg_scale=self.cfg,
            stg_scale=self.stg,
            stg_blocks=list(self.stg_blocks),
            rescale_scale=self.rescale,
            modality_scale=self.modality,
            skip_step=self.skip_step,
        )


OFFICIAL_STG_BLOCK = 29
OFFICIAL_NUM_LAYERS = 48


def default_stg_blocks(num_layers: int) -> tuple[int, ...]:
    """The official STG block (29 of 48), at the same relative depth for a model of another depth."""
    return (min(num_layers - 1, round(OFFICIAL_STG_BLOCK * num_layers / OFFICIAL_NUM_LAYERS)),)


def default_video_guidance(num_layers: int = OFFICIAL_NUM_LAYERS) -> Guidance:
    """Official LTX-2 video defaults: cfg 3, stg 1, modality 3, rescale 0.7."""
    return Guidance(cfg=3.0, stg=1.0, modality=3.0, rescale=0.7, stg_blocks=default_stg_blocks(num_layers))


def default_audio_guidance(num_layers: int = OFFICIAL_NUM_LAYERS) -> Guidance:
    """Official LTX-2 audio defaults: cfg 7, stg 1, modality 3, rescale 0.7."""
    return Guidance(cfg=7.0, stg=1.0, modality=3.0, rescale=0.7, stg_blocks=default_stg_blocks(num_layers))


@dataclass(frozen=True)
class RenderRequest:
    """One fully specified render; validated by `jobs.spec` before it gets here."""

    prompt: str
    seed: int
    height: int
    width: int
    num_frames: int
    frame_rate: float
    recipe: Recipe = "two_stage"
    steps: int = 40
    negative_prompt: str = ""
    video_guidance: Guidance = field(default_factory=default_video_guidance)
    audio_guidance: Guidance = field(default_factory=default_audio_guidance)
    images: tuple[tuple[str, int, float], ...] = ()
    """(path, frame, strength) of each conditioning image: frame 0 replaces the first latent, others are
    keyframes (the official `combined_image_conditionings`, in both stages)."""
    loras: tuple[LoraSpec, ...] = ()
    """The job's LoRAs, fused in both stages (the distilled LoRA joins them in stage 2, as upstream)."""
    control: tuple[str, int, float] | None = None
    """(reference video, reference downscale factor, strength) of an IC-LoRA control pass: appended to stage 1
    (the official IC-LoRA recipe) with `control_lora` fused; stage 2 refines without either."""
    control_lora: LoraSpec | None = None
    audio: tuple[str, float] | None = None
    """(path, start seconds) of a sound track that drives the video (the official audio-to-video recipe:
    audio latent frozen in both stages, video-only denoising); the output carries the track itself."""
    decode_tiling: DecodeTiles | None = None
    """The VAE decode's tiles, as the official pipelines decode (`TilingConfig.default()` is (512, 64, 64, 24));
    None decodes in one piece. Tiles bound the decode's memory: in one piece, 704x1280x121 on an 80 GB GPU
    beside a resident 19B transformer and Gemma ran short of memory and took 2.6 s instead of ~0.6 s."""


DecodeTiles = tuple[int, int, int, int]
"""(tile pixels, overlap pixels, tile frames, overlap frames) of a tiled VAE decode (ltx-core's semantics)."""


def tiling_config(tiles: DecodeTiles) -> TilingConfig:
    """ltx-core's `TilingConfig` for `tiles`."""
    pixels, overlap_pixels, frames, overlap_frames = tiles
    return TilingConfig(
        spatial_config=SpatialTilingConfig(pixels, overlap_pixels),
        temporal_config=TemporalTilingConfig(frames, overlap_frames),
    )


A2V_AUDIO_GUIDANCE = Guidance(cfg=1.0, stg=0.0, modality=1.0, rescale=0.0, stg_blocks=())
"""No audio guidance (ltx-core's `MultiModalGuiderParams()` defaults): what the official audio-to-video
pipeline gives the frozen audio."""


def encode_audio_track(models: ResidentModels, path: str, start: float, num_frames: int, fps: float) -> torch.Tensor:
    """The audio latent of the track from `start` for the video's duration, as the official A2V pipeline
    makes it (decode with PyAV, mel + audio VAE encoder, cut to the video's audio latent count)."""
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
    return latent[:, :, :frames]


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


@dataclass(frozen=True)
class RenderOutput:
    """Decoded frames and waveform, on the CPU."""

    video: torch.Tensor  # uint8 [frames, height, width, 3]
    audio: torch.Tensor | None  # float32 [channels, samples]; None: the request's own track is the sound
    sample_rate: int
    timings: dict[str, float]


StepCallback = Callable[[str, int, int, float], None]
"""Called as (stage, step_done, steps_total, seconds) after every denoising step: progress and metrics."""

FramesCallback = Callable[[torch.Tensor], None]
"""Called with each run of decoded frames (uint8 [frames, height, width, 3], CPU), in order, as the tiled
decode finishes them (`ltx2.video_decode`): the worker encodes them into the MP4 while the GPU decodes the next ones."""


@dataclass(frozen=True)
class EncodedPrompt:
    """The two encodings a render reads (the fields of ltx-core's `EmbeddingsProcessorOutput` it uses)."""

    video_encoding: torch.Tensor
    audio_encoding: torch.Tensor


class PromptCache:
    """Encoded prompts by text (LRU): a prompt is run through Gemma once per worker, not once per job.

    Entries are kept in host memory and moved to the device per use (two small copies per job): a full
    cache of 64 prompts stays out of GPU memory (at the tiny size it grew allocated VRAM by 0.25 MiB per
    prompt; at the real size an encoding is megabytes).
    """

    def __init__(self, models: ResidentModels, capacity: int = 64) -> None:
        self._models = models
        self._capacity = capacity
        self._entries: OrderedDict[str, EncodedPrompt] = OrderedDict()
        self.encodes = 0

    def put(self, text: str, video: torch.Tensor, audio: torch.Tensor) -> None:
        """An encoding made elsewhere (by another worker's Gemma): across the farm a prompt is encoded once."""
        self._entries[text] = EncodedPrompt(video.cpu(), audio.cpu())
        self._entries.move_to_end(text)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def get(self, text: str) -> EncodedPrompt:
        if text not in self._entries:
            hidden_states, mask = self._models.text_encoder.encode(text)
            encoded = self._models.embeddings_processor.process_hidden_states(hidden_states, mask)
            self.encodes += 1
            self.put(text, encoded.video_encoding, encoded.audio_encoding)
        self._entries.move_to_end(text)
        entry = self._entries[text]
        device = self._models.device
        return EncodedPrompt(entry.video_encoding.to(device), entry.audio_encoding.to(device))


class _Timer:
    def __init__(self, device: torch.device) -> None:
        self._device = device
        self.timings: dict[str, float] = {}

    def __call__(self, name: str) -> _Timer:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._sync()
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.timings[self._name] = self.timings.get(self._name, 0.0) + time.perf_counter() - self._start

    def _sync(self) -> None:
        # The current stream only: the whole device would also wait for the background restore of the
        # transformer weights (`ResidentLoras.restore_in_background`) meant to overlap the decode.
        if self._device.type == "cuda":
            torch.cuda.current_stream(self._device).synchronize()


class Renderer:
    """Renders requests one after another on a `ResidentModels`."""

    def __init__(self, models: ResidentModels) -> None:
        self.models = models
        self.prompts = PromptCache(models)
        self._components = PipelineComponents(dtype=models.dtype, device=models.device)

    @torch.inference_mode()
    def render(
        self,
        request: RenderRequest,
        on_step: StepCallback | None = None,
        offload_text_encoder: bool = False,
        on_frames: FramesCallback | None = None,
    ) -> RenderOutput:
        """Render `request`; `offload_text_encoder` keeps Gemma in host memory while the transformer runs
        (the OOM ladder's last rung: ~24 GB less on a 19B worker, the same output); `on_frames` gets the
        decoded frames run by run (the returned output still holds them all)."""
        try:
            return self._render(request, on_step, offload_text_encoder, on_frames)
        finally:
            if offload_text_encoder:
                self.models.text_encoder.to(self.models.device)

    def _render(
        self,
        request: RenderRequest,
        on_step: StepCallback | None,
        offload_text_encoder: bool,
        on_frames: FramesCallback | None,
    ) -> RenderOutput:
        m = self.models
        timer = _Timer(m.device)
        generator = torch.Generator(device=m.device).manual_seed(request.seed)
        noiser = GaussianNoiser(generator=generator)
        stepper = EulerDiffusionStep()

        with timer("text_encode"):
            positive = self.prompts.get(request.prompt)
            negative = self.prompts.get(request.negative_prompt) if request.recipe == "two_stage" else None
        if offload_text_encoder:
            m.text_encoder.to("cpu")
            if m.device.type == "cuda":
                torch.cuda.empty_cache()
        track = None
        if request.audio is not None:
            with timer("audio_encode"):
                track = encode_audio_track(m, *request.audio, request.num_frames, request.frame_rate)

        stage_1_shape = VideoPixelShape(
            batch=1,
            frames=request.num_frames,
            width=request.width // 2,
            height=request.height // 2,
            fps=request.frame_rate,
        )
        with timer("stage_1"):
            sigmas, denoise_fn = stage_1_denoiser(
                m,
                request.recipe,
                request.steps,
                request.video_guidance,
                request.audio_guidance,
                (positive.video_encoding, positive.audio_encoding),
                (negative.video_encoding, negative.audio_encoding) if negative is not None else None,
                request.loras,
                (request.control_lora,) if request.control_lora is not None else (),
            )
            conditionings = image_conditionings(m, request.images, stage_1_shape.height, stage_1_shape.width)

            def prefetch_stage_2() -> None:  # stage 2's LoRA factors to the GPU during the last stage-1 step
                m.loras.prefetch(request.loras, distilled=True)

            if request.control is not None:
                from ltx2.control import reference_conditioning

                conditionings += reference_conditioning(
                    m, request.control, 0, request.num_frames, stage_1_shape.height, stage_1_shape.width
                )
            stage_1 = dict(
                output_shape=stage_1_shape,
                conditionings=conditionings,
                noiser=noiser,
                sigmas=sigmas,
                stepper=stepper,
                denoising_loop_fn=_loop(denoise_fn, "stage_1", on_step, prefetch_stage_2),
                components=self._components,
                dtype=m.dtype,
                device=m.device,
            )
            if track is None:
                video_state, audio_state = denoise_audio_video(**stage_1)
            else:  # audio-to-video: the track's latent stays as it is, only the video is denoised
                video_state = denoise_video_only(**stage_1, initial_audio_latent=track)

        with timer("upsample"):
            upscaled = upsample_video(
                latent=video_state.latent[:1], video_encoder=m.video_encoder, upsampler=m.upsampler
            )

        stage_2_shape = VideoPixelShape(
            batch=1, frames=request.num_frames, width=request.width, height=request.height, fps=request.frame_rate
        )
        with timer("stage_2"):
            m.loras.use(request.loras, distilled=True)
            sigmas = torch.tensor(STAGE_2_DISTILLED_SIGMA_VALUES, dtype=torch.float32, device=m.device)
            stage_2 = dict(
                output_shape=stage_2_shape,
                conditionings=image_conditionings(m, request.images, stage_2_shape.height, stage_2_shape.width),
                noiser=noiser,
                sigmas=sigmas,
                stepper=stepper,
                denoising_loop_fn=_loop(
                    simple_denoising_func(positive.video_encoding, positive.audio_encoding, m.transformer),
                    "stage_2",
                    on_step,
                ),
                components=self._components,
                dtype=m.dtype,
                device=m.device,
                noise_scale=sigmas[0],
                initial_video_latent=upscaled,
            )
            if track is None:
                video_state, audio_state = denoise_audio_video(**stage_2, initial_audio_latent=audio_state.latent)
            else:
                video_state = denoise_video_only(**stage_2, initial_audio_latent=track)

        with timer("decode"):
            tiling = tiling_config(request.decode_tiling) if request.decode_tiling is not None else None
            runs = []
            for run in decode_video_runs(video_state.latent, m.video_decoder, tiling, generator):
                _check_finite(run.float(), "decoded video")
                runs.append(run.cpu())
                if on_frames is not None:
                    on_frames(runs[-1])
            frames = torch.cat(runs, dim=0)
        waveform, sample_rate = None, 0
        if track is None:
            with timer("audio"):
                audio = vae_decode_audio(audio_state.latent, m.audio_decoder, m.vocoder)
            _check_finite(audio.waveform, "decoded audio")
            waveform, sample_rate = audio.waveform.float().cpu(), int(audio.sampling_rate)
        if request.recipe == "two_stage":
            # The next job's stage 1 runs without the distilled LoRA: restore the originals now, while the host
            # finishes the MP4 (a lone job's GPU has nothing else to do then). Started before the decode, the copies
            # cost the decode what they saved stage 2 (FP8 19B, H100: decode +0.52 s). A distilled job keeps
            # one fused state through both stages and into the next distilled job.
            m.loras.restore_in_background()
        return RenderOutput(video=frames, audio=waveform, sample_rate=sample_rate, timings=timer.timings)


def stage_1_denoiser(
    models: ResidentModels,
    recipe: str,
    steps: int,
    video_guidance: Guidance,
    audio_guidance: Guidance,
    positive: tuple[torch.Tensor, torch.Tensor],
    negative: tuple[torch.Tensor, torch.Tensor] | None,
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
            if on_step is not None:
                if out[0] is not None and out[0].is_cuda:
                    torch.cuda.synchronize(out[0].device)
                on_step(stage, index + 1, total, time.perf_counter() - started)
            return out

        return euler_denoising_loop(
            sigmas=sigmas, video_state=video_state, audio_state=audio_state, stepper=stepper, denoise_fn=counted
        )

    return loop


class NonFiniteOutputError(RuntimeError):
    """A NaN or Inf came out of the model: the render must not be written as if it were good."""


def _check_finite(tensor: torch.Tensor, what: str) -> None:
    if not torch.isfinite(tensor).all():
        raise NonFiniteOutputError(f"{what} contains NaN or Inf")
