"""Uploads of finished renders to S3-compatible storage (boto3) or a local folder.

boto3's transfer manager does multipart uploads; every object is checked after upload against its
ETag computed locally (the MD5, or the multipart MD5-of-MD5s, which AWS, moto and Swift's S3 API all
produce), so a corrupted upload is caught. Transient failures are retried with exponential backoff until
a deadline: an outage delays an upload, it never drops it, and the local files stay until it is
confirmed. The sidecar goes up last, so a remote sidecar means a complete output. Credentials come
from boto3's standard chain and never appear in messages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from jobs.keys import Destination, join_key

MULTIPART_THRESHOLD = 8 * 1024 * 1024
MULTIPART_CHUNK = 8 * 1024 * 1024


class UploadError(RuntimeError):
    """An upload that could not be completed or verified (the local files are kept)."""


@dataclass(frozen=True)
class StorageOptions:
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"  # "path" for most S3-compatible servers
    profile: str | None = None
    deadline_s: float = 3600.0
    """How long to keep retrying an outage before giving up (the files stay local either way)."""
    first_backoff_s: float = 0.5
    max_backoff_s: float = 30.0


@dataclass(frozen=True)
class UploadedObject:
    key: str
    bytes: int
    etag: str
    url: str


def expected_etag(path: Path, threshold: int = MULTIPART_THRESHOLD, chunk: int = MULTIPART_CHUNK) -> str:
    """The ETag S3 gives `path` when uploaded with this transfer configuration."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if size < threshold:
            return hashlib.md5(f.read(), usedforsecurity=False).hexdigest()
        digests = []
        while block := f.read(chunk):
            digests.append(hashlib.md5(block, usedforsecurity=False).digest())
    combined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
    return f"{combined}-{len(digests)}"


