"""A job's input files (conditioning images), checked before any compute: inside the allowed roots,
present, readable, decodable; then pinned by content (absolute path + SHA-256 in the spec, so the same
path with new pixels is a new job and the output name changes with it).

Allowed roots: the folder of the job file or manifest, the working directory, and every folder in
`LTX2_FARM_INPUT_ROOTS` (separated by the OS path separator). A path outside all of them is refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jobs.spec import FieldProblem, JobValidationError, ValidJob

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
    """Why the file is not a usable LoRA (a safetensors file with lora_A/lora_B pairs), or None."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        return f"is not a readable safetensors file ({type(e).__name__}); LoRAs load from .safetensors only"
    if not any(k.endswith("lora_A.weight") for k in keys) or not any(k.endswith("lora_B.weight") for k in keys):
        return "holds no lora_A/lora_B weight pairs; is it a LoRA?"
    return None


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


def _resolve_file(
    field: str, raw: str, roots: Sequence[Path], base: Path | None, check: Callable[[Path], str | None]
) -> tuple[Path, str] | FieldProblem:
    """(absolute path, SHA-256) of an input file inside the roots that passes `check`, or the problem."""
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
    return path, file_sha256(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_inputs(job: ValidJob, roots: Sequence[Path], base: Path | None = None, source: str = "job") -> ValidJob:
    """The job with each input path (images, LoRAs, audio) made absolute and its SHA-256 recorded; every problem
    reported at once."""
    spec = job.spec
    if not spec.images and not spec.loras and spec.audio is None:
        return job
    problems: list[FieldProblem] = []
    updates: dict[str, Any] = {"images": [], "loras": []}
    for name, items, check in (("images", spec.images, _check_image), ("loras", spec.loras, _check_lora)):
        for i, item in enumerate(items):
            found = _resolve_file(f"{name}[{i}].path", item.path, roots, base, check)
            if isinstance(found, FieldProblem):
                problems.append(found)
            else:
                updates[name].append(item.model_copy(update={"path": str(found[0]), "sha256": found[1]}))
    if spec.audio is not None:
        found = _resolve_file("audio.path", spec.audio.path, roots, base, _check_audio)
        if isinstance(found, FieldProblem):
            problems.append(found)
        else:
            problems += [p for p in [_check_audio_length(job, found[0])] if p]
            updates["audio"] = spec.audio.model_copy(update={"path": str(found[0]), "sha256": found[1]})
    if problems:
        raise JobValidationError(problems, source)
    return ValidJob(spec=spec.model_copy(update=updates), num_frames=job.num_frames, adjustments=job.adjustments)
