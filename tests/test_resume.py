"""A chunked, tiled job whose coordinator dies mid-way resumes from its kept results (`cluster.kept_results`) on a
fresh coordinator, re-runs only what was not kept, and writes the same file as an undisturbed render."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from cluster.campaign_store import Store
from cluster.coordinator import Coordinator
from cluster.kept_results import KeptResults
from cluster.local_executor import LocalExecutor
from cluster.metrics import FarmMetrics
from jobs.outputs import job_content_hash
from jobs.plan import LOCAL_KINDS, plan_job
from jobs.resume import resume_point
from jobs.spec import validate_job
from tests.conftest import CACHE, SMALL_JOB, THREE_CHUNKS

JOB = {
    **SMALL_JOB,
    **THREE_CHUNKS,
    "height": 256,
    "width": 256,
    "tile_pixels": 192,
    "tile_overlap": 64,
    "prompt": "waves on rocks|gulls overhead|rain begins",
}


class CoordinatorKilled(Exception):
    """The coordinator's process ended here."""


class DiesAtDispatch:
    """The pool as a coordinator sees it, until that coordinator sends out the task `label`: then the coordinator
    dies there (an exception out of its run). Tasks already sent run on; their results go nowhere."""

    def __init__(self, pool: LocalExecutor, label: str) -> None:
        self.pool, self.label = pool, label

    def __getattr__(self, name: str):
        return getattr(self.pool, name)

    def run_task(self, slot, label, request, job=None):
        if label == self.label:
            raise CoordinatorKilled(label)
        return self.pool.run_task(slot, label, request, job)


@pytest.fixture(scope="module")
def pool(tiny_set):
    pool = LocalExecutor(tiny_set, num_workers=3)
    yield pool
    pool.shutdown()


def _remote(task_ids) -> set[str]:
    """The traced tasks among `task_ids`: the worker tasks (decode as its tiles' prefix)."""
    return {t for t in task_ids if t.partition(":")[0] not in LOCAL_KINDS}


