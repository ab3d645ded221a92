"""The resident model set of one worker: built once from a checkpoint set by ltx-core's own loaders.

`ModelLedger` in ltx-pipelines builds a fresh model on every call; a farm worker instead loads every
component once, checks that nothing was left on the meta device, and keeps them for job after job.

Each of Lightricks' checkpoint files loads through here (`CheckpointVariant`): a bf16 file as ltx-pipelines'
ledger loads it without quantisation, an FP8 file as it loads one with ltx-core's FP8 policy (its layers then
run on `torch._scaled_mm`: `ltx2.fp8_linear`). A distilled file needs no distilled LoRA: nothing is fused
where a dev file's distilled recipe and stage-2 refine fuse it, as ltx-pipelines' `DistilledPipeline` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from ltx_core.loader import SingleGPUModelBuilder
from ltx_core.model.audio_vae import AudioDecoder, AudioEncoder, Vocoder
from ltx_core.model.transformer import X0Model
from ltx_core.model.upsampler import LatentUpsampler
from ltx_core.model.video_vae import VideoDecoder, VideoEncoder
from ltx_core.text_encoders.gemma import EmbeddingsProcessor, GemmaTextEncoder, module_ops_from_gemma_root

from ltx2.checkpoint import (
    CheckpointError,
    CheckpointSet,
    CheckpointVariant,
    gemma_weight_files,
    read_checkpoint_variant,
    read_gemma_config,
    require_fully_loaded,
    validate_checkpoint_set,
)
from ltx2.fp8_linear import fp8_unsupported, run_loaded_fp8_layers
from ltx2.layout import UPSAMPLER, Component, checkpoint_components, gemma_component
from ltx2.lora import LoraSpec, ResidentLoras
from ltx2.parallel.guidance import PassRunner, run_sequential

LOAD_COUNTER = {"loads": 0}
"""Process-wide count of full model-set loads: lets tests prove that a warm worker does not reload."""


@dataclass
class ResidentModels:
    """Every component a render needs, loaded once and kept on `device`."""

    paths: CheckpointSet
    config: dict
    device: torch.device
    dtype: torch.dtype
    transformer: X0Model
    loras: ResidentLoras
    """What is fused into the transformer (job LoRAs, distilled LoRA), switched per stage."""
    video_encoder: VideoEncoder
    video_decoder: VideoDecoder
    audio_encoder: AudioEncoder
    """Encodes a user's sound track (audio-to-video)."""
    audio_decoder: AudioDecoder
    vocoder: Vocoder
    upsampler: LatentUpsampler
    text_encoder: GemmaTextEncoder
    embeddings_processor: EmbeddingsProcessor
    variant: CheckpointVariant
    """Which official checkpoint file the set's checkpoint is (dev or distilled, bf16 or FP8)."""
    load_seconds: float

    pass_runner: PassRunner = run_sequential
    """How the guided passes of a stage-1 step run: one by one (official), batched, or over a gang."""

    @property
    def num_layers(self) -> int:
        return len(self.transformer.velocity_model.transformer_blocks)

    @property
    def num_heads(self) -> int:
        return int(self.transformer.velocity_model.num_attention_heads)

    @property
    def distilled_checkpoint(self) -> str | None:
        """The checkpoint's file name when it is a distilled one (what `jobs.spec.recipe_problem` names), else None."""
        return Path(self.paths.checkpoint).name if self.variant.distilled else None


def _build(
    builder: SingleGPUModelBuilder, source: Path | str, what: str, device: torch.device, dtype: torch.dtype | None
) -> torch.nn.Module:
    model = builder.build(device=device, dtype=dtype)
    require_fully_loaded(model, source, what)
    return model.to(device).eval()


def load_resident_models(
    paths: CheckpointSet,
    device: torch.device | str,
    dtype: torch.dtype = torch.bfloat16,
    transformer_device: torch.device | str | None = None,
) -> ResidentModels:
    """Check the checkpoint set, then build every component with ltx-core's loaders and keep it.

    `transformer_device` (default: `device`) lets a sharded gang load the transformer into host memory
    and move only its shards to the GPU.
    """
    started = time.perf_counter()
    device = torch.device(device)
    config = validate_checkpoint_set(paths)
    variant = read_checkpoint_variant(paths.checkpoint)
    problem = fp8_unsupported(torch.device(transformer_device or device)) if variant.fp8 else None
    if problem is not None:
        raise CheckpointError(paths.checkpoint, f"an FP8 checkpoint: {problem}", "give the bf16 file of the model")
    gemma_root = Path(paths.gemma_root)
    gemma_config = read_gemma_config(gemma_root)
    text_config = gemma_config.get("text_config", {})
    parts = checkpoint_components(
        text_config.get("hidden_size", 3840), text_config.get("num_hidden_layers", 48), fp8=variant.fp8
    )
    components = {component.what: component for component in parts}

    def from_file(
        component: Component, path: Path | str, on: torch.device | str = device, as_dtype: torch.dtype | None = dtype
    ) -> torch.nn.Module:
        builder = SingleGPUModelBuilder(
            model_path=str(path),
            model_class_configurator=component.configurator,
            model_sd_ops=component.key_ops,
            module_ops=component.module_ops,
        )
        return _build(builder, path, component.what, torch.device(on), as_dtype)

    def from_checkpoint(what: str, on: torch.device | str = device) -> torch.nn.Module:
        return from_file(components[what], paths.checkpoint, on)

    if variant.fp8:  # the file's dtypes kept, as ltx-pipelines' ledger builds a quantised transformer
        velocity_model = from_file(components["transformer"], paths.checkpoint, transformer_device or device, None)
        run_loaded_fp8_layers(velocity_model, dtype)
    else:
        velocity_model = from_checkpoint("transformer", transformer_device or device)
    transformer = X0Model(velocity_model).eval()
    gemma = gemma_component(gemma_config)
    text_builder = SingleGPUModelBuilder(
        model_path=tuple(str(p) for p in gemma_weight_files(gemma_root)),
        model_class_configurator=gemma.configurator,
        model_sd_ops=gemma.key_ops,
        module_ops=(*gemma.module_ops, *module_ops_from_gemma_root(str(gemma_root))),
    )
    models = ResidentModels(
        paths=paths,
        config=config,
        device=device,
        dtype=dtype,
        transformer=transformer,
        loras=ResidentLoras(
            velocity_model,
            None if variant.distilled or paths.distilled_lora is None else LoraSpec(str(paths.distilled_lora), 1.0),
        ),
        video_encoder=from_checkpoint("video VAE encoder"),
        video_decoder=from_checkpoint("video VAE decoder"),
        audio_encoder=from_checkpoint("audio VAE encoder"),
        audio_decoder=from_checkpoint("audio VAE decoder"),
        vocoder=from_checkpoint("vocoder"),
        upsampler=from_file(UPSAMPLER, paths.spatial_upsampler),
        text_encoder=_build(text_builder, gemma_root, "Gemma text encoder", device, dtype),
        embeddings_processor=from_checkpoint("text embeddings processor"),
        variant=variant,
        load_seconds=0.0,
    )
    models.load_seconds = time.perf_counter() - started
    LOAD_COUNTER["loads"] += 1
    return models
