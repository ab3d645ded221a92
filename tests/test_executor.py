"""The executor contract (`cluster.executor.Executor`), held by both backends: the in-process one and Ray's.

The logic above the executor (coordinator, campaign runner) is tested on the in-process backend; what only a
cluster has (a worker's process dying, values on another node) is tested on Ray here and in the chaos tests.
"""

from __future__ import annotations

import pytest
import torch

from cluster.executor import CapacityError
from cluster.local_executor import LocalExecutor
from cluster.publish import OutputTarget
from cluster.replies import TaskTrace
from cluster.requests import prompt_texts
from cluster.tasks import AudioEncodeTask, EncodeTask, Stage1Task
from jobs.placement import Placement
from jobs.spec import validate_job
from tests.conftest import SMALL_JOB, small_chunk


@pytest.fixture(scope="module", params=["local", "ray"])
def executor(request, tiny_set):
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
        from cluster.ray_executor import RayExecutor

        executor = RayExecutor(tiny_set, num_workers=2)
    else:
        executor = LocalExecutor(tiny_set, num_workers=2)
    yield executor
    executor.shutdown()


def test_a_task_takes_handles_of_earlier_results_as_their_values(executor):
    """A chunk's stage 1 given the handle of a prompt's encoding (made on the other worker) runs on the encoding
    itself; its trace says where and what it ran."""
    positive, _ = executor.run_task(0, "encode:0", EncodeTask("a lighthouse at night"))
    request = Stage1Task(small_chunk(), positive, None, None, 0, 0)
    value, trace = executor.run_task(1, "stage1:0", request)
    assert executor.wait([trace], timeout=300) == [trace]
    result, traced = executor.get([value, trace])
    assert result.video.shape[2] == 3 and torch.isfinite(result.video).all()
    assert isinstance(traced, TaskTrace)
    assert (traced.task, traced.kind, traced.worker) == ("stage1:0", "stage1", "worker-1")
    assert traced.end >= traced.start
    again, _ = executor.run_task(0, "stage1:0", Stage1Task(small_chunk(), executor.get(positive), None, None, 0, 0))
    assert torch.equal(executor.get(again).video, result.video)  # a value or its handle: the same task


def test_put_get_and_wait(executor):
    handle = executor.put({"x": 1})
    assert executor.wait([handle], timeout=5) == [handle]
    assert executor.get(handle) == {"x": 1}
    assert executor.get([handle, executor.put(2)]) == [{"x": 1}, 2]


def test_a_task_error_is_raised_by_get_as_itself(executor, tmp_path):
    """An error where the task ran (here a missing track) reaches the caller as its own type, not as a lost worker."""
    value, trace = executor.run_task(0, "audio_encode", AudioEncodeTask(str(tmp_path / "missing.wav"), 0.0, 17, 24.0))
    for handle in (value, trace):
        with pytest.raises(OSError, match=r"missing\.wav"):
            executor.get(handle)
    assert executor.alive(executor.workers[0])


def test_a_render_is_published_into_the_folder_with_progress(executor, tmp_path):
    seen = []
    published = executor.render(validate_job(SMALL_JOB), tmp_path, worker=1, on_progress=seen.append, poll_s=0.05)
    assert published.paths.video.is_file() and published.paths.sidecar.is_file()
    assert published.document["worker"]["name"] == "worker-1"
    assert published.document["media"]["frames"] == 17
    assert any(p.total for p in seen)  # the steps of at least one stage were seen while it rendered
    again = executor.start_render(0, validate_job(SMALL_JOB), OutputTarget())
    reply = executor.get(again)
    assert reply.document["content_sha256"] == published.document["content_sha256"]  # any worker, same content
    executor.deliver(executor.workers[0], reply, validate_job(SMALL_JOB), OutputTarget(), tmp_path / "other")
    assert (tmp_path / "other" / published.paths.video.name).read_bytes() == published.paths.video.read_bytes()


def test_a_render_takes_its_prompt_encodings_as_handles(executor, tmp_path):
    """Encodings made by encode tasks on one worker reach a render on another as handles (`start_render`'s
    `encoded`, as a campaign sends them): the rendering worker fetches them and runs no Gemma of its own."""
    job = validate_job({**SMALL_JOB, "prompt": "a prompt encoded on the other worker"})
    encoded = {text: executor.run_task(0, "encode:prompt", EncodeTask(text))[0] for text in prompt_texts(job)}
    before = executor.refresh_info()[1].prompt_encodes
    reply = executor.get(executor.start_render(1, job, OutputTarget(), encoded))
    assert executor.refresh_info()[1].prompt_encodes == before
    published = executor.deliver(executor.workers[1], reply, job, OutputTarget(), tmp_path)
    assert published.document["worker"]["name"] == "worker-1" and "gang" not in published.document["worker"]


def test_a_replaced_worker_starts_without_holding_the_caller_and_takes_work(executor):
    old = executor.workers[1]
    name = executor.begin_replace(1)
    assert executor.workers[1] is not old and name.startswith("worker-1~")
    assert 1 in executor.starting  # loading: nothing is sent to it yet
    while 1 not in executor.poll_started(timeout_s=1.0):
        pass
    assert not executor.starting and executor.workers[1].info.name == name
    value, _ = executor.run_task(1, "encode:0", EncodeTask("after the replacement"))
    assert executor.get(value).video.shape[-1] > 0
    assert executor.alive(executor.workers[1])
    assert {labels["worker"] for labels, _ in executor.metrics_texts()} == {"worker-0", "worker-1"}  # by slot


def test_the_in_process_backend_refuses_a_gang(tiny_set):
    with pytest.raises(CapacityError, match="Ray backend"):
        LocalExecutor(tiny_set, placement=Placement("guidance", 2))
