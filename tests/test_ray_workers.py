"""Render workers as Ray actors on a real local cluster: determinism across workers, resident models."""

from __future__ import annotations

import pytest
import ray

from cluster.publish import OutputTarget
from cluster.ray_executor import RayExecutor
from cluster.replies import WorkerProgress
from jobs.spec import validate_job
from tests.conftest import SMALL_JOB


@pytest.fixture(scope="module")
def pool(ray_cluster, tiny_set):
    pool = RayExecutor(tiny_set, num_workers=2)
    yield pool
    pool.shutdown()


def test_workers_are_separate_processes_on_cpu_without_gpus(pool):
    infos = pool.refresh_info()
    assert len({i.pid for i in infos}) == 2
    if ray.cluster_resources().get("GPU", 0) == 0:
        assert all(i.device == "cpu" for i in infos)


def test_two_workers_render_identical_outputs(pool, tmp_path):
    job = validate_job(SMALL_JOB)
    a = pool.render(job, str(tmp_path / "a"), worker=0).document
    b = pool.render(job, str(tmp_path / "b"), worker=1).document
    assert a["worker"]["pid"] != b["worker"]["pid"]
    assert a["content_sha256"] == b["content_sha256"]
    assert a["output"]["video"] == b["output"]["video"]


def test_warm_worker_renders_next_job_without_reloading(pool, tmp_path):
    before = pool.refresh_info()[0]
    progress: list[WorkerProgress] = []
    first = pool.render(
        validate_job({**SMALL_JOB, "seed": 100}), str(tmp_path), worker=0, on_progress=progress.append, poll_s=0.01
    ).document
    second = pool.render(validate_job({**SMALL_JOB, "seed": 101, "recipe": "distilled"}), str(tmp_path), worker=0)
    second = second.document
    after = pool.refresh_info()[0]
    assert before.loads == first["worker"]["loads"] == second["worker"]["loads"] == after.loads == 1
    assert after.load_seconds == before.load_seconds
    assert after.jobs_done == before.jobs_done + 2
    assert after.prompt_encodes <= before.prompt_encodes + 2  # same prompt: encoded once per worker
    assert first["content_sha256"] != second["content_sha256"]


def test_render_all_spreads_jobs(pool, tmp_path):
    jobs = [validate_job({**SMALL_JOB, "seed": s}) for s in (1, 2, 3)]
    results = pool.render_all(jobs, str(tmp_path))
    assert [r.document["resolved"]["seed"] for r in results] == [1, 2, 3]
    assert len({r.document["worker"]["pid"] for r in results}) == 2
    assert sorted(tmp_path.glob("*.mp4")) == sorted(r.paths.video for r in results)


def test_a_worker_starts_the_next_jobs_model_work_while_the_last_one_muxes(pool, tmp_path):
    """Two renders sent to one worker: the model work runs one job at a time, but the second job's starts
    before the first one's MP4 is written (the GPU does not wait for host work), and outputs are unchanged."""
    alone = pool.render(validate_job({**SMALL_JOB, "seed": 7}), str(tmp_path / "alone"), worker=1).document
    refs = [pool.start_render(0, validate_job({**SMALL_JOB, "seed": s}), OutputTarget()) for s in (7, 8)]
    replies = pool.get(refs)
    first, second = sorted((r.document for r in replies), key=lambda d: d["timeline_unix"]["model_start"])
    assert second["timeline_unix"]["model_start"] >= first["timeline_unix"]["model_end"]  # one model, one job
    assert second["timeline_unix"]["model_start"] < first["timeline_unix"]["mux_end"]  # overlapped the mux
    by_seed = {d["resolved"]["seed"]: d for d in (first, second)}
    assert by_seed[7]["content_sha256"] == alone["content_sha256"]
    for s, reply in zip((7, 8), replies, strict=True):
        pool.deliver(pool.workers[0], reply, validate_job({**SMALL_JOB, "seed": s}), OutputTarget(), tmp_path / "both")
    assert len(list((tmp_path / "both").glob("*.mp4"))) == 2


def test_output_writers_run_below_the_thread_that_feeds_the_gpu():
    """The MP4 mux of one job runs while the next job's forwards do: its threads (and libx264's, which
    inherit their creator's priority) must not starve the thread that launches the kernels."""
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from cluster.worker import WRITER_NICENESS, _lower_writer_priority

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = niceness()
    with ThreadPoolExecutor(1, initializer=_lower_writer_priority) as writers:
        inside, spawned = writers.submit(lambda: (niceness(), _in_new_thread(niceness))).result()
    assert inside == spawned == min(19, before + WRITER_NICENESS)
    assert niceness() == before


def _in_new_thread(fn):
    import threading

    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def test_a_worker_is_pinned_to_its_ray_gpu_even_if_torch_saw_every_gpu():
    """Ray hides other GPUs with CUDA_VISIBLE_DEVICES; a process whose CUDA started before that still sees
    all of them (found on a 2-GPU machine: both replicas on GPU 0)."""
    from cluster.ray_executor import cuda_device_for

    assert cuda_device_for([1], visible=1) == "cuda:0"  # hidden as Ray intends: its one GPU is device 0
    assert cuda_device_for([1], visible=2) == "cuda:1"  # torch sees both: pick Ray's by index
    assert cuda_device_for([], visible=2) == "cuda:0"  # not a Ray GPU actor


def test_shutdown_returns_once_ray_has_the_workers_cpus_back(pool, tiny_set):
    """`ray.kill` only starts an actor's exit: a pool started right after another's shutdown was refused for
    CPUs about to come free (seen when test modules ran in another order). This module's pool holds 2 of 4."""
    first = RayExecutor(tiny_set, num_workers=2)
    first.shutdown()
    assert ray.available_resources().get("CPU", 0) >= 2
    second = RayExecutor(tiny_set, num_workers=2)
    second.shutdown()
