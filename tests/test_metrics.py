"""Prometheus metrics over real HTTP during renders on the local cluster, scraped by a real Prometheus."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cluster.campaign_manifest import parse_manifest
from cluster.campaign_runner import CampaignRunner
from cluster.campaign_store import Store
from cluster.local_executor import LocalExecutor
from cluster.metrics import (
    MAX_CAMPAIGN_LABELS,
    NODE_NAME_ENV,
    OTHER_CAMPAIGNS,
    FarmMetrics,
    MetricsServer,
    build_versions,
)
from cluster.publish import OutputTarget
from cluster.ray_executor import RayExecutor
from cluster.service import render_and_publish
from cluster.worker_options import WorkerOptions
from jobs.plan import plan_job
from jobs.schedule import CampaignState
from jobs.spec import validate_job
from jobs.windows import WindowSpec
from tests.conftest import REPO, SMALL_JOB
from tests.s3_servers import free_port, wait_for_port

ALERTS = REPO / "deploy/helm/ltx2-farm/files/alerts.yaml"
K8S_NODE = "gpu-node-a"  # what the downward API would give the workers' pods


@pytest.fixture(scope="module")
def farm(ray_cluster, tiny_set):
    pool = RayExecutor(tiny_set, num_workers=2, options=WorkerOptions(env={NODE_NAME_ENV: K8S_NODE}))
    server = MetricsServer(pool)
    yield pool, server
    server.close()
    pool.shutdown()


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """Samples of the Prometheus text format, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return parse(response.read().decode())


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def test_worker_series_carry_node_and_worker_and_cpu_workers_publish_no_vram(farm):
    _, server = farm
    assert server.addr == "127.0.0.1"  # the default: this machine only
    samples = scrape(server.url)
    loads = [dict(ls) for (n, ls) in samples if n == "ltx2farm_model_load_seconds"]
    assert sorted(ls["worker"] for ls in loads) == ["worker-0", "worker-1"]
    assert {ls["node"] for ls in loads} == {K8S_NODE}  # from the workers' environment, not the host name
    assert not any("gpu" in ls for ls in loads)  # CPU workers: no GPU to name
    assert not [n for n, _ in samples if n.startswith("ltx2farm_vram_")]  # nothing rather than zeros
    [(_, info)] = [(n, dict(ls)) for (n, ls), v in samples.items() if n == "ltx2farm_build_info" and v == 1]
    assert info == build_versions() and info["version"] != "unknown" and info["torch"] != "unknown"


def test_metrics_move_during_and_after_a_render(farm, tmp_path):
    pool, server = farm
    before = scrape(server.url)
    assert total(before, "ltx2farm_model_load_seconds") > 0
    assert total(before, "ltx2farm_workers") == total(before, "ltx2farm_workers_desired") == 2
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
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("published", render_and_publish(pool, plan, OutputTarget(), tmp_path, server))
    )
    thread.start()
    during = []
    while thread.is_alive():
        during.append(scrape(server.url))
        time.sleep(0.2)
    thread.join()
    after = scrape(server.url)
    document = result["published"].document
    assert document["media"]["frames"] == 97
    steps_before = total(before, "ltx2farm_step_seconds_count", stage="stage_1")
    assert total(after, "ltx2farm_step_seconds_count", stage="stage_1") == steps_before + 3 * 3  # 3 chunks x 3 steps
    assert total(after, "ltx2farm_task_seconds_count", stage="stage_2") >= 3 * 3  # 3 windows x 3 steps + init
    assert total(after, "ltx2farm_task_outcomes_total", outcome="ok") > total(before, "ltx2farm_task_outcomes_total")
    assert total(after, "ltx2farm_job_seconds_count") == total(before, "ltx2farm_job_seconds_count") + 1
    # end to end: at least the span of the job's tasks on the workers (worker seconds would be less, or more
    # with workers in parallel), plus the coordinator's own work and the delivery
    latency = total(after, "ltx2farm_job_seconds_sum") - total(before, "ltx2farm_job_seconds_sum")
    trace = document["trace"]
    assert latency >= max(t["end"] for t in trace) - min(t["start"] for t in trace) > 0
    assert latency >= max(t["seconds"] for t in trace)
    assert total(after, "ltx2farm_video_seconds_total") - total(before, "ltx2farm_video_seconds_total") == (
        pytest.approx(97 / 24)
    )
    assert total(after, "ltx2farm_gpu_seconds_total") > total(before, "ltx2farm_gpu_seconds_total")
    assert any(total(s, "ltx2farm_jobs", state="running") == 1 for s in during)
    assert total(after, "ltx2farm_jobs", state="done") == 1
    # bounded labels only: never a job id (`render` jobs have no campaign: the empty value)
    assert all(
        set(dict(ls))
        <= {"stage", "outcome", "node", "worker", "gpu", "le", "priority", "state", "campaign"} | set(build_versions())
        for _, ls in after
    )
    assert {dict(ls).get("campaign") for (n, ls) in after if n.startswith("ltx2farm_job_seconds")} == {""}