def _retryable(error: Exception) -> bool:
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or code in {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"}
    return isinstance(error, BotoCoreError | ConnectionError | OSError)


def s3_client(options: StorageOptions) -> Any:
    """A boto3 S3 client for the options (credentials from boto3's standard chain)."""
    session = boto3.session.Session(profile_name=options.profile)
    return session.client(
        "s3",
        endpoint_url=options.endpoint_url,
        region_name=options.region,
        config=Config(
            s3={"addressing_style": options.addressing_style},
            retries={"mode": "standard", "max_attempts": 3},
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=60,
            # S3-compatible servers differ in the newer flexible checksums; we verify ETags instead.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


class InputFetchError(RuntimeError):
    """An s3:// input that could not be fetched, or whose content is not the one the job pinned."""


def input_cache_dir() -> Path:
    """Where s3:// inputs are kept on this node: LTX2_FARM_INPUT_CACHE, else the farm's cache folder."""
    from ltx2.tiny import default_cache_dir

    return Path(os.environ.get("LTX2_FARM_INPUT_CACHE") or default_cache_dir() / "inputs")


def fetch_input(url: str, sha256: str | None = None, options: StorageOptions | None = None) -> tuple[Path, str]:
    """(local path, SHA-256) of an s3:// object, downloaded once per node into the input cache.

    With `sha256` the cached copy is reused when it has that content, and a download with other content
    (the object changed after the job was validated) is refused rather than rendered.
    """
    from jobs.keys import parse_destination

    options = options or StorageOptions(endpoint_url=os.environ.get("AWS_ENDPOINT_URL"), addressing_style="path")
    where = parse_destination(url)
    name = Path(where.prefix).name or "object"
    target = input_cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:20] / name
    if sha256 is not None and target.is_file() and _file_sha256(target) == sha256:
        return target, sha256
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}.partial-{os.getpid()}")
    try:
        s3_client(options).download_file(where.bucket, where.prefix, str(tmp))
    except ClientError as error:
        tmp.unlink(missing_ok=True)
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        why = "no such object" if status == 404 else f"{type(error).__name__}: {_redact(error)}"
        raise InputFetchError(f"{url}: {why}") from None
    except (BotoCoreError, OSError) as error:
        tmp.unlink(missing_ok=True)
        raise InputFetchError(f"{url}: {type(error).__name__}: {_redact(error)}") from None
    digest = _file_sha256(tmp)
    if sha256 is not None and digest != sha256:
        tmp.unlink(missing_ok=True)
        raise InputFetchError(
            f"{url} changed since the job was validated (SHA-256 {digest[:12]}…, pinned {sha256[:12]}…)"
        )
    os.replace(tmp, target)
    return target, digest


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


PINNED = "#sha256="


def input_ref(path: str, sha256: str | None) -> str:
    """How a job input travels to a worker: a local path as is, an s3:// URL with its pinned digest."""
    return f"{path}{PINNED}{sha256}" if path.startswith("s3://") and sha256 else path


CANNY = "canny:"


def canny_ref(source: str, sha256: str, low: int, high: int) -> str:
    """How a canny control pass travels: the recipe (thresholds, source digest, source reference), so every
    node derives the same edges from its own copy of the source instead of reading another node's file."""
    return f"{CANNY}{low}:{high}:{sha256}:{source}"


def localize(value: Any) -> Any:
    """`value` (request dataclasses, tuples, dicts, strings) with every input made available on this node:
    pinned s3:// references replaced by the path of a verified local copy, canny recipes by the path of the
    edges traced here (cached): workers fetch and derive their own inputs."""
    if isinstance(value, str):
        if value.startswith("s3://") and PINNED in value:
            url, _, digest = value.partition(PINNED)
            return str(fetch_input(url, digest)[0])
        if value.startswith(CANNY):
            from jobs.inputs import canny_file_name, control_cache_dir
            from ltx2.control import canny_pass

            low, high, digest, source = value.removeprefix(CANNY).split(":", 3)
            name = canny_file_name(digest, int(low), int(high))
            return str(canny_pass(localize(source), control_cache_dir() / name, int(low), int(high)))
        return value
    if isinstance(value, tuple):
        return tuple(localize(v) for v in value)
    if isinstance(value, list):
        return [localize(v) for v in value]
    if isinstance(value, dict):
        return {k: localize(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: localize(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    return value


class Uploader:
    """Puts a render's files at a destination and confirms each one."""

    def __init__(
        self,
        destination: Destination,
        options: StorageOptions | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.destination = destination
        self.options = options or StorageOptions()
        self._sleep = sleep
        self._client = s3_client(self.options) if destination.scheme == "s3" else None
        self._transfer = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK)

    def upload(self, files: list[tuple[Path, str, str]]) -> list[UploadedObject]:
        """Upload `(local path, key, content type)` in order (put the sidecar last); verify each."""
        return [self._with_retries(path, key, content_type) for path, key, content_type in files]

    def _with_retries(self, path: Path, key: str, content_type: str) -> UploadedObject:
        deadline = time.monotonic() + self.options.deadline_s
        delay = self.options.first_backoff_s
        while True:
            try:
                return self._upload_one(path, key, content_type)
            except Exception as error:
                if not _retryable(error) or time.monotonic() + delay > deadline:
                    raise UploadError(
                        f"upload of {path.name} to {self.destination} failed: "
                        f"{type(error).__name__}: {_redact(error)}; the file stays at {path}"
                    ) from None
                self._sleep(delay)
                delay = min(self.options.max_backoff_s, delay * 2)

    def _upload_one(self, path: Path, key: str, content_type: str) -> UploadedObject:
        full_key = join_key(self.destination.prefix, key)
        size = path.stat().st_size
        if self._client is None:
            target = Path(self.destination.prefix) / key
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
            if target.stat().st_size != size:
                raise UploadError(f"copy of {path.name} to {target} is incomplete")
            return UploadedObject(str(target), size, expected_etag(target), target.resolve().as_uri())
        existing = self._existing(full_key)
        if existing is not None and existing == (size, expected_etag(path)):
            # Already there, identical (e.g. uploaded before a coordinator restart): never upload twice.
            return UploadedObject(full_key, size, existing[1], f"s3://{self.destination.bucket}/{full_key}")
        self._client.upload_file(
            str(path), self.destination.bucket, full_key, Config=self._transfer, ExtraArgs={"ContentType": content_type}
        )
        head = self._client.head_object(Bucket=self.destination.bucket, Key=full_key)
        etag = head["ETag"].strip('"')
        want = expected_etag(path)
        if head["ContentLength"] != size or etag != want:
            raise UploadError(
                f"{full_key}: stored object does not match the local file "
                f"(size {head['ContentLength']} vs {size}, ETag {etag} vs {want})"
            )
        return UploadedObject(full_key, size, etag, f"s3://{self.destination.bucket}/{full_key}")

    def _existing(self, full_key: str) -> tuple[int, str] | None:
        try:
            head = self._client.head_object(Bucket=self.destination.bucket, Key=full_key)
        except ClientError as error:
            if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise
        return head["ContentLength"], head["ETag"].strip('"')

    def exists(self, key: str) -> bool:
        """Whether `key` is already at the destination (an output whose sidecar is there is complete)."""
        if self._client is None:
            return (Path(self.destination.prefix) / key).is_file()
        return self._existing(join_key(self.destination.prefix, key)) is not None

    def presigned_url(self, key: str, expires_s: int = 7 * 24 * 3600) -> str:
        """A time-limited HTTPS link to a finished output (file:// URI for local destinations)."""
        if self._client is None:
            return Path(key).resolve().as_uri()
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.destination.bucket, "Key": key}, ExpiresIn=expires_s
        )


def _redact(error: Exception) -> str:
    """Error text without anything that looks like a credential."""
    text = str(error)
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        secret = os.environ.get(var)
        if secret:
            text = text.replace(secret, "***")
    return text
