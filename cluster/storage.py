"""Uploads of finished renders to S3-compatible storage (boto3) or a local folder.

boto3's transfer manager does multipart uploads. Every upload request carries a CRC32 checksum (boto3's
flexible checksums, sent as headers: servers that predate them ignore headers but refuse the aws-chunked
trailers boto3 would use over HTTPS). After the upload the object's HEAD is compared with the local file, strongest
evidence first: the S3 checksum (`ChecksumMode=ENABLED`; CRC32, SHA-256 or SHA-1, whole-object or the
multipart checksum of part checksums), else the ETag as MD5 (or multipart MD5-of-MD5s) where the ETag is
one, i.e. not on SSE-KMS or SSE-C objects, else the size alone, and `UploadedObject.verified` says which.
An object already there and identical by the same rules (checksum or MD5 ETag, never size alone; a folder's
file by its MD5) is not uploaded or copied again, so a restarted coordinator does not upload twice.

Only what can succeed on retry is retried, with exponential backoff until a deadline: connection errors,
timeouts, 5xx, throttling, data damaged in transit. A missing or unreadable local file, missing or refused
credentials, a missing bucket or a rejected parameter fail at once with the reason in words
(`UploadError.retryable` is False). Either way the local files stay, and the sidecar goes up last, so a
remote sidecar means a complete output. Credentials come from boto3's standard chain and never appear in
messages.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore import exceptions as bce
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.utils import ChunksizeAdjuster

from cluster.parts import get_file, put_file
from jobs.keys import Destination, join_key
from ltx2.checkpoint import cached_file_sha256, default_cache_dir, file_sha256

MULTIPART_THRESHOLD = 8 * 1024 * 1024
MULTIPART_CHUNK = 8 * 1024 * 1024
VERIFY_ATTEMPTS = 3
"""Uploads of one file whose stored object differs from the local file before giving up (a file rewritten
while it uploads, or a server that stores something else, will not be fixed by more attempts)."""

log = logging.getLogger(__name__)


class UploadError(RuntimeError):
    """An upload that could not be completed or verified (the local files are kept).

    `retryable` is True when every failure was transient (network, 5xx, throttling) and the deadline ran out:
    the same upload may succeed later. False when retrying cannot help until someone fixes the cause (a missing
    file, refused credentials, a missing bucket, a rejected parameter, an object that kept differing).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable

    def __reduce__(self) -> tuple:
        return type(self), (str(self),), {"retryable": self.retryable}  # a worker's upload error keeps its kind


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
    multipart_threshold: int = MULTIPART_THRESHOLD
    """Files this large or larger go up in parts of `multipart_chunk` bytes (S3's minimum part is 5 MiB)."""
    multipart_chunk: int = MULTIPART_CHUNK
    attempts: int = 3
    """botocore's own tries of one request (its standard retry mode), inside each of our retries."""
    connect_timeout_s: float = 5.0


@dataclass(frozen=True)
class UploadedObject:
    key: str
    bytes: int
    etag: str
    url: str
    verified: str = "size"
    """How the stored object was confirmed to be the local file: an S3 checksum algorithm ("CRC32", "SHA256",
    "SHA1"), "MD5" (the ETag, or a local copy's content), or "size" (the server gave neither a checksum nor an
    ETag that is an MD5, e.g. an SSE-KMS object on a server without checksums); "kept": an object that was there
    already and is left as it is (`Uploader.stored`)."""


def expected_etag(path: Path, threshold: int = MULTIPART_THRESHOLD, chunk: int = MULTIPART_CHUNK) -> str:
    """The ETag S3 gives `path` when uploaded with this transfer configuration (unencrypted or SSE-S3)."""
    return LocalFile(path, threshold, chunk).etag()


