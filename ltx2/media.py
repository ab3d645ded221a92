"""MP4 muxing and probing through PyAV (FFmpeg): H.264 video, AAC stereo audio.

Audio is fitted to the video's duration (trimmed, or padded with silence by at most a few milliseconds
of vocoder rounding) so the two streams agree within one AAC frame. Files are written to a temporary
name beside the target and renamed into place: a crash never leaves a truncated MP4 under the real name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

AAC_FRAME_SAMPLES = 1024


def fps_fraction(fps: float) -> Fraction:
    """An exact rational frame rate: 24 → 24/1, 23.976 → 24000/1001."""
    return Fraction(fps).limit_denominator(1001)


def fit_audio(waveform: torch.Tensor, sample_rate: int, num_frames: int, fps: float) -> np.ndarray:
    """Trim or zero-pad `waveform` [channels, samples] to exactly the video's duration; stereo float32."""
    audio = waveform.detach().float().cpu().numpy()
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.shape[0] == 1:
        audio = np.repeat(audio, 2, axis=0)
    target = round(num_frames / fps_fraction(fps) * sample_rate)
    short = max(0, target - audio.shape[1])
    audio = np.pad(audio[:, :target], ((0, 0), (0, short)))
    return np.ascontiguousarray(np.clip(audio, -1.0, 1.0), dtype=np.float32)


def write_mp4(
    path: Path, video: torch.Tensor, fps: float, audio: torch.Tensor | None, sample_rate: int, crf: int = 18
) -> Path:
    """Encode `video` (uint8 [frames, height, width, 3]) and `audio` ([channels, samples]) into `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    frames = video.detach().cpu().numpy()
    num_frames, height, width, _ = frames.shape
    rate = fps_fraction(fps)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            vstream = container.add_stream("libx264", rate=rate)
            vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
            vstream.options = {"crf": str(crf), "preset": "medium"}
            astream = None
            if audio is not None:
                astream = container.add_stream("aac", rate=sample_rate)
                astream.layout = "stereo"
            for i, array in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                frame.pts = i
                frame.time_base = 1 / rate
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))
            if astream is not None:
                samples = fit_audio(audio, sample_rate, num_frames, fps)
                for start in range(0, samples.shape[1], AAC_FRAME_SAMPLES):
                    chunk = samples[:, start : start + AAC_FRAME_SAMPLES]
                    aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="stereo")
                    aframe.sample_rate = sample_rate
                    aframe.pts = start
                    aframe.time_base = Fraction(1, sample_rate)
                    container.mux(astream.encode(aframe))
                container.mux(astream.encode(None))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class MediaInfo:
    """What a muxed file holds, read back by decoding it."""

    video_codec: str
    width: int
    height: int
    frames: int
    fps: float
    video_seconds: float
    audio_codec: str | None
    sample_rate: int | None
    channels: int | None
    audio_seconds: float | None


def probe_mp4(path: Path) -> MediaInfo:
    """Decode every video frame and audio sample of `path` and report streams and durations."""
    with av.open(str(path)) as container:
        vstream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(vstream))
        fps = float(vstream.average_rate or vstream.base_rate)
        info = dict(video_codec=vstream.codec_context.name, width=vstream.width, height=vstream.height)
    audio_codec = sample_rate = channels = audio_seconds = None
    with av.open(str(path)) as container:
        if container.streams.audio:
            astream = container.streams.audio[0]
            audio_codec, sample_rate = astream.codec_context.name, astream.codec_context.sample_rate
            channels = astream.codec_context.channels
            samples = sum(f.samples for f in container.decode(astream))
            audio_seconds = samples / sample_rate
    return MediaInfo(
        frames=frames,
        fps=fps,
        video_seconds=frames / fps,
        audio_codec=audio_codec,
        sample_rate=sample_rate,
        channels=channels,
        audio_seconds=audio_seconds,
        **info,
    )
