"""What a job that ran out of GPU memory is retried with: the OOM ladder. Pure: no torch, no Ray.

Each out-of-memory attempt moves the job one rung down: smaller stage-2 and decode tiles, then the
smallest tiles, then the text encoder offloaded to host memory while the transformer runs. A rung changes
how the job runs, never what it asks for: the job keeps its name and identity, and its sidecar says which
rung rendered it (tiles change the pixels slightly at seams; the offload changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.spec import JobSpec, ValidJob

OOM_LADDER: tuple[str, ...] = ("smaller_tiles", "smallest_tiles", "offload_text_encoder")


def rung_after(oom_attempts: int) -> str | None:
    """The rung for a job that has run out of memory `oom_attempts` times; None when the ladder is spent."""
    if oom_attempts <= 0:
        return None
    return OOM_LADDER[oom_attempts - 1] if oom_attempts <= len(OOM_LADDER) else None


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
    so even a one-piece job is split) and the decode tiles; `smallest_tiles` quarters them."""
    spec: JobSpec = job.spec
    base = Tiling(spec.tile_pixels, spec.tile_overlap, spec.decode_tile_pixels, spec.decode_tile_frames)
    if rung not in ("smaller_tiles", "smallest_tiles"):
        return base
    divisor = 2 if rung == "smaller_tiles" else 4
    side = min(spec.tile_pixels, max(spec.height, spec.width)) / divisor
    tile = _down32(side, 64)
    return Tiling(
        tile_pixels=tile,
        tile_overlap=min(spec.tile_overlap, _down32(tile / 4, 0)),
        decode_tile_pixels=_down32(spec.decode_tile_pixels / divisor, 96),
        decode_tile_frames=max(32, spec.decode_tile_frames // divisor // 8 * 8),
    )
