"""One path for every finished render: written on the node that made it, published by that node.

A render's MP4 and sidecar are written into the staging folder of the node that made them (a worker's for a
whole render, the head's for a planned job the coordinator muxed). From there:
- with an `s3://` destination, that node uploads them (MP4 first, sidecar last: a remote sidecar means a
  complete output), each verified, and deletes its staged copies;
- otherwise the head's output folder receives them: the holder cuts the MP4 into parts that travel through
  Ray's object store, and the head writes them atomically, checks the SHA-256 the holder measured, and only
  then tells the holder to drop its staged copies. A `file://` destination is then copied from there.
A destination that names the MP4 itself (`render --output long.mp4`) never replaces a file there (`put_output`).

Publishing is a step of its own, after the render returned: a worker's slot is free for the next job while
its last output uploads (a storage outage delays outputs, never renders). The head never opens a path that
another node wrote. This module is Ray-free: the executor passes its `put`/`get` (Ray's object store, or nothing at all
in-process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.output_files import disk_full_guard
from cluster.parts import get_file, put_file
from cluster.storage import StorageOptions, UploadedObject, Uploader, UploadError, UploadWait, describe
from jobs.keys import DEFAULT_KEY_TEMPLATE, Destination, destination_keys
from jobs.outputs import OutputPaths, job_content_hash, output_paths
from jobs.spec import ValidJob
from ltx2.checkpoint import cached_file_sha256, default_cache_dir

HEAD = "head"
"""The staging folder name of outputs the head itself muxed (planned jobs)."""


class DeliveryError(RuntimeError):
    """An output that reached the head damaged (its SHA-256 differs from what its holder measured)."""


@dataclass(frozen=True)
class OutputTarget:
    """Where a job's output goes: the head's output folder, and an optional destination."""

    destination: Destination | None = None
    storage: StorageOptions = field(default_factory=StorageOptions)
    key_template: str = DEFAULT_KEY_TEMPLATE
    campaign: str | None = None

    @property
    def uploads_from_holder(self) -> bool:
        """An object store is reached from any node: the node holding the files uploads them."""
        return self.destination is not None and self.destination.scheme == "s3"

    @property
    def staging_name(self) -> str:
        return self.campaign or "render"

    def keys(self, job: ValidJob) -> tuple[str, str]:
        """The object keys of the job's MP4 and sidecar under the destination (the MP4 it names, if it does)."""
        return destination_keys(self.destination, self.key_template, job, self.campaign)


@dataclass(frozen=True)
class StagedOutput:
    """What the node holding a finished render hands back: the objects it uploaded, or the parts of its MP4
    and its sidecar's bytes for the head to write."""

    video: str
    sidecar: str
    sha256: str
    bytes: int
    objects: tuple[UploadedObject, ...] = ()
    parts: tuple[Any, ...] = ()
    sidecar_bytes: bytes = b""

    @property
    def delivered(self) -> bool:
        """Already at its destination (uploaded by its holder): nothing travels to the head."""
        return bool(self.objects)


@dataclass(frozen=True)
class Published:
    """A job's output where it went: the head's copies (None when uploaded from its holder) and the objects."""

    document: dict[str, Any]
    paths: OutputPaths | None
    objects: tuple[UploadedObject, ...]


def staging_root() -> Path:
    """This node's folder for renders on their way out: LTX2_FARM_STAGING, else the farm's cache folder."""
    return Path(os.environ.get("LTX2_FARM_STAGING") or default_cache_dir() / "staging")


def staging_dir(target: OutputTarget, holder: str) -> Path:
    """Where `holder` (a worker, or the head) stages the target's renders: one folder per holder, so two
    workers of one node never publish or drop each other's files."""
    return staging_root() / holder / target.staging_name


def offer(
    paths: OutputPaths,
    job: ValidJob,
    target: OutputTarget,
    put: Callable[[bytes], Any] = lambda data: data,
    on_upload: Callable[[int, float, bool], None] | None = None,
    on_wait: Callable[[UploadWait], None] | None = None,
) -> StagedOutput:
    """On the node holding `paths`: upload them (S3 destination; staged copies removed once verified), or cut
    the MP4 into parts (`put` makes each a shareable object) for the head to `receive`.

    `on_upload(bytes, seconds, ok)` counts uploads in the holder's metrics; `on_wait` hears of each retry of an
    upload waiting out an outage (`Uploader`)."""
    size = paths.video.stat().st_size
    sha256 = cached_file_sha256(paths.video)  # the writer hashed it for the sidecar: a memo hit, not a re-read
    if target.uploads_from_holder:
        started = time.perf_counter()
        try:
            objects = put_output(paths, job, target, on_wait)
        except Exception:
            if on_upload is not None:
                on_upload(0, time.perf_counter() - started, False)
            raise
        if on_upload is not None:
            on_upload(sum(o.bytes for o in objects), time.perf_counter() - started, True)
        drop(paths)
        return StagedOutput(paths.video.name, paths.sidecar.name, sha256, size, objects=tuple(objects))
    return StagedOutput(
        paths.video.name,
        paths.sidecar.name,
        sha256,
        size,
        parts=put_file(paths.video, put),
        sidecar_bytes=paths.sidecar.read_bytes(),
    )


