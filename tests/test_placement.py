"""Placement: validation of the job field, the planner's mode choice, and how a gang runs each task. Pure."""

from __future__ import annotations

import pytest

from jobs.placement import (
    Placement,
    PlacementError,
    PlacementSpec,
    choose_placement,
    guided_pass_count,
    placement_problems,
    stage2_video_tokens,
    task_parallelism,
)
from jobs.spec import JobValidationError, validate_for_model, validate_job
from ltx2.parallel.sequence import check_sequence_degree, token_splits
from ltx2.render import Guidance, default_audio_guidance, default_video_guidance

H100 = 80 * 2**30
GPU_24GB = 24 * 2**30


@pytest.mark.parametrize(
    ("spec", "field_problem"),
    [
        ({"mode": "replica", "gpus": 2}, "must be 1 for mode replica"),
        ({"mode": "sequence", "gpus": 1}, "at least 2"),
        ({"mode": "sequence", "gpus": 3}, "must divide the model's 32 attention heads"),
        ({"mode": "sharded", "gpus": 6}, "must divide"),
        ({"mode": "guidance", "gpus": 8}, "at most 4 for guidance"),
        ({"mode": "auto", "gpus": 0}, "between 1 and 64"),
        ({"mode": "guidance", "gpus": 100}, "between 1 and 64"),
    ],
)
def test_impossible_placements_are_refused_with_the_fix(spec, field_problem):
    with pytest.raises(JobValidationError) as e:
        validate_job({"prompt": "x", "placement": spec})
    assert "placement.gpus" in str(e.value) and field_problem in str(e.value)


def test_unknown_mode_and_fields_are_refused():
    for bad in ({"mode": "pipeline"}, {"mode": "sequence", "ranks": 2}, {"gpus": "two"}):
        with pytest.raises(JobValidationError, match="placement"):
            validate_job({"prompt": "x", "placement": bad})


def test_gang_modes_default_to_two_gpus_and_replica_to_one():
    assert PlacementSpec(mode="sequence").resolved_gpus() == 2
    assert PlacementSpec(mode="replica").resolved_gpus() == 1
    job = validate_job({"prompt": "x", "placement": {"mode": "guidance"}})
    assert choose_placement(
        job.spec.placement, video_tokens=1, guided_passes=4, gpu_memory_bytes=H100, free_gpus=8
    ) == (Placement("guidance", 2))


def test_the_tiny_models_two_heads_allow_only_a_gang_of_two():
    job = validate_job({"prompt": "x", "placement": {"mode": "sequence", "gpus": 4}})
    validate_for_model(job, 48, heads=32)
    with pytest.raises(JobValidationError, match="must divide the model's 2 attention heads"):
        validate_for_model(job, 2, heads=2)


def test_sequence_degree_must_divide_heads_but_tokens_may_split_unevenly():
    check_sequence_degree(32, 8)
    with pytest.raises(ValueError, match="use one of 1, 2, 4, 8, 16, 32"):
        check_sequence_degree(32, 3)
    assert token_splits(45, 2) == [23, 22]
    assert token_splits(24576, 8) == [3072] * 8
    assert sum(token_splits(14081, 8)) == 14081 and max(token_splits(14081, 8)) - min(token_splits(14081, 8)) == 1


def test_guided_pass_count_follows_the_official_guider():
    defaults = (default_video_guidance(), default_audio_guidance())
    assert guided_pass_count("two_stage", defaults) == 4
    assert guided_pass_count("distilled", defaults) == 1
    cfg_only = Guidance(cfg=3.0, stg=0.0, modality=1.0, rescale=0.0, stg_blocks=(29,))
    no_guidance = Guidance(cfg=1.0, stg=0.0, modality=1.0, rescale=0.0, stg_blocks=(29,))
    assert guided_pass_count("two_stage", (cfg_only, no_guidance)) == 2
    assert guided_pass_count("two_stage", (no_guidance, no_guidance)) == 1


def test_auto_prefers_replicas_when_the_queue_fills_the_gpus():
    auto = PlacementSpec()
    kw = {"video_tokens": 24576, "guided_passes": 4, "gpu_memory_bytes": H100}
    assert choose_placement(auto, free_gpus=8, queued_jobs=8, **kw) == Placement("replica", 1)
    assert choose_placement(auto, free_gpus=1, **kw) == Placement("replica", 1)
    assert choose_placement(auto, free_gpus=0, **kw) == Placement("replica", 1)


def test_auto_gangs_one_job_over_free_gpus_by_what_pays():
    auto = PlacementSpec()
    assert choose_placement(auto, video_tokens=6144, guided_passes=4, gpu_memory_bytes=H100, free_gpus=8) == (
        Placement("guidance", 4)
    )
    assert choose_placement(auto, video_tokens=24576, guided_passes=1, gpu_memory_bytes=H100, free_gpus=6) == (
        Placement("sequence", 4)
    )
    assert choose_placement(auto, video_tokens=6144, guided_passes=1, gpu_memory_bytes=H100, free_gpus=8) == (
        Placement("replica", 1)  # too short for Ulysses to pay
    )
    capped = PlacementSpec(gpus=2)
    assert choose_placement(capped, video_tokens=6144, guided_passes=4, gpu_memory_bytes=H100, free_gpus=8) == (
        Placement("guidance", 2)
    )


def test_auto_shards_when_one_gpu_cannot_hold_the_model():
    auto = PlacementSpec()
    kw = {"video_tokens": 6144, "guided_passes": 4, "free_gpus": 8, "queued_jobs": 8}
    assert choose_placement(auto, gpu_memory_bytes=48 * 2**30, **kw) == Placement("sharded", 2)
    assert choose_placement(auto, gpu_memory_bytes=40 * 2**30, **kw) == Placement("sharded", 4)
    with pytest.raises(PlacementError, match="sharding over the 8 free GPU"):
        choose_placement(auto, gpu_memory_bytes=GPU_24GB, **kw)  # Gemma 12B alone fills a 24 GB card today


@pytest.mark.parametrize(
    ("placement", "kind", "passes", "expected"),
    [
        (Placement("replica", 1), "stage1", 4, None),
        (Placement("sequence", 2), "stage1", 4, "sequence"),
        (Placement("guidance", 2), "stage1", 4, "guidance"),
        (Placement("guidance", 4), "stage1", 2, "sequence"),  # fewer passes than ranks
        (Placement("guidance", 2), "stage2", 1, "sequence"),
        (Placement("sharded", 2), "stage1", 4, "guidance"),
        (Placement("sharded", 2), "stage2", 1, "sequence"),
        (Placement("sharded", 2), "decode", 1, None),
        (Placement("sequence", 2), "encode", 1, None),
    ],
)
def test_task_parallelism_per_stage(placement, kind, passes, expected):
    assert task_parallelism(placement, kind, passes) == expected


def test_stage2_video_tokens_match_the_design_table():
    assert stage2_video_tokens(512, 768, 121) == 6144
    assert stage2_video_tokens(704, 1280, 121) == 14080
    assert stage2_video_tokens(1024, 1536, 121) == 24576


def test_placement_problems_report_field_value_and_fix():
    [(field, value, why)] = placement_problems(PlacementSpec(mode="sequence", gpus=12))
    assert (field, value) == ("placement.gpus", 12) and "one of [1, 2, 4, 8, 16, 32]" in why
