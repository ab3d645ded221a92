"""One output path and travelling inputs, without Ray: a holder's staged render reaches the head's folder in parts
(checked by SHA-256) or an S3 bucket (uploaded by the holder); local input files reach a worker's cache by content."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from cluster.parts import PART_BYTES
from cluster.publish import (
    STAGED_KEEP_S,
    DeliveryError,
    OutputTarget,
    StagedOutput,
    collect,
    offer,
    output_record,
    published,
    receive,
    sweep_partials,
    sweep_staging,
)
from cluster.storage import InputFetchError, StorageOptions, localize, ship_inputs, stock_inputs
from cluster.worker_options import WorkerOptions
from jobs.keys import parse_destination
from jobs.outputs import output_paths
from jobs.spec import validate_job
from tests.conftest import SMALL_JOB


def _staged(folder: Path, size: int = 20 * 1024 * 1024 + 5):
    """A job's output files in a holder's staging folder (an MP4's bytes need not decode here)."""
    job = validate_job({**SMALL_JOB, "name": "shot"})
    paths = output_paths(job, folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths.video.write_bytes(os.urandom(size))
    paths.sidecar.write_text(json.dumps({"output": {"video": paths.video.name, "bytes": size}}))
    return job, paths


def test_an_output_reaches_the_head_in_parts_unchanged(tmp_path):
    job, paths = _staged(tmp_path / "worker")
    staged = offer(paths, job, OutputTarget())
    assert len(staged.parts) == 3 and not staged.delivered  # 8 MiB parts
    result = collect({"doc": 1}, staged, job, OutputTarget(), tmp_path / "head")
    assert result.paths.video.read_bytes() == paths.video.read_bytes()
    assert result.paths.sidecar.read_bytes() == paths.sidecar.read_bytes()
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == sorted([paths.video.name, paths.sidecar.name])
    assert output_record(job, OutputTarget(), None, result)["video"] == str(tmp_path / "head" / paths.video.name)


def test_a_damaged_part_is_refused_and_nothing_is_left(tmp_path):
    job, paths = _staged(tmp_path / "worker")
    staged = offer(paths, job, OutputTarget())
    broken = StagedOutput(
        **{**staged.__dict__, "parts": (staged.parts[0], b"x" + staged.parts[1][1:], staged.parts[2])}
    )
    with pytest.raises(DeliveryError, match="arrived damaged"):
        receive(broken, tmp_path / "head")
    assert list((tmp_path / "head").iterdir()) == []  # no MP4, no sidecar, no partial file


def test_an_s3_destination_is_uploaded_by_the_holder_which_then_drops_its_copy(tmp_path, monkeypatch):
    import boto3

    from tests.s3_servers import MotoServer, moto_env

    for k, v in moto_env().items():
        monkeypatch.setenv(k, v)
    server = MotoServer().start()
    try:
        boto3.session.Session().client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="outs")
        target = OutputTarget(
            parse_destination("s3://outs/farm"),
            StorageOptions(endpoint_url=server.endpoint, addressing_style="path"),
            "{campaign}/{job}.{ext}",
            "spring",
        )
        job, paths = _staged(tmp_path / "worker", size=1000)
        assert not published(job, target, tmp_path / "head")
        digest = hashlib.sha256(paths.video.read_bytes()).hexdigest()
        staged = offer(paths, job, target)
        assert staged.delivered and not staged.parts and staged.sha256 == digest
        assert not paths.video.exists() and not paths.sidecar.exists()  # verified upload: the staged copy is gone
        assert [o.key for o in staged.objects] == [
            f"farm/spring/{paths.video.stem}.mp4",
            f"farm/spring/{paths.video.stem}.json",
        ]
        assert published(job, target, tmp_path / "head")  # the sidecar object says the output is complete
        result = collect({}, staged, job, target, tmp_path / "head")
        assert result.paths is None and not (tmp_path / "head").exists()  # nothing travelled to the head
    finally:
        server.stop()


def test_published_looks_where_the_output_goes(tmp_path):
    job, _ = _staged(tmp_path / "worker", size=10)
    assert not published(job, OutputTarget(), tmp_path / "head")
    _staged(tmp_path / "head", size=10)
    assert published(job, OutputTarget(), tmp_path / "head")
    unreachable = OutputTarget(parse_destination("s3://outs/x"), StorageOptions(endpoint_url="http://127.0.0.1:9"))
    assert not published(job, unreachable, tmp_path / "head")  # storage down: render; the upload waits it out


def test_partials_of_dead_writers_are_swept_and_live_ones_kept(tmp_path):
    dead = tmp_path / "c" / ".a.mp4.partial-999999999"
    live = tmp_path / "c" / f".b.mp4.partial-{os.getpid()}"
    dead.parent.mkdir()
    dead.write_bytes(b"x")
    live.write_bytes(b"x")
    assert sweep_partials(tmp_path) == [dead]
    assert live.exists()


def test_local_inputs_travel_by_content_into_a_workers_cache(tmp_path, monkeypatch):
    source = tmp_path / "submitter" / "product.png"
    source.parent.mkdir()
    content = os.urandom(2 * PART_BYTES + 5)  # three parts: never one whole file in memory at either end
    source.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    ref = f"{source}#sha256={digest}"
    shipped: dict = {}
    objects = ship_inputs([ref, "s3://b/k#sha256=" + "0" * 64], put=lambda data: ("obj", data), shipped=shipped)
    assert list(objects) == [digest]  # s3:// inputs are fetched, not shipped
    name, parts = objects[digest]
    assert name == "product.png" and [len(p[1]) for p in parts] == [PART_BYTES, PART_BYTES, 5]
    assert ship_inputs([ref], put=lambda data: pytest.fail("read twice"), shipped=shipped) == objects

    monkeypatch.setenv("LTX2_FARM_INPUT_CACHE", str(tmp_path / "worker-cache"))
    source.rename(tmp_path / "submitter" / "moved.png")  # the worker's node has no such path
    with pytest.raises(InputFetchError, match="not on this node and was not shipped"):
        localize(ref)
    stock_inputs(objects, get=lambda obj: obj[1])
    local = Path(localize(ref))
    assert local.name == "product.png" and local.read_bytes() == content
    assert local.is_relative_to(tmp_path / "worker-cache")
    with pytest.raises(InputFetchError, match="arrived damaged"):
        stock_inputs({"1" * 64: ("lora.safetensors", (b"other bytes",))})


def test_a_local_input_changed_after_validation_is_refused(tmp_path):
    source = tmp_path / "voice.wav"
    source.write_bytes(b"one")
    ref = f"{source}#sha256={hashlib.sha256(b'two').hexdigest()}"
    with pytest.raises(InputFetchError, match="changed since the job was validated"):
        ship_inputs([ref], put=lambda data: data, shipped={})


def test_staged_outputs_never_published_are_swept_after_a_day(tmp_path):
    _old_job, old = _staged(tmp_path / "staging" / "worker-0~1" / "spring", size=10)  # a dead holder's
    _job, fresh = _staged(tmp_path / "staging" / "worker-1" / "spring", size=10)
    day_ago = time.time() - STAGED_KEEP_S - 60
    for path in (old.video, old.sidecar):
        os.utime(path, (day_ago, day_ago))
    assert sweep_staging(tmp_path / "staging") == sorted([old.sidecar, old.video])
    assert fresh.video.exists() and fresh.sidecar.exists()
    assert sweep_staging(tmp_path / "nothing-here") == []


def test_a_render_whose_upload_failed_is_published_again_without_rendering(tiny_set, tmp_path, monkeypatch):
    """Storage down when a render ends: the job's retry on the same worker uploads the staged copy."""
    import boto3

    from cluster.storage import UploadError
    from cluster.worker import RenderWorker
    from tests.s3_servers import MotoServer, free_port, moto_env

    for k, v in moto_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LTX2_FARM_STAGING", str(tmp_path / "staging"))
    port = free_port()
    options = StorageOptions(
        endpoint_url=f"http://127.0.0.1:{port}", addressing_style="path", attempts=1, deadline_s=0.0
    )
    target = OutputTarget(parse_destination("s3://outs/farm"), options, "{campaign}/{job}.{ext}", "spring")
    worker = RenderWorker(tiny_set, WorkerOptions(device="cpu"))
    job = validate_job({**SMALL_JOB, "name": "shot", "num_frames": 9, "steps": 1})
    first = worker.render(job, target)
    with pytest.raises(UploadError):
        worker.publish(job, target)  # nothing listens on the port yet
    server = MotoServer(port=port).start()
    try:
        boto3.session.Session().client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="outs")
        again = worker.render(job, target)
        same = ("output", "timings_s", "timeline_unix")  # the same render, timings and all: the model did not run again
        assert [again.document[k] for k in same] == [first.document[k] for k in same]
        assert worker.jobs_done == 1
        staged = worker.publish(job, target)
        assert staged.delivered and staged.sha256 == first.document["output"]["sha256"]
    finally:
        server.stop()
