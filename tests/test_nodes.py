"""The node harness (tests/nodes.py) itself: nodes that share only a bridge, and real Ray, Swift and Prometheus
servers across them. One set of nodes and one Ray cluster serve the whole module, to keep its time small."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.nodes import (
    RAY_PORT,
    REPO,
    Node,
    Nodes,
    default_masked,
    marked_json,
    prometheus_api,
    ray_env,
    ray_token,
    require_nodes,
    start_prometheus,
    start_ray_head,
    start_ray_worker,
    wait_until,
)
from tests.swift_server import ACCESS_KEY, SECRET_KEY, SwiftServer

NAMES = ["head", "w1", "w2", "storage", "monitor", "a", "b"]
METRICS_PORT = 8080  # Ray's Prometheus endpoint on each Ray node, for the monitor node to scrape
RAY_NODE_ARGS = ["--metrics-export-port", str(METRICS_PORT)]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[Nodes]:
    require_nodes()
    with Nodes(tmp_path_factory.mktemp("nodes"), NAMES) as made:
        yield made


@dataclass
class Cluster:
    token: str
    address: str  # the head's GCS, addr:port


@pytest.fixture(scope="module")
def cluster(nodes) -> Cluster:
    """A CPU-less Ray head and two one-CPU worker nodes, token auth on. Stopped with the nodes (by namespace)."""
    token = ray_token()
    start_ray_head(nodes["head"], token, extra=RAY_NODE_ARGS)
    for name in ("w1", "w2"):  # one after another: see start_ray_worker
        start_ray_worker(nodes[name], nodes["head"], token, extra=RAY_NODE_ARGS)
    return Cluster(token, f"{nodes['head'].address}:{RAY_PORT}")


def serve_tmp(node: Node, port: int = 8000) -> subprocess.Popen:
    """`python -m http.server` on the node's address, serving the node's /tmp."""
    argv = [sys.executable, "-m", "http.server", "--bind", node.address, "--directory", "/tmp", str(port)]
    server = node.popen(argv, log=node.host_path(f"/tmp/http-{port}.log"))
    node.wait_listening([port], timeout_s=30, processes=[server])
    return server


def stop(process: subprocess.Popen) -> None:
    process.kill()  # our own child, by PID (nsenter exec'd into it)
    process.wait(timeout=10)


def test_nodes_have_own_addresses_and_talk_over_http(nodes):
    a, b = nodes["a"], nodes["b"]
    addresses = [node.address for node in nodes]
    assert len(set(addresses)) == len(NAMES)
    assert all(address.startswith(f"{nodes.subnet}.") for address in addresses)
    assert a.run(["hostname"], check=True).stdout.strip() == "a"
    resolve = "import socket; print(socket.gethostbyname('a'), socket.gethostbyname('storage'))"
    assert b.python(resolve).stdout.split() == [a.address, nodes["storage"].address]  # /etc/hosts names them
    a.host_path("/tmp/hello.txt").write_text("from a")
    server = serve_tmp(a)
    try:
        assert b.http_get(f"http://{a.address}:8000/hello.txt") == (200, b"from a")
    finally:
        stop(server)


def test_nodes_reach_only_each_other(nodes):
    b = nodes["b"]
    # Each node has lo and its own address, nothing else: what listens on all addresses is reached only there.
    inet = b.run(["ip", "-4", "-o", "addr"], check=True).stdout
    assert sorted(line.split()[3] for line in inet.splitlines()) == sorted(["127.0.0.1/8", f"{b.address}/24"])
    assert "default" not in b.run(["ip", "route"], check=True).stdout
    status, error = b.http_get("http://192.0.2.2:9/", timeout=3)  # the host's eth0: no route
    assert status == 0 and b"unreachable" in error


def test_tmp_shm_home_and_caches_are_private(nodes):
    a, b = nodes["a"], nodes["b"]
    mark = f"private-{secrets.token_hex(4)}"
    script = f"echo {mark} > /tmp/{mark}; echo {mark} > /dev/shm/{mark}; echo {mark} > $HOME/{mark}"
    a.run(["sh", "-c", script], check=True)
    assert a.host_path(f"/tmp/{mark}").read_text().strip() == mark
    assert not Path("/tmp", mark).exists()  # the host's /tmp
    assert not Path.home().joinpath(mark).exists()
    seen_by_b = b.run(["ls", "-A", "/tmp", "/dev/shm", "/root"], check=True).stdout
    assert mark not in seen_by_b
    assert mark in a.run(["cat", f"/dev/shm/{mark}"], check=True).stdout

    masked = nodes.masked
    assert REPO / ".cache" in masked and set(masked) <= set(default_masked())
    listing = a.run(["ls", "-A", *map(str, masked)], check=True).stdout
    assert [line for line in listing.splitlines() if line and not line.endswith(":")] == []  # empty, though the
    # host's model cache (LTX2_FARM_CACHE) usually is not
    a.run(["sh", "-c", f"echo {mark} > {REPO / '.cache'}/{mark}"], check=True)
    assert not (REPO / ".cache" / mark).exists()
    assert mark not in b.run(["ls", "-A", str(REPO / ".cache")], check=True).stdout
    # The code and the interpreter are shared, as in an image.
    assert b.run(["python", "-c", "import tests.nodes"], check=True).returncode == 0


def test_link_down_cuts_a_node_off_and_link_up_restores_it(nodes):
    a, b = nodes["a"], nodes["b"]
    a.host_path("/tmp/ping").write_text("pong")
    server = serve_tmp(a)
    url = f"http://{a.address}:8000/ping"
    try:
        a.link_down()
        try:
            assert b.http_get(url, timeout=2)[0] == 0
            assert a.http_get(f"http://{b.address}:1/", timeout=2)[0] == 0  # and it reaches no one
        finally:
            a.link_up()
        wait_until(lambda: b.http_get(url, timeout=2) == (200, b"pong"), timeout_s=30, what="a back on the network")
    finally:
        stop(server)


def test_kill_all_ends_every_process_of_a_node_and_restart_boots_it(nodes):
    b = nodes["b"]
    b.run(["sh", "-c", "echo kept > /tmp/disk; echo lost > /dev/shm/memory"], check=True)
    # A process tree, as a daemon makes: the grandchildren are not our children, only in the node.
    shell = b.popen(["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
    wait_until(lambda: len(b.pids()) >= 4, timeout_s=10, what="holder, sh and two sleeps")
    b.kill_all()
    assert b.pids() == []
    assert shell.returncode == -9
    assert not b.up
    with pytest.raises(RuntimeError, match="down"):
        b.run(["true"])
    b.boot()
    assert b.run(["cat", "/tmp/disk"], check=True).stdout == "kept\n"  # its disk survives, like a reboot
    assert b.run(["ls", "-A", "/dev/shm"], check=True).stdout == ""  # its memory does not


WHERE = """
import json, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init()

