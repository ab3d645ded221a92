"""Campaign manifests: parsing, row errors (row, field, value, fix), variations, 1:1 rows."""

from __future__ import annotations

import json

import pytest

from cluster.campaign_manifest import ManifestError, load_manifest, parse_manifest, variation_seed

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


# --- text as files bring it: decoded once, bad rows refused alone -------------------------------------------------


def _ids(manifest) -> list[str]:
    return [j.id for j in manifest.jobs]


def test_escaped_surrogate_pairs_in_a_json_manifest_are_one_character(tmp_path):
    """Python's json.dumps writes 🦊 as "\\ud83e\\udd8a"; PyYAML reads that as two surrogates, which no store could
    encode. The pair is joined when the file is read; a lone one refuses its row alone."""
    path = tmp_path / "m.json"
    path.write_text(json.dumps(rows({"id": "fox", "prompt": "a fox 🦊"}, {"id": "half", "prompt": "x"})))
    assert "\\ud83e\\udd8a" in path.read_text()
    path.write_text(path.read_text().replace('"prompt": "x"', '"prompt": "half \\ud83e"'))
    m = load_manifest(path)
    assert _ids(m) == ["fox"] and m.jobs[0].job.spec.prompt == "a fox 🦊"
    m.jobs[0].job.spec.model_dump_json()  # what the store writes
    assert [(p.row_id, p.problem.field) for p in m.problems] == [("half", "prompt")]
    assert "lone UTF-16 surrogate" in m.problems[0].problem.problem


def test_spreadsheet_csv_with_bom_crlf_and_text_ids(tmp_path):
    (tmp_path / "rows.csv").write_bytes(
        '\ufeffid,prompt,seed\r\n007,"a fox, trotting",4\r\n42,"two\r\nlines",5\r\n'.encode()
    )
    (tmp_path / "m.yaml").write_text(json.dumps({**BASE, "rows_file": "rows.csv"}))
    m = load_manifest(tmp_path / "m.yaml")
    assert _ids(m) == ["007", "42"] and not m.problems  # the BOM is not part of the first header; ids stay text
    assert [j.job.spec.prompt for j in m.jobs] == ["a fox, trotting", "two\nlines"]


def test_csv_rows_with_latin1_bytes_or_an_unquoted_comma_are_refused_alone(tmp_path):
    (tmp_path / "rows.csv").write_bytes(b"id,prompt\ngood,a fox\nlatin,caf\xe9\ncomma,a fox, trotting\n")
    (tmp_path / "m.yaml").write_text(json.dumps({**BASE, "rows_file": "rows.csv"}))
    m = load_manifest(tmp_path / "m.yaml")
    assert _ids(m) == ["good"]
    refused = {p.row_id: p.problem for p in m.problems}
    assert "not UTF-8 (0xE9" in refused["latin"].problem
    assert "more cells than the header" in refused["#3"].problem


def test_jsonl_with_a_broken_line_and_a_line_separator(tmp_path):
    good = json.dumps({"id": "sep", "prompt": "one\u2028two"}, ensure_ascii=False)
    (tmp_path / "rows.jsonl").write_text(f'{{"id": "a", "prompt": "x"}}\n{{"id": "b", "prompt": \n{good}\n')
    (tmp_path / "m.yaml").write_text(json.dumps({**BASE, "rows_file": "rows.jsonl"}))
    m = load_manifest(tmp_path / "m.yaml")
    assert _ids(m) == ["a", "sep"]  # U+2028 is text inside a JSON string, not a line break
    assert "line 2 of rows.jsonl is not JSON" in m.problems[0].problem.problem


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("campaign: café\n".encode("latin-1"), "byte 0xE9 on line 1"),
        ("campaign: fox\n".encode("utf-16"), "UTF-16"),
    ],
    ids=["latin-1", "utf-16"],
)
def test_manifests_not_in_utf8_are_refused_saying_where(tmp_path, content, words):
    (tmp_path / "m.yaml").write_bytes(content)
    with pytest.raises(ManifestError, match=words):
        load_manifest(tmp_path / "m.yaml")


def test_a_manifest_with_a_byte_order_mark_reads(tmp_path):
    (tmp_path / "m.yaml").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows({"id": "a", "prompt": "x"})).encode())
    assert _ids(load_manifest(tmp_path / "m.yaml")) == ["a"]


# --- row ids and campaign names: the name policy -------------------------------------------------------------------

BAD_IDS = [
    ("CON", "Windows device name"),
    ("take1.", "may not end with '.'"),
    ("shot\xa01", "NO-BREAK SPACE"),
    ("shot 1 ", "SPACE"),
    ("..", "starting with a letter or digit"),
    ("a/b", "SOLIDUS"),
    ("\x1b[2Jwiped", "control character"),
    ("x" * 194, "194 bytes"),
]


@pytest.mark.parametrize(("row_id", "words"), BAD_IDS, ids=[ascii(b[0])[:20] for b in BAD_IDS])
def test_bad_row_ids_are_refused_alone(row_id, words):
    m = parse_manifest(rows({"id": "good", "prompt": "ok"}, {"id": row_id, "prompt": "x"}))
    assert _ids(m) == ["good"]
    assert m.problems[0].problem.field == "id" and words in m.problems[0].problem.problem