class _Crc32:
    """zlib's CRC32 (the one S3 uses) with hashlib's interface."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


CHECKSUMS = ("CRC32", "SHA256", "SHA1")
"""S3 checksum algorithms computed here (CRC32C and CRC64NVME need awscrt: objects with only those are
verified by ETag or size). CRC32 first: it is what boto3 sends."""


def _hasher(algorithm: str) -> Any:
    return _Crc32() if algorithm == "CRC32" else hashlib.new(algorithm.lower(), usedforsecurity=False)


class LocalFile:
    """What S3 should report for a local file uploaded with a transfer configuration; each digest is computed
    on first use (one read of the file) and kept."""

    def __init__(self, path: Path, threshold: int = MULTIPART_THRESHOLD, chunk: int = MULTIPART_CHUNK) -> None:
        self.path = path
        self.size = path.stat().st_size
        # s3transfer's rule (size >= threshold) and its part size (grown past 10 000 parts), so the part
        # boundaries here are the uploaded ones.
        self.part_size = ChunksizeAdjuster().adjust_chunksize(chunk, self.size) if self.size >= threshold else None
        self._digests: dict[str, tuple[bytes, bytes | None, int]] = {}

    def digests(self, algorithm: str) -> tuple[bytes, bytes | None, int]:
        """(whole-file digest, digest of the concatenated part digests or None when single-part, parts)."""
        if algorithm not in self._digests:
            whole, parts = _hasher(algorithm), []
            block = self.part_size or 8 * 1024 * 1024
            with self.path.open("rb") as f:
                while data := f.read(block):
                    whole.update(data)
                    part = _hasher(algorithm)
                    part.update(data)
                    parts.append(part.digest())
            composite = None
            if self.part_size is not None:
                combined = _hasher(algorithm)
                combined.update(b"".join(parts))
                composite = combined.digest()
            self._digests[algorithm] = (whole.digest(), composite, len(parts))
        return self._digests[algorithm]

    def etag(self) -> str:
        """The MD5 ETag: the file's MD5, or for a multipart upload the MD5 of the part MD5s and "-parts"."""
        whole, composite, parts = self.digests("MD5")
        return whole.hex() if composite is None else f"{composite.hex()}-{parts}"


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


MD5_ETAG = re.compile(r"[0-9a-f]{32}(-[0-9]+)?")


def _compare(stored: str, whole: str, composite: str | None, parts: int, full_object: bool) -> bool | None:
    """Whether a stored checksum or ETag equals the local one; None when it describes another part layout."""
    value, _, count = stored.partition("-")
    if count:  # a multipart object's digest of its part digests, with the number of parts
        return value == composite if composite is not None and int(count) == parts else None
    if composite is None or full_object:  # single-part on both sides, or a whole-object checksum
        return value == whole
    # A multipart object's digest without the part count (moto's composite checksums): either kind may match,
    # and a difference may only mean another part size.
    return True if value in (whole, composite) else None


def verify(head: dict[str, Any], local: LocalFile) -> tuple[bool | None, str, str]:
    """Whether a HEAD response (asked with `ChecksumMode="ENABLED"`) describes `local`'s content.

    (True, how, "") when a checksum or the MD5 ETag matches; (False, how, what differs) when the size or that
    evidence differs; (None, "size", "") when the size matches and nothing stronger can be compared.
    """
    if head.get("ContentLength") != local.size:
        return False, "size", f"size {head.get('ContentLength')}, local {local.size}"
    for algorithm in CHECKSUMS:
        stored = head.get(f"Checksum{algorithm}")
        if stored:
            whole, composite, parts = local.digests(algorithm)
            mine = (_b64(whole), composite and _b64(composite))
            same = _compare(stored, *mine, parts, head.get("ChecksumType") == "FULL_OBJECT")
            if same is not None:
                return same, algorithm, "" if same else f"{algorithm} {stored}, local {' or '.join(filter(None, mine))}"
    etag = str(head.get("ETag", "")).strip('"')
    # The ETag is the MD5 only for unencrypted and SSE-S3 objects; SSE-KMS and SSE-C ETags are opaque.
    encrypted = str(head.get("ServerSideEncryption", "")).startswith("aws:kms") or head.get("SSECustomerAlgorithm")
    if not encrypted and MD5_ETAG.fullmatch(etag):
        whole, composite, parts = local.digests("MD5")
        same = _compare(etag, whole.hex(), composite and composite.hex(), parts, False)
        if same is not None:
            return same, "MD5", "" if same else f"ETag {etag}, local {local.etag()}"
    return None, "size", ""


