"""A local `ltx2-farm render` listens on the loopback interface only: its embedded Ray cluster (GCS, raylet and
object manager, the driver's and workers' gRPC servers, the dashboard and runtime env agents, the dashboard's and
autoscaler's Prometheus endpoints) and the farm's metrics server, read from the socket table while it runs. Its
cluster's token authentication is on, also where the environment asks for it off: the GCS refuses a call without
the token."""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
from ray._private import ray_constants

from tests.conftest import CACHE, write_job

POLL_S = 0.5


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv6 socket bound to a v4-mapped loopback address (Ray's gRPC servers)."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def label(process: psutil.Process) -> str:
    """A Python process by its script or module (the driver is `cluster.cli`), any other by its name."""
    argv = process.cmdline()
    if process.name().startswith("python"):
        module = argv.index("-m") + 1 if "-m" in argv else None
        script = argv[module] if module else next((a for a in argv[1:] if a.endswith(".py")), "")
        return Path(script).name or "python"
    return process.name()


def listeners(driver: psutil.Process) -> tuple[set[tuple[str, str, int]], set[int]]:
    """(process, address, port) of every TCP socket listening in `driver` or a process descended from it, and
    the ports that processes outside it listen on. The driver starts the GCS, raylet, dashboard and autoscaler
    monitor, the raylet the agents and workers: the tree is the whole cluster and nothing of another cluster on
    this machine."""
    tree = {driver.pid: driver}
    try:
        tree.update({p.pid: p for p in driver.children(recursive=True)})
    except psutil.NoSuchProcess:
        return set(), set()
    ours, elsewhere = set(), set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.status != psutil.CONN_LISTEN:
            continue
        if conn.pid not in tree:
            elsewhere.add(conn.laddr.port)
            continue
        try:
            ours.add((label(tree[conn.pid]), conn.laddr.ip, conn.laddr.port))
        except psutil.NoSuchProcess:
            continue
    return ours, elsewhere


def gcs_status(port: int, token: str | None) -> grpc.StatusCode:
    """The status of a call to the GCS on 127.0.0.1:`port` (its cluster id) carrying `token`, or no token."""
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=30, metadata=metadata)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_local_render_listens_on_loopback_only(tmp_path: Path):
    job = write_job(tmp_path, name="loopback")
    env = {**os.environ, "LTX2_FARM_CACHE": str(CACHE)}
    for var in ("LTX2_CHECKPOINT", "LTX2_GEMMA_ROOT", "LTX2_SPATIAL_UPSAMPLER", "LTX2_DISTILLED_LORA", "RAY_ADDRESS"):
        env.pop(var, None)
    # The dashboard's and autoscaler's Prometheus ports are fixed by default (44227, 44217): another Ray cluster
    # on this machine holding them would keep this one's from listening at all, and unseen, from being checked.
    env.update(DASHBOARD_METRIC_PORT="0", AUTOSCALER_METRIC_PORT="0")
    # An environment that opts out of Ray's token authentication: the embedded cluster keeps it on. The token is
    # the test's, so that it can call with it.
    token = secrets.token_hex(16)
    env.update(RAY_AUTH_MODE="disabled", RAY_AUTH_TOKEN=token)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    argv = [sys.executable, "-m", "cluster.cli", "render", "--tiny", str(job), "--out", str(tmp_path / "out")]
    argv += ["--executor", "ray", "--metrics-port", "0", "--json"]  # the embedded Ray cluster and its servers
    log = tmp_path / "render.log"
    seen: set[tuple[str, str, int]] = set()
    held_elsewhere: set[int] = set()
    calls: dict[str, grpc.StatusCode] = {}
    with log.open("w") as out:
        render = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        driver = psutil.Process(render.pid)
        deadline = time.monotonic() + 1200  # a hang still fails
        try:
            while render.poll() is None and time.monotonic() < deadline:
                ours, elsewhere = listeners(driver)
                seen |= ours
                held_elsewhere |= elsewhere
                gcs = sorted(port for name, _, port in ours if name == "gcs_server")
                if gcs and not calls:
                    calls = {
                        "no token": gcs_status(gcs[0], None),
                        "another token": gcs_status(gcs[0], secrets.token_hex(16)),
                        "its token": gcs_status(gcs[0], token),
                    }
                time.sleep(POLL_S)
        finally:
            if render.poll() is None:
                render.kill()
            render.wait()
    assert render.returncode == 0, log.read_text()[-3000:]
    exposed = sorted((name, host, port) for name, host, port in seen if not is_loopback(host))
    assert not exposed, f"listening beyond loopback: {exposed}"
    # What must have been seen for "nothing else listens" to mean anything: every kind of server the cluster
    # runs, a render worker's, and the driver's (its core worker's gRPC server and the farm's metrics server).
    names = {name for name, _, _ in seen}
    cluster = ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "dashboard.py", "monitor.py")
    for expected in (*cluster, "cluster.cli"):
        assert expected in names, (expected, sorted(seen))
    assert len([name for name, _, _ in seen if name == "cluster.cli"]) >= 2, sorted(seen)
    # The dashboard agent's HTTP port is fixed (Ray offers no way to choose it here); while another cluster on
    # this machine holds it, this agent gives up its HTTP server.
    agent_http = ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT
    if agent_http not in held_elsewhere:
        assert ("ray::DashboardAgent", "127.0.0.1", agent_http) in seen, sorted(seen)
    assert any(name.startswith("ray::RayRenderWorker") for name in names), sorted(seen)
    assert calls == {
        "no token": grpc.StatusCode.UNAUTHENTICATED,
        "another token": grpc.StatusCode.UNAUTHENTICATED,
        "its token": grpc.StatusCode.OK,
    }
