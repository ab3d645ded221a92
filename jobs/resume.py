"""Which task results of a job's plan are kept, and, given those kept, which tasks still run. Pure: no torch, no files.

A kept result is addressed by the job's content hash (`jobs.outputs.job_content_hash`: the same request, the same
results) and the task's id. Kept are the results that are costly to redo and cheap to keep: each stage-1 chunk's
latents (the chunks run one after another), the stage-2 state after each step's blend (the whole frame: a
resumed job goes on from the last finished step, not from its tiles' predictions) and the decoded audio. A
tile's per-step prediction, the stitch, the upsample and the stage-2 start are cheaper to redo than to keep, the
text encodings are shared farm-wide already, and decoded pixels are streamed into the muxer (a resumed job
decodes again from the kept final latent).
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.outputs import job_content_hash
from jobs.plan import JobPlan
from jobs.spec import ValidJob

KEPT_KINDS = frozenset({"stage1", "blend", "audio"})
"""Task kinds whose results are kept."""


def kept_task_ids(plan: JobPlan) -> tuple[str, ...]:
    """The tasks of `plan` whose results are kept, in plan order."""
    return tuple(t.id for t in plan.tasks if t.kind in KEPT_KINDS)


def kept_job_key(job: ValidJob) -> str:
    """The folder a job's kept results go under: its content hash (the same request, the same results), and the
    OOM-ladder rung it runs on, which changes its tiles or numerics: a job moved down the ladder never resumes from
    another rung's results, which would give a file neither rung renders."""
    return job_content_hash(job) + (f"-{job.fallback}" if job.fallback else "")


def kept_result_name(task_id: str) -> str:
    """A kept result's file stem: the task id with ':' (not allowed in every file system or bucket tool) as '-'."""
    return task_id.replace(":", "-")


@dataclass(frozen=True)
class ResumePoint:
    """How a job goes on from its kept results."""

    resumed: tuple[str, ...]
    """Kept tasks whose results are read back (plan order)."""
    skipped: tuple[str, ...]
    """Tasks nothing left to run needs: neither run nor read back."""
    to_run: tuple[str, ...]
    """The tasks still to run (plan order)."""


def resume_point(plan: JobPlan, kept: frozenset[str] | set[str]) -> ResumePoint:
    """Walk back from the mux: a task is needed when a needed task depends on it (a task's dependencies are all it
    reads); a needed task that is kept is read back instead of run, and what only it needed is skipped. With
    nothing kept, every task runs."""
    by_id = {t.id: t for t in plan.tasks}
    kept = {k for k in kept if k in by_id and by_id[k].kind in KEPT_KINDS}
    needed: set[str] = set()
    stack = [t.id for t in plan.tasks if t.kind == "mux"]
    while stack:
        task_id = stack.pop()
        if task_id in needed:
            continue
        needed.add(task_id)
        if task_id not in kept:
            stack.extend(by_id[task_id].deps)
    order = [t.id for t in plan.tasks]
    return ResumePoint(
        resumed=tuple(i for i in order if i in needed and i in kept),
        skipped=tuple(i for i in order if i not in needed),
        to_run=tuple(i for i in order if i in needed and i not in kept),
    )


def superseded(plan: JobPlan, kept: frozenset[str] | set[str]) -> frozenset[str]:
    """Kept results a resume would not read: a later kept result stands for them (each step's blend for the chunks
    and the steps before it), so they need not be kept any more."""
    return frozenset(kept) - set(resume_point(plan, kept).resumed)
