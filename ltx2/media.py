"""MP4 muxing and probing through PyAV (FFmpeg): H.264 video, AAC stereo audio.

Audio is fitted to the video's duration (trimmed, or padded with silence by at most a few milliseconds
of vocoder rounding) so the two streams agree within one AAC frame. Files are written to a temporary
name beside the target and renamed into place: a crash never leaves a truncated MP4 under the real name.

A user's audio track (audio-to-video) is carried unchanged: AAC from the start of an MP4/M4A/MOV file is
copied packet for packet (no re-encode, decodes bit for bit as the input); anything else (WAV, MP3, FLAC,
a start offset) is decoded, cut to the sample and stored as FLAC in the MP4: 16-bit sources bit for bit,
float-decoded ones (MP3, AAC) with 24 bits, within 2^-23 of the decoded input. (MP3 packets are not
copied: an MP4 has no place for the LAME header's encoder delay, so they would decode shifted.)
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

AAC_FRAME_SAMPLES = 1024
X264_PRESET = "veryfast"
"""libx264 preset: `veryfast` encodes about twice as fast as `medium` at the same CRF, and with `medium` the mux
is a large share of a warm job's time outside the model (bench/README.md, "Numbers behind the code")."""

X264_THREADS = "FRAME"
"""libx264 threads over frames, not slices of one frame (PyAV's default, SLICE): a faster encode and a smaller
file at the same CRF (bench/README.md, "Numbers behind the code")."""

X264_THREAD_COUNT = 16
"""libx264's thread count, fixed: x264's output depends on its thread count, and FFmpeg's default (auto) follows
the host's CPUs, so the same frames would give other bytes on a node of another size or CPU limit. 16 encodes
as fast as auto on a 16-core GPU host (bench/README.md, "Numbers behind the code")."""

X264_PARAMS = "mbtree=0"
"""x264's macroblock tree with B-frames gives other bytes from run to run for the same frames on a busy host;
without it, the same frames give the same file on every run and every node (with X264_THREAD_COUNT). It changes
file size at the same CRF, larger on smooth content (bench/README.md); keeping the tree but dropping B-frames is
deterministic too and larger still."""


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


@dataclass(frozen=True)
class SourceAudio:
    """A user's audio track to carry into the output from `start` seconds."""

    path: str
    start: float = 0.0


COPY_CODECS = frozenset({"aac"})
COPY_CONTAINERS = ("mp4", "mov", "m4a")
"""Formats whose AAC packets an MP4 holds as they are (ADTS .aac would need a bitstream filter)."""


class NoAudioStream(ValueError):
    """A media file without a sound track."""


