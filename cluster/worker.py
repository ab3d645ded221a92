"""The render worker: owns one GPU (or the CPU), loads the model set once, renders job after job.

`RenderWorker` is a plain class so it can be tested in-process; `cluster.executor` wraps it as a Ray
actor. Outputs are written MP4 first, then the sidecar, each atomically: a render is finished exactly
when its sidecar exists.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch

from cluster.metrics import KIND_TO_STAGE, WorkerMetrics, worker_labels
from cluster.output_files import disk_full_guard, write_json_atomic
from cluster.publish import (
    OutputTarget,
    Published,
    StagedOutput,
    collect,
    drop,
    offer,
    staged_render,
    staging_dir,
    staging_root,
    sweep_partials,
    sweep_staging,
)
from cluster.replies import RenderReply, TaskTrace, WorkerInfo, WorkerProgress
from cluster.requests import (
    TensorDigest,
    content_hashes,
    encoded_text,
    job_audio,
    job_control,
    job_loras,
    render_request,
)
from cluster.storage import UploadWait, localize, stock_inputs
from cluster.tasks import (
    AudioDecodeTask,
    AudioEncodeTask,
    DecodeTask,
    EncodeTask,
    Stage1Task,
    Stage2InitTask,
    Stage2Task,
    TaskRequest,
    UpsampleTask,
    task_fields,
    task_request,
)
from cluster.transport import pack
from cluster.worker_options import WorkerOptions
from jobs.fallback import reaches
from jobs.outputs import OutputPaths, output_paths, sidecar_document
from jobs.plan import describe_task
from jobs.spec import ValidJob, validate_for_model
from ltx2 import stages
from ltx2.checkpoint import CheckpointSet, cached_file_sha256, read_checkpoint_variant
from ltx2.configure import check_parallel_checkpoint, configure
from ltx2.media import Mp4Writer, probe_mp4
from ltx2.models import LOAD_COUNTER, load_resident_models
from ltx2.offload import StreamedBlocks
from ltx2.parallel.modes import ParallelMode
from ltx2.render import FramesCallback, NonFiniteOutputError, Renderer, RenderOutput

JOBS_PER_WORKER = 2
"""Whole renders a replica worker holds at once. The worker's model lock still runs the model work one job
at a time; the second job's forwards start while the first one's MP4 is muxed, hashed and uploaded, so
the GPU does not wait for host work between jobs."""


WRITER_NICENESS = 10
"""How much lower the CPU priority of the output writers is (MP4 mux, hashes, probe). They run while the next
job's forwards do, and libx264 starts a thread per core: at equal priority they starve the thread that
feeds the GPU, and the forwards slow down during a mux (bench/README.md). x264's threads inherit their creator's."""


def _lower_writer_priority() -> None:
    with contextlib.suppress(AttributeError, OSError):  # not on Linux, or not allowed: plain priority
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + WRITER_NICENESS)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


PACKED_RESULTS = frozenset({"decode"})
"""Task results sent as numpy buffers (`cluster.transport`): decoded pixels, ~100 MB a tile."""


def _non_finite(value: Any, where: str = "its output") -> str | None:
    """Where the first NaN/Inf in a task result is (tensors, tuples, dataclasses of tensors), or None."""
    if isinstance(value, torch.Tensor):
        return None if not value.is_floating_point() or bool(torch.isfinite(value).all()) else where
    if isinstance(value, tuple | list):
        for i, item in enumerate(value):
            found = _non_finite(item, f"{where}[{i}]")
            if found:
                return found
    elif is_dataclass(value):
        for f in fields(value):
            found = _non_finite(getattr(value, f.name), f.name)
            if found:
                return found
    return None


def _release_cached_memory() -> None:
    """After an out-of-memory: give the allocator's cached blocks back before the next task."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


FAULTS = "oom_over_tokens:N, oom_unless_streamed, runner_crash:JOB_ID"
"""The faults `LTX2_FARM_FAULTS` injects (comma-separated), for chaos tests: the first two in the workers
(`install_faults`), `runner_crash` in the campaign runner (`cluster.campaign_runner.runner_faults`)."""


