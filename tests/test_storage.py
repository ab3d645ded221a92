"""Uploads to real S3-compatible servers on 127.0.0.1 (moto's standalone server, OpenStack Swift's S3 API)."""

from __future__ import annotations

import base64
import logging
import os
import pickle
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import boto3
import pytest

from cluster.storage import (
    LocalFile,
    StorageOptions,
    Uploader,
    UploadError,
    UploadWait,
    credentials_problem,
    expected_etag,
    verify,
)
from jobs.keys import (
    CAMPAIGN_KEY_TEMPLATE,
    DEFAULT_KEY_TEMPLATE,
    DestinationError,
    check_key_template,
    check_output,
    output_keys,
    parse_destination,
    render_destination,
    render_key,
)
from jobs.outputs import output_paths
from jobs.spec import validate_job
from tests.s3_servers import MotoServer, free_port, moto_env

MiB = 1024 * 1024


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


def _sent(up: Uploader) -> list[str]:
    """The S3 operations `up` calls from now on (botocore's event hooks)."""
    names: list[str] = []
    up._client.meta.events.register("before-call.s3.*", lambda model, **_: names.append(model.name))
    return names


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


RENDER_TEMPLATES = [
    ("{job}", "one key"),
    ("{name}-{seed}", "one key"),
    ("{campaign}/{job}.{ext}", "unknown field {campaign}"),  # `render` has no campaign
    ("{job}.{ext}\x1b]0;x\x07", "'\\x1b'"),
    ("{job}\r.{ext}", "'\\r'"),
    ("a\u202e/{job}.{ext}", "'\\u202e'"),
    ("{job}\udce9.{ext}", "not UTF-8"),
    ("..\\{job}.{ext}", "'\\\\'"),
    ("{job}.{ext}.", "ending with '.'"),
    ("./{job}.{ext}", "names a folder"),
]


@pytest.mark.parametrize(("template", "words"), RENDER_TEMPLATES, ids=[ascii(t[0]) for t in RENDER_TEMPLATES])
def test_key_templates_refused_before_any_render(template, words):
    with pytest.raises(DestinationError) as info:
        check_key_template(template)
    assert words in str(info.value) and str(info.value).isprintable(), str(info.value)


@pytest.mark.parametrize(
    "template",
    ["{job}-seed{seed}.{ext}", "year=2026/{campaign}/{hash}+{seed}.{ext}", "{ext}/{job}", "狐/{name}_{seed}.{ext}"],
)
def test_accepted_templates_give_a_job_two_keys(template):
    check_key_template(template, campaign=True)
    job = validate_job({"prompt": "x", "height": 64, "width": 64, "num_frames": 9, "name": "雪の狐"})
    video, sidecar = output_keys(template, job, "spring")
    assert video != sidecar and ".." not in video.split("/")
    assert ("雪の狐" in video) == ("{job}" in template or "{name}" in template)  # valid names are kept as they are


def test_render_keys_are_measured_against_the_job():
    job = validate_job(
        {"prompt": "x", "height": 64, "width": 64, "num_frames": 9, "name": "n" * 193, "seed": 2**63 - 1}
    )
    assert check_output("s3://renders/" + "p" * 500, "{job}-seed{seed}.{ext}", job).bucket == "renders"
    with pytest.raises(DestinationError, match="more than S3's 1024"):
        check_output("s3://renders/" + "p" * 800, "{job}-seed{seed}.{ext}", job)
    with pytest.raises(DestinationError, match="fit a file name"):  # a folder: each part is a file name
        check_output("/tmp/renders", "{job}-seed{seed}.{ext}", job)


def test_the_default_keys_are_the_output_files_names_with_the_seed_once():
    """`{job}` is the output file's stem, name, hash and seed: the default key adds nothing to it."""
    job = validate_job({"prompt": "x", "height": 64, "width": 64, "num_frames": 9, "seed": 10})
    files = output_paths(job, Path("."))
    assert output_keys(DEFAULT_KEY_TEMPLATE, job) == (files.video.name, files.sidecar.name)
    assert output_keys(CAMPAIGN_KEY_TEMPLATE, job, "spring") == (
        f"spring/{files.video.name}",
        f"spring/{files.sidecar.name}",
    )
    video, _ = output_keys(DEFAULT_KEY_TEMPLATE, job)
    assert video.startswith("render-") and video.endswith("-seed10.mp4") and video.count("seed") == 1


