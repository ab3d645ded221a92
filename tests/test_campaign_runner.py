"""Campaigns end to end on the local Ray cluster: retries and caps, budgets, windows, uploads, crashes."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from cluster.campaign_manifest import parse_manifest
from cluster.campaign_runner import CampaignRunner, campaign_status
from cluster.campaign_store import QUARANTINE_AFTER, Store
from cluster.local_executor import LocalExecutor
from cluster.ray_executor import RayExecutor
from cluster.storage import StorageOptions
from cluster.worker import JOBS_PER_WORKER
from tests.conftest import CACHE
from tests.s3_servers import moto_env

TINY = {"height": 64, "width": 64, "num_frames": 9, "steps": 2}


@pytest.fixture(scope="module")
def pool(tiny_set):
    pool = LocalExecutor(tiny_set, num_workers=2)  # the runner sees the executor interface only
    yield pool
    pool.shutdown()


def submit(store: Store, name: str, rows: list[dict], **extra) -> None:
    m = parse_manifest({"campaign": name, "defaults": TINY, "rows": rows, **extra})
    store.submit(m.spec, m.jobs)


def test_runs_retries_and_caps(pool, tmp_path):
    store = Store(tmp_path / "db")
    rows = [{"id": f"ok{i}", "prompt": f"scene {i}"} for i in range(4)]
    rows.append({"id": "broken", "prompt": "x", "video_guidance": {"stg_blocks": [7]}})  # the model has 2 blocks
    submit(store, "c1", rows, max_task_retries=1)
    stats = CampaignRunner(store, pool, tmp_path / "out").run()
    assert stats["done"] == 4 and stats["failed"] == 1 and stats["retried"] == 1
    counts = store.counts("c1")
    assert (counts["done"], counts["failed"]) == (4, 1)
    broken = next(j for j in store.jobs("c1") if j["id"] == "broken")
    assert broken["attempts"] == 2 and "stg_blocks" in broken["error"]
    assert len(list((tmp_path / "out" / "c1").glob("*.mp4"))) == 4
    status = campaign_status(store, "c1")
    assert status["progress"] == pytest.approx(0.8) and len(status["outputs"]) == 4
    assert status["state"] == "finished" and status["waiting"] is None  # nothing left to run: no longer active
    assert "campaign finished: 4 done, 1 failed" in [e["message"] for e in store.logs("c1")]


def test_campaign_on_a_pool_of_gangs(ray_cluster, tiny_set, pool, tmp_path):
    """Every job of a campaign runs on a guidance-parallel gang of two ranks, through planned tasks."""
    from jobs.placement import Placement

    gangs = RayExecutor(tiny_set, num_workers=1, placement=Placement("guidance", 2))
    try:
        store = Store(tmp_path / "db")
        submit(store, "g", [{"id": f"g{i}", "prompt": f"scene {i}"} for i in range(3)])
        stats = CampaignRunner(store, gangs, tmp_path / "out").run()
        assert stats["done"] == 3 and store.counts("g")["done"] == 3, store.counts("g")
        sidecars = [json.loads(p.read_text()) for p in (tmp_path / "out" / "g").glob("*.json")]
        assert len(sidecars) == 3
        for doc in sidecars:
            assert doc["worker"]["placement"] == {"mode": "guidance", "gpus": 2}
            stage1 = [t for t in doc["trace"] if t["kind"] == "stage1"]
            assert stage1 and all(t["parallelism"] == "guidance" and t["gang"]["ranks"] == 2 for t in stage1)
    finally:
        gangs.shutdown()


def test_chunked_job_in_a_campaign_runs_on_the_whole_pool(pool, tmp_path):
    store = Store(tmp_path / "db")
    long_row = {
        "id": "long",
        "prompt": "dawn|noon|dusk",
        "num_frames": None,
        "duration": 4,
        "chunk_seconds": 2,
        "chunk_overlap": 0.5,
        "decode_tile_frames": 32,
    }
    submit(store, "mixed", [{"id": "a", "prompt": "x"}, long_row, {"id": "b", "prompt": "y"}])
    stats = CampaignRunner(store, pool, tmp_path / "out").run()
    assert stats["done"] == 3 and store.counts("mixed")["done"] == 3
    long_job = next(j for j in store.jobs("mixed") if j["id"] == "long")
    sidecar = json.loads(Path(json.loads(long_job["output"])["sidecar"]).read_text())
    assert sidecar["media"]["frames"] == 97 and len(sidecar["plan"]["chunks"]) == 3
    assert {t["worker"] for t in sidecar["trace"]} == {"worker-0", "worker-1"}


def test_budget_stops_scheduling(pool, tmp_path):
    store = Store(tmp_path / "db")
    submit(store, "cheap", [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(6)], budget_gpu_seconds=0.001)
    CampaignRunner(store, pool, tmp_path / "out").run()
    counts = store.counts("cheap")
    in_flight = len(pool.workers) * JOBS_PER_WORKER  # started before any GPU time was spent: they finish
    assert 1 <= counts["done"] <= in_flight and counts["queued"] == 6 - counts["done"]
    assert "budget spent" in campaign_status(store, "cheap")["waiting"]


def test_window_and_clock(pool, tmp_path):
    store = Store(tmp_path / "db")
    window = {"days": "daily", "start": "20:00", "end": "07:00", "tz": "UTC"}
    submit(store, "night", [{"id": "a", "prompt": "owl"}], window=window)
    noon = lambda: dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)  # noqa: E731
    assert CampaignRunner(store, pool, tmp_path / "out", clock=noon).run()["done"] == 0
    assert "outside its window" in campaign_status(store, "night", noon())["waiting"]
    assert campaign_status(store, "night", noon())["state"] == "active"  # waiting is not finished
    night = lambda: dt.datetime(2026, 11, 25, 23, tzinfo=dt.UTC)  # noqa: E731
    assert CampaignRunner(store, pool, tmp_path / "out", clock=night).run()["done"] == 1


@pytest.fixture
def bucket(monkeypatch):
    """A moto S3 server with an empty bucket `camp`, and this process's credentials for it: (server, client)."""
    from tests.s3_servers import MotoServer

    for k, v in moto_env().items():
        monkeypatch.setenv(k, v)
    server = MotoServer().start()
    try:
        import boto3

        s3 = boto3.session.Session().client("s3", endpoint_url=server.endpoint)
        s3.create_bucket(Bucket="camp")
        yield server, s3
    finally:
        server.stop()


