"""Uploads to real S3-compatible servers on 127.0.0.1 (moto's standalone server, OpenStack Swift's S3 API)."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from cluster.storage import StorageOptions, Uploader, UploadError, expected_etag
from jobs.keys import DestinationError, parse_destination, render_key
from tests.s3_servers import MotoServer, moto_env


@pytest.fixture
def aws_env(monkeypatch):
    for k, v in moto_env().items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def moto(aws_env):
    server = MotoServer().start()
    yield server
    server.stop()


def _bucket(endpoint: str, name: str = "renders") -> None:
    boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)


def _file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def test_destinations_and_keys():
    assert parse_destination("s3://renders/campaign-a/") == parse_destination("s3://renders/campaign-a")
    assert parse_destination("out/dir").scheme == "file"
    assert parse_destination("file:///tmp/x").prefix == "/tmp/x"
    for bad in ("s3://Bad_Bucket/x", "s3://renders/a/../b", "ftp://host/x", "s3://renders/\x00"):
        with pytest.raises(DestinationError):
            parse_destination(bad)
    key = render_key("{campaign}/{job}/{seed}.mp4", {"campaign": "../../etc", "job": "a/b\x1b[31m", "seed": 7})
    assert key == "_.._etc/a_b__31m/7.mp4"  # each value stays one component
    assert ".." not in key.split("/")
    for template in ("/{job}.mp4", "{job}/../x.mp4", "a//{job}"):
        with pytest.raises(DestinationError):
            render_key(template, {"job": "j"})
    with pytest.raises(DestinationError, match="unknown field"):
        render_key("{nope}.mp4", {"job": "j"})


def test_upload_verifies_etag_and_presigns(moto, tmp_path):
    _bucket(moto.endpoint)
    small = _file(tmp_path / "a.json", 1000)
    big = _file(tmp_path / "b.mp4", 20 * 1024 * 1024 + 123)  # multipart: 3 parts of 8 MiB
    up = Uploader(
        parse_destination("s3://renders/campaign"), StorageOptions(endpoint_url=moto.endpoint, addressing_style="path")
    )
    done = up.upload([(big, "job/b.mp4", "video/mp4"), (small, "job/a.json", "application/json")])
    assert [d.key for d in done] == ["campaign/job/b.mp4", "campaign/job/a.json"]
    assert done[0].etag == expected_etag(big) and done[0].etag.endswith("-3")
    assert done[1].etag == expected_etag(small) and "-" not in done[1].etag
    url = up.presigned_url(done[0].key, expires_s=600)
    assert "X-Amz-Signature" in url and "testing-secret-value" not in url
    with urllib.request.urlopen(url) as response:  # the link works without credentials
        assert response.read() == big.read_bytes()


def test_local_destination(tmp_path):
    src = _file(tmp_path / "x.mp4", 5000)
    up = Uploader(parse_destination(str(tmp_path / "dest")))
    [obj] = up.upload([(src, "c/x.mp4", "video/mp4")])
    assert (tmp_path / "dest/c/x.mp4").read_bytes() == src.read_bytes()
    assert obj.url.startswith("file://")


def _hold_second_part(up: Uploader) -> tuple[threading.Event, threading.Event]:
    """Pause the multipart upload just before its second part goes out (botocore's event hooks), so the
    test can take the server down in the middle of the upload, deterministically."""
    sending, outage = threading.Event(), threading.Event()
    parts: list[int] = []

    def before_send(**_: object) -> None:
        parts.append(1)
        if len(parts) == 2:
            sending.set()
            outage.wait(timeout=30)

    up._client.meta.events.register("before-send.s3.UploadPart", before_send)
    return sending, outage


def test_outage_during_upload_delays_but_loses_nothing(moto, tmp_path):
    """The server is killed mid-upload and restarted on the same port; the upload completes."""
    _bucket(moto.endpoint)
    big = _file(tmp_path / "big.mp4", 40 * 1024 * 1024)
    up = Uploader(
        parse_destination("s3://renders/p"),
        StorageOptions(
            endpoint_url=moto.endpoint, addressing_style="path", deadline_s=120, first_backoff_s=5.0, max_backoff_s=5.0
        ),
    )
    result: dict = {}
    sending, outage = _hold_second_part(up)

    def run() -> None:
        try:
            result["objects"] = up.upload([(big, "big.mp4", "video/mp4")])
        except Exception as e:  # surfaced below
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    assert sending.wait(timeout=30)
    moto.stop()  # outage in the middle of the multipart upload
    outage.set()
    time.sleep(0.5)
    assert thread.is_alive()  # still retrying, not failed
    # moto keeps nothing across restarts: the bucket is back well before the next retry (5 s backoff)
    moto.start()
    _bucket(moto.endpoint)
    thread.join(timeout=120)
    assert "error" not in result, result.get("error")
    [obj] = result["objects"]
    head = (
        boto3.session.Session().client("s3", endpoint_url=moto.endpoint).head_object(Bucket="renders", Key="p/big.mp4")
    )
    assert head["ContentLength"] == big.stat().st_size and obj.etag == expected_etag(big)
    assert big.exists()  # the local copy is never removed by the uploader


def test_permanent_errors_fail_fast_without_secrets(moto, tmp_path):
    src = _file(tmp_path / "x.mp4", 100)
    up = Uploader(
        parse_destination("s3://no-such-bucket/p"), StorageOptions(endpoint_url=moto.endpoint, addressing_style="path")
    )
    started = time.monotonic()
    with pytest.raises(UploadError, match=r"NoSuchBucket|does not exist") as info:
        up.upload([(src, "x.mp4", "video/mp4")])
    assert time.monotonic() - started < 10
    assert "testing-secret-value" not in str(info.value)
    assert str(src) in str(info.value)  # says where the file still is


@pytest.fixture
def swift(tmp_path, monkeypatch):
    from tests.swift_server import ACCESS_KEY, SECRET_KEY, SwiftServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = SwiftServer(tmp_path / "swift").start()
    yield server
    server.stop()


def _swift_uploader(server, prefix: str = "s3://renders/p", **options) -> Uploader:
    return Uploader(
        parse_destination(prefix), StorageOptions(endpoint_url=server.endpoint, addressing_style="path", **options)
    )


def test_swift_upload_multipart_verified_and_presigned(swift, tmp_path):
    _bucket(swift.endpoint)
    big = _file(tmp_path / "b.mp4", 17 * 1024 * 1024)
    small = _file(tmp_path / "a.json", 300)
    objects = _swift_uploader(swift).upload([(big, "b.mp4", "video/mp4"), (small, "a.json", "application/json")])
    assert [o.etag for o in objects] == [expected_etag(big), expected_etag(small)]
    assert objects[0].etag.endswith("-3")
    with urllib.request.urlopen(_swift_uploader(swift).presigned_url("p/a.json", expires_s=600)) as r:
        assert r.read() == small.read_bytes()


def test_swift_refuses_wrong_credentials(swift, tmp_path, monkeypatch):
    _bucket(swift.endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(UploadError, match=r"SignatureDoesNotMatch|AccessDenied|Forbidden") as info:
        _swift_uploader(swift).upload([(_file(tmp_path / "x.mp4", 100), "x.mp4", "video/mp4")])
    assert "not-the-secret" not in str(info.value)


def test_swift_restart_during_upload_loses_nothing(swift, tmp_path):
    """Swift keeps objects on disk: stop every server mid-upload, start them again, the upload completes."""
    _bucket(swift.endpoint)
    _swift_uploader(swift).upload([(_file(tmp_path / "earlier.mp4", 1000), "earlier.mp4", "video/mp4")])
    big = _file(tmp_path / "big.mp4", 40 * 1024 * 1024)
    up = _swift_uploader(swift, deadline_s=120, first_backoff_s=0.2, max_backoff_s=1.0)
    result: dict = {}
    sending, outage = _hold_second_part(up)
    thread = threading.Thread(target=lambda: result.update(objects=up.upload([(big, "big.mp4", "video/mp4")])))
    thread.start()
    assert sending.wait(timeout=30)
    swift.stop()  # every Swift server, in the middle of the multipart upload
    outage.set()
    time.sleep(2.0)
    assert thread.is_alive()
    swift.start()
    thread.join(timeout=120)
    [obj] = result["objects"]
    client = boto3.session.Session().client("s3", endpoint_url=swift.endpoint)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="renders")["Contents"])
    assert keys == ["p/big.mp4", "p/earlier.mp4"]  # the earlier object survived the restart too
    assert obj.etag == expected_etag(big)
