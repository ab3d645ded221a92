"""The tensor arithmetic of a plan split into chunks and tiles: cross-fading stage-1 chunks, anchoring their
colours, blending stage-2 tile predictions, and ltx-core's VAE decode tiles with their blending.

All on the CPU, without model weights: the coordinator runs these between the workers' tasks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ltx2 import stages

if TYPE_CHECKING:
    from ltx_core.model.video_vae import TilingConfig

    from jobs.plan import JobPlan


def crossfade_into(target: torch.Tensor, chunk: torch.Tensor, start: int, overlap: int) -> None:
    """Write `chunk` into `target` along dim 2 from `start`, cross-fading its first `overlap` entries
    linearly from what `target` holds (the previous chunk) to the chunk's own values."""
    if overlap:
        w = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        w = w.view(1, 1, overlap, *([1] * (chunk.dim() - 3)))
        old = target[:, :, start : start + overlap].float()
        target[:, :, start : start + overlap] = (old * (1 - w) + chunk[:, :, :overlap].float() * w).to(target.dtype)
    target[:, :, start + overlap : start + chunk.shape[2]] = chunk[:, :, overlap:]


def anchor_statistics(chunk: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Match each latent channel's mean and std to the reference chunk's (against colour drift)."""
    dims = tuple(d for d in range(chunk.dim()) if d != 1)
    c = chunk.float()
    ref = reference.float()
    out = (c - c.mean(dims, keepdim=True)) / (c.std(dims, keepdim=True) + 1e-6)
    out = out * ref.std(dims, keepdim=True) + ref.mean(dims, keepdim=True)
    return out.to(chunk.dtype)


def tile_weights(tile: Any, frames: torch.Tensor) -> torch.Tensor:
    """Blend weight of each of a stage-2 tile's tokens (`stages.tile_tokens` order): the product of its time,
    row and column ramps; a keyframe token weighs as the grid token it overlays."""
    t = torch.tensor(tile.time_weights, dtype=torch.float32)[frames - tile.time.start]
    hw = (
        torch.tensor(tile.height_weights, dtype=torch.float32)[:, None]
        * torch.tensor(tile.width_weights, dtype=torch.float32)[None, :]
    ).reshape(-1)
    return t * hw.repeat(len(frames) // len(hw))


def blend_tiles(plan: JobPlan, state: stages.Stage2State, predictions: list[torch.Tensor]) -> torch.Tensor:
    """Full X0 prediction (grid and keyframe tokens) from tile predictions, weights normalised per token."""
    tokens, channels = state.video.latent.shape[1], state.video_shape[1]
    acc = torch.zeros(1, tokens, channels, dtype=torch.float32)
    norm = torch.zeros(tokens, dtype=torch.float32)
    for tile, pred in zip(plan.tiles, predictions, strict=True):
        index, frames = stages.tile_tokens(
            state.video_shape,
            state.keyframes,
            (tile.time.start, tile.time.stop),
            (tile.height.start, tile.height.stop),
            (tile.width.start, tile.width.stop),
        )
        w = tile_weights(tile, frames)
        acc[:, index] += pred.float() * w[None, :, None]
        norm[index] += w
    return (acc / norm[None, :, None]).to(predictions[0].dtype)


def official_decode_tiles(latent: torch.Tensor, tiling: TilingConfig) -> list[Any]:
    """ltx-core's decode tiles for this latent (its `VideoDecoder._prepare_tiles`, on a meta-device decoder:
    only the geometry is used, so no weights are needed)."""
    from ltx_core.model.video_vae import VideoDecoder

    with torch.device("meta"):
        decoder = VideoDecoder(decoder_blocks=[])
    return decoder._prepare_tiles(torch.empty(latent.shape, device="meta"), tiling)


def accumulate_group(tiles: list[Any], decoded: list[torch.Tensor], height: int, width: int) -> tuple:
    """One temporal group of decoded tiles of a `height` x `width` video, blended with their trapezoid masks
    (as `tiled_decode` does): (weighted sum, weights, the group's frames)."""
    temporal = tiles[0].out_coords[2]
    frames = temporal.stop - temporal.start
    dtype = decoded[0].dtype  # the decoder's dtype, as in tiled_decode (one tile → the untiled result exactly)
    buffer = torch.zeros(1, 3, frames, height, width, dtype=dtype)
    weights = torch.zeros_like(buffer)
    for tile, pixels in zip(tiles, decoded, strict=True):
        mask = tile.blend_mask.to(dtype)
        offset = tile.out_coords[2].start - temporal.start
        length = min(tile.out_coords[2].stop - tile.out_coords[2].start, pixels.shape[2], frames - offset)
        coords = (slice(None), slice(None), slice(offset, offset + length), tile.out_coords[3], tile.out_coords[4])
        m = mask[:, :, :length] if mask.shape[2] > 1 else mask
        buffer[coords] += pixels[:, :, :length] * m
        weights[coords] += m
    return buffer, weights, temporal
