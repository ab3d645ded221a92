"""The executor: where render workers live and how work reaches them, behind one interface (as vLLM's executors).

The coordinator, the campaign runner and the command line see only `Executor`. Two backends implement it:
`cluster.ray_executor.RayExecutor` (each worker a Ray actor pinning one GPU, or a gang of actors; a cluster of
nodes) and `cluster.local_executor.LocalExecutor` (workers in this process, on threads; no cluster, for one machine
and for tests of the logic above the executor). Everything above works on *handles*: opaque references to values
that exist now or will once a call finishes (Ray object refs, or futures). A handle given as a task's field, or as
a value of `start_render`'s `encoded`, reaches the worker as its value.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cluster.publish import OutputTarget, Published, collect
from cluster.replies import RenderReply, WorkerInfo, WorkerProgress
from cluster.storage import UploadWait
from cluster.tasks import TaskRequest
from cluster.worker_options import WorkerOptions
from jobs.placement import REPLICA, Placement
from jobs.spec import ValidJob

ProgressCallback = Callable[[WorkerProgress], None]
UploadWaitCallback = Callable[[UploadWait], None]

PUBLISH_GROUP = "publish"
PUBLISHES_PER_WORKER = 4
"""Outputs a worker uploads (or hands over) at once, on threads of their own: uploads stalled by a storage
outage never take the threads that renders, encodes and progress polls run on."""

REPLACEMENT_TRIES = 3
"""Starts of a slot's replacement in a row that may die while loading before the executor gives up on it."""


class CapacityError(ValueError):
    """The cluster cannot host the workers asked for."""


def check_worker_options(options: WorkerOptions, placement: Placement, use_gpu: bool) -> None:
    """Refuse, before any worker starts, the options workers of `placement` on a GPU (or the CPU) cannot run
    (`WorkerOptions.problems`)."""
    problems = options.problems(placement, use_gpu)
    if problems:
        raise CapacityError("; ".join(problems))


class WorkerLost(RuntimeError):
    """The worker a call ran on is gone (its process, GPU or node died): the call's work is lost, not failed."""


class InputLost(RuntimeError):
    """A value a call needed was held by a node that is gone: neither the job's fault nor the worker's."""


@dataclass(eq=False)
class WorkerSlot:
    """One worker of an executor: a single model copy, or a gang acting as one. Compared by identity: a slot whose
    worker was replaced holds a new `WorkerSlot`.

    A replacement is `starting` (the backend's handle of its first `info` call) until it has loaded and answered;
    until then it has no `info`, and nothing should be sent to it.
    """

    worker: Any
    """The backend's worker: a Ray actor handle, or a `RenderWorker` of this process."""
    name: str
    info: WorkerInfo | None
    starting: Any = None
    tries: int = 0


class Executor(Protocol):
    """Start workers, run tasks and renders on them, wait, replace a lost worker, shut down."""

    placement: Placement
    workers: list[WorkerSlot]
    replacements: int

    @property
    def is_gang(self) -> bool: ...
    @property
    def batches_passes(self) -> bool: ...
    @property
    def starting(self) -> set[int]: ...

    def put(self, value: Any) -> Any:
        """A handle of `value`, for tasks on any worker."""

    def get(self, handles: Any, timeout: float | None = None) -> Any:
        """The value of a handle (or a list of values of a list of handles); `WorkerLost`, `InputLost`, or the
        error the call raised where it ran."""

    def wait(self, handles: Sequence[Any], timeout: float | None = None) -> list[Any]:
        """The handles of `handles` whose values are ready: at least one, unless `timeout` passes first."""

    def run_task(self, slot: int, label: str, request: TaskRequest, job: ValidJob | None = None) -> tuple[Any, Any]:
        """Start one task of `job`'s plan (its OOM-ladder rung, its input files) on worker `slot`: handles of its
        result and its `TaskTrace`. Without a job: a task on no rung and with no input files (a prompt's encoding)."""

    def start_render(
        self, slot: int, job: ValidJob, target: OutputTarget, encoded: dict[str, Any] | None = None
    ) -> Any:
        """Start a whole-job render on worker `slot`: a handle of its `RenderReply`."""

    def deliver(
        self,
        holder: WorkerSlot,
        reply: RenderReply,
        job: ValidJob,
        target: OutputTarget,
        out_dir: str | Path,
        on_upload_wait: UploadWaitCallback | None = None,
    ) -> Published:
        """A rendered job's output published from the worker that holds it (`cluster.publish`)."""

    def render(
        self,
        job: ValidJob,
        out_dir: str | Path,
        worker: int = 0,
        on_progress: ProgressCallback | None = None,
        poll_s: float = 0.2,
        target: OutputTarget | None = None,
        on_upload_wait: UploadWaitCallback | None = None,
    ) -> Published:
        """Render one job on worker `worker` and publish it, reporting progress while it runs."""

    def progress(self, slot: int) -> WorkerProgress: ...
    def alive(self, holder: WorkerSlot, timeout: float = 30.0) -> bool: ...
    def metrics_texts(self, timeout: float = 5.0) -> list[tuple[dict[str, str], str]]: ...
    def refresh_info(self) -> list[WorkerInfo]: ...
    def begin_replace(self, index: int, tries: int = 1) -> str: ...
    def poll_started(self, timeout_s: float = 0.0) -> list[int]: ...
    def replace(self, index: int) -> WorkerSlot: ...
    def shutdown(self) -> None: ...


