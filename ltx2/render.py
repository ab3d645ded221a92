"""Text → video + audio on resident models, driving ltx-core's and ltx-pipelines' lower-level pieces.

The official pipeline classes reload every model on every call; this renderer runs the same recipes
(the same noiser, schedulers, guiders, denoising loops, upsampler and decoders, in the same order, so the
same random draws) on models that stay loaded. A whole-job render is the one-chunk, one-tile plan of
`jobs.plan`, run through the task functions of `ltx2.stages` in one process (the recipes are described
there), its latents kept on the device between tasks.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from ltx_core.components.guiders import MultiModalGuiderParams
from ltx_core.model.video_vae import SpatialTilingConfig, TemporalTilingConfig, TilingConfig

from ltx2 import stages
from ltx2.lora import LoraSpec
from ltx2.models import ResidentModels
from ltx2.stages import Contexts, StepCallback
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
    beside a resident 19B transformer and Gemma runs short of memory and slows down several times over
    (bench/README.md, "Numbers behind the code")."""


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


@dataclass(frozen=True)
class RenderOutput:
    """Decoded frames and waveform, on the CPU."""

    video: torch.Tensor  # uint8 [frames, height, width, 3]
    audio: torch.Tensor | None  # float32 [channels, samples]; None: the request's own track is the sound
    sample_rate: int
    timings: dict[str, float]


FramesCallback = Callable[[torch.Tensor], None]
"""Called with each run of decoded frames (uint8 [frames, height, width, 3], CPU), in order, as the tiled
decode finishes them (`ltx2.video_decode`): the worker encodes them into the MP4 while the GPU decodes the next ones."""


class PromptCache:
    """Encoded prompts by text (LRU): a prompt is run through Gemma once per worker, not once per job.

    Entries are kept in host memory and moved to the device per use (two small copies per job): a full
    cache of 64 prompts stays out of GPU memory (at the real size an encoding is megabytes).
    """

    def __init__(self, models: ResidentModels, capacity: int = 64) -> None:
        self._models = models
        self._capacity = capacity
        self._entries: OrderedDict[str, Contexts] = OrderedDict()
        self.encodes = 0

    def put(self, text: str, video: torch.Tensor, audio: torch.Tensor) -> None:
        """An encoding made elsewhere (by another worker's Gemma): across the farm a prompt is encoded once."""
        self._entries[text] = Contexts(video.cpu(), audio.cpu())
        self._entries.move_to_end(text)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def get(self, text: str) -> Contexts:
        """The encoding of `text`, on the models' device."""
        if text not in self._entries:
            encoded = stages.encode_prompt(self._models, text)
            self.encodes += 1
            self.put(text, encoded.video, encoded.audio)
        self._entries.move_to_end(text)
        entry = self._entries[text]
        device = self._models.device
        return Contexts(entry.video.to(device), entry.audio.to(device))


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
                track = stages.encode_track(
                    m, *request.audio, request.num_frames, request.frame_rate, keep_on_device=True
                )

        with timer("stage_1"):
            chunk = stages.stage1_chunk(
                m,
                stages.ChunkRequest(
                    frames=request.num_frames,
                    height=request.height // 2,
                    width=request.width // 2,
                    fps=request.frame_rate,
                    seed=request.seed,
                    recipe=request.recipe,
                    steps=request.steps,
                    video_guidance=request.video_guidance,
                    audio_guidance=request.audio_guidance,
                    images=request.images,
                    loras=request.loras,
                    control=request.control,
                    control_lora=request.control_lora,
                ),
                positive,
                negative,
                on_step=on_step,
                track=track,
                # stage 2's LoRA factors go to the GPU during the last stage-1 step
                before_last_step=lambda: m.loras.prefetch(request.loras, distilled=True),
                keep_on_device=True,
            )

        with timer("upsample"):
            upscaled = stages.upsample(m, chunk.video, keep_on_device=True)

        with timer("stage_2"):
            refine_audio = track is None  # audio-to-video keeps the track's latent, as the plan does
            state = stages.stage2_init(
                m,
                upscaled,
                chunk.audio if track is None else track,
                request.num_frames,
                request.height,
                request.width,
                request.frame_rate,
                chunk.generator_state,
                refine_audio,
                request.images,
                keep_on_device=True,
            )
            state = self._refine(state, positive, request.loras, refine_audio, on_step)

        with timer("decode"):
            # No generator: LTX-2's VAE decoder adds no noise (no timestep conditioning), as the planned
            # decode tasks rely on too.
            tiling = tiling_config(request.decode_tiling) if request.decode_tiling is not None else None
            latent = stages.unpatchify_video(state.video, state.video_shape)
            runs = []
            for run in decode_video_runs(latent, m.video_decoder, tiling):
                _check_finite(run.float(), "decoded video")
                runs.append(run.cpu())
                if on_frames is not None:
                    on_frames(runs[-1])
            frames = torch.cat(runs, dim=0)
        waveform, sample_rate = None, 0
        if track is None:
            with timer("audio"):
                waveform, sample_rate = stages.decode_audio(m, stages.unpatchify_audio(state.audio, state.audio_shape))
            _check_finite(waveform, "decoded audio")
        if request.recipe == "two_stage":
            # The next job's stage 1 runs without the distilled LoRA: restore the originals now, while the host
            # finishes the MP4 (a lone job's GPU has nothing else to do then). Started before the decode, the copies
            # would slow the decode by about as long as they take (bench/README.md). A distilled job keeps
            # one fused state through both stages and into the next distilled job.
            m.loras.restore_in_background()
        return RenderOutput(video=frames, audio=waveform, sample_rate=sample_rate, timings=timer.timings)

    def _refine(
        self,
        state: stages.Stage2State,
        contexts: Contexts,
        loras: tuple[LoraSpec, ...],
        refine_audio: bool,
        on_step: StepCallback | None,
    ) -> stages.Stage2State:
        """Stage 2's steps over the one tile that covers the whole video (its prediction is the whole state's:
        no blending), each step advancing the state where it lies."""
        span = stages.whole_frame(state.video_shape)
        audio_span = (0, state.audio.latent.shape[1])
        total = len(stages.stage2_sigmas()) - 1
        for step in range(total):
            started = time.perf_counter()
            video, audio = stages.stage2_tile_denoise(
                self.models, state, contexts, step, *span, audio_span, 0.0, loras, keep_on_device=True
            )
            state = replace(
                state,
                video=stages.stage2_advance(state.video, video, step),
                audio=stages.stage2_advance(state.audio, audio, step) if refine_audio else state.audio,
            )
            stages.report_step(on_step, "stage_2", step + 1, total, started, video)
        return state


class NonFiniteOutputError(RuntimeError):
    """A NaN or Inf came out of the model: the render must not be written as if it were good."""


def _check_finite(tensor: torch.Tensor, what: str) -> None:
    if not torch.isfinite(tensor).all():
        raise NonFiniteOutputError(f"{what} contains NaN or Inf")
