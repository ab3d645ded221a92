"""A real multi-node Ray cluster on one machine: a head and two worker nodes started with `ray start` on
the loopback address (token authentication on), and a campaign whose jobs land on both worker nodes, each node
fetching the model set from S3 (moto) into its own cache."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import boto3
import yaml

from tests.conftest import CACHE
from tests.s3_servers import MotoServer, free_port, moto_env, stop_process_group, wait_for_port

TINY = {"height": 64, "width": 64, "num_frames": 9, "steps": 2}


def _ray_start(env: dict, log: Path, *args: str) -> subprocess.Popen:
    ray_bin = str(Path(sys.executable).parent / "ray")
    ports = [
        "--node-manager-port", str(free_port()),
        "--object-manager-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
    ]  # fmt: skip
    return subprocess.Popen(
        [ray_bin, "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *ports, *args],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _nodes(env: dict, address: str) -> list[dict]:
    code = f"import json, ray; ray.init(address={address!r}); print(json.dumps(ray.nodes()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        print("ray.nodes() failed:", out.stderr[-1500:])
        return []
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_campaign_spreads_over_two_worker_nodes(tmp_path):
    env = {
        **os.environ,
        "LTX2_FARM_CACHE": str(CACHE),
        "LTX2_FARM_DB": str(tmp_path / "db"),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    env.pop("RAY_ADDRESS", None)
    moto = MotoServer().start()
    env.update(moto_env(), AWS_ENDPOINT_URL=moto.endpoint, LTX2_FARM_HASH_CACHE=str(tmp_path / "head-hashes.json"))
    env["LTX2_MODELS"] = "s3://models/tiny"  # the head reads the manifest; the nodes share nothing but the network
    env["LTX2_FARM_MODEL_CACHE"] = str(tmp_path / "head-cache")
    node_caches = [tmp_path / f"node{i}-cache" for i in range(2)]
    cli = [sys.executable, "-m", "cluster.cli"]
    gcs = free_port()
    address = f"127.0.0.1:{gcs}"
    started: list[subprocess.Popen] = []
    try:
        s3 = boto3.session.Session(**{k.lower(): v for k, v in moto_env().items() if k != "AWS_DEFAULT_REGION"})
        s3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1").create_bucket(Bucket="models")
        publish = [*cli, "models", "publish", "s3://models/tiny"]
        published = subprocess.run(publish, env={**env, "LTX2_MODELS": ""}, capture_output=True, text=True)
        assert published.returncode == 0, published.stderr
        head_args = ("--head", "--port", str(gcs), "--num-cpus", "0", "--include-dashboard", "false")
        started.append(_ray_start(env, tmp_path / "head.log", *head_args))
        wait_for_port(gcs, timeout_s=300)
        deadline = time.monotonic() + 300  # slow on a loaded 2-core machine
        for i in range(2):  # one at a time: two raylets starting together can time out on 2 cores
            log = tmp_path / f"worker{i}.log"
            node_env = {
                **env,
                "LTX2_FARM_MODEL_CACHE": str(node_caches[i] / "models"),
                "LTX2_FARM_HASH_CACHE": str(node_caches[i] / "file-hashes.json"),
            }
            started.append(_ray_start(node_env, log, "--address", address, "--num-cpus", "1"))
            while len([n for n in _nodes(env, address) if n["Alive"]]) < 2 + i:
                assert time.monotonic() < deadline, f"worker node {i} never joined: {log.read_text()[-1500:]}"
                if started[-1].poll() is not None:  # Ray gives a raylet 30 s to register; a loaded machine may miss it
                    started[-1] = _ray_start(node_env, log, "--address", address, "--num-cpus", "1")
                time.sleep(1)
        manifest = tmp_path / "m.yaml"
        rows = [{"id": f"j{i}", "prompt": f"scene {i}"} for i in range(6)]
        manifest.write_text(yaml.safe_dump({"campaign": "multi", "defaults": TINY, "rows": rows}))
        assert subprocess.run([*cli, "campaign", "submit", str(manifest)], env=env, capture_output=True).returncode == 0
        run = subprocess.run(
            [*cli, "campaign", "run", "--address", address, "--workers", "2", "--out", str(tmp_path / "out"), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        nodes = _nodes(env, address)
        head = {n["NodeID"] for n in nodes if n["Resources"].get("CPU", 0) == 0}
        workers = {n["NodeID"] for n in nodes if n["Alive"]} - head
        sidecars = [json.loads(p.read_text()) for p in (tmp_path / "out" / "multi").glob("*.json")]
        assert len(sidecars) == 6
        used = {d["worker"]["node"] for d in sidecars}
        assert used == workers and len(used) == 2  # both worker nodes rendered; the CPU-less head none
        # each node rendered from the files in its own cache
        by_node = {d["worker"]["node"]: Path(d["models"]["checkpoint"]["path"]) for d in sidecars}
        assert {next(c for c in node_caches if c in path.parents) for path in by_node.values()} == set(node_caches)
        assert not (tmp_path / "head-cache").exists()  # the head read the manifest, no model file
    finally:
        for p in reversed(started):  # only the processes this test started, by their process group
            stop_process_group(p)
        moto.stop()
