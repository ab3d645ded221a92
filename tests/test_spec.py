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
    assert "multiple of 64" in p.message() and p.message().endswith(f"nearest valid value: {nearest}")
    assert p.snaps  # the commands with --snap say it moves this value; the job layer names no flag


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


@pytest.mark.parametrize(
    ("job", "line"),
    [
        ({**BASE, "heigth": 512}, "heigth is not a job field; did you mean 'height'?"),
        ({**BASE, "negative_promt": "x"}, "negative_promt is not a job field; did you mean 'negative_prompt'?"),
        ({**BASE, "images": [{"pth": "a.png"}]}, "images.0.pth is not a field of images.0; did you mean 'path'?"),
        (
            {**BASE, "video_guidance": {"cgf": 3}},
            "video_guidance.cgf is not a field of video_guidance; did you mean 'cfg'?",
        ),
        (
            {**BASE, "placement": {"mdoe": "sequence"}},
            "placement.mdoe is not a field of placement; did you mean 'mode'?",
        ),
    ],
)
def test_a_misspelt_field_gets_did_you_mean(job, line):
    with pytest.raises(JobValidationError) as info:
        validate_job(job)
    assert [p.message() for p in info.value.problems if "field" in p.problem] == [line]
    assert "known fields" not in str(info.value)  # the 26 names are listed only where no name is close


def test_a_field_with_no_close_name_lists_the_fields_there():
    with pytest.raises(JobValidationError) as info:
        validate_job({**BASE, "images": [{"path": "a.png", "zzz": 1}]})
    [problem] = info.value.problems
    assert problem.message() == "images.0.zzz is not a field of images.0 (known fields: frame, path, sha256, strength)"


def test_missing_prompt():
    with pytest.raises(JobValidationError) as info:
        validate_job({"height": 512})
    assert [p.message() for p in info.value.problems] == ["prompt is required: what to render (video and sound)"]
    assert "None" not in str(info.value)


def test_a_misspelt_required_field_is_not_also_reported_missing():
    with pytest.raises(JobValidationError) as info:
        validate_job({"promt": "a fox", "height": 512})
    assert [p.message() for p in info.value.problems] == ["promt is not a job field; did you mean 'prompt'?"]


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


# --- names: one policy for job names, row ids and campaign names (jobs/names.py) ---------------------------------

BAD_NAMES = [
    ("only dots", "...", "starting with a letter or digit"),
    ("a dot alone", ".", "starting with a letter or digit"),
    ("hidden file", ".fox", "starting with a letter or digit"),
    ("read as a flag", "-rf", "starting with a letter or digit"),
    ("trailing dot", "fox.", "may not end with '.'"),
    ("trailing space", "fox ", "SPACE"),
    ("no-break space from a spreadsheet", "red\xa0fox", "NO-BREAK SPACE"),
    ("zero-width joiner", "fo\u200dx", "ZERO WIDTH JOINER"),
    ("byte-order mark", "\ufefffox", "ZERO WIDTH NO-BREAK SPACE"),
    ("fullwidth solidus", "a\uff0fb", "FULLWIDTH SOLIDUS"),
    ("division slash", "a\u2215b", "DIVISION SLASH"),
    ("backslash", "a\\b", "REVERSE SOLIDUS"),
    ("right-to-left override", "fox\u202egpj.exe", "RIGHT-TO-LEFT OVERRIDE"),
    ("ANSI escape", "fox\x1b[31m", "control character"),
    ("carriage return", "fox\rwolf", "control character"),
    ("C1 control", "fox\x9b", "control character"),
    ("Windows device name", "CON", "Windows device name"),
    ("Windows device name with an extension", "nul.txt", "Windows device name"),
    ("Windows device name in lower case", "com1", "Windows device name"),
    ("undecodable byte", "caf\udce9", "not UTF-8"),
    ("250 ASCII characters", "a" * 250, "250 bytes"),
    ("194 bytes of ASCII", "a" * 194, "194 bytes"),
    ("97 two-byte letters (194 bytes)", "é" * 97, "194 bytes"),
    ("65 three-byte letters (195 bytes)", "狐" * 65, "195 bytes"),
]


@pytest.mark.parametrize(("case", "name", "words"), BAD_NAMES, ids=[c[0] for c in BAD_NAMES])
def test_bad_names_are_refused_with_the_rule_and_a_fix(case, name, words):
    problem = _problems(name=name)["name"]
    assert words in problem.problem, problem.message()
    message = problem.message()
    assert len(message) < 400 and "\n" not in message
    assert all(c.isprintable() for c in message), ascii(message)  # the value is shown escaped and shortened


@pytest.mark.parametrize("name", ["fox", "雪の狐", "Fuchs-über_2.v1", "ｆｏｘ", "a" * 193, "狐" * 64 + "a"])
def test_names_of_any_script_up_to_the_limit(name):
    assert validate_job({**BASE, "name": name}).spec.name == name