S3_ERRORS: dict[str, tuple[str, bool]] = {
    # code: (what it means, whether the same request can succeed later)
    "SignatureDoesNotMatch": ("the server refused the credentials", False),
    "InvalidAccessKeyId": ("the server refused the credentials (unknown access key)", False),
    "InvalidToken": ("the server refused the session token", False),
    "ExpiredToken": ("the session token has expired", False),
    "TokenRefreshRequired": ("the session token has expired", False),
    "AccessDenied": ("the credentials are not allowed to do this: {message}", False),  # KMS keys say which
    "AllAccessDisabled": ("all access to the bucket is disabled", False),
    "AccountProblem": ("the account cannot be used", False),
    # The clock will not fix itself between retries; saying so at once gets it fixed.
    "RequestTimeTooSkewed": ("this machine's clock is too far from the server's", False),
    "AuthorizationHeaderMalformed": ("the request was signed for another region (set the region)", False),
    "PermanentRedirect": ("the bucket is in another region or at another endpoint", False),
    "NoSuchBucket": ("no such bucket", False),
    "NoSuchKey": ("no such object", False),
    "InvalidBucketName": ("the bucket name is not valid", False),
    "InvalidArgument": ("the server rejected a parameter: {message}", False),
    "InvalidRequest": ("the server rejected the request: {message}", False),
    "EntityTooLarge": ("the file is larger than the server accepts", False),
    "NotImplemented": ("the server does not implement this request: {message}", False),
    "SlowDown": ("the server asked to slow down", True),
    "Throttling": ("the server is throttling requests", True),
    "ThrottlingException": ("the server is throttling requests", True),
    "RequestThrottled": ("the server is throttling requests", True),
    "TooManyRequestsException": ("the server is throttling requests", True),
    "RequestTimeout": ("the server timed out waiting for data", True),
    "InternalError": ("the server had an internal error", True),
    "ServiceUnavailable": ("the server is unavailable", True),
    "BadDigest": ("the data was damaged in transit", True),
    "XAmzContentSHA256Mismatch": ("the data was damaged in transit", True),
    "IncompleteBody": ("the server received fewer bytes than were sent", True),
    "OperationAborted": ("a conflicting operation was in progress", True),
    "NoSuchUpload": ("the server dropped the multipart upload", True),
}
"""What S3 error codes mean, in words ({message}: the server's own words, where the code alone says too little).
Codes not listed are judged by their HTTP status (`_by_status`), with the server's words."""


def _by_status(status: int) -> tuple[str, bool]:
    if status == 403:
        return "the server refused the credentials or the access: {message}", False
    if status == 404:
        return "no such bucket or object: {message}", False
    if status == 429:
        return "the server is throttling requests", True
    if status >= 500 and status != 501:
        return "the server had an error: {message}", True
    return "the server rejected the request: {message}", False


