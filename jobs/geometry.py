"""Latent-grid geometry of a job: temporal chunks, spatial tiles, blend ramps. Pure Python.

Conventions (LTX-2's VAE): video latent frame 0 holds pixel frame 0; latent j ≥ 1 holds frames 8j-7..8j.
A clip of F = 8k+1 frames has k+1 latents. Audio has 25 latents a second; a clip of F frames at `fps` has
round(F / fps * 25) audio latents (ltx-core's `AudioLatentShape.from_video_pixel_shape`).

A temporal chunk is a clip of its own that starts at global video latent `start`: its latent 0 stands for
pixel frame 8*start. A chunk may start only where that frame time is a whole number of audio latents
(`cut_unit`), so both modalities are cut on whole latents: at 24 fps every 3 latents (1 s), at 25 fps
every latent (8 frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

VIDEO_TIME_SCALE = 8
VIDEO_SPACE_SCALE = 32
AUDIO_LATENTS_PER_SECOND = 25
MAX_CHUNK_SECONDS = 20.0


def video_latent_frames(num_frames: int) -> int:
    """Latent frames of an 8k+1-frame clip."""
    return (num_frames - 1) // VIDEO_TIME_SCALE + 1


def pixel_frames(latent_frames: int) -> int:
    """Pixel frames decoded from `latent_frames` latents (8k+1)."""
    return (latent_frames - 1) * VIDEO_TIME_SCALE + 1


def audio_latent_frames(num_frames: int, fps: float) -> int:
    """Audio latents of a clip, exactly as ltx-core computes them (banker's rounding included)."""
    return round(float(num_frames) / float(fps) * AUDIO_LATENTS_PER_SECOND)


def cut_unit(fps: float) -> int:
    """Smallest number of video latents whose duration is a whole number of audio latents."""
    per_latent = Fraction(VIDEO_TIME_SCALE * AUDIO_LATENTS_PER_SECOND) / Fraction(fps).limit_denominator(1001)
    return per_latent.denominator // math.gcd(per_latent.numerator, per_latent.denominator)


def audio_index_at_video_latent(start: int, fps: float) -> int:
    """Audio latent index at the time of video latent `start`'s last frame (exact on cut boundaries)."""
    value = Fraction(start * VIDEO_TIME_SCALE * AUDIO_LATENTS_PER_SECOND) / Fraction(fps).limit_denominator(1001)
    if value.denominator != 1:
        raise ValueError(f"video latent {start} is not on an audio-latent boundary at {fps} fps")
    return int(value)


@dataclass(frozen=True)
class Span:
    """A half-open range [start, stop) of latent indices along one axis."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class TemporalChunk:
    """One stage-1 clip of a long job, in global latent coordinates of both modalities."""

    index: int
    video: Span
    audio: Span
    overlap_video: int
    """Latents at the start shared with the previous chunk (conditioned on its tail, then cross-faded)."""
    overlap_audio: int

    @property
    def num_frames(self) -> int:
        return pixel_frames(self.video.size)

    @property
    def first_frame(self) -> int:
        """Global pixel frame shown by the chunk's latent 0."""
        return self.video.start * VIDEO_TIME_SCALE


def plan_chunks(num_frames: int, fps: float, max_seconds: float, overlap_seconds: float) -> tuple[TemporalChunk, ...]:
    """Cut a clip into chunks of at most `max_seconds`, overlapping by at least `overlap_seconds`.

    Starts fall on `cut_unit` boundaries; every chunk is a valid 8k+1-frame clip; the chunks' audio spans
    tile the clip's audio latents exactly (the last chunk ends on the clip's last audio latent).
    """
    if num_frames < 1 or (num_frames - 1) % VIDEO_TIME_SCALE:
        raise ValueError(f"{num_frames} frames is not an 8k+1 frame count")
    total = video_latent_frames(num_frames)
    total_audio = audio_latent_frames(num_frames, fps)
    unit = cut_unit(fps)
    max_latents = int(max_seconds * fps) // VIDEO_TIME_SCALE + 1
    overlap = max(1, math.ceil(overlap_seconds * fps / VIDEO_TIME_SCALE))
    if max_latents - overlap <= unit and total > max_latents:
        raise ValueError(
            f"chunks of {max_seconds:g} s with {overlap_seconds:g} s overlap cannot advance on the "
            f"{unit * VIDEO_TIME_SCALE / fps:g} s cut grid at {fps:g} fps; use longer chunks or less overlap"
        )
    chunks: list[TemporalChunk] = []
    start, prev_stop, prev_audio_stop = 0, 0, 0
    while True:
        stop = min(total, start + max_latents)
        audio_start = audio_index_at_video_latent(start, fps)
        audio_stop = audio_start + audio_latent_frames(pixel_frames(stop - start), fps)
        chunks.append(
            TemporalChunk(
                index=len(chunks),
                video=Span(start, stop),
                audio=Span(audio_start, audio_stop),
                overlap_video=max(0, prev_stop - start) if chunks else 0,
                overlap_audio=max(0, prev_audio_stop - audio_start) if chunks else 0,
            )
        )
        if stop >= total:
            break
        prev_stop, prev_audio_stop = stop, audio_stop
        start = (stop - overlap) // unit * unit
    assert chunks[-1].audio.stop == total_audio, (chunks[-1], total_audio)
    return tuple(chunks)


def split_axis(length: int, tile: int, overlap: int) -> tuple[Span, ...]:
    """Cover [0, length) with spans of at most `tile`, consecutive spans overlapping by ≥ `overlap`.

    Spans are as equal as possible; a length that fits in one tile gives one span.
    """
    if length <= tile:
        return (Span(0, length),)
    if overlap >= tile:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile {tile}")
    count = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (count - 1) * overlap) / count)
    starts = [round(i * (length - size) / (count - 1)) for i in range(count)]
    return tuple(Span(s, s + size) for s in starts)


