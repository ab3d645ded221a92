"""MP4 muxing and probing through PyAV (FFmpeg): H.264 video, AAC stereo audio.

Audio is fitted to the video's duration (trimmed, or padded with silence by at most a few milliseconds
of vocoder rounding) so the two streams agree within one AAC frame. Files are written to a temporary
name beside the target and renamed into place: a crash never leaves a truncated MP4 under the real name.
"""

from __future__ import annotations

import contextlib
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


class Mp4Writer:
    """Streams frames into an MP4 (H.264) as they are decoded, then adds the audio (AAC) and closes.

    Frames are never all in memory at once. The file appears under its real name only after `close`.
    """

    def __init__(
        self, path: Path, fps: float, width: int, height: int, sample_rate: int | None = None, crf: int = 18
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self.frames_written = 0
        self._tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        self._rate = fps_fraction(fps)
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        self._video = self._container.add_stream("libx264", rate=self._rate)
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._video.options = {"crf": str(crf), "preset": "medium"}
        self._audio = None
        if sample_rate is not None:
            self._audio = self._container.add_stream("aac", rate=sample_rate)
            self._audio.layout = "stereo"

    def add_frames(self, frames: torch.Tensor) -> None:
        """Append uint8 frames [n, height, width, 3]."""
        for array in frames.detach().cpu().numpy():
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = self.frames_written
            frame.time_base = 1 / self._rate
            self._container.mux(self._video.encode(frame))
            self.frames_written += 1

    def close(self, audio: torch.Tensor | None = None) -> Path:
        """Flush the video, add `audio` fitted to the video's duration, and move the file into place."""
        try:
            self._container.mux(self._video.encode(None))
            astream = self._audio
            if (audio is None) != (astream is None):
                raise ValueError("audio must be given exactly when the writer was opened with a sample rate")
            if astream is not None:
                sample_rate = astream.rate
                samples = fit_audio(audio, sample_rate, self.frames_written, self.fps)
                for start in range(0, samples.shape[1], AAC_FRAME_SAMPLES):
                    chunk = np.ascontiguousarray(samples[:, start : start + AAC_FRAME_SAMPLES])
                    aframe = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                    aframe.sample_rate = sample_rate
                    aframe.pts = start
                    aframe.time_base = Fraction(1, sample_rate)
                    self._container.mux(astream.encode(aframe))
                self._container.mux(astream.encode(None))
            self._container.close()
            os.replace(self._tmp, self.path)
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Drop the partial file (after a failure)."""
        with contextlib.suppress(Exception):
            self._container.close()
        self._tmp.unlink(missing_ok=True)


def write_mp4(
    path: Path, video: torch.Tensor, fps: float, audio: torch.Tensor | None, sample_rate: int, crf: int = 18
) -> Path:
    """Encode `video` (uint8 [frames, height, width, 3]) and `audio` ([channels, samples]) into `path`."""
    _, height, width, _ = video.shape
    writer = Mp4Writer(path, fps, width, height, sample_rate if audio is not None else None, crf)
    try:
        writer.add_frames(video)
        return writer.close(audio)
    except BaseException:
        writer.abort()
        raise


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