MP4_DESTINATIONS = [
    ("s3://renders/dir/long.mp4", ("s3", "renders", "dir", "long.mp4", "long.json")),
    ("s3://renders/long.mp4", ("s3", "renders", "", "long.mp4", "long.json")),
    ("s3://renders/dir/Clip.MP4", ("s3", "renders", "dir", "Clip.MP4", "Clip.json")),
    ("long.mp4", ("file", "", ".", "long.mp4", "long.json")),
    ("/tmp/out/long.mp4", ("file", "", "/tmp/out", "long.mp4", "long.json")),
    ("file:///tmp/out/long.mp4", ("file", "", "/tmp/out", "long.mp4", "long.json")),
    ("/long.mp4", ("file", "", "/", "long.mp4", "long.json")),
    ("long.mp4/", ("file", "", "long.mp4", "", None)),  # a trailing '/': a folder of that name
    ("s3://renders/long.mp4/", ("s3", "renders", "long.mp4", "", None)),
    ("s3://clips.mp4", ("s3", "clips.mp4", "", "", None)),  # a bucket, not a file
    ("out", ("file", "", "out", "", None)),
]


@pytest.mark.parametrize(("url", "parts"), MP4_DESTINATIONS, ids=[m[0] for m in MP4_DESTINATIONS])
def test_a_render_destination_ending_in_mp4_is_that_file(url, parts):
    destination = render_destination(url)
    *_, file, sidecar = parts
    assert (destination.scheme, destination.bucket, destination.prefix, destination.file) == parts[:4]
    if file:
        assert destination.sidecar == sidecar
        assert str(destination) == url.removeprefix("file://")  # messages name it as it was given
        job = validate_job({"prompt": "x", "height": 64, "width": 64, "num_frames": 9})
        assert check_output(url, None, job) == destination
    assert parse_destination(url).file == ""  # a campaign's destination, an input's URL: never split
    assert str(render_destination("s3://renders/dir/")) == "s3://renders/dir" and str(render_destination("o/")) == "o"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("out/my clip.mp4", "holds ' '"),
        ("s3://renders/a%2e.mp4", "holds '%'"),
        ("out/.mp4", "starts with '.'"),
        ("out/con.mp4", "device name"),
        ("s3://renders/{job}.mp4", "holds '{'"),
    ],
)
def test_a_destination_file_name_must_be_a_key_component(url, words):
    with pytest.raises(DestinationError, match="the file name") as info:
        render_destination(url)
    assert words in str(info.value), str(info.value)


def test_a_destination_naming_the_mp4_takes_no_key_template():
    job = validate_job({"prompt": "x", "height": 64, "width": 64, "num_frames": 9})
    with pytest.raises(DestinationError, match="names the MP4 itself"):
        check_output("s3://renders/long.mp4", "{job}.{ext}", job)
    with pytest.raises(DestinationError, match="more than S3's 1024"):
        check_output("s3://renders/" + "p" * 1020 + "/x.mp4", None, job)


def test_a_local_copy_already_there_is_not_written_again(tmp_path):
    src = _file(tmp_path / "x.mp4", 5000)
    up = Uploader(parse_destination(str(tmp_path / "dest")))
    up.upload([(src, "x.mp4", "video/mp4")])
    copy = tmp_path / "dest/x.mp4"
    before = (copy.stat().st_ino, copy.stat().st_mtime_ns)
    [again] = up.upload([(src, "x.mp4", "video/mp4")])
    assert (copy.stat().st_ino, copy.stat().st_mtime_ns) == before and again.verified == "MD5"
    assert up.holds(src, "x.mp4") is True and up.holds(src, "y.mp4") is None
    assert up.holds(_file(tmp_path / "other.mp4", 5000), "x.mp4") is False


