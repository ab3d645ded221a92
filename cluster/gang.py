"""A gang: N GPU actors on one node acting as one model, scheduled by the coordinator like one worker.

`Gang` is itself a (CPU-less) Ray actor with a worker's interface (`task`, `info`, `progress`,
`metrics_text`). It reserves N bundles in a STRICT_PACK placement group, starts one `GangMember` per
bundle (each a `RenderWorker` plus its rank's parallel state), and has them form a torch.distributed
group on the node's loopback interface. Tasks that run the transformer go to every rank with the
parallelism `jobs.placement.task_parallelism` picks; the rest run on rank 0 alone.

A collective cannot be resumed half-way: when a member dies, the whole gang is torn down and rebuilt,
and the task is run again from its inputs (tasks are pure functions of their arguments, so the retry
gives the same result).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.ray_executor import RayRenderWorker, ray_device, worker_runtime_env
from cluster.replies import GangInfo, TaskGang, TaskTrace, WorkerInfo, WorkerProgress
from cluster.worker_options import WorkerOptions
from jobs.placement import Placement, guided_pass_count, task_parallelism
from ltx2.checkpoint import CheckpointSet
from ltx2.parallel.modes import ParallelMode


class GangMember:
    """One rank: a full render worker whose models run in the gang's parallel mode. The gang's process group is
    formed first (`join`), then the worker is built in it, so its models are configured once, speed options and
    parallel mode together (`ltx2.configure`)."""

    def __init__(
        self, checkpoints: CheckpointSet, options: WorkerOptions, rank: int, world_size: int, sharded: bool, name: str
    ) -> None:
        self.checkpoints, self.options, self.name = checkpoints, options, name
        self.rank, self.world_size, self.sharded = rank, world_size, sharded
        self.worker: RayRenderWorker | None = None

    def rendezvous_port(self) -> int:
        from ltx2.parallel.group import free_loopback_port

        return free_loopback_port()

    def join(self, port: int, timeout_s: float) -> int:
        """Form the process group, then load this rank's models into it (its inputs and outputs in Ray's store)."""
        import torch

        from ltx2.parallel.group import init_gang_group

        device = ray_device(self.options.device)  # a bare "cuda": this member's Ray-assigned GPU
        group = init_gang_group(self.rank, self.world_size, port, torch.device(device), timeout_s)
        self.worker = RayRenderWorker(
            self.checkpoints, replace(self.options, device=device), self.name, ParallelMode(group, self.sharded)
        )
        return os.getpid()

    def task(self, kind: str, label: str, parallelism: str | None, **kwargs: Any) -> tuple[Any, TaskTrace]:
        assert self.worker is not None, "join() first"
        result, trace = self.worker.task(kind, label, parallelism=parallelism, **kwargs)
        return result, replace(trace, rank=self.rank, parallelism=parallelism)

    def info(self) -> WorkerInfo:
        return self.worker.info()

    def progress(self) -> WorkerProgress:
        return self.worker.progress()

    def metrics_text(self) -> tuple[dict[str, str], str]:
        return self.worker.metrics_text()


class GangFailure(RuntimeError):
    """The gang lost members more often than it may rebuild."""


class Gang:
    """N members as one worker; rebuilt as a whole when a member dies."""

    def __init__(
        self,
        checkpoints: CheckpointSet,
        placement: Placement,
        options: WorkerOptions,
        name: str = "gang",
        max_rebuilds: int = 3,
        collective_timeout_s: float = 300.0,
        start_timeout_s: float = 600.0,
    ) -> None:
        if not placement.is_gang or placement.gpus < 2:
            raise ValueError(f"a gang needs a gang mode and at least 2 GPUs, not {placement}")
        self.checkpoints, self.placement, self.options = checkpoints, placement, options
        self.name, self.max_rebuilds = name, max_rebuilds
        self.collective_timeout_s, self.start_timeout_s = collective_timeout_s, start_timeout_s
        self.rebuilds = 0
        self.members: list[Any] = []
        self.pg = None
        self._build()

    # --- lifecycle ----------------------------------------------------------------------------------------

    def _build(self) -> None:
        gpu = self.options.device != "cpu"
        bundle = {"GPU": 1, "CPU": 1} if gpu else {"CPU": 1}
        self.pg = placement_group([bundle] * self.placement.gpus, strategy="STRICT_PACK")
        ray.get(self.pg.ready(), timeout=self.start_timeout_s)
        member_cls = ray.remote(GangMember)
        self.members = [
            member_cls.options(
                num_gpus=1 if gpu else 0,
                num_cpus=1,
                max_concurrency=2,  # a task + progress polls
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=rank),
                **worker_runtime_env(self.options.env),
            ).remote(
                self.checkpoints,
                replace(self.options, device="cuda" if gpu else "cpu"),
                rank,
                self.placement.gpus,
                self.placement.mode == "sharded",
                f"{self.name}-rank{rank}",
            )
            for rank in range(self.placement.gpus)
        ]
        port = ray.get(self.members[0].rendezvous_port.remote(), timeout=self.start_timeout_s)
        self.member_pids = ray.get(
            [m.join.remote(port, self.collective_timeout_s) for m in self.members], timeout=self.start_timeout_s
        )

    def _teardown(self) -> None:
        for m in self.members:
            ray.kill(m, no_restart=True)
        self.members = []
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None

    def shutdown(self) -> None:
        self._teardown()

    def _members_alive(self) -> bool:
        try:
            ray.get([m.info.remote() for m in self.members], timeout=30)
            return True
        except (RayActorError, GetTimeoutError):
            return False

    # --- the worker interface -----------------------------------------------------------------------------

    def task(self, kind: str, label: str, **kwargs: Any) -> tuple[Any, TaskTrace]:
        """Run one task on the gang; a member's death rebuilds the gang and runs the task again."""
        while True:
            try:
                return self._run(kind, label, kwargs)
            except Exception:
                if self._members_alive():
                    raise  # the task itself failed (bad input, NaN, OOM): not the gang's business
                if self.rebuilds >= self.max_rebuilds:
                    self._teardown()
                    raise GangFailure(
                        f"{self.name}: lost a member {self.rebuilds + 1} times (limit {self.max_rebuilds}); giving up"
                    ) from None
                self.rebuilds += 1
                self._teardown()
                self._build()

    def _run(self, kind: str, label: str, kwargs: dict[str, Any]) -> tuple[Any, TaskTrace]:
        passes = _guided_passes(kwargs)
        parallelism = task_parallelism(self.placement, kind, passes)
        started = time.time()
        members = self.members if parallelism is not None else self.members[:1]
        pairs = [m.task.options(num_returns=2).remote(kind, label, parallelism, **kwargs) for m in members]
        pending = [ref for pair in pairs for ref in pair]
        while pending:  # fail fast: one dead member must not leave us waiting on the others' collectives
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
        result, trace = ray.get(list(pairs[0]))
        traces = ray.get([pair[1] for pair in pairs[1:]])
        peaks = [t.peak_vram_bytes for t in (trace, *traces) if t.peak_vram_bytes is not None]
        trace = replace(
            trace,
            worker=self.name,
            gang=TaskGang(self.placement.mode, self.placement.gpus, len(members)),
            parallelism=parallelism,
            start=started,
            peak_vram_bytes=max(peaks) if peaks else None,
            rebuilds=self.rebuilds,
        )
        return result, trace

    def info(self) -> WorkerInfo:
        gang = GangInfo(self.placement.mode, self.placement.gpus, tuple(self.member_pids), self.rebuilds)
        return replace(ray.get(self.members[0].info.remote()), name=self.name, gang=gang)

    def progress(self) -> WorkerProgress:
        return ray.get(self.members[0].progress.remote())

    def metrics_text(self) -> tuple[dict[str, str], str]:
        labels, text = ray.get(self.members[0].metrics_text.remote())
        return dict(labels, worker=self.name), text


def _guided_passes(kwargs: dict[str, Any]) -> int:
    request = kwargs.get("request")
    if request is None:
        return 1
    return guided_pass_count(request.recipe, (request.video_guidance, request.audio_guidance))