def describe(error: BaseException) -> tuple[str, bool] | None:
    """(the reason in words, whether retrying can help) for an error from boto3, None when it is not one
    (a local OSError: the caller knows which file it was about)."""
    if isinstance(error, S3UploadFailedError) and isinstance(error.__context__, ClientError):
        error = error.__context__  # boto3 wraps the ClientError of upload_file
    if isinstance(error, RetriesExceededError) and error.last_exception is not None:
        error = error.last_exception  # and the last network error of download_file
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        words, retry = S3_ERRORS.get(code) or _by_status(status)
        message = _redact(error.response.get("Error", {}).get("Message") or "")
        if message in {h.phrase for h in HTTPStatus}:  # a HEAD's error has no body: botocore repeats the status
            message = ""
        words = words.format(message=message) if message else words.replace(": {message}", "")
        tag = " ".join(dict.fromkeys(str(x) for x in (status or "", code) if x))  # "403 SignatureDoesNotMatch"
        return f"{words} ({tag})", retry
    if isinstance(error, bce.NoCredentialsError):
        return "no credentials found (environment, AWS config files, profile or instance role)", False
    if isinstance(error, bce.PartialCredentialsError):
        return f"the credentials are incomplete: {_redact(error)}", False
    if isinstance(error, bce.ParamValidationError):
        return f"a request parameter is invalid: {_redact(error)}", False
    if isinstance(error, bce.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(error).upper().replace(" ", "_"):
        return "the server's TLS certificate was not accepted", False
    transient = (
        (bce.ConnectTimeoutError, "the connection to the server timed out"),
        (bce.ReadTimeoutError, "the server did not answer in time"),
        (bce.EndpointConnectionError, "the server could not be reached"),
        (bce.ConnectionClosedError, "the connection closed during the request"),
        (bce.ConnectionError, "the connection to the server failed"),
        (bce.HTTPClientError, "the connection to the server failed"),
        (bce.IncompleteReadError, "the connection closed during the response"),
        (bce.ChecksumError, "the data was damaged in transit"),
        (bce.FlexibleChecksumError, "the data was damaged in transit"),
        (ConnectionError, "the connection to the server failed"),
        (TimeoutError, "the server did not answer in time"),
    )
    for kind, words in transient:
        if isinstance(error, kind):
            return f"{words} ({type(error).__name__})", True
    if isinstance(error, BotoCoreError):
        return f"{type(error).__name__}: {_redact(error)}", False
    return None


def _checksums_in_headers(params: dict[str, Any], **_: Any) -> None:
    """Send request checksums as headers, never as aws-chunked trailers.

    botocore puts them in trailers over HTTPS, which S3-compatible servers that predate flexible checksums
    refuse (Swift 2.30: "501 NotImplemented: Transfering payloads in multiple chunks using aws-chunked is not
    supported"), while they ignore the headers. A header costs one more read of each part from the disk.
    s3transfer's own S3Transfer does the same.
    """
    algorithm = params.get("context", {}).get("checksum", {}).get("request_algorithm")
    if isinstance(algorithm, dict):
        algorithm["in"] = "header"


def s3_client(options: StorageOptions) -> Any:
    """A boto3 S3 client for the options (credentials from boto3's standard chain)."""
    session = boto3.session.Session(profile_name=options.profile)
    client = session.client(
        "s3",
        endpoint_url=options.endpoint_url,
        region_name=options.region,
        config=Config(
            s3={"addressing_style": options.addressing_style},
            retries={"mode": "standard", "max_attempts": options.attempts},
            signature_version="s3v4",
            connect_timeout=options.connect_timeout_s,
            read_timeout=60,
            # A CRC32 on every upload request (the server checks it where it can); downloads are checked
            # against their pinned SHA-256 instead.
            request_checksum_calculation="when_supported",
            response_checksum_validation="when_required",
        ),
    )
    client.meta.events.register("before-call.s3.*", _checksums_in_headers)
    return client


class InputFetchError(RuntimeError):
    """An s3:// input that could not be fetched, or whose content is not the one the job pinned."""


def input_cache_dir() -> Path:
    """Where s3:// inputs are kept on this node: LTX2_FARM_INPUT_CACHE, else the farm's cache folder."""
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
    if sha256 is not None and target.is_file() and file_sha256(target) == sha256:
        return target, sha256
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}.partial-{os.getpid()}")
    try:
        # One GET, no HEAD first (response_checksum_validation="when_required"): its errors name what is missing.
        s3_client(options).download_file(where.bucket, where.prefix, str(tmp))
    except Exception as error:
        tmp.unlink(missing_ok=True)
        described = describe(error)
        if described is None:
            if not isinstance(error, OSError):
                raise
            raise InputFetchError(f"{url}: cannot write {tmp.parent} ({error.strerror or error})") from None
        raise InputFetchError(f"{url}: {described[0]}") from None
    digest = file_sha256(tmp)
    if sha256 is not None and digest != sha256:
        tmp.unlink(missing_ok=True)
        raise InputFetchError(
            f"{url} changed since the job was validated (SHA-256 {digest[:12]}…, pinned {sha256[:12]}…)"
        )
    os.replace(tmp, target)
    return target, digest


PINNED = "#sha256="


def input_ref(path: str, sha256: str | None) -> str:
    """How a job input travels to a worker: its path or s3:// URL pinned by its digest (pinned at validation).
    A worker uses only a copy with that content: fetched (s3://), shipped with the job (`ship_inputs`), or the
    path itself where it exists on the worker's node with that content (one machine)."""
    return f"{path}{PINNED}{sha256}" if sha256 else path


def shipped_path(digest: str, name: str) -> Path:
    """Where this node keeps an input shipped to it with a job: by content, under its own file name (decoders
    look at extensions)."""
    return input_cache_dir() / "shipped" / digest / (Path(name).name or "input")


def ship_inputs(
    refs: list[str], put: Callable[[bytes], Any], shipped: dict[str, Any]
) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """On the submitting node: the local files among a job's input `refs` as {digest: (name, parts)}, each read
    once, in parts (`cluster.parts`) that `put` makes shareable objects (Ray's object store); `shipped`
    memoises them across jobs."""
    out = {}
    for ref in refs:
        path, _, digest = ref.partition(PINNED)
        if not digest or path.startswith("s3://") or path.startswith(CANNY):
            continue
        if digest not in shipped:
            if cached_file_sha256(Path(path)) != digest:
                raise InputFetchError(f"{path} changed since the job was validated (pinned SHA-256 {digest[:12]}…)")
            shipped[digest] = put_file(Path(path), put)
        out[digest] = (Path(path).name, shipped[digest])
    return out


