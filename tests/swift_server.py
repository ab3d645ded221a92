"""OpenStack Swift with its S3 API (Debian's packages), as a one-node cluster on 127.0.0.1 for tests.

Swift checks S3 signatures (tempauth + s3api), so wrong credentials are really refused, and it keeps
objects on disk, so a restart loses nothing. With `tls=True` the proxy serves HTTPS with a self-signed
certificate (`ca_bundle`, for AWS_CA_BUNDLE): boto3 sends request checksums differently over HTTPS (aws-chunked
trailers, which this Swift refuses). Started and stopped by PID.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from tests.s3_servers import free_port, wait_for_port

ACCESS_KEY = "test:tester"
SECRET_KEY = "testing-swift-secret"
SERVERS = ("account", "container", "object")
PIPELINE = " ".join(
    [
        "catch_errors",
        "gatekeeper",
        "healthcheck",
        "proxy-logging",
        "cache",
        "listing_formats",
        "s3api",
        "tempauth",
        "copy",
        "slo",
        "dlo",
        "proxy-logging",
        "proxy-server",
    ]
)


class SwiftServer:
    def __init__(self, root: Path, tls: bool = False) -> None:
        self.root = Path(root)
        self.tls = tls
        self.port = free_port()
        self.ports = {name: free_port() for name in SERVERS}
        self.processes: list[subprocess.Popen] = []
        self._configured = False

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_bundle(self) -> Path:
        return self.root / "etc" / "cert.pem"

    def _configure(self) -> None:
        etc, devices = self.root / "etc", self.root / "srv"
        (devices / "d1").mkdir(parents=True, exist_ok=True)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "swift.conf").write_text(
            textwrap.dedent("""\
            [swift-hash]
            swift_hash_path_suffix = ltx2farm-tests
            swift_hash_path_prefix = ltx2farm
            [storage-policy:0]
            name = gold
            default = yes
            """)
        )
        for name in SERVERS:
            builder = str(etc / f"{name}.builder")
            subprocess.run(["swift-ring-builder", builder, "create", "8", "1", "1"], check=True, capture_output=True)
            subprocess.run(
                ["swift-ring-builder", builder, "add", f"r1z1-127.0.0.1:{self.ports[name]}/d1", "1"],
                check=True,
                capture_output=True,
            )
            subprocess.run(["swift-ring-builder", builder, "rebalance"], check=True, capture_output=True)
            (etc / f"{name}-server.conf").write_text(
                textwrap.dedent(f"""\
                [DEFAULT]
                bind_ip = 127.0.0.1
                bind_port = {self.ports[name]}
                devices = {devices}
                mount_check = false
                swift_dir = {etc}
                workers = 0
                log_level = WARNING
                [pipeline:main]
                pipeline = {name}-server
                [app:{name}-server]
                use = egg:swift#{name}
                """)
            )
        proxy = textwrap.dedent(f"""\
            [DEFAULT]
            bind_ip = 127.0.0.1
            bind_port = {self.port}
            swift_dir = {etc}
            workers = 0
            log_level = WARNING
            [pipeline:main]
            pipeline = {PIPELINE}
            [app:proxy-server]
            use = egg:swift#proxy
            account_autocreate = true
            [filter:s3api]
            use = egg:swift#s3api
            location = us-east-1
            [filter:tempauth]
            use = egg:swift#tempauth
            user_test_tester = {SECRET_KEY} .admin
            [filter:catch_errors]
            use = egg:swift#catch_errors
            [filter:gatekeeper]
            use = egg:swift#gatekeeper
            [filter:healthcheck]
            use = egg:swift#healthcheck
            [filter:proxy-logging]
            use = egg:swift#proxy_logging
            [filter:cache]
            use = egg:swift#memcache
            [filter:listing_formats]
            use = egg:swift#listing_formats
            [filter:copy]
            use = egg:swift#copy
            [filter:slo]
            use = egg:swift#slo
            [filter:dlo]
            use = egg:swift#dlo
            """)
        if self.tls:
            key = etc / "key.pem"
            openssl = [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
            ]
            openssl += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(self.ca_bundle)]
            subprocess.run(openssl, check=True, capture_output=True)
            proxy = proxy.replace("[DEFAULT]\n", f"[DEFAULT]\ncert_file = {self.ca_bundle}\nkey_file = {key}\n", 1)
        (etc / "proxy-server.conf").write_text(proxy)
        self._configured = True

    def start(self) -> SwiftServer:
        if not self._configured:
            self._configure()
        etc = self.root / "etc"
        log = (self.root / "swift.log").open("ab")
        for name in SERVERS:
            self.processes.append(
                subprocess.Popen([f"swift-{name}-server", str(etc / f"{name}-server.conf")], stdout=log, stderr=log)
            )
        self.processes.append(
            subprocess.Popen(["swift-proxy-server", str(etc / "proxy-server.conf")], stdout=log, stderr=log)
        )
        for port in (*self.ports.values(), self.port):
            wait_for_port(port, timeout_s=60)
        return self

    def stop(self) -> None:
        for p in self.processes:
            p.kill()  # our own children, by PID
        for p in self.processes:
            p.wait(timeout=10)
        self.processes = []
