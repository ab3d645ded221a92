"""The tiled VAE decode of a whole job, handing out each run of frames as soon as it is final.

ltx-core's `VideoDecoder.tiled_decode` yields a temporal group's frames only after it has decoded the next group,
although the frames that group does not overlap are final before it starts. The worker encodes runs into the
MP4 while the GPU decodes the next ones, so with ltx-core's order at 704x1280x121 (three groups) two of the
three runs would be encoded after the decode has ended, x264 time added after the model work (bench/README.md).
`early_tiled_decode` is the
same arithmetic in the same order, with each yield moved ahead of the next group's decode; `decode_video_runs`
is ltx-core's `decode_video` (uint8 conversion included) over it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from ltx_core.model.video_vae import decode_video
from ltx_core.model.video_vae.video_vae import VideoDecoder, VideoLatentShape


def early_tiled_decode(
    decoder: VideoDecoder,
    latent: torch.Tensor,
    tiling_config: object,
    timestep: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """`decoder.tiled_decode(...)`'s chunks, the same values, each yielded once no later temporal group touches it."""
    full_shape = VideoLatentShape.from_torch_shape(latent.shape).upscale(decoder.video_downscale_factors)
    groups = decoder._group_tiles_by_temporal_slice(decoder._prepare_tiles(latent, tiling_config))
    starts = [group[0].out_coords[2].start for group in groups]
    previous: tuple[torch.Tensor, torch.Tensor, slice] | None = None  # values, weights, frames of the last group
    for index, group in enumerate(groups):
        frames = group[0].out_coords[2]
        buffer = torch.zeros(
            full_shape._replace(frames=frames.stop - frames.start).to_torch_shape(),
            device=latent.device,
            dtype=latent.dtype,
        )
        weights = decoder._accumulate_temporal_group_into_buffer(
            group_tiles=group, buffer=buffer, latent=latent, timestep=timestep, generator=generator
        )
        if previous is not None and previous[2].stop > frames.start:  # blend the overlap, as ltx-core does
            before, before_weights, before_frames = previous
            overlap = slice(frames.start - before_frames.start, None)
            length = before_frames.stop - frames.start
            before[:, :, overlap] += buffer[:, :, :length]
            before_weights[:, :, overlap] += weights[:, :, :length]
            buffer[:, :, :length] = before[:, :, overlap]
            weights[:, :, :length] = before_weights[:, :, overlap]
        final = (starts[index + 1] if index + 1 < len(groups) else frames.stop) - frames.start
        yield (buffer / weights.clamp(min=1e-8))[:, :, :final]  # no later group adds to these frames
        previous = (buffer, weights, frames)


class _EarlyRuns:
    """A video decoder whose tiled decode is `early_tiled_decode` (for ltx-core's `decode_video`)."""

    def __init__(self, decoder: VideoDecoder) -> None:
        self.decoder = decoder

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.decoder(*args, **kwargs)

    def tiled_decode(self, latent, tiling_config=None, timestep=None, generator=None) -> Iterator[torch.Tensor]:
        return early_tiled_decode(self.decoder, latent, tiling_config, timestep, generator)


def decode_video_runs(
    latent: torch.Tensor, decoder: VideoDecoder, tiling_config: object | None = None, generator=None
) -> Iterator[torch.Tensor]:
    """ltx-core's `decode_video` (uint8 [f, h, w, c] runs), each run out as soon as it is final."""
    return decode_video(latent, _EarlyRuns(decoder), tiling_config, generator)