@pytest.mark.parametrize("url", ["s3://renders/a\u202eb", "s3://renders/\x9b", "out\x7f", "s3://renders/\udce9"])
def test_destinations_with_invisible_characters(url):
    with pytest.raises(DestinationError, match="control or invisible"):
        parse_destination(url)


def test_upload_verifies_checksums_and_presigns(moto, tmp_path):
    _bucket(moto.endpoint)
    small = _file(tmp_path / "a.json", 1000)
    big = _file(tmp_path / "b.mp4", 20 * MiB + 123)  # multipart: 3 parts of 8 MiB
    said: list[str] = []
    up = Uploader(
        parse_destination("s3://renders/campaign"),
        StorageOptions(endpoint_url=moto.endpoint, addressing_style="path"),
        on_start=said.append,
    )
    done = up.upload([(big, "job/b.mp4", "video/mp4"), (small, "job/a.json", "application/json")])
    assert said == [
        f"uploading {big} to s3://renders/campaign/job/b.mp4",
        f"uploading {small} to s3://renders/campaign/job/a.json",
    ]
    assert [d.key for d in done] == ["campaign/job/b.mp4", "campaign/job/a.json"]
    assert [d.verified for d in done] == ["CRC32", "CRC32"]  # moto keeps the CRC32 boto3 sends
    assert done[0].etag == expected_etag(big) and done[0].etag.endswith("-3")
    assert done[1].etag == expected_etag(small) and "-" not in done[1].etag
    url = up.presigned_url(done[0].key, expires_s=600)
    assert "X-Amz-Signature" in url and "testing-secret-value" not in url
    with urllib.request.urlopen(url) as response:  # the link works without credentials
        assert response.read() == big.read_bytes()


def test_sse_kms_bucket_is_verified_by_checksum_and_not_uploaded_twice(moto, tmp_path):
    """An SSE-KMS object's ETag is not its MD5 on AWS; the CRC32 checksum verifies it, and finds it again
    after a restart (a new Uploader) so nothing goes up twice."""
    kms = boto3.session.Session().client("kms", endpoint_url=moto.endpoint, region_name="us-east-1")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    s3 = boto3.session.Session().client("s3", endpoint_url=moto.endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="sealed")
    s3.put_bucket_encryption(
        Bucket="sealed",
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_id}}]
        },
    )
    big = _file(tmp_path / "b.mp4", 11 * MiB)  # 3 parts of 5 MiB
    files = [(big, "b.mp4", "video/mp4"), (_file(tmp_path / "a.json", 700), "a.json", "application/json")]
    options = StorageOptions(
        endpoint_url=moto.endpoint, addressing_style="path", multipart_threshold=5 * MiB, multipart_chunk=5 * MiB
    )
    done = Uploader(parse_destination("s3://sealed/p"), options).upload(files)
    assert [d.verified for d in done] == ["CRC32", "CRC32"]
    head = s3.head_object(Bucket="sealed", Key="p/b.mp4", ChecksumMode="ENABLED")
    assert head["ServerSideEncryption"] == "aws:kms" and head["ETag"].endswith('-3"')
    again = Uploader(parse_destination("s3://sealed/p"), options)
    sent = _sent(again)
    assert again.upload(files) == done
    assert set(sent) == {"HeadObject"}