def test_an_id_whose_variations_would_be_too_long_is_refused():
    m = parse_manifest({**rows({"id": "a" * 190, "prompt": "x"}, {"id": "b" * 191, "prompt": "y"}), "variations": 10})
    assert {j.id.split("~")[0] for j in m.jobs} == {"a" * 190}  # 'a…-v9' is 193 bytes; 'b…-v9' would be 194
    assert "variation 9" in m.problems[0].problem.problem


def test_a_row_that_is_not_a_mapping_is_refused_alone():
    m = parse_manifest(rows({"id": "good", "prompt": "ok"}, "a fox in the snow", {"id": None, "prompt": "y"}))
    assert _ids(m) == ["good", "row3"]  # an empty id is no id, as an empty CSV cell
    assert m.problems[0].row == 2 and "must be a mapping" in m.problems[0].problem.problem


def test_unicode_ids_are_kept_in_nfc():
    m = parse_manifest(rows({"id": "cafe\u0301", "prompt": "x"}, {"id": "caf\u00e9", "prompt": "y"}))
    assert _ids(m) == ["caf\u00e9"] and "duplicates the id of row 1" in m.problems[0].problem.problem


@pytest.mark.parametrize("name", ["CON", "spring ", "a\uff0fb", "x" * 194, "spring.", "caf\udce9"])
def test_bad_campaign_names(name):
    with pytest.raises(ManifestError) as info:
        parse_manifest({**rows({"prompt": "x"}), "campaign": name})
    assert [p.problem.field for p in info.value.problems] == ["campaign"]


# --- key templates: checked at submission, before any render ------------------------------------------------------

BAD_TEMPLATES = [
    ("{campaign}/{job}", "one key"),  # the sidecar would be uploaded over the MP4
    ("{job}", "one key"),
    ("{campaign}/../{job}.{ext}", "'..'"),
    ("/{job}.{ext}", "empty component"),
    ("{campaign}//{job}.{ext}", "empty component"),
    ("{campaign}/{job}.{ext}/", "empty component"),
    ("{campaign}\\{job}.{ext}", "'\\\\'"),
    ("%2e%2e/{job}.{ext}", "'%'"),
    ("{campaign} {job}.{ext}", "' '"),
    ("nul/{job}.{ext}", "Windows device name"),
    ("{job!r}.{ext}", "write it plain"),
    ("{seed:>300}.{ext}", "write it plain"),
    ("{}.{ext}", "unnamed field"),
    ("{job.__class__}.{ext}", "unknown field"),
    ("{job", "not a template"),
    ("{secret}.{ext}", "unknown field {secret}"),
]


@pytest.mark.parametrize(("template", "words"), BAD_TEMPLATES, ids=[t[0] for t in BAD_TEMPLATES])
def test_bad_key_templates_refuse_the_manifest(template, words):
    with pytest.raises(ManifestError) as info:
        parse_manifest({**rows({"prompt": "x"}), "output": "s3://renders/spring", "key_template": template})
    [problem] = info.value.problems
    assert problem.problem.field == "key_template" and words in problem.problem.problem, problem.message()


def test_a_bad_output_refuses_the_manifest():
    with pytest.raises(ManifestError) as info:
        parse_manifest({**rows({"prompt": "x"}), "output": "s3://Bad_Bucket/x"})
    assert info.value.problems[0].problem.field == "output"


def test_rows_whose_keys_collide_are_refused_alone():
    """Two jobs on one key: the second would find the first's sidecar there and count as done, never rendered."""
    m = parse_manifest(
        {
            **rows(
                {"id": "a", "prompt": "x", "name": "shot"},
                {"id": "b", "prompt": "y", "name": "shot"},
                {"id": "c", "prompt": "x", "name": "shot"},  # row a's job exactly: the same output, no conflict
            ),
            "output": "s3://renders/spring",
            "key_template": "{campaign}/{name}.{ext}",
        }
    )
    assert _ids(m) == ["a", "c"]
    assert [p.row_id for p in m.problems] == ["b"] and "which row 1's output has already" in m.problems[
        0
    ].problem.problem


def test_rows_whose_keys_exceed_s3s_limit_are_refused_alone():
    m = parse_manifest(
        {
            **rows({"id": "short", "prompt": "x"}, {"id": "long", "prompt": "y", "name": "n" * 190}),
            "output": "s3://renders/" + "p" * 810,  # short: 848 bytes a key, long: 1033
        }
    )
    assert _ids(m) == ["short"] and "more than S3's 1024" in m.problems[0].problem.problem


def test_keys_in_a_folder_must_fit_a_file_name(tmp_path):
    long_name = "n" * 150
    m = parse_manifest(
        {
            **rows({"id": "short", "prompt": "x"}, {"id": "long", "prompt": "y", "name": long_name}),
            "output": str(tmp_path / "out"),
            "key_template": "{campaign}/{job}-{name}.{ext}",
        }
    )
    assert _ids(m) == ["short"] and "fit a file name" in m.problems[0].problem.problem