def test_uploads_and_resubmission_is_a_no_op(pool, tmp_path, bucket):
    server, s3 = bucket
    store = Store(tmp_path / "db")
    rows = [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(3)]
    submit(store, "up", rows, output="s3://camp/out")
    options = StorageOptions(endpoint_url=server.endpoint, addressing_style="path")
    assert CampaignRunner(store, pool, tmp_path / "out", options).run()["done"] == 3
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="camp")["Contents"])
    assert len(keys) == 6 and all(k.startswith("out/up/") for k in keys)
    submit(store, "up", rows, output="s3://camp/out")  # the same manifest again
    assert store.counts("up")["done"] == 3 and store.counts("up")["queued"] == 0
    assert CampaignRunner(store, pool, tmp_path / "out", options).run()["done"] == 0


@pytest.mark.parametrize("destination", ["bucket", "folder"])
def test_a_restart_after_publication_renders_and_uploads_nothing_again(pool, tmp_path, bucket, destination):
    """The coordinator died after its jobs' outputs were published (sidecar last) but before it marked them done:
    the restart requeues them, finds each output complete, and marks it done without rendering or uploading. Here
    the jobs were published by a first runner on another store, and claimed on this one by a runner that then died.
    """
    server, s3 = bucket
    s3.put_bucket_versioning(Bucket="camp", VersioningConfiguration={"Status": "Enabled"})  # every PUT shows
    output = {"output": "s3://camp/out"} if destination == "bucket" else {}
    options = StorageOptions(endpoint_url=server.endpoint, addressing_style="path")
    rows = [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(3)]
    first = Store(tmp_path / "first")
    submit(first, "again", rows, **output)
    assert CampaignRunner(first, pool, tmp_path / "out", options).run()["done"] == 3

    def objects() -> dict:
        if destination == "folder":
            return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "out").rglob("*")}
        versions = s3.list_object_versions(Bucket="camp")["Versions"]
        return {(v["Key"], v["VersionId"]): (v["ETag"], v["LastModified"]) for v in versions}

    published, before = objects(), pool.refresh_info()
    assert len(published) == 6 + (destination == "folder")  # an MP4 and a sidecar a job (and the campaign folder)

    store = Store(tmp_path / "db")
    submit(store, "again", rows, **output)
    for _ in rows:  # claimed by a runner that then died
        assert store.claim("again", "worker-0") is not None
    stats = CampaignRunner(store, pool, tmp_path / "out", options).run()
    assert (stats["requeued"], stats["skipped"], stats["done"], stats["failed"]) == (3, 3, 0, 0), stats
    assert store.counts("again")["done"] == 3
    after = pool.refresh_info()
    assert [i.jobs_done for i in after] == [i.jobs_done for i in before]  # nothing rendered
    assert [i.prompt_encodes for i in after] == [i.prompt_encodes for i in before]
    assert objects() == published  # nothing uploaded or written: the same objects, versions and times


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL our own child and every process it started (its embedded Ray), by PID."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=30)


