"""The store of kept task results (`cluster.kept_results`): exact round trips, digests checked on read."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from ltx_core.types import LatentState

from cluster.kept_results import KEPT_KEEP_S, KeptResultCorrupt, KeptResults
from ltx2 import stages

JOB = "ab" * 32


def _latent_state(tokens: int, channels: int, mask: bool) -> LatentState:
    latent = torch.randn(1, tokens, channels, dtype=torch.bfloat16)
    return LatentState(
        latent=latent,
        denoise_mask=torch.rand(1, tokens, 1),
        positions=torch.randn(1, 3, tokens, 2),
        clean_latent=latent.clone(),
        attention_mask=torch.ones(1, tokens, tokens, dtype=torch.bool) if mask else None,
    )


def _states_equal(a: LatentState, b: LatentState) -> bool:
    fields = ("latent", "denoise_mask", "positions", "clean_latent", "attention_mask")
    pairs = [(getattr(a, f), getattr(b, f)) for f in fields]
    return all((x is None and y is None) or (x.dtype == y.dtype and torch.equal(x, y)) for x, y in pairs)


def test_each_kept_kind_round_trips_exactly(tmp_path):
    store = KeptResults(tmp_path)
    chunk = stages.ChunkResult(
        torch.randn(1, 128, 3, 4, 6, dtype=torch.bfloat16),
        torch.randn(1, 8, 13, 16, dtype=torch.bfloat16),
        torch.randint(0, 255, (5056,), dtype=torch.uint8),
    )
    state = stages.Stage2State(
        video=_latent_state(72, 128, mask=True),
        audio=_latent_state(13, 128, mask=False),
        video_shape=(1, 128, 3, 4, 6),
        audio_shape=(1, 8, 13, 16),
        keyframes=((72, 0),),
    )
    audio = (torch.randn(2, 4800), 24000)
    sizes = [
        store.save(JOB, "stage1:0", "stage1", chunk),
        store.save(JOB, "blend:2", "blend", state),
        store.save(JOB, "audio", "audio", audio),
    ]
    assert store.total_bytes() == sum(sizes)
    records = store.records(JOB)
    assert set(records) == {"stage1:0", "blend:2", "audio"}
    back = store.load(JOB, records["stage1:0"])
    for name in ("video", "audio", "generator_state"):
        assert torch.equal(getattr(back, name), getattr(chunk, name))
        assert getattr(back, name).dtype == getattr(chunk, name).dtype
    back = store.load(JOB, records["blend:2"])
    assert _states_equal(back.video, state.video) and _states_equal(back.audio, state.audio)
    assert (back.video_shape, back.audio_shape) == (state.video_shape, state.audio_shape)
    assert back.keyframes == state.keyframes
    waveform, rate = store.load(JOB, records["audio"])
    assert torch.equal(waveform, audio[0]) and rate == 24000
    assert not list(tmp_path.rglob(".*partial*"))
    store.discard(JOB)
    assert store.records(JOB) == {} and store.total_bytes() == 0


def test_a_changed_byte_is_refused_and_a_dropped_result_is_gone(tmp_path):
    store = KeptResults(tmp_path)
    store.save(JOB, "audio", "audio", (torch.zeros(2, 480), 24000))
    path = tmp_path / JOB / "audio.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    record = store.records(JOB)["audio"]
    with pytest.raises(KeptResultCorrupt, match="SHA-256"):
        store.load(JOB, record)
    store.drop(JOB, ["audio"])
    assert store.records(JOB) == {} and not path.exists()
    with pytest.raises(KeptResultCorrupt, match="missing"):
        store.load(JOB, record)


def test_results_untouched_for_the_keep_time_and_dead_writers_partials_are_swept(tmp_path):
    store = KeptResults(tmp_path)
    old, fresh = "0" * 64, "1" * 64
    for job in (old, fresh):
        store.save(job, "audio", "audio", (torch.zeros(2, 480), 24000))
    now = time.time()
    for path in (tmp_path / old).iterdir():
        os.utime(path, (now - KEPT_KEEP_S - 60, now - KEPT_KEEP_S - 60))
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    partial = tmp_path / fresh / f".blend-0.safetensors.partial-{int(finished.stdout)}"  # its writer is gone
    partial.write_bytes(b"half")
    assert store.sweep(now=now) == [old]
    assert store.records(old) == {} and set(store.records(fresh)) == {"audio"} and not partial.exists()


def test_a_head_on_another_node_finds_the_results_in_the_bucket(tmp_path, monkeypatch):
    """Results kept with a mirror at an S3 bucket (moto's server) are found by a store on an empty disk; dropped
    and discarded ones leave the bucket too."""
    from cluster.storage import StorageOptions, Uploader
    from jobs.keys import parse_destination
    from tests.s3_servers import moto_bucket

    with moto_bucket(monkeypatch, "camp") as (server, s3):
        mirror = Uploader(parse_destination("s3://camp/renders"), StorageOptions(endpoint_url=server.endpoint))
        first = KeptResults(tmp_path / "head-a", mirror)
        chunk = stages.ChunkResult(
            torch.randn(1, 128, 2, 2, 3), torch.randn(1, 8, 5, 16), torch.zeros(16, dtype=torch.uint8)
        )
        first.save(JOB, "stage1:0", "stage1", chunk)
        first.save(JOB, "audio", "audio", (torch.randn(2, 480), 24000))

        def keys() -> set[str]:
            return {o["Key"] for o in s3.list_objects_v2(Bucket="camp").get("Contents", [])}

        assert keys() == {
            f"renders/kept/{JOB}/{n}"
            for n in ("stage1-0.safetensors", "stage1-0.json", "audio.safetensors", "audio.json")
        }
        second = KeptResults(tmp_path / "head-b", mirror)  # a new head: nothing on its disk
        assert second.records(JOB) == {}
        records = second.records(JOB, ["stage1:0", "stage1:1", "audio"])
        assert set(records) == {"stage1:0", "audio"}
        assert torch.equal(second.load(JOB, records["stage1:0"]).video, chunk.video)
        second.drop(JOB, ["stage1:0"])
        assert keys() == {f"renders/kept/{JOB}/audio.safetensors", f"renders/kept/{JOB}/audio.json"}
        second.discard(JOB)
        assert keys() == set() and second.records(JOB) == {}