def test_verify_trusts_an_etag_only_where_it_is_an_md5(tmp_path):
    """HEAD answers as AWS gives them, where moto and Swift cannot: an SSE-KMS or SSE-C ETag is no MD5, so a
    correct upload without a checksum passes on its size; a checksum decides where there is one."""
    local = LocalFile(_file(tmp_path / "x", 1000))
    crc = base64.b64encode(zlib.crc32(local.path.read_bytes()).to_bytes(4, "big")).decode()
    plain = {"ContentLength": 1000, "ETag": f'"{local.etag()}"'}
    assert verify(plain, local) == (True, "MD5", "")
    assert verify({**plain, "ETag": '"' + "0" * 32 + '"'}, local)[:2] == (False, "MD5")
    assert verify({**plain, "ContentLength": 999}, local)[:2] == (False, "size")
    opaque = {"ContentLength": 1000, "ETag": '"' + "7" * 32 + '"'}
    assert verify({**opaque, "ServerSideEncryption": "aws:kms"}, local) == (None, "size", "")
    assert verify({**opaque, "ServerSideEncryption": "aws:kms:dsse"}, local) == (None, "size", "")
    assert verify({**opaque, "SSECustomerAlgorithm": "AES256"}, local) == (None, "size", "")
    assert verify({**opaque, "ServerSideEncryption": "aws:kms", "ChecksumCRC32": crc}, local)[:2] == (True, "CRC32")
    assert verify({**plain, "ChecksumCRC32": "AAAAAA=="}, local)[:2] == (False, "CRC32")  # the checksum decides
    sealed = {**opaque, "ServerSideEncryption": "aws:kms"}
    assert verify({**sealed, "ChecksumCRC64NVME": "AAAAAAAAAAA="}, local) == (None, "size", "")  # not computed here

    big = LocalFile(_file(tmp_path / "big", 11 * MiB), threshold=5 * MiB, chunk=5 * MiB)
    whole, composite, parts = big.digests("CRC32")
    b64 = lambda digest: base64.b64encode(digest).decode()  # noqa: E731
    head = {"ContentLength": 11 * MiB, "ETag": f'"{big.etag()}"'}
    assert verify({**head, "ChecksumCRC32": f"{b64(composite)}-{parts}"}, big)[:2] == (True, "CRC32")  # AWS
    assert verify({**head, "ChecksumCRC32": b64(composite)}, big)[:2] == (True, "CRC32")  # moto
    full = {**head, "ChecksumCRC32": b64(whole), "ChecksumType": "FULL_OBJECT"}
    assert verify(full, big)[:2] == (True, "CRC32")
    # another part size: no evidence from the checksum, so the ETag (same part count here) decides
    assert verify({**head, "ChecksumCRC32": "AAAAAA==-2"}, big)[:2] == (True, "MD5")
    assert verify({**opaque, "ContentLength": 11 * MiB, "ETag": '"' + "0" * 32 + '-2"'}, big) == (None, "size", "")


def test_local_destination(tmp_path, caplog):
    src = _file(tmp_path / "x.mp4", 5000)
    up = Uploader(parse_destination(str(tmp_path / "dest")))
    with caplog.at_level(logging.INFO, logger="cluster.storage"):
        [obj] = up.upload([(src, "c/x.mp4", "video/mp4")])
    assert f"uploading {src} to {tmp_path / 'dest/c/x.mp4'}" in caplog.text  # before anything else: where it is
    assert (tmp_path / "dest/c/x.mp4").read_bytes() == src.read_bytes()
    assert obj.url.startswith("file://") and obj.verified == "MD5"


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


class _HeldRetries:
    """An uploader's retries, held by the test: `waiting` is set once the upload has failed and waits to retry, and
    its next try goes out only once `back` is set (the server is up again), after the usual backoff."""

    def __init__(self) -> None:
        self.waiting, self.back = threading.Event(), threading.Event()

    def on_wait(self, _wait: object) -> None:
        self.waiting.set()

    def sleep(self, delay: float) -> None:
        self.back.wait(timeout=120)
        time.sleep(delay)


