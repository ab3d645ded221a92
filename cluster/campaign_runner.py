"""Runs campaigns from the durable store on a worker pool: the farm's long-running coordinator.

The loop asks the scheduling policy which campaigns get the free workers, claims jobs in the store,
renders them on resident-model workers, uploads, and only then marks them done. It can be killed at any
moment: on restart `recover()` requeues what was running (or quarantines a job that was running at each of the
last crashes), and a job whose output is already complete (sidecar present, objects already uploaded with the
same ETag) is marked done without rendering again. Stopped with Ctrl-C, it requeues its running jobs itself.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from cluster.campaign_manifest import CampaignSpec
from cluster.campaign_store import Store, utcnow
from cluster.executor import Executor, InputLost, WorkerLost, WorkerSlot
from cluster.kept_results import KeptResults
from cluster.prompt_refs import PromptRefs
from cluster.publish import (
    HEAD,
    OutputTarget,
    Published,
    deliver_held,
    drop,
    output_record,
    published,
    staging_dir,
    staging_root,
    sweep_partials,
)
from cluster.requests import prompt_texts
from cluster.storage import StorageOptions, Uploader, UploadError, UploadWait
from cluster.tasks import EncodeTask
from cluster.worker import JOBS_PER_WORKER, parse_faults
from jobs.fallback import ladder_for
from jobs.keys import parse_destination
from jobs.outputs import output_paths
from jobs.plan import plan_job
from jobs.resume import kept_job_key
from jobs.schedule import allocate
from jobs.spec import JobSpec, ValidJob, recipe_problem

OBSERVE_EVERY_S = 5.0
"""How often the loop refreshes the job and queue gauges besides when jobs end (a third of a 15 s scrape)."""


@dataclass
class _Running:
    campaign: str
    job_id: str
    job: ValidJob
    worker: int
    ref: Any
    holder: WorkerSlot | None = None
    """The worker it was sent to: a dead worker's jobs all come back, and only the first replaces it."""
    worker_name: str = ""
    started: float = field(default_factory=time.time)


def job_from_row(row: dict[str, Any]) -> ValidJob:
    """The job of a claimed row, on the OOM-ladder rung the claim chose (`Store.claim`)."""
    job = ValidJob(spec=JobSpec.model_validate_json(row["spec"]), num_frames=row["num_frames"])
    return job.with_fallback(row.get("rung"))


def error_texts(error: BaseException) -> tuple[str, str]:
    """A job's error as the store keeps it: its type and message, and the whole text with its traceback (a
    worker's error raised here carries the worker's traceback as its cause)."""
    return f"{type(error).__name__}: {error}", "".join(traceback.format_exception(error))


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory, also when it comes back wrapped by the executor's backend."""
    import torch

    return isinstance(error, torch.OutOfMemoryError) or "OutOfMemoryError" in type(error).__name__


