"""The coordinator: runs job plans on the workers of an executor (`cluster.executor`).

Tasks whose dependencies are done go to idle workers; a job uses every idle worker and many jobs share
the pool. Latents travel between workers as the executor's handles; the coordinator itself only does the cheap
steps (stitching chunks, blending tile predictions at every stage-2 step, accumulating decoded tiles
and feeding frames to the muxer). Every remote task returns a trace (worker, start, end, peak VRAM) that
ends up in the job's sidecar.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from cluster.executor import Executor
from cluster.kept_results import KeptResultCorrupt, KeptResults
from cluster.metrics import FarmMetrics
from cluster.output_files import disk_full_guard, write_json_atomic
from cluster.prompt_refs import PromptRefs
from cluster.replies import TaskTrace
from cluster.requests import (
    TensorDigest,
    content_hashes,
    encoded_text,
    job_audio,
    job_control,
    job_guidance,
    job_images,
    job_loras,
)
from cluster.storage import input_ref, localize
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
)
from cluster.transport import unpack
from jobs.outputs import output_paths, sidecar_document
from jobs.plan import JobPlan, Task, describe_task, time_origin_seconds
from jobs.resume import KEPT_KINDS, kept_job_key, kept_task_ids, resume_point, superseded
from jobs.spec import ValidJob
from ltx2 import stages
from ltx2.blending import accumulate_group, anchor_statistics, blend_tiles, crossfade_into, official_decode_tiles
from ltx2.checkpoint import cached_file_sha256
from ltx2.media import Mp4Writer, probe_mp4
from ltx2.render import NonFiniteOutputError, tiling_config


@dataclass
class JobRun:
    """The live state of one job's plan."""

    plan: JobPlan
    out_dir: Path
    num_layers: int
    done: dict[str, Any] = field(default_factory=dict)  # task id -> value or its handle
    running: set[str] = field(default_factory=set)
    traces: list[TaskTrace] = field(default_factory=list)
    decode_queue: list[tuple[int, str, Any]] = field(default_factory=list)  # (group, label, latent ref)
    started: float = field(default_factory=time.time)
    writer: Mp4Writer | None = None
    decode_state: dict[str, Any] | None = None
    encoder: ThreadPoolExecutor | None = None
    """Blends decoded groups and encodes their frames, in order, off the scheduling thread."""
    encoding: list[Future[None]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    resumed: tuple[str, ...] = ()
    """Tasks whose kept results this run read back instead of running them."""

    @property
    def job_hash(self) -> str:
        """Where the job's kept results go (`jobs.resume.kept_job_key`)."""
        return kept_job_key(self.plan.job)

    @property
    def finished(self) -> bool:
        return self.result is not None

    def ready(self) -> Iterator[Task]:
        for task in self.plan.tasks:
            if task.id not in self.done and task.id not in self.running and all(d in self.done for d in task.deps):
                yield task


log = logging.getLogger(__name__)

DECODE_GROUPS_AHEAD = 1

QUEUED_DECODES_PER_WORKER = 1
"""Decode tiles sent to a worker beyond the task it runs: it starts the next tile as soon as the last one's
compute ends, while that tile's pixels (~100 MB) go into the object store and back to the coordinator. With
one task per worker the GPU would idle between tiles for a large share of a big job's decode (bench/README.md,
"Numbers behind the code")."""

ENCODE_POLL_S = 0.05
"""How often the scheduler looks at the encoder threads while it waits for the workers' tasks."""

ENCODE_GROUPS_BEHIND = 1
"""Decoded groups the encoder thread may hold beyond the one it works on; past that the scheduler waits, and
so does the decode (its horizon stays put): decoded pixels never pile up in host memory either."""


class Coordinator:
    """Runs plans on an `Executor`'s workers, several jobs at once."""

    def __init__(
        self,
        executor: Executor,
        metrics: FarmMetrics | None = None,
        prompts: PromptRefs | None = None,
        kept: KeptResults | None = None,
    ) -> None:
        """`kept`: where finished tasks' results are kept (`jobs.resume` says which) and a job started again
        resumes from; None keeps nothing."""
        self.executor = executor
        self.metrics = metrics
        self.kept = kept
        self._keeper = ThreadPoolExecutor(1, thread_name_prefix="keep")
        """Writes (and uploads) kept results in order, off the scheduling thread: a blended stage-2 state of a long
        job is hundreds of MB, and the next step's tiles need not wait for it to be on disk."""
        self.prompts = prompts if prompts is not None else PromptRefs()
        """Prompt text -> handle of its encoding, shared with the campaign runner: encoded once farm-wide."""
        info = executor.workers[0].info
        self.num_layers, self.audio_sample_rate = info.num_layers, info.audio_sample_rate

    def run(self, plans: list[JobPlan], out_dir: str | Path) -> list[dict[str, Any]]:
        runs = [JobRun(p, Path(out_dir), self.num_layers) for p in plans]
        for run in runs:
            self._resume(run)
        with contextlib.ExitStack() as guards:  # a full output disk: a clear error, no output files left
            for run in runs:
                guards.enter_context(disk_full_guard(output_paths(run.plan.job, run.out_dir)))
            try:
                return self._run(runs)
            finally:
                if self.kept is not None:
                    self._keeper.submit(lambda: None).result()  # the results of every task that ended are kept

    def _run(self, runs: list[JobRun]) -> list[dict[str, Any]]:
        idle = list(range(len(self.executor.workers)))
        queued = [w for w in range(len(self.executor.workers)) for _ in range(QUEUED_DECODES_PER_WORKER)]
        inflight: dict[Any, tuple[JobRun, str, int, list[int], Any, Any]] = {}
        try:
            while not all(r.finished for r in runs):
                progressed = True
                while progressed:
                    progressed = False
                    for run in runs:
                        for task in list(run.ready()):
                            if task.kind in ("stitch", "blend", "mux"):
                                self._local(run, task)
                                progressed = True
                            elif task.kind == "encode" and encoded_text(task.arg("text")) in self.prompts:
                                run.done[task.id] = self.prompts.get(encoded_text(task.arg("text")))
                                progressed = True
                            elif task.kind == "decode":
                                self._start_decode(run, task)
                                progressed = True
                            elif idle:
                                self._dispatch(run, task.id, self._request(run, task), idle, inflight)
                        # Backpressure: decode at most DECODE_GROUPS_AHEAD temporal groups past the one being
                        # muxed, so decoded pixels never pile up in the object store.
                        while run.decode_queue and run.decode_queue[0][0] <= self._decode_horizon(run):
                            slots = idle or queued  # a free worker first, else one more tile behind a busy one
                            if not slots:
                                break
                            _, label, latent = run.decode_queue.pop(0)
                            self._dispatch(run, label, DecodeTask(latent), slots, inflight)
                        progressed |= self._drain_decode(run)
                self._observe(runs)
                if all(r.finished for r in runs):
                    break
                encoding = [f for r in runs for f in r.encoding if not f.done()]
                if not inflight and encoding:  # only the encoder threads are busy: wait for one
                    wait(encoding, return_when=FIRST_COMPLETED)
                    continue
                if not inflight:
                    pending = {
                        r.plan.job.spec.name or i: sorted(t.id for t in r.plan.tasks if t.id not in r.done)
                        for i, r in enumerate(runs)
                        if not r.finished
                    }
                    raise RuntimeError(f"coordinator stalled: no task can run (a bug): pending {pending}")
                # while frames are encoded, look up now and then: a finished encode may let more tiles go out
                ready = self.executor.wait(list(inflight), timeout=ENCODE_POLL_S if encoding else None)
                if not ready:
                    continue
                run, label, worker, slots, value_ref, retry = inflight.pop(ready[0])
                slots.append(worker)
                try:
                    trace = self.executor.get(ready[0])
                except NonFiniteOutputError as error:
                    if retry is None:
                        raise NonFiniteOutputError(
                            f"job {run.plan.job.spec.name or 'render'}: {describe_task(label)} produced NaN or Inf "
                            f"twice (the retry ran on another worker when one was free): {error.args[0]}"
                        ) from None
                    elsewhere = idle if any(w != worker for w in idle) else slots  # another worker if one is free
                    self._dispatch(run, label, retry, elsewhere, inflight, avoid=worker, retry=False)
                    continue
                run.traces.append(trace)
                run.running.discard(label)
                run.done[label] = value_ref
                self._keep(run, label, value_ref)
        finally:
            for run in runs:
                if run.encoder is not None:
                    run.encoder.shutdown(wait=True, cancel_futures=True)
                if run.writer is not None and not run.finished:
                    run.writer.abort()
        return [r.result for r in runs]

    def _observe(self, runs: list[JobRun]) -> None:
        """Queue depth and jobs by state for the metrics endpoint."""
        if self.metrics is None:
            return
        waiting = sum(1 for r in runs for t in r.ready() if t.kind not in ("stitch", "blend", "mux"))
        waiting += sum(len(r.decode_queue) for r in runs)
        self.metrics.queue_depth.labels("normal").set(waiting)
        self.metrics.set_jobs(
            {"": {"running": sum(1 for r in runs if not r.finished), "done": sum(1 for r in runs if r.finished)}}
        )

    # --- kept results ----------------------------------------------------------------------------------

    def _resume(self, run: JobRun) -> None:
        """Mark the tasks of `run` that its kept results make unnecessary as done: the kept ones with their
        results read back (a result whose digest differs is dropped and its task runs again), the ones only they
        needed with no value."""
        if self.kept is None:
            return
        records = self.kept.records(run.job_hash, kept_task_ids(run.plan))
        while True:
            point = resume_point(run.plan, set(records))
            values: dict[str, Any] = {}
            try:
                for task_id in point.resumed:
                    values[task_id] = self.kept.load(run.job_hash, records[task_id])
                break
            except KeptResultCorrupt:
                self.kept.drop(run.job_hash, [task_id])
                del records[task_id]
        for task_id in point.skipped:
            run.done[task_id] = None
        for task_id, value in values.items():
            run.done[task_id] = self.executor.put(value)
        run.resumed = point.resumed
        if self.metrics is not None and point.resumed:
            self.metrics.tasks_resumed.inc(len(point.resumed))

    def _keep(self, run: JobRun, task_id: str, value: Any) -> None:
        """Keep a finished task's result when its kind is kept (`value`: the result or its handle)."""
        kind = task_id.partition(":")[0]
        if self.kept is None or kind not in KEPT_KINDS:
            return
        self._keeper.submit(self._save, run, task_id, kind, value)

    def _save(self, run: JobRun, task_id: str, kind: str, value: Any) -> None:
        """Keep one result and forget those it stands for (keeper thread). A result that cannot be kept (a full
        disk, an unreachable bucket) costs only its task's rerun if the job is resumed: the job goes on."""
        try:
            self.kept.save(run.job_hash, task_id, kind, self.executor.get(value))
            self.kept.drop(run.job_hash, superseded(run.plan, set(self.kept.records(run.job_hash))))
        except Exception as error:  # whatever the reason, the result is not kept
            log.warning("job %s: %s not kept: %s: %s", run.job_hash[:12], task_id, type(error).__name__, error)
        self._count_kept_bytes()

    def release(self, job: ValidJob) -> None:
        """Forget the results kept for `job`: its output is published, nothing of it is to be resumed any more."""
        if self.kept is not None:
            self._keeper.submit(self.kept.discard, kept_job_key(job)).result()  # after every save of it
            self._count_kept_bytes()

    def _count_kept_bytes(self) -> None:
        if self.metrics is not None and self.kept is not None:
            self.metrics.kept_task_bytes.set(self.kept.total_bytes())

    @staticmethod
    def _decode_horizon(run: JobRun) -> int:
        return (run.decode_state["next_group"] if run.decode_state else 0) + DECODE_GROUPS_AHEAD

    # --- dispatch --------------------------------------------------------------------------------------

    def _dispatch(
        self,
        run: JobRun,
        label: str,
        request: TaskRequest,
        slots: list[int],
        inflight: dict,
        avoid: int | None = None,
        retry: bool = True,
    ) -> None:
        """Start a task on a worker taken from `slots` (the idle workers, or decode's queued slots; not
        `avoid` when another is free); the worker goes back to `slots` when the task ends. A task whose
        output holds NaN or Inf is run once more (`retry`), then fails its job."""
        worker = next((w for w in slots if w != avoid), slots[0])
        slots.remove(worker)
        value, trace = self.executor.run_task(worker, label, request, run.plan.job)
        run.running.add(label)
        inflight[trace] = (run, label, worker, slots, value, request if retry else None)
        if isinstance(request, EncodeTask):  # shared from dispatch on: another job's encode of the same text waits
            self.prompts[encoded_text(request.text)] = value

    def _request(self, run: JobRun, task: Task) -> TaskRequest:
        """The request of a task that runs on a worker, its inputs given as the handles of the tasks before it."""
        plan, spec = run.plan, run.plan.job.spec
        if task.kind == "encode":
            return EncodeTask(task.arg("text"))
        if task.kind == "audio_encode":
            return AudioEncodeTask(
                path=input_ref(spec.audio.path, spec.audio.sha256),
                start=spec.audio.start,
                num_frames=plan.job.num_frames,
                fps=spec.frame_rate,
            )
        if task.kind == "stage1":
            i = task.arg("chunk")
            chunk = plan.chunks[i]
            video_g, audio_g = job_guidance(plan.job, run.num_layers)
            request = stages.ChunkRequest(
                frames=chunk.num_frames,
                height=spec.height // 2,
                width=spec.width // 2,
                fps=spec.frame_rate,
                seed=plan.chunk_seed[i],
                recipe=spec.recipe,
                steps=spec.steps,
                video_guidance=video_g,
                audio_guidance=audio_g,
                tail_strength=spec.tail_strength,
                images=tuple(
                    (path, local_frame, strength)
                    for (path, _, strength), (_, local_frame) in zip(
                        [job_images(plan.job)[k] for k, _ in plan.chunk_images[i]], plan.chunk_images[i], strict=True
                    )
                ),
                loras=job_loras(plan.job),
                first_frame=chunk.first_frame,
                **job_control(plan.job),
            )
            negative = run.done[f"encode:{len(plan.prompts) - 1}"] if spec.recipe == "two_stage" else None
            return Stage1Task(
                request=request,
                positive=run.done[f"encode:{plan.chunk_prompt[i]}"],
                negative=negative,
                previous=run.done[f"stage1:{i - 1}"] if i else None,
                overlap_video=chunk.overlap_video,
                overlap_audio=chunk.overlap_audio,
                track=self.executor.get(run.done["audio_encode"])[:, :, chunk.audio.start : chunk.audio.stop]
                if spec.audio is not None
                else None,
            )
        if task.kind == "upsample":
            return UpsampleTask(run.done["stitch"]["video"])
        if task.kind == "stage2_init":
            return Stage2InitTask(
                upscaled=run.done["upsample"],
                audio=run.done["stitch"]["audio"],
                num_frames=plan.job.num_frames,
                height=spec.height,
                width=spec.width,
                fps=spec.frame_rate,
                generator_state=run.done["stitch"]["generator_state"],
                refine_audio=plan.refine_audio,
                images=job_images(plan.job),
            )
        if task.kind == "stage2":
            step, tile = task.arg("step"), plan.tiles[task.arg("tile")]
            state = run.done["stage2_init"] if step == 0 else run.done[f"blend:{step - 1}"]
            chunk = next(c for c in plan.chunks if c.video == tile.time)
            audio_span = (chunk.audio.start, chunk.audio.stop) if not plan.refine_audio else (0, plan.audio_latents)
            prompt = plan.chunk_prompt[chunk.index]
            return Stage2Task(
                state=state,
                contexts=run.done[f"encode:{prompt}"],
                step_index=step,
                time=(tile.time.start, tile.time.stop),
                height=(tile.height.start, tile.height.stop),
                width=(tile.width.start, tile.width.stop),
                audio_span=audio_span,
                time_origin=time_origin_seconds(tile.time, spec.frame_rate),
                loras=job_loras(plan.job),
            )
        if task.kind == "audio":
            final: stages.Stage2State = self.executor.get(run.done[f"blend:{plan.stage2_steps - 1}"])
            return AudioDecodeTask(stages.unpatchify_audio(final.audio, final.audio_shape))
        raise ValueError(f"unknown task kind {task.kind}")

    # --- local steps -----------------------------------------------------------------------------------

    def _local(self, run: JobRun, task: Task) -> None:
        getattr(self, f"_local_{task.kind}")(run, task)

    def _local_stitch(self, run: JobRun, task: Task) -> None:
        plan = run.plan
        results: list[stages.ChunkResult] = self.executor.get([run.done[f"stage1:{c.index}"] for c in plan.chunks])
        first = results[0]
        video = torch.zeros(*first.video.shape[:2], plan.latent_frames, *first.video.shape[3:], dtype=first.video.dtype)
        audio = torch.zeros(*first.audio.shape[:2], plan.audio_latents, first.audio.shape[3], dtype=first.audio.dtype)
        for chunk, result in zip(plan.chunks, results, strict=True):
            v, a = result.video, result.audio
            if plan.job.spec.anchor_colors and chunk.index:
                v = anchor_statistics(v, first.video)
            crossfade_into(video, v, chunk.video.start, chunk.overlap_video)
            crossfade_into(audio, a, chunk.audio.start, chunk.overlap_audio)
        if plan.job.spec.audio is not None:
            audio = self.executor.get(run.done["audio_encode"])  # the track's latent as encoded, not a re-blend of it
        run.done[task.id] = {
            "video": self.executor.put(video),
            "audio": self.executor.put(audio),
            "generator_state": first.generator_state,
        }

    def _local_blend(self, run: JobRun, task: Task) -> None:
        plan, step = run.plan, task.arg("step")
        state: stages.Stage2State = self.executor.get(
            run.done["stage2_init"] if step == 0 else run.done[f"blend:{step - 1}"]
        )
        outputs = self.executor.get([run.done[f"stage2:{step}:{t.index}"] for t in plan.tiles])
        video_pred = blend_tiles(plan, state, [o[0] for o in outputs])
        video = stages.stage2_advance(state.video, video_pred, step)
        audio = stages.stage2_advance(state.audio, outputs[0][1], step) if plan.refine_audio else state.audio
        blended = replace(state, video=video, audio=audio)  # keyframe tokens stay
        run.done[task.id] = self.executor.put(blended)
        self._keep(run, task.id, run.done[task.id])

    # --- distributed VAE decode, streamed into the muxer ----------------------------------------------

    def _start_decode(self, run: JobRun, task: Task) -> None:
        """Cut the final latent into ltx-core's own decode tiles and queue them for the workers."""
        plan, spec = run.plan, run.plan.job.spec
        final: stages.Stage2State = self.executor.get(run.done[f"blend:{plan.stage2_steps - 1}"])
        latent = stages.unpatchify_video(final.video, final.video_shape)
        tiles = official_decode_tiles(latent, tiling_config(plan.decode.tiles))
        groups: list[list[Any]] = []
        for tile in tiles:
            if groups and groups[-1][0].out_coords[2] == tile.out_coords[2]:
                groups[-1].append(tile)
            else:
                groups.append([tile])
        run.decode_state = {
            "groups": groups,
            "next_group": 0,
            "previous": None,
            "digest": TensorDigest(),
        }
        run.encoder = ThreadPoolExecutor(1, thread_name_prefix="encode")
        for g, group in enumerate(groups):
            for k, tile in enumerate(group):
                run.decode_queue.append((g, f"decode:{g}:{k}", self.executor.put(latent[tile.in_coords].contiguous())))
        run.writer = Mp4Writer(
            output_paths(plan.job, run.out_dir).video,
            spec.frame_rate,
            spec.width,
            spec.height,
            sample_rate=None if spec.audio is not None else self.audio_sample_rate,
            source_audio=localize(job_audio(plan.job)),
        )
        run.running.add(task.id)

    def _drain_decode(self, run: JobRun) -> bool:
        """Hand finished decode groups, in order, to the run's encoder thread, which blends them (ltx-core's
        tiled_decode blending) and streams their frames into the MP4. The scheduling thread hands over only
        the object refs: it goes on dispatching tiles while pixels are fetched, blended and encoded (the encode
        alone can take longer than the decode tasks of a 1024x1536 job, and the GPUs would wait for it).

        True when it consumed a group: that moves the backpressure horizon, so more tiles may be dispatched.
        """
        state = run.decode_state
        if state is None or "decode" in run.done:
            return False
        groups = state["groups"]
        consumed = False
        while state["next_group"] < len(groups):
            g = state["next_group"]
            labels = [f"decode:{g}:{k}" for k in range(len(groups[g]))]
            if not all(label in run.done for label in labels):
                return consumed
            run.encoding = [f for f in run.encoding if not f.done() or f.exception() is not None]
            if sum(not f.done() for f in run.encoding) > ENCODE_GROUPS_BEHIND:
                return consumed
            consumed = True
            refs = [run.done[label] for label in labels]
            for label in labels:
                run.done[label] = None  # the encoder thread holds the only refs: the pixels go once it has them
            run.encoding.append(run.encoder.submit(self._blend_group, run, groups[g], refs))
            state["next_group"] += 1
        run.encoding.append(run.encoder.submit(self._flush_decode, run))
        run.running.discard("decode")
        run.done["decode"] = True
        return True

    def _blend_group(self, run: JobRun, tiles: list[Any], refs: list[Any]) -> None:
        """Fetch one temporal group's pixels, blend them into the previous group's overlap and emit the
        frames no later group touches (encoder thread: fetching a group's ~1.6 GB on the scheduling thread
        would hold up tile dispatch for about a second per group)."""
        state = run.decode_state
        decoded = [unpack(packed) for packed in self.executor.get(refs)]
        buffer, weights, temporal = accumulate_group(tiles, decoded, run.plan.job.spec.height, run.plan.job.spec.width)
        previous = state["previous"]
        if previous is not None:
            p_buffer, p_weights, p_temporal = previous
            if p_temporal.stop > temporal.start:
                n = p_temporal.stop - temporal.start
                offset = temporal.start - p_temporal.start
                p_buffer[:, :, offset:] += buffer[:, :, :n]
                p_weights[:, :, offset:] += weights[:, :, :n]
                buffer[:, :, :n] = p_buffer[:, :, offset:]
                weights[:, :, :n] = p_weights[:, :, offset:]
            keep = temporal.start - p_temporal.start
            self._emit(run, (p_buffer / p_weights.clamp(min=1e-8))[:, :, :keep])
        state["previous"] = (buffer, weights, temporal)

    def _flush_decode(self, run: JobRun) -> None:
        """Emit the last group's frames (encoder thread)."""
        buffer, weights, _ = run.decode_state["previous"]
        self._emit(run, buffer / weights.clamp(min=1e-8))
        run.decode_state["previous"] = None

    def _emit(self, run: JobRun, frames: torch.Tensor) -> None:
        """float [1, 3, F, H, W] in [-1, 1] → uint8 frames into the muxer (ltx-core's conversion)."""
        pixels = (((frames + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).to(torch.uint8)
        frames_hwc = pixels[0].permute(1, 2, 3, 0).contiguous()
        run.writer.add_frames(frames_hwc)
        run.decode_state["digest"].update(frames_hwc)

    def _local_mux(self, run: JobRun, task: Task) -> None:
        plan = run.plan
        waveform = None
        if plan.job.spec.audio is None:
            waveform, sample_rate = self.executor.get(run.done["audio"])
            if sample_rate != self.audio_sample_rate:
                raise RuntimeError(
                    f"vocoder produced {sample_rate} Hz audio; the muxer was opened for {self.audio_sample_rate} Hz"
                )
        mux_start = time.perf_counter()
        for encoded in run.encoding:  # the last frames, and any error the encoder met
            encoded.result()
        run.encoder.shutdown(wait=True)
        path = run.writer.close(waveform)
        media = asdict(probe_mp4(path))
        if media["frames"] != plan.job.num_frames:
            raise RuntimeError(f"muxed {media['frames']} frames, planned {plan.job.num_frames}")
        paths = output_paths(plan.job, run.out_dir)
        stage_seconds: dict[str, float] = {}
        for t in run.traces:
            stage_seconds[t.kind] = stage_seconds.get(t.kind, 0.0) + t.seconds
        stage_seconds["mux_close"] = time.perf_counter() - mux_start
        stage_seconds["total"] = time.time() - run.started
        document = sidecar_document(
            plan.job,
            models={},
            timings=stage_seconds,
            media=media,
            output={"video": path.name, "bytes": path.stat().st_size, "sha256": cached_file_sha256(path)},
            content=content_hashes(plan.job, run.decode_state["digest"].hexdigest(), waveform),
            worker={
                "workers": sorted({t.worker for t in run.traces}),
                "placement": {"mode": self.executor.placement.mode, "gpus": self.executor.placement.gpus},
            },
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        document["plan"] = plan.summary()
        document["trace"] = [asdict(t) for t in sorted(run.traces, key=lambda t: t.start)]
        document["resumed"] = list(run.resumed)
        write_json_atomic(paths.sidecar, document)
        run.done[task.id] = True
        run.result = document
