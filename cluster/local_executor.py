"""The in-process backend of `cluster.executor.Executor`: render workers in this process, each call on a thread.

No cluster to start and nothing to ship: workers read this machine's files, and handles are futures. A worker
runs its calls on threads of its own as a Ray actor does (`JOBS_PER_WORKER` renders, a task, progress polls and
`PUBLISHES_PER_WORKER` publishes at once); the worker's model lock still runs the model work one call at a time.
For one machine without Ray, and for the tests of everything above the executor. Gangs need the Ray backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import torch

from cluster.executor import (
    PUBLISH_GROUP,
    PUBLISHES_PER_WORKER,
    CapacityError,
    ExecutorBase,
    check_worker_options,
)
from cluster.replies import WorkerInfo
from cluster.tasks import TaskRequest
from cluster.worker import JOBS_PER_WORKER, RenderWorker
from cluster.worker_options import WorkerOptions
from jobs.placement import REPLICA, Placement
from jobs.spec import ValidJob
from ltx2.checkpoint import CheckpointSet

CPU_WORKER_THREADS = 1
"""Threads of torch's CPU kernels while CPU workers run in this process: a Ray CPU worker's."""


def _value(item: Any) -> Any:
    """A handle given as an argument, as its value (the call waits for it, as a Ray actor's call does)."""
    return item.result() if isinstance(item, Future) else item


class LocalRenderWorker(RenderWorker):
    """`RenderWorker` whose handles from elsewhere (a prompt's encoding) are futures of this process."""

    store_get = staticmethod(_value)


class _Threads:
    """A worker of this process with the threads its calls run on."""

    def __init__(self, worker: RenderWorker) -> None:
        self.worker = worker
        self.calls = ThreadPoolExecutor(JOBS_PER_WORKER + 2, f"{worker.name}-calls")
        self.publishes = ThreadPoolExecutor(PUBLISHES_PER_WORKER, f"{worker.name}-publish")

    def close(self) -> None:
        """No new calls; those queued are dropped, those running end at their next step."""
        self.worker.stop()
        self.calls.shutdown(wait=False, cancel_futures=True)
        self.publishes.shutdown(wait=False, cancel_futures=True)


class LocalExecutor(ExecutorBase):
    """N render workers in this process, each with a resident model copy."""

    def __init__(
        self,
        checkpoints: CheckpointSet,
        num_workers: int = 1,
        placement: Placement = REPLICA,
        options: WorkerOptions | None = None,
    ) -> None:
        """`options`: every worker's (`cluster.worker_options`; `env` is for Ray's workers). On a machine with
        GPUs each worker takes one of its own (unless the device is "cpu")."""
        if placement.is_gang:
            raise CapacityError(
                f"a {placement.mode} gang runs on the Ray backend: pass --executor ray (or --address) for --placement"
            )
        options = options or WorkerOptions()
        gpus = torch.cuda.device_count() if options.device != "cpu" else 0
        check_worker_options(options, placement, gpus > 0)
        if gpus and num_workers > gpus:
            raise CapacityError(
                f"asked for {num_workers} workers (one GPU each), but this machine has {gpus} GPU(s); "
                "ask for fewer workers, or use a Ray cluster (--address)"
            )
        self.placement = placement
        self.replacements = 0
        self._threads_before = torch.get_num_threads()
        if not gpus:
            # As a Ray CPU worker runs (Ray gives an actor of one CPU one OpenMP thread): a CPU's sums run in an
            # order set by the thread count, so only then do both backends give the same bits for the same job.
            torch.set_num_threads(CPU_WORKER_THREADS)
        self._loaders = ThreadPoolExecutor(max(1, num_workers), "load")
        devices = [f"cuda:{i}" for i in range(gpus)] if gpus else ["cpu"]

        def new_worker(name: str) -> RenderWorker:
            slot = int(name.split("~", 1)[0].rsplit("-", 1)[1])
            return LocalRenderWorker(
                checkpoints, dataclasses.replace(options, device=devices[slot % len(devices)]), name
            )

        self._new_worker = new_worker
        self._start_all("worker", num_workers)

    def _start(self, name: str) -> tuple[Any, Any]:
        future: Future[_Threads] = self._loaders.submit(lambda: _Threads(self._new_worker(name)))
        first: Future[WorkerInfo] = Future()

        def answered(loaded: Future[_Threads]) -> None:
            error = loaded.exception()
            if error is not None:
                first.set_exception(error)
            else:
                first.set_result(loaded.result().worker.info())

        future.add_done_callback(answered)
        return future, first

    def _call(self, worker: Any, method: str, *args: Any, group: str | None = None, **kwargs: Any) -> Future:
        threads: _Threads = worker.result()
        pool = threads.publishes if group == PUBLISH_GROUP else threads.calls
        bound = getattr(threads.worker, method)

        def call() -> Any:
            return bound(*[_value(a) for a in args], **{key: _value(v) for key, v in kwargs.items()})

        return pool.submit(call)

    def _kill(self, worker: Any) -> None:
        """Let go of the worker: its calls end, nothing more is sent to it (a thread cannot be stopped)."""
        worker.add_done_callback(lambda loaded: loaded.exception() is None and loaded.result().close())

    def put(self, value: Any) -> Future:
        done: Future[Any] = Future()
        done.set_result(value)
        return done

    def get(self, handles: Any, timeout: float | None = None) -> Any:
        if isinstance(handles, list):
            return [self.get(h, timeout) for h in handles]
        return handles.result(timeout) if isinstance(handles, Future) else handles

    def wait(self, handles: Sequence[Any], timeout: float | None = None) -> list[Any]:
        done, _ = wait(list(handles), timeout=timeout, return_when=FIRST_COMPLETED)
        return [h for h in handles if h in done]

    def run_task(
        self, slot: int, label: str, request: TaskRequest, job: ValidJob | None = None
    ) -> tuple[Future, Future]:
        threads: _Threads = self.workers[slot].worker.result()
        result: Future[Any] = Future()
        trace: Future[Any] = Future()

        def run() -> None:
            try:
                fields = {f.name: _value(getattr(request, f.name)) for f in dataclasses.fields(request)}
                fallback = job.fallback if job is not None else None
                value, traced = threads.worker.run_task(label, type(request)(**fields), fallback)
            except BaseException as error:
                result.set_exception(error)
                trace.set_exception(error)
                return
            result.set_result(value)
            trace.set_result(traced)

        threads.calls.submit(run)
        return result, trace

    def shutdown(self) -> None:
        for slot in self.workers:
            self._kill(slot.worker)
        self.workers = []
        self._loaders.shutdown(wait=True)
        torch.set_num_threads(self._threads_before)
