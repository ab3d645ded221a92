"""MP4 muxing through real FFmpeg (PyAV): streams, sizes, rates and durations read back from the file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltx2.media import AAC_FRAME_SAMPLES, fit_audio, probe_mp4, write_mp4


def _clip(frames: int, height: int = 64, width: int = 96) -> torch.Tensor:
    ramp = torch.linspace(0, 255, frames).to(torch.uint8)
    video = torch.zeros(frames, height, width, 3, dtype=torch.uint8)
    video[..., 0] = ramp[:, None, None]
    return video


def _tone(seconds: float, rate: int = 24000) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return torch.stack([torch.sin(2 * math.pi * 440 * t), torch.sin(2 * math.pi * 660 * t)]) * 0.5


@pytest.mark.parametrize(("frames", "fps", "audio_seconds"), [(25, 24.0, 1.01), (49, 25.0, 2.2), (17, 23.976, 0.5)])
def test_mp4_streams_and_durations(tmp_path, frames, fps, audio_seconds):
    path = write_mp4(tmp_path / "clip.mp4", _clip(frames), fps, _tone(audio_seconds), 24000)
    info = probe_mp4(path)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert (info.width, info.height, info.frames) == (96, 64, frames)
    assert info.fps == pytest.approx(fps, rel=1e-3)
    assert (info.sample_rate, info.channels) == (24000, 2)
    assert abs(info.audio_seconds - info.video_seconds) <= AAC_FRAME_SAMPLES / 24000
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no partial file left


def test_audio_fitted_to_video_duration():
    fitted = fit_audio(_tone(1.2), 24000, num_frames=25, fps=24.0)
    assert fitted.shape == (2, 25000)
    padded = fit_audio(_tone(0.5)[:1], 24000, num_frames=25, fps=24.0)
    assert padded.shape == (2, 25000) and np.all(padded[:, 12000:] == 0)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(Exception):  # noqa: B017 - any encoder error will do
        write_mp4(tmp_path / "bad.mp4", torch.zeros(3, 63, 95, 3, dtype=torch.uint8), 24.0, None, 24000)
    assert list(tmp_path.iterdir()) == []


def test_the_same_frames_give_the_same_mp4_bytes(tmp_path):
    """A job rendered again (a lost node, a retry) gives the same file: x264 runs a fixed thread count and no
    macroblock tree, whose frame-threaded form varies from run to run."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(3, 13, 9, 13, generator=generator)  # a smooth drifting field, which x264 predicts
    video = torch.nn.functional.interpolate(coarse[None], size=(49, 128, 192), mode="trilinear")[0]
    frames = (video.permute(1, 2, 3, 0) * 255).to(torch.uint8).contiguous()
    digests = {write_mp4(tmp_path / f"{i}.mp4", frames, 24.0, _tone(2.0), 24000).read_bytes() for i in range(4)}
    assert len(digests) == 1