@ray.remote(num_cpus=1)
def where():
    return ray.util.get_node_ip_address()

workers = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
pinned = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(w, soft=False)) for w in workers]
print("WHERE", json.dumps(ray.get([f.remote() for f in pinned], timeout=120)), flush=True)
"""


def test_ray_runs_a_task_on_each_worker_node(nodes, cluster):
    out = nodes["head"].python(WHERE, env=ray_env(cluster.token, cluster.address), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(marked_json(out.stdout, "WHERE")) == sorted([nodes["w1"].address, nodes["w2"].address])


def test_ray_refuses_a_driver_without_the_right_token(nodes, cluster):
    w1 = nodes["w1"]
    code = "import ray; ray.init(); print('connected')"
    # A refused driver tries again once a second, 20 times by default; 2 tries tell the same, sooner.
    retries = {"RAY_ADDRESS": cluster.address, "RAY_gcs_server_port_wait_time_s": "2"}
    drivers = {}
    for name, env in (("none", {}), ("wrong", ray_env(ray_token()))):
        log = w1.host_path(f"/tmp/driver-{name}.log")
        drivers[name] = w1.popen([sys.executable, "-c", code], env={**env, **retries}, log=log), log
    for name, (driver, log) in drivers.items():
        try:
            driver.wait(timeout=180)
        finally:
            if driver.poll() is None:
                stop(driver)
        text = log.read_text()
        assert driver.returncode != 0 and "connected\n" not in text, name
        assert "Authentication token is missing or incorrect" in text, text[-2000:]


# Ray 2.60 binds these on all addresses and has no option to choose one (its C++ gRPC servers: GCS, raylet,
# object manager; the dashboard agent's gRPC and metrics ports; the Prometheus endpoints of the head's dashboard
# and autoscaler monitor, which bind 127.0.0.1 only for a loopback node). In a node, "all addresses" is the node's
# own address and lo (see test_nodes_reach_only_each_other).
WILDCARD_OK = {"gcs_server", "raylet", "ray::DashboardA"}
WILDCARD_OK_SCRIPTS = ("ray/dashboard/dashboard.py", "ray/autoscaler/_private/monitor.py")


def test_ray_servers_bind_their_node_address(nodes, cluster):
    for name in ("head", "w1", "w2"):
        node = nodes[name]
        sockets = node.listening()
        wildcard = [(port, users) for host, port, users in sockets if host in ("*", "0.0.0.0", "::")]
        mine = {"*", "0.0.0.0", "::", "127.0.0.1", "::ffff:127.0.0.1", node.address, f"::ffff:{node.address}"}
        assert {host for host, _, _ in sockets} <= mine
        for port, users in wildcard:
            process = users.split('"')[1]
            if process == "python":
                pid = int(users.split("pid=")[1].split(",")[0])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
                assert any(script in cmdline for script in WILDCARD_OK_SCRIPTS), (name, port, cmdline)
            else:
                assert process in WILDCARD_OK, (name, port, users)
        # Where Ray lets one choose, it binds the node's address: the dashboard agent's HTTP port, the runtime
        # env agent, the head's Ray Client server.
        assert hosts(sockets, port=52365) == {"127.0.0.1", node.address}
        assert hosts(sockets, process="ray::RuntimeEnv") == {node.address}
        if name == "head":
            assert hosts(sockets, port=10001) == {"::ffff:127.0.0.1", f"::ffff:{node.address}"}


def hosts(sockets: list[tuple[str, int, str]], port: int | None = None, process: str | None = None) -> set[str]:
    """The addresses the sockets of `port`, or of `process`, listen on."""
    return {h for h, p, users in sockets if p == port or (process is not None and f'"{process}"' in users)}


def test_swift_in_the_storage_node_serves_s3_to_a_worker_node(nodes):
    storage = nodes["storage"]
    swift = SwiftServer(Path("/tmp/swift"), node=storage).start()
    try:
        assert {host for host, port, _ in storage.listening() if port in swift.ports.values()} == {storage.address}
        code = f"""