def parse_faults(spec: str) -> list[tuple[str, str]]:
    """`LTX2_FARM_FAULTS` as (name, value) pairs; an unknown fault or a malformed value is refused, wherever it is
    read (every process of the farm sees the same variable)."""
    faults = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition(":")
        known = {"oom_over_tokens": value.isdigit(), "oom_unless_streamed": not value, "runner_crash": bool(value)}
        if not known.get(name, False):
            raise ValueError(f"LTX2_FARM_FAULTS: unknown fault {item!r} (known: {FAULTS})")
        faults.append((name, value))
    return faults


def install_faults(models: Any, spec: str, streaming: StreamedBlocks | None = None) -> None:
    """Fault injection for chaos tests (`LTX2_FARM_FAULTS`): `oom_over_tokens:N` makes every transformer call
    over N video tokens (over its whole batch: batched guided passes count each pass) raise the
    `torch.OutOfMemoryError` a GPU too small for it would; `oom_unless_streamed` makes every call raise it
    unless the blocks are streamed from host memory (a GPU that fits the weights or the activations, not
    both)."""
    limit = None
    unless_streamed = False
    for name, value in parse_faults(spec):
        if name == "oom_over_tokens":
            limit = int(value)
        elif name == "oom_unless_streamed" and streaming is not None:
            unless_streamed = True

    def injected(_module: Any, args: tuple, kwargs: dict) -> None:
        video = kwargs.get("video", args[0] if args else None)
        tokens = int(video.latent.shape[0] * video.latent.shape[1]) if video is not None else 0
        if limit is not None and tokens > limit:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected by LTX2_FARM_FAULTS): {tokens} video tokens, limit {limit}"
            )
        if unless_streamed and not streaming.active:
            raise torch.OutOfMemoryError("CUDA out of memory (injected by LTX2_FARM_FAULTS): blocks not streamed")

    if limit is not None or unless_streamed:
        models.transformer.register_forward_pre_hook(injected, with_kwargs=True)


class WorkerStopped(RuntimeError):
    """The worker was stopped (`RenderWorker.stop`) while it ran this call."""


def render_in_process(
    worker: RenderWorker, job: ValidJob, out_dir: Path | str, target: OutputTarget | None = None
) -> Published:
    """Render on a worker of this process and publish the output as an executor does (`ExecutorBase.deliver`):
    for tests and benchmarks that drive a `RenderWorker` directly."""
    target = target or OutputTarget()
    reply = worker.render(job, target)
    staged = worker.publish(job, target)
    published = collect(reply.document, staged, job, target, Path(out_dir), worker.store_get)
    if not staged.delivered:
        worker.release(target, reply.video)
    return published


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class _Rendered:
    """A render whose model work is done: what writing its outputs needs."""

    output: RenderOutput
    paths: OutputPaths
    started: float
    model_start: float
    model_end: float
    worker: WorkerInfo
    """The worker's info when the model work ended (the next job may change its LoRA set meanwhile)."""


