"""Nodes that share nothing but a network, on one machine: a test harness for multi-node runs.

A node is two namespaces held open by one long-lived process (the holder, a `sleep infinity`):

- a network namespace with `lo` up and one veth whose other end is enslaved to a bridge that this harness
  instance made. Each node has its own IPv4 address in a /24 of 10.213.0.0/16, and no default route: nodes reach
  each other and nothing else. The bridge has no IPv4 address and IPv6 is off on the host side, so the nodes
  cannot reach the host either, and the host's own test process reaches a node only by entering it
  (`Node.run`, `Node.http_get`). That keeps the model honest: whatever a test checks over the network went
  through a node's interface, as on a real cluster.
- a mount namespace (plus UTS and IPC: its own hostname and SysV IPC, as a machine has) where `/tmp`, `/root`
  (HOME; the Python installation the virtualenv points into stays visible inside it), an `/etc/hosts` naming
  every node, and a fresh tmpfs on `/dev/shm` (Ray's object store) are the node's own, and the repository's
  `.cache`, `renders` and the farm's model cache are masked by empty private folders, so a node sees neither
  the host's nor another node's files there. The code and the virtualenv stay readable on the shared root, as
  in a container image.

Every command of a node enters the holder's namespaces with `nsenter`, so all of a node's processes share one
mount namespace, as on a real machine. The PID namespace stays shared: the harness finds a node's processes by
the ids `ip netns pids` lists for its network namespace, and signals only those (through a pidfd, after checking
again that the process is in that namespace, so a recycled id is never hit). Killing them all, holder included,
is a node lost; `Node.restart` boots it again with its disk (`/tmp`, `/root`) and a fresh `/dev/shm`.

Names: one instance claims a prefix `ltnXX` by creating its bridge `ltnXX-br` (creation fails if another
instance holds it), and names its namespaces `ltnXX-<node>` and the host ends of its veths `ltnXX-<i>`. Teardown
removes exactly those names, and can run any number of times.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PATH = f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SUBNET = "10.213"
HOME = "/root"
RAY_PORT = 6379
# What a node needs from the host (the Python installation the virtualenv points into, the virtualenv, the code)
# where it lives under a folder every node replaces by its own: HOME (pyenv puts Python there) or /tmp (a
# checkout there, as CI may make). Bound back into the node's own folder at the same place.
NEEDED = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), REPO}
HOME_SHARED = [p for p in NEEDED if p.is_relative_to(HOME) and p != Path(HOME)]
TMP_SHARED = [p for p in NEEDED if p.is_relative_to("/tmp") and p != Path("/tmp")]


def default_masked() -> list[Path]:
    """Folders a node must not share with the host: the repository's caches and renders, and the model cache
    (tests.conftest.CACHE, computed again here so that this module does not import torch)."""
    cache = Path(os.environ.get("LTX2_FARM_CACHE", REPO / ".cache" / "ltx2-farm"))
    return [REPO / ".cache", REPO / "renders", cache]


def _outermost(paths: Sequence[Path]) -> list[Path]:
    """Drop the paths inside another one: the outer mask already hides them (and its empty stand-in has no
    mount point for them)."""
    resolved = sorted({Path(os.path.abspath(p)) for p in paths}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in resolved:
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def _write_sysctl(name: str, value: str) -> None:
    Path("/proc/sys", *name.split(".")).write_text(value)


@functools.cache
def nodes_available() -> str | None:
    """Why nodes cannot be made here, or None when they can (root, the tools, and a namespace really made)."""
    if os.geteuid() != 0:
        return "nodes need root (network namespaces, bridges, mounts)"
    missing = [tool for tool in ("ip", "unshare", "nsenter", "ss", "sleep") if shutil.which(tool) is None]
    if missing:
        return f"nodes need {', '.join(missing)} on PATH"
    nsenter = subprocess.run(["nsenter", "--help"], capture_output=True, text=True, timeout=30).stdout
    if "--wdns" not in nsenter:
        return "nodes need nsenter --wdns (util-linux 2.38 or later)"
    probe = f"ltnp{os.getpid() % 10000}"
    try:
        _ip("netns", "add", probe)
        try:
            _ip("link", "add", probe, "type", "bridge")
            _ip("link", "del", probe)
            made = subprocess.run(
                ["ip", "netns", "exec", probe, "unshare", "-m", "-u", "-i", "--propagation", "private", "true"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if made.returncode != 0:
                return f"cannot make a mount namespace in a network namespace: {made.stderr.strip()}"
        finally:
            _ip("netns", "del", probe, check=False)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        return f"cannot make namespaces here: {error}"
    return None


def require_nodes() -> None:
    """Skip the calling test where nodes cannot be made; fail it under CI, which runs as root and must make them."""
    import pytest

    reason = nodes_available()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must be able to make nodes: {reason}")
    pytest.skip(reason)


def _in_netns(pid: int, netns_inode: tuple[int, int]) -> bool:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == netns_inode


class Node:
    """One node: see the module docstring. Made by `Nodes`; `host_path` maps its private paths for assertions."""

    def __init__(
        self, name: str, netns: str, veth: str, address: str, root: Path, masked: Sequence[Path], hosts: Path
    ) -> None:
        self.name = name
        self.netns = netns
        self.veth = veth  # the host end, on the bridge
        self.address = address
        self.root = root  # the node's disk on the host: tmp/, home/, and the private folders over the masks
        self.masked = list(masked)
        self.hosts = hosts  # the cluster's /etc/hosts: every node by name
        self._holder: subprocess.Popen | None = None
        self._started: list[subprocess.Popen] = []

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.address})"

    # --- the node's life: boot (holder), lost (kill_all), restart

    @property
    def up(self) -> bool:
        return self._holder is not None and self._holder.poll() is None

    def boot(self, shm_size: str = "2g", timeout_s: float = 30.0) -> None:
        """Start the holder: enter the network namespace, make the node's mount/UTS/IPC namespaces, mount its
        private folders there, then `sleep` forever holding them."""
        if self.up:
            return
        for sub in ("tmp", "home", "masked"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").chmod(0o1777)
        binds = [f"mount -t tmpfs -o size={shm_size},mode=1777 shm-{self.name} /dev/shm", f"hostname {self.name}"]
        # First the masks, on the host's view: the recursive binds below carry them into the node's HOME and /tmp
        # where the code lives there.
        for i, path in enumerate(self.masked):
            path.mkdir(parents=True, exist_ok=True)  # a missing folder could be made on the shared root, so mask it
            private = self.root / "masked" / str(i)
            private.mkdir(exist_ok=True)
            binds.append(f"mount --bind {shlex.quote(str(private))} {shlex.quote(str(path))}")
        binds.append(f"mount --bind {shlex.quote(str(self.hosts))} /etc/hosts")
        # Last the node's own HOME and /tmp, each with what it needs of the host's bound back in; /tmp at the very
        # end, since the node's own disk may itself live under the host's /tmp.
        for mount, folder, shared in ((HOME, "home", HOME_SHARED), ("/tmp", "tmp", TMP_SHARED)):
            own = self.root / folder
            for path in _outermost(shared):
                (own / path.relative_to(mount)).mkdir(parents=True, exist_ok=True)
                binds.append(
                    f"mount --rbind {shlex.quote(str(path))} {shlex.quote(str(own / path.relative_to(mount)))}"
                )
            binds.append(f"mount --rbind {shlex.quote(str(own))} {mount}")
        script = "set -e; " + "; ".join(binds) + "; exec sleep infinity"
        unshare = ["unshare", "--mount", "--uts", "--ipc", "--propagation", "private", "sh", "-c", script]
        with (self.root / "holder.log").open("ab") as log:
            self._holder = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *unshare],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env={"PATH": PATH},
            )
        deadline = time.monotonic() + timeout_s
        while not self._holding():
            if self._holder.poll() is not None or time.monotonic() > deadline:
                log_text = (self.root / "holder.log").read_text()[-2000:]
                self._holder.kill()
                self._holder.wait(timeout=10)
                self._holder = None
                raise RuntimeError(f"node {self.name} did not boot: {log_text}")
            time.sleep(0.02)

    def _holding(self) -> bool:
        """True once the holder has exec'd `sleep`, i.e. after every mount succeeded (`set -e`)."""
        assert self._holder is not None
        try:
            return Path(f"/proc/{self._holder.pid}/cmdline").read_bytes().startswith(b"sleep\0")
        except OSError:
            return False

    def pids(self) -> list[int]:
        """The ids of the processes in this node's network namespace, as `ip netns pids` lists them."""
        out = _ip("netns", "pids", self.netns, check=False)
        return [int(p) for p in out.stdout.split()]

    def kill_all(self, timeout_s: float = 30.0) -> None:
        """SIGKILL every process of the node, holder included: the node is lost. Its mounts go with the holder;
        its disk folders on the host stay (`restart` boots it with them)."""
        try:
            st = os.stat(f"/run/netns/{self.netns}")
        except FileNotFoundError:
            return
        inode = (st.st_dev, st.st_ino)
        deadline = time.monotonic() + timeout_s
        while pids := self.pids():  # again until empty: a process may fork while we kill
            for pid in pids:
                try:
                    fd = os.pidfd_open(pid)
                except OSError:
                    continue  # already gone
                try:
                    if _in_netns(pid, inode):  # after pidfd_open: the id still names the process we checked
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                finally:
                    os.close(fd)
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.name}: processes {pids} still alive after {timeout_s} s")
            time.sleep(0.05)
        for p in [self._holder, *self._started]:
            if p is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)  # reap our own children (nsenter execs into them, so they are the processes)
        self._holder = None
        self._started = []

    def restart(self, shm_size: str = "2g") -> None:
        self.kill_all()
        self.boot(shm_size)

    # --- commands in the node

    def host_path(self, inside: str | Path) -> Path:
        """Where a node path is on the host: `/tmp/...` and `/root/...` are the node's own; other paths are shared,
        except the masked folders, which map to the node's private stand-ins."""
        inside = Path(inside)
        if not inside.is_absolute():
            raise ValueError(f"{inside} is not absolute")
        for i, path in enumerate(self.masked):
            if inside.is_relative_to(path):
                return self.root / "masked" / str(i) / inside.relative_to(path)
        if any(inside.is_relative_to(p) for p in (*HOME_SHARED, *TMP_SHARED)):
            return inside
        for mount, folder in (("/tmp", "tmp"), (HOME, "home")):
            if inside.is_relative_to(mount):
                return self.root / folder / inside.relative_to(mount)
        if inside.is_relative_to("/dev/shm"):
            raise ValueError("/dev/shm of a node is a tmpfs only its processes see; read it with Node.run")
        return inside

    def env(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """A clean environment: PATH (the virtualenv first), HOME, and `env` on top; nothing from the host's."""
        return {"PATH": PATH, "HOME": HOME, "LANG": "C.UTF-8", **(env or {})}

    def command(self, argv: Sequence[str], cwd: str | Path = REPO) -> list[str]:
        if not self.up:
            raise RuntimeError(f"node {self.name} is down (kill_all); restart it first")
        assert self._holder is not None
        namespaces = ["--mount", "--net", "--uts", "--ipc"]
        return ["nsenter", f"--target={self._holder.pid}", *namespaces, f"--wdns={cwd}", "--", *map(str, argv)]

    def popen(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, log: Path | None = None, cwd: str | Path = REPO
    ) -> subprocess.Popen:
        """Start a long-running process in the node, in its own session; stdout+stderr go to `log` (a host path).
        nsenter execs into `argv` (no PID namespace to fork for), so the Popen's pid is the process itself."""
        out: IO | int = log.open("ab") if log is not None else subprocess.DEVNULL
        try:
            p = subprocess.Popen(
                self.command(argv, cwd),
                env=self.env(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        self._started.append(p)
        return p

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        cwd: str | Path = REPO,
        check: bool = False,
    ) -> subprocess.CompletedProcess:
        """Run a command in the node to completion; its output captured as text."""
        return subprocess.run(
            self.command(argv, cwd),
            env=self.env(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def python(
        self, code: str, env: Mapping[str, str] | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess:
        return self.run([sys.executable, "-c", code], env=env, timeout=timeout)

    def http_get(self, url: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """GET `url` from inside this node: (status, body); status 0 when no connection could be made."""
        code = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n"
            f"    r = urllib.request.urlopen({url!r}, timeout={timeout})\n"
            "    status, body = r.status, r.read()\n"
            "except urllib.error.HTTPError as e:\n"
            "    status, body = e.code, e.read()\n"
            "except OSError as e:\n"
            "    status, body = 0, str(e).encode()\n"
            "sys.stdout.buffer.write(str(status).encode() + b'\\n' + body)\n"
        )
        out = self.run([sys.executable, "-I", "-c", code], timeout=timeout + 60)
        if out.returncode != 0:
            raise RuntimeError(f"http_get in {self.name} failed: {out.stderr[-1500:]}")
        status, _, body = out.stdout.encode().partition(b"\n")
        return int(status), body

    def listening(self) -> list[tuple[str, int, str]]:
        """TCP sockets listening in the node: (local address, port, process) from `ss -ltnp`."""
        out = self.run(["ss", "-Hltnp"], check=True)
        found = []
        for line in out.stdout.splitlines():
            fields = line.split()
            host, _, port = fields[3].rpartition(":")
            found.append((host.strip("[]"), int(port), " ".join(fields[5:])))
        return found

    def wait_listening(self, ports: Sequence[int], timeout_s: float = 60.0, processes: Sequence[subprocess.Popen] = ()):
        """Wait until something in the node listens on each of `ports`; fail early if one of `processes` exits."""
        deadline = time.monotonic() + timeout_s
        while True:
            bound = {port for _, port, _ in self.listening()}
            if set(ports) <= bound:
                return
            for p in processes:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[-1] if p.args else p} exited with {p.returncode} in {self.name}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.name}: ports {sorted(set(ports) - bound)} not listening")
            time.sleep(0.2)

    # --- the network cable

    def link_down(self) -> None:
        """Unplug the node: its veth's host end goes down, so nothing reaches it and it reaches nothing."""
        _ip("link", "set", self.veth, "down")

    def link_up(self) -> None:
        _ip("link", "set", self.veth, "up")


class Nodes:
    """N nodes on one bridge: `with Nodes(root, ["head", "w1"]) as nodes: nodes["head"].run([...])`."""

    def __init__(
        self,
        root: Path,
        names: Sequence[str],
        masked: Sequence[Path] | None = None,
        shm_size: str = "2g",
    ) -> None:
        for name in names:
            if not (name.isascii() and name.replace("-", "").isalnum() and len(name) <= 20):
                raise ValueError(f"node name {name!r}: letters, digits and '-', at most 20")
        if len(set(names)) != len(names) or not 0 < len(names) <= 250:
            raise ValueError(f"node names must be 1..250 and distinct: {names}")
        self.root = Path(root)
        self.names = list(names)
        self.masked = _outermost(default_masked() if masked is None else masked)
        self.shm_size = shm_size
        self.prefix = ""  # ltnXX, claimed on entry
        self.bridge = ""
        self.subnet = ""  # 10.213.X: the nodes are .2, .3, ...
        self.nodes: dict[str, Node] = {}

    def __enter__(self) -> Nodes:
        try:
            self._claim()
            self.root.mkdir(parents=True, exist_ok=True)
            names = "".join(f"{self._address(i)} {name}\n" for i, name in enumerate(self.names))
            (self.root / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost\n{names}")
            for i, name in enumerate(self.names):
                self._make(i, name)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def _claim(self) -> None:
        """Take the first free `ltnXX` from this process's id on: the bridge's creation is the atomic claim."""
        start = os.getpid() % 255
        for k in range(255):
            x = (start + k) % 255 + 1
            prefix = f"ltn{x:02x}"
            made = _ip("link", "add", f"{prefix}-br", "type", "bridge", "forward_delay", "0", check=False)
            if made.returncode == 0:
                self.prefix, self.bridge, self.subnet = prefix, f"{prefix}-br", f"{SUBNET}.{x}"
                break
            if "exists" not in made.stderr:
                raise RuntimeError(f"cannot make a bridge: {made.stderr.strip()}")
        else:
            raise RuntimeError("no free ltnXX bridge name")
        # No IPv6 on the host side: a link-local address on the bridge would let the nodes reach the host.
        _write_sysctl(f"net.ipv6.conf.{self.bridge}.disable_ipv6", "1")
        _ip("link", "set", self.bridge, "up")

    def _address(self, i: int) -> str:
        return f"{self.subnet}.{i + 2}"

    def _make(self, i: int, name: str) -> None:
        netns, veth = f"{self.prefix}-{name}", f"{self.prefix}-{i}"
        address = self._address(i)
        node = Node(name, netns, veth, address, self.root / name, self.masked, self.root / "hosts")
        self.nodes[name] = node  # before creating anything, so close() finds what was made
        _ip("netns", "add", netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _write_sysctl(f"net.ipv6.conf.{veth}.disable_ipv6", "1")
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        node.boot(self.shm_size)

    def close(self) -> None:
        """Kill each node's processes (by namespace), delete its namespace and veth, then the bridge. Idempotent;
        removes only names this instance made."""
        errors: list[str] = []
        for node in self.nodes.values():
            try:
                node.kill_all()
            except (OSError, TimeoutError, RuntimeError) as error:
                errors.append(str(error))
            # The host end first: deleting it takes its peer along at once, whereas a deleted namespace destroys
            # its devices later, in the background, racing a delete of the host end.
            for args in (("link", "del", node.veth), ("netns", "del", node.netns)):
                out = _ip(*args, check=False)
                if out.returncode != 0 and not _gone(out.stderr):
                    errors.append(f"ip {' '.join(args)}: {out.stderr.strip()}")
        if self.bridge:
            out = _ip("link", "del", self.bridge, check=False)
            if out.returncode != 0 and not _gone(out.stderr):
                errors.append(f"ip link del {self.bridge}: {out.stderr.strip()}")
        if errors:
            raise RuntimeError("teardown left something: " + "; ".join(errors))


def _gone(stderr: str) -> bool:
    return any(gone in stderr for gone in ("Cannot find device", "No such device", "No such file", "does not exist"))


# --- Ray across nodes
#
# Ray 2.60 binds its C++ gRPC servers (GCS, raylet, object manager), the dashboard agent's gRPC and metrics ports,
# and the Prometheus endpoints of the head's dashboard and autoscaler on all addresses, with no option to choose
# one; in a node that is its own address and lo. The Ray Client server, the dashboard agent's HTTP port and the
# runtime env agent bind the node's address (--node-ip-address). tests/test_nodes.py checks both.


def ray_token() -> str:
    return secrets.token_hex(32)


def ray_env(token: str | None, address: str | None = None) -> dict[str, str]:
    """What every Ray process and driver of a token-auth cluster needs; `token=None` gives none (to be refused)."""
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token is not None else {}
    return {**env, **({"RAY_ADDRESS": address} if address else {})}


OBJECT_STORE_BYTES = 256 * 2**20  # well inside a node's /dev/shm: a larger store makes Ray fall back to /tmp


def _ray_start(node: Node, token: str, log: Path, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """`ray start` in `node`; `env`: what its processes (the workers Ray starts there too) see besides Ray's own."""
    ray = str(VENV_BIN / "ray")
    argv = [ray, "start", "--block", "--disable-usage-stats", "--node-ip-address", node.address]
    argv += ["--object-store-memory", str(OBJECT_STORE_BYTES), *args]
    niceness = {"RAY_worker_niceness": "0"}  # as for the local clusters: see tests/conftest.py
    return node.popen(argv, env={**niceness, **(env or {}), **ray_env(token)}, log=log)


def ray_nodes(node: Node, address: str, token: str | None, timeout: float = 120.0) -> list[dict]:
    """`ray.nodes()` as a driver in `node` sees them; [] when the driver could not connect."""
    code = "import json, ray; ray.init(); print('RAY_NODES', json.dumps(ray.nodes()), flush=True)"
    out = node.python(code, env=ray_env(token, address), timeout=timeout)
    if out.returncode != 0:
        return []
    return marked_json(out.stdout, "RAY_NODES")


def marked_json(stdout: str, marker: str) -> object:
    """The JSON a driver printed after `marker`: Ray's driver prints its own lines to stdout too (a lost node's
    lagging heartbeats, for one), before or after."""
    lines = [line for line in stdout.splitlines() if line.startswith(f"{marker} ")]
    if not lines:
        raise ValueError(f"no {marker} line in {stdout[-2000:]!r}")
    return json.loads(lines[-1].removeprefix(f"{marker} "))


def alive_addresses(nodes: list[dict]) -> list[str]:
    return sorted(n["NodeManagerAddress"] for n in nodes if n["Alive"])


def start_ray_head(
    node: Node,
    token: str,
    port: int = RAY_PORT,
    timeout_s: float = 300.0,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """A CPU-less head (tasks land on workers), waited for until a driver in the node sees it alive."""
    log = node.host_path("/tmp/ray-head.log")
    head = _ray_start(
        node,
        token,
        log,
        "--head",
        "--port",
        str(port),
        "--num-cpus",
        "0",
        "--include-dashboard",
        "false",
        *extra,
        env=env,
    )
    address = f"{node.address}:{port}"
    deadline = time.monotonic() + timeout_s
    node.wait_listening([port], timeout_s=timeout_s, processes=[head])
    while node.address not in alive_addresses(ray_nodes(node, address, token)):
        if head.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"Ray head in {node.name} did not come up: {log.read_text()[-2000:]}")
        time.sleep(1)
    return head


def start_ray_worker(
    node: Node,
    head: Node,
    token: str,
    num_cpus: int = 1,
    port: int = RAY_PORT,
    timeout_s: float = 300.0,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """A worker node joined to `head`'s cluster, waited for until the head sees it alive. Start workers one after
    another: two raylets starting together on a loaded 2-core machine can miss Ray's 30 s registration window, so
    a raylet that exits before it registered is started again."""
    log = node.host_path("/tmp/ray-worker.log")
    address = f"{head.address}:{port}"
    args = ("--address", address, "--num-cpus", str(num_cpus), *extra)
    worker = _ray_start(node, token, log, *args, env=env)
    deadline = time.monotonic() + timeout_s
    while node.address not in alive_addresses(ray_nodes(head, address, token)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray worker {node.name} never joined: {log.read_text()[-2000:]}")
        if worker.poll() is not None:
            worker = _ray_start(node, token, log, *args, env=env)
        time.sleep(1)
    return worker


# --- Prometheus in a node


def start_prometheus(
    node: Node,
    targets: Sequence[str],
    port: int = 9090,
    folder: str = "/tmp/prometheus",
    scrape_interval: str = "1s",
    timeout_s: float = 120.0,
) -> subprocess.Popen:
    """Prometheus on the node's address, scraping `targets` (`addr:port`) over the bridge; waited until ready."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed (Debian's package)")
    host_folder = node.host_path(folder)
    host_folder.mkdir(parents=True, exist_ok=True)
    (host_folder / "prometheus.yml").write_text(
        f"global: {{scrape_interval: {scrape_interval}, evaluation_interval: {scrape_interval}}}\n"
        "scrape_configs:\n"
        f"  - job_name: nodes\n    static_configs: [{{targets: {json.dumps(list(targets))}}}]\n"
    )
    argv = [
        binary,
        f"--config.file={folder}/prometheus.yml",
        f"--storage.tsdb.path={folder}/data",
        f"--web.listen-address={node.address}:{port}",
    ]
    process = node.popen(argv, log=host_folder / "prometheus.log")
    deadline = time.monotonic() + timeout_s
    # Prometheus opens its port before its storage is up, and answers 503 until /-/ready.
    while node.http_get(f"http://{node.address}:{port}/-/ready")[0] != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"Prometheus did not get ready: {(host_folder / 'prometheus.log').read_text()[-2000:]}")
        time.sleep(0.5)
    return process


def prometheus_api(node: Node, server: str, path: str, **params: str) -> dict:
    """GET Prometheus' HTTP API (`/api/v1/query`, `/api/v1/targets`, ...) of `server` (`addr:port`) from `node`;
    the `data` of a successful answer."""
    import urllib.parse

    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    status, body = node.http_get(f"http://{server}{path}{query}")
    if status != 200:
        raise RuntimeError(f"Prometheus {path}: {status} {body[:500]!r}")
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]


T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.5) -> T:
    """Poll `check` until it returns something truthy (returned), or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout_s} s")
        time.sleep(every_s)
    return result