def test_a_real_prometheus_scrapes_the_farm(farm, tmp_path):
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is installed by ./farm test (Debian's package)"
    _, server = farm
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{str(ALERTS)!r}]\n"
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
        assert {(s["metric"]["node"], s["metric"]["worker"]) for s in series} == {
            (K8S_NODE, "worker-0"),
            (K8S_NODE, "worker-1"),
        }
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10) as r:
            groups = json.loads(r.read())["data"]["groups"]
        assert {rule["name"] for g in groups for rule in g["rules"]} >= {"Ltx2FarmQueueStalled", "Ltx2FarmOomRate"}
    finally:
        process.kill()  # our own child, by PID
        process.wait(timeout=10)


def test_grafana_dashboard_queries_existing_metrics():
    dashboard = json.loads((REPO / "deploy" / "helm" / "ltx2-farm" / "files" / "ltx2farm-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for name in (
        "ltx2farm_vram_allocated_bytes",
        "ltx2farm_step_seconds_bucket",
        "ltx2farm_queue_depth",
        "ltx2farm_video_seconds_total",
        "ltx2farm_task_outcomes_total",
        "ltx2farm_upload_failures_total",
        "ltx2farm_job_seconds_bucket",
    ):
        assert name in exprs
    legends = " ".join(t.get("legendFormat", "") for p in dashboard["panels"] for t in p["targets"])
    assert set(re.findall(r"{{(\w+)}}", legends)) <= {
        "node",
        "worker",
        "gpu",
        "stage",
        "outcome",
        "priority",
        "state",
        "campaign",
    }
    assert Path(REPO / "deploy" / "prometheus" / "prometheus.yml").is_file()


def test_metrics_addr_binds_where_asked():
    server = MetricsServer(None, addr="127.0.0.2")  # a loopback address that is not the default
    try:
        assert server.addr == "127.0.0.2" and server.url == f"http://127.0.0.2:{server.port}/metrics"
        assert total(scrape(server.url), "ltx2farm_build_info") == 1
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    finally:
        server.close()


def _no_work(*args, **kwargs):
    raise AssertionError("work started before the metrics address was checked")


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        (["render", "--metrics-port", "0", "--metrics-addr", "192.0.2.1"], {}, "--metrics-addr 192.0.2.1"),
        (["campaign", "run", "--metrics-port", "0"], {"LTX2_FARM_METRICS_ADDR": "192.0.2.1"}, "192.0.2.1"),
        (["campaign", "run", "--metrics-port", "70000"], {}, "0 to 65535"),
        (["render", "--metrics-addr", "0.0.0.0"], {}, "needs --metrics-port"),
    ],
    ids=["another host's address", "from the environment", "port out of range", "address without port"],
)
def test_a_bad_metrics_address_is_a_usage_error_before_any_work(argv, env, words, monkeypatch, capsys, tmp_path):
    from cluster import cli

    monkeypatch.setenv("LTX2_FARM_DB", str(tmp_path / "campaigns.db"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "load_job_mapping", _no_work)
    monkeypatch.setattr(cli, "resolve_checkpoints", _no_work)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv", [["render"], ["campaign", "run"]], ids=["render", "campaign run"])
def test_a_busy_metrics_port_is_refused_before_any_work(argv, monkeypatch, capsys, tmp_path):
    """Another process listens on the port: one line naming it, exit code 2, before any job, model or Ray."""
    from cluster import cli

    monkeypatch.setenv("LTX2_FARM_DB", str(tmp_path / "campaigns.db"))
    monkeypatch.setattr(cli, "load_job_mapping", _no_work)
    monkeypatch.setattr(cli, "resolve_checkpoints", _no_work)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main([*argv, "--metrics-port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: --metrics-addr 127.0.0.1 --metrics-port {port}: cannot listen there (Address already in use): "
        "another process listens there; choose another port (0: any free port)\n"
    )


def test_the_metrics_port_is_held_from_before_the_models_load(monkeypatch, capsys):
    """The endpoint answers, and its port cannot be taken, by the time the model files are resolved (what Ray's
    processes, started next, could otherwise do); it is given back when the command ends, even on an error."""
    from cluster import cli

    port = free_port()
    seen = {}

    def models_are_next(args):
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
        seen["build_info"] = total(scrape(f"http://127.0.0.1:{port}/metrics"), "ltx2farm_build_info")
        raise cli.UsageError("stopped here by the test")

    monkeypatch.setattr(cli, "resolve_checkpoints", models_are_next)
    assert cli.main(["render", "--prompt", "x", "--metrics-port", str(port)]) == 2
    assert seen == {"build_info": 1}
    assert capsys.readouterr().err == f"metrics at http://127.0.0.1:{port}/metrics\nerror: stopped here by the test\n"
    with socket.socket() as again:  # closed on the way out (the scrape's connection may linger in TIME_WAIT)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_one_pass_renders_count_their_latency_until_published(tiny_set, tmp_path):
    """The fast path (one worker, one pass) publishes from the worker: its latency is counted all the same, from
    before the render until the output is published (a clock read at those two moments)."""
    from cluster.local_executor import LocalExecutor

    plan = plan_job(validate_job(SMALL_JOB))
    assert plan.trivial
    executor = LocalExecutor(tiny_set)
    server = MetricsServer(executor)
    try:
        published = render_and_publish(
            executor, plan, OutputTarget(), tmp_path, server, clock=iter([1000.0, 1007.5]).__next__
        )
        assert published.paths.sidecar.is_file()
        after = scrape(server.url)
    finally:
        server.close()
        executor.shutdown()
    assert total(after, "ltx2farm_job_seconds_count") == 1 and total(after, "ltx2farm_job_seconds_sum") == 7.5
    assert total(after, "ltx2farm_video_seconds_total") == pytest.approx(plan.job.num_frames / plan.job.spec.frame_rate)


def test_campaign_labels_stay_bounded(monkeypatch):
    farm = FarmMetrics(CollectorRegistry())
    names = [f"spring-{i}" for i in range(MAX_CAMPAIGN_LABELS + 1)]
    for name in names:
        farm.published(1.0, 4.0, name)
    labels = {s.labels["campaign"] for s in farm.video_seconds.collect()[0].samples}
    assert labels == {*names[:-1], OTHER_CAMPAIGNS}  # the one too many counts under `other`
    # a campaign that finished before the runner started gets no series; busy ones keep theirs
    farm.set_jobs({"old": {"done": 5, "queued": 0}, names[0]: {"done": 1, "queued": 2}})
    jobs = {(s.labels["campaign"], s.labels["state"]): s.value for s in farm.jobs.collect()[0].samples}
    assert jobs == {(names[0], "done"): 1, (names[0], "queued"): 2}
    # once slots have been idle long enough, a new campaign takes the least recently used one
    monkeypatch.setattr("cluster.metrics.CAMPAIGN_LABEL_IDLE_S", 0.0)
    farm.published(1.0, 4.0, "summer")
    labels = {s.labels["campaign"] for s in farm.video_seconds.collect()[0].samples}
    assert "summer" in labels and len(labels - {OTHER_CAMPAIGNS}) == MAX_CAMPAIGN_LABELS
    assert names[1] not in labels  # names[0] was used later (its jobs), names[1] was the oldest


def test_only_a_gpu_worker_publishes_vram_with_its_gpu_label(monkeypatch):
    import torch

    from cluster.metrics import WorkerMetrics, worker_labels

    monkeypatch.delenv(NODE_NAME_ENV, raising=False)
    cpu = WorkerMetrics()
    cpu.sample_vram(torch.device("cpu"))
    assert "ltx2farm_vram_" not in cpu.text()
    assert worker_labels(torch.device("cpu"), "worker-1~2") == {"node": socket.gethostname(), "worker": "worker-1"}
    # a GPU worker, without a GPU here: the CUDA memory queries answered by stand-ins
    for name, value in (("memory_allocated", 1), ("memory_reserved", 2), ("max_memory_allocated", 3)):
        monkeypatch.setattr(torch.cuda, name, lambda device, value=value: value)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: type("P", (), {"total_memory": 4})())
    monkeypatch.setenv(NODE_NAME_ENV, K8S_NODE)
    gpu = WorkerMetrics()
    device = torch.device("cuda", 1)
    gpu.sample_vram(device)
    samples = {s.name: s.value for f in text_string_to_metric_families(gpu.text()) for s in f.samples}
    assert {k: v for k, v in samples.items() if k.startswith("ltx2farm_vram_")} == {
        "ltx2farm_vram_allocated_bytes": 1,
        "ltx2farm_vram_reserved_bytes": 2,
        "ltx2farm_vram_peak_bytes": 3,
        "ltx2farm_vram_total_bytes": 4,
    }
    assert worker_labels(device, "worker-3") == {"node": K8S_NODE, "worker": "worker-3", "gpu": "1"}


NIGHTS = WindowSpec(days="daily", start="20:00", end="07:00", tz="UTC")
NOON = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)
NIGHT = dt.datetime(2026, 11, 25, 23, tzinfo=dt.UTC)


