"""A full scratch disk (a real 64 KiB tmpfs as the output folder): a clear error, no partial file left,
nothing recorded as done; the same job renders once space is back."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import SMALL_JOB
from tests.test_cli import run


@contextlib.contextmanager
def tiny_disk(root: Path, size: str = "1m"):
    """A real filesystem that fills up: tmpfs of `size`, mounted and unmounted by this test. Only a platform without
    tmpfs skips; on Linux a refused mount fails the test, so that CI (root on Linux) never passes without it."""
    if sys.platform != "linux":
        pytest.skip(f"tmpfs is Linux's; this platform is {sys.platform}")
    mount_point = root / f"disk-{uuid.uuid4().hex[:8]}"
    mount_point.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)], capture_output=True
    )
    if made.returncode != 0:
        pytest.fail(
            f"cannot mount a {size} tmpfs at {mount_point}: {made.stderr.decode().strip()}; "
            "this test needs root on Linux (as CI runs it): run it as root"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


DISK_KIB = 64


def test_render_onto_a_full_disk_fails_clearly_and_leaves_nothing(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**SMALL_JOB, "name": "full"}))
    with tiny_disk(tmp_path, f"{DISK_KIB}k") as disk:
        result = run("render", "--tiny", str(job), "--out", str(disk), "--quiet")
        assert result.returncode == 2, result.stderr
        assert "no space left" in result.stderr.lower() and "free space" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert list(disk.iterdir()) == []  # no MP4, no sidecar, no partial file
    retried = run("render", "--tiny", str(job), "--out", str(tmp_path / "out"), "--json")
    assert retried.returncode == 0, retried.stderr
    payload = json.loads(retried.stdout)
    assert payload["media"]["frames"] == 17
    # the premise: the MP4 alone is well past the disk's size (about 250 KiB), so it fills the disk mid-write
    assert Path(payload["video"]).stat().st_size > 2 * DISK_KIB * 1024
