"""Job validation: every bad value named with its field, value and nearest valid value; --snap."""

from __future__ import annotations

import pytest

from jobs.spec import (
    JobValidationError,
    nearest_frame_count,
    nearest_multiple,
    validate_for_model,
    validate_job,
)

BASE = {"prompt": "a fox", "height": 512, "width": 768, "num_frames": 121}


def _problems(**changes) -> dict[str, object]:
    with pytest.raises(JobValidationError) as info:
        validate_job({**BASE, **changes})
    return {p.field: p for p in info.value.problems}


def test_valid_job_resolves_defaults():
    job = validate_job(BASE)
    assert job.num_frames == 121
    assert job.spec.recipe == "two_stage"
    assert job.adjustments == ()


@pytest.mark.parametrize(
    ("field", "value", "nearest"),
    [
        ("height", 500, 512),
        ("width", 770, 768),
        ("height", 96, 128),
        ("width", 31, 64),
    ],
)
def test_sizes_off_the_grid(field, value, nearest):
    p = _problems(**{field: value})[field]
    assert p.value == value and p.nearest == nearest
    assert "multiple of 64" in p.message() and "--snap" in p.message()


@pytest.mark.parametrize("value", [0, -64, 10000])
def test_sizes_out_of_range(value):
    p = _problems(height=value)["height"]
    assert "must be in [64, 4096]" in p.problem
    assert p.nearest in (64, 4096)


@pytest.mark.parametrize(("value", "nearest"), [(120, 121), (100, 97), (10, 9), (122, 121)])
def test_frame_counts_not_8k_plus_1(value, nearest):
    p = _problems(num_frames=value)["num_frames"]
    assert "8k+1" in p.problem and p.nearest == nearest


def test_too_few_frames():
    assert _problems(num_frames=1)["num_frames"].nearest == 9


def test_longer_than_the_longest_job():
    p = _problems(num_frames=24 * 601 + 1)["num_frames"]
    assert "longest job is 600 s" in p.problem and p.nearest == 24 * 600 + 1


def test_long_jobs_are_valid_and_chunk_settings_checked():
    assert validate_job({**BASE, "num_frames": 24 * 60 + 1}).num_frames == 1441
    assert "positional range" in _problems(chunk_seconds=25)["chunk_seconds"].problem
    assert "chunk_seconds / 2" in _problems(chunk_seconds=4, chunk_overlap=3)["chunk_overlap"].problem
    assert _problems(tile_pixels=100)["tile_pixels"].nearest == 96
    assert "smaller than tile_pixels" in _problems(tile_pixels=256, tile_overlap=256)["tile_overlap"].problem
    assert _problems(decode_tile_frames=20)["decode_tile_frames"].nearest == 32
    assert _problems(tail_strength=1.5)["tail_strength"].nearest == 1.0


def test_several_prompts():
    job = validate_job({**BASE, "prompt": "a fox | a raven"})
    assert job.spec.prompts() == ["a fox", "a raven"]
    assert validate_job({**BASE, "prompt": ["x", "y"]}).spec.prompts() == ["x", "y"]
    assert "is empty" in _problems(prompt="a||b")["prompt"].problem


@pytest.mark.parametrize("fps", [0, -24, 1000, float("nan")])
def test_absurd_frame_rates(fps):
    assert "frames per second" in _problems(frame_rate=fps)["frame_rate"].problem


@pytest.mark.parametrize("steps", [0, -1, 201, 100000])
def test_absurd_steps(steps):
    p = _problems(steps=steps)["steps"]
    assert "[1, 200]" in p.problem


def test_steps_ignored_by_distilled_recipe():
    assert validate_job({**BASE, "recipe": "distilled", "steps": 0}).spec.recipe == "distilled"


@pytest.mark.parametrize("prompt", ["", "   ", "\n"])
def test_empty_prompt(prompt):
    assert "is empty" in _problems(prompt=prompt)["prompt"].problem


def test_control_characters_in_prompt():
    assert "control characters" in _problems(prompt="a fox\x00\x1b[31m")["prompt"].problem


@pytest.mark.parametrize("duration", [0, -2, float("inf")])
def test_bad_durations(duration):
    job = {k: v for k, v in BASE.items() if k != "num_frames"}
    with pytest.raises(JobValidationError, match="duration"):
        validate_job({**job, "duration": duration})


def test_duration_converts_to_frames():
    job = {k: v for k, v in BASE.items() if k != "num_frames"}
    assert validate_job({**job, "duration": 5}).num_frames == 121
    assert validate_job({**job, "duration": 5}).adjustments == ()
    three = validate_job({**job, "duration": 3.1})
    assert three.num_frames == 73 and three.adjustments[0].field == "duration"


def test_duration_and_frames_both_set():
    assert "give only one" in _problems(duration=5)["duration"].problem


def test_unknown_field_and_wrong_type():
    with pytest.raises(JobValidationError) as info:
        validate_job({**BASE, "heigth": 512, "seed": "abc"})
    fields = {p.field: p for p in info.value.problems}
    assert "is not a job field" in fields["heigth"].problem
    assert "seed" in fields


def test_missing_prompt():
    with pytest.raises(JobValidationError, match="prompt: None is required"):
        validate_job({"height": 512})


def test_all_problems_reported_at_once():
    problems = _problems(height=500, width=770, num_frames=100, steps=0, prompt="")
    assert set(problems) == {"height", "width", "num_frames", "steps", "prompt"}


def test_guidance_ranges():
    problems = _problems(video_guidance={"cfg": -1}, audio_guidance={"rescale": 2})
    assert problems["video_guidance.cfg"].nearest == 0
    assert problems["audio_guidance.rescale"].nearest == 1


def test_snap_moves_values_and_says_so():
    job = validate_job({**BASE, "height": 500, "width": 770, "num_frames": 100}, snap=True)
    assert (job.spec.height, job.spec.width, job.num_frames) == (512, 768, 97)
    notes = {a.field: a for a in job.adjustments}
    assert notes["height"].value == 500 and "snapped to 512" in notes["height"].problem
    assert set(notes) == {"height", "width", "num_frames"}


def test_snap_does_not_hide_unfixable_problems():
    with pytest.raises(JobValidationError) as info:
        validate_job({**BASE, "height": 500, "prompt": ""}, snap=True)
    assert [p.field for p in info.value.problems] == ["prompt"]


def test_output_name_is_safe():
    assert "may only hold" in _problems(name="../../etc/passwd")["name"].problem


def test_stg_blocks_checked_against_model_depth():
    job = validate_job({**BASE, "video_guidance": {"stg_blocks": [29]}})
    validate_for_model(job, 48)
    with pytest.raises(JobValidationError, match=r"model has 2 \(0..1\)"):
        validate_for_model(job, 2)


def test_nearest_helpers():
    assert nearest_multiple(96, 64, 64) == 128
    assert nearest_multiple(95, 64, 64) == 64
    assert [nearest_frame_count(x) for x in (9, 12, 13, 16, 17)] == [9, 9, 17, 17, 17]
