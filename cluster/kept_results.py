"""Kept task results on the head's disk: what a restarted coordinator resumes a job from (`jobs.resume` says which
results are kept and which tasks still run).

One folder per job (its content hash) under `kept_root()`; per kept task a safetensors file of its
tensors and a JSON record beside it (the task, the file's SHA-256 and size, the non-tensor fields). Both are
written atomically (temporary file, then rename), the record last: a result is kept exactly when its record is
there, and one whose file no longer has the recorded digest is dropped and its task runs again.

With a mirror (an `Uploader` at the campaign's bucket) each result is uploaded too, under `kept/<job hash>/`, so
that a head on another node, whose disk holds none of them, resumes the job from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from ltx_core.types import LatentState
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from cluster.output_files import write_json_atomic
from cluster.publish import sweep_partials
from cluster.storage import Uploader
from jobs.resume import kept_result_name
from ltx2 import stages
from ltx2.checkpoint import default_cache_dir

KEPT_KEEP_S = 24 * 3600
"""How long the results of a job nothing has written to stay kept: a job that failed for good or was cancelled is
never published, and a job run again after that renders whole, to the same bytes (as a staged output's does)."""

LATENT_FIELDS = ("latent", "denoise_mask", "positions", "clean_latent", "attention_mask")


def kept_root() -> Path:
    """Where the head keeps task results: $LTX2_FARM_KEPT, else `kept/` in the farm cache."""
    return Path(os.environ.get("LTX2_FARM_KEPT") or default_cache_dir() / "kept")


class KeptResultCorrupt(RuntimeError):
    """A kept result's file does not have the digest its record gives."""


def _encode(kind: str, value: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A task's result as tensors and JSON fields."""
    if kind == "stage1":
        result: stages.ChunkResult = value
        return {"video": result.video, "audio": result.audio, "generator_state": result.generator_state}, {}
    if kind == "blend":
        state: stages.Stage2State = value
        tensors = {}
        for modality in ("video", "audio"):
            latent_state = getattr(state, modality)
            for name in LATENT_FIELDS:
                tensor = getattr(latent_state, name)
                if tensor is not None:
                    tensors[f"{modality}.{name}"] = tensor
        fields = {
            "video_shape": list(state.video_shape),
            "audio_shape": list(state.audio_shape),
            "keyframes": [list(k) for k in state.keyframes],
        }
        return tensors, fields
    if kind == "audio":
        waveform, sample_rate = value
        return {"waveform": waveform}, {"sample_rate": int(sample_rate)}
    raise ValueError(f"no kept form for a {kind!r} task's result")


def _decode(kind: str, tensors: dict[str, torch.Tensor], fields: dict[str, Any]) -> Any:
    if kind == "stage1":
        return stages.ChunkResult(tensors["video"], tensors["audio"], tensors["generator_state"])
    if kind == "blend":

        def latent_state(modality: str) -> LatentState:
            return LatentState(**{name: tensors.get(f"{modality}.{name}") for name in LATENT_FIELDS})

        return stages.Stage2State(
            video=latent_state("video"),
            audio=latent_state("audio"),
            video_shape=tuple(fields["video_shape"]),
            audio_shape=tuple(fields["audio_shape"]),
            keyframes=tuple(tuple(k) for k in fields["keyframes"]),
        )
    if kind == "audio":
        return tensors["waveform"], fields["sample_rate"]
    raise ValueError(f"no kept form for a {kind!r} task's result")


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class KeptResults:
    """The kept task results of every job under `root`."""

    def __init__(self, root: Path | None = None, mirror: Uploader | None = None) -> None:
        self.root = Path(root) if root is not None else kept_root()
        self.mirror = mirror

    def mirrored(self, mirror: Uploader | None) -> KeptResults:
        """The same store, each result also kept at `mirror` (None: on this disk only)."""
        return KeptResults(self.root, mirror)

    @staticmethod
    def _key(job_hash: str, task_id: str, suffix: str) -> str:
        return f"kept/{job_hash}/{kept_result_name(task_id)}{suffix}"

    def _folder(self, job_hash: str) -> Path:
        return self.root / job_hash

    def save(self, job_hash: str, task_id: str, kind: str, value: Any) -> int:
        """Keep one task's result; its size in bytes."""
        tensors, fields = _encode(kind, value)
        data = save_tensors({k: t.detach().cpu().contiguous().clone() for k, t in tensors.items()})
        folder = self._folder(job_hash)
        folder.mkdir(parents=True, exist_ok=True)
        name = kept_result_name(task_id)
        _write_bytes_atomic(folder / f"{name}.safetensors", data)
        record = {
            "task": task_id,
            "kind": kind,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "fields": fields,
        }
        write_json_atomic(folder / f"{name}.json", record)
        if self.mirror is not None:  # the record last there too
            self.mirror.upload(
                [
                    (
                        folder / f"{name}.safetensors",
                        self._key(job_hash, task_id, ".safetensors"),
                        "application/octet-stream",
                    ),
                    (folder / f"{name}.json", self._key(job_hash, task_id, ".json"), "application/json"),
                ]
            )
        return len(data)

    def _fetch(self, job_hash: str, task_ids: Iterable[str]) -> None:
        """Bring the mirror's results of these tasks that this disk lacks onto it (a head on another node)."""
        folder = self._folder(job_hash)
        for task_id in task_ids:
            name = kept_result_name(task_id)
            if (folder / f"{name}.json").is_file():
                continue
            record = self.mirror.read(self._key(job_hash, task_id, ".json"))
            data = self.mirror.read(self._key(job_hash, task_id, ".safetensors")) if record is not None else None
            if data is None:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            _write_bytes_atomic(folder / f"{name}.safetensors", data)  # its digest is checked when it is loaded
            _write_bytes_atomic(folder / f"{name}.json", record)

    def records(self, job_hash: str, task_ids: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
        """Task id -> record of each result kept for the job (an unreadable record counts as not kept); with a
        mirror, those of `task_ids` this disk lacks are fetched from it first."""
        if self.mirror is not None:
            self._fetch(job_hash, task_ids)
        records = {}
        for path in sorted(self._folder(job_hash).glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            records[record["task"]] = record
        return records

    def load(self, job_hash: str, record: dict[str, Any]) -> Any:
        """A kept result as its task returned it, after checking its digest (`KeptResultCorrupt` if it differs)."""
        path = self._folder(job_hash) / f"{kept_result_name(record['task'])}.safetensors"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeptResultCorrupt(f"{path}: missing") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != record["sha256"]:
            raise KeptResultCorrupt(f"{path}: SHA-256 {digest}, kept as {record['sha256']}")
        return _decode(record["kind"], load_tensors(data), record["fields"])

    def drop(self, job_hash: str, task_ids: Iterable[str]) -> None:
        """Forget these results of the job (record first: never a record without its file)."""
        folder = self._folder(job_hash)
        for task_id in task_ids:
            name = kept_result_name(task_id)
            (folder / f"{name}.json").unlink(missing_ok=True)
            (folder / f"{name}.safetensors").unlink(missing_ok=True)
            if self.mirror is not None:
                self.mirror.delete(self._key(job_hash, task_id, ".json"))
                self.mirror.delete(self._key(job_hash, task_id, ".safetensors"))

    def discard(self, job_hash: str) -> None:
        """Forget every result kept for the job (its outputs are published)."""
        if self.mirror is not None:
            self.drop(job_hash, list(self.records(job_hash)))
        shutil.rmtree(self._folder(job_hash), ignore_errors=True)

    def sweep(self, keep_s: float = KEPT_KEEP_S, now: float | None = None) -> list[str]:
        """Forget the jobs whose kept results were last written `keep_s` ago or longer (and the temporary files of
        writers that died, by their pid); the job hashes forgotten."""
        if not self.root.is_dir():
            return []
        sweep_partials(self.root)
        cutoff = (time.time() if now is None else now) - keep_s
        swept = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            with contextlib.suppress(FileNotFoundError):
                newest = max((p.stat().st_mtime for p in folder.iterdir()), default=folder.stat().st_mtime)
                if newest < cutoff:
                    self.discard(folder.name)
                    swept.append(folder.name)
        return swept

    def total_bytes(self) -> int:
        """Bytes of every kept result's file under the root."""
        if not self.root.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.root.glob("*/*.safetensors"))