def receive(staged: StagedOutput, out_dir: Path, get: Callable[[Any], bytes] = lambda part: part) -> OutputPaths:
    """On the head: write an offered output into `out_dir` (each file atomically, the sidecar last) after
    checking the MP4's SHA-256 against its holder's; a full disk leaves nothing behind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = OutputPaths(video=out_dir / staged.video, sidecar=out_dir / staged.sidecar)

    def check(sha256: str, size: int) -> None:
        if sha256 != staged.sha256 or size != staged.bytes:
            raise DeliveryError(
                f"{staged.video} arrived damaged (SHA-256 {sha256[:12]}…, its holder measured "
                f"{staged.sha256[:12]}…); it will be sent again"
            )

    side_tmp = paths.sidecar.with_name(f".{paths.sidecar.name}.partial-{os.getpid()}")
    try:
        with disk_full_guard(paths):
            get_file(staged.parts, get, paths.video, check)
            side_tmp.write_bytes(staged.sidecar_bytes)
            os.replace(side_tmp, paths.sidecar)
    finally:
        side_tmp.unlink(missing_ok=True)
    return paths


def collect(
    document: dict[str, Any],
    staged: StagedOutput,
    job: ValidJob,
    target: OutputTarget,
    out_dir: Path,
    get: Callable[[Any], bytes] = lambda part: part,
) -> Published:
    """On the head: what a holder offered, received into `out_dir` and copied to a `file://` destination; an
    output its holder uploaded needs nothing more."""
    if staged.delivered:
        return Published(document, None, staged.objects)
    paths = receive(staged, out_dir, get)
    return Published(document, paths, copy_to_destination(paths, job, target))


def deliver_held(
    document: dict[str, Any],
    job: ValidJob,
    target: OutputTarget,
    out_dir: Path,
    on_upload: Callable[[int, float, bool], None] | None = None,
    on_wait: Callable[[UploadWait], None] | None = None,
) -> Published:
    """An output this node (the head) staged itself: offered and collected here, then its staged copy dropped."""
    paths = output_paths(job, staging_dir(target, HEAD))
    offered = offer(paths, job, target, on_upload=on_upload, on_wait=on_wait)
    published = collect(document, offered, job, target, out_dir)
    drop(paths)
    return published


def output_record(job: ValidJob, target: OutputTarget, out_dir: Path | None, result: Published | None = None) -> dict:
    """What the campaign store records as a job's output: the head's files and the objects at the destination."""
    if result is None:  # found complete where it goes (an earlier run published it)
        paths = output_paths(job, out_dir) if out_dir is not None and not target.uploads_from_holder else None
        keys = target.keys(job) if target.destination is not None else ()
        objects = [{"key": key} for key in keys]
    else:
        paths = result.paths
        objects = [{"key": o.key, "etag": o.etag, "bytes": o.bytes, "url": o.url} for o in result.objects]
    record: dict[str, Any] = {
        "video": str(paths.video) if paths else None,
        "sidecar": str(paths.sidecar) if paths else None,
    }
    if objects:
        record["objects"] = objects
    return record


def copy_to_destination(paths: OutputPaths, job: ValidJob, target: OutputTarget) -> tuple[UploadedObject, ...]:
    """A `file://` destination: the head copies what it received (an S3 one was uploaded by the holder)."""
    if target.destination is None or target.uploads_from_holder:
        return ()
    return put_output(paths, job, target)


def put_output(
    paths: OutputPaths, job: ValidJob, target: OutputTarget, on_wait: Callable[[UploadWait], None] | None = None
) -> tuple[UploadedObject, ...]:
    """The job's MP4, then its sidecar, at the target's destination, each verified (`Uploader`).

    A destination that names the MP4 (`s3://bucket/dir/long.mp4`) replaces nothing there: the same MP4 already
    there is a no-op (its sidecar, if there, stays as it is); another file at either name is refused
    (`UploadError`) and the render stays where it was. Under a folder or prefix the keys hold the job's content
    hash: what is there is this job's output, and only the same bytes are skipped."""
    uploader = Uploader(target.destination, target.storage, on_wait=on_wait)
    video_key, sidecar_key = target.keys(job)
    files = [(paths.video, video_key, "video/mp4"), (paths.sidecar, sidecar_key, "application/json")]
    if not target.destination.file:
        return tuple(uploader.upload(files))
    try:
        video, sidecar = uploader.holds(paths.video, video_key), uploader.stored(sidecar_key)
    except Exception as error:
        described = describe(error)
        if described is None:
            raise
        raise UploadError(
            f"cannot look at {target.destination}: {described[0]}; the file stays at {paths.video}",
            retryable=described[1],
        ) from None
    if video is False or (video is None and sidecar is not None):
        there = target.destination if video is False else sidecar.url
        raise UploadError(
            f"{there} already holds another file, and an output never replaces one; the render stays at "
            f"{paths.video}: remove what is there, or give another file name"
        )
    if video and sidecar is not None:
        return (*uploader.upload(files[:1]), sidecar)  # the MP4: a no-op that verifies it
    return tuple(uploader.upload(files))


