"""The farm's work as a caller asks for it: one job rendered and published (`render`), the campaign queue run
(`run_campaigns`). The command line parses flags into the requests below, passes callbacks for what a person
watching is told, and prints what comes back; nothing here reads flags or prints.

Every check a request can fail (job fields, input files, destination, credentials, model set, LoRAs, the plan,
placement) runs before any cluster starts or model loads. Errors are the farm's own (`UsageError`,
`JobValidationError`, `CheckpointError`, `PlacementError`, ...): their message says what to fix. Heavy stacks
(torch, Ray, boto3) are imported only where work needs them, so bad input is refused at once.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cluster.replies import WorkerProgress
from jobs.spec import ValidJob, validate_for_model, validate_job
from jobs.text import printable


class UsageError(Exception):
    """Bad input that is not a job-field problem (missing file, unreadable YAML, partial model flags)."""


class StartWorkers(Protocol):
    """Starts the pool of workers (an `Executor` of `backend`: "local" or "ray") holding `checkpoints` in
    `placement`'s shape; the caller decides how many, on which device, with which speed options."""

    def __call__(self, checkpoints: Any, placement: Any, backend: str) -> Any: ...


def _nothing(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class JobSource:
    """A job as given: its fields (a file's or the demo's, with overrides on top), where they came from (as
    messages name it: a file, "command line"), the folder its relative input paths are read from, and whether
    invalid sizes and frame counts move to the nearest valid value."""

    fields: Mapping[str, Any]
    origin: str
    base: Path
    snap: bool = False


@dataclass(frozen=True)
class OutputRequest:
    """Where a render's output goes: `folder` on this machine, and `destination` too if given: s3://bucket/prefix
    or a folder, under `key_template` (None: `jobs.keys.DEFAULT_KEY_TEMPLATE`), or the MP4 itself when it ends in
    `.mp4` (no key template then); reached with these S3 options."""

    folder: Path
    destination: str | None = None
    key_template: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    profile: str | None = None


@dataclass(frozen=True)
class RenderRequest:
    """One job to render: `workers` model copies (or gangs) on `executor` ("auto", "local" or "ray"), joining the
    Ray cluster at `address` (else RAY_ADDRESS, else an embedded one), on `device` (None: a GPU if any)."""

    job: JobSource
    output: OutputRequest
    workers: int = 1
    executor: str = "auto"
    address: str | None = None
    device: str | None = None


@dataclass(frozen=True)
class RenderWatch:
    """What a render tells whoever waits on it; each is optional. `note`: a line (sizes snapped, workers
    starting, the plan's shape). `started`: the workers are up, steps follow. `progress`: a step
    (`cluster.replies.WorkerProgress`). `upload_wait`: an upload waits out an outage (`cluster.storage.UploadWait`).
    `stopped`: rendered and published, failed or interrupted; called once the workers are up, before they stop."""

    note: Callable[[str], None] = _nothing
    started: Callable[[], None] = _nothing
    progress: Callable[[WorkerProgress], None] = _nothing
    upload_wait: Callable[[Any], None] = _nothing
    stopped: Callable[[], None] = _nothing


@dataclass(frozen=True)
class CampaignRunRequest:
    """The campaign queue run on `workers` workers (or gangs of `gpus` GPUs in `placement` mode), outputs under
    `out` (a folder per campaign) and s3:// ones through `endpoint_url`; until nothing can start, or `forever`."""

    out: Path
    workers: int = 1
    placement: str = "replica"
    gpus: int | None = None
    address: str | None = None
    endpoint_url: str | None = None
    addressing_style: str = "auto"
    forever: bool = False


@dataclass(frozen=True)
class CampaignWatch:
    """What a campaign run tells whoever waits on it. `started(pending)`: the workers are up, `pending` jobs of
    active campaigns wait or run. `progress(stats)`: the running counts after each finished job. `upload_wait`:
    an upload waits out an outage (None: logged as a warning). `stopped`: the queue is left, before the workers
    stop."""

    started: Callable[[int], None] = _nothing
    progress: Callable[[dict[str, int]], None] = _nothing
    upload_wait: Callable[[Any], None] | None = None
    stopped: Callable[[], None] = _nothing


def describe_adjustments(job: ValidJob) -> str:
    """A line per value `snap` moved, each ending in a newline ("" when none moved)."""
    return "".join(f"note: {a.field}: {a.value!r} {a.problem}\n" for a in job.adjustments)


def resolve_job_inputs(job: ValidJob, given: JobSource) -> ValidJob:
    """Conditioning files checked (allowed roots, readable, decodable) and pinned by content."""
    from cluster.inputs import input_roots, resolve_inputs

    return resolve_inputs(job, input_roots(given.base), given.base, given.origin)


def render(
    request: RenderRequest,
    models: Callable[[], Any],
    start_workers: StartWorkers,
    metrics: Any = None,
    watch: RenderWatch = RenderWatch(),
):  # -> cluster.publish.Published
    """Render one job and publish its output. `models` gives the checkpoint set or model-set manifest, asked
    for once the job, its inputs and its output are found valid; `metrics` (a `MetricsServer`) gets the pool.
    Interrupted (KeyboardInterrupt), the workers are stopped and a KeyboardInterrupt whose message says what
    was kept, and where, is raised."""
    given = request.job
    job = validate_job(dict(given.fields), snap=given.snap, source=given.origin)  # before any model or cluster
    job = resolve_job_inputs(job, given)
    if job.adjustments:
        watch.note(describe_adjustments(job).rstrip("\n"))
    check_output(request.output, job)
    checkpoints = models()
    from cluster.model_store import distilled_checkpoint, validate_models

    config = validate_models(checkpoints)  # a manifest's recorded config: the head needs no model file
    transformer = config["transformer"]
    num_layers = transformer.get("num_layers", 48)
    heads = transformer.get("num_attention_heads", 32)
    validate_for_model(job, num_layers, given.origin, heads, distilled_checkpoint(checkpoints))
    from cluster.requests import check_job_loras

    check_job_loras(job, config)  # its LoRAs fit this model: refused here, not on a worker
    from jobs.plan import plan_job

    plan = plan_job(job)  # refuses a job whose prompts do not fit its chunks, before any worker starts
    if request.workers < 1:
        raise UsageError(f"--workers {request.workers}: give at least 1")
    backend = render_backend(request.executor, request.address, job)
    if backend == "ray":
        start_cluster(request.address, request.workers)
    placement = resolve_placement(job, transformer, request.device, request.workers, backend)
    if placement.is_gang and backend == "local" and request.executor == "auto":
        backend = "ray"  # `auto` placement chose a gang: its members are Ray actors
        start_cluster(request.address, request.workers)
    watch.note("starting worker (loading models)…")
    pool = start_workers(checkpoints, placement, backend)
    if metrics is not None:
        metrics.attach(pool)
    watch.started()
    target = output_target(request.output)
    from cluster.publish import HEAD, staging_dir
    from jobs.outputs import output_paths

    holder = pool.workers[0].info if single_pass(plan, pool) else None  # None: the head stages the output
    staged = output_paths(job, staging_dir(target, holder.name if holder else HEAD))
    interrupted = False
    try:
        if not single_pass(plan, pool):
            watch.note(
                f"{len(plan.chunks)} chunk(s), {len(plan.tiles)} stage-2 tile(s), {request.workers} worker(s)"
                + (f", each a {placement.mode} gang of {placement.gpus}" if pool.is_gang else "")
            )
        result = render_and_publish(
            pool, plan, target, request.output.folder, metrics, watch.progress, watch.upload_wait
        )
    except KeyboardInterrupt:
        interrupted = True
        from cluster.storage import stop_retrying

        stop_retrying()  # an upload of this process waiting out an outage would hold the exit for an hour
    finally:
        watch.stopped()
        pool.shutdown()
    if interrupted:  # once the workers are stopped, nothing more is written: say what is left, and where
        folder = request.output.folder
        raise KeyboardInterrupt(_left_by_interrupt(job, target, staged, holder.host if holder else None, folder))
    return result


def check_output(output: OutputRequest, job: ValidJob) -> None:
    """A bad destination, key template, keys too long for this job, missing credentials, or an MP4 the destination
    names that holds another render: refused before any compute."""
    if not output.destination:
        return
    from jobs.keys import check_output as check_keys

    destination = check_keys(output.destination, output.key_template, job)
    if destination.scheme == "s3":
        from cluster.storage import StorageOptions, credentials_problem

        problem = credentials_problem(StorageOptions(profile=output.profile))
        if problem:
            raise UsageError(f"--output {printable(output.destination)}: {problem}")
    if destination.file:
        from cluster.publish import taken_by_another

        problem = taken_by_another(job, output_target(output))
        if problem:
            raise UsageError(f"--output {printable(output.destination)} {problem}")


def output_target(output: OutputRequest):  # -> cluster.publish.OutputTarget
    """Where a render's output goes, as the publishing path takes it."""
    from cluster.publish import OutputTarget
    from cluster.storage import StorageOptions
    from jobs.keys import DEFAULT_KEY_TEMPLATE, render_destination

    return OutputTarget(
        render_destination(output.destination) if output.destination else None,
        StorageOptions(
            endpoint_url=output.endpoint_url,
            region=output.region,
            addressing_style=output.addressing_style,
            profile=output.profile,
        ),
        DEFAULT_KEY_TEMPLATE if output.key_template is None else output.key_template,
    )


def presigned_links(output: OutputRequest, objects: Any) -> list[str]:
    """A time-limited link to each uploaded object, in order."""
    from cluster.storage import Uploader

    target = output_target(output)
    link = Uploader(target.destination, target.storage).presigned_url
    return [link(o.key) for o in objects]


def single_pass(plan: Any, pool: Any) -> bool:
    """Whether a job renders in one pass on one worker (the fast path) rather than through the coordinator."""
    return plan.trivial and len(pool.workers) == 1 and not pool.is_gang


def render_and_publish(
    pool: Any,
    plan: Any,
    target: Any,
    out: Path,
    metrics: Any = None,
    on_progress: Any = None,
    on_upload_wait: Any = None,
    clock: Callable[[], float] = time.time,
) -> Any:
    """Render one planned job on the pool and publish its output. With `metrics` (a `MetricsServer`), the
    job's end-to-end latency (from here until its output is published, upload included, read from `clock`) and
    its seconds of video are counted once published, whichever path rendered it. `on_progress` gets the render's
    steps (`cluster.replies.WorkerProgress`), `on_upload_wait` each retry of an upload waiting out an outage."""
    job = plan.job
    started = clock()
    if single_pass(plan, pool):
        result = pool.render(job, out, on_progress=on_progress, target=target, on_upload_wait=on_upload_wait)
    else:
        from cluster.coordinator import Coordinator
        from cluster.kept_results import KeptResults
        from cluster.publish import HEAD, deliver_held, staging_dir

        # a render stopped mid-way and started again resumes from the results kept on this node
        coordinator = Coordinator(pool, metrics.farm if metrics else None, kept=KeptResults())
        [sidecar] = coordinator.run([plan], staging_dir(target, HEAD))
        on_upload = metrics.uploads.count if metrics is not None else None
        result = deliver_held(sidecar, job, target, out, on_upload=on_upload, on_wait=on_upload_wait)
        coordinator.release(job)
    if metrics is not None:
        metrics.farm.published(clock() - started, job.num_frames / job.spec.frame_rate)
    return result


def _left_by_interrupt(job: ValidJob, target: Any, staged: Any, host: str | None, out: Path) -> str:
    """What a render interrupted by Ctrl-C left, and where (`host`: the node it was staged on; None: this one)."""
    from jobs.outputs import output_paths

    final = output_paths(job, out)
    if final.sidecar.is_file():
        return f"the render was written to {final.video} before it stopped"
    where = f"{target.destination} (not uploaded)" if target.destination is not None else f"{out} (not there yet)"
    if host and host != socket.gethostname():
        return f"a render finished before the stop stays on {host} at {staged.video}, on its way to {where}"
    if staged.sidecar.is_file():
        return (
            f"the render stays at {staged.video} with its sidecar, on its way to {where}; copy it from there "
            "(a staged output is swept after a day)"
        )
    return "nothing was rendered yet, nothing was kept"


def render_backend(executor: str, address: str | None, job: ValidJob) -> str:
    """The executor asked for, `auto` resolved: Ray to join a cluster (`address`, RAY_ADDRESS) or to run a gang
    the job asks for, else this process."""
    if executor != "auto":
        if executor == "local" and (address or job.spec.placement.mode not in ("auto", "replica")):
            why = "--address" if address else f"placement {job.spec.placement.mode}"
            raise UsageError(f"--executor local: {why} needs Ray workers; drop --executor or pass --executor ray")
        return executor
    if address or os.environ.get("RAY_ADDRESS"):
        return "ray"
    return "local" if job.spec.placement.mode in ("auto", "replica") else "ray"


def start_cluster(address: str | None, workers: int) -> None:
    """Join `address` (or RAY_ADDRESS), else start an embedded Ray cluster on this machine."""
    from cluster.ray_executor import start_ray

    # The embedded cluster gives CPU workers one logical CPU each, even beyond the machine's cores.
    start_ray(address, num_cpus=None if address else max(os.cpu_count() or 1, workers))


def resolve_placement(
    job: ValidJob, transformer_config: dict[str, Any], device: str | None, workers: int = 1, backend: str = "ray"
):  # -> Placement
    """The job's placement with `auto` resolved against the free GPUs (of the Ray cluster, or of this machine for
    the in-process executor) and their memory."""
    from cluster.requests import job_guidance
    from jobs.placement import choose_placement, guided_pass_count, stage2_video_tokens

    spec = job.spec
    free_gpus = 0 if device == "cpu" else free_gpu_count(backend)
    memory = None
    try:
        import torch

        if free_gpus and torch.cuda.is_available():
            memory = torch.cuda.get_device_properties(0).total_memory
    except RuntimeError:
        memory = None
    guidance = job_guidance(job, transformer_config.get("num_layers", 48))
    return choose_placement(
        spec.placement,
        video_tokens=stage2_video_tokens(spec.height, spec.width, job.num_frames),
        guided_passes=guided_pass_count(spec.recipe, guidance),
        gpu_memory_bytes=memory,
        free_gpus=free_gpus,
        queued_jobs=workers,
    )


def free_gpu_count(backend: str) -> int:
    """GPUs no worker holds: the Ray cluster's, or this machine's for the in-process executor."""
    if backend == "ray":
        from cluster.ray_executor import free_gpus

        return free_gpus()
    import torch

    return torch.cuda.device_count()


def run_campaigns(
    store: Any,
    request: CampaignRunRequest,
    models: Callable[[], Any],
    start_workers: StartWorkers,
    metrics: Any = None,
    watch: CampaignWatch = CampaignWatch(),
) -> dict[str, int]:
    """Run the queue of `store` (a `cluster.campaign_store.Store`) on a Ray pool until nothing can start (or
    forever): the runner's counts when it ends. Interrupted (KeyboardInterrupt), the running jobs go back to the
    queue and a KeyboardInterrupt whose message says so is raised."""
    from cluster.storage import StorageOptions

    storage = StorageOptions(endpoint_url=request.endpoint_url, addressing_style=request.addressing_style)
    check_campaign_credentials(store, storage)  # before Ray and the models
    from cluster.campaign_runner import CampaignRunner
    from cluster.kept_results import KeptResults
    from cluster.model_store import distilled_checkpoint
    from cluster.publish import staging_root

    checkpoints = models()
    # a long-running coordinator: its workers are processes of their own, replaced if lost
    start_cluster(request.address, request.workers)
    from jobs.placement import Placement, PlacementSpec, placement_problems

    shape = PlacementSpec(mode=request.placement, gpus=request.gpus)
    problems = placement_problems(shape)
    if problems:
        raise UsageError("; ".join(f"--gpus {value}: {why}" for _field, value, why in problems))
    placement = Placement(shape.mode, shape.resolved_gpus())
    pool = start_workers(checkpoints, placement, "ray")
    interrupted = False
    try:
        if metrics is not None:
            metrics.attach(pool)
        runner = CampaignRunner(
            store,
            pool,
            request.out,
            storage,
            metrics=metrics.farm if metrics is not None else None,
            uploads=metrics.uploads if metrics is not None else None,
            on_upload_wait=watch.upload_wait,
            distilled_checkpoint=distilled_checkpoint(checkpoints),
            kept=KeptResults(),
        )
        watch.started(sum(c.queued + c.running for c in store.campaign_states() if c.state == "active"))
        try:
            stats = runner.run(until_idle=not request.forever, on_progress=watch.progress)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            watch.stopped()
    finally:
        pool.shutdown()
    if interrupted:  # the runner requeued what it was running; the store holds everything else
        raise KeyboardInterrupt(
            f"{runner.stopped_jobs} running job(s) went back to the queue and render at the next `campaign run` (an "
            "output already published is not rendered again); outputs on their way out stay in the staging folder "
            f"of the node that rendered them ({staging_root()} on this one)"
        )
    return stats


def check_campaign_credentials(store: Any, storage: Any) -> None:
    """Refuse to start when a campaign with work left uploads to s3:// and no credentials are found here (the head
    uploads what it muxes; on a cluster every node needs them): before the models load, not after a render."""
    from cluster.storage import credentials_problem

    for c in store.campaign_states():
        output = store.campaign_spec(c.name).output
        if c.state == "active" and c.queued + c.running and output and output.startswith("s3://"):
            problem = credentials_problem(storage)
            if problem:
                raise UsageError(f"campaign {c.name!r} uploads to {output}: {problem}")
            return
