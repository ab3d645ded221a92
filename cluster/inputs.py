"""A job's input files (conditioning images), checked before any compute: inside the allowed roots,
present, readable, decodable; then pinned by content (absolute path + SHA-256 in the spec, so the same
path with new pixels is a new job and the output name changes with it).

Allowed roots: the folder of the job file or manifest, the working directory, and every folder in
`LTX2_FARM_INPUT_ROOTS` (separated by the OS path separator). A path outside all of them is refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jobs.spec import FieldProblem, JobValidationError, ValidJob
from ltx2.checkpoint import file_sha256

MAX_IMAGE_SIDE = 8192


def input_roots(base: Path | None = None) -> list[Path]:
    roots = [Path.cwd()]
    if base is not None:
        roots.append(Path(base))
    extra = os.environ.get("LTX2_FARM_INPUT_ROOTS", "")
    roots += [Path(p) for p in extra.split(os.pathsep) if p]
    return [r.resolve() for r in roots]


def _check_image(path: Path) -> str | None:
    """Why the file is not a usable image, or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            width, height = image.size
            mode = image.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"is not a readable image ({type(e).__name__}); give a PNG, JPEG or WebP file"
    if mode not in ("RGB", "RGBA", "P"):
        return f"is a {mode} image; convert it to RGB (e.g. `convert in.png -type TrueColor out.png`)"
    if min(width, height) < 16 or max(width, height) > MAX_IMAGE_SIDE:
        return f"is {width}x{height}; sides must be between 16 and {MAX_IMAGE_SIDE} pixels"
    return None


def _check_lora(path: Path) -> str | None:
    """Why the file is not a usable LoRA (a safetensors file of lora_A/lora_B pairs), or None; from its header
    alone (`ltx2.checkpoint`: plain reads, no torch, nothing mapped). Whether it fits the model is checked
    where the model's config is known (`render`, and each worker)."""
    from ltx2.checkpoint import CheckpointError, lora_problems, read_safetensors_header, summarize, tensor_shapes

    try:
        header = read_safetensors_header(path)
    except CheckpointError as e:
        return f"is not a readable safetensors file ({e.problem}); LoRAs load from .safetensors only"
    problems = lora_problems(tensor_shapes(header))
    return summarize(problems) if problems else None


def _check_audio(path: Path) -> str | None:
    """Why the file holds no decodable sound track, or None."""
    from ltx2.media import NoAudioStream, audio_track_seconds

    try:
        audio_track_seconds(str(path))
    except NoAudioStream as e:
        return f"{e}; give a WAV, MP3, AAC/M4A or FLAC file, or a video with sound"
    except Exception as e:  # PyAV raises its own error types for unreadable media
        return f"is not a readable audio file ({type(e).__name__}); give a WAV, MP3, AAC/M4A or FLAC file"
    return None


def _check_audio_length(job: ValidJob, path: Path) -> FieldProblem | None:
    """The track must cover the video from `start` (the model reads exactly the video's duration)."""
    from ltx2.media import audio_track_seconds

    audio = job.spec.audio
    assert audio is not None
    _, _, seconds = audio_track_seconds(str(path))
    needed = job.num_frames / job.spec.frame_rate
    if audio.start + needed > seconds + 1e-6:
        return FieldProblem(
            "audio.path",
            audio.path,
            f"is {seconds:.2f} s long; from start {audio.start:g} s the job needs {needed:.2f} s: shorten the job "
            f"(duration ≤ {max(0.0, seconds - audio.start):.2f} s), lower audio.start, or give a longer track",
        )
    return None


def _check_video(path: Path) -> str | None:
    """Why the file holds no decodable video, or None."""
    from ltx2.control import video_frame_count

    try:
        video_frame_count(str(path))
    except Exception as e:  # PyAV's errors, or no video stream
        return f"is not a readable video ({type(e).__name__}: {e}); give an MP4/MOV/MKV/WebM file"
    return None


def canny_file_name(source_sha256: str, low: int, high: int) -> str:
    """Where a canny pass is cached: named by what determines it (the source's digest and the thresholds)."""
    return f"canny-{source_sha256[:20]}-{low}-{high}.mkv"


def control_cache_dir() -> Path:
    """Where derived control passes (canny maps) are cached: LTX2_FARM_CONTROL_DIR, else the farm's cache."""
    from ltx2.checkpoint import default_cache_dir

    return Path(os.environ.get("LTX2_FARM_CONTROL_DIR") or default_cache_dir() / "controls")