def stock_inputs(
    inputs: dict[str, tuple[str, tuple[Any, ...]]] | None, get: Callable[[Any], bytes] = lambda part: part
) -> None:
    """On a worker: write the inputs shipped with a job into this node's cache, part by part, each checked
    against its digest, unless a copy is there already."""
    for digest, (name, parts) in (inputs or {}).items():
        target = shipped_path(digest, name)
        if target.is_file():
            continue

        def check(sha256: str, _size: int, name: str = name, digest: str = digest) -> None:
            if sha256 != digest:
                raise InputFetchError(f"{name} arrived damaged (its SHA-256 is not the pinned {digest[:12]}…)")

        target.parent.mkdir(parents=True, exist_ok=True)
        get_file(parts, get, target, check)


def _local_input(path: str, digest: str) -> str:
    """A pinned local input on this node: its shipped copy, or the path itself if it holds that content."""
    shipped = shipped_path(digest, path)
    if shipped.is_file():
        return str(shipped)
    if Path(path).is_file() and cached_file_sha256(Path(path)) == digest:
        return path
    raise InputFetchError(
        f"{path} is not on this node and was not shipped with the job (SHA-256 {digest[:12]}…): "
        "submit from the node that holds it, or use an s3:// URL"
    )


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
        if PINNED in value and not value.startswith(CANNY):
            return _local_input(*value.split(PINNED, 1))
        if value.startswith(CANNY):
            from cluster.inputs import canny_file_name, control_cache_dir
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


def credentials_problem(options: StorageOptions) -> str | None:
    """Why an upload with these options would find no credentials, or None. boto3 resolves its chain here without
    asking the bucket anything (an instance or pod role is asked of the metadata service, briefly), so missing
    credentials are refused before a render, not an hour of retries after it."""
    try:
        session = boto3.session.Session(profile_name=options.profile)
    except bce.ProfileNotFound:
        return f"--profile {options.profile}: no such profile in the AWS config files; name one that is there"
    try:
        credentials = session.get_credentials()
    except BotoCoreError as error:
        return f"the S3 credentials cannot be used: {_redact(error)}"
    if credentials is None:
        return (
            "no S3 credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --profile, "
            "~/.aws/credentials, or an instance or pod role): set them, or write to a folder instead"
        )
    return None