def ramp_weights(span: Span, length: int, neighbours: tuple[Span, ...]) -> tuple[float, ...]:
    """Trapezoid weights of `span` along an axis: linear ramps across the overlaps with its neighbours.

    Weights are strictly positive (the ramp steps are (i + 1) / (overlap + 1)), so normalising the sum of
    all tiles' weights gives a partition of unity everywhere, including where three tiles overlap.
    """
    left = max((n.stop - span.start for n in neighbours if n.start < span.start < n.stop), default=0)
    right = max((span.stop - n.start for n in neighbours if n.start < span.stop < n.stop), default=0)
    weights = []
    for i in range(span.size):
        w = 1.0
        if left and i < left:
            w = min(w, (i + 1) / (left + 1))
        if right and span.size - 1 - i < right:
            w = min(w, (span.size - i) / (right + 1))
        weights.append(w)
    assert 0 < span.size <= length
    return tuple(weights)


@dataclass(frozen=True)
class Tile:
    """A 3-D window (time, height, width) of the full-resolution latent grid, with its blend ramps."""

    index: int
    time: Span
    height: Span
    width: Span
    time_weights: tuple[float, ...]
    height_weights: tuple[float, ...]
    width_weights: tuple[float, ...]

    @property
    def tokens(self) -> int:
        return self.time.size * self.height.size * self.width.size


def plan_tiles(time_spans: tuple[Span, ...], height: int, width: int, tile: int, overlap: int) -> tuple[Tile, ...]:
    """Spatio-temporal tiles: the given temporal windows × spatial tiles of at most `tile` latents a side."""
    hs, ws = split_axis(height, tile, overlap), split_axis(width, tile, overlap)
    total_time = max(s.stop for s in time_spans)
    tiles = []
    for t in time_spans:
        tw = ramp_weights(t, total_time, time_spans)
        for h in hs:
            hw = ramp_weights(h, height, hs)
            for w in ws:
                tiles.append(Tile(len(tiles), t, h, w, tw, hw, ramp_weights(w, width, ws)))
    return tuple(tiles)


def weight_sums(tiles: tuple[Tile, ...], frames: int, height: int, width: int) -> list[list[list[float]]]:
    """Sum of all tiles' (unnormalised) weights at every latent cell; zero where no tile covers."""
    sums = [[[0.0] * width for _ in range(height)] for _ in range(frames)]
    for tile in tiles:
        for ti, t in enumerate(range(tile.time.start, tile.time.stop)):
            for hi, h in enumerate(range(tile.height.start, tile.height.stop)):
                row = sums[t][h]
                base = tile.time_weights[ti] * tile.height_weights[hi]
                for wi, w in enumerate(range(tile.width.start, tile.width.stop)):
                    row[w] += base * tile.width_weights[wi]
    return sums
