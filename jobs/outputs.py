"""Where a render's files go and what its JSON sidecar records. Pure: paths and dictionaries only."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.spec import ValidJob

SIDECAR_SCHEMA = "ltx2-farm/render-sidecar/v1"


def job_content_hash(job: ValidJob) -> str:
    """SHA-256 of the resolved job: the same request always maps to the same output name.

    Placement is left out: it says how the job runs, not what it renders (the gang modes are exact); so is
    where a derived control pass was cached (its source, thresholds and digests are in).
    """
    exclude: dict = {"name": True, "placement": True, "control": {"reference"}}
    payload = {"spec": job.spec.model_dump(mode="json", exclude=exclude), "num_frames": job.num_frames}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class OutputPaths:
    """The files of one finished render."""

    video: Path
    sidecar: Path


def output_paths(job: ValidJob, out_dir: Path) -> OutputPaths:
    """`<name or 'render'>-<hash12>-seed<seed>.mp4` and its `.json` sidecar under `out_dir`."""
    stem = f"{job.spec.name or 'render'}-{job_content_hash(job)[:12]}-seed{job.spec.seed}"
    return OutputPaths(video=Path(out_dir) / f"{stem}.mp4", sidecar=Path(out_dir) / f"{stem}.json")


def sidecar_document(
    job: ValidJob,
    *,
    models: dict[str, dict[str, Any]],
    timings: dict[str, float],
    media: dict[str, Any],
    output: dict[str, Any],
    content: dict[str, str],
    worker: dict[str, Any],
    created_at: str,
    timeline: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The JSON sidecar: enough to audit and reproduce the render. `timeline`: wall-clock marks (Unix
    seconds) of the render's phases on its worker, to see how jobs overlapped there."""
    document = {
        "schema": SIDECAR_SCHEMA,
        "created_at": created_at,
        "job": job.spec.model_dump(mode="json"),
        "resolved": {"num_frames": job.num_frames, "seed": job.spec.seed, "recipe": job.spec.recipe},
        "adjustments": [{"field": a.field, "value": a.value, "note": a.problem} for a in job.adjustments],
        "fallback": job.fallback,
        "job_sha256": job_content_hash(job),
        "models": models,
        "timings_s": {k: round(v, 6) for k, v in timings.items()},
        "media": media,
        "output": output,
        "content_sha256": content,
        "worker": worker,
    }
    if timeline is not None:
        document["timeline_unix"] = {k: round(v, 6) for k, v in timeline.items()}
    return document