def test_the_longest_name_fits_the_longest_file_the_farm_writes(tmp_path):
    """A name of MAX_NAME_BYTES with the largest seed: its sidecar's temporary, with the widest pid, is exactly 255
    bytes and is written on a real file system; one byte more is refused at validation."""
    from cluster.output_files import write_json_atomic
    from jobs.names import MAX_NAME_BYTES, PID_DIGITS
    from jobs.outputs import output_paths

    name = "狐" * ((MAX_NAME_BYTES - 1) // 3) + "a" * ((MAX_NAME_BYTES - 1) % 3 + 1)
    assert len(name.encode()) == MAX_NAME_BYTES
    job = validate_job({**BASE, "name": name, "seed": 2**63 - 1})
    paths = output_paths(job, tmp_path)
    temporary = paths.sidecar.with_name(f".{paths.sidecar.name}.partial-{'9' * PID_DIGITS}")
    assert len(temporary.name.encode()) == 255
    temporary.write_bytes(b"{}")
    write_json_atomic(paths.sidecar, {"ok": True})
    assert paths.sidecar.is_file() and len(paths.video.name.encode()) < 255
    with pytest.raises(OSError):  # the file system's limit is the one the policy assumes
        temporary.with_name(temporary.name + "9").write_bytes(b"")
    assert "bytes" in _problems(name=name + "a", seed=2**63 - 1)["name"].problem


def test_names_are_kept_in_nfc():
    decomposed = validate_job({**BASE, "name": "cafe\u0301"})
    composed = validate_job({**BASE, "name": "caf\u00e9"})
    assert decomposed.spec.name == composed.spec.name == "caf\u00e9"


# --- prompts: decoded text, NFC, no control characters --------------------------------------------------------------


BAD_PROMPTS = [
    ("lone surrogate (half an escaped emoji)", "a fox \ud83e", "lone UTF-16 surrogate"),
    ("undecodable byte from argv or a CSV", "caf\udce9 au lait", "not UTF-8"),
    ("bare carriage return", "a fox\rA WOLF", "control characters"),
    ("DEL", "a fox\x7f", "control characters"),
    ("C1 next-line", "a fox\x85runs", "control characters"),
    ("C1 CSI", "a fox \x9b31m", "control characters"),
    ("OSC window title", "\x1b]0;pwned\x07a fox", "control characters"),
    ("right-to-left override", "a fox \u202eregdab", "bidirectional override"),
    ("left-to-right isolate", "a fox \u2066x\u2069", "bidirectional override"),
    ("byte-order mark inside", "a fox\ufeff in snow", "byte-order mark"),
]


@pytest.mark.parametrize(("case", "prompt", "words"), BAD_PROMPTS, ids=[c[0] for c in BAD_PROMPTS])
def test_bad_prompt_text_is_refused(case, prompt, words):
    assert words in _problems(prompt=prompt)["prompt"].problem
    assert words in _problems(negative_prompt=prompt)["negative_prompt"].problem


@pytest.mark.parametrize(
    "prompt",
    ["a red\xa0fox", "a family 👨\u200d👩\u200d👧 in snow", "می\u200cخواهم", "line one\nline two\tindented"],
    ids=["no-break space", "emoji joined by ZWJ", "Persian with ZWNJ", "newline and tab"],
)
def test_ordinary_whitespace_and_joiners_stay_in_prompts(prompt):
    assert validate_job({**BASE, "prompt": prompt}).spec.prompt == prompt


def test_prompts_are_normalised_once_nfc_and_lf():
    """The same words typed on two systems are one job: NFC, CRLF as LF (the content hash sees the result)."""
    from jobs.outputs import job_content_hash

    a = validate_job({**BASE, "prompt": "cafe\u0301 in the snow\r\nat dawn"})
    b = validate_job({**BASE, "prompt": "caf\u00e9 in the snow\nat dawn"})
    assert a.spec.prompt == b.spec.prompt == "caf\u00e9 in the snow\nat dawn"
    assert job_content_hash(a) == job_content_hash(b)
    listed = validate_job({**BASE, "prompt": ["cafe\u0301", "x²"]})
    assert listed.spec.prompts() == ["caf\u00e9", "x²"]  # NFC, not NFKC: "x²" keeps its meaning


def test_paths_must_be_text_but_are_not_normalised():
    p = _problems(images=[{"path": "shot\udce9.png"}])["images.0.path"]
    assert "not UTF-8" in p.problem
    job = validate_job({**BASE, "images": [{"path": "cafe\u0301.png"}]})
    assert job.spec.images[0].path == "cafe\u0301.png"  # a Linux file name is its bytes


def test_an_unknown_field_named_with_escapes_is_shown_escaped():
    with pytest.raises(JobValidationError) as info:
        validate_job({**BASE, "\x1b]0;pwned\x07": 1})
    text = str(info.value)
    assert "\x1b" not in text and "\x07" not in text and "\\x1b]0;pwned\\x07" in text
