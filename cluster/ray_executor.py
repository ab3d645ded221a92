"""The Ray backend of `cluster.executor.Executor`: each worker a Ray actor pinning one GPU (`num_gpus=1`) with a
full model copy resident, or a gang of actors acting as one (`cluster.gang`).

On a machine without GPUs the embedded cluster runs the workers on the CPU instead. The embedded Ray cluster
listens on the loopback interface only; `address` (or RAY_ADDRESS) joins an existing cluster instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import ray

from cluster.console import is_verbose, library_env, quiet_warnings
from cluster.executor import (
    PUBLISH_GROUP,
    PUBLISHES_PER_WORKER,
    CapacityError,
    ExecutorBase,
    InputLost,
    WorkerLost,
    check_worker_options,
)
from cluster.replies import WorkerInfo
from cluster.requests import job_input_refs
from cluster.storage import ship_inputs
from cluster.tasks import TaskRequest, task_fields
from cluster.worker import JOBS_PER_WORKER, RenderWorker, default_device
from cluster.worker_options import WorkerOptions
from jobs.placement import REPLICA, Placement
from jobs.spec import ValidJob
from ltx2.checkpoint import CheckpointError, CheckpointSet

SHUTDOWN_WAIT_S = 10.0
"""How long `RayExecutor.shutdown` waits for Ray to get its workers' CPUs/GPUs back."""

WORKER_ENV = {"TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
"""Per-step bars inside actors would interleave in the driver's log; the driver draws its own."""


def worker_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables set in the workers: `WORKER_ENV`, this command's verbosity
    (`cluster.console.library_env`: a joined cluster's nodes do not share this process's environment), `env`."""
    return {**WORKER_ENV, **library_env(), **(env or {})}


def start_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join `address`/RAY_ADDRESS if given, else start an embedded single-node cluster whose every listening
    socket is on the loopback interface (see `_loopback_node`). Ray's own log lines (its token banner when it
    joins a cluster) show with --verbose only; its errors always."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": worker_env()}
    level = logging.INFO if is_verbose() else logging.ERROR
    logging.getLogger("ray").setLevel(level)
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, logging_level=level)
    else:
        _token_authentication()
        with _loopback_node():
            ray.init(
                address="local",  # always a new embedded cluster, never a stray one found on the machine
                num_cpus=num_cpus,
                include_dashboard=False,
                runtime_env=runtime_env,
                log_to_driver=True,
                configure_logging=False,
            )


def _token_authentication() -> None:
    """Ray's token authentication for the embedded cluster, whatever RAY_AUTH_MODE says: its servers listen on
    the loopback interface, which every process of the machine can reach, so a call must carry the cluster's
    token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token, made if missing). Ray 2.60 turns it on
    for a new local cluster only where RAY_AUTH_MODE is unset. The mode is read from the environment, by the
    processes the cluster starts and, once its config is reloaded, by this one."""
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Ray, while it starts a node here, as a single-machine Ray: the node's address is then loopback, and Ray
    2.60 binds every server of a loopback node (GCS, raylet, object manager, the driver's and workers' gRPC
    servers, the dashboard and runtime env agents, the dashboard's and autoscaler's Prometheus endpoints) there
    instead of on all addresses. `ray.init(_node_ip_address="127.0.0.1")` cannot ask for it: Ray replaces a
    loopback address given there with the machine's routable one unless it runs single-machine (its default
    on macOS and Windows; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read once when Ray is imported). The flag is
    set for this start alone, never in the environment: a `ray start --address` that inherited it would refuse
    to join a cluster, and a later `start_ray(address)` in this process joins with its own address."""
    from ray._private import ray_constants

    multi_node = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = multi_node


def worker_runtime_env(env: Mapping[str, str] | None) -> dict[str, Any]:
    return {"runtime_env": {"env_vars": worker_env(env)}} if env else {}


def gpus_available() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def free_gpus() -> int:
    """GPUs of the cluster no worker holds now."""
    return int(ray.available_resources().get("GPU", 0))


def cuda_device_for(assigned: list[int], visible: int) -> str:
    """The torch device of the GPU Ray assigned to this process (`assigned`: Ray's GPU ids; `visible`: the
    devices torch enumerates). Ray hides the other GPUs with CUDA_VISIBLE_DEVICES, but only for a process
    whose CUDA driver starts after that: one that asked `torch.cuda.is_available()` earlier (an import or a
    setup hook can) still sees every GPU, and "cuda" would put every worker on GPU 0."""
    if not assigned or visible == len(assigned):
        return "cuda:0"
    return f"cuda:{int(assigned[0])}"


def ray_device(device: str | None) -> str:
    """`device` (None: a GPU if there is one), with a bare "cuda" pinned to this actor's Ray-assigned GPU (see
    `cuda_device_for`)."""
    device = device or default_device()
    if device != "cuda":
        return device
    import torch

    return cuda_device_for([int(i) for i in ray.get_gpu_ids()], torch.cuda.device_count())


class RayRenderWorker(RenderWorker):
    """`RenderWorker` as a Ray actor. A model set that cannot load here (an object changed or missing, a bad
    file) is raised by the actor's first call, not its constructor: Ray hands a call's error to the caller as
    that error, a constructor's only as text with a traceback."""

    store_get = staticmethod(ray.get)
    store_put = staticmethod(ray.put)

    def __init__(
        self, checkpoints: CheckpointSet, options: WorkerOptions | None = None, *args: Any, **kwargs: Any
    ) -> None:
        self.load_error: CheckpointError | None = None
        quiet_warnings()  # this actor's process: as quiet as the command that started it
        options = options or WorkerOptions()
        try:
            super().__init__(checkpoints, replace(options, device=ray_device(options.device)), *args, **kwargs)
        except CheckpointError as error:
            self.load_error = error

    def node_id(self) -> str | None:
        return ray.get_runtime_context().get_node_id()

    def info(self) -> WorkerInfo:
        if self.load_error is not None:
            raise self.load_error
        return super().info()