def registry_samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    """What the registry would serve to a scrape, parsed back."""
    return parse(generate_latest(registry).decode())


def queue(registry: CollectorRegistry) -> tuple[float, float]:
    """(queued jobs, those of them held back by their campaign), as served."""
    samples = registry_samples(registry)
    return total(samples, "ltx2farm_queue_depth"), samples[("ltx2farm_queue_held", ())]


def test_jobs_their_campaign_holds_back_are_counted_apart_from_the_queue():
    """Outside its window, paused or over its budget, a campaign's queued jobs may not start: they are in the
    queue depth and in `ltx2farm_queue_held`, so that a waiting queue does not read as a stalled one."""
    registry = CollectorRegistry()
    farm = FarmMetrics(registry)
    assert registry_samples(registry)[("ltx2farm_queue_held", ())] == 0  # served from the start (`render` too)
    base = CampaignState("now", 0, "active", None, None, None, 0.0, 0, 20, queued=3, running=1)
    campaigns = [
        base,
        dataclasses.replace(base, name="nightly", window=NIGHTS, queued=5),
        dataclasses.replace(base, name="held", state="paused", queued=2),
        dataclasses.replace(base, name="spent", budget_gpu_seconds=10.0, gpu_seconds_used=12.0, queued=4),
    ]
    farm.set_queue(campaigns, NOON)
    assert queue(registry) == (14, 5 + 2 + 4)
    farm.set_queue(campaigns, NIGHT)  # the window is open
    assert queue(registry) == (14, 2 + 4)
    farm.set_queue([], NIGHT)  # a night with no campaign
    assert queue(registry) == (0, 0)


