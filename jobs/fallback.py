"""What a job that ran out of GPU memory is retried with: the OOM ladder. Pure: no torch, no Ray.

Each out-of-memory attempt moves the job one rung down, and a rung keeps what the rungs above it did:
smaller stage-2 and decode tiles, the smallest tiles, fewer parallel passes (a guidance gang runs its
share of a step's guided passes one by one instead of batched), FP8 weights (the blocks' linear weights
kept on the GPU as FP8, about half the bytes), the text encoder offloaded to host memory while the
transformer runs, and the transformer's blocks streamed from host memory (CPU offload; it streams the
exact weights, so FP8 is off again there). A rung changes how the job runs, never what it asks for: the
job keeps its name and identity, and its sidecar says which rung rendered it (tiles change the pixels
slightly at seams, FP8 by the weights' rounding; the offloads change nothing). A rung that would change
nothing for the pool (passes are already one by one outside guidance gangs) is left out of its ladder.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.spec import JobSpec, ValidJob

OOM_LADDER: tuple[str, ...] = (
    "smaller_tiles",
    "smallest_tiles",
    "sequential_passes",
    "fp8_weights",
    "offload_text_encoder",
    "offload_transformer",
)

BATCHED_PASS_MODES = ("guidance",)
"""Pool placements whose workers batch guided passes (a guidance gang's share per rank); replica workers do
where told to (`batched_passes`, on by default on GPUs)."""


def ladder_for(placement_mode: str, batched_passes: bool = False) -> tuple[str, ...]:
    """The rungs that change something for a pool of `placement_mode` workers (`batched_passes`: replica
    workers that batch a step's passes; a sharded gang's blocks are split over its GPUs as DTensors: it
    neither streams nor re-stores them)."""
    skip = set()
    if placement_mode not in BATCHED_PASS_MODES and not batched_passes:
        skip.add("sequential_passes")
    if placement_mode == "sharded":
        skip |= {"fp8_weights", "offload_transformer"}
    return tuple(r for r in OOM_LADDER if r not in skip)


def rung_after(oom_attempts: int, ladder: tuple[str, ...] = OOM_LADDER) -> str | None:
    """The rung for a job that has run out of memory `oom_attempts` times; None when the ladder is spent."""
    if oom_attempts <= 0:
        return None
    return ladder[oom_attempts - 1] if oom_attempts <= len(ladder) else None


def reaches(rung: str | None, step: str) -> bool:
    """Whether a job on `rung` does what `step` does (rungs keep what the rungs above them did)."""
    return rung is not None and OOM_LADDER.index(rung) >= OOM_LADDER.index(step)


@dataclass(frozen=True)
class Tiling:
    """The tile sizes a job runs with (the spec's, or a rung's)."""

    tile_pixels: int
    tile_overlap: int
    decode_tile_pixels: int
    decode_tile_frames: int


def _down32(value: float, minimum: int) -> int:
    return max(minimum, int(value) // 32 * 32)


def effective_tiling(job: ValidJob, rung: str | None) -> Tiling:
    """Tile sizes for `rung`: `smaller_tiles` halves the stage-2 tile (at most half the frame's long side,
    so even a one-piece job is split) and the decode tiles; `smallest_tiles` and every rung below it quarter
    them."""
    spec: JobSpec = job.spec
    base = Tiling(spec.tile_pixels, spec.tile_overlap, spec.decode_tile_pixels, spec.decode_tile_frames)
    if not reaches(rung, "smaller_tiles"):
        return base
    divisor = 4 if reaches(rung, "smallest_tiles") else 2
    side = min(spec.tile_pixels, max(spec.height, spec.width)) / divisor
    tile = _down32(side, 64)
    return Tiling(
        tile_pixels=tile,
        tile_overlap=min(spec.tile_overlap, _down32(tile / 4, 0)),
        decode_tile_pixels=_down32(spec.decode_tile_pixels / divisor, 96),
        decode_tile_frames=max(32, spec.decode_tile_frames // divisor // 8 * 8),
    )
