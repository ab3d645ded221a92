"""Writing a render's files on this node: a JSON document atomically, and a full disk reported as such (the
files' names and the sidecar's content are `jobs.outputs`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobs.outputs import OutputPaths


class DiskFullError(RuntimeError):
    """The output folder ran out of space: nothing of the render was kept."""


FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def disk_full_guard(paths: OutputPaths) -> Iterator[None]:
    """Turn a full disk while writing `paths` into a `DiskFullError` that says so, after removing what was
    written (a finished MP4 without its sidecar is not an output either)."""
    try:
        yield
    except OSError as error:
        if error.errno not in FULL_DISK_ERRNOS:
            raise
        for path in (paths.video, paths.sidecar):
            path.unlink(missing_ok=True)
        folder = paths.video.parent
        free = shutil.disk_usage(folder).free if folder.exists() else 0
        raise DiskFullError(
            f"no space left in {folder} while writing {paths.video.name} ({free // 1024} KiB free): "
            "free space there or choose another output folder (--out); nothing of this render was kept"
        ) from None


def write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    """Write `document` as JSON so that readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
