"""Where a job runs: one GPU per model copy (replica) or a gang of GPUs acting as one model. Pure.

Modes of a gang of N GPUs on one node:
- `sequence`: video tokens split over the N ranks (Ulysses all-to-all in self-attention). Pays for
  long sequences on one job; N must divide the 32 video attention heads (2, 4, 8, 16, 32).
- `guidance`: the guided passes of a stage-1 step (up to 4: cond, uncond, STG, modality) on different
  ranks. Near-perfect scaling up to the number of passes; single-pass stages (stage 2, distilled) of
  the same gang run sequence-parallel instead.
- `sharded`: weights split over the ranks (FSDP2), for GPUs too small for a 38 GB bf16 model; each
  stage then runs guidance- or sequence-parallel as above.

`choose_placement` picks a mode for `mode: auto` from the job's size, the GPUs' memory and how many
GPUs are free; `task_parallelism` says how a gang runs each kind of task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["auto", "replica", "sequence", "guidance", "sharded"]
GANG_MODES = ("sequence", "guidance", "sharded")

LTX2_BF16_TRANSFORMER_BYTES = 37_800_000_000
"""18.88 B parameters in bf16 (the rest of the model set adds ~10 GB: Gemma 12B runs once per prompt)."""

RESIDENT_OVERHEAD_BYTES = 30_000_000_000
"""Estimate of what a rank holds besides its transformer weights: Gemma-3-12B in bf16 (~24 GB, whole on
every rank), VAEs and upsampler (~2 GB), activations at 121 frames (~4 GB: the official forward's peak over
its weights, bench/README.md, "Numbers behind the code")."""

SEQUENCE_PARALLEL_MIN_TOKENS = 12_000
"""Below this many video tokens per forward, Ulysses' all-to-alls cost more than they save."""

TRANSFORMER_KINDS = ("stage1", "stage2")
"""Task kinds that run the transformer: the only ones a gang runs on every rank."""


class PlacementSpec(BaseModel):
    """How many GPUs a job's model spans, and how they share the work."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = Field("auto", description="auto | replica | sequence | guidance | sharded")
    gpus: int | None = Field(
        None,
        description="GPUs per model: 1 for replica, default 2 for a gang (sequence/sharded: a divisor of 32); "
        "for auto, the most a gang may take (default: all free GPUs).",
    )

    def resolved_gpus(self) -> int:
        if self.gpus is not None:
            return self.gpus
        return 2 if self.mode in GANG_MODES else 1


@dataclass(frozen=True)
class Placement:
    """A resolved placement: `mode` is never `auto`."""

    mode: str
    gpus: int

    @property
    def is_gang(self) -> bool:
        return self.mode in GANG_MODES


REPLICA = Placement("replica", 1)


class PlacementError(ValueError):
    """No placement on the free GPUs can hold the job."""


def placement_problems(spec: PlacementSpec, heads: int = 32) -> list[tuple[str, object, str]]:
    """(field, value, problem) for a placement that cannot run on a model with `heads` video heads."""
    problems: list[tuple[str, object, str]] = []
    divisors = [d for d in range(1, heads + 1) if heads % d == 0]
    gpus = spec.resolved_gpus()
    if gpus < 1 or gpus > 64:
        problems.append(("placement.gpus", gpus, "must be between 1 and 64"))
        return problems
    if spec.mode == "replica" and gpus != 1:
        problems.append(("placement.gpus", gpus, "must be 1 for mode replica (use sequence/guidance/sharded)"))
    if spec.mode in GANG_MODES and gpus < 2:
        problems.append(("placement.gpus", gpus, f"must be at least 2 for mode {spec.mode} (or use replica)"))
    if spec.mode in ("sequence", "sharded") and gpus not in divisors:
        problems.append(("placement.gpus", gpus, f"must divide the model's {heads} attention heads: one of {divisors}"))
    if spec.mode == "guidance" and gpus > 4:
        problems.append(("placement.gpus", gpus, "at most 4 for guidance (a step has at most 4 guided passes)"))
    return problems


class GuidanceScales(Protocol):
    cfg: float
    stg: float
    modality: float


def guided_pass_count(recipe: str, guidances: Sequence[GuidanceScales]) -> int:
    """Transformer passes per stage-1 step: the conditional one, plus each term any modality's guider uses
    (unconditional for cfg ≠ 1, STG-perturbed for stg ≠ 0, modality-isolated for modality ≠ 1)."""
    if recipe != "two_stage":
        return 1
    uncond = any(not math.isclose(g.cfg, 1.0) for g in guidances)
    perturbed = any(not math.isclose(g.stg, 0.0) for g in guidances)
    isolated = any(not math.isclose(g.modality, 1.0) for g in guidances)
    return 1 + uncond + perturbed + isolated


def stage2_video_tokens(height: int, width: int, num_frames: int) -> int:
    """Video tokens of a full-resolution forward: one per 32×32 pixels per 8 frames (+ the first)."""
    return ((num_frames - 1) // 8 + 1) * (height // 32) * (width // 32)


def task_parallelism(placement: Placement, kind: str, guided_passes: int) -> str | None:
    """How a gang runs one task: 'sequence', 'guidance', or None (rank 0 alone; no transformer in it)."""
    if not placement.is_gang or kind not in TRANSFORMER_KINDS:
        return None
    if placement.mode in ("guidance", "sharded") and kind == "stage1" and guided_passes >= placement.gpus:
        return "guidance"
    return "sequence"


def choose_placement(
    spec: PlacementSpec,
    *,
    video_tokens: int,
    guided_passes: int,
    gpu_memory_bytes: int | None,
    free_gpus: int,
    queued_jobs: int = 1,
    model_bytes: int = LTX2_BF16_TRANSFORMER_BYTES,
) -> Placement:
    """Resolve `auto` (explicit modes pass through).

    Replicas whenever the queue can keep every GPU busy (throughput beats latency for a campaign);
    sharded weights when one GPU cannot hold the model; otherwise a gang over the free GPUs: guidance-
    parallel for guided jobs (no traffic inside the forward), sequence-parallel for long unguided ones.
    """
    if spec.mode != "auto":
        return Placement(spec.mode, spec.resolved_gpus())
    if spec.gpus is not None:
        free_gpus = min(free_gpus, spec.gpus)
    fits = gpu_memory_bytes is None or model_bytes + RESIDENT_OVERHEAD_BYTES <= gpu_memory_bytes
    if not fits:
        assert gpu_memory_bytes is not None
        gpus = 2
        while gpus <= free_gpus and model_bytes / gpus + RESIDENT_OVERHEAD_BYTES > gpu_memory_bytes:
            gpus *= 2
        if gpus > free_gpus:
            raise PlacementError(
                f"the model set needs about {(model_bytes + RESIDENT_OVERHEAD_BYTES) / 1e9:.0f} GB, more than one "
                f"{gpu_memory_bytes / 2**30:.0f} GiB GPU, and sharding over the {free_gpus} free GPU(s) does not "
                f"bring it under that; use larger GPUs or free more of them"
            )
        return Placement("sharded", gpus)
    if queued_jobs >= free_gpus or free_gpus < 2:
        return REPLICA
    if guided_passes >= 2:
        return Placement("guidance", min(guided_passes, _power_of_two_at_most(free_gpus)))
    if video_tokens >= SEQUENCE_PARALLEL_MIN_TOKENS:
        return Placement("sequence", min(8, _power_of_two_at_most(free_gpus)))
    return REPLICA


def _power_of_two_at_most(n: int) -> int:
    p = 1
    while p * 2 <= n:
        p *= 2
    return p
