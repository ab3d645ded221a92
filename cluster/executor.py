"""The executor: render workers as Ray actors, hidden behind a small interface (as vLLM hides its workers).

Each actor pins one GPU (`num_gpus=1`) and keeps a full model copy resident. On a machine without GPUs
the embedded cluster runs the workers on the CPU instead. The embedded Ray cluster listens on the loopback
interface only; `address` (or RAY_ADDRESS) joins an existing cluster instead.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from cluster.publish import OutputTarget, Published, collect
from cluster.requests import job_input_refs
from cluster.storage import ship_inputs
from cluster.worker import JOBS_PER_WORKER, RenderWorker
from jobs.placement import REPLICA, Placement
from jobs.spec import ValidJob
from ltx2.checkpoint import CheckpointError, CheckpointSet

ProgressCallback = Callable[[dict[str, Any]], None]

SHUTDOWN_WAIT_S = 10.0
"""How long `WorkerPool.shutdown` waits for Ray to get its workers' CPUs/GPUs back."""

PUBLISH_GROUP = "publish"
PUBLISHES_PER_WORKER = 4
"""Outputs a worker uploads (or hands over) at once, on threads of their own: uploads stalled by a storage
outage never take the threads that renders, encodes and progress polls run on."""

WORKER_ENV = {"TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
"""Per-step bars inside actors would interleave in the driver's log; the driver draws its own."""


def start_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join `address`/RAY_ADDRESS if given, else start an embedded single-node cluster whose every listening
    socket is on the loopback interface (see `_loopback_node`)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": WORKER_ENV}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
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


def _runtime_env(env: dict[str, str] | None) -> dict[str, Any]:
    return {"runtime_env": {"env_vars": {**WORKER_ENV, **env}}} if env else {}


class CapacityError(ValueError):
    """The cluster cannot host the workers asked for."""


def gpus_available() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


class RayRenderWorker(RenderWorker):
    """`RenderWorker` as a Ray actor. A model set that cannot load here (an object changed or missing, a bad
    file) is raised by the actor's first call, not its constructor: Ray hands a call's error to the caller as
    that error, a constructor's only as text with a traceback."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.load_error: CheckpointError | None = None
        try:
            super().__init__(*args, **kwargs)
        except CheckpointError as error:
            self.load_error = error

    def info(self) -> dict[str, Any]:
        if self.load_error is not None:
            raise self.load_error
        return super().info()


def loaded(refs: Any) -> Any:
    """`ray.get` of workers' first calls; a model set that could not load is raised as itself."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, CheckpointError):
            raise error.cause from None
        raise


REPLACEMENT_TRIES = 3
"""Starts of a slot's replacement in a row that may die while loading before the pool gives up on it."""


@dataclass
class WorkerHandle:
    """A render actor and what it reported about itself.

    A replacement is `starting` (the ref of its first `info` call) until it has loaded and answered; until then
    its `info` holds only its name, and nothing should be sent to it.
    """

    actor: Any
    info: dict[str, Any]
    starting: Any = None
    tries: int = 0


class WorkerPool:
    """N render workers: single actors each with a resident model copy, or gangs of actors (`placement`).

    The coordinator drives both through the same `task` interface; a gang counts as one worker.
    """

    def __init__(
        self,
        checkpoints: CheckpointSet,
        num_workers: int = 1,
        device: str | None = None,
        dtype: str = "bfloat16",
        placement: Placement = REPLICA,
        compile: bool | None = None,
        fp8_attention: bool = False,
        fp8: bool = False,
        fp8_all_blocks: bool = False,
        fa4_attention: bool | None = None,
        batched_passes: bool | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """`compile`: compiled transformer blocks in replica workers (None: on for GPUs, see `ltx2.speed`);
        `fp8_attention`: their video self-attention in FP8 through cuDNN (Hopper GPUs, `ltx2.fp8_attention`);
        `fp8`: their linear layers in FP8 (`ltx2.fp8_linear`; FP8 tensor cores, or the CPU), with
        `fp8_all_blocks` in every block (`ltx2.speed.SpeedOptions.fp8_all_blocks`); `fa4_attention`: their
        bf16 attention through FlashAttention-4 (None: where it runs, `ltx2.fa4_attention`); `batched_passes`:
        a short step's guided passes as one batched forward (None: on GPUs, `ltx2.speed`); `env`: variables set in
        the workers besides their node's own (a cluster gives them credentials through the node's environment)."""
        flags = (
            ("--compile", compile),
            ("--fp8-attention", fp8_attention),
            ("--fp8", fp8 or fp8_all_blocks),
            ("--fa4-attention", fa4_attention),
            ("--batched-passes", batched_passes),
        )
        for flag, wanted in flags:
            if wanted and placement.is_gang:
                raise CapacityError(
                    f"{flag} is for replica workers; a {placement.mode} gang runs eager with its own attention: "
                    f"drop {flag} or use --placement replica"
                )
        gpus = gpus_available()
        use_gpu = device != "cpu" and gpus >= 1
        for flag, wanted in (("--fp8-attention", fp8_attention), ("--fa4-attention", fa4_attention)):
            if wanted and not use_gpu:
                raise CapacityError(
                    f"{flag} needs a Hopper-or-newer GPU (H100, H200, B200), and this pool runs on the CPU: drop {flag}"
                )
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
        target = "cuda" if use_gpu else "cpu"
        if placement.is_gang:
            from cluster.gang import Gang

            gang_cls = ray.remote(Gang).options(num_cpus=0, max_concurrency=4)  # members hold the resources

            def start(name: str) -> Any:
                return gang_cls.remote(checkpoints, placement, target, dtype, name)

        else:
            actor_cls = ray.remote(
                max_concurrency=JOBS_PER_WORKER + 2,  # + an encode task, progress polls
                concurrency_groups={PUBLISH_GROUP: PUBLISHES_PER_WORKER},  # declared with the class, not in options
            )(RayRenderWorker).options(num_gpus=1 if use_gpu else 0, num_cpus=1, **_runtime_env(env))

            def start(name: str) -> Any:
                return actor_cls.remote(
                    checkpoints,
                    target,
                    dtype,
                    name,
                    compile=compile,
                    fp8_attention=fp8_attention,
                    fp8=fp8,
                    fp8_all_blocks=fp8_all_blocks,  # implies fp8 (the worker resolves it)
                    fa4_attention=fa4_attention,
                    batched_passes=batched_passes,
                )

        self._start = start
        self.replacements = 0
        self._shipped: dict[str, Any] = {}  # input digest -> its object in Ray's store, shared by every job
        kind = "gang" if placement.is_gang else "worker"
        actors = [start(f"{kind}-{i}") for i in range(num_workers)]
        try:
            infos = loaded([a.info.remote() for a in actors])
        except Exception:
            for actor in actors:
                ray.kill(actor)
            raise
        self.workers = [WorkerHandle(a, i) for a, i in zip(actors, infos, strict=True)]

    def render(
        self,
        job: ValidJob,
        out_dir: str | Path,
        worker: int = 0,
        on_progress: ProgressCallback | None = None,
        poll_s: float = 0.2,
        target: OutputTarget | None = None,
    ) -> Published:
        """Render one job on worker `worker`, reporting progress while it runs; its output is published
        (`cluster.publish`): uploaded by the worker, or received into `out_dir` here. While the upload waits out
        an outage, `on_progress` gets `{"stage": "upload", "waiting": UploadWait}` at each retry."""
        handle = self.workers[worker]
        target = target or OutputTarget()
        ref = handle.actor.render.remote(job, target, inputs=self.ship(job))
        while on_progress is not None:
            ready, _ = ray.wait([ref], timeout=poll_s)
            if ready:
                break
            on_progress(ray.get(handle.actor.progress.remote()))
        return self.collect(handle.actor, ray.get(ref), job, target, out_dir, on_progress)

    def render_all(self, jobs: Sequence[ValidJob], out_dir: str | Path) -> list[Published]:
        """Spread jobs over the workers (each worker renders its share in order); results in job order."""
        target = OutputTarget()
        handles = [self.workers[i % len(self.workers)] for i in range(len(jobs))]
        refs = [h.actor.render.remote(job, target, inputs=self.ship(job)) for h, job in zip(handles, jobs, strict=True)]
        return [
            self.collect(h.actor, reply, job, target, out_dir)
            for h, reply, job in zip(handles, ray.get(refs), jobs, strict=True)
        ]

    def ship(self, job: ValidJob) -> dict[str, tuple[str, tuple[Any, ...]]]:
        """The job's local input files as objects in Ray's store ({digest: (name, refs of its parts)}): a worker
        on any node writes them into its own cache (`cluster.storage.stock_inputs`); each file is read here once."""
        return ship_inputs(job_input_refs(job), ray.put, self._shipped)

    @staticmethod
    def collect(
        actor: Any,
        reply: Any,
        job: ValidJob,
        target: OutputTarget,
        out_dir: str | Path,
        on_progress: ProgressCallback | None = None,
        poll_s: float = 0.5,
    ) -> Published:
        """A worker's rendered job published: uploaded by the worker, or its parts received into `out_dir`
        here, after which the worker drops its staged copy. `on_progress` hears of each retry of a waiting
        upload, as `render` says."""
        ref = actor.publish.options(concurrency_group=PUBLISH_GROUP).remote(job, target)
        heard = None
        while on_progress is not None and not ray.wait([ref], timeout=poll_s)[0]:
            wait = ray.get(actor.upload_wait.remote(reply.video))
            if wait is not None and wait != heard:
                heard = wait
                on_progress({"stage": "upload", "waiting": wait})
        staged = ray.get(ref)
        published = collect(reply.document, staged, job, target, Path(out_dir), ray.get)
        if not staged.delivered:
            with contextlib.suppress(ray.exceptions.RayError):  # a worker gone since: its staging went with it
                ray.get(actor.release.options(concurrency_group=PUBLISH_GROUP).remote(target, reply.video))
        return published

    def refresh_info(self) -> list[dict[str, Any]]:
        infos = ray.get([w.actor.info.remote() for w in self.workers])
        for w, i in zip(self.workers, infos, strict=True):
            w.info = i
        return infos

    def begin_replace(self, index: int, tries: int = 1) -> str:
        """Put a fresh worker in slot `index` (its actor died or was blocklisted; the old one is killed) without
        waiting for it: it may wait for room in the cluster (a node coming back) while the other slots work.
        Returns its name; `poll_started` says when it can take work."""
        old = self.workers[index]
        with contextlib.suppress(Exception):
            ray.kill(old.actor, no_restart=True)
        self.replacements += 1
        name = f"{old.info['name'].split('~', 1)[0]}~{self.replacements}"
        actor = self._start(name)
        self.workers[index] = WorkerHandle(actor, {"name": name}, actor.info.remote(), tries)
        return name

    @property
    def starting(self) -> set[int]:
        """Slots whose replacement has not answered yet."""
        return {i for i, w in enumerate(self.workers) if w.starting is not None}

    def poll_started(self, timeout_s: float = 0.0) -> list[int]:
        """The slots whose replacement answered within `timeout_s` (now ready for work). A replacement that died
        while loading is started again, up to `REPLACEMENT_TRIES` times in a row; then its error is raised."""
        pending = {w.starting: i for i, w in enumerate(self.workers) if w.starting is not None}
        if not pending:
            return []
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
        started = []
        for ref in ready:
            index = pending[ref]
            handle = self.workers[index]
            try:
                self.workers[index] = WorkerHandle(handle.actor, loaded(ref))
                started.append(index)
            except ray.exceptions.RayActorError:
                if handle.tries >= REPLACEMENT_TRIES:
                    raise
                self.begin_replace(index, handle.tries + 1)
        return started

    def replace(self, index: int) -> WorkerHandle:
        """A fresh worker in slot `index`, waiting until it has loaded (`begin_replace` does not wait)."""
        self.begin_replace(index)
        while index not in self.poll_started(timeout_s=1.0):
            pass
        return self.workers[index]

    @property
    def batches_passes(self) -> bool:
        """Whether these replica workers batch a step's guided passes (the OOM ladder's `sequential_passes`)."""
        return any(w.info.get("batched_passes") for w in self.workers)

    @property
    def is_gang(self) -> bool:
        """Gang workers run planned tasks only (through the coordinator), never a whole `render`."""
        return self.placement.is_gang

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
            ray.get([w.actor.shutdown.remote() for w in placed])
        for w in self.workers:
            ray.kill(w.actor)
        self.workers = []
        deadline = time.monotonic() + SHUTDOWN_WAIT_S
        while ray.available_resources().get(resource, 0) < before + held and time.monotonic() < deadline:
            time.sleep(0.05)