@pytest.fixture(scope="module")
def local_pool(tiny_set):
    pool = LocalExecutor(tiny_set, num_workers=1)
    yield pool
    pool.shutdown()


def test_the_runner_exports_the_held_queue_before_any_job_ends(local_pool, tmp_path):
    """A runner that starts outside its campaigns' windows starts nothing, and says why in its gauges at once
    (not only once a job has ended, which would leave a stalled queue unseen); in the window they render."""
    store = Store(tmp_path / "db")
    tiny = {"height": 64, "width": 64, "num_frames": 9, "steps": 2}
    rows = [{"id": "owl", "prompt": "an owl"}, {"id": "fox", "prompt": "a fox"}]
    manifest = parse_manifest({"campaign": "night", "defaults": tiny, "rows": rows, "window": NIGHTS.model_dump()})
    store.submit(manifest.spec, manifest.jobs)
    registry = CollectorRegistry()
    farm = FarmMetrics(registry)
    runner = CampaignRunner(store, local_pool, tmp_path / "out", clock=lambda: NOON, metrics=farm)
    assert runner.run()["done"] == 0
    assert queue(registry) == (2, 2)
    runner = CampaignRunner(store, local_pool, tmp_path / "out", clock=lambda: NIGHT, metrics=farm)
    assert runner.run()["done"] == 2
    assert queue(registry) == (0, 0)
    assert registry_samples(registry)[("ltx2farm_jobs", (("campaign", "night"), ("state", "done")))] == 2


def test_ready_and_desired_workers_tell_a_missing_worker_from_a_pool_at_zero(local_pool):
    """Before its pool has started the farm keeps 0 workers (a pool starting from zero GPU pods is not missing
    any); a slot whose replacement is still starting is one worker fewer than the pool keeps."""
    server = MetricsServer(None)
    try:

        def workers() -> tuple[float, float]:
            samples = scrape(server.url)
            return total(samples, "ltx2farm_workers"), total(samples, "ltx2farm_workers_desired")

        assert workers() == (0, 0)
        server.attach(local_pool)
        assert workers() == (1, 1)
        local_pool.begin_replace(0)  # ready once `poll_started` has seen it answer
        assert workers() == (0, 1)
        while 0 not in local_pool.poll_started(timeout_s=1.0):
            pass
        assert workers() == (1, 1)
    finally:
        server.close()