def test_coordinator_killed_mid_campaign_then_restarted(tmp_path):
    """kill -9 of `ltx2-farm campaign run` while jobs run; a restart finishes every job exactly once."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "campaign": "crash",
                "defaults": TINY,
                "rows": [{"id": f"j{i:02d}", "prompt": f"scene {i}"} for i in range(12)],
            }
        )
    )
    env = {**os.environ, "LTX2_FARM_CACHE": str(CACHE), "LTX2_FARM_DB": str(tmp_path / "db")}
    env.pop("RAY_ADDRESS", None)
    cli = [sys.executable, "-m", "cluster.cli", "campaign"]
    assert subprocess.run([*cli, "submit", str(manifest)], env=env, capture_output=True).returncode == 0
    out = tmp_path / "out"
    run = [*cli, "run", "--tiny", "--workers", "2", "--out", str(out), "--json"]
    first = subprocess.Popen(run, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    store = Store(tmp_path / "db")
    deadline = time.monotonic() + 300
    while store.counts("crash")["done"] < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.counts("crash")["done"] >= 3
    _kill_tree(first)
    interrupted = store.counts("crash")
    assert interrupted["done"] < 12
    finished = {j["id"] for j in store.jobs("crash", "done")}
    outputs = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "crash").iterdir() if p.is_file()}
    second = subprocess.run(run, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["ok"] is True
    counts = store.counts("crash")
    assert counts["done"] == 12 and counts["queued"] == counts["running"] == 0
    ok = [a for a in store.attempts("crash") if a["outcome"] == "ok"]
    assert sorted(a["job"] for a in ok) == [f"j{i:02d}" for i in range(12)]  # each job completed exactly once
    videos = sorted(p.name for p in (out / "crash").glob("*.mp4"))
    assert len(videos) == 12 and len({v.split("-")[0] for v in videos}) == 12  # one output per job
    assert not list((out / "crash").glob(".*partial*"))  # no partial files left
    for job in store.jobs("crash"):
        assert Path(json.loads(job["output"])["video"]).is_file()
    # the jobs done before the kill were neither rendered nor written again: one attempt each, their files untouched
    assert {a["job"] for a in store.attempts("crash") if a["job"] in finished and a["outcome"] != "ok"} == set()
    kept = [p for p in (out / "crash").iterdir() if p.name.split("-")[0] in finished]
    assert len(kept) == 2 * len(finished)  # an MP4 and a sidecar each
    assert all(outputs[p.name] == (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept)


def test_campaign_submitted_as_a_ray_job(tmp_path):
    """The usual Ray way: a head started with `ray start --head`, the farm's coordinator as a Ray job."""
    from tests.s3_servers import free_port, stop_process_group, wait_for_port

    ray_bin = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "LTX2_FARM_CACHE": str(CACHE), "LTX2_FARM_DB": str(tmp_path / "db"), "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {"campaign": "rayjob", "defaults": TINY, "rows": [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(3)]}
        )
    )
    cli = [sys.executable, "-m", "cluster.cli", "campaign"]
    assert subprocess.run([*cli, "submit", str(manifest)], env=env, capture_output=True).returncode == 0
    dashboard, gcs = free_port(), free_port()
    head = subprocess.Popen(
        [
            ray_bin,
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(gcs),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard),
            "--include-dashboard",
            "true",
            "--dashboard-agent-listen-port",  # the tests' own cluster may hold the default agent ports
            str(free_port()),
            "--dashboard-agent-grpc-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
            "--runtime-env-agent-port",
            str(free_port()),
            "--num-cpus",
            "2",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(dashboard, timeout_s=120)
        job_env = json.dumps({"env_vars": {"LTX2_FARM_DB": str(tmp_path / "db"), "LTX2_FARM_CACHE": str(CACHE)}})
        command = [
            ray_bin,
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dashboard}",
            "--runtime-env-json",
            job_env,
            "--",
            str(Path(sys.executable).parent / "ltx2-farm"),
            "campaign",
            "run",
            "--tiny",
            "--workers",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--address",
            "auto",
            "--json",
        ]
        deadline = time.monotonic() + 120
        while True:  # the dashboard answers before its job agent has registered: retry until it has
            submitted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in submitted.stderr + submitted.stdout or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
        assert "succeeded" in submitted.stdout + submitted.stderr
        assert Store(tmp_path / "db").counts("rayjob")["done"] == 3
    finally:
        stop_process_group(head)  # our own `ray start --block` and the head it runs