class RenderWorker:
    """One model copy on one device, rendering jobs sequentially."""

    store_get: Callable[[Any], Any] = staticmethod(_same)
    store_put: Callable[[Any], Any] = staticmethod(_same)
    """How values reach this worker from elsewhere and leave it (prompt encodings, shipped inputs, output parts): as
    themselves for a worker driven directly; an in-process executor's handles are futures
    (`cluster.local_executor.LocalRenderWorker`), a Ray actor's are Ray's `get` and `put`
    (`cluster.ray_executor.RayRenderWorker`)."""

    def __init__(
        self,
        checkpoints: CheckpointSet,
        options: WorkerOptions | None = None,
        name: str = "worker",
        parallel: ParallelMode | None = None,
        warm_lora_originals: bool = True,
    ) -> None:
        """`options`: the pool's (`device` this worker's own); `parallel`: a gang member's part in its gang (None:
        a replica), whose process group is formed before the models load, so that they are configured once
        (`ltx2.configure`)."""
        from cluster.model_store import local_checkpoint_set

        options = options or WorkerOptions()
        checkpoints = local_checkpoint_set(checkpoints)  # a manifest: fetched into this node's cache, verified
        self.name = name
        self.device = options.device or default_device()
        if self.device.startswith("cuda"):
            torch.cuda.set_device(self.device)  # streams, pinned copies and syncs without a device use this one
        if parallel is not None:  # refused from the header, before a model loads
            check_parallel_checkpoint(
                checkpoints.checkpoint, read_checkpoint_variant(checkpoints.checkpoint).fp8, parallel
            )
        sharded = parallel is not None and parallel.sharded
        transformer_device = "cpu" if sharded else None  # shards move to the GPU; the whole never does
        self.models = load_resident_models(checkpoints, self.device, getattr(torch, options.dtype), transformer_device)
        self.configured = configure(self.models, options.speed(self.device), parallel)
        self.speed = self.configured.speed
        self.fp8_weights, self.streaming = self.configured.fp8_weights, self.configured.streaming
        self.renderer = Renderer(self.models)
        if warm_lora_originals and not sharded:  # a sharded model's shards are what fusion restores
            self.models.loras.warm_originals()
        self.metrics = WorkerMetrics()
        self.metrics.model_load_seconds.set(self.models.load_seconds)
        self.jobs_done = 0
        self._stopped = False
        self._encode_tasks = 0
        self._progress = WorkerProgress()
        self._upload_waits: dict[str, UploadWait] = {}  # staged MP4 name -> its upload's last retry
        self._lock = threading.Lock()  # guards the progress record (polled from another thread)
        self._busy = threading.Lock()  # one render or task at a time: the model (and its LoRA state) is shared
        self._writers = ThreadPoolExecutor(JOBS_PER_WORKER, "outputs", initializer=_lower_writer_priority)
        # Model-file digests (for sidecars) are computed in the background while the first job renders.
        install_faults(self.models, os.environ.get("LTX2_FARM_FAULTS", ""), self.streaming)
        sweep_partials(staging_root())  # half-written files of a worker that died on this node
        sweep_staging(staging_root())  # outputs staged here long ago and never published (their jobs rendered again)
        self._hashing = threading.Thread(target=self.model_hashes, name="model-hashes", daemon=True)
        self._hashing.start()

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            name=self.name,
            pid=os.getpid(),
            host=socket.gethostname(),
            node=self.node_id(),
            device=str(self.models.device),
            gpu=torch.cuda.get_device_name(self.models.device) if self.models.device.type == "cuda" else None,
            dtype=str(self.models.dtype).removeprefix("torch."),
            loads=LOAD_COUNTER["loads"],
            load_seconds=self.models.load_seconds,
            jobs_done=self.jobs_done,
            prompt_encodes=self.renderer.prompts.encodes + self._encode_tasks,
            num_layers=self.models.num_layers,
            audio_sample_rate=int(self.models.vocoder.output_sampling_rate),
            lora_set=tuple((lora.path, lora.strength) for lora in self.models.loras.job_set),
            lora_set_changes=self.models.loras.set_changes,
            compile=self.speed.compile,
            fp8_attention=self.speed.fp8_attention,
            fp8=self.speed.fp8,
            fp8_all_blocks=self.speed.fp8_all_blocks,
            fa4_attention=self.speed.fa4_attention,
            batched_passes=self.speed.batched_passes,
            batched_passes_max_tokens=getattr(self.models.pass_runner, "max_video_tokens", None),
        )

    def progress(self) -> WorkerProgress:
        with self._lock:
            return self._progress

    def node_id(self) -> str | None:
        """The cluster node this worker runs on (None outside a cluster): shows where a campaign's work landed."""
        return None

    def stop(self) -> None:
        """End the model work under way at its next step (`WorkerStopped`), and any later call's: for a worker that
        cannot be killed (one of this process, `cluster.local_executor`)."""
        self._stopped = True

    def _on_step(self, stage: str, step: int, total: int, seconds: float = 0.0) -> None:
        if self._stopped:
            raise WorkerStopped(f"worker {self.name} was stopped")
        with self._lock:
            self._progress = self._progress.stepped(stage, step, total, seconds)
        if seconds:
            self.metrics.step_seconds.labels(stage).observe(seconds)

    def metrics_text(self) -> tuple[dict[str, str], str]:
        """This worker's metrics in the Prometheus text format, with its bounded identity labels."""
        self.metrics.sample_vram(self.models.device)
        self.metrics.count_lora_set_changes(self.models.loras.set_changes)
        return worker_labels(self.models.device, self.name), self.metrics.text()

    def _record(self, stage: str, seconds: float, outcome: str, on_device: bool = True) -> None:
        self.metrics.task_seconds.labels(stage).observe(seconds)
        self.metrics.outcomes.labels(stage, outcome).inc()
        if on_device:  # the mux is host work, overlapping the next job's device time
            self.metrics.gpu_seconds.inc(seconds)

    def model_hashes(self) -> dict[str, dict[str, Any]]:
        """SHA-256 and size of every model file, hashed once per machine (memo on disk)."""
        if threading.current_thread() is not self._hashing:
            self._hashing.join()
        return {
            role: {"path": str(path), "bytes": path.stat().st_size, "sha256": cached_file_sha256(path)}
            for role, path in self.models.paths.files().items()
        }

    def render(
        self,
        job: ValidJob,
        target: OutputTarget | None = None,
        encoded: dict[str, Any] | None = None,
        inputs: dict[str, tuple[str, Any]] | None = None,
    ) -> RenderReply:
        """Render `job` into this worker's staging folder (then `publish` sends it on, `cluster.publish`).

        `encoded` maps prompt texts to handles of encodings made by an `encode` task (each fetched through
        `store_get`), so a campaign runs Gemma once per distinct prompt, not once per job or per worker. `inputs`:
        the job's local input files shipped from the node that submitted it (`RayExecutor.ship`), written into this
        node's cache.

        Only the model work holds the model. The job's writer (a pool of lower CPU priority,
        `WRITER_NICENESS`) encodes the MP4 as the tiled VAE decode yields frames, and after the model is let
        go adds the audio, closes the file, probes it and writes the sidecar, while a second `render` call (the
        runner keeps `JOBS_PER_WORKER` in flight) already runs its forwards. So neither the GPU waits for the
        host between jobs, nor a lone job for a whole mux after its decode.
        """
        paths = output_paths(job, staging_dir(target or OutputTarget(), self.name))
        earlier = staged_render(paths)
        if earlier is not None and earlier.get("worker", {}).get("pid") == os.getpid():
            # this process rendered this very job and its publishing failed (storage down): publish it again
            return RenderReply(earlier, paths.video.name)
        stock_inputs(inputs, self.store_get)
        for text, handle in (encoded or {}).items():
            value = self.store_get(handle)
            self.renderer.prompts.put(text, value.video, value.audio)
        handoff: queue.SimpleQueue[Any] = queue.SimpleQueue()  # frame runs, then the _Rendered or the error
        written = self._writers.submit(self._write_outputs, job, paths, handoff)
        try:
            with self._busy:
                rendered = self._render_frames(job, paths, handoff.put)
        except BaseException as error:
            handoff.put(error)  # the writer drops its partial file
            with contextlib.suppress(BaseException):
                written.result()
            raise
        handoff.put(rendered)
        try:
            return RenderReply(written.result(), paths.video.name)
        finally:
            with self._lock:  # idle, the job's stages kept for a last poll (`ExecutorBase.render`)
                if self._progress.job == paths.video.name and self._progress.stage == "mux":
                    self._progress = self._progress.stepped("idle", 0, 0)

    def publish(self, job: ValidJob, target: OutputTarget | None = None) -> StagedOutput:
        """Publish a rendered job's staged files (`cluster.publish.offer`): upload them from here to an S3
        destination, or offer their parts to the head. A call of its own, after `render` returned, so the
        runner can give this worker its next job while the last output uploads. While an upload waits out an
        outage, `upload_wait` says what it waits for (the head polls it)."""
        target = target or OutputTarget()
        paths = output_paths(job, staging_dir(target, self.name))

        def waiting(wait: UploadWait) -> None:
            with self._lock:
                self._upload_waits[paths.video.name] = wait

        try:
            return offer(paths, job, target, put=self.store_put, on_upload=self.metrics.count_upload, on_wait=waiting)
        finally:
            with self._lock:
                self._upload_waits.pop(paths.video.name, None)

    def upload_wait(self, video: str) -> UploadWait | None:
        """The last retry of the upload of the staged output `video` (its MP4's name), while it waits; else None."""
        with self._lock:
            return self._upload_waits.get(video)

    def release(self, target: OutputTarget, video: str) -> None:
        """Drop a staged output the head has received (`cluster.publish.receive`)."""
        folder = staging_dir(target, self.name)
        drop(OutputPaths(folder / video, (folder / video).with_suffix(".json")))

    def _render_frames(self, job: ValidJob, paths: OutputPaths, on_frames: FramesCallback) -> _Rendered:
        """The model part of a render."""
        validate_for_model(
            job,
            self.models.num_layers,
            heads=self.models.num_heads,
            distilled_checkpoint=self.models.distilled_checkpoint,
        )
        control_lora = job_control(job).get("control_lora")
        self.models.loras.check(localize(job_loras(job) + ((control_lora,) if control_lora else ())))  # pre-compute
        with self._lock:
            self._progress = WorkerProgress("starting", job=paths.video.name)
        started, model_start = time.perf_counter(), time.time()
        request = localize(render_request(job, self.models.num_layers))  # s3:// inputs fetched to this node
        if job.fallback is not None:
            self.metrics.oom_fallbacks.labels(job.fallback).inc()
        try:
            with self.configured.running(job.fallback, text_encoder=False):  # the renderer moves Gemma after encoding
                output = self.renderer.render(
                    request,
                    on_step=self._on_step,
                    offload_text_encoder=reaches(job.fallback, "offload_text_encoder"),
                    on_frames=on_frames,
                )
        except torch.OutOfMemoryError:
            self._record("render", time.perf_counter() - started, "oom")
            _release_cached_memory()
            raise
        self._on_step("mux", 0, 0)
        for stage, seconds in output.timings.items():
            self._record(stage, seconds, "ok")
        return _Rendered(output, paths, started, model_start, time.time(), self.info())

    def _write_outputs(self, job: ValidJob, paths: OutputPaths, handoff: queue.SimpleQueue[Any]) -> dict[str, Any]:
        """The MP4, encoded run by run as the model thread hands frames over, then (once it hands over the
        finished render) the audio and the sidecar, each file atomically. An error handed over instead, or
        one here, drops the partial MP4: a render is written whole or not at all."""
        source = localize(job_audio(job))
        rate = None if source is not None else int(self.models.vocoder.output_sampling_rate)
        writer: Mp4Writer | None = None
        digest = TensorDigest()
        hashing = ThreadPoolExecutor(1, "frame-hashes")  # beside the encode (hashlib releases the GIL), in order
        hashed = []
        try:
            while isinstance(item := handoff.get(), torch.Tensor):
                hashed.append(hashing.submit(digest.update, item))
                with disk_full_guard(paths):
                    if writer is None:
                        _, height, width, _ = item.shape
                        writer = Mp4Writer(paths.video, job.spec.frame_rate, width, height, rate, source_audio=source)
                    writer.add_frames(item)
            if isinstance(item, BaseException):
                raise item
            rendered: _Rendered = item
            output = rendered.output
            written = writer.frames_written if writer is not None else 0
            if written != output.video.shape[0]:
                raise RuntimeError(f"the MP4 writer got {written} of {output.video.shape[0]} decoded frames")
            with disk_full_guard(paths):
                writer.close(None if source is not None else output.audio)
            for run in hashed:
                run.result()
        except BaseException:
            hashing.shutdown(wait=True)
            if writer is not None:
                writer.abort()
            raise
        # what the job waited for after its model work: the frames the encoder had left, the audio, the close
        mux_end = time.time()
        timings = dict(output.timings, mux=max(0.0, mux_end - rendered.model_end))
        timeline = {"model_start": rendered.model_start, "model_end": rendered.model_end, "mux_end": mux_end}
        self._record("mux", timings["mux"], "ok", on_device=False)
        timings["total"] = time.perf_counter() - rendered.started
        with hashing:  # the file's digest and the probe both read it back: side by side
            file_sha256 = hashing.submit(cached_file_sha256, paths.video)
            media = asdict(probe_mp4(paths.video))
        document = sidecar_document(
            job,
            models=self.model_hashes(),
            timings=timings,
            media=media,
            output={"video": paths.video.name, "bytes": paths.video.stat().st_size, "sha256": file_sha256.result()},
            content=content_hashes(job, digest.hexdigest(), output.audio),
            worker=rendered.worker.document(),
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            timeline=timeline,
        )
        with disk_full_guard(paths):
            write_json_atomic(paths.sidecar, document)
        with self._lock:
            self.jobs_done += 1
            document["worker"]["jobs_done"] = self.jobs_done
        return document

    # --- planned tasks (cluster.coordinator) -------------------------------------------------------------

    def task(
        self,
        kind: str,
        label: str,
        fallback: str | None = None,
        inputs: dict[str, tuple[str, Any]] | None = None,
        parallelism: str | None = None,
        **values: Any,
    ) -> tuple[Any, TaskTrace]:
        """`run_task` of the request of `kind` made from `values` (a request as it crosses to a Ray actor,
        `cluster.tasks.task_fields`); returns (result, trace): call with `num_returns=2`. `inputs`: as `render`'s."""
        stock_inputs(inputs, self.store_get)
        return self.run_task(label, task_request(kind, values), fallback, parallelism)

    def run_task(
        self, label: str, request: TaskRequest, fallback: str | None = None, parallelism: str | None = None
    ) -> tuple[Any, TaskTrace]:
        """Run one task of a job plan; `fallback` is the job's OOM-ladder rung (counted once per job, at
        stage2_init); `parallelism`: how a gang member's ranks share it ('sequence', 'guidance'; None: alone)."""
        request = type(request)(**localize(task_fields(request)))  # s3:// inputs fetched to this node, verified
        with self._busy:
            if fallback is not None and request.kind == "stage2_init":
                self.metrics.oom_fallbacks.labels(fallback).inc()
            with self.configured.running(fallback, parallelism, text_encoder=request.kind != "encode"):
                return self._run_task(label, request)

    def _run_task(self, label: str, request: TaskRequest) -> tuple[Any, TaskTrace]:
        if self.models.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.models.device)
        start = time.time()
        stage = KIND_TO_STAGE.get(request.kind, request.kind)
        try:
            result = TASK_RUNNERS[type(request)](self, request)
            bad = _non_finite(result)
            if bad is not None:
                raise NonFiniteOutputError(f"{describe_task(label)} produced NaN or Inf in {bad} (worker {self.name})")
        except torch.OutOfMemoryError:
            self._record(stage, time.time() - start, "oom")
            _release_cached_memory()
            raise
        except Exception:
            self._record(stage, time.time() - start, "error")
            raise
        if request.kind in PACKED_RESULTS:
            result = pack(result)
        end = time.time()
        self._record(stage, end - start, "ok")
        peak = torch.cuda.max_memory_allocated(self.models.device) if self.models.device.type == "cuda" else None
        trace = TaskTrace(label, request.kind, self.name, os.getpid(), self.device, start, end, end - start, peak)
        return result, trace

    def _encode(self, task: EncodeTask) -> stages.Contexts:
        self._encode_tasks += 1
        return stages.encode_prompt(self.models, encoded_text(task.text))

    def _stage1(self, task: Stage1Task) -> stages.ChunkResult:
        previous, overlap_video, overlap_audio = task.previous, task.overlap_video, task.overlap_audio
        tail_video = previous.video[:, :, -overlap_video:] if previous is not None and overlap_video else None
        tail_audio = previous.audio[:, :, -overlap_audio:] if previous is not None and overlap_audio else None
        return stages.stage1_chunk(
            self.models,
            task.request,
            task.positive,
            task.negative,
            tail_video,
            tail_audio,
            on_step=self._on_step,
            track=task.track,
        )

    def _audio_encode(self, task: AudioEncodeTask) -> torch.Tensor:
        return stages.encode_track(self.models, task.path, task.start, task.num_frames, task.fps)

    def _upsample(self, task: UpsampleTask) -> torch.Tensor:
        return stages.upsample(self.models, task.video)

    def _stage2_init(self, task: Stage2InitTask) -> stages.Stage2State:
        return stages.stage2_init(self.models, **task_fields(task))

    def _stage2(self, task: Stage2Task) -> tuple[torch.Tensor, torch.Tensor]:
        return stages.stage2_tile_denoise(self.models, **task_fields(task))

    def _decode(self, task: DecodeTask) -> torch.Tensor:
        return stages.decode_video_tile(self.models, task.latent)

    def _audio_decode(self, task: AudioDecodeTask) -> tuple[torch.Tensor, int]:
        return stages.decode_audio(self.models, task.audio)


TASK_RUNNERS: dict[type, Callable[[RenderWorker, Any], Any]] = {
    EncodeTask: RenderWorker._encode,
    AudioEncodeTask: RenderWorker._audio_encode,
    Stage1Task: RenderWorker._stage1,
    UpsampleTask: RenderWorker._upsample,
    Stage2InitTask: RenderWorker._stage2_init,
    Stage2Task: RenderWorker._stage2,
    DecodeTask: RenderWorker._decode,
    AudioDecodeTask: RenderWorker._audio_decode,
}
"""Each task request's type -> the worker method that runs it."""
