"""A validated job in the model layer's terms: render requests, guidance, LoRAs, control and inputs.

Inputs become node-local references (`cluster.storage.input_ref`: a path or an s3:// URL pinned by its
SHA-256) that each worker localises before use; the sidecar's content hashes are defined here too, so the
one-piece worker path and the coordinator's planned path pin the same things.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import torch
from ltx_pipelines.utils.constants import DEFAULT_NEGATIVE_PROMPT

from cluster.storage import canny_ref, input_ref, localize
from jobs.plan import decode_tiling
from jobs.spec import OFFICIAL_NEGATIVE_PROMPT, GuidanceSpec, ValidJob
from ltx2.checkpoint import CheckpointError
from ltx2.layout import transformer_targets
from ltx2.lora import LoraSpec, check_lora_file
from ltx2.media import SourceAudio
from ltx2.render import (
    A2V_AUDIO_GUIDANCE,
    Guidance,
    RenderRequest,
    default_audio_guidance,
    default_video_guidance,
)


def _guidance(spec: GuidanceSpec, default: Guidance) -> Guidance:
    updates = {k: v for k, v in spec.model_dump().items() if v is not None}
    if "stg_blocks" in updates:
        updates["stg_blocks"] = tuple(updates["stg_blocks"])
    return replace(default, **updates)


def job_guidance(job: ValidJob, num_layers: int) -> tuple[Guidance, Guidance]:
    """(video, audio) guidance of a job: its settings over the official defaults for this model's depth.
    An audio-to-video job's audio is frozen and gets none (as in the official A2V pipeline)."""
    audio = (
        A2V_AUDIO_GUIDANCE
        if job.spec.audio is not None
        else _guidance(job.spec.audio_guidance, default_audio_guidance(num_layers))
    )
    return _guidance(job.spec.video_guidance, default_video_guidance(num_layers)), audio


def encoded_text(text: str | None) -> str:
    """The text encoded for a prompt as a job or its plan gives it: a job's unset negative prompt (None) and the
    plans' `OFFICIAL_NEGATIVE_PROMPT` stand for ltx-pipelines' `DEFAULT_NEGATIVE_PROMPT`; other text is itself."""
    return DEFAULT_NEGATIVE_PROMPT if text is None or text == OFFICIAL_NEGATIVE_PROMPT else text


def prompt_texts(job: ValidJob) -> tuple[str, ...]:
    """The texts a one-piece render encodes: its prompt, and the negative prompt when it is guided."""
    spec = job.spec
    texts = tuple(spec.prompts()[:1])
    if spec.recipe == "two_stage":
        texts += (encoded_text(spec.negative_prompt),)
    return texts


def render_request(job: ValidJob, num_layers: int) -> RenderRequest:
    """The engine's request for a validated job, official defaults filled in for this model's depth."""
    spec = job.spec
    prompts = spec.prompts()
    if len(prompts) != 1:
        raise ValueError("a job with several prompts renders through the coordinator (one prompt per chunk)")
    video_guidance, audio_guidance = job_guidance(job, num_layers)
    return RenderRequest(
        prompt=prompts[0],
        negative_prompt=encoded_text(spec.negative_prompt),
        seed=spec.seed,
        height=spec.height,
        width=spec.width,
        num_frames=job.num_frames,
        frame_rate=spec.frame_rate,
        recipe=spec.recipe,
        steps=spec.steps,
        video_guidance=video_guidance,
        audio_guidance=audio_guidance,
        images=job_images(job),
        loras=job_loras(job),
        audio=(input_ref(spec.audio.path, spec.audio.sha256), spec.audio.start) if spec.audio is not None else None,
        decode_tiling=decode_tiling(job).tiles,
        **job_control(job),
    )


def job_images(job: ValidJob) -> tuple[tuple[str, int, float], ...]:
    return tuple((input_ref(image.path, image.sha256), image.frame, image.strength) for image in job.spec.images)


def job_audio(job: ValidJob) -> SourceAudio | None:
    """The track an audio-to-video job carries into its output."""
    audio = job.spec.audio
    return SourceAudio(input_ref(audio.path, audio.sha256), audio.start) if audio is not None else None


def content_hashes(job: ValidJob, frames_sha256: str, waveform: torch.Tensor | None) -> dict[str, str]:
    """What the sidecar pins as the render's content: the frames, and the generated waveform or the
    source track it carries (audio-to-video)."""
    content = {"video_frames": frames_sha256}
    if waveform is not None:
        content["audio_waveform"] = tensor_sha256(waveform)
    elif job.spec.audio is not None:
        content["audio_source"] = str(job.spec.audio.sha256)
    return content


def job_control(job: ValidJob) -> dict[str, Any]:
    """The IC-LoRA control of a job as request fields: `control` (reference, downscale, strength) and
    `control_lora`; empty for a job without one."""
    control = job.spec.control
    if control is None:
        return {}
    from ltx2.control import reference_downscale_factor

    source = input_ref(control.path, control.sha256)
    if control.kind == "canny":  # each node traces its own copy of the source (deterministic, cached)
        reference = canny_ref(source, str(control.sha256), control.canny_low, control.canny_high)
    else:
        reference = source
    lora = input_ref(control.lora, control.lora_sha256)
    return {
        "control": (reference, reference_downscale_factor(localize(lora)), control.strength),
        "control_lora": LoraSpec(lora, control.lora_strength),
    }


def check_job_loras(job: ValidJob, config: dict) -> None:
    """Refuse, naming the file as the job gives it, a LoRA or IC-LoRA of the job whose factors do not fit the
    transformer the checkpoint's config builds: from the files' headers, before any worker starts (each
    worker checks again against its own model, `ResidentLoras.check`)."""
    spec = job.spec
    given = [(lora.path, input_ref(lora.path, lora.sha256)) for lora in spec.loras]
    if spec.control is not None:
        given.append((spec.control.lora, input_ref(spec.control.lora, spec.control.lora_sha256)))
    if not given:
        return
    targets = transformer_targets(config)
    for name, ref in given:
        try:
            check_lora_file(localize(ref), targets)
        except CheckpointError as error:  # an s3:// LoRA was checked as its copy in this node's input cache
            raise CheckpointError(name, error.problem, error.fix) from None


def job_loras(job: ValidJob) -> tuple[LoraSpec, ...]:
    return tuple(LoraSpec(input_ref(lora.path, lora.sha256), lora.strength) for lora in job.spec.loras)


def job_input_refs(job: ValidJob) -> list[str]:
    """Every input file of a job as its pinned reference (`cluster.storage.input_ref`)."""
    spec = job.spec
    refs = [input_ref(image.path, image.sha256) for image in spec.images]
    refs += [input_ref(lora.path, lora.sha256) for lora in spec.loras]
    if (control := spec.control) is not None:
        refs += [input_ref(control.path, control.sha256), input_ref(control.lora, control.lora_sha256)]
    if spec.audio is not None:
        refs.append(input_ref(spec.audio.path, spec.audio.sha256))
    return refs


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Hash of a tensor's bytes: identical renders give identical hashes on any worker."""
    return TensorDigest().update(tensor).hexdigest()


class TensorDigest:
    """`tensor_sha256` of the tensors given so far, concatenated along their first dimension: frames are
    hashed run by run as the decode yields them, to the digest the whole video would give."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def update(self, tensor: torch.Tensor) -> TensorDigest:
        self._sha.update(tensor.detach().cpu().contiguous().numpy())  # the buffer itself, no bytes copy
        return self

    def hexdigest(self) -> str:
        return self._sha.hexdigest()
