"""S3-compatible servers for tests, started on 127.0.0.1 and stopped by PID; the port and process helpers they share."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def stop_process_group(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group we started (`start_new_session=True`), SIGKILL it after `grace_s`.

    Why the short grace: a `ray start --block` head answers SIGTERM with a graceful shutdown that took 30 s and
    more on a 2-core machine; the tests only need the processes gone.
    """
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


class MotoServer:
    """moto's standalone S3 server (in-memory; a restart starts empty)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        self.process = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()  # our own child, by PID
            self.process.wait(timeout=10)
            self.process = None


def moto_env() -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def apply_env(env: dict[str, str]) -> dict[str, str | None]:
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return old


@contextlib.contextmanager
def moto_bucket(monkeypatch: Any, bucket: str) -> Iterator[tuple[MotoServer, Any]]:
    """A moto S3 server with an empty `bucket`, and this process's credentials for it: (server, boto3 client)."""
    import boto3

    for name, value in moto_env().items():
        monkeypatch.setenv(name, value)
    server = MotoServer().start()
    try:
        s3 = boto3.session.Session().client("s3", endpoint_url=server.endpoint)
        s3.create_bucket(Bucket=bucket)
        yield server, s3
    finally:
        server.stop()
