"""The tasks of a job plan as typed requests.

One frozen dataclass per task kind (`jobs.plan` names the kinds); `RenderWorker` runs each through a table from
request type to function. A request crosses to a Ray actor as its fields (`task_fields`): Ray hands a call's
top-level arguments that are objects in its store to the actor as their values, never objects nested inside
another one, and latents travel between workers as such objects.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from ltx2 import stages


@dataclass(frozen=True)
class EncodeTask:
    """A prompt through Gemma and the embeddings connector."""

    text: str
    kind = "encode"


@dataclass(frozen=True)
class AudioEncodeTask:
    """A sound track (audio-to-video) through the audio VAE's encoder, over the job's duration."""

    path: str
    start: float
    num_frames: int
    fps: float
    kind = "audio_encode"


@dataclass(frozen=True)
class Stage1Task:
    """One temporal chunk denoised at half resolution, held to the previous chunk's tail."""

    request: stages.ChunkRequest
    positive: stages.Contexts
    negative: stages.Contexts | None
    previous: stages.ChunkResult | None
    overlap_video: int
    overlap_audio: int
    track: torch.Tensor | None = None
    kind = "stage1"


@dataclass(frozen=True)
class UpsampleTask:
    """The stitched stage-1 latent through the ×2 spatial upsampler."""

    video: torch.Tensor
    kind = "upsample"


@dataclass(frozen=True)
class Stage2InitTask:
    """Stage 2's noised starting state of the whole video (and audio)."""

    upscaled: torch.Tensor
    audio: torch.Tensor
    num_frames: int
    height: int
    width: int
    fps: float
    generator_state: torch.Tensor
    refine_audio: bool
    images: tuple = ()
    kind = "stage2_init"


@dataclass(frozen=True)
class Stage2Task:
    """One stage-2 step's prediction for one spatial tile."""

    state: stages.Stage2State
    contexts: stages.Contexts
    step_index: int
    time: tuple[int, int]
    height: tuple[int, int]
    width: tuple[int, int]
    audio_span: tuple[int, int]
    time_origin: float
    loras: tuple = ()
    kind = "stage2"


@dataclass(frozen=True)
class DecodeTask:
    """One of ltx-core's VAE decode tiles of the final latent."""

    latent: torch.Tensor
    kind = "decode"


@dataclass(frozen=True)
class AudioDecodeTask:
    """The final audio latent through the audio VAE and the vocoder."""

    audio: torch.Tensor
    kind = "audio"


TaskRequest = (
    EncodeTask | AudioEncodeTask | Stage1Task | UpsampleTask | Stage2InitTask | Stage2Task | DecodeTask
) | AudioDecodeTask

TASK_TYPES: dict[str, type] = {t.kind: t for t in TaskRequest.__args__}
"""Task kind (as plans and traces name it) -> its request type."""


def task_fields(request: TaskRequest) -> dict[str, Any]:
    """A request's fields, shallow: each latent stays the object (or store reference) it is."""
    return {f.name: getattr(request, f.name) for f in fields(request)}


def task_request(kind: str, values: dict[str, Any]) -> TaskRequest:
    """The request of `kind` from its fields; an unknown kind or field is a clear error."""
    request_type = TASK_TYPES.get(kind)
    if request_type is None:
        raise ValueError(f"unknown task kind {kind!r}; workers run {sorted(TASK_TYPES)}")
    return request_type(**values)
