"""The render job a user submits, and its validation before any GPU time is spent.

Two layers: pydantic checks types and refuses unknown fields (a typo is an error, not a silent default);
`validate_job` then checks what the model needs (sizes on the VAE grid, 8k+1 frames, sane ranges) and
reports every problem at once, each naming the field, the value, why, and the nearest valid value.
With `snap=True` fixable values are moved to the nearest valid value and each move is reported.
Pure: no torch, no Ray.
"""

from __future__ import annotations

import difflib
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobs.names import name_problem
from jobs.placement import PlacementSpec, placement_problems
from jobs.text import normalized, printable, prose_problem, shortened, strings, surrogate_problem

MAX_SIDE = 4096
MAX_FPS = 120.0
MAX_STEPS = 200
MAX_SECONDS = 600.0
"""Longest job: longer videos are split into temporal chunks of at most MAX_CHUNK_SECONDS."""
MAX_CHUNK_SECONDS = 20.0
"""LTX-2's temporal RoPE range: one pass longer than 20 s extrapolates."""
MAX_PROMPT_CHARS = 8000
OFFICIAL_NEGATIVE_PROMPT = "<official negative prompt>"
"""Stands for ltx-pipelines' DEFAULT_NEGATIVE_PROMPT in plans (`cluster.requests.encoded_text` spells it out)."""


class ImageInput(BaseModel):
    """A conditioning image: the first frame (image-to-video) or a keyframe, with its strength."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="image file (PNG/JPEG/WebP), inside the allowed input roots")
    frame: int = Field(0, description="frame index it pins (0: the first frame)")
    strength: float = Field(1.0, description="0..1; 1 keeps it exactly")
    sha256: str | None = Field(None, description="filled by the farm: the file's digest, part of the job's identity")


class LoraInput(BaseModel):
    """A LoRA fused into the transformer for this job (a style, a character, a brand)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="LoRA file (.safetensors, official or ComfyUI key names), inside the allowed roots")
    strength: float = Field(1.0, description="scale of its delta, in [-2, 2], not 0")
    sha256: str | None = Field(None, description="filled by the farm: the file's digest, part of the job's identity")


class AudioInput(BaseModel):
    """A sound track that drives the video (audio-to-video); the output carries it unchanged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="audio or video file with a sound track (WAV, MP3, AAC/M4A, FLAC, ...)")
    start: float = Field(0.0, description="seconds into the track where the video starts")
    sha256: str | None = Field(None, description="filled by the farm: the file's digest, part of the job's identity")


class ControlInput(BaseModel):
    """An IC-LoRA control pass the video follows: edges (canny, computed by the farm from a source video),
    or a depth or pose pass the user supplies, with the IC-LoRA trained for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["canny", "depth", "pose"] = Field(description="canny: `path` is a source video to trace")
    path: str = Field(description="canny: the source video; depth/pose: the pass itself, as a video")
    lora: str = Field(description="the IC-LoRA file for this kind of control (.safetensors)")
    lora_strength: float = Field(1.0, description="scale of the IC-LoRA's delta")
    strength: float = Field(1.0, description="0..1; 1 keeps the reference clean (the official default)")
    canny_low: int = Field(100, description="canny: lower hysteresis threshold (OpenCV)")
    canny_high: int = Field(200, description="canny: upper hysteresis threshold (OpenCV)")
    sha256: str | None = Field(None, description="filled by the farm: the source file's digest")
    lora_sha256: str | None = Field(None, description="filled by the farm: the IC-LoRA's digest")
    reference: str | None = Field(None, description="filled by the farm: the video the model sees (canny: derived)")


MAX_LORAS = 8
MAX_LORA_STRENGTH = 2.0


