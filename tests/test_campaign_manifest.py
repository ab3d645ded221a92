"""Campaign manifests: parsing, row errors (row, field, value, fix), variations, 1:1 rows."""

from __future__ import annotations

import json

import pytest

from jobs.campaign import ManifestError, load_manifest, parse_manifest, variation_seed

BASE = {"campaign": "spring", "defaults": {"height": 64, "width": 64, "num_frames": 9, "steps": 2}}


def rows(*items: dict) -> dict:
    return {**BASE, "rows": list(items)}


def test_good_rows_become_jobs_with_variations():
    m = parse_manifest({**rows({"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "seed": 3}), "variations": 3})
    assert [j.id for j in m.jobs] == ["a~v0", "a~v1", "a~v2", "b~v0", "b~v1", "b~v2"]
    seeds = [j.job.spec.seed for j in m.jobs]
    assert seeds[0] == 10 and seeds[3] == 3 and len(set(seeds)) == 6
    assert variation_seed(3, 1) == m.jobs[4].job.spec.seed
    assert len({j.content_hash for j in m.jobs}) == 6
    assert all(j.job.spec.height == 64 for j in m.jobs)  # shared defaults


def test_rows_override_defaults_one_to_one():
    m = parse_manifest(rows({"id": "a", "prompt": "p1", "width": 128}, {"id": "b", "prompt": "p2"}))
    assert [(j.job.spec.prompt, j.job.spec.width) for j in m.jobs] == [("p1", 128), ("p2", 64)]  # never a product


def test_jsonl_and_csv_rows(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"id": "a", "prompt": "x"}\n\n{"id": "b", "prompt": "y", "seed": 5}\n')
    (tmp_path / "rows.csv").write_text("id,prompt,seed,width\na,x,4,128\nb,y,,\n")
    (tmp_path / "j.yaml").write_text(json.dumps({**BASE, "rows_file": "rows.jsonl"}))
    (tmp_path / "c.yaml").write_text(json.dumps({**BASE, "rows_file": "rows.csv"}))
    assert [j.job.spec.seed for j in load_manifest(tmp_path / "j.yaml").jobs] == [10, 5]
    csv_jobs = load_manifest(tmp_path / "c.yaml").jobs
    assert [(j.job.spec.seed, j.job.spec.width) for j in csv_jobs] == [(4, 128), (10, 64)]


BAD_ROWS = [
    ({"prompt": ""}, "prompt", "is empty"),
    ({"prompt": "x", "height": 500}, "height", "multiple of 64"),
    ({"prompt": "x", "width": "wide"}, "width", "invalid"),
    ({"prompt": "x", "seed": -1}, "seed", "must be in"),
    ({"prompt": "x", "seed": "abc"}, "seed", "invalid"),
    ({"prompt": "x", "seed": 2**64}, "seed", "must be in"),
    ({"prompt": "x", "num_frames": 100}, "num_frames", "8k+1"),
    ({"prompt": "x", "frame_rate": 0}, "frame_rate", "frames per second"),
    ({"prompt": "x", "steps": 0}, "steps", "[1, 200]"),
    ({"prompt": "x", "recipe": "fast"}, "recipe", "invalid"),
    ({"prompt": "x", "colour": "red"}, "colour", "not a job field"),
    ({"prompt": "x", "video_guidance": {"cfg": -3}}, "video_guidance.cfg", "must be in"),
    ({"prompt": "x", "name": "../../etc"}, "name", "may only hold"),
    ({"prompt": "bad\x00byte"}, "prompt", "control characters"),
    ({"prompt": "a|b|c"}, "prompt", "3 prompts but the job has 1 chunk"),
    ({"prompt": "x", "chunk_seconds": 30}, "chunk_seconds", "positional range"),
    ({"id": "has space", "prompt": "x"}, "id", "may only hold"),
    ({"prompt": "x", "tail_strength": 3}, "tail_strength", "[0, 1]"),
    ({"prompt": ["a", ""]}, "prompt", "is empty"),
    ({"height": 64}, "prompt", "required"),
]


@pytest.mark.parametrize(("row", "field", "text"), BAD_ROWS)
def test_bad_rows_are_reported_and_do_not_block_good_rows(row, field, text):
    m = parse_manifest(rows({"id": "good", "prompt": "ok"}, {"id": "r2", **row} if "id" not in row else row))
    assert [j.id for j in m.jobs] == ["good"]
    matching = [p for p in m.problems if p.problem.field == field]
    assert matching, [p.message() for p in m.problems]
    assert matching[0].row == 2
    assert text in matching[0].problem.problem, matching[0].message()


def test_duplicate_ids():
    m = parse_manifest(rows({"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}))
    assert "duplicates the id of row 1" in m.problems[0].message()


BAD_MANIFESTS = [
    ({"campaign": "bad name!"}, "campaign"),
    ({"priority": "high"}, "priority"),
    ({"not_before": "tomorrow"}, "not_before"),
    ({"not_before": "2026-11-26T20:00:00"}, "not_before"),  # no time zone
    ({"window": {"start": "25:00", "end": "07:00"}}, "window.start"),
    ({"window": {"start": "20:00", "end": "07:00", "tz": "Mars/Olympus"}}, "window.tz"),
    ({"window": {"start": "20:00", "end": "07:00", "days": "someday"}}, "window.days"),
    ({"window": {"start": "20:00"}}, "window.end"),
    ({"budget_gpu_seconds": -5}, "budget_gpu_seconds"),
    ({"variations": 0}, "variations"),
    ({"max_task_retries": -1}, "max_task_retries"),
    ({"shedule": "nightly"}, "shedule"),
]


@pytest.mark.parametrize(("change", "field"), BAD_MANIFESTS)
def test_bad_manifest_fields(change, field):
    with pytest.raises(ManifestError) as info:
        parse_manifest({**rows({"prompt": "x"}), **change})
    assert field in {p.problem.field for p in info.value.problems}, str(info.value)


def test_all_or_nothing_refuses_everything():
    with pytest.raises(ManifestError, match="all_or_nothing"):
        parse_manifest({**rows({"prompt": "x"}, {"prompt": ""}), "all_or_nothing": True})


def test_rows_file_outside_the_manifest_folder(tmp_path):
    (tmp_path / "m.yaml").write_text(json.dumps({**BASE, "rows_file": "../../etc/passwd"}))
    with pytest.raises(ManifestError, match="outside the manifest's folder"):
        load_manifest(tmp_path / "m.yaml")


def test_missing_rows_and_unreadable_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no rows"):
        parse_manifest(BASE)
    (tmp_path / "m.yaml").write_text("campaign: [unclosed")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(tmp_path / "m.yaml")
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope.yaml")