class ExecutorBase:
    """What every backend does the same way, on the backend's primitives: `_start` (a worker and the handle of
    its first `info` call), `_call` (a method of a worker as a handle), `_kill`, `put`, `get`, `wait`, `ship`."""

    placement: Placement
    workers: list[WorkerSlot]
    replacements: int

    # --- the backend's primitives ---------------------------------------------------------------------------

    def _start(self, name: str) -> tuple[Any, Any]:
        raise NotImplementedError

    def _call(self, worker: Any, method: str, *args: Any, group: str | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _kill(self, worker: Any) -> None:
        raise NotImplementedError

    def put(self, value: Any) -> Any:
        raise NotImplementedError

    def get(self, handles: Any, timeout: float | None = None) -> Any:
        raise NotImplementedError

    def wait(self, handles: Sequence[Any], timeout: float | None = None) -> list[Any]:
        raise NotImplementedError

    def ship(self, job: ValidJob) -> dict[str, Any] | None:
        """The job's local input files, for workers that cannot read this machine's files (None: they can)."""
        return None

    def run_task(self, slot: int, label: str, request: TaskRequest, job: ValidJob | None = None) -> tuple[Any, Any]:
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------------------------

    @property
    def is_gang(self) -> bool:
        """Gang workers run planned tasks only (through the coordinator), never a whole `render`."""
        return self.placement.is_gang

    @property
    def batches_passes(self) -> bool:
        """Whether these replica workers batch a step's guided passes (the OOM ladder's `sequential_passes`)."""
        return any(w.info is not None and w.info.batched_passes for w in self.workers)

    @property
    def starting(self) -> set[int]:
        """Slots whose replacement has not answered yet."""
        return {i for i, w in enumerate(self.workers) if w.starting is not None}

    def _start_all(self, kind: str, num_workers: int) -> None:
        """Start `num_workers` workers and wait until each has loaded (a model set that cannot load is raised)."""
        started = [self._start(f"{kind}-{i}") for i in range(num_workers)]
        try:
            infos = self.get([first for _, first in started])
        except Exception:
            for worker, _ in started:
                self._kill(worker)
            raise
        self.workers = [WorkerSlot(worker, info.name, info) for (worker, _), info in zip(started, infos, strict=True)]

    def start_render(
        self, slot: int, job: ValidJob, target: OutputTarget, encoded: dict[str, Any] | None = None
    ) -> Any:
        return self._call(self.workers[slot].worker, "render", job, target, encoded, self.ship(job))

    def render(
        self,
        job: ValidJob,
        out_dir: str | Path,
        worker: int = 0,
        on_progress: ProgressCallback | None = None,
        poll_s: float = 0.2,
        target: OutputTarget | None = None,
        on_upload_wait: UploadWaitCallback | None = None,
    ) -> Published:
        """Render one job on worker `worker`, reporting progress while it runs; its output is published
        (`cluster.publish`): uploaded by the worker, or received into `out_dir` here. While the upload waits out
        an outage, `on_upload_wait` hears of each retry."""
        holder = self.workers[worker]
        target = target or OutputTarget()
        handle = self.start_render(worker, job, target)
        while on_progress is not None and not self.wait([handle], timeout=poll_s):
            on_progress(self.progress(worker))
        if on_progress is not None:  # the stages that ended since the last poll
            on_progress(self.progress(worker))
        return self.deliver(holder, self.get(handle), job, target, out_dir, on_upload_wait)

    def render_all(self, jobs: Sequence[ValidJob], out_dir: str | Path) -> list[Published]:
        """Spread jobs over the workers (each worker renders its share in order); results in job order."""
        target = OutputTarget()
        slots = [i % len(self.workers) for i in range(len(jobs))]
        handles = [self.start_render(s, job, target) for s, job in zip(slots, jobs, strict=True)]
        return [
            self.deliver(self.workers[s], reply, job, target, out_dir)
            for s, reply, job in zip(slots, self.get(handles), jobs, strict=True)
        ]

    def deliver(
        self,
        holder: WorkerSlot,
        reply: RenderReply,
        job: ValidJob,
        target: OutputTarget,
        out_dir: str | Path,
        on_upload_wait: UploadWaitCallback | None = None,
        poll_s: float = 0.5,
    ) -> Published:
        """A worker's rendered job published: uploaded by the worker, or its parts received into `out_dir`
        here, after which the worker drops its staged copy. `on_upload_wait` hears of each retry of the worker's
        upload while it waits out an outage."""
        worker = holder.worker
        handle = self._call(worker, "publish", job, target, group=PUBLISH_GROUP)
        heard = None
        while on_upload_wait is not None and not self.wait([handle], timeout=poll_s):
            wait = self.get(self._call(worker, "upload_wait", reply.video))
            if wait is not None and wait != heard:
                heard = wait
                on_upload_wait(wait)
        staged = self.get(handle)
        published = collect(reply.document, staged, job, target, Path(out_dir), self.get)
        if not staged.delivered:
            with contextlib.suppress(WorkerLost, InputLost):  # a worker gone since: its staging went with it
                self.get(self._call(worker, "release", target, reply.video, group=PUBLISH_GROUP))
        return published

    def progress(self, slot: int) -> WorkerProgress:
        return self.get(self._call(self.workers[slot].worker, "progress"))

    def alive(self, holder: WorkerSlot, timeout: float = 30.0) -> bool:
        """Whether the worker answers within `timeout`."""
        try:
            self.get(self._call(holder.worker, "info"), timeout=timeout)
            return True
        except Exception:
            return False

    def metrics_texts(self, timeout: float = 5.0) -> list[tuple[dict[str, str], str]]:
        """Every worker's metrics (`RenderWorker.metrics_text`); a worker starting, dead or busy beyond `timeout`
        drops out of this scrape."""
        out = []
        for slot in list(self.workers):
            if slot.starting is not None:
                continue  # a replacement still loading or waiting for room: it would hold the scrape
            try:
                out.append(self.get(self._call(slot.worker, "metrics_text"), timeout=timeout))
            except Exception:
                continue
        return out

    def refresh_info(self) -> list[WorkerInfo]:
        infos = self.get([self._call(w.worker, "info") for w in self.workers])
        for w, i in zip(self.workers, infos, strict=True):
            w.info = i
        return infos

    def begin_replace(self, index: int, tries: int = 1) -> str:
        """Put a fresh worker in slot `index` (its worker died or was blocklisted; the old one is killed) without
        waiting for it: it may wait for room in the cluster (a node coming back) while the other slots work.
        Returns its name; `poll_started` says when it can take work."""
        old = self.workers[index]
        with contextlib.suppress(Exception):  # already gone
            self._kill(old.worker)
        self.replacements += 1
        name = f"{old.name.split('~', 1)[0]}~{self.replacements}"
        worker, first = self._start(name)
        self.workers[index] = WorkerSlot(worker, name, None, first, tries)
        return name

    def poll_started(self, timeout_s: float = 0.0) -> list[int]:
        """The slots whose replacement answered within `timeout_s` (now ready for work). A replacement that died
        while loading is started again, up to `REPLACEMENT_TRIES` times in a row; then its error is raised."""
        pending = {id(w.starting): i for i, w in enumerate(self.workers) if w.starting is not None}
        if not pending:
            return []
        firsts = [self.workers[i].starting for i in pending.values()]
        deadline = time.monotonic() + timeout_s
        ready = self.wait(firsts, timeout=timeout_s)
        while len(ready) < len(firsts) and time.monotonic() < deadline:
            ready = self.wait(firsts, timeout=max(0.0, deadline - time.monotonic()))
        started = []
        for first in ready:
            index = pending[id(first)]
            slot = self.workers[index]
            try:
                slot.info, slot.starting = self.get(first), None
                started.append(index)
            except WorkerLost:
                if slot.tries >= REPLACEMENT_TRIES:
                    raise
                self.begin_replace(index, slot.tries + 1)
        return started

    def replace(self, index: int) -> WorkerSlot:
        """A fresh worker in slot `index`, waiting until it has loaded (`begin_replace` does not wait)."""
        self.begin_replace(index)
        while index not in self.poll_started(timeout_s=1.0):
            pass
        return self.workers[index]


def start_executor(
    backend: str,
    checkpoints: Any,
    num_workers: int = 1,
    placement: Placement = REPLICA,
    options: WorkerOptions | None = None,
) -> Executor:
    """`num_workers` workers of `placement` on `backend` ("local": this process; "ray": Ray actors, Ray started or
    joined first), each built with `options`."""
    if backend == "local":
        from cluster.local_executor import LocalExecutor

        return LocalExecutor(checkpoints, num_workers, placement, options)
    from cluster.ray_executor import RayExecutor

    return RayExecutor(checkpoints, num_workers, placement, options)