class RayExecutor(ExecutorBase):
    """N render workers as Ray actors: single actors each with a resident model copy, or gangs of actors
    (`placement`); a gang counts as one worker."""

    def __init__(
        self,
        checkpoints: CheckpointSet,
        num_workers: int = 1,
        placement: Placement = REPLICA,
        options: WorkerOptions | None = None,
    ) -> None:
        """`options`: every worker's (`cluster.worker_options`); a bare or absent device is each actor's own GPU
        (the CPU on a cluster without GPUs), and `env` is set in the actors."""
        options = options or WorkerOptions()
        use_gpu = options.device != "cpu" and gpus_available() >= 1
        check_worker_options(options, placement, use_gpu)
        resource = "GPU" if use_gpu else "CPU"
        free = int(ray.available_resources().get(resource, 0))
        needed = num_workers * placement.gpus
        self._resource = resource
        if free < needed:
            what = f"{num_workers} gang(s) of {placement.gpus}" if placement.is_gang else f"{num_workers} workers"
            raise CapacityError(
                f"asked for {what} ({needed} {resource}s), but the Ray cluster has {free} free {resource}(s); "
                f"ask for fewer workers or GPUs per gang, or add nodes"
            )
        self.placement = placement
        options = replace(options, device="cuda" if use_gpu else "cpu")
        if placement.is_gang:
            from cluster.gang import Gang

            gang_cls = ray.remote(Gang).options(num_cpus=0, max_concurrency=4)  # members hold the resources

            def start(name: str) -> Any:
                return gang_cls.remote(checkpoints, placement, options, name)

        else:
            actor_cls = ray.remote(
                max_concurrency=JOBS_PER_WORKER + 2,  # + an encode task, progress polls
                concurrency_groups={PUBLISH_GROUP: PUBLISHES_PER_WORKER},  # declared with the class, not in options
            )(RayRenderWorker).options(num_gpus=1 if use_gpu else 0, num_cpus=1, **worker_runtime_env(options.env))

            def start(name: str) -> Any:
                return actor_cls.remote(checkpoints, options, name)

        self._new_actor = start
        self.replacements = 0
        self._shipped: dict[str, Any] = {}  # input digest -> its object in Ray's store, shared by every job
        self._start_all("gang" if placement.is_gang else "worker", num_workers)

    # --- primitives -------------------------------------------------------------------------------------------

    def _start(self, name: str) -> tuple[Any, Any]:
        actor = self._new_actor(name)
        return actor, actor.info.remote()

    def _call(self, worker: Any, method: str, *args: Any, group: str | None = None, **kwargs: Any) -> Any:
        call = getattr(worker, method)
        if group is not None:
            call = call.options(concurrency_group=group)
        return call.remote(*args, **kwargs)

    def _kill(self, worker: Any) -> None:
        ray.kill(worker, no_restart=True)

    def put(self, value: Any) -> Any:
        return ray.put(value)

    def get(self, handles: Any, timeout: float | None = None) -> Any:
        """`ray.get`, with a lost actor or object as `WorkerLost` / `InputLost`, and a call's error raised as the
        worker raised it (Ray wraps it, its text a traceback: kept as the cause)."""
        try:
            return ray.get(handles, timeout=timeout)
        except ray.exceptions.RayActorError as error:
            raise WorkerLost(str(error)) from error
        except ray.exceptions.ObjectLostError as error:
            raise InputLost(str(error)) from error
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, Exception):
                raise error.cause from error
            raise

    def wait(self, handles: Sequence[Any], timeout: float | None = None) -> list[Any]:
        ready, _ = ray.wait(list(handles), num_returns=1, timeout=timeout)
        return ready

    def ship(self, job: ValidJob) -> dict[str, tuple[str, tuple[Any, ...]]]:
        """The job's local input files as objects in Ray's store ({digest: (name, refs of its parts)}): a worker
        on any node writes them into its own cache (`cluster.storage.stock_inputs`); each file is read here once."""
        return ship_inputs(job_input_refs(job), ray.put, self._shipped)

    def run_task(self, slot: int, label: str, request: TaskRequest, job: ValidJob | None = None) -> tuple[Any, Any]:
        actor = self.workers[slot].worker
        return actor.task.options(num_returns=2).remote(
            request.kind,
            label,
            fallback=job.fallback if job is not None else None,
            inputs=self.ship(job) if job is not None else None,
            **task_fields(request),
        )

    def shutdown(self) -> None:
        """Stop every worker; return once Ray has their CPUs/GPUs back (up to `SHUTDOWN_WAIT_S`): `ray.kill`
        only starts an actor's exit, and a pool started right after (a test, the campaign runner's next pool)
        was refused for capacity that was about to come free."""
        if not self.workers:
            return
        placed = [w for w in self.workers if w.starting is None]  # a replacement still waiting for room holds none
        resource, held = self._resource, len(placed) * self.placement.gpus
        before = ray.available_resources().get(resource, 0)
        if self.is_gang:
            ray.get([w.worker.shutdown.remote() for w in placed])
        for w in self.workers:
            ray.kill(w.worker)
        self.workers = []
        deadline = time.monotonic() + SHUTDOWN_WAIT_S
        while ray.available_resources().get(resource, 0) < before + held and time.monotonic() < deadline:
            time.sleep(0.05)