@dataclass(frozen=True)
class UploadWait:
    """An upload waiting out a failure that a retry may fix (the server down, throttling): what it waits for,
    since when and until when (epoch seconds: it is shown on another node than the one uploading), which retry
    comes next, and where the local file is."""

    path: str
    destination: str
    reason: str
    started: float
    deadline: float
    retry: int

    def line(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        until = time.strftime("%H:%M:%S", time.localtime(self.deadline))
        return (
            f"upload of {Path(self.path).name} to {self.destination} is waiting: {self.reason}; "
            f"{now - self.started:.0f} s so far, retry {self.retry}, retrying until {until} "
            f"({max(0.0, self.deadline - now) / 60:.0f} min left); the file is at {self.path}"
        )


_STOP = threading.Event()


def stop_retrying() -> None:
    """Make every upload of this process that waits out an outage give up now, its file kept: the process is being
    stopped (Ctrl-C), and an upload thread would otherwise hold its exit until the deadline."""
    _STOP.set()


class _Failure(Exception):
    """One attempt's failure, in words, and whether another attempt can succeed."""

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable


class _Differs(Exception):
    """The stored object is not the local file (the file changed while uploading, or damage in transit)."""


class Uploader:
    """Puts a render's files at a destination and confirms each one.

    `on_start` gets a one-line message naming the local file and where it goes before each file's upload
    (default: logged at INFO), so the file can be found whatever becomes of the upload; `on_wait` gets an
    `UploadWait` before each retry (default: its line logged as a warning). `sleep` waits between retries
    (default: until the delay passes or `stop_retrying()`).
    """

    def __init__(
        self,
        destination: Destination,
        options: StorageOptions | None = None,
        sleep: Callable[[float], Any] | None = None,
        on_start: Callable[[str], None] | None = None,
        on_wait: Callable[[UploadWait], None] | None = None,
    ) -> None:
        self.destination = destination
        self.options = options or StorageOptions()
        self._sleep = sleep or _STOP.wait
        self._on_start = on_start or log.info
        self._on_wait = on_wait or (lambda wait: log.warning(wait.line()))
        self._client = s3_client(self.options) if destination.scheme == "s3" else None
        self._transfer = TransferConfig(
            multipart_threshold=self.options.multipart_threshold,
            multipart_chunksize=self.options.multipart_chunk,
            # Not the CRT client boto3 picks on some EC2 GPU instances when awscrt is installed: it sends checksums
            # as aws-chunked trailers whatever the client's hooks say (see _checksums_in_headers).
            preferred_transfer_client="classic",
        )

    def upload(self, files: list[tuple[Path, str, str]]) -> list[UploadedObject]:
        """Upload `(local path, key, content type)` in order (put the sidecar last); verify each."""
        return [self._with_retries(path, key, content_type) for path, key, content_type in files]

    def _url(self, key: str) -> str:
        if self._client is None:
            return str(Path(self.destination.prefix) / key)
        return f"s3://{self.destination.bucket}/{join_key(self.destination.prefix, key)}"

    def _with_retries(self, path: Path, key: str, content_type: str) -> UploadedObject:
        self._on_start(f"uploading {path} to {self._url(key)}")
        started, started_at = time.monotonic(), time.time()
        deadline = started + self.options.deadline_s
        delay = self.options.first_backoff_s
        differed = retries = 0
        while True:
            try:
                return self._upload_one(path, key, content_type)
            except _Differs as error:
                differed += 1
                failure = _Failure(
                    f"the stored object differs from the local file ({error}; upload {differed} of {VERIFY_ATTEMPTS})",
                    differed < VERIFY_ATTEMPTS,
                )
            except Exception as error:
                failure = self._failure(error, path)
            if not failure.retryable or time.monotonic() + delay > deadline or _STOP.is_set():
                waited = time.monotonic() - started
                after = f" (still, after retrying for {waited:.0f} s)" if failure.retryable else ""
                if _STOP.is_set():
                    after = f" (retries stopped after {waited:.0f} s: the process is stopping)"
                # Where the file is, unless the reason is that it is not there.
                stays = "" if str(path) in failure.reason else f"; the file stays at {path}"
                raise UploadError(
                    f"upload of {path.name} to {self.destination} failed: {failure.reason}{after}{stays}",
                    retryable=failure.retryable,
                ) from None
            retries += 1
            deadline_at = started_at + self.options.deadline_s
            self._on_wait(UploadWait(str(path), self._url(key), failure.reason, started_at, deadline_at, retries))
            self._sleep(delay)
            delay = min(self.options.max_backoff_s, delay * 2)

    def _failure(self, error: Exception, path: Path) -> _Failure:
        if isinstance(error, _Failure):
            return error
        described = describe(error)
        if described is not None:
            return _Failure(*described)
        if isinstance(error, FileNotFoundError) and error.filename in (str(path), path):
            return _Failure(f"the local file {path} does not exist", False)
        if isinstance(error, OSError):
            # Only the local file is opened here (the network's OSErrors come wrapped by botocore).
            return _Failure(f"the local file {path} cannot be read ({error.strerror or error})", False)
        return _Failure(f"{type(error).__name__}: {_redact(error)}", False)

    def _upload_one(self, path: Path, key: str, content_type: str) -> UploadedObject:
        local = LocalFile(path, self.options.multipart_threshold, self.options.multipart_chunk)
        if self._client is None:
            return self._copy(local, key)
        bucket, full_key = self.destination.bucket, join_key(self.destination.prefix, key)
        url = f"s3://{bucket}/{full_key}"
        existing = self._head(full_key, missing_ok=True)
        if existing is not None:
            same, how, _ = verify(existing, local)
            if same:  # already there, identical (e.g. uploaded before a coordinator restart): never upload twice
                return UploadedObject(full_key, local.size, existing.get("ETag", "").strip('"'), url, how)
        self._client.upload_file(
            str(path), bucket, full_key, Config=self._transfer, ExtraArgs={"ContentType": content_type}
        )
        head = self._head(full_key)
        same, how, difference = verify(head, local)
        if same is False:
            raise _Differs(difference)
        return UploadedObject(full_key, local.size, head.get("ETag", "").strip('"'), url, how)

    def _head(self, full_key: str, missing_ok: bool = False) -> dict[str, Any] | None:
        try:
            return self._client.head_object(Bucket=self.destination.bucket, Key=full_key, ChecksumMode="ENABLED")
        except ClientError as error:
            # Before the upload 403 means "not known to be there" too: S3 answers a missing key with 403 to whom
            # may not list the bucket, and wrong credentials are named by the upload's own error (a HEAD's error
            # has no body to name them).
            if missing_ok and error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (403, 404):
                return None
            raise

    def _copy(self, local: LocalFile, key: str) -> UploadedObject:
        target = Path(self.destination.prefix) / key
        local.digests("MD5")  # read before the copy: an unreadable source is the source's fault
        if _same_file(target, local):  # already there, identical: never written twice (its inode and time stay)
            return UploadedObject(str(target), local.size, local.etag(), target.resolve().as_uri(), "MD5")
        tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local.path, tmp)
            os.replace(tmp, target)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise _Failure(f"cannot write {target} ({error.strerror or error})", False) from None
        copied = LocalFile(target, self.options.multipart_threshold, self.options.multipart_chunk)
        if copied.size != local.size or copied.digests("MD5")[0] != local.digests("MD5")[0]:
            raise _Differs(f"the copy at {target} has other content")
        return UploadedObject(str(target), local.size, local.etag(), target.resolve().as_uri(), "MD5")

    def holds(self, path: Path, key: str) -> bool | None:
        """Whether `key` holds `path`'s content: None when nothing is there; False when something else is, or what
        is there cannot be shown to be the same (its size alone matches)."""
        local = LocalFile(path, self.options.multipart_threshold, self.options.multipart_chunk)
        if self._client is None:
            target = Path(self.destination.prefix) / key
            return _same_file(target, local) if os.path.lexists(target) else None
        head = self._head(join_key(self.destination.prefix, key), missing_ok=True)
        return None if head is None else verify(head, local)[0] is True

    def stored(self, key: str) -> UploadedObject | None:
        """The object at `key` as it is (None when nothing is there), to report one that is kept (`verified`:
        "kept")."""
        if self._client is None:
            target = Path(self.destination.prefix) / key
            if not target.is_file():
                return None
            return UploadedObject(
                str(target), target.stat().st_size, LocalFile(target).etag(), target.resolve().as_uri(), "kept"
            )
        full_key = join_key(self.destination.prefix, key)
        head = self._head(full_key, missing_ok=True)
        if head is None:
            return None
        url = f"s3://{self.destination.bucket}/{full_key}"
        return UploadedObject(full_key, head["ContentLength"], head.get("ETag", "").strip('"'), url, "kept")

    def read(self, key: str) -> bytes | None:
        """The content of the (small) object at `key`, or None when nothing is there."""
        if self._client is None:
            target = Path(self.destination.prefix) / key
            return target.read_bytes() if target.is_file() else None
        try:
            response = self._client.get_object(
                Bucket=self.destination.bucket, Key=join_key(self.destination.prefix, key)
            )
        except ClientError as error:
            if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (403, 404):
                return None  # as `_head` before an upload: not known to be there
            raise
        return response["Body"].read()

    def delete(self, key: str) -> None:
        """Remove the object at `key` (nothing there is no error)."""
        if self._client is None:
            (Path(self.destination.prefix) / key).unlink(missing_ok=True)
            return
        self._client.delete_object(Bucket=self.destination.bucket, Key=join_key(self.destination.prefix, key))

    def exists(self, key: str) -> bool:
        """Whether `key` is already at the destination (an output whose sidecar is there is complete)."""
        if self._client is None:
            return (Path(self.destination.prefix) / key).is_file()
        return self._head(join_key(self.destination.prefix, key), missing_ok=True) is not None

    def presigned_url(self, key: str, expires_s: int = 7 * 24 * 3600) -> str:
        """A time-limited HTTPS link to a finished output (file:// URI for local destinations)."""
        if self._client is None:
            return Path(key).resolve().as_uri()
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.destination.bucket, "Key": key}, ExpiresIn=expires_s
        )


def _same_file(target: Path, local: LocalFile) -> bool:
    """Whether the file at `target` has `local`'s content (size, then MD5)."""
    if not target.is_file() or target.stat().st_size != local.size:
        return False
    return LocalFile(target).digests("MD5")[0] == local.digests("MD5")[0]


def _redact(text: object) -> str:
    """An error's text without anything that looks like a credential."""
    text = str(text)
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        secret = os.environ.get(var)
        if secret:
            text = text.replace(secret, "***")
    return text
