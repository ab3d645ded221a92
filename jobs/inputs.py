"""A job's input files (conditioning images), checked before any compute: inside the allowed roots,
present, readable, decodable; then pinned by content (absolute path + SHA-256 in the spec, so the same
path with new pixels is a new job and the output name changes with it).

Allowed roots: the folder of the job file or manifest, the working directory, and every folder in
`LTX2_FARM_INPUT_ROOTS` (separated by the OS path separator). A path outside all of them is refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

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


def resolve_inputs(job: ValidJob, roots: Sequence[Path], base: Path | None = None, source: str = "job") -> ValidJob:
    """The job with each image path made absolute and its SHA-256 recorded; every problem reported at once."""
    if not job.spec.images:
        return job
    problems: list[FieldProblem] = []
    images = []
    for i, image in enumerate(job.spec.images):
        field = f"images[{i}].path"
        path = Path(image.path)
        if not path.is_absolute():
            path = (base or Path.cwd()) / path
        path = path.resolve()
        if not any(path.is_relative_to(root) for root in roots):
            problems.append(
                FieldProblem(
                    field,
                    image.path,
                    "is outside the allowed input folders; move the file there or add "
                    "its folder to LTX2_FARM_INPUT_ROOTS",
                )
            )
            continue
        if not path.is_file():
            problems.append(FieldProblem(field, image.path, "does not exist (or is not a file)"))
            continue
        why = _check_image(path)
        if why:
            problems.append(FieldProblem(field, image.path, why))
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        images.append(image.model_copy(update={"path": str(path), "sha256": digest}))
    if problems:
        raise JobValidationError(problems, source)
    return ValidJob(
        spec=job.spec.model_copy(update={"images": images}), num_frames=job.num_frames, adjustments=job.adjustments
    )