def audio_track_seconds(path: str) -> tuple[str, int, float]:
    """(codec, sample rate, seconds) of a file's first audio stream, by decoding it; NoAudioStream if none.
    Decoded once per file version: validation checks the track, then its length."""
    stat = os.stat(path)
    return _audio_track_seconds(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _audio_track_seconds(path: str, _size: int, _mtime_ns: int) -> tuple[str, int, float]:
    with av.open(path) as container:
        if not container.streams.audio:
            raise NoAudioStream("has no audio stream")
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        rate = stream.codec_context.sample_rate
        return stream.codec_context.name, rate, samples / rate


def copies_packets(source: SourceAudio, container: av.container.InputContainer) -> bool:
    stream = container.streams.audio[0]
    return (
        source.start == 0
        and stream.codec_context.name in COPY_CODECS
        and any(name in container.format.name.split(",") for name in COPY_CONTAINERS)
    )


def _flac_format(stream: av.audio.stream.AudioStream) -> str:
    """FLAC stores integers: 16-bit sources as they are, anything else (float decoders: MP3, AAC) in 32-bit
    containers (FFmpeg's FLAC keeps 24 bits of them)."""
    return "s16" if stream.codec_context.format.name.startswith("s16") else "s32"


class Mp4Writer:
    """Streams frames into an MP4 (H.264) as they are decoded, then adds the audio (AAC) and closes.

    Frames are never all in memory at once. The file appears under its real name only after `close`.
    """

    def __init__(
        self,
        path: Path,
        fps: float,
        width: int,
        height: int,
        sample_rate: int | None = None,
        crf: int = 18,
        source_audio: SourceAudio | None = None,
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
        self._video.options = {"crf": str(crf), "preset": X264_PRESET, "x264-params": X264_PARAMS}
        self._video.codec_context.thread_type = X264_THREADS
        self._video.codec_context.thread_count = X264_THREAD_COUNT
        self._audio = None
        self._source = source_audio
        self._source_container = None
        if source_audio is not None:
            self._source_container = av.open(source_audio.path)
            template = self._source_container.streams.audio[0]
            if copies_packets(source_audio, self._source_container):
                self._audio = self._container.add_stream_from_template(template)
            else:
                self._audio = self._container.add_stream("flac", rate=template.codec_context.sample_rate)
                self._audio.layout = template.codec_context.layout
                self._audio.format = _flac_format(template)
        elif sample_rate is not None:
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
            if self._source is not None:
                if audio is not None:
                    raise ValueError("the writer carries the source audio; do not pass generated audio too")
                self._mux_source_audio(self.frames_written / self.fps)
            elif (audio is None) != (astream is None):
                raise ValueError("audio must be given exactly when the writer was opened with a sample rate")
            elif astream is not None:
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

    def _mux_source_audio(self, seconds: float) -> None:
        """The source track's `seconds` from its start offset: packets copied, or samples cut and FLAC-coded."""
        source, container, out = self._source, self._source_container, self._audio
        stream = container.streams.audio[0]
        if copies_packets(source, container):
            for packet in container.demux(stream):
                if packet.dts is None or packet.pts is None:
                    continue
                if packet.pts * stream.time_base >= seconds:
                    break
                packet.stream = out
                self._container.mux(packet)
            return
        rate = stream.codec_context.sample_rate
        first, last = round(source.start * rate), round((source.start + seconds) * rate)
        fmt = _flac_format(stream)
        resampler = av.AudioResampler(format=fmt, layout=stream.codec_context.layout, rate=rate)
        position, written = 0, 0  # samples counted as decoded from the track's first (pts can carry an
        for decoded in container.decode(stream):  # MP3's encoder delay, which the decoder has already dropped)
            for frame in resampler.resample(decoded):
                samples = frame.to_ndarray()  # packed: [1, samples * channels]
                channels = len(frame.layout.channels)
                keep_from, keep_to = max(0, first - position), min(frame.samples, last - position)
                position += frame.samples
                if keep_to <= keep_from:
                    continue
                cut = samples[:, keep_from * channels : keep_to * channels]
                out_frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(cut), format=fmt, layout=frame.layout.name)
                out_frame.sample_rate, out_frame.pts, out_frame.time_base = rate, written, Fraction(1, rate)
                written += keep_to - keep_from
                self._container.mux(out.encode(out_frame))
            if position >= last:
                break
        self._container.mux(out.encode(None))

    def abort(self) -> None:
        """Drop the partial file (after a failure)."""
        with contextlib.suppress(Exception):
            self._container.close()
        if self._source_container is not None:
            with contextlib.suppress(Exception):
                self._source_container.close()
        self._tmp.unlink(missing_ok=True)


def write_mp4(
    path: Path,
    video: torch.Tensor,
    fps: float,
    audio: torch.Tensor | None,
    sample_rate: int,
    crf: int = 18,
    source_audio: SourceAudio | None = None,
) -> Path:
    """Encode `video` (uint8 [frames, height, width, 3]) and `audio` ([channels, samples]) into `path`;
    with `source_audio`, carry that track instead of `audio`."""
    _, height, width, _ = video.shape
    rate = sample_rate if audio is not None and source_audio is None else None
    writer = Mp4Writer(path, fps, width, height, rate, crf, source_audio)
    try:
        writer.add_frames(video)
        return writer.close(None if source_audio is not None else audio)
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
    """Read back `path`: video frames counted from its packets (one per frame; decoding them would cost
    about a second per job), audio samples by decoding, streams and durations."""
    with av.open(str(path)) as container:
        vstream = container.streams.video[0]
        frames = sum(1 for packet in container.demux(vstream) if packet.size)
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
