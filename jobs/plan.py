"""Job → plan: the task graph a coordinator runs over GPU workers. Pure: no torch, no Ray.

text encode (once per distinct prompt) → stage-1 temporal chunks (each conditioned on the previous
chunk's tail, video and audio) → stitch (latent cross-fade) → latent ×2 upsample → stage-2 refine in
spatio-temporal tiles, blended at every step → tiled VAE decode → audio decode → mux.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from jobs.fallback import Tiling, effective_tiling
from jobs.geometry import (
    VIDEO_SPACE_SCALE,
    VIDEO_TIME_SCALE,
    Span,
    TemporalChunk,
    Tile,
    audio_latent_frames,
    plan_chunks,
    plan_tiles,
    video_latent_frames,
)
from jobs.spec import OFFICIAL_NEGATIVE_PROMPT, FieldProblem, JobValidationError, ValidJob

TaskKind = Literal[
    "encode", "audio_encode", "stage1", "stitch", "upsample", "stage2_init", "stage2", "blend", "decode", "audio", "mux"
]
LOCAL_KINDS = frozenset({"stitch", "blend", "mux"})
"""Cheap steps the coordinator runs itself; everything else runs on a GPU worker."""


@dataclass(frozen=True)
class Task:
    id: str
    kind: TaskKind
    deps: tuple[str, ...] = ()
    args: tuple[tuple[str, Any], ...] = ()

    def arg(self, name: str) -> Any:
        return dict(self.args)[name]


@dataclass(frozen=True)
class DecodeTiling:
    """VAE decode tiles (ltx-core's TilingConfig semantics) and how many tiles that makes."""

    tile_pixels: int
    overlap_pixels: int
    tile_frames: int
    overlap_frames: int
    spatial_tiles: int
    temporal_tiles: int

    @property
    def tiles(self) -> tuple[int, int, int, int]:
        """(tile pixels, overlap pixels, tile frames, overlap frames): what the decoder's tiling takes."""
        return (self.tile_pixels, self.overlap_pixels, self.tile_frames, self.overlap_frames)


@dataclass(frozen=True)
class JobPlan:
    job: ValidJob
    prompts: tuple[str, ...]
    """Distinct texts to encode; the negative prompt (two_stage) is the last one."""
    chunk_prompt: tuple[int, ...]
    chunk_seed: tuple[int, ...]
    chunks: tuple[TemporalChunk, ...]
    tiles: tuple[Tile, ...]
    latent_frames: int
    latent_height: int
    latent_width: int
    audio_latents: int
    decode: DecodeTiling
    stage2_steps: int
    tasks: tuple[Task, ...] = field(repr=False)
    chunk_images: tuple[tuple[tuple[int, int], ...], ...] = ()
    """Per chunk: (index in the job's `images`, frame within the chunk) of the images it is conditioned on."""

    @property
    def refine_audio(self) -> bool:
        """Untiled stage 2 refines audio as the official pipeline does; tiled stage 2 keeps stage-1 audio, and
        an audio-to-video job keeps its track's latent throughout."""
        return len(self.tiles) == 1 and self.job.spec.audio is None

    @property
    def trivial(self) -> bool:
        return len(self.chunks) == 1 and len(self.tiles) == 1

    def summary(self) -> dict[str, Any]:
        spec = self.job.spec
        kinds: dict[str, int] = {}
        for t in self.tasks:
            kinds[t.kind] = kinds.get(t.kind, 0) + 1
        return {
            "output": {
                "width": spec.width,
                "height": spec.height,
                "frames": self.job.num_frames,
                "fps": spec.frame_rate,
                "seconds": round((self.job.num_frames - 1) / spec.frame_rate, 3),
            },
            "latents": {
                "video": [self.latent_frames, self.latent_height, self.latent_width],
                "audio": self.audio_latents,
            },
            "prompts": list(self.prompts),
            "chunks": [
                {
                    "index": c.index,
                    "video_latents": [c.video.start, c.video.stop],
                    "audio_latents": [c.audio.start, c.audio.stop],
                    "frames": c.num_frames,
                    "first_frame": c.first_frame,
                    "overlap_video": c.overlap_video,
                    "overlap_audio": c.overlap_audio,
                    "prompt": self.chunk_prompt[c.index],
                    "seed": self.chunk_seed[c.index],
                    "images": [list(x) for x in self.chunk_images[c.index]] if self.chunk_images else [],
                }
                for c in self.chunks
            ],
            "stage2_tiles": [
                {
                    "index": t.index,
                    "time": [t.time.start, t.time.stop],
                    "height": [t.height.start, t.height.stop],
                    "width": [t.width.start, t.width.stop],
                    "tokens": t.tokens,
                }
                for t in self.tiles
            ],
            "refine_audio": self.refine_audio,
            "decode": {
                "spatial_tiles": self.decode.spatial_tiles,
                "temporal_tiles": self.decode.temporal_tiles,
                "tile_pixels": self.decode.tile_pixels,
                "tile_frames": self.decode.tile_frames,
            },
            "tasks": kinds,
        }


def chunk_seed(seed: int, index: int) -> int:
    """Chunk 0 uses the job's seed (so a one-chunk plan is the plain render); later chunks derive theirs."""
    if index == 0:
        return seed
    return int(hashlib.sha256(f"ltx2-farm/chunk/{seed}/{index}".encode()).hexdigest()[:15], 16)


def _official_spatial_split(length: int, size: int, overlap: int) -> int:
    """Tile count of ltx-core's `split_with_symmetric_overlaps` (the VAE decode tiler)."""
    if length <= size:
        return 1
    return (length + size - 2 * overlap - 1) // (size - overlap)


def _decode_tiling(spec: Tiling, frames_latent: int, height: int, width: int) -> DecodeTiling:
    """Mirror of `VideoDecoder._prepare_tiles` counts for TilingConfig(spatial, temporal)."""
    size, overlap = spec.decode_tile_pixels // VIDEO_SPACE_SCALE, 64 // VIDEO_SPACE_SCALE
    long_side = max(height, width)
    spatial = 1
    for axis in (height, width):
        tile = max(max(2, overlap + 1), round(size * axis / long_side))
        spatial *= _official_spatial_split(axis, tile, overlap)
    t_size, t_overlap = spec.decode_tile_frames // VIDEO_TIME_SCALE, 24 // VIDEO_TIME_SCALE
    temporal = _official_spatial_split(frames_latent, t_size, t_overlap)
    return DecodeTiling(spec.decode_tile_pixels, 64, spec.decode_tile_frames, 24, spatial, temporal)


def decode_tiling(job: ValidJob) -> DecodeTiling:
    """The job's VAE decode tiles (the spec's, or an OOM-ladder rung's smaller ones), whichever path renders it."""
    spec = job.spec
    latent_h, latent_w = spec.height // VIDEO_SPACE_SCALE, spec.width // VIDEO_SPACE_SCALE
    return _decode_tiling(effective_tiling(job, job.fallback), video_latent_frames(job.num_frames), latent_h, latent_w)


def plan_job(job: ValidJob) -> JobPlan:
    """The whole task graph of one job."""
    spec = job.spec
    fps = spec.frame_rate
    chunks = plan_chunks(job.num_frames, fps, spec.chunk_seconds, spec.chunk_overlap)
    prompts = spec.prompts()
    if len(prompts) > len(chunks):
        raise JobValidationError(
            [
                FieldProblem(
                    "prompt",
                    spec.prompt,
                    f"gives {len(prompts)} prompts but the job has {len(chunks)} chunk(s) "
                    f"of ≤ {spec.chunk_seconds:g} s",
                    None,
                )
            ]
        )
    chunk_prompt = tuple(i * len(prompts) // len(chunks) for i in range(len(chunks)))
    texts = list(dict.fromkeys(prompts))
    chunk_prompt = tuple(texts.index(prompts[p]) for p in chunk_prompt)
    negative_index = None
    if spec.recipe == "two_stage":
        negative = spec.negative_prompt if spec.negative_prompt is not None else OFFICIAL_NEGATIVE_PROMPT
        if negative not in texts:
            texts.append(negative)
        negative_index = texts.index(negative)

    frames_latent = video_latent_frames(job.num_frames)
    lh, lw = spec.height // VIDEO_SPACE_SCALE, spec.width // VIDEO_SPACE_SCALE
    tiling = effective_tiling(job, job.fallback)  # the spec's tiles, or an OOM-ladder rung's smaller ones
    tile = max(1, tiling.tile_pixels // VIDEO_SPACE_SCALE)
    overlap = tiling.tile_overlap // VIDEO_SPACE_SCALE
    time_spans = tuple(c.video for c in chunks)
    tiles = plan_tiles(time_spans, lh, lw, tile, min(overlap, tile - 1))
    decode = decode_tiling(job)

    tasks: list[Task] = [Task(f"encode:{i}", "encode", (), (("text", t),)) for i, t in enumerate(texts)]
    if spec.audio is not None:  # audio-to-video: the track is encoded once, each chunk takes its span
        tasks.append(Task("audio_encode", "audio_encode"))
    for c in chunks:
        deps = [f"encode:{chunk_prompt[c.index]}"] + (["audio_encode"] if spec.audio is not None else [])
        if negative_index is not None:
            deps.append(f"encode:{negative_index}")
        if c.index:
            deps.append(f"stage1:{c.index - 1}")
        tasks.append(Task(f"stage1:{c.index}", "stage1", tuple(deps), (("chunk", c.index),)))
    # Every task names all it reads: the stitch of an audio-to-video job takes the track's encoding as the audio
    # latent, a stage-2 tile its window's prompt (a job resumed from kept results runs only what these lead to).
    stitch_deps = [f"stage1:{c.index}" for c in chunks] + (["audio_encode"] if spec.audio is not None else [])
    tasks.append(Task("stitch", "stitch", tuple(stitch_deps)))
    tasks.append(Task("upsample", "upsample", ("stitch",)))
    tasks.append(Task("stage2_init", "stage2_init", ("upsample",)))
    steps = 3
    previous = "stage2_init"
    for step in range(steps):
        tile_ids = []
        for t in tiles:
            tile_ids.append(f"stage2:{step}:{t.index}")
            prompt = next(f"encode:{chunk_prompt[c.index]}" for c in chunks if c.video == t.time)
            tasks.append(Task(tile_ids[-1], "stage2", (previous, prompt), (("step", step), ("tile", t.index))))
        tasks.append(Task(f"blend:{step}", "blend", tuple(tile_ids), (("step", step),)))
        previous = f"blend:{step}"
    tasks.append(Task("decode", "decode", (previous,)))
    if spec.audio is None:
        tasks.append(Task("audio", "audio", (previous,)))
    tasks.append(Task("mux", "mux", ("decode", "audio") if spec.audio is None else ("decode",)))
    return JobPlan(
        job=job,
        prompts=tuple(texts),
        chunk_prompt=chunk_prompt,
        chunk_seed=tuple(chunk_seed(spec.seed, c.index) for c in chunks),
        chunks=chunks,
        tiles=tiles,
        latent_frames=frames_latent,
        latent_height=lh,
        latent_width=lw,
        audio_latents=audio_latent_frames(job.num_frames, fps),
        decode=decode,
        stage2_steps=steps,
        tasks=tuple(tasks),
        chunk_images=images_by_chunk(chunks, [image.frame for image in spec.images]),
    )


def images_by_chunk(chunks: tuple[TemporalChunk, ...], frames: list[int]) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Which chunk renders each conditioning image, at which of its frames.

    An image lands in the first chunk that holds its frame (a frame in an overlap belongs to the earlier
    chunk; the later one inherits it through the tail it is conditioned on). So a frame-0 image stays the
    first frame of chunk 0 and no keyframe lands on a later chunk's frame 0, which its tail occupies.
    """
    placed: list[list[tuple[int, int]]] = [[] for _ in chunks]
    for i, frame in enumerate(frames):
        chunk = next(c for c in chunks if c.first_frame <= frame < c.first_frame + c.num_frames)
        placed[chunk.index].append((i, frame - chunk.first_frame))
    return tuple(tuple(p) for p in placed)


def time_origin_seconds(span: Span, fps: float) -> float:
    """Clock start of a temporal window: the time of its first latent's frame."""
    return span.start * VIDEO_TIME_SCALE / fps


def describe(plan: JobPlan) -> str:
    """Human-readable plan for `ltx2-farm plan`."""
    s = plan.summary()
    out = s["output"]
    lines = [
        f"job: {out['width']}x{out['height']}, {out['frames']} frames @ {out['fps']:g} fps ({out['seconds']} s), "
        f"recipe {plan.job.spec.recipe}",
        f"latents: video {s['latents']['video']} (t,h,w), audio {s['latents']['audio']}",
        f"text encode: {len(plan.prompts)} distinct prompt(s)",
        f"stage 1: {len(plan.chunks)} chunk(s) at {out['width'] // 2}x{out['height'] // 2}",
    ]
    for c in s["chunks"]:
        lines.append(
            f"  chunk {c['index']}: video latents {c['video_latents']}, audio latents {c['audio_latents']}, "
            f"{c['frames']} frames from frame {c['first_frame']}, overlap {c['overlap_video']} video / "
            f"{c['overlap_audio']} audio latents, prompt {c['prompt']}, seed {c['seed']}"
        )
    lines.append(
        f"stage 2: {len(plan.tiles)} tile(s) x {plan.stage2_steps} steps, blended every step; audio "
        f"{'refined (untiled)' if plan.refine_audio else 'kept from stage 1 (tiled)'}"
    )
    for t in s["stage2_tiles"]:
        lines.append(f"  tile {t['index']}: t{t['time']} h{t['height']} w{t['width']} ({t['tokens']} tokens)")
    d = s["decode"]
    lines.append(f"decode: {d['spatial_tiles']} spatial x {d['temporal_tiles']} temporal VAE tiles; one audio decode")
    lines.append("tasks: " + ", ".join(f"{k} {v}" for k, v in s["tasks"].items()))
    return "\n".join(lines)


def describe_task(label: str) -> str:
    """A task id in words, for errors: 'stage1:2' → 'stage 1, chunk 2'; 'stage2:1:3' → 'stage 2 step 1, tile 3'."""
    kind, _, rest = label.partition(":")
    parts = rest.split(":") if rest else []
    if kind == "stage1" and parts:
        return f"stage 1, chunk {parts[0]}"
    if kind == "stage2" and len(parts) == 2:
        return f"stage 2 step {parts[0]}, tile {parts[1]}"
    if kind == "decode" and len(parts) == 2:
        return f"VAE decode, time group {parts[0]} tile {parts[1]}"
    if kind == "encode":
        return f"text encoding of prompt {rest}"
    return kind.replace("_", " ")