import boto3, botocore
def s3(secret):
    return boto3.client("s3", endpoint_url={swift.endpoint!r}, aws_access_key_id={ACCESS_KEY!r},
                        aws_secret_access_key=secret, region_name="us-east-1")
s3({SECRET_KEY!r}).create_bucket(Bucket="renders")
s3({SECRET_KEY!r}).put_object(Bucket="renders", Key="clip.mp4", Body=b"frames from w1")
print(s3({SECRET_KEY!r}).get_object(Bucket="renders", Key="clip.mp4")["Body"].read().decode())
try:
    s3("wrong-secret").get_object(Bucket="renders", Key="clip.mp4")
except botocore.exceptions.ClientError as error:
    print(error.response["Error"]["Code"])
"""
        out = nodes["w1"].python(code, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.splitlines() == ["frames from w1", "SignatureDoesNotMatch"]
    finally:
        swift.stop()


def test_prometheus_in_the_monitor_node_scrapes_ray_nodes_over_the_bridge(nodes, cluster):
    monitor = nodes["monitor"]
    targets = [f"{nodes[name].address}:{METRICS_PORT}" for name in ("w1", "w2")]
    prometheus = start_prometheus(monitor, targets)
    server = f"{monitor.address}:9090"
    try:
        assert {host for host, port, _ in monitor.listening() if port == 9090} == {monitor.address}

        def up() -> list[str]:
            series = prometheus_api(monitor, server, "/api/v1/query", query="up == 1")["result"]
            return sorted(s["metric"]["instance"] for s in series)

        assert wait_until(lambda: up() == sorted(targets), timeout_s=60, what="both Ray nodes scraped")
        active = prometheus_api(monitor, server, "/api/v1/targets")["activeTargets"]
        assert {(t["labels"]["instance"], t["health"]) for t in active} == {(t, "up") for t in targets}
        started = time.monotonic()
        assert wait_until(
            lambda: prometheus_api(monitor, server, "/api/v1/query", query="count(ray_node_cpu_count)")["result"],
            timeout_s=60,
            what="a Ray metric",
        ), time.monotonic() - started
    finally:
        stop(prometheus)