def test_each_distinct_prompt_is_encoded_once_across_the_farm(pool, tmp_path):
    """12 jobs over 3 prompts on 2 workers, then (ids sort last) a chunked job reusing one: Gemma runs 3 + 1
    (negative) times in all."""
    store = Store(tmp_path / "db")
    rows = [{"id": f"p{i}", "prompt": f"prompt {i % 3}", "seed": i} for i in range(12)]
    rows.append({"id": "z-long", "prompt": "prompt 1", "num_frames": None, "duration": 4, "chunk_seconds": 2})
    submit(store, "prompts", rows)
    before = sum(info.prompt_encodes for info in pool.refresh_info())
    stats = CampaignRunner(store, pool, tmp_path / "out").run()
    assert stats["done"] == 13, stats
    after = sum(info.prompt_encodes for info in pool.refresh_info())
    assert after - before == 4  # 3 prompts + the official negative prompt, whichever worker ran them
    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "out" / "prompts").glob("*.json")]
    planned = next(d for d in sidecars if d.get("plan") and len(d["plan"]["chunks"]) > 1)
    assert not any(t["kind"] == "encode" for t in planned["trace"])  # its prompts were already encoded


def _cli(tmp_path: Path, **env: str) -> tuple[list[str], dict[str, str]]:
    """`ltx2-farm campaign` as users run it, on a store of its own, and its environment."""
    environment = {**os.environ, "LTX2_FARM_CACHE": str(CACHE), "LTX2_FARM_DB": str(tmp_path / "db"), **env}
    environment.pop("RAY_ADDRESS", None)
    return [sys.executable, "-m", "cluster.cli", "campaign"], environment


def _submit(tmp_path: Path, name: str, ids: list[str]) -> None:
    manifest = tmp_path / f"{name}.yaml"
    rows = [{"id": i, "prompt": f"scene {i}"} for i in ids]
    manifest.write_text(yaml.safe_dump({"campaign": name, "defaults": TINY, "rows": rows}))
    cli, env = _cli(tmp_path)
    assert subprocess.run([*cli, "submit", str(manifest)], env=env, capture_output=True).returncode == 0


