"""Audio-to-video on the tiny model: a user's sound track drives the video and comes out unchanged.

Bound stated: the output's audio decodes to exactly the input's samples (WAV → FLAC in the MP4, lossless;
AAC from an M4A → packets copied), over the video's duration.
"""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch

from cluster.cli import main
from jobs.plan import plan_job
from jobs.spec import validate_job
from ltx2 import stages
from ltx2.render import A2V_AUDIO_GUIDANCE
from ltx2.samples import AUDIO_RATE, write_track
from tests.conftest import SMALL_JOB, THREE_CHUNKS, small_chunk, write_job
from tests.test_cli import run

RATE = AUDIO_RATE


def decoded(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)


@pytest.mark.parametrize(
    ("audio", "words"),
    [
        ({"path": "missing.wav"}, "does not exist"),
        ({"path": "/etc/hostname"}, "outside the allowed input folders"),
        ({"path": "job.yaml"}, "not a readable audio file"),
        ({"path": "short.wav"}, "shorten the job"),
        ({"path": "voice.wav", "start": 0.9}, "lower audio.start"),
        ({"path": "voice.wav", "start": -1}, "audio.start"),
    ],
    ids=["missing", "outside the roots", "not audio", "too short", "start too late", "negative start"],
)
def test_bad_tracks_are_refused_before_compute(tmp_path, capsys, audio, words):
    write_track(tmp_path / "voice.wav", 1.0)
    write_track(tmp_path / "short.wav", 0.3)
    path = write_job(tmp_path, audio=audio)
    assert main(["validate", str(path)]) == 2
    assert words in capsys.readouterr().err


def test_a_track_plans_one_encode_and_no_audio_decode():
    plan = plan_job(
        validate_job({**SMALL_JOB, "num_frames": None, "duration": 4, "chunk_seconds": 2, "audio": {"path": "a.wav"}})
    )
    kinds = [t.kind for t in plan.tasks]
    assert kinds.count("audio_encode") == 1 and "audio" not in kinds and not plan.refine_audio
    assert all("audio_encode" in t.deps for t in plan.tasks if t.kind == "stage1")


def test_a_chunk_keeps_its_span_of_the_track_exactly(resident, tmp_path):
    write_track(tmp_path / "voice.wav", 1.0)
    track = stages.encode_track(resident, str(tmp_path / "voice.wav"), 0.0, 17, 24.0)
    request = small_chunk(audio_guidance=A2V_AUDIO_GUIDANCE)
    positive = stages.encode_prompt(resident, "a singer on a stage")
    result = stages.stage1_chunk(resident, request, positive, None, track=track)
    assert torch.equal(result.audio, track.to(result.audio.dtype))
    plain = stages.stage1_chunk(resident, request, positive, None)
    assert not torch.equal(plain.video, result.video)  # the track drives the video


def test_track_latent_is_the_official_encoding(resident, tmp_path):
    """Same PyAV decode and audio VAE encode as ltx-pipelines' A2V pipeline, cut to the video's latents."""
    from ltx_core.model.audio_vae import encode_audio
    from ltx_pipelines.utils.media_io import decode_audio_from_file

    write_track(tmp_path / "voice.wav", 1.0)
    ours = stages.encode_track(resident, str(tmp_path / "voice.wav"), 0.25, 17, 24.0)
    with torch.inference_mode():
        official = encode_audio(
            decode_audio_from_file(str(tmp_path / "voice.wav"), "cpu", 0.25, 17 / 24), resident.audio_encoder
        )
    assert torch.equal(ours, official[:, :, : ours.shape[2]])


@pytest.mark.parametrize(("source", "codec"), [("voice.wav", "flac"), ("voice.m4a", "aac")])
def test_output_carries_the_track_bit_for_bit(tmp_path, source, codec):
    write_track(tmp_path / "voice.wav", 1.0)
    write_track(tmp_path / "voice.m4a", 1.0, codec="aac")
    job = write_job(tmp_path, name="a2v", audio={"path": source})
    result = run("render", "--tiny", str(job), "--out", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (
        doc["media"]["audio_codec"] == codec and doc["content_sha256"]["audio_source"] == doc["job"]["audio"]["sha256"]
    )
    out = decoded(tmp_path / "out" / doc["output"]["video"])
    src = decoded(tmp_path / source)
    samples = out.shape[1] // 2 if out.shape[0] == 1 else out.shape[1]  # FLAC decodes packed s16 stereo
    assert 17 / 24 * RATE <= samples <= 17 / 24 * RATE + 1024  # the video's duration (AAC: whole packets)
    assert np.array_equal(out, src[:, : out.shape[1]])


def test_audio_to_video_through_chunks(tmp_path):
    write_track(tmp_path / "song.wav", 4.5)
    job = write_job(
        tmp_path,
        name="a2v-long",
        **THREE_CHUNKS,
        audio={"path": "song.wav", "start": 0.25},
    )
    result = run("render", "--tiny", str(job), "--workers", "2", "--out", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["plan"]["chunks"]) == 3 and doc["media"]["frames"] == 97
    assert any(t["kind"] == "audio_encode" for t in doc["trace"])
    out = decoded(tmp_path / "out" / doc["output"]["video"])  # FLAC (a start offset): cut to the sample
    src = decoded(tmp_path / "song.wav")
    start = int(0.25 * RATE) * 2  # packed stereo s16
    assert out.shape[1] == round(97 / 24 * RATE) * 2
    assert np.array_equal(out, src[:, start : start + out.shape[1]])


def test_an_mp3_track_is_carried_within_24_bits(tmp_path):
    """MP3 decodes to floats: stored as 24-bit FLAC, cut to the sample, within 2^-23 of the decoded input."""
    from ltx2.media import SourceAudio, write_mp4

    write_track(tmp_path / "voice.mp3", 1.0, codec="libmp3lame")
    video = torch.zeros(17, 64, 64, 3, dtype=torch.uint8)
    for start in (0.0, 0.25):
        out = write_mp4(
            tmp_path / "o.mp4", video, 24.0, None, RATE, source_audio=SourceAudio(str(tmp_path / "voice.mp3"), start)
        )
        carried = decoded(out).reshape(-1, 2).T.astype(np.float64) / 2**31  # packed 32-bit stereo
        source = decoded(tmp_path / "voice.mp3").astype(np.float64)
        first = round(start * RATE)
        assert carried.shape[1] == round(17 / 24 * RATE)
        assert np.abs(carried - source[:, first : first + carried.shape[1]]).max() <= 2**-23