class GuidanceSpec(BaseModel):
    """Multimodal guidance for one modality; unset fields take the official defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cfg: float | None = None
    stg: float | None = None
    modality: float | None = None
    rescale: float | None = None
    stg_blocks: list[int] | None = None


class JobSpec(BaseModel):
    """One render: text → video with synchronized audio."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str | list[str] = Field(
        description="What to render (video and sound). Several prompts ('a|b|c' or a list) are spread over the "
        "temporal chunks in order."
    )
    negative_prompt: str | None = Field(None, description="What to avoid; default: the official negative prompt.")
    seed: int = Field(10, description="Same seed and settings give the same output on any worker.")
    height: int = Field(1024, description="Output height in pixels (multiple of 64 for two-stage recipes).")
    width: int = Field(1536, description="Output width in pixels (multiple of 64 for two-stage recipes).")
    num_frames: int | None = Field(None, description="Frame count, 8k+1 (e.g. 121). Or give `duration`.")
    duration: float | None = Field(None, description="Seconds; converted to the nearest 8k+1 frame count.")
    frame_rate: float = Field(24.0, description="Frames per second.")
    recipe: Literal["two_stage", "distilled"] = "two_stage"
    steps: int = Field(40, description="Stage-1 denoising steps (two_stage only; distilled uses 8 fixed sigmas).")
    video_guidance: GuidanceSpec = GuidanceSpec()
    audio_guidance: GuidanceSpec = GuidanceSpec()
    name: str | None = Field(None, description="Output file stem; default: derived from the content hash.")
    chunk_seconds: float = Field(10.0, description="Longest stage-1 chunk of a long video (≤ 20 s).")
    chunk_overlap: float = Field(1.0, description="Seconds each chunk shares with the previous one.")
    tail_strength: float = Field(1.0, description="How firmly a chunk keeps the previous chunk's tail (0..1).")
    anchor_colors: bool = Field(False, description="Match each chunk's latent colour statistics to the first.")
    tile_pixels: int = Field(1024, description="Largest stage-2 tile side in pixels (multiple of 32).")
    tile_overlap: int = Field(128, description="Stage-2 tile overlap in pixels (multiple of 32).")
    decode_tile_pixels: int = Field(512, description="VAE decode tile side in pixels (multiple of 32, ≥ 96).")
    decode_tile_frames: int = Field(64, description="VAE decode tile length in frames (multiple of 8, ≥ 32).")
    images: list[ImageInput] = Field(
        default_factory=list, description="conditioning images: [{path, frame: 0, strength: 1.0}, ...]"
    )
    loras: list[LoraInput] = Field(
        default_factory=list,
        description="LoRAs fused into the model in both stages: [{path, strength: 1.0}, ...]; jobs with the same "
        "set share workers that already hold it",
    )
    control: ControlInput | None = Field(
        None, description="an IC-LoRA control pass: {kind: canny|depth|pose, path, lora}; stage 1 follows it"
    )
    audio: AudioInput | None = Field(
        None, description="a sound track to animate: {path, start: 0.0}; the video follows it, the output keeps it"
    )
    placement: PlacementSpec = Field(
        PlacementSpec(), description="GPUs per model: replica (1), or a gang in sequence/guidance/sharded mode."
    )

    def prompts(self) -> list[str]:
        """The prompt(s) in chunk order: a list as given, or a string split on '|'."""
        if isinstance(self.prompt, list):
            return list(self.prompt)
        return [p.strip() for p in self.prompt.split("|")] if "|" in self.prompt else [self.prompt]


@dataclass(frozen=True)
class FieldProblem:
    """One thing wrong with one field."""

    field: str
    value: Any
    problem: str
    nearest: Any = None
    show_value: bool = True
    """False where the problem is the field itself (not a field, or required and missing): the message names the
    field alone."""
    snaps: bool = False
    """Whether `validate_job(..., snap=True)` moves the value to `nearest` (the command that can say so names its
    flag: a campaign manifest has none)."""

    def message(self) -> str:
        """One line: the field (escaped: an unknown field's name is input too), the value (shortened, escaped)."""
        if not self.show_value:
            return f"{printable(self.field)} {self.problem}"
        text = f"{printable(self.field)}: {shortened(self.value)} {self.problem}"
        if self.nearest is not None:
            text += f"; nearest valid value: {self.nearest!r}"
        return text


class JobValidationError(ValueError):
    """Every problem found in a job, reported together."""

    def __init__(self, problems: list[FieldProblem], source: str = "job") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p.message()}" for p in problems)
        super().__init__(f"{source} is invalid ({len(problems)} problem{'s' * (len(problems) != 1)}):\n{lines}")

    def __reduce__(self) -> tuple:
        return type(self), (self.problems, self.source)


@dataclass(frozen=True)
class ValidJob:
    """A job that passed validation, with every value resolved (frames from duration, etc.)."""

    spec: JobSpec
    num_frames: int
    adjustments: tuple[FieldProblem, ...] = ()
    """What `snap` changed, each with the original value and the value used."""
    fallback: str | None = None
    """The OOM-ladder rung it runs with (`jobs.fallback`): how it runs, not part of its identity."""

    def with_fallback(self, rung: str | None) -> ValidJob:
        return ValidJob(self.spec, self.num_frames, self.adjustments, rung)


