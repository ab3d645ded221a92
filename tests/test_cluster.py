"""The farm on nodes that share nothing but the network (tests/nodes.py): a CPU-less Ray head, two worker nodes,
Swift in a storage node and Prometheus in a monitoring node, each with its own /tmp, caches and addresses.

The model set reaches the workers from the bucket (`models publish` on the head, `LTX2_MODELS` on the workers),
the inputs of a job reach them from the submitting head through Ray, and the outputs reach the bucket from the
node that holds them. Then the faults of a real cluster, each on the same nodes: a worker node lost, a worker
node cut off for 30 s, the head killed and restarted, the storage node down for 60 s. Every job ends done
exactly once, with its output in the bucket, identical to the undisturbed run's.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import yaml

from tests.nodes import (
    RAY_PORT,
    Node,
    Nodes,
    alive_addresses,
    marked_json,
    prometheus_api,
    ray_env,
    ray_nodes,
    ray_token,
    require_nodes,
    start_prometheus,
    start_ray_head,
    start_ray_worker,
    wait_until,
)
from tests.swift_server import ACCESS_KEY, SECRET_KEY, SwiftServer

NAMES = ["head", "w1", "w2", "storage", "monitor"]
WORKERS = ("w1", "w2")
METRICS_PORT = 9464
TINY = {"height": 64, "width": 64, "num_frames": 9, "steps": 2}
PLAIN = [{"id": f"p{i}", "prompt": f"scene {i}, wind and gulls", "seed": 20 + i} for i in range(10)]
LONG = {  # 2 chunks x 4 stage-2 tiles (2 in time x 2 across)
    "id": "long",
    "prompt": "a red kite over dunes|the kite lands on the sand",
    "height": 128,
    "width": 192,
    "num_frames": None,
    "duration": 3,
    "chunk_seconds": 2,
    "chunk_overlap": 0.5,
    "tile_pixels": 128,
    "tile_overlap": 64,
}
BRANDED = {  # inputs that exist only on the head, where the campaign is submitted
    "id": "branded",
    "prompt": "a yellow box on a table, a soft hum",
    "images": [{"path": "product.png"}],
    "loras": [{"path": "style.safetensors", "strength": 0.8}],
}
INPUTS = "/tmp/inputs"  # on the head only


@dataclass
class Farm:
    nodes: Nodes
    token: str
    swift: SwiftServer
    env: dict[str, str]
    reference: dict[str, dict] = field(default_factory=dict)
    """Job id -> its sidecar from the undisturbed campaign."""
    logs: list = field(default_factory=list)
    ray_workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def head(self) -> Node:
        return self.nodes["head"]

    @property
    def address(self) -> str:
        return f"{self.head.address}:{RAY_PORT}"

    def cli(
        self, node: Node, *args: str, timeout: float = 600.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return node.run([sys.executable, "-m", "cluster.cli", *args], env=env or self.env, timeout=timeout)

    def s3(self, code: str) -> object:
        """Run boto3 `code` (with `s3`, a client of the bucket's server) in the head node; it prints its result
        with `out(value)`."""
        prelude = (
            "import json, boto3\n"
            "s3 = boto3.session.Session().client('s3')\n"
            "def out(value): print('S3_OUT', json.dumps(value), flush=True)\n"
        )
        result = self.head.python(prelude + code, env=self.env, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return marked_json(result.stdout, "S3_OUT")

    def run_campaign(self, name: str, rows: list[dict], workers: int = 2, metrics: bool = False) -> subprocess.Popen:
        """Submit `rows` as campaign `name` on the head and start its runner there (returned running), once both
        worker nodes are in the cluster."""
        self.workers_ready()
        manifest = {"campaign": name, "output": "s3://renders/farm", "defaults": TINY, "rows": rows}
        self.head.host_path(f"{INPUTS}/{name}.yaml").write_text(yaml.safe_dump(manifest))
        submitted = self.cli(self.head, "campaign", "submit", f"{INPUTS}/{name}.yaml")
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        argv = ["campaign", "run", "--address", self.address, "--workers", str(workers), "--json"]
        if metrics:
            argv += ["--metrics-port", str(METRICS_PORT), "--metrics-addr", self.head.address]
        log = self.head.host_path(f"/tmp/run-{name}-{time.monotonic_ns()}.log")
        self.logs.append(log)
        return self.head.popen([sys.executable, "-m", "cluster.cli", *argv], env=self.env, log=log)

    def finished(self, run: subprocess.Popen, timeout: float = 600.0) -> None:
        """Wait for a campaign runner started by `run_campaign`; it must succeed (its log's end if not)."""
        code = run.wait(timeout=timeout)
        assert code == 0, f"runner exited {code}: {self.logs[-1].read_text()[-3000:]}"

    def status(self, name: str) -> dict:
        out = self.cli(self.head, "campaign", "status", name, "--json", timeout=120)
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def _store(self, query: str, name: str, default: float) -> float:
        """One value about campaign `name`, read from the head's store on its disk (a reader beside the runner: WAL
        mode)."""
        database = self.head.host_path("/tmp/farm.db")
        if not database.exists():
            return default
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
            row = db.execute(query, (name,)).fetchone()
            return default if row is None else row[0]

    def done(self, name: str) -> int:
        """Jobs of `name` done."""
        return int(self._store("SELECT COUNT(*) FROM jobs WHERE campaign=? AND state='done'", name, 0))

    def charged(self, name: str) -> float:
        """GPU seconds charged to `name`: a render's are charged when it ends, before its upload."""
        return self._store("SELECT gpu_seconds FROM campaigns WHERE name=?", name, 0.0)

    def objects(self, name: str) -> dict[str, dict]:
        """The campaign's outputs in the bucket: job id -> {'sidecar': document, 'mp4_sha256': of the object}."""
        listed = self.s3(
            "import hashlib\n"
            f"listed = s3.list_objects_v2(Bucket='renders', Prefix='farm/{name}/')\n"
            "keys = [o['Key'] for o in listed.get('Contents', [])]\n"
            "docs = {}\n"
            "for k in keys:\n"
            "    body = s3.get_object(Bucket='renders', Key=k)['Body'].read()\n"
            "    docs[k] = json.loads(body) if k.endswith('.json') else hashlib.sha256(body).hexdigest()\n"
            "out(docs)\n"
        )
        found: dict[str, dict] = {}
        for key, value in listed.items():
            if key.endswith(".json"):
                mp4 = key.removesuffix(".json") + ".mp4"
                assert mp4 in listed, f"{key} without its MP4"
                found[value["job"]["name"]] = {"sidecar": value, "mp4_sha256": listed[mp4]}
        assert len(listed) == 2 * len(found), sorted(listed)
        return found

    def start_worker(self, name: str) -> None:
        env = {**self.env, "LTX2_FARM_NODE_NAME": name}
        self.ray_workers[name] = start_ray_worker(self.nodes[name], self.head, self.token, env=env)

    def restart_worker(self, name: str) -> None:
        """A worker node back (as KubeRay restarts a pod): its disk kept, a fresh Ray worker joined to the head."""
        restart_pod(self.nodes[name])
        self.start_worker(name)

    def workers_ready(self, within_s: float = 300.0) -> None:
        """Both worker nodes alive to the head, a node whose raylet exited started again (as KubeRay restarts a pod):
        a node cut off or restarted by the test before may take a while to leave or rejoin the cluster."""
        deadline = time.monotonic() + within_s
        while True:
            for name in WORKERS:
                if self.ray_workers[name].poll() is not None:
                    self.restart_worker(name)
            alive = alive_addresses(ray_nodes(self.head, self.address, self.token))
            if all(self.nodes[name].address in alive for name in WORKERS):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker nodes not alive to the head after {within_s} s: alive {alive}")
            time.sleep(1)

    def rejoined(self, name: str, within_s: float = 30.0) -> None:
        """A node whose link came back: its raylet either carries on, or learns that the head gave it up and exits
        (as a pod's container would, which KubeRay then restarts: so does this)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.ray_workers[name].poll() is not None:
                self.restart_worker(name)
                return
            time.sleep(1)


def restart_pod(node: Node) -> None:
    """A node started again as a pod is: what it kept on its volumes (the campaign store, caches) is still there,
    Ray's session folder (the container's own file system) is new."""
    node.restart()
    shutil.rmtree(node.host_path("/tmp/ray"), ignore_errors=True)


@pytest.fixture(scope="module")
def farm(tmp_path_factory) -> Iterator[Farm]:
    require_nodes()
    with Nodes(tmp_path_factory.mktemp("cluster"), NAMES) as nodes:
        storage = nodes["storage"]
        swift = SwiftServer("/tmp/swift", node=storage).start()
        env = {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": swift.endpoint,
            "LTX2_FARM_CACHE": "/tmp/farm-cache",
            "LTX2_FARM_DB": "/tmp/farm.db",
            "LTX2_MODELS": "s3://models/tiny/ltx2-models.json",
            "TQDM_DISABLE": "1",
        }
        token = ray_token()
        env.update(ray_env(token))  # every farm process is a Ray driver or worker of a token-auth cluster
        farm = Farm(nodes, token, swift, env)
        farm.s3("s3.create_bucket(Bucket='models'); s3.create_bucket(Bucket='renders'); out(1)")
        head = farm.head
        publish_env = {k: v for k, v in env.items() if k != "LTX2_MODELS"}  # publish the tiny set, not pull one
        for args in (("models", "publish", "s3://models/tiny", "--tiny"), ("examples", INPUTS)):
            made = farm.cli(head, *args, timeout=300, env=publish_env)  # the tiny set and the inputs: head only
            assert made.returncode == 0, made.stdout + made.stderr
        start_ray_head(head, farm.token, env={**env, "LTX2_FARM_NODE_NAME": "head"})
        for name in WORKERS:  # one after another: see start_ray_worker
            farm.start_worker(name)
        yield farm


def test_a_mixed_campaign_across_nodes_that_share_nothing(farm):
    """Plain jobs, a chunked and tiled job, and a job whose image and LoRA exist only on the head; outputs land in
    the bucket from the nodes that hold them; Prometheus in its own node scrapes both workers through the farm."""
    monitor = farm.nodes["monitor"]
    prometheus = start_prometheus(monitor, [f"{farm.head.address}:{METRICS_PORT}"])
    try:
        farm.finished(farm.run_campaign("mixed", [*PLAIN, LONG, BRANDED], metrics=True))
        rendered_by = prometheus_api(
            monitor,
            f"{monitor.address}:9090",
            "/api/v1/query",
            query="count by (node, worker) (last_over_time(ltx2farm_task_seconds_count[10m]))",
        )
    finally:
        prometheus.kill()
        prometheus.wait(timeout=30)
    status = farm.status("mixed")
    assert status["jobs"]["done"] == len(PLAIN) + 2 and status["jobs"]["failed"] == 0, status
    outputs = farm.objects("mixed")
    assert sorted(outputs) == sorted(r["id"] for r in [*PLAIN, LONG, BRANDED])
    for job, found in outputs.items():
        assert found["sidecar"]["output"]["sha256"] == found["mp4_sha256"], job  # the bytes the holder measured
    hosts = {outputs[r["id"]]["sidecar"]["worker"]["host"] for r in [*PLAIN, BRANDED]}
    assert hosts == set(WORKERS)  # whole renders ran on both worker nodes, none on the CPU-less head
    plan = outputs["long"]["sidecar"]["plan"]
    assert len(plan["chunks"]) == 2 and len(plan["stage2_tiles"]) == 4
    assert {t["worker"] for t in outputs["long"]["sidecar"]["trace"]} >= {"worker-0", "worker-1"}
    branded = outputs["branded"]["sidecar"]
    image_digest = branded["job"]["images"][0]["sha256"]
    holder = farm.nodes[branded["worker"]["host"]]
    assert holder.host_path(f"/tmp/farm-cache/inputs/shipped/{image_digest}/product.png").is_file()
    assert not holder.host_path(INPUTS).exists()  # the worker never had the submitter's folder
    for name in WORKERS:  # published outputs leave nothing staged on the worker nodes
        staged = farm.nodes[name].host_path("/tmp/farm-cache/staging")
        assert not [p for p in staged.rglob("*") if p.is_file()], name
        assert farm.nodes[name].host_path("/tmp/farm-cache/models").is_dir()  # models pulled into its own cache
    assert not [p for p in farm.head.host_path("/tmp/farm-cache/staging").rglob("*") if p.is_file()]
    series = {(r["metric"].get("node"), r["metric"].get("worker")) for r in rendered_by["result"]}
    assert {node for node, _ in series} >= set(WORKERS), series  # both workers' latency series, over the bridge
    farm.reference.update({job: found["sidecar"] for job, found in outputs.items()})


def _identical_to_reference(farm: Farm, name: str, rows: list[dict]) -> dict[str, dict]:
    status = farm.status(name)
    assert status["jobs"]["done"] == len(rows) and sum(status["jobs"].values()) == len(rows), status
    outputs = farm.objects(name)
    assert sorted(outputs) == sorted(r["id"] for r in rows)
    for job, found in outputs.items():
        reference = farm.reference[job]
        assert found["sidecar"]["output"]["sha256"] == found["mp4_sha256"], job  # the bytes its holder measured
        # The same frames and audio, bit for bit, and the same MP4 bytes, whichever node rendered it again.
        assert found["sidecar"]["content_sha256"] == reference["content_sha256"], job
        assert found["mp4_sha256"] == reference["output"]["sha256"], job
    return outputs


def _wait_for_first_job(farm: Farm, name: str, run: subprocess.Popen) -> None:
    wait_until(lambda: run.poll() is not None or farm.done(name) >= 1, 600, f"{name}: a first job done", every_s=0.2)
    assert run.poll() is None, f"{name}: the runner ended before the fault"


@pytest.fixture
def undisturbed(farm):
    if not farm.reference:
        pytest.fail("needs the undisturbed run's outputs: test_a_mixed_campaign_across_nodes_that_share_nothing first")
    return farm


def test_a_worker_node_lost_mid_campaign(undisturbed):
    farm = undisturbed
    run = farm.run_campaign("node-lost", PLAIN)
    _wait_for_first_job(farm, "node-lost", run)
    farm.nodes["w2"].kill_all()  # the node and everything on it gone, its disk with it
    farm.restart_worker("w2")
    farm.finished(run)
    _identical_to_reference(farm, "node-lost", PLAIN)


def test_a_worker_node_cut_off_for_30_s(undisturbed):
    farm = undisturbed
    run = farm.run_campaign("cut-off", PLAIN)
    _wait_for_first_job(farm, "cut-off", run)
    w1 = farm.nodes["w1"]
    w1.link_down()
    time.sleep(30)
    w1.link_up()
    farm.rejoined("w1")
    farm.finished(run)
    _identical_to_reference(farm, "cut-off", PLAIN)


def test_the_head_killed_and_restarted(undisturbed):
    farm = undisturbed
    run = farm.run_campaign("head-lost", PLAIN)
    _wait_for_first_job(farm, "head-lost", run)
    farm.head.kill_all()  # GCS, the runner and its store's node: only the disk stays
    run.wait(timeout=60)
    restart_pod(farm.head)
    start_ray_head(farm.head, farm.token, env={**farm.env, "LTX2_FARM_NODE_NAME": "head"})
    for name in WORKERS:  # a new head is a new cluster: KubeRay restarts the worker pods, which join it
        farm.restart_worker(name)
    farm.finished(farm.run_campaign("head-lost", PLAIN))  # resubmitting is a no-op; the runner recovers the store
    _identical_to_reference(farm, "head-lost", PLAIN)


def test_the_storage_node_down_for_60_s(undisturbed):
    farm = undisturbed
    run = farm.run_campaign("storage-down", PLAIN)
    _wait_for_first_job(farm, "storage-down", run)
    storage = farm.nodes["storage"]
    charged = farm.charged("storage-down")
    storage.kill_all()
    down = time.time()
    # Down for 60 s at least, and until a render has ended meanwhile (its GPU time is charged when it ends, before
    # its upload): the check below then holds by what happened, not by how fast the renders were.
    wait_until(
        lambda: farm.charged("storage-down") > charged and time.time() > down + 60,
        600,
        "storage-down: a job rendered while the storage was down",
        every_s=0.5,
    )
    storage.restart()
    farm.swift.start()  # its objects were on the node's disk
    back = time.time()
    farm.finished(run)
    outputs = _identical_to_reference(farm, "storage-down", PLAIN)
    # Renders went on while uploads waited: no job waited behind another's upload.
    rendered_meanwhile = [o for o in outputs.values() if down < o["sidecar"]["timeline_unix"]["model_end"] < back]
    assert rendered_meanwhile, "no job rendered while the storage was down"
