"""OpenStack Swift with its S3 API (Debian's packages), as a one-node cluster for tests: on 127.0.0.1, or in a
node of tests/nodes.py on that node's address.

Swift checks S3 signatures (tempauth + s3api), so wrong credentials are really refused, and it keeps
objects on disk, so a restart loses nothing. With `tls=True` the proxy serves HTTPS with a self-signed
certificate (`ca_bundle`, for AWS_CA_BUNDLE): boto3 sends request checksums differently over HTTPS (aws-chunked
trailers, which this Swift refuses). Started and stopped by PID.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from tests.s3_servers import free_port, wait_for_port

if TYPE_CHECKING:
    from tests.nodes import Node

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


# Swift's own default ports: a node has its network namespace to itself.
NODE_PORTS = {"proxy": 8080, "object": 6200, "container": 6201, "account": 6202}


class SwiftServer:
    """Swift on 127.0.0.1 with free ports, or, given `node`, in that node on its address and Swift's default ports;
    then `root` is a path as the node sees it (e.g. under its private /tmp)."""

    def __init__(self, root: Path, node: Node | None = None, tls: bool = False) -> None:
        self.root = Path(root)
        self.tls = tls
        self.node = node
        self.host = node.address if node is not None else "127.0.0.1"
        self.port = NODE_PORTS["proxy"] if node is not None else free_port()
        self.ports = {name: NODE_PORTS[name] if node is not None else free_port() for name in SERVERS}
        self.processes: list[subprocess.Popen] = []
        self._configured = False

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def ca_bundle(self) -> Path:
        """The certificate to trust, as this process sees it."""
        return self._on_host(self.root / "etc" / "cert.pem")

    def _on_host(self, path: Path) -> Path:
        """Where the servers' `path` is for this process, which writes their configuration."""
        return self.node.host_path(path) if self.node is not None else path

    def _configure(self) -> None:
        etc, devices = self.root / "etc", self.root / "srv"
        self._on_host(devices / "d1").mkdir(parents=True, exist_ok=True)
        self._on_host(etc).mkdir(parents=True, exist_ok=True)
        (self._on_host(etc) / "swift.conf").write_text(
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
            builder = str(self._on_host(etc) / f"{name}.builder")
            subprocess.run(["swift-ring-builder", builder, "create", "8", "1", "1"], check=True, capture_output=True)
            subprocess.run(
                ["swift-ring-builder", builder, "add", f"r1z1-{self.host}:{self.ports[name]}/d1", "1"],
                check=True,
                capture_output=True,
            )
            subprocess.run(["swift-ring-builder", builder, "rebalance"], check=True, capture_output=True)
            (self._on_host(etc) / f"{name}-server.conf").write_text(
                textwrap.dedent(f"""\
                [DEFAULT]
                bind_ip = {self.host}
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
            bind_ip = {self.host}
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
            key, cert = etc / "key.pem", etc / "cert.pem"
            openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
            openssl += ["-subj", f"/CN={self.host}", "-addext", f"subjectAltName=IP:{self.host}"]
            openssl += ["-keyout", str(self._on_host(key)), "-out", str(self._on_host(cert))]
            subprocess.run(openssl, check=True, capture_output=True)
            proxy = proxy.replace("[DEFAULT]\n", f"[DEFAULT]\ncert_file = {cert}\nkey_file = {key}\n", 1)
        (self._on_host(etc) / "proxy-server.conf").write_text(proxy)
        self._configured = True

    def start(self) -> SwiftServer:
        if not self._configured:
            self._configure()
        etc = self.root / "etc"
        log = self._on_host(self.root / "swift.log")
        self.processes = [p for p in self.processes if p.poll() is None]  # a restart after its node was lost
        for name in (*SERVERS, "proxy"):
            self.processes.append(self._launch([f"swift-{name}-server", str(etc / f"{name}-server.conf")], log))
        ports = [*self.ports.values(), self.port]
        if self.node is not None:
            self.node.wait_listening(ports, timeout_s=60, processes=self.processes)
        else:
            for port in ports:
                wait_for_port(port, timeout_s=60)
        return self

    def _launch(self, argv: list[str], log: Path) -> subprocess.Popen:
        if self.node is not None:
            return self.node.popen(argv, log=log)
        with log.open("ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=out)

    def stop(self) -> None:
        for p in self.processes:
            p.kill()  # our own children, by PID
        for p in self.processes:
            p.wait(timeout=10)
        self.processes = []