def test_a_job_that_crashes_the_runner_is_quarantined_and_the_campaign_finishes(tmp_path):
    """`a1-poison` makes the runner itself raise whenever it handles it (LTX2_FARM_FAULTS=runner_crash): each
    `campaign run` dies with it running. The job it had started before (`a0-stuck`) is left running by the crash and
    cancelled from the command line; after the third crash in a row the next run quarantines the poison job,
    renders the others, exits 4 and the campaign is finished."""
    _submit(tmp_path, "crashy", ["a0-stuck", "a1-poison", "b", "c"])
    cli, env = _cli(tmp_path, LTX2_FARM_FAULTS="runner_crash:a1-poison")
    run = [*cli, "run", "--tiny", "--workers", "1", "--out", str(tmp_path / "out"), "--json"]
    store = Store(tmp_path / "db")
    for crash in range(1, QUARANTINE_AFTER + 1):
        crashed = subprocess.run(run, env=env, capture_output=True, text=True, timeout=600)
        assert crashed.returncode == 1, crashed.stderr[-3000:]
        assert "RuntimeError: injected by LTX2_FARM_FAULTS: runner_crash:a1-poison" in crashed.stderr
        assert store.job_state("crashy", "a1-poison") == "running"  # left so by the crash
        if crash == 1:
            assert store.job_state("crashy", "a0-stuck") == "running"
            cancel = subprocess.run(
                [*cli, "cancel", "crashy", "--job", "a0-stuck"], env=env, capture_output=True, text=True
            )
            assert cancel.returncode == 0 and cancel.stdout == "crashy/a0-stuck: cancelled\n", cancel.stderr
    finished = subprocess.run(run, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 4, finished.stderr[-3000:]
    assert "Traceback" not in finished.stderr
    assert finished.stderr.endswith(
        "error: 1 job(s) failed (1 quarantined): `ltx2-farm campaign status` and `campaign logs NAME` say which and "
        "why\n"
    ), finished.stderr[-2000:]
    stats = json.loads(finished.stdout)
    assert (stats["ok"], stats["quarantined"], stats["done"], stats["requeued"]) == (False, 1, 2, 0), stats
    jobs = {j["id"]: j for j in store.jobs("crashy")}
    assert {i: j["state"] for i, j in jobs.items()} == {
        "a0-stuck": "cancelled",
        "a1-poison": "failed",
        "b": "done",
        "c": "done",
    }
    assert jobs["a1-poison"]["error"].startswith(
        f"quarantined: the runner crashed {QUARANTINE_AFTER} times while it ran"
    )
    status = subprocess.run([*cli, "status", "crashy", "--json"], env=env, capture_output=True, text=True)
    assert json.loads(status.stdout)["state"] == "finished"


def test_ctrl_c_stops_a_forever_runner_cleanly_and_a_restart_finishes_the_queue(tmp_path):
    """SIGINT (to the runner only) while it renders: one line, exit code 130, no traceback; the jobs it was running
    are queued again (attempt `stopped`, not a crash), and the next run renders each job exactly once."""
    ids = [f"j{i}" for i in range(4)]
    _submit(tmp_path, "steady", ids)
    cli, env = _cli(tmp_path)
    forever = subprocess.Popen(
        [*cli, "run", "--tiny", "--workers", "1", "--out", str(tmp_path / "out"), "--forever", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = Store(tmp_path / "db")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            counts = store.counts("steady")
            if counts["done"] >= 1 and counts["running"] >= 1:
                break
            time.sleep(0.1)
        assert counts["done"] >= 1 and counts["running"] >= 1, counts
        forever.send_signal(signal.SIGINT)
        _out, err = forever.communicate(timeout=120)
    finally:
        if forever.poll() is None:
            _kill_tree(forever)
    assert forever.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    stopped = [a for a in store.attempts("steady") if a["outcome"] == "stopped"]
    last = err.rstrip("\n").rsplit("\n", 1)[-1]
    assert last.startswith(f"interrupted: {len(stopped)} running job(s) went back to the queue"), err[-2000:]
    assert "stay in the staging folder of the node that rendered them" in last
    assert store.counts("steady")["running"] == 0
    again = subprocess.run(
        [*cli, "run", "--tiny", "--workers", "1", "--out", str(tmp_path / "out"), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert store.counts("steady")["done"] == 4 and store.campaign_row("steady")["state"] == "finished"
    ok = sorted(a["job"] for a in store.attempts("steady") if a["outcome"] == "ok")
    assert ok == ids  # each job completed exactly once


def test_a_campaign_upload_waiting_for_a_server_that_is_down_is_shown_and_ctrl_c_requeues_it(tmp_path):
    """`campaign run` says what a worker's upload waits for, and where its file is; Ctrl-C then puts the job back
    in the queue, its staged render kept on the node."""
    from tests.s3_servers import free_port

    manifest = tmp_path / "up.yaml"
    rows = [{"id": "only", "prompt": "rain"}]
    manifest.write_text(yaml.safe_dump({"campaign": "up", "output": "s3://farm/c", "defaults": TINY, "rows": rows}))
    cli, env = _cli(tmp_path, LTX2_FARM_STAGING=str(tmp_path / "staging"), **moto_env())
    assert subprocess.run([*cli, "submit", str(manifest)], env=env, capture_output=True).returncode == 0
    run = [*cli, "run", "--tiny", "--workers", "1", "--out", str(tmp_path / "out"), "--addressing-style", "path"]
    runner = subprocess.Popen(
        [*run, "--endpoint-url", f"http://127.0.0.1:{free_port()}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(runner.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("is waiting:" in line for line in list(lines)) and time.monotonic() < deadline:
            time.sleep(0.2)
        waiting = next(line for line in list(lines) if "is waiting:" in line)
        runner.send_signal(signal.SIGINT)
        assert runner.wait(timeout=120) == 130
    finally:
        if runner.poll() is None:
            _kill_tree(runner)
    reader.join(timeout=30)
    err = "".join(lines)
    assert "the server could not be reached (EndpointConnectionError)" in waiting, waiting
    video = Path(waiting.rstrip("\n").rsplit("the file is at ", 1)[1])
    assert video.parent == tmp_path / "staging" / "worker-0" / "up" and video.is_file()
    assert "Traceback" not in err, err[-3000:]
    assert err.rstrip("\n").rsplit("\n", 1)[-1].startswith("interrupted: 1 running job(s) went back to the queue")
    store = Store(tmp_path / "db")
    assert store.job_state("up", "only") == "queued"
    assert [a["outcome"] for a in store.attempts("up")] == ["stopped"]
