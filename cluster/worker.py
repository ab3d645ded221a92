"""The render worker: owns one GPU (or the CPU), loads the model set once, renders job after job.

`RenderWorker` is a plain class so it can be tested in-process; `cluster.executor` wraps it as a Ray
actor. Outputs are written MP4 first, then the sidecar, each atomically: a render is finished exactly
when its sidecar exists.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from jobs.outputs import output_paths, sidecar_document
from jobs.spec import GuidanceSpec, ValidJob, validate_for_model
from ltx2.checkpoint import CheckpointSet, cached_file_sha256
from ltx2.media import probe_mp4, write_mp4
from ltx2.models import LOAD_COUNTER, load_resident_models
from ltx2.render import Guidance, Renderer, RenderRequest, default_audio_guidance, default_video_guidance


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _guidance(spec: GuidanceSpec, default: Guidance) -> Guidance:
    updates = {k: v for k, v in spec.model_dump().items() if v is not None}
    if "stg_blocks" in updates:
        updates["stg_blocks"] = tuple(updates["stg_blocks"])
    return replace(default, **updates)


def render_request(job: ValidJob, num_layers: int) -> RenderRequest:
    """The engine's request for a validated job, official defaults filled in for this model's depth."""
    from ltx_pipelines.utils.constants import DEFAULT_NEGATIVE_PROMPT

    spec = job.spec
    return RenderRequest(
        prompt=spec.prompt,
        negative_prompt=DEFAULT_NEGATIVE_PROMPT if spec.negative_prompt is None else spec.negative_prompt,
        seed=spec.seed,
        height=spec.height,
        width=spec.width,
        num_frames=job.num_frames,
        frame_rate=spec.frame_rate,
        recipe=spec.recipe,
        steps=spec.steps,
        video_guidance=_guidance(spec.video_guidance, default_video_guidance(num_layers)),
        audio_guidance=_guidance(spec.audio_guidance, default_audio_guidance(num_layers)),
    )


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Hash of a tensor's bytes: identical renders give identical hashes on any worker."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class RenderWorker:
    """One model copy on one device, rendering jobs sequentially."""

    def __init__(self, checkpoints: CheckpointSet, device: str | None = None, dtype: str = "bfloat16") -> None:
        self.device = device or default_device()
        self.models = load_resident_models(checkpoints, self.device, getattr(torch, dtype))
        self.renderer = Renderer(self.models)
        self.jobs_done = 0
        self._progress: dict[str, Any] = {"stage": "idle", "step": 0, "total": 0, "job": None}
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """Identity and load statistics (tests use `loads` to prove a warm worker does not reload)."""
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": str(self.models.device),
            "gpu": torch.cuda.get_device_name(self.models.device) if self.models.device.type == "cuda" else None,
            "dtype": str(self.models.dtype).removeprefix("torch."),
            "loads": LOAD_COUNTER["loads"],
            "load_seconds": self.models.load_seconds,
            "jobs_done": self.jobs_done,
            "prompt_encodes": self.renderer.prompts.encodes,
            "num_layers": self.models.num_layers,
        }

    def progress(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._progress)

    def _on_step(self, stage: str, step: int, total: int) -> None:
        with self._lock:
            self._progress.update(stage=stage, step=step, total=total)

    def model_hashes(self) -> dict[str, dict[str, Any]]:
        """SHA-256 and size of every model file, hashed once per process."""
        return {
            role: {"path": str(path), "bytes": path.stat().st_size, "sha256": cached_file_sha256(path)}
            for role, path in self.models.paths.files().items()
        }

    def render(self, job: ValidJob, out_dir: str) -> dict[str, Any]:
        """Render `job` into `out_dir`; return the sidecar document (also written beside the MP4)."""
        validate_for_model(job, self.models.num_layers)
        paths = output_paths(job, Path(out_dir))
        with self._lock:
            self._progress = {"stage": "starting", "step": 0, "total": 0, "job": paths.video.name}
        started = time.perf_counter()
        output = self.renderer.render(render_request(job, self.models.num_layers), on_step=self._on_step)
        self._on_step("mux", 0, 0)
        mux_start = time.perf_counter()
        write_mp4(paths.video, output.video, job.spec.frame_rate, output.audio, output.sample_rate)
        timings = dict(output.timings, mux=time.perf_counter() - mux_start)
        timings["total"] = time.perf_counter() - started
        media = asdict(probe_mp4(paths.video))
        document = sidecar_document(
            job,
            models=self.model_hashes(),
            timings=timings,
            media=media,
            output={
                "video": paths.video.name,
                "bytes": paths.video.stat().st_size,
                "sha256": cached_file_sha256(paths.video),
            },
            content={"video_frames": tensor_sha256(output.video), "audio_waveform": tensor_sha256(output.audio)},
            worker=self.info(),
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        _write_json_atomic(paths.sidecar, document)
        self.jobs_done += 1
        document["worker"]["jobs_done"] = self.jobs_done
        with self._lock:
            self._progress = {"stage": "idle", "step": 0, "total": 0, "job": None}
        return document
