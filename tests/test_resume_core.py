"""Which tasks a job resumed from its kept results still runs (`jobs.resume`): pure, no model."""

from __future__ import annotations

from jobs.outputs import job_content_hash
from jobs.plan import plan_job
from jobs.resume import kept_job_key, kept_result_name, kept_task_ids, resume_point, superseded
from jobs.spec import validate_job
from tests.conftest import SMALL_JOB, THREE_CHUNKS

JOB = {**SMALL_JOB, **THREE_CHUNKS, "height": 256, "width": 256, "tile_pixels": 192, "tile_overlap": 64}


def _plan():
    return plan_job(validate_job(JOB))


def test_kept_tasks_are_the_chunks_the_blends_and_the_audio():
    plan = _plan()
    assert len(plan.chunks) == 3
    assert kept_task_ids(plan) == ("stage1:0", "stage1:1", "stage1:2", "blend:0", "blend:1", "blend:2", "audio")
    assert kept_result_name("stage1:2") == "stage1-2"


def test_nothing_kept_runs_every_task():
    plan = _plan()
    point = resume_point(plan, set())
    assert point.to_run == tuple(t.id for t in plan.tasks)
    assert point.resumed == point.skipped == ()


def test_two_chunks_kept_runs_the_third_chunk_and_everything_after():
    plan = _plan()
    point = resume_point(plan, {"stage1:0", "stage1:1"})
    assert point.resumed == ("stage1:0", "stage1:1")
    assert "stage1:2" in point.to_run and "stitch" in point.to_run
    assert point.skipped == ()  # the encodes are needed by chunk 2 and the stage-2 tiles


def test_a_kept_blend_skips_all_before_it():
    plan = _plan()
    point = resume_point(plan, {"stage1:0", "stage1:1", "stage1:2", "blend:0", "blend:1"})
    assert point.resumed == ("blend:1",)
    to_run = set(point.to_run)
    assert {t.id for t in plan.tasks if t.id.startswith("stage2:2:")} <= to_run
    assert not any(t.startswith(("stage1", "stage2:0", "stage2:1", "blend:0")) for t in to_run)
    assert {"stitch", "upsample", "stage2_init", "stage1:0", "blend:0"} <= set(point.skipped)
    assert any(t.startswith("encode:") for t in to_run)  # the last step's tiles need their prompt


def test_final_blend_and_audio_kept_leave_only_decode_and_mux():
    plan = _plan()
    point = resume_point(plan, set(kept_task_ids(plan)))
    assert point.resumed == ("blend:2", "audio")
    assert point.to_run == ("decode", "mux")
    assert set(point.resumed) | set(point.skipped) | set(point.to_run) == {t.id for t in plan.tasks}


def test_an_unknown_or_not_kept_id_is_ignored():
    plan = _plan()
    assert resume_point(plan, {"upsample", "stage1:9"}) == resume_point(plan, set())


def test_audio_to_video_stitch_still_reads_the_track_when_the_chunks_are_kept():
    plan = plan_job(validate_job({**JOB, "audio": {"path": "track.wav", "sha256": "0" * 64}}))
    point = resume_point(plan, {"stage1:0", "stage1:1", "stage1:2"})
    assert "audio_encode" in point.to_run


def test_a_later_kept_result_supersedes_those_it_stands_for():
    plan = _plan()
    assert superseded(plan, {"stage1:0", "stage1:1"}) == frozenset()
    kept = {"stage1:0", "stage1:1", "stage1:2", "blend:0"}
    assert superseded(plan, kept) == {"stage1:0", "stage1:1", "stage1:2"}
    assert superseded(plan, {"blend:0", "blend:1", "audio"}) == {"blend:0"}


def test_a_job_on_another_oom_rung_keeps_its_results_apart():
    job = validate_job(JOB)
    assert kept_job_key(job) == job_content_hash(job)
    assert kept_job_key(job.with_fallback("smaller_tiles")) == f"{job_content_hash(job)}-smaller_tiles"
    assert plan_job(job.with_fallback("smaller_tiles")).tiles != plan_job(job).tiles  # other blends: not resumable
