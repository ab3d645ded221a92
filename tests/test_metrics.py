"""Prometheus metrics over real HTTP during renders on the local cluster, scraped by a real Prometheus."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.coordinator import Coordinator
from cluster.executor import WorkerPool
from cluster.metrics import MetricsServer
from jobs.plan import plan_job
from jobs.spec import validate_job
from tests.conftest import REPO, SMALL_JOB
from tests.s3_servers import free_port, wait_for_port

DEPLOY = REPO / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def farm(ray_cluster, tiny_set):
    pool = WorkerPool(tiny_set, num_workers=2)
    server = MetricsServer(pool)
    yield pool, server
    server.close()
    pool.shutdown()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def test_metrics_move_during_and_after_a_render(farm, tmp_path):
    pool, server = farm
    before = scrape(server.url)
    assert total(before, "ltx2farm_model_load_seconds") > 0
    assert total(before, "ltx2farm_workers") == 2
    assert {dict(ls)["gpu"] for (n, ls) in before if n == "ltx2farm_model_load_seconds"} == {"worker-0", "worker-1"}
    plan = plan_job(
        validate_job(
            {
                **SMALL_JOB,
                "num_frames": None,
                "duration": 4,
                "chunk_seconds": 2,
                "chunk_overlap": 0.5,
                "decode_tile_frames": 32,
            }
        )
    )
    coordinator = Coordinator(pool, server.farm)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("docs", coordinator.run([plan], tmp_path)))
    thread.start()
    during = []
    while thread.is_alive():
        during.append(scrape(server.url))
        time.sleep(0.2)
    thread.join()
    after = scrape(server.url)
    assert result["docs"][0]["media"]["frames"] == 97
    steps_before = total(before, "ltx2farm_step_seconds_count", stage="stage_1")
    assert total(after, "ltx2farm_step_seconds_count", stage="stage_1") == steps_before + 3 * 3  # 3 chunks x 3 steps
    assert total(after, "ltx2farm_task_seconds_count", stage="stage_2") >= 3 * 3  # 3 windows x 3 steps + init
    assert total(after, "ltx2farm_task_outcomes_total", outcome="ok") > total(before, "ltx2farm_task_outcomes_total")
    assert total(after, "ltx2farm_job_seconds_count") == total(before, "ltx2farm_job_seconds_count") + 1
    assert total(after, "ltx2farm_video_seconds_total") - total(before, "ltx2farm_video_seconds_total") == (
        pytest.approx(97 / 24)
    )
    assert total(after, "ltx2farm_gpu_seconds_total") > total(before, "ltx2farm_gpu_seconds_total")
    assert any(total(s, "ltx2farm_jobs", state="running") == 1 for s in during)
    assert total(after, "ltx2farm_jobs", state="done") == 1
    # bounded labels only: never a job id
    assert all(set(dict(ls)) <= {"stage", "outcome", "node", "gpu", "le", "priority", "state"} for _, ls in after)


def test_a_real_prometheus_scrapes_the_farm(farm, tmp_path):
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is installed by ./farm test (Debian's package)"
    _, server = farm
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{str(DEPLOY / 'alerts.yml')!r}]\n"
        "scrape_configs:\n"
        f"  - job_name: ltx2farm\n    static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]\n"
    )
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        query = urllib.parse.urlencode({"query": "ltx2farm_model_load_seconds"})
        deadline = time.monotonic() + 60
        ready = False  # Prometheus opens its port before its storage is up, and answers 503 until /-/ready
        while time.monotonic() < deadline and not ready:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=10) as r:
                    ready = r.status == 200
            except urllib.error.HTTPError as error:
                assert error.code == 503, error
                time.sleep(0.5)
        series = []
        while time.monotonic() < deadline and not series:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?{query}", timeout=10) as r:
                series = json.loads(r.read())["data"]["result"]
            time.sleep(0.5)
        assert len(series) == 2 and all(float(s["value"][1]) > 0 for s in series)
        assert {s["metric"]["job"] for s in series} == {"ltx2farm"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10) as r:
            groups = json.loads(r.read())["data"]["groups"]
        assert {rule["name"] for g in groups for rule in g["rules"]} >= {"Ltx2FarmQueueStalled", "Ltx2FarmOomRate"}
    finally:
        process.kill()  # our own child, by PID
        process.wait(timeout=10)


def test_promtool_accepts_rules_and_config(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool
    rules = subprocess.run([promtool, "check", "rules", str(DEPLOY / "alerts.yml")], capture_output=True, text=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    shutil.copy(DEPLOY / "prometheus.yml", tmp_path)
    shutil.copy(DEPLOY / "alerts.yml", tmp_path)
    config = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert config.returncode == 0, config.stdout + config.stderr


def test_grafana_dashboard_queries_existing_metrics():
    dashboard = json.loads((REPO / "deploy" / "grafana" / "ltx2farm-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for name in (
        "ltx2farm_vram_allocated_bytes",
        "ltx2farm_step_seconds_bucket",
        "ltx2farm_queue_depth",
        "ltx2farm_video_seconds_total",
        "ltx2farm_task_outcomes_total",
        "ltx2farm_upload_failures_total",
    ):
        assert name in exprs
    assert Path(REPO / "deploy" / "prometheus" / "prometheus.yml").is_file()
