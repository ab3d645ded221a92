"""What a worker answers: a render's reply, a task's trace, the worker's info and its progress.

Frozen dataclasses, so that both backends hand the head the same typed values (a Ray actor's pickled, an
in-process worker's as they are). Where one is written out (a sidecar, `--json`), it is `dataclasses.asdict`'s
dictionary of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class RenderReply:
    """What a worker's `render` returns: the sidecar document and the staged MP4's name."""

    document: dict[str, Any]
    video: str


@dataclass(frozen=True)
class TaskGang:
    """The gang a task ran on: its mode and GPUs, and how many of its ranks ran the task."""

    mode: str
    gpus: int
    ranks: int


@dataclass(frozen=True)
class TaskTrace:
    """Where and when one task ran, and its peak GPU memory: each job's sidecar lists its tasks' traces."""

    task: str
    kind: str
    worker: str
    pid: int
    device: str
    start: float
    end: float
    seconds: float
    peak_vram_bytes: int | None
    gang: TaskGang | None = None
    """A gang's task; None: a replica's."""
    parallelism: str | None = None
    """How a gang split the task (`cluster.gang.task_parallelism`); None: one rank ran it."""
    rank: int | None = None
    rebuilds: int = 0
    """How often the gang that ran it was rebuilt after losing a member."""


@dataclass(frozen=True)
class GangInfo:
    """A gang worker's part of its info (`cluster.gang.Gang`): its mode, GPUs, its members' processes, and how
    often it was rebuilt after losing a member."""

    mode: str
    gpus: int
    member_pids: tuple[int, ...]
    rebuilds: int = 0


@dataclass(frozen=True)
class WorkerInfo:
    """A worker's identity, model and speed options, and load statistics (tests use `loads` to prove a warm
    worker does not reload). A gang answers with its first member's, named as the gang, with `gang` set."""

    name: str
    pid: int
    host: str
    node: str | None
    """The cluster node it runs on (None outside a cluster)."""
    device: str
    gpu: str | None
    dtype: str
    loads: int
    load_seconds: float
    jobs_done: int
    prompt_encodes: int
    """Prompts Gemma encoded on this worker."""
    num_layers: int
    audio_sample_rate: int
    """The vocoder's rate: the head's muxer opens its AAC stream at it."""
    lora_set: tuple[tuple[str, float], ...]
    """The LoRAs fused in now, as (path, strength)."""
    lora_set_changes: int
    compile: bool
    fp8_attention: bool
    fp8: bool
    fp8_all_blocks: bool
    fa4_attention: bool
    batched_passes: bool
    batched_passes_max_tokens: int | None
    gang: GangInfo | None = None

    def document(self) -> dict[str, Any]:
        """As a sidecar's `worker` section: its fields, `gang` only for a gang."""
        fields = asdict(self)
        if self.gang is None:
            del fields["gang"]
        return fields


@dataclass(frozen=True)
class StageRun:
    """A stage of a job that has ended: its steps and the seconds they took, timed on the worker."""

    stage: str
    steps: int
    seconds: float


@dataclass(frozen=True)
class WorkerProgress:
    """Where a worker's model work is: its stage, the step of that stage's `total`, the seconds its steps took so
    far (timed on the worker: the stage's rate is `step / seconds`), the job (its MP4's name), and the job's stages
    that have ended, so that a poll that missed a stage's last step still sees the stage end."""

    stage: str = "idle"
    step: int = 0
    total: int = 0
    job: str | None = None
    seconds: float = 0.0
    finished: tuple[StageRun, ...] = ()

    def stepped(self, stage: str, step: int, total: int, seconds: float = 0.0) -> WorkerProgress:
        """After step `step` of `total` of `stage`, which took `seconds`. Another stage, or the same one begun again
        (a job's next chunk), ends the stage before: it joins `finished` if it had steps."""
        if stage == self.stage and step > self.step:
            return replace(self, step=step, total=total, seconds=self.seconds + seconds)
        ended = (StageRun(self.stage, self.step, self.seconds),) if self.total and self.step else ()
        return replace(self, stage=stage, step=step, total=total, seconds=seconds, finished=self.finished + ended)
