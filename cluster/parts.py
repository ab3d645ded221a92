"""A file through an object store (Ray's, between nodes) in parts: read, sent and written one part at a time, so
neither end holds a whole file in memory, and checked against the digest its sender measured."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PART_BYTES = 8 * 1024 * 1024
"""Small enough for Ray's inline transfer limits to stay irrelevant, large enough that a 100 MB file is a dozen
objects."""


def put_file(path: Path, put: Callable[[bytes], Any]) -> tuple[Any, ...]:
    """`path` cut into parts, each made a shareable object by `put` as it is read."""
    parts = []
    with Path(path).open("rb") as f:
        while block := f.read(PART_BYTES):
            parts.append(put(block))
    return tuple(parts)


def get_file(
    parts: Sequence[Any], get: Callable[[Any], bytes], target: Path, check: Callable[[str, int], None]
) -> None:
    """Write `parts` (each fetched by `get`) into `target` atomically. `check(sha256, size)` of what arrived
    raises to refuse it: then nothing takes the target's name."""
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    digest, size = hashlib.sha256(), 0
    try:
        with tmp.open("wb") as f:
            for part in parts:
                block = get(part)
                digest.update(block)
                size += len(block)
                f.write(block)
        check(digest.hexdigest(), size)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