def nearest_multiple(value: int, multiple: int, minimum: int) -> int:
    """The multiple of `multiple` closest to `value` (ties round up), at least `minimum`."""
    return max(minimum, math.floor(value / multiple + 0.5) * multiple)


def nearest_frame_count(value: float) -> int:
    """The 8k+1 frame count (k ≥ 1) closest to `value` (ties round up)."""
    return max(9, math.floor((value - 1) / 8 + 0.5) * 8 + 1)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field's annotation holds (`X`, `X | None`, `list[X]`), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        model = _model_of(arg)
        if model is not None:
            return model
    return None


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model whose field `loc` names (`("images", 0, "pth")`: `ImageInput`), or None."""
    model: type[BaseModel] | None = JobSpec
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _model_of(field.annotation) if field is not None else None
    return model


def _unknown_field(loc: tuple[str | int, ...]) -> str:
    """Why `loc` is refused: not a field of its model, with the nearest field's name where one is close (a typo),
    else the fields there are."""
    model = _model_at(loc)
    where = "a job field" if len(loc) == 1 else f"a field of {'.'.join(str(p) for p in loc[:-1])}"
    known = sorted(model.model_fields) if model is not None else []
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if close:
        return f"is not {where}; did you mean {close[0]!r}?"
    return f"is not {where} (known fields: {', '.join(known)})"


def _required(loc: tuple[str | int, ...]) -> str:
    """What a missing required field is for: the first sentence of its description."""
    model = _model_at(loc)
    field = model.model_fields.get(str(loc[-1])) if model is not None else None
    about = (field.description or "").split(". ")[0].rstrip(".") if field is not None else ""
    return f"is required: {about[:1].lower()}{about[1:]}" if about else "is required"


def parse_job(raw: dict[str, Any], source: str = "job") -> JobSpec:
    """Type-check a job mapping; errors name each field. A field whose name is close to an unknown field's is
    not also reported missing: "did you mean" on the typo says it."""
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        problems = []
        errors = e.errors()
        meant = {
            (*err["loc"][:-1], name)
            for err in errors
            if err["type"] == "extra_forbidden"
            for name in difflib.get_close_matches(
                str(err["loc"][-1]), list(getattr(_model_at(err["loc"]), "model_fields", {})), n=1
            )
        }
        for err in errors:
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc) or "(job)"
            if err["type"] == "extra_forbidden":
                problems.append(FieldProblem(field, field, _unknown_field(loc), show_value=False))
            elif err["type"] == "missing":
                if loc not in meant:
                    problems.append(FieldProblem(field, None, _required(loc), show_value=False))
            else:
                problems.append(FieldProblem(field, err.get("input"), f"is invalid: {err['msg']}"))
        raise JobValidationError(problems, source) from None


def normalized_text(spec: JobSpec) -> JobSpec:
    """The job with its prose and name in the form the farm keeps (`jobs.text.normalized`: NFC, LF); its paths
    as given."""
    changes: dict[str, Any] = {}
    if isinstance(spec.prompt, list):
        changes["prompt"] = [normalized(p) for p in spec.prompt]
    else:
        changes["prompt"] = normalized(spec.prompt)
    for field in ("negative_prompt", "name"):
        value = getattr(spec, field)
        if value is not None:
            changes[field] = normalized(value)
    changes = {k: v for k, v in changes.items() if v != getattr(spec, k)}
    return spec.model_copy(update=changes) if changes else spec


def validate_job(raw: dict[str, Any] | JobSpec, snap: bool = False, source: str = "job") -> ValidJob:
    """Check everything a render needs before compute; snap fixable values if asked."""
    spec = normalized_text(raw if isinstance(raw, JobSpec) else parse_job(raw, source))
    problems: list[FieldProblem] = []
    changes: dict[str, Any] = {}
    adjustments: list[FieldProblem] = []

    def fixable(field: str, value: Any, problem: str, nearest: Any) -> None:
        if snap:
            changes[field] = nearest
            adjustments.append(FieldProblem(field, value, f"{problem}; snapped to {nearest!r}"))
        else:
            problems.append(FieldProblem(field, value, problem, nearest, snaps=True))

    dump = spec.model_dump(exclude={"prompt", "negative_prompt", "name"})
    for field, text in strings(dump):  # paths and URLs: kept as given, but they must be text
        problem = surrogate_problem(text)
        if problem:
            problems.append(FieldProblem(field, text, problem))
    prompts = spec.prompts()
    if not prompts or any(not p.strip() for p in prompts):
        problems.append(FieldProblem("prompt", spec.prompt, "is empty; describe the scene and its sound"))
    elif any(len(p) > MAX_PROMPT_CHARS for p in prompts):
        problems.append(FieldProblem("prompt", prompts[0][:40] + "…", f"is longer than {MAX_PROMPT_CHARS} characters"))
    for field, text in [("prompt", p) for p in prompts] + [("negative_prompt", spec.negative_prompt or "")]:
        problem = prose_problem(text)
        if problem:
            problems.append(FieldProblem(field, text, problem))
    if not 0 <= spec.seed < 2**63:
        problems.append(FieldProblem("seed", spec.seed, f"must be in [0, {2**63 - 1}]"))

    if not (0 < spec.frame_rate <= MAX_FPS) or not math.isfinite(spec.frame_rate):
        problems.append(FieldProblem("frame_rate", spec.frame_rate, f"must be in (0, {MAX_FPS:g}] frames per second"))
    fps_ok = 0 < spec.frame_rate <= MAX_FPS

    divisor = 64  # both recipes render stage 1 at half size on the VAE's 32-pixel grid
    for field in ("height", "width"):
        value = getattr(spec, field)
        if value <= 0 or value > MAX_SIDE:
            nearest = min(MAX_SIDE, max(divisor, nearest_multiple(value, divisor, divisor)))
            problems.append(FieldProblem(field, value, f"must be in [{divisor}, {MAX_SIDE}] pixels", nearest))
        elif value % divisor:
            fixable(
                field,
                value,
                f"is not a multiple of {divisor} (stage 1 renders at half size on the VAE's 32-pixel grid)",
                nearest_multiple(value, divisor, divisor),
            )

    num_frames = spec.num_frames
    if spec.duration is not None and spec.num_frames is not None:
        problems.append(FieldProblem("duration", spec.duration, "and num_frames are both set; give only one"))
    elif spec.duration is not None:
        if not math.isfinite(spec.duration) or spec.duration <= 0:
            problems.append(FieldProblem("duration", spec.duration, "must be a positive number of seconds"))
        elif fps_ok:
            exact = spec.duration * spec.frame_rate
            num_frames = nearest_frame_count(exact)
            if abs(exact - num_frames) > 1e-6 and not math.isclose(exact, num_frames - 1):
                # 5 s at 24 fps = 120 frames → 121 (8k+1 includes the first frame) is expected, not reported.
                adjustments.append(
                    FieldProblem(
                        "duration", spec.duration, f"gives {exact:g} frames; using the nearest 8k+1 count, {num_frames}"
                    )
                )
    elif num_frames is None:
        num_frames = 121
    if num_frames is not None and spec.duration is None:
        if num_frames < 9:
            problems.append(FieldProblem("num_frames", num_frames, "must be at least 9 (8k+1, k ≥ 1)", 9))
        elif (num_frames - 1) % 8:
            fixable(
                "num_frames",
                num_frames,
                "is not of the form 8k+1 (the VAE packs 8 frames per latent after the first)",
                nearest_frame_count(num_frames),
            )
            num_frames = changes.get("num_frames", num_frames)
    if num_frames is not None and fps_ok and num_frames >= 9:
        seconds = (num_frames - 1) / spec.frame_rate
        if seconds > MAX_SECONDS:
            problems.append(
                FieldProblem(
                    "num_frames" if spec.duration is None else "duration",
                    num_frames if spec.duration is None else spec.duration,
                    f"is {seconds:.1f} s; the longest job is {MAX_SECONDS:g} s (split it into several jobs)",
                    nearest_frame_count(MAX_SECONDS * spec.frame_rate),
                )
            )
    if not 2.0 <= spec.chunk_seconds <= MAX_CHUNK_SECONDS:
        problems.append(
            FieldProblem(
                "chunk_seconds",
                spec.chunk_seconds,
                f"must be in [2, {MAX_CHUNK_SECONDS:g}] (the model's positional range)",
                min(MAX_CHUNK_SECONDS, max(2.0, spec.chunk_seconds)),
            )
        )
    elif not 0 < spec.chunk_overlap <= spec.chunk_seconds / 2:
        problems.append(
            FieldProblem(
                "chunk_overlap",
                spec.chunk_overlap,
                f"must be in (0, chunk_seconds / 2 = {spec.chunk_seconds / 2:g}] seconds",
            )
        )
    if not 0.0 <= spec.tail_strength <= 1.0:
        problems.append(
            FieldProblem(
                "tail_strength", spec.tail_strength, "must be in [0, 1]", min(1.0, max(0.0, spec.tail_strength))
            )
        )
    for field, minimum in (("tile_pixels", 64), ("tile_overlap", 0), ("decode_tile_pixels", 96)):
        value = getattr(spec, field)
        if value < minimum or value % 32:
            problems.append(
                FieldProblem(
                    field,
                    value,
                    f"must be a multiple of 32, at least {minimum}",
                    nearest_multiple(max(value, minimum), 32, max(minimum, 32)),
                )
            )
    if spec.tile_overlap >= spec.tile_pixels:
        problems.append(FieldProblem("tile_overlap", spec.tile_overlap, "must be smaller than tile_pixels"))
    if spec.decode_tile_frames < 32 or spec.decode_tile_frames % 8:
        problems.append(
            FieldProblem(
                "decode_tile_frames",
                spec.decode_tile_frames,
                "must be a multiple of 8, at least 32 (decode tiles overlap by 24 frames)",
                nearest_multiple(max(32, spec.decode_tile_frames), 8, 32),
            )
        )

    problems.extend(FieldProblem(f, v, why) for f, v, why in placement_problems(spec.placement))
    for i, image in enumerate(spec.images):
        if not image.path.strip() or "\x00" in image.path:
            problems.append(FieldProblem(f"images[{i}].path", image.path, "is empty or holds a NUL character"))
        if not (0.0 <= image.strength <= 1.0) or not math.isfinite(image.strength):
            problems.append(FieldProblem(f"images[{i}].strength", image.strength, "must be in [0, 1]"))
        if num_frames is not None and not 0 <= image.frame < num_frames:
            problems.append(
                FieldProblem(f"images[{i}].frame", image.frame, f"must be in [0, {num_frames - 1}] (the job's frames)")
            )
    if len(spec.loras) > MAX_LORAS:
        problems.append(FieldProblem("loras", len(spec.loras), f"lists more than {MAX_LORAS} LoRAs; merge some"))
    for i, lora in enumerate(spec.loras):
        if not lora.path.strip() or "\x00" in lora.path:
            problems.append(FieldProblem(f"loras[{i}].path", lora.path, "is empty or holds a NUL character"))
        if not math.isfinite(lora.strength) or not 0 < abs(lora.strength) <= MAX_LORA_STRENGTH:
            problems.append(
                FieldProblem(
                    f"loras[{i}].strength",
                    lora.strength,
                    f"must be in [-{MAX_LORA_STRENGTH:g}, {MAX_LORA_STRENGTH:g}] and not 0 (0 is no LoRA: remove it)",
                )
            )
    if spec.audio is not None:
        if not spec.audio.path.strip() or "\x00" in spec.audio.path:
            problems.append(FieldProblem("audio.path", spec.audio.path, "is empty or holds a NUL character"))
        if not math.isfinite(spec.audio.start) or not 0 <= spec.audio.start <= 86400:
            problems.append(FieldProblem("audio.start", spec.audio.start, "must be a number of seconds ≥ 0"))
    if spec.control is not None:
        control = spec.control
        for field in ("path", "lora"):
            value = getattr(control, field)
            if not value.strip() or "\x00" in value:
                problems.append(FieldProblem(f"control.{field}", value, "is empty or holds a NUL character"))
        if not math.isfinite(control.strength) or not 0.0 <= control.strength <= 1.0:
            problems.append(FieldProblem("control.strength", control.strength, "must be in [0, 1]"))
        if not math.isfinite(control.lora_strength) or not 0 < abs(control.lora_strength) <= MAX_LORA_STRENGTH:
            problems.append(
                FieldProblem(
                    "control.lora_strength",
                    control.lora_strength,
                    f"must be in [-{MAX_LORA_STRENGTH:g}, {MAX_LORA_STRENGTH:g}] and not 0",
                )
            )
        if not 0 <= control.canny_low < control.canny_high <= 1000:
            problems.append(
                FieldProblem(
                    "control.canny_low",
                    [control.canny_low, control.canny_high],
                    "thresholds must satisfy 0 ≤ canny_low < canny_high ≤ 1000 (OpenCV's usual: 100, 200)",
                )
            )
    lora_paths = [lora.path for lora in spec.loras]
    if len(set(lora_paths)) != len(lora_paths):
        problems.append(FieldProblem("loras", lora_paths, "lists the same file twice; give each LoRA once"))
    frames_used = [image.frame for image in spec.images]
    if len(set(frames_used)) != len(frames_used):
        problems.append(FieldProblem("images", frames_used, "pins the same frame twice; give one image per frame"))
    if spec.recipe == "two_stage" and not 1 <= spec.steps <= MAX_STEPS:
        problems.append(
            FieldProblem("steps", spec.steps, f"must be in [1, {MAX_STEPS}]", min(MAX_STEPS, max(1, spec.steps)))
        )
    for modality in ("video_guidance", "audio_guidance"):
        g: GuidanceSpec = getattr(spec, modality)
        for field, low, high in (
            ("cfg", 0.0, 30.0),
            ("stg", 0.0, 10.0),
            ("modality", 0.0, 30.0),
            ("rescale", 0.0, 1.0),
        ):
            value = getattr(g, field)
            if value is not None and not (low <= value <= high and math.isfinite(value)):
                problems.append(
                    FieldProblem(
                        f"{modality}.{field}",
                        value,
                        f"must be in [{low:g}, {high:g}]",
                        min(high, max(low, value)) if math.isfinite(value) else None,
                    )
                )
        if g.stg_blocks is not None and any(b < 0 for b in g.stg_blocks):
            problems.append(FieldProblem(f"{modality}.stg_blocks", g.stg_blocks, "must be block indices ≥ 0"))
    if spec.name is not None:
        problem = name_problem(spec.name)
        if problem:
            problems.append(FieldProblem("name", spec.name, problem))

    if problems:
        raise JobValidationError(problems, source)
    if changes:
        spec = spec.model_copy(update={k: v for k, v in changes.items() if k in JobSpec.model_fields})
    assert num_frames is not None
    return ValidJob(spec=spec, num_frames=num_frames, adjustments=tuple(adjustments))


def recipe_problem(recipe: str, distilled_checkpoint: str | None) -> FieldProblem | None:
    """Why `recipe` cannot run on the model, if it cannot: the two-stage recipe needs a dev checkpoint.

    `distilled_checkpoint`: the checkpoint's file name when it is a distilled one, else None. Lightricks'
    two-stage pipelines take a dev checkpoint and guide its 40 steps, then refine with the distilled LoRA on top;
    a distilled checkpoint goes to their distilled pipelines (8 fixed steps, no guidance, no LoRA). Guidance on
    distilled weights, and the distilled LoRA over them, is neither, so the farm refuses it before any compute."""
    if distilled_checkpoint is None or recipe != "two_stage":
        return None
    return FieldProblem(
        "recipe",
        recipe,
        f"needs a dev checkpoint, and {distilled_checkpoint} is a distilled one (8 fixed steps, no guidance): "
        "use recipe: distilled, or the dev checkpoint with its distilled LoRA",
    )


def validate_for_model(
    job: ValidJob, num_layers: int, source: str = "job", heads: int = 32, distilled_checkpoint: str | None = None
) -> None:
    """Checks that need the model's shape (read from checkpoint metadata, no weights loaded) and kind
    (`distilled_checkpoint`: the checkpoint's file name when it is a distilled one)."""
    problems = [FieldProblem(f, v, why) for f, v, why in placement_problems(job.spec.placement, heads)]
    recipe = recipe_problem(job.spec.recipe, distilled_checkpoint)
    if recipe is not None:
        problems.append(recipe)
    for modality in ("video_guidance", "audio_guidance"):
        blocks = getattr(job.spec, modality).stg_blocks or []
        out_of_range = [b for b in blocks if b >= num_layers]
        if out_of_range:
            problems.append(
                FieldProblem(
                    f"{modality}.stg_blocks",
                    blocks,
                    f"names blocks {out_of_range}, but the model has {num_layers} (0..{num_layers - 1})",
                )
            )
    if problems:
        raise JobValidationError(problems, source)
