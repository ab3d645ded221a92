"""IC-LoRA control passes: the reference video a job follows, made (canny) and loaded the official way.

The official IC-LoRA pipeline appends the encoded reference video's tokens to stage 1's sequence
(`VideoConditionByReferenceLatent`, at the stage's size divided by the LoRA's `reference_downscale_factor`)
with the IC-LoRA fused, and refines stage 2 without either. A temporal chunk takes the reference frames
of its own span, so the control stays in step with the target.
"""

from __future__ import annotations

import functools
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from ltx2.models import ResidentModels


def video_frame_count(path: str) -> int:
    """Frames of a file's first video stream, by decoding (container counts are often missing). Decoded once
    per file version: validation checks the video, then its length."""
    stat = os.stat(path)
    return _video_frame_count(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _video_frame_count(path: str, _size: int, _mtime_ns: int) -> int:
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("has no video stream")
        return sum(1 for _ in container.decode(video=0))


def canny_pass(source: str, out: Path, low: int, high: int) -> Path:
    """OpenCV Canny edges of every frame of `source`, written losslessly (FFV1 in Matroska) at its frame rate.

    Deterministic for a given source and thresholds, so the result is cached under a name made of them.
    """
    import cv2

    out = Path(out)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        with av.open(source) as src, av.open(str(tmp), "w", format="matroska") as dst:
            stream_in = src.streams.video[0]
            rate = Fraction(stream_in.average_rate or 24).limit_denominator(1001)
            stream = dst.add_stream("ffv1", rate=rate)
            stream.width, stream.height, stream.pix_fmt = stream_in.width, stream_in.height, "bgr0"
            for index, frame in enumerate(src.decode(stream_in)):
                gray = cv2.cvtColor(frame.to_ndarray(format="rgb24"), cv2.COLOR_RGB2GRAY)
                edges = cv2.Canny(gray, low, high)
                rgb = np.ascontiguousarray(np.repeat(edges[:, :, None], 3, axis=2))
                picture = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                picture.pts = index
                dst.mux(stream.encode(picture))
            dst.mux(stream.encode(None))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def reference_downscale_factor(lora_path: str) -> int:
    """The IC-LoRA's trained reference/target size ratio, from its metadata (the official reader)."""
    from ltx_pipelines.ic_lora import _read_lora_reference_downscale_factor

    return _read_lora_reference_downscale_factor(lora_path)


def load_reference(
    path: str, first_frame: int, num_frames: int, height: int, width: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Frames [first_frame, first_frame + num_frames) of the reference as the official loader prepares
    them (resized and centre-cropped, normalised): [1, 3, F, H, W]."""
    from ltx_pipelines.utils.media_io import decode_video_from_file, normalize_latent, resize_and_center_crop

    frames = []
    for index, frame in enumerate(decode_video_from_file(path, first_frame + num_frames, device)):
        if index >= first_frame:
            frames.append(
                normalize_latent(resize_and_center_crop(frame.to(torch.float32), height, width), device, dtype)
            )
    if len(frames) < num_frames:
        raise ValueError(
            f"{path}: the control video has {first_frame + len(frames)} frames; the job needs "
            f"{first_frame + num_frames}"
        )
    return torch.cat(frames, dim=2)


def reference_conditioning(
    models: ResidentModels,
    control: tuple[str, int, float],
    first_frame: int,
    num_frames: int,
    height: int,
    width: int,
) -> list:
    """The official reference conditioning of a stage-1 chunk: (reference path, downscale factor, strength)."""
    from ltx_core.conditioning import VideoConditionByReferenceLatent

    path, downscale, strength = control
    if height % downscale or width % downscale:
        raise ValueError(
            f"the stage-1 size {width}x{height} is not divisible by the IC-LoRA's reference "
            f"downscale factor {downscale}"
        )
    video = load_reference(
        path, first_frame, num_frames, height // downscale, width // downscale, models.dtype, models.device
    )
    latent = models.video_encoder(video)
    return [VideoConditionByReferenceLatent(latent=latent, downscale_factor=downscale, strength=strength)]