def _resolve_control(job: ValidJob, roots: Sequence[Path], base: Path | None) -> Any:
    """The control input with files pinned and its reference video made (canny) or found, or the problems."""
    from ltx2.control import canny_pass, reference_downscale_factor, video_frame_count

    control = job.spec.control
    problems: list[FieldProblem] = []
    source = _resolve_file("control.path", control.path, roots, base, _check_video)
    lora = _resolve_file("control.lora", control.lora, roots, base, _check_lora)
    problems += [p for p in (source, lora) if isinstance(p, FieldProblem)]
    if problems:
        return problems
    frames = video_frame_count(str(source[1]))
    if frames < job.num_frames:
        return [
            FieldProblem(
                "control.path",
                control.path,
                f"has {frames} frames; the job renders {job.num_frames}: give a longer control video or a shorter job",
            )
        ]
    factor = reference_downscale_factor(str(lora[1]))
    half = (job.spec.height // 2, job.spec.width // 2)
    if any(side % factor for side in half):
        return [
            FieldProblem(
                "control.lora",
                control.lora,
                f"was trained with references 1/{factor} of the target size; stage 1 renders {half[1]}x{half[0]}, "
                f"which {factor} does not divide: pick a size whose half is a multiple of {factor * 32}",
            )
        ]
    reference = source[0]
    if control.kind == "canny":
        name = canny_file_name(source[2], control.canny_low, control.canny_high)
        reference = str(canny_pass(str(source[1]), control_cache_dir() / name, control.canny_low, control.canny_high))
    return control.model_copy(
        update={"path": source[0], "sha256": source[2], "lora": lora[0], "lora_sha256": lora[2], "reference": reference}
    )


def _resolve_file(
    field: str, raw: str, roots: Sequence[Path], base: Path | None, check: Callable[[Path], str | None]
) -> tuple[str, Path, str] | FieldProblem:
    """(path for the spec, local file, SHA-256) of an input that passes `check`, or the problem.

    A local path must lie inside the roots and becomes absolute; an s3:// URL stays as it is in the spec
    and is fetched here (into this node's input cache) to be checked and pinned by its digest.
    """
    if raw.startswith("s3://"):
        from cluster.storage import InputFetchError, fetch_input

        try:
            local, digest = fetch_input(raw)
        except (InputFetchError, ValueError) as e:
            return FieldProblem(field, raw, f"could not be fetched ({e}); check the bucket, key and credentials")
        why = check(local)
        return FieldProblem(field, raw, why) if why else (raw, local, digest)
    path = Path(raw)
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    path = path.resolve()
    if not any(path.is_relative_to(root) for root in roots):
        return FieldProblem(
            field,
            raw,
            "is outside the allowed input folders; move the file there or add its folder to LTX2_FARM_INPUT_ROOTS",
        )
    if not path.is_file():
        return FieldProblem(field, raw, "does not exist (or is not a file)")
    why = check(path)
    if why:
        return FieldProblem(field, raw, why)
    return str(path), path, file_sha256(path)


def resolve_inputs(job: ValidJob, roots: Sequence[Path], base: Path | None = None, source: str = "job") -> ValidJob:
    """The job with each input path (images, LoRAs, audio, control) made absolute and its SHA-256 recorded;
    every problem reported at once."""
    spec = job.spec
    if not spec.images and not spec.loras and spec.audio is None and spec.control is None:
        return job
    problems: list[FieldProblem] = []
    updates: dict[str, Any] = {"images": [], "loras": []}
    for name, items, check in (("images", spec.images, _check_image), ("loras", spec.loras, _check_lora)):
        for i, item in enumerate(items):
            found = _resolve_file(f"{name}[{i}].path", item.path, roots, base, check)
            if isinstance(found, FieldProblem):
                problems.append(found)
            else:
                updates[name].append(item.model_copy(update={"path": found[0], "sha256": found[2]}))
    if spec.audio is not None:
        found = _resolve_file("audio.path", spec.audio.path, roots, base, _check_audio)
        if isinstance(found, FieldProblem):
            problems.append(found)
        else:
            problems += [p for p in [_check_audio_length(job, found[1])] if p]
            updates["audio"] = spec.audio.model_copy(update={"path": found[0], "sha256": found[2]})
    if spec.control is not None:
        control = _resolve_control(job, roots, base)
        if isinstance(control, list):
            problems += control
        else:
            updates["control"] = control
    if problems:
        raise JobValidationError(problems, source)
    return ValidJob(spec=spec.model_copy(update=updates), num_frames=job.num_frames, adjustments=job.adjustments)