def test_a_job_killed_at_several_points_resumes_to_the_same_file(pool, tmp_path):
    plan = plan_job(validate_job(JOB))
    assert (len(plan.chunks), len(plan.tiles) // len(plan.chunks)) == (3, 4)
    [reference] = Coordinator(pool).run([plan], tmp_path / "reference")

    store = KeptResults(tmp_path / "kept")
    job_hash = job_content_hash(plan.job)
    registry = CollectorRegistry()
    metrics = FarmMetrics(registry)
    # mid stage 1 (two chunks done), mid stage 2 (two steps blended), mid decode (its second time group)
    kills = [("stage1:2", ("stage1:0", "stage1:1")), ("stage2:2:0", ("blend:1",)), ("decode:1:0", ("blend:2",))]
    for attempt, (label, resumes_next) in enumerate(kills):
        coordinator = Coordinator(DiesAtDispatch(pool, label), metrics=metrics, kept=store)
        with pytest.raises(CoordinatorKilled):
            coordinator.run([plan], tmp_path / f"killed{attempt}")
        assert not list((tmp_path / f"killed{attempt}").glob("*.json"))  # no output: the job is not done
        point = resume_point(plan, set(store.records(job_hash)))
        assert point.resumed[: len(resumes_next)] == resumes_next
        assert set(store.records(job_hash)) == set(point.resumed)  # what a later result stands for is dropped
    assert registry.get_sample_value("ltx2farm_kept_task_bytes") == store.total_bytes() > 0

    coordinator = Coordinator(pool, metrics=metrics, kept=store)
    [resumed] = coordinator.run([plan], tmp_path / "resumed")
    assert set(store.records(job_hash)) >= {"blend:2", "audio"}  # kept until the output is published
    coordinator.release(plan.job)
    assert resumed["content_sha256"] == reference["content_sha256"]
    assert resumed["output"]["sha256"] == reference["output"]["sha256"]  # the same MP4, byte for byte
    assert tuple(resumed["resumed"]) == point.resumed and "blend:2" in point.resumed
    ran = {t["task"].rsplit(":", 2)[0] if t["kind"] == "decode" else t["task"] for t in resumed["trace"]}
    assert ran == _remote(point.to_run)  # only what was not kept: the decode, the audio if it was in flight
    assert not any(t["kind"] in ("stage1", "stage2", "upsample") for t in resumed["trace"])
    assert reference["resumed"] == []
    assert store.records(job_hash) == {} and store.total_bytes() == 0  # the published job's results are gone
    assert registry.get_sample_value("ltx2farm_kept_task_bytes") == 0
    resumed_count = registry.get_sample_value("ltx2farm_tasks_resumed_total")
    assert resumed_count == len(point.resumed) + 3  # the kills' restarts resumed 0, 2 and 1 tasks before


def test_a_kept_result_with_a_changed_byte_runs_again(pool, tmp_path):
    """A chunk kept with a wrong digest is dropped, and its chunk (and all after it) renders again."""
    plan = plan_job(validate_job({**JOB, "prompt": SMALL_JOB["prompt"], "seed": 11}))
    [reference] = Coordinator(pool).run([plan], tmp_path / "reference")
    store = KeptResults(tmp_path / "kept")
    with pytest.raises(CoordinatorKilled):
        Coordinator(DiesAtDispatch(pool, "stage1:2"), kept=store).run([plan], tmp_path / "killed")
    path = tmp_path / "kept" / job_content_hash(plan.job) / "stage1-1.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    [resumed] = Coordinator(pool, kept=store).run([plan], tmp_path / "resumed")
    assert resumed["resumed"] == ["stage1:0"]
    assert {"stage1:1", "stage1:2"} <= {t["task"] for t in resumed["trace"]}
    assert resumed["content_sha256"] == reference["content_sha256"]


def test_a_campaign_runner_killed_mid_stage_2_resumes_its_job_to_the_same_file(tmp_path):
    """kill -9 of `ltx2-farm campaign run` (and its Ray) once the chunked, tiled job has blended a stage-2 step; the
    restarted runner reads its kept results back, runs only the rest, and writes what an undisturbed run writes."""
    from tests.test_campaign_runner import _kill_tree

    cli = [sys.executable, "-m", "cluster.cli", "campaign"]
    kept = tmp_path / "kept"
    env = {
        **os.environ,
        "LTX2_FARM_CACHE": str(CACHE),
        "LTX2_FARM_DB": str(tmp_path / "db"),
        "LTX2_FARM_KEPT": str(kept),
    }
    env.pop("RAY_ADDRESS", None)
    for campaign in ("killed", "whole"):
        manifest = tmp_path / f"{campaign}.yaml"
        manifest.write_text(yaml.safe_dump({"campaign": campaign, "rows": [{"id": "long", **JOB}]}))
        assert subprocess.run([*cli, "submit", str(manifest)], env=env, capture_output=True).returncode == 0
    store = Store(tmp_path / "db")
    store.set_campaign_state("whole", "paused")  # the reference runs after, on its own
    run = [*cli, "run", "--tiny", "--workers", "2", "--out", str(tmp_path / "out"), "--json"]
    first = subprocess.Popen(run, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(kept.glob("*/blend-0.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    _kill_tree(first)
    [folder] = kept.iterdir()
    at_kill = {json.loads(p.read_text())["task"] for p in folder.glob("*.json")}
    assert "blend:0" in at_kill and store.counts("killed")["done"] == 0

    second = subprocess.run(run, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    store.set_campaign_state("whole", "active")
    third = subprocess.run(run, env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr
    killed, whole = (
        json.loads(Path(json.loads(store.jobs(c)[0]["output"])["sidecar"]).read_text()) for c in ("killed", "whole")
    )
    assert killed["content_sha256"] == whole["content_sha256"]
    assert killed["output"]["sha256"] == whole["output"]["sha256"]
    assert killed["resumed"] and set(killed["resumed"]) <= at_kill and whole["resumed"] == []
    assert not any(t["kind"] in ("stage1", "upsample", "stage2_init") for t in killed["trace"])
    assert not list(kept.glob("*/*"))  # both jobs published: nothing kept


def test_a_new_head_resumes_from_the_campaign_bucket(pool, tmp_path, monkeypatch):
    """The results kept by a head that died (its disk gone with it) are read back from the bucket by a head with an
    empty disk, which writes the same file as an undisturbed render; once released, the bucket holds none."""
    from cluster.storage import StorageOptions, Uploader
    from jobs.keys import parse_destination
    from tests.s3_servers import moto_bucket

    plan = plan_job(validate_job({**JOB, "seed": 12}))
    [reference] = Coordinator(pool).run([plan], tmp_path / "reference")
    with moto_bucket(monkeypatch, "camp") as (server, s3):
        bucket = Uploader(parse_destination("s3://camp/out"), StorageOptions(endpoint_url=server.endpoint))
        with pytest.raises(CoordinatorKilled):
            Coordinator(DiesAtDispatch(pool, "stage2:2:0"), kept=KeptResults(tmp_path / "old-head", bucket)).run(
                [plan], tmp_path / "killed"
            )
        coordinator = Coordinator(pool, kept=KeptResults(tmp_path / "new-head", bucket))
        [resumed] = coordinator.run([plan], tmp_path / "resumed")
        assert resumed["resumed"] == ["blend:1"]
        assert resumed["content_sha256"] == reference["content_sha256"]
        assert resumed["output"]["sha256"] == reference["output"]["sha256"]
        coordinator.release(plan.job)
        assert s3.list_objects_v2(Bucket="camp").get("Contents", []) == []
