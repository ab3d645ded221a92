"""Runs campaigns from the durable store on a worker pool: the farm's long-running coordinator.

The loop asks the scheduling policy which campaigns get the free workers, claims jobs in the store,
renders them on resident-model workers, uploads, and only then marks them done. It can be killed at any
moment: on restart `recover()` requeues what was running, and a job whose output is already complete
(sidecar present, objects already uploaded with the same ETag) is marked done without rendering again.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from cluster.executor import WorkerPool
from cluster.storage import StorageOptions, Uploader
from jobs.campaign import CampaignSpec
from jobs.keys import parse_destination, render_key
from jobs.outputs import job_content_hash, output_paths
from jobs.plan import plan_job
from jobs.schedule import allocate
from jobs.spec import JobSpec, ValidJob
from jobs.store import Store, utcnow


@dataclass
class _Running:
    campaign: str
    job_id: str
    job: ValidJob
    worker: int
    ref: Any
    started: float = field(default_factory=time.time)


def job_from_row(row: dict[str, Any]) -> ValidJob:
    return ValidJob(spec=JobSpec.model_validate_json(row["spec"]), num_frames=row["num_frames"])


class CampaignRunner:
    def __init__(
        self,
        store: Store,
        pool: WorkerPool,
        out_root: Path,
        storage: StorageOptions | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        poll_s: float = 0.5,
    ) -> None:
        self.store = store
        self.pool = pool
        self.out_root = Path(out_root)
        self.storage = storage or StorageOptions()
        self.clock = clock
        self.poll_s = poll_s
        self._uploaders: dict[str, Uploader | None] = {}

    def _out_dir(self, campaign: str) -> Path:
        return self.out_root / campaign

    def _uploader(self, spec: CampaignSpec) -> Uploader | None:
        if spec.campaign not in self._uploaders:
            self._uploaders[spec.campaign] = (
                Uploader(parse_destination(spec.output), self.storage) if spec.output else None
            )
        return self._uploaders[spec.campaign]

    def _publish(self, spec: CampaignSpec, job: ValidJob) -> dict[str, Any]:
        """Upload a finished render (MP4, then sidecar); return what the store records as the output."""
        paths = output_paths(job, self._out_dir(spec.campaign))
        output: dict[str, Any] = {"video": str(paths.video), "sidecar": str(paths.sidecar)}
        uploader = self._uploader(spec)
        if uploader is not None:
            fields = {
                "campaign": spec.campaign,
                "job": paths.video.stem,
                "name": job.spec.name or "render",
                "seed": job.spec.seed,
                "hash": job_content_hash(job)[:12],
            }
            objects = uploader.upload(
                [
                    (paths.video, render_key(spec.key_template, {**fields, "ext": "mp4"}), "video/mp4"),
                    (paths.sidecar, render_key(spec.key_template, {**fields, "ext": "json"}), "application/json"),
                ]
            )
            output["objects"] = [{"key": o.key, "etag": o.etag, "bytes": o.bytes, "url": o.url} for o in objects]
        return output

    def run(
        self,
        until_idle: bool = True,
        max_seconds: float | None = None,
        on_progress: Callable[[dict[str, int]], None] | None = None,
    ) -> dict[str, int]:
        """Run until nothing is queued or running (`until_idle`), or until `max_seconds`.

        `on_progress` gets the running counts after every finished job (progress bars).
        """
        requeued = self.store.recover()
        self._sweep_partials()
        started = time.monotonic()
        free = list(range(len(self.pool.workers)))
        running: dict[Any, _Running] = {}
        stats = {"done": 0, "failed": 0, "retried": 0, "skipped": 0, "requeued": requeued}
        planned: list[tuple[CampaignSpec, dict[str, Any], ValidJob]] = []  # chunked/tiled jobs waiting
        while True:
            now = self.clock()
            if planned and not running:
                # A long or large job uses every worker: it runs once the pool is idle.
                self._run_planned(*planned.pop(0), stats)
                if on_progress is not None:
                    on_progress(dict(stats))
                continue
            for name in allocate(self.store.campaign_states(), 0 if planned else len(free), now):
                worker = free[0]
                row = self.store.claim(name, self.pool.workers[worker].info["name"])
                if row is None:
                    continue
                spec = self.store.campaign_spec(name)
                job = job_from_row(row)
                paths = output_paths(job, self._out_dir(name))
                if paths.sidecar.exists() and paths.video.exists():
                    # Rendered before a crash: publish (idempotent) and finish, never render twice.
                    self._complete(spec, row["id"], job, 0.0, stats, "skipped")
                    continue
                if self.pool.is_gang or not plan_job(job).trivial:  # gangs run planned tasks only
                    planned.append((spec, row, job))  # claimed; stop claiming until it has run
                    break
                free.pop(0)
                ref = self.pool.workers[worker].actor.render.remote(job, str(self._out_dir(name)))
                running[ref] = _Running(name, row["id"], job, worker, ref)
            if not running:
                if planned:
                    continue  # a claimed planned job runs at the top of the loop, the pool being idle
                states = self.store.campaign_states()
                if until_idle and not any(allocate(states, 1, now)):
                    break
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    break
                time.sleep(self.poll_s)
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=self.poll_s)
            for ref in ready:
                r = running.pop(ref)
                free.append(r.worker)
                spec = self.store.campaign_spec(r.campaign)
                try:
                    sidecar = ray.get(ref)
                except Exception as error:  # the worker's error, or the worker died
                    state = self.store.fail(
                        r.campaign,
                        r.job_id,
                        f"{type(error).__name__}: {error}",
                        time.time() - r.started,
                        spec.max_task_retries,
                    )
                    stats["retried" if state == "queued" else "failed"] += 1
                    continue
                self._complete(spec, r.job_id, r.job, float(sidecar["timings_s"].get("total", 0.0)), stats, "done")
            if ready and on_progress is not None:
                on_progress(dict(stats))
            if max_seconds is not None and time.monotonic() - started > max_seconds:
                break
        return stats

    def _run_planned(self, spec: CampaignSpec, row: dict[str, Any], job: ValidJob, stats: dict[str, int]) -> None:
        """Run a chunked or tiled job through the coordinator on the whole (idle) pool."""
        from cluster.coordinator import Coordinator

        started = time.time()
        try:
            [sidecar] = Coordinator(self.pool).run([plan_job(job)], self._out_dir(spec.campaign))
        except Exception as error:
            state = self.store.fail(
                spec.campaign,
                row["id"],
                f"{type(error).__name__}: {error}",
                time.time() - started,
                spec.max_task_retries,
            )
            stats["retried" if state == "queued" else "failed"] += 1
            return
        worker_seconds = sum(t["seconds"] for t in sidecar.get("trace", []))
        self._complete(spec, row["id"], job, worker_seconds, stats, "done")

    def _sweep_partials(self) -> None:
        """Temporary files of renders that a crash interrupted (outputs are renamed into place, so never an output)."""
        for tmp in self.out_root.glob("*/.*.partial-*"):
            pid = tmp.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)
                self.store.log(f"removed the partial file {tmp.name} of an interrupted render")

    def _complete(
        self, spec: CampaignSpec, job_id: str, job: ValidJob, gpu_seconds: float, stats: dict[str, int], counter: str
    ) -> None:
        try:
            output = self._publish(spec, job)
        except Exception as error:  # upload failed after retries: the files stay local, the job retries
            state = self.store.fail(spec.campaign, job_id, f"upload: {error}", gpu_seconds, spec.max_task_retries)
            stats["retried" if state == "queued" else "failed"] += 1
            return
        self.store.finish(spec.campaign, job_id, output, gpu_seconds)
        stats[counter] += 1


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def campaign_status(store: Store, name: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """Progress, ETA and why the campaign is waiting (if it is)."""
    from jobs.schedule import blocked_reason

    now = now or utcnow()
    counts = store.counts(name)
    state = next(c for c in store.campaign_states() if c.name == name)
    row = store.campaign_row(name)
    done = counts["done"]
    total = sum(counts.values())
    attempts = [a for a in store.attempts(name) if a["outcome"] == "ok" and a["gpu_seconds"]]
    eta = None
    if attempts and counts["queued"] + counts["running"]:
        per_job = sum(a["gpu_seconds"] for a in attempts) / len(attempts)
        workers_busy = max(1, counts["running"])
        eta = per_job * (counts["queued"] + counts["running"]) / workers_busy
    return {
        "campaign": name,
        "state": row["state"],
        "priority": row["priority"],
        "jobs": counts,
        "total": total,
        "progress": done / total if total else 0.0,
        "gpu_seconds": row["gpu_seconds"],
        "eta_seconds": eta,
        "waiting": blocked_reason(state, now) if counts["queued"] else None,
        "outputs": [json.loads(j["output"]) for j in store.jobs(name, "done") if j["output"]][:1000],
    }