def taken_by_another(job: ValidJob, target: OutputTarget) -> str | None:
    """Why the MP4 the target's destination names cannot take this job's output (a phrase that follows it), found
    before any render: the sidecar there records another job (or is no sidecar of the farm's). None when the
    destination names no file, nothing is there, this job's output is, or the destination cannot be reached now:
    `put_output` then decides, after the render."""
    if target.destination is None or not target.destination.file:
        return None
    look = dataclasses.replace(target.storage, attempts=1, connect_timeout_s=2.0)
    _, sidecar_key = target.keys(job)
    try:
        data = Uploader(target.destination, look).read(sidecar_key)
    except Exception:
        return None
    if data is None:
        return None
    try:
        recorded = json.loads(data).get("job_sha256")
    except (ValueError, AttributeError):
        recorded = None
    if recorded == job_content_hash(job):
        return None
    return (
        f"is taken: the sidecar {sidecar_key} beside it records another render, and an output never replaces one; "
        "remove them there, or give another file name"
    )


def published(job: ValidJob, target: OutputTarget, out_dir: Path) -> bool:
    """Whether the job's output is complete where it goes: its sidecar object in the bucket (written last), or
    both files in the head's output folder."""
    if target.uploads_from_holder:
        _, sidecar_key = target.keys(job)
        look = dataclasses.replace(target.storage, attempts=1, connect_timeout_s=2.0)  # a look: the loop waits on it
        try:
            return Uploader(target.destination, look).exists(sidecar_key)
        except Exception:  # storage unreachable now: render; the upload waits out the outage and skips a twin
            return False
    paths = output_paths(job, out_dir)
    return paths.video.is_file() and paths.sidecar.is_file()


def drop(paths: OutputPaths) -> None:
    """Remove a staged output (published, or about to be made again)."""
    for path in (paths.sidecar, paths.video):  # the sidecar first: a video without it is no output
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


STAGED_KEEP_S = 24 * 3600
"""How long a staged output that was never published stays on its node (its upload failed for good, or its
worker died before publishing): its job renders again on any worker, to the same bytes, and a retry on the
same worker publishes the staged copy without rendering (`staged_render`)."""


def staged_render(paths: OutputPaths) -> dict[str, Any] | None:
    """The sidecar of a complete render of this job staged at `paths` earlier (its publishing failed), if its
    MP4 is whole (the SHA-256 the sidecar holds); else None. The file names carry the job's content hash."""
    try:
        document = json.loads(paths.sidecar.read_text())
        if cached_file_sha256(paths.video) == document["output"]["sha256"]:
            return document
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def sweep_staging(root: Path, keep_s: float = STAGED_KEEP_S, now: float | None = None) -> list[Path]:
    """Remove staged outputs under `root` (every holder's folder of this node) untouched for `keep_s`: never an
    output the farm has published, which its holder drops at once, so nothing is lost."""
    cutoff = (time.time() if now is None else now) - keep_s
    removed = []
    for path in sorted(Path(root).glob("*/*/*")):  # <holder>/<target>/<file>
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
    return removed


def sweep_partials(folder: Path) -> list[Path]:
    """Remove the temporary files (`.NAME.partial-PID`) of this node's writers that died: outputs are renamed
    into place, so a partial file is never an output."""
    removed = []
    for tmp in Path(folder).glob("**/.*.partial-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this node still runs (a zombie, killed but not yet reaped, does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