class CampaignRunner:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        out_root: Path,
        storage: StorageOptions | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        poll_s: float = 0.5,
        blocklist_after: int = 3,
        metrics: Any = None,
        uploads: Any = None,
        on_upload_wait: Callable[[UploadWait], None] | None = None,
        distilled_checkpoint: str | None = None,
        kept: KeptResults | None = None,
    ) -> None:
        """`on_upload_wait` hears of each retry of an upload waiting out an outage, wherever it runs (a worker's,
        polled by the publishing thread waiting for it, or the head's own); it is called on those threads.
        `distilled_checkpoint`: the pool's checkpoint file name when it is a distilled one (a job whose recipe it
        cannot run fails at its claim, with no attempt on a worker: `jobs.spec.recipe_problem`). `kept`: where a
        chunked or tiled job's task results are kept until it is published; a job claimed again after the runner
        or a worker died resumes from them (None: kept nowhere, such a job renders again whole)."""
        self.store = store
        self.kept = kept
        self.distilled_checkpoint = distilled_checkpoint
        self.executor = executor
        self.ladder = ladder_for(executor.placement.mode, executor.batches_passes)
        self.out_root = Path(out_root)
        self.storage = storage or StorageOptions()
        self.clock = clock
        self.poll_s = poll_s
        self.blocklist_after = blocklist_after
        self.metrics = metrics  # FarmMetrics of the endpoint (`campaign run --metrics-port`), or None
        self.uploads = uploads  # the endpoint's UploadMetrics for what the head itself uploads, or None
        self.on_upload_wait = on_upload_wait
        self._publishing = ThreadPoolExecutor(2, thread_name_prefix="publish")
        """Receives outputs from workers, uploads what the head holds: beside the scheduling loop, never in it."""
        self._pending: list[tuple[Future[Published], CampaignSpec, str, ValidJob, float, Any]] = []
        self.blocklisted: dict[str, str] = {}  # worker name -> why
        self._failures: dict[int, list[str]] = {}  # worker slot -> ids of the jobs it failed since its last success
        self._failed_on: dict[tuple[str, str], set[int]] = {}  # (campaign, job) -> worker slots that failed it
        self._blocklisted_slots: set[int] = set()
        self.prompts = PromptRefs()  # text -> handle of its encoding (farm-wide)
        self._held: dict[int, str | None] = {}  # worker slot -> LoRA set of its last job (pools per LoRA set)
        self._observed = float("-inf")  # when the gauges last read the store (monotonic): never yet

    def _out_dir(self, campaign: str) -> Path:
        return self.out_root / campaign

    def _target(self, spec: CampaignSpec) -> OutputTarget:
        destination = parse_destination(spec.output) if spec.output else None
        return OutputTarget(destination, self.storage, spec.key_template, spec.campaign)

    def run(
        self,
        until_idle: bool = True,
        max_seconds: float | None = None,
        on_progress: Callable[[dict[str, int]], None] | None = None,
    ) -> dict[str, int]:
        """Run until nothing is queued or running (`until_idle`), or until `max_seconds`.

        `on_progress` gets the running counts after every finished job (progress bars). Interrupted (Ctrl-C),
        it puts the jobs it was running back in the queue (attempt `stopped`: no retry, and no crash that
        `recover()` would count towards a quarantine), stops the head's upload retries, and re-raises;
        `stopped_jobs` says how many it requeued.
        """
        self._claimed: set[tuple[str, str]] = set()
        self.stopped_jobs = 0
        try:
            return self._run(until_idle, max_seconds, on_progress)
        except KeyboardInterrupt:
            from cluster.storage import stop_retrying

            stop_retrying()  # an upload thread of the head waiting out an outage would hold the exit for an hour
            self._publishing.shutdown(wait=False, cancel_futures=True)
            for campaign, job_id in self._claimed:  # those no longer running are left as they are
                if self.store.job_state(campaign, job_id) == "running":
                    self.store.requeue(campaign, job_id, "stopped", "the runner was stopped (Ctrl-C)")
                    self.stopped_jobs += 1
            raise

    def _run(
        self, until_idle: bool, max_seconds: float | None, on_progress: Callable[[dict[str, int]], None] | None
    ) -> dict[str, int]:
        recovered = self.store.recover()
        self._sweep_partials()
        if self.kept is not None:
            for job_hash in self.kept.sweep():
                self.store.log(f"forgot the kept task results of job {job_hash[:12]}, untouched for a day")
        self._stats = stats = {"done": 0, "failed": 0, "retried": 0, "skipped": 0, **recovered}
        faults = runner_faults()
        started = time.monotonic()
        depth = 1 if self.executor.is_gang else JOBS_PER_WORKER
        free = [w for _ in range(depth) for w in range(len(self.executor.workers))]  # a slot per job a worker holds
        running: dict[Any, _Running] = {}
        planned: list[tuple[CampaignSpec, dict[str, Any], ValidJob]] = []  # chunked/tiled jobs waiting
        waiting: list[
            tuple[str, dict[str, Any], ValidJob]
        ] = []  # claimed, waiting for a worker that has not failed them

        def start(worker: int, name: str, row: dict[str, Any], job: ValidJob) -> None:
            free.remove(worker)
            self._held[worker] = row.get("lora_set")
            holder = self.executor.workers[worker]
            encoded = {text: self._encoded(worker, text) for text in prompt_texts(job)}
            target = self._target(self.store.campaign_spec(name))
            ref = self.executor.start_render(worker, job, target, encoded)
            running[ref] = _Running(name, row["id"], job, worker, ref, holder, holder.name)

        def idle_slots() -> list[int]:
            """Free slots whose worker can take a job now (not a replacement still loading or waiting for room)."""
            starting = self.executor.starting
            return [w for w in free if w not in starting]

        while True:
            now = self.clock()
            if time.monotonic() - self._observed >= OBSERVE_EVERY_S:
                self._observe()  # a window opening or closing changes what may start without any job ending
            for slot in self.executor.poll_started():
                self.store.log(f"worker {self.executor.workers[slot].name} ready")
            if self._drain_published(stats) and on_progress is not None:
                on_progress(dict(stats))
            for item in list(waiting):
                avoid = self._failed_on.get((item[0], item[1]["id"]), set())
                idle = idle_slots()
                usable = [w for w in idle if w not in avoid] or (idle if not self._alternatives(avoid) else [])
                if usable:
                    waiting.remove(item)
                    start(usable[0], *item)
            if planned and not running and not self.executor.starting:
                # A long or large job uses every worker: it runs once the pool is idle.
                self._run_planned(*planned.pop(0), stats)
                if on_progress is not None:
                    on_progress(dict(stats))
                continue
            for name in allocate(self.store.campaign_states(), 0 if planned else len(idle_slots()), now):
                if not idle_slots():
                    break
                worker = idle_slots()[0]
                # A worker takes jobs with the LoRA set it already holds first: one pool per set, no refusing.
                row = self.store.claim(name, self.executor.workers[worker].name, self._held.get(worker), self.ladder)
                if row is None:
                    continue
                self._claimed.add((name, row["id"]))
                if row["id"] in faults:
                    raise RuntimeError(f"injected by LTX2_FARM_FAULTS: runner_crash:{row['id']} (the runner crashes)")
                spec = self.store.campaign_spec(name)
                job = job_from_row(row)
                unfit = recipe_problem(job.spec.recipe, self.distilled_checkpoint)
                if unfit is not None:  # no worker of this pool can run it: failed now, no retry, no worker blamed
                    _tally(stats, self.store.fail(name, row["id"], unfit.message(), 0.0, 0), "retried")
                    continue
                target = self._target(spec)
                if published(job, target, self._out_dir(name)):
                    # Published before a crash (the sidecar goes last): finish, never render or upload twice.
                    self._finish(spec, row["id"], job, "skipped", output_record(job, target, self._out_dir(name)))
                    continue
                if self.executor.is_gang or not plan_job(job).trivial:  # gangs run planned tasks only
                    planned.append((spec, row, job))  # claimed; stop claiming until it has run
                    break
                avoid = self._failed_on.get((name, row["id"]), set())
                if worker in avoid and self._alternatives(avoid):
                    waiting.append((name, row, job))  # a retry goes to another worker (Deadline-style)
                    continue
                start(worker, name, row, job)
            if not running and waiting:
                time.sleep(self.poll_s)  # the workers they wait for are idle or coming back
                continue
            if not running and len(self.blocklisted) == len(self.executor.workers):
                self.store.log(f"every worker is blocklisted ({self.blocklisted}); stopping: fix or replace the GPUs")
                stats["stopped"] = 1
                break
            if not running:
                if planned:  # a claimed planned job runs at the top of the loop once the whole pool is ready
                    if self.executor.starting:
                        self._wait_published(self.poll_s)
                    continue
                states = self.store.campaign_states()
                if until_idle and not self._pending and not any(allocate(states, 1, now)):
                    break
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    break
                self._wait_published(self.poll_s)
                continue
            ready = self.executor.wait(list(running), timeout=self.poll_s)
            for ref in ready:
                r = running.pop(ref)
                if r.worker not in self._blocklisted_slots:
                    free.append(r.worker)
                spec = self.store.campaign_spec(r.campaign)
                try:
                    reply = self.executor.get(ref)
                except WorkerLost as error:  # the worker died under the job
                    self._forget_prompts(r.job)
                    self._worker_lost(r, error, stats)  # its slot stays free, with a fresh worker in it
                    continue
                except InputLost as error:
                    # an input it was sent (a prompt's encoding) was held by a node that is gone: not this job's
                    # fault nor this worker's; the encoding is made again for the next attempt
                    self._forget_prompts(r.job)
                    state = self.store.requeue(
                        r.campaign, r.job_id, "input_lost", f"an input was lost with its node: {error}"
                    )
                    _tally(stats, state, "requeued")
                    continue
                except Exception as error:  # the job failed on a live worker
                    self._forget_prompts(r.job)  # an encoding that failed is not kept for later jobs
                    if is_out_of_memory(error):
                        self._out_of_memory(r.campaign, r.job_id, error, time.time() - r.started, stats)
                        continue
                    message, trace = error_texts(error)
                    seconds = time.time() - r.started
                    state = self.store.fail(r.campaign, r.job_id, message, seconds, spec.max_task_retries, trace)
                    _tally(stats, state, "retried")
                    self._failed_on.setdefault((r.campaign, r.job_id), set()).add(r.worker)
                    if r.worker not in self._blocklisted_slots and self._count_failure(
                        r.worker, r.campaign, r.job_id, error, stats
                    ):
                        free[:] = [w for w in free if w != r.worker]
                        self._blocklisted_slots.add(r.worker)
                    continue
                self._failures.pop(r.worker, None)
                seconds = float(reply.document["timings_s"].get("total", 0.0))
                deliver = partial(self.executor.deliver, r.holder, reply, on_upload_wait=self.on_upload_wait)
                self._publish(spec, r.job_id, r.job, seconds, r.started, deliver, holder=r.holder)
            if ready:
                self._observe()
            if ready and on_progress is not None:
                on_progress(dict(stats))
            if max_seconds is not None and time.monotonic() - started > max_seconds:
                break
        while self._pending:  # outputs on their way: recorded before returning, never left to a restart
            self._wait_published(None)
            self._drain_published(stats)
        self._sweep_partials()
        return stats

    def _forget_prompts(self, job: ValidJob) -> None:
        for text in prompt_texts(job):
            self.prompts.pop(text, None)

    def _encoded(self, slot: int, text: str) -> Any:
        """A handle of `text`'s encoding: made once by an encode task, then shared by every job and worker."""
        ref = self.prompts.get(text)
        if ref is None:
            ref, _trace = self.executor.run_task(slot, "encode:prompt", EncodeTask(text))
            self.prompts[text] = ref
        return ref

    def _out_of_memory(
        self, campaign: str, job_id: str, error: Exception, seconds: float, stats: dict[str, int]
    ) -> None:
        """Requeue for the next rung of the OOM ladder (not a retry, not the worker's fault)."""
        message, trace = error_texts(error)
        state = self.store.oom(campaign, job_id, message[:500], seconds, self.ladder, trace)
        _tally(stats, state, "oom_fallbacks")

    def _observe(self) -> None:
        """Jobs by state and the queue (held back or not), for the metrics endpoint."""
        if self.metrics is None:
            return
        self._observed = time.monotonic()
        states = self.store.campaign_states()
        self.metrics.set_jobs({state.name: self.store.counts(state.name) for state in states})
        self.metrics.set_queue(states, self.clock())

    def _alternatives(self, avoid: set[int]) -> bool:
        """Whether a usable worker exists that has not failed this job."""
        return any(w not in avoid and w not in self._blocklisted_slots for w in range(len(self.executor.workers)))

    def _worker_lost(self, r: _Running, error: Exception, stats: dict[str, int]) -> None:
        """Requeue the job without using a retry and put a fresh worker in the dead one's slot."""
        name = r.worker_name or self.executor.workers[r.worker].name
        state = self.store.interrupt(r.campaign, r.job_id, f"worker {name} died: {error}", time.time() - r.started)
        _tally(stats, state, "requeued")
        if r.holder is not None and self.executor.workers[r.worker] is not r.holder:
            return  # another job of the same dead worker came back first and replaced it
        new = self.executor.begin_replace(r.worker)  # the loop goes on while it loads or waits for room
        self._held.pop(r.worker, None)
        stats["replaced"] = stats.get("replaced", 0) + 1
        self._sweep_partials()  # the dead worker's half-written files (named with its pid)
        self.store.log(f"worker {name} died; replaced by {new} (starting)", r.campaign, r.job_id)

    def _count_failure(self, slot: int, campaign: str, job_id: str, error: Exception, stats: dict[str, int]) -> bool:
        """A worker whose last `blocklist_after` attempts all failed, on at least two different jobs, is
        taken out of rotation (a broken GPU fails every job; a broken job fails on every worker)."""
        failed = self._failures.setdefault(slot, [])
        failed.append(job_id)
        if len(failed) < self.blocklist_after or len(set(failed)) < 2:
            return False
        name = self.executor.workers[slot].name
        why = (
            f"{len(failed)} failed attempts in a row on {len(set(failed))} jobs; last: {type(error).__name__}: {error}"
        )
        self.blocklisted[name] = why
        stats["blocklisted"] = stats.get("blocklisted", 0) + 1
        self.store.log(f"worker {name} blocklisted: {why[:300]}", campaign)
        return True

    def _run_planned(self, spec: CampaignSpec, row: dict[str, Any], job: ValidJob, stats: dict[str, int]) -> None:
        """Run a chunked or tiled job through the coordinator on the whole (idle) pool."""
        from cluster.coordinator import Coordinator

        started = time.time()
        self._held = dict.fromkeys(range(len(self.executor.workers)), row.get("lora_set"))  # every worker takes its set
        staged = output_paths(job, staging_dir(self._target(spec), HEAD))
        drop(staged)  # a plan whose delivery a crash interrupted runs again whole
        try:
            coordinator = Coordinator(self.executor, prompts=self.prompts, kept=self._kept_for(spec))
            [sidecar] = coordinator.run([plan_job(job)], staged.video.parent)
            if self.metrics is not None and sidecar["resumed"]:
                self.metrics.tasks_resumed.inc(len(sidecar["resumed"]))
        except WorkerLost as error:  # a worker died mid-plan: replace it, run the job again
            dead = [i for i, w in enumerate(self.executor.workers) if not self.executor.alive(w)]
            state = self.store.interrupt(spec.campaign, row["id"], f"worker died: {error}", time.time() - started)
            _tally(stats, state, "requeued")
            for i in dead:
                self.executor.begin_replace(i)
                stats["replaced"] = stats.get("replaced", 0) + 1
            self._sweep_partials()
            return
        except Exception as error:
            if is_out_of_memory(error):
                self._out_of_memory(spec.campaign, row["id"], error, time.time() - started, stats)
                return
            message, trace = error_texts(error)
            seconds = time.time() - started
            state = self.store.fail(spec.campaign, row["id"], message, seconds, spec.max_task_retries, trace)
            _tally(stats, state, "retried")
            return
        worker_seconds = sum(t["seconds"] for t in sidecar.get("trace", []))
        on_upload = self.uploads.count if self.uploads is not None else None
        deliver = partial(deliver_held, sidecar, on_upload=on_upload, on_wait=self.on_upload_wait)
        self._publish(spec, row["id"], job, worker_seconds, started, deliver)

    def _sweep_partials(self) -> None:
        """Temporary files of this node's writers that a crash interrupted (workers sweep their own nodes')."""
        for folder in (self.out_root, staging_root()):
            for tmp in sweep_partials(folder):
                self.store.log(f"removed the partial file {tmp.name} of an interrupted render")

    def _publish(
        self,
        spec: CampaignSpec,
        job_id: str,
        job: ValidJob,
        gpu_seconds: float,
        started: float,
        deliver: Callable[[ValidJob, OutputTarget, Path], Published],
        holder: Any = None,
    ) -> None:
        """Finish a rendered job once its output is where it goes; the delivery runs on the publishing threads.
        Its GPU time is charged now (budgets see it while it uploads); `started`: when the job was claimed;
        `holder`: the worker that holds its files (None: the head)."""
        self.store.spend(spec.campaign, job_id, gpu_seconds)
        future = self._publishing.submit(deliver, job, self._target(spec), self._out_dir(spec.campaign))
        self._pending.append((future, spec, job_id, job, started, holder))

    def _wait_published(self, timeout: float | None) -> None:
        """Sleep until a delivery ends (or `timeout`): nothing else can move while the loop waits for them."""
        if self._pending:
            wait([f for f, *_ in self._pending], timeout=timeout, return_when=FIRST_COMPLETED)
        elif timeout is not None:
            time.sleep(timeout)

    def _drain_published(self, stats: dict[str, int]) -> bool:
        """Record every delivery that ended: done, or failed with the reason (the render is kept where it is)."""
        ended = [p for p in self._pending if p[0].done()]
        for item in ended:
            self._pending.remove(item)
            future, spec, job_id, job, started, holder = item
            try:
                result = future.result()
            except (WorkerLost, InputLost) as error:
                # its holder died with the files after the render: render again, without using a retry or counting
                # as a worker it killed
                state = self.store.requeue(
                    spec.campaign, job_id, "output_lost", f"worker died before publishing: {error}"
                )
                _tally(stats, state, "requeued")
                slot = next((i for i, w in enumerate(self.executor.workers) if w is holder), None)
                if slot is not None:  # still in its slot: replaced now, before a next job is sent to a dead worker
                    self.executor.begin_replace(slot)
                    self._held.pop(slot, None)
                    stats["replaced"] = stats.get("replaced", 0) + 1
                continue
            except Exception as error:
                self._publish_failed(spec, job_id, error)
                continue
            self._finish(spec, job_id, job, "done", output_record(job, self._target(spec), None, result))
            self._release_kept(spec, job)
            if self.metrics is not None:
                self.metrics.published(time.time() - started, job.num_frames / job.spec.frame_rate, spec.campaign)
        if ended:
            self._observe()
        return bool(ended)

    def _kept_for(self, spec: CampaignSpec) -> KeptResults | None:
        """Where a job of this campaign keeps its task results: this node's disk, and the campaign's bucket when it
        has one (a head on another node resumes from there)."""
        target = self._target(spec)
        if self.kept is None or not target.uploads_from_holder:
            return self.kept
        return self.kept.mirrored(Uploader(target.destination, self.storage, on_wait=self.on_upload_wait))

    def _release_kept(self, spec: CampaignSpec, job: ValidJob) -> None:
        """Forget a published job's kept task results."""
        kept = self._kept_for(spec)
        if kept is None:
            return
        kept.discard(kept_job_key(job))
        if self.metrics is not None:
            self.metrics.kept_task_bytes.set(self.kept.total_bytes())

    def _publish_failed(self, spec: CampaignSpec, job_id: str, error: Exception) -> None:
        """A rendered job whose output did not reach its destination: retried (on the same worker, its staged
        copy is published without rendering; elsewhere it renders again, to the same bytes), or failed with the
        storage's reason. A staged copy never published is swept from its node after `STAGED_KEEP_S`."""
        why = str(error) if isinstance(error, UploadError) else f"{type(error).__name__}: {error}"
        state = self.store.fail(spec.campaign, job_id, f"upload: {why}", 0.0, spec.max_task_retries)
        _tally(self._stats, state, "retried")

    def _finish(self, spec: CampaignSpec, job_id: str, job: ValidJob, counter: str, output: dict[str, Any]) -> None:
        if self.store.finish(spec.campaign, job_id, output, 0.0):  # its GPU time was charged when the render ended
            self._stats[counter] += 1


def _tally(stats: dict[str, int], state: str, requeued_as: str) -> None:
    """Count a job's state after a failed attempt: requeued (under `requeued_as`), failed, or neither (an operator
    paused or cancelled it while it ran)."""
    if state == "queued":
        stats[requeued_as] = stats.get(requeued_as, 0) + 1
    elif state == "failed":
        stats["failed"] += 1


def runner_faults() -> set[str]:
    """Job ids whose claim crashes this runner (`LTX2_FARM_FAULTS=runner_crash:ID`, chaos tests): a coordinator
    that raises in its own handling of a row, which `Store.recover()` quarantines after `QUARANTINE_AFTER`."""
    return {value for name, value in parse_faults(os.environ.get("LTX2_FARM_FAULTS", "")) if name == "runner_crash"}


def campaign_status(store: Store, name: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """Progress, ETA and why the campaign is waiting (if it is)."""
    from jobs.schedule import blocked_reason

    now = now or utcnow()
    row = store.campaign_row(name)  # NotFound for an unknown name
    counts = store.counts(name)
    state = store.campaign_state(name)
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