def test_outage_during_upload_delays_but_loses_nothing(moto, tmp_path):
    """The server is killed mid-upload and restarted on the same port; the upload completes."""
    _bucket(moto.endpoint)
    big = _file(tmp_path / "big.mp4", 40 * MiB)
    held = _HeldRetries()
    up = Uploader(
        parse_destination("s3://renders/p"),
        StorageOptions(endpoint_url=moto.endpoint, addressing_style="path", deadline_s=120),
        sleep=held.sleep,
        on_wait=held.on_wait,
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
    assert held.waiting.wait(timeout=120)  # the upload failed and waits to retry
    assert thread.is_alive()  # still retrying, not failed
    # moto keeps nothing across restarts: the bucket is back before the retry goes out
    moto.start()
    _bucket(moto.endpoint)
    held.back.set()
    thread.join(timeout=120)
    assert "error" not in result, result.get("error")
    [obj] = result["objects"]
    head = (
        boto3.session.Session().client("s3", endpoint_url=moto.endpoint).head_object(Bucket="renders", Key="p/big.mp4")
    )
    assert head["ContentLength"] == big.stat().st_size and obj.etag == expected_etag(big)
    assert big.exists()  # the local copy is never removed by the uploader


def _fails_at_once(up: Uploader, path: Path) -> UploadError:
    waits: list = []
    up._on_wait = waits.append  # called before every retry
    with pytest.raises(UploadError) as info:
        up.upload([(path, "x.mp4", "video/mp4")])
    assert waits == []  # the deadline is an hour: nothing was retried
    assert info.value.retryable is False and pickle.loads(pickle.dumps(info.value)).retryable is False
    return info.value


def test_a_file_changed_during_its_upload_is_uploaded_again(moto, tmp_path):
    """The stored object differs from the local file (here: the file grows after each PUT): uploaded again,
    and given up after VERIFY_ATTEMPTS uploads if it keeps changing."""
    _bucket(moto.endpoint)
    src = _file(tmp_path / "x.json", 1000)
    puts: list[int] = []

    def uploader(grow_times: int) -> Uploader:
        def grow(**_: object) -> None:
            puts.append(1)
            if len(puts) <= grow_times:
                with src.open("ab") as f:
                    f.write(b"more")

        options = StorageOptions(endpoint_url=moto.endpoint, addressing_style="path")
        up = Uploader(parse_destination("s3://renders/p"), options, sleep=lambda _: None)
        up._client.meta.events.register("after-call.s3.PutObject", grow)
        return up

    [obj] = uploader(1).upload([(src, "x.json", "application/json")])
    assert len(puts) == 2 and obj.verified == "CRC32" and obj.bytes == 1004
    stored = (
        boto3.session.Session().client("s3", endpoint_url=moto.endpoint).get_object(Bucket="renders", Key="p/x.json")
    )
    assert stored["Body"].read() == src.read_bytes()
    puts.clear()
    with pytest.raises(
        UploadError, match=r"the stored object differs from the local file \(CRC32 .*; upload 3 of 3\)"
    ) as info:
        uploader(99).upload([(src, "y.json", "application/json")])
    assert len(puts) == 3 and info.value.retryable is False


def test_permanent_errors_fail_fast_without_secrets(moto, tmp_path, monkeypatch):
    _bucket(moto.endpoint)
    src = _file(tmp_path / "x.mp4", 100)
    options = StorageOptions(endpoint_url=moto.endpoint, addressing_style="path")
    error = str(_fails_at_once(Uploader(parse_destination("s3://no-such-bucket/p"), options), src))
    assert "s3://no-such-bucket/p failed: no such bucket (404 NoSuchBucket)" in error
    assert "testing-secret-value" not in error
    assert error.endswith(f"the file stays at {src}")
    gone = tmp_path / "gone.mp4"
    error = str(_fails_at_once(Uploader(parse_destination("s3://renders/p"), options), gone))
    assert error == f"upload of gone.mp4 to s3://renders/p failed: the local file {gone} does not exist"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    error = str(_fails_at_once(Uploader(parse_destination("s3://renders/p"), options), src))
    assert "failed: no credentials found" in error and str(src) in error


def test_an_outage_past_the_deadline_fails_as_retryable(moto, tmp_path):
    _bucket(moto.endpoint)
    src = _file(tmp_path / "x.mp4", 100)
    options = StorageOptions(
        endpoint_url=moto.endpoint, addressing_style="path", deadline_s=1.0, first_backoff_s=0.2, max_backoff_s=0.2
    )
    waits: list[UploadWait] = []
    up = Uploader(parse_destination("s3://renders/p"), options, on_wait=waits.append)
    moto.stop()
    with pytest.raises(UploadError) as info:
        up.upload([(src, "x.mp4", "video/mp4")])
    assert info.value.retryable is True and pickle.loads(pickle.dumps(info.value)).retryable is True
    assert "the server could not be reached (EndpointConnectionError) (still, after retrying for" in str(info.value)
    assert str(info.value).endswith(f"the file stays at {src}")
    # each retry was told: what it waits for, since when, until when, which retry, where the file is
    assert [w.retry for w in waits] == list(range(1, len(waits) + 1)) and waits
    assert {(w.path, w.destination, w.started, w.deadline - w.started) for w in waits} == {
        (str(src), "s3://renders/p/x.mp4", waits[0].started, 1.0)
    }
    line = waits[0].line(now=waits[0].started + 0.4)
    assert line.startswith("upload of x.mp4 to s3://renders/p/x.mp4 is waiting: the server could not be reached")
    assert "; 0 s so far, retry 1, retrying until " in line and line.endswith(f"; the file is at {src}")


def test_missing_credentials_are_found_without_a_request(tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert credentials_problem(StorageOptions()).startswith("no S3 credentials found (AWS_ACCESS_KEY_ID and ")
    assert "no such profile" in credentials_problem(StorageOptions(profile="nobody"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "only-the-key")
    assert credentials_problem(StorageOptions()).startswith("the S3 credentials cannot be used: Partial credentials")
    for k, v in moto_env().items():
        monkeypatch.setenv(k, v)
    assert credentials_problem(StorageOptions()) is None


def test_stop_retrying_ends_an_upload_waiting_out_an_outage(tmp_path):
    """What Ctrl-C does to the head's uploads: one waiting for a server that is down gives up at once (in a process
    of its own: the stop is for the whole process), its file kept and named."""
    src = _file(tmp_path / "x.mp4", 100)
    code = f"""
import threading, time
from pathlib import Path
from cluster.storage import StorageOptions, Uploader, stop_retrying
from jobs.keys import parse_destination
# Without the stop, the first wait would last an hour.
options = StorageOptions(endpoint_url="http://127.0.0.1:{free_port()}", addressing_style="path", attempts=1,
                         deadline_s=7200, first_backoff_s=3600, max_backoff_s=3600)
waits, errors = [], []
def upload():
    try:
        Uploader(parse_destination("s3://renders/p"), options, on_wait=waits.append).upload(
            [(Path({str(src)!r}), "x.mp4", "video/mp4")])
    except Exception as error:
        errors.append(error)
thread = threading.Thread(target=upload)
thread.start()
while not waits and thread.is_alive():
    time.sleep(0.05)
stop_retrying()
thread.join(timeout=60)
print(thread.is_alive(), len(waits), errors[0].retryable, errors[0])
"""
    env = {**os.environ, **moto_env()}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    alive, waits, retryable, message = result.stdout.strip().split(" ", 3)
    assert (alive, waits, retryable) == ("False", "1", "True"), result.stdout + result.stderr  # its hour cut short
    assert "(retries stopped after" in message and message.endswith(f"the file stays at {src}"), message
    assert src.is_file()


@pytest.fixture(scope="module")
def swift_server(tmp_path_factory):
    """One Swift for the module (starting one takes ~15 s on 2 cores), over HTTPS: what boto3 sends differs
    there (checksum trailers), and this Swift refuses what it does not know."""
    from tests.swift_server import SwiftServer

    server = SwiftServer(tmp_path_factory.mktemp("swift"), tls=True).start()
    yield server
    server.stop()


@pytest.fixture
def swift(swift_server, monkeypatch):
    from tests.swift_server import ACCESS_KEY, SECRET_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(swift_server.ca_bundle))
    return swift_server


def _swift_uploader(server, prefix: str = "s3://renders/p", **options) -> Uploader:
    return Uploader(
        parse_destination(prefix), StorageOptions(endpoint_url=server.endpoint, addressing_style="path", **options)
    )


def test_swift_upload_multipart_verified_and_presigned(swift, tmp_path):
    """Swift 2.30 keeps no checksums: verified by the MD5 ETag, and found again by it after a restart."""
    _bucket(swift.endpoint)
    big = _file(tmp_path / "b.mp4", 17 * MiB)
    small = _file(tmp_path / "a.json", 300)
    files = [(big, "b.mp4", "video/mp4"), (small, "a.json", "application/json")]
    up = _swift_uploader(swift)
    headers: list[dict] = []
    up._client.meta.events.register("before-send.s3.*", lambda request, **_: headers.append(dict(request.headers)))
    objects = up.upload(files)
    assert [o.etag for o in objects] == [expected_etag(big), expected_etag(small)]
    assert [o.verified for o in objects] == ["MD5", "MD5"]
    assert objects[0].etag.endswith("-3")
    sent = [h for h in headers if "x-amz-checksum-crc32" in h]  # 3 parts and the small PUT, over HTTPS
    assert len(sent) == 4 and not [h for h in headers if "aws-chunked" in str(h.get("Content-Encoding", ""))]
    https = ssl.create_default_context(cafile=str(swift.ca_bundle))
    with urllib.request.urlopen(_swift_uploader(swift).presigned_url("p/a.json", expires_s=600), context=https) as r:
        assert r.read() == small.read_bytes()
    again = _swift_uploader(swift)
    operations = _sent(again)
    assert again.upload(files) == objects and set(operations) == {"HeadObject"}


def test_swift_fails_fast_with_the_reason(swift, tmp_path, monkeypatch):
    """Refused credentials, a missing bucket, a missing file, an untrusted certificate: one attempt, the reason
    in words, where the file is, and never the secret (with an hour's deadline)."""
    from tests.swift_server import SECRET_KEY

    _bucket(swift.endpoint, "fails")
    src = _file(tmp_path / "x.mp4", 100)
    error = str(_fails_at_once(_swift_uploader(swift, "s3://no-such-bucket/p"), src))
    assert "to s3://no-such-bucket/p failed: no such bucket (404 NoSuchBucket)" in error and str(src) in error
    gone = tmp_path / "gone.mp4"
    error = str(_fails_at_once(_swift_uploader(swift, "s3://fails/p"), gone))
    assert f"the local file {gone} does not exist" in error
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    error = str(_fails_at_once(_swift_uploader(swift, "s3://fails/p"), src))
    assert "failed: the server refused the credentials (403 SignatureDoesNotMatch)" in error
    assert error.endswith(f"the file stays at {src}")
    assert "not-the-secret" not in error and SECRET_KEY not in error
    monkeypatch.delenv("AWS_CA_BUNDLE")
    error = str(_fails_at_once(_swift_uploader(swift, "s3://fails/p"), src))
    assert "failed: the server's TLS certificate was not accepted; the file stays at" in error


def test_swift_restart_during_upload_loses_nothing(swift, tmp_path):
    """Swift keeps objects on disk: stop every server mid-upload, start them again, the upload completes."""
    _bucket(swift.endpoint, "restart")
    _swift_uploader(swift, "s3://restart/p").upload(
        [(_file(tmp_path / "earlier.mp4", 1000), "earlier.mp4", "video/mp4")]
    )
    big = _file(tmp_path / "big.mp4", 40 * MiB)
    held = _HeldRetries()
    up = Uploader(
        parse_destination("s3://restart/p"),
        StorageOptions(endpoint_url=swift.endpoint, addressing_style="path", deadline_s=120),
        sleep=held.sleep,
        on_wait=held.on_wait,
    )
    result: dict = {}
    sending, outage = _hold_second_part(up)
    thread = threading.Thread(target=lambda: result.update(objects=up.upload([(big, "big.mp4", "video/mp4")])))
    thread.start()
    assert sending.wait(timeout=30)
    swift.stop()  # every Swift server, in the middle of the multipart upload
    outage.set()
    assert held.waiting.wait(timeout=120)  # the upload failed and waits to retry
    assert thread.is_alive()
    swift.start()
    held.back.set()
    thread.join(timeout=120)
    [obj] = result["objects"]
    client = boto3.session.Session().client("s3", endpoint_url=swift.endpoint)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="restart")["Contents"])
    assert keys == ["p/big.mp4", "p/earlier.mp4"]  # the earlier object survived the restart too
    assert obj.etag == expected_etag(big)
