"""Malformed input across the CLI, job files, manifests, output keys and checkpoints.

Each case runs the real command line in-process (`cluster.cli.main`). It must either be refused with a
clear message and exit code 2, before any model loads or cluster starts, or be handled (exit 0 for
`validate`). Never a traceback: `main` returning at all proves no exception escaped.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import yaml

from cluster.cli import main

GOOD = {"prompt": "rain on a tin roof", "height": 128, "width": 192, "num_frames": 17}

# (case id, job mapping or raw text, words the message must contain)
JOBS = [
    ("empty prompt", {**GOOD, "prompt": "  "}, "prompt"),
    ("control character in prompt", {**GOOD, "prompt": "bell\x07 rings"}, "control characters"),
    ("escape sequence in prompt", {**GOOD, "prompt": "\x1b[31mred\x1b[0m"}, "control characters"),
    ("huge prompt", {**GOOD, "prompt": "word " * 20000}, "longer than"),
    ("negative seed", {**GOOD, "seed": -1}, "seed"),
    ("seed beyond 63 bits", {**GOOD, "seed": 2**70}, "seed"),
    ("seed as text", {**GOOD, "seed": "abc"}, "seed"),
    ("huge height", {**GOOD, "height": 10**9}, "height"),
    ("negative width", {**GOOD, "width": -64}, "width"),
    ("hours of frames", {**GOOD, "num_frames": 10**6 + 1}, "longest job"),
    ("duration NaN", {**{k: v for k, v in GOOD.items() if k != "num_frames"}, "duration": float("nan")}, "duration"),
    (
        "duration infinite",
        {**{k: v for k, v in GOOD.items() if k != "num_frames"}, "duration": float("inf")},
        "duration",
    ),
    ("zero fps", {**GOOD, "frame_rate": 0}, "frame_rate"),
    ("absurd fps", {**GOOD, "frame_rate": 10**6}, "frame_rate"),
    ("a million steps", {**GOOD, "steps": 10**6}, "steps"),
    ("unknown recipe", {**GOOD, "recipe": "turbo"}, "recipe"),
    ("unknown field", {**GOOD, "colour": "red"}, "colour"),
    ("absurd guidance", {**GOOD, "video_guidance": {"cfg": 1e9}}, "video_guidance.cfg"),
    ("negative STG block", {**GOOD, "audio_guidance": {"stg_blocks": [-1]}}, "stg_blocks"),
    ("path traversal in name", {**GOOD, "name": "../../etc/passwd"}, "name"),
    ("NUL in name", {**GOOD, "name": "a\x00b"}, "name"),
    ("impossible gang", {**GOOD, "placement": {"mode": "sequence", "gpus": 3}}, "placement.gpus"),
    ("odd tile size", {**GOOD, "tile_pixels": 33}, "tile_pixels"),
    ("chunk longer than the model's range", {**GOOD, "chunk_seconds": 100}, "chunk_seconds"),
    ("prompt as a number", {**GOOD, "prompt": 42}, "prompt"),
    ("name too long for a file", {**GOOD, "name": "n" * 250}, "250 bytes in UTF-8"),
    ("name of 255 bytes in three-byte letters", {**GOOD, "name": "狐" * 85}, "255 bytes in UTF-8"),
    ("name that is a Windows device", {**GOOD, "name": "AUX"}, "Windows device name"),
    ("name with a no-break space", {**GOOD, "name": "red\xa0fox"}, "NO-BREAK SPACE"),
    ("name of dots", {**GOOD, "name": ".."}, "name"),
    ("lone surrogate in the prompt", {**GOOD, "prompt": "a fox \ud83e"}, "lone UTF-16 surrogate"),
    ("bidi override in the prompt", {**GOOD, "prompt": "a fox \u202e"}, "bidirectional override"),
    ("C1 control in the prompt", {**GOOD, "prompt": "a fox \x9b2J"}, "control characters"),
]


@pytest.mark.parametrize(("case", "job", "words"), JOBS, ids=[c[0] for c in JOBS])
def test_bad_job_is_refused_with_its_field(tmp_path, capsys, case, job, words):
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job, allow_nan=True))
    assert main(["validate", str(path)]) == 2, case
    err = capsys.readouterr().err
    assert err.startswith("error:") and words in err and "Traceback" not in err


@pytest.mark.parametrize(
    "prompt",
    ["Ein Fuchs läuft durch den Schnee — 雪の中の狐 🦊", "שועל בשלג", "a fox\nsecond line\tindented"],
    ids=["accents, CJK and emoji", "right-to-left", "newline and tab"],
)
def test_unicode_prompts_are_accepted(tmp_path, capsys, prompt):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({**GOOD, "prompt": prompt}))
    assert main(["validate", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


FILES = [
    ("YAML that is a list", "- a\n- b\n", "mapping"),
    ("broken YAML", "prompt: [unclosed\n", "job file"),
    ("binary garbage", b"\x00\xff\xfe" * 50, "job file"),
    ("empty file", "", "job file"),
]


@pytest.mark.parametrize(("case", "content", "words"), FILES, ids=[c[0] for c in FILES])
def test_unreadable_job_files(tmp_path, capsys, case, content, words):
    path = tmp_path / "job.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["validate", str(path)]) == 2, case
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_missing_job_file_and_directory(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert main(["validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "Traceback" not in err


OUTPUTS = [
    ("bucket name with capitals", ["--output", "s3://Bad_Bucket/x"], "bucket"),
    ("unknown scheme", ["--output", "ftp://host/x"], "ftp"),
    ("traversal in the prefix", ["--output", "s3://bucket/../../x"], ".."),
    ("traversal in the key template", ["--output", "s3://bucket/p", "--key-template", "../{name}.{ext}"], ".."),
    ("unknown key field", ["--output", "s3://bucket/p", "--key-template", "{secret}.{ext}"], "secret"),
    ("sidecar over the MP4", ["--output", "s3://bucket/p", "--key-template", "{job}"], "one key"),
    ("no campaign in a render", ["--output", "s3://bucket/p", "--key-template", "{campaign}/{job}"], "campaign"),
    ("unclosed brace", ["--output", "s3://bucket/p", "--key-template", "{job"], "not a template"),
    ("positional field", ["--output", "s3://bucket/p", "--key-template", "{}.{ext}"], "unnamed field"),
    ("percent-encoded dots", ["--output", "s3://bucket/p", "--key-template", "%2e%2e/{job}.{ext}"], "'%'"),
    ("backslash", ["--output", "s3://bucket/p", "--key-template", "..\\{job}.{ext}"], "'\\\\'"),
    ("double slash", ["--output", "s3://bucket/p", "--key-template", "a//{job}.{ext}"], "empty component"),
    ("key over 1024 bytes", ["--output", "s3://bucket/" + "p" * 1000, "--name", "n" * 50], "1024"),
    (  # the default key is the output file's name, which every valid name fits: a template adds to it
        "key part too long for a folder",
        ["--output", "out", "--name", "n" * 193, "--seed", str(2**63 - 1), "--key-template", "{job}-{hash}.{ext}"],
        "file name",
    ),
    ("a key template for a named MP4", ["--output", "s3://bucket/p/x.mp4", "--key-template", "{job}.{ext}"], "itself"),
    ("a space in the MP4's name", ["--output", "clips/my clip.mp4"], "the file name holds ' '"),
]


@pytest.mark.parametrize(("case", "flags", "words"), OUTPUTS, ids=[c[0] for c in OUTPUTS])
def test_bad_destinations_are_refused_before_rendering(tmp_path, capsys, case, flags, words):
    path = tmp_path / "job.json"
    path.write_text(json.dumps(GOOD))
    assert main(["render", str(path), "--out", str(tmp_path / "out"), *flags]) == 2, case
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


def _manifest(tmp_path: Path, **fields) -> Path:
    data = {"campaign": "spring", "defaults": GOOD, "rows": [{"id": "a", "prompt": "x"}], **fields}
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


MANIFESTS = [
    ("campaign name with a slash", {"campaign": "a/b"}, "campaign"),
    ("rows file outside the manifest's folder", {"rows": None, "rows_file": "../../etc/passwd"}, "rows_file"),
    ("window at 25:00", {"window": {"start": "25:00", "end": "07:00", "tz": "UTC"}}, "window"),
    ("unknown time zone", {"window": {"start": "20:00", "end": "07:00", "tz": "Mars/Olympus"}}, "tz"),
    ("zero variations", {"variations": 0}, "variations"),
    ("negative budget", {"budget_gpu_seconds": -5}, ("budget_gpu_seconds: -5", "must be a positive number of seconds")),
    (
        "an MP4 as the output",
        {"output": "s3://renders/spring/all.mp4"},
        ("output:", "names one MP4", "e.g. 's3://renders/spring'"),
    ),
]


@pytest.mark.parametrize(("case", "fields", "words"), MANIFESTS, ids=[c[0] for c in MANIFESTS])
def test_bad_manifests(tmp_path, capsys, case, fields, words):
    fields = {k: v for k, v in fields.items() if v is not None}
    path = _manifest(tmp_path, **fields)
    if "rows_file" in fields:
        data = yaml.safe_load(path.read_text())
        data.pop("rows")
        path.write_text(yaml.safe_dump(data))
    code = main(["campaign", "--db", str(tmp_path / "db"), "submit", str(path)])
    out = capsys.readouterr()
    assert code == 2, case  # nothing queued
    assert all(w in out.err for w in ((words,) if isinstance(words, str) else words)), out.err
    assert "Traceback" not in out.err
    assert "is not a manifest field" not in out.err  # each case breaks a real field, not a misspelt one


def test_a_bad_row_is_skipped_with_exit_code_3_and_the_good_rows_are_queued(tmp_path, capsys):
    from cluster.campaign_store import Store

    path = _manifest(tmp_path, rows=[{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    assert main(["campaign", "--db", str(tmp_path / "db"), "submit", str(path)]) == 3
    out = capsys.readouterr()
    assert (
        out.out == "spring: 1 job(s) queued, 0 already known\n  skipped row 2 (a): id: 'a' duplicates the id of row 1\n"
    )
    assert out.err == ""
    store = Store(tmp_path / "db")
    try:
        assert store.counts("spring")["queued"] == 1
    finally:
        store.close()


def _checkpoint_flags(tiny_set, checkpoint: Path) -> list[str]:
    return [
        "--checkpoint",
        str(checkpoint),
        "--gemma-root",
        str(tiny_set.gemma_root),
        "--spatial-upsampler",
        str(tiny_set.spatial_upsampler),
        "--distilled-lora",
        str(tiny_set.distilled_lora),
    ]


def _safetensors(path: Path, header: dict | list | bytes, data: bytes = b"\0" * 16) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _f32(begin: int, end: int, shape: list | None = None) -> dict:
    return {"dtype": "F32", "shape": [(end - begin) // 4] if shape is None else shape, "data_offsets": [begin, end]}


# (case id, header, words the message must contain); each file is refused from its header alone
CHECKPOINTS = [
    ("overlapping tensors", {"a": _f32(0, 8), "b": _f32(4, 12)}, "overlapping tensors"),
    ("a gap between tensors", {"a": _f32(0, 4), "b": _f32(8, 16)}, "or a gap"),
    ("data not starting at 0", {"a": _f32(4, 16)}, "starts at byte 4"),
    ("shape larger than its bytes", {"a": _f32(0, 8, [4])}, "16 bytes, but its data_offsets [0, 8] hold 8"),
    ("transposed byte count", {"a": {"dtype": "BF16", "shape": [3, 3], "data_offsets": [0, 16]}}, "18 bytes"),
    ("unknown dtype", {"a": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, '"Q9"'),
    ("overflowing shape", {"a": _f32(0, 16, [2**62, 2**62])}, "85070591730234615865843651857942052864 bytes"),
    ("negative offset", {"a": {"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}}, "not two byte positions"),
    ("a boolean in a shape", {"a": _f32(0, 16, [True, 4])}, "not a list of whole numbers"),
    ("a float in a shape", {"a": _f32(0, 16, [4.0])}, "not a list of whole numbers"),
    ("a tensor that is not an object", {"a": [0, 16]}, "not an object"),
    ("offsets past the end (truncated)", {"a": _f32(0, 4096)}, "truncated: 4080 bytes missing"),
    ("bytes after the last tensor", {"a": _f32(0, 8)}, "8 bytes after the last tensor"),
    ("header that is a JSON list", [{"a": _f32(0, 16)}], "header is not a JSON object"),
    (
        "metadata not string to string",
        {"__metadata__": {"config": {"transformer": {}}}, "a": _f32(0, 16)},
        "__metadata__",
    ),
    (
        "a tensor named twice",
        b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"a":{"dtype":"F32","shape":[4],'
        b'"data_offsets":[0,16]}}',
        'names "a" twice',
    ),
    ("NaN in the header", b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"n":NaN}', "holds NaN"),
    ("a header nested past the recursion limit", b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
    ("a header that is not UTF-8", b'{"\xff\xfe":1}', "not UTF-8"),
    ("not JSON", b"not json at all", "header is not JSON"),
]


@pytest.mark.parametrize(("case", "header", "words"), CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_hostile_safetensors_headers(tmp_path, capsys, tiny_set, case, header, words):
    path = _safetensors(tmp_path / "ltx-2.safetensors", header)
    assert main(["models", "check", *_checkpoint_flags(tiny_set, path)]) == 2, case
    err = capsys.readouterr().err
    assert words in err and str(path) in err and "Traceback" not in err, err
    assert err.count("\n") == 1  # one line


def test_header_length_beyond_the_file(tmp_path, capsys, tiny_set):
    path = tmp_path / "ltx-2.safetensors"
    path.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    assert main(["models", "check", *_checkpoint_flags(tiny_set, path)]) == 2
    assert "bad header length: 1152921504606846976 bytes, in a file of 10" in capsys.readouterr().err


def test_a_header_over_the_safetensors_limit_is_not_read(tmp_path, capsys, tiny_set):
    """A length of 200 MiB in a (sparse) 300 MiB file: within the file, over safetensors' 100 MiB limit."""
    path = tmp_path / "ltx-2.safetensors"
    with path.open("wb") as f:
        f.write(struct.pack("<Q", 200 * 2**20) + b"{")
        f.truncate(300 * 2**20)
    assert main(["models", "check", *_checkpoint_flags(tiny_set, path)]) == 2
    err = capsys.readouterr().err
    assert "bad header length: 209715200 bytes" in err and "at most 104857600" in err


def test_an_empty_file(tmp_path, capsys, tiny_set):
    path = tmp_path / "ltx-2.safetensors"
    path.write_bytes(b"")
    assert main(["models", "check", *_checkpoint_flags(tiny_set, path)]) == 2
    assert "not a safetensors file: only 0 bytes" in capsys.readouterr().err


def test_a_folder_given_as_the_checkpoint(tmp_path, capsys, tiny_set):
    assert main(["models", "check", *_checkpoint_flags(tiny_set, tmp_path)]) == 2
    assert "is a folder, not a safetensors file" in capsys.readouterr().err


def test_pickled_weights_are_never_unpickled(tmp_path, capsys, tiny_set):
    """A pickle that would run code when loaded: refused as not safetensors, and never executed."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "ltx-2.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": Exploit()}))
    assert main(["models", "check", *_checkpoint_flags(tiny_set, path)]) == 2
    assert "not a safetensors file" in capsys.readouterr().err
    assert not marker.exists()


def _shown_raw(text: str) -> list[str]:
    """Characters that would reach the terminal unescaped and act on it (anything not printable but a newline)."""
    return [c for c in text if not c.isprintable() and c != "\n"]


def test_a_json_manifest_with_escaped_emoji_is_queued(tmp_path, capsys):
    from cluster.campaign_store import Store

    path = tmp_path / "m.json"
    path.write_text(json.dumps({"campaign": "fox", "defaults": GOOD, "rows": [{"id": "a", "prompt": "a fox 🦊"}]}))
    assert "\\ud83e\\udd8a" in path.read_text()
    assert main(["campaign", "--db", str(tmp_path / "db"), "submit", str(path)]) == 0
    assert "1 job(s) queued" in capsys.readouterr().out
    store = Store(tmp_path / "db")
    try:
        assert json.loads(store.jobs("fox")[0]["spec"])["prompt"] == "a fox 🦊"
    finally:
        store.close()


@pytest.mark.parametrize("output", ["s3://renders/spring/all.mp4", "all.MP4", "file:///srv/out/all.mp4"])
def test_a_campaign_output_naming_one_mp4_is_one_line_before_anything_is_made(tmp_path, capsys, output):
    """A campaign writes an MP4 a job: a destination that names one is refused, the store not even made."""
    assert main(["campaign", "--db", str(tmp_path / "db"), "submit", str(_manifest(tmp_path, output=output))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the manifest is invalid: output: "), err
    assert "names one MP4" in err and "give a folder or prefix" in err
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("template", ["{campaign}/{job}", "{campaign}/../{job}.{ext}"])
def test_a_manifest_key_template_is_refused_before_anything_is_queued(tmp_path, capsys, template):
    from cluster.campaign_store import Store

    path = _manifest(tmp_path, output="s3://renders/spring", key_template=template)
    assert main(["campaign", "--db", str(tmp_path / "db"), "submit", str(path)]) == 2
    assert "key_template" in capsys.readouterr().err
    store = Store(tmp_path / "db")
    try:
        assert store.campaign_names() == []
    finally:
        store.close()


@pytest.mark.parametrize("flag", ["--prompt", "--name", "--negative-prompt"])
def test_arguments_that_are_not_utf8_are_refused(capsys, flag):
    """Linux hands Python undecodable argv bytes as lone surrogates (surrogateescape): refused, and the message,
    which shows the value, still prints."""
    args = ["validate", "--prompt", "rain", "--height", "128", "--width", "192", "--frames", "17"]
    assert main([*args, flag, "caf\udce9"]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 (0xE9" in err and "caf\\udce9" in err


HOSTILE = "\x1b]0;pwned\x07\x1b[2J\r\x9b31m\u202e"


def test_input_never_reaches_the_terminal_unescaped(tmp_path, capsys):
    """Row ids, prompts, field names and paths from input are shown escaped by every print path; --json stays JSON."""
    rows = [{"id": "good", "prompt": "x"}, {"id": f"evil{HOSTILE}", "prompt": "x"}, {"id": "p", "prompt": HOSTILE}]
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"campaign": "spring", "defaults": GOOD, "rows": [*rows, {"id": "f", HOSTILE: 1}]}))
    db = str(tmp_path / "db")
    assert main(["campaign", "--db", db, "submit", str(path)]) == 3  # the good row queued, three refused
    out = capsys.readouterr()
    assert out.out.count("skipped row") == 3 and not _shown_raw(out.out + out.err), ascii(out.out)
    assert "evil\\x1b]0;pwned\\x07" in out.out
    assert main(["campaign", "--db", db, "submit", str(path), "--json"]) == 3
    payload = json.loads(capsys.readouterr().out)  # the JSON carries the values, escaped as JSON does
    assert {p["id"] for p in payload["invalid_rows"]} >= {f"evil{HOSTILE}", "p"}

    job = tmp_path / f"job{HOSTILE}.json"  # a file name is input too
    job.write_text(json.dumps(GOOD))
    assert main(["validate", str(job)]) == 0
    assert main(["validate", str(job), "--prompt", HOSTILE]) == 2
    assert main(["campaign", "--db", db, "pause", f"no{HOSTILE}"]) == 5  # not found
    out = capsys.readouterr()
    assert "valid" in out.out and out.err.count("error:") == 2
    assert not _shown_raw(out.out + out.err), ascii(out.out + out.err)


CONFLICTS = [
    (["validate", "--frames", "17", "--duration", "5"], "--frames 17 and --duration 5 both set the video's length"),
    (["plan", "--duration", "2", "--frames", "49"], "--frames 49 and --duration 2 both set the video's length"),
    (["render", "--resolution", "1920x1088", "--height", "512"], "--resolution 1920x1088 and --height 512"),
    (["validate", "--resolution", "1920x1088", "--width", "768"], "--resolution 1920x1088 and --width 768"),
    (["render", "--prompt", "x", "--profile", "team"], "--profile team only applies to an upload: give --output"),
    (["render", "--prompt", "x", "--region", "eu-west-1"], "--region eu-west-1 only applies to an upload"),
]


@pytest.mark.parametrize(("argv", "words"), CONFLICTS, ids=[" ".join(c[0][:3]) for c in CONFLICTS])
def test_flags_that_would_drop_each_other_are_refused(tmp_path, capsys, argv, words):
    """Two flags that set one thing, or one that only applies with another: one would be dropped without a word."""
    assert main([*argv, "--json"] if argv[0] != "render" else [*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {words}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def _store_with_a_campaign(tmp_path: Path) -> Path:
    db = tmp_path / "farm.db"
    assert main(["campaign", "--db", str(db), "submit", str(_manifest(tmp_path))]) == 0
    return db


@pytest.mark.parametrize(
    "action",
    [["status", "sprnig"], ["logs", "sprnig"], ["retry-failed", "sprnig"], ["pause", "sprnig"], ["cancel", "nope"]],
    ids=lambda a: a[0],
)
def test_an_unknown_campaign_is_not_found(tmp_path, capsys, action):
    db = _store_with_a_campaign(tmp_path)
    capsys.readouterr()
    assert main(["campaign", "--db", str(db), *action]) == 5
    err = capsys.readouterr().err
    assert err.startswith(f"error: campaign {action[1]!r}: no such campaign in {db}") and err.count("\n") == 1, err
    assert ("did you mean 'spring'?" in err) is (action[1] == "sprnig")


def test_an_unknown_job_is_not_found_and_a_wrong_transition_is_refused(tmp_path, capsys):
    db = _store_with_a_campaign(tmp_path)
    capsys.readouterr()
    assert main(["campaign", "--db", str(db), "pause", "spring", "--job", "b"]) == 5
    assert "error: job 'b': campaign 'spring' has no such job" in capsys.readouterr().err
    assert main(["campaign", "--db", str(db), "resume", "spring", "--job", "a", "--json"]) == 2
    out = capsys.readouterr()
    assert json.loads(out.out)["ok"] is False
    assert out.err == "error: job 'a' of campaign 'spring' is queued: only a paused or cancelled job can be resumed\n"


def test_a_job_left_running_by_a_crashed_runner_can_be_paused_and_cancelled(tmp_path, capsys):
    """The runner claimed the job and died (its claim is all it did); the command line still stops it."""
    from cluster.campaign_store import Store

    db = _store_with_a_campaign(tmp_path)
    Store(db).claim("spring", "worker-0")
    assert main(["campaign", "--db", str(db), "pause", "spring", "--job", "a"]) == 0
    assert main(["campaign", "--db", str(db), "resume", "spring", "--job", "a"]) == 0
    Store(db).claim("spring", "worker-0")
    assert main(["campaign", "--db", str(db), "cancel", "spring", "--job", "a", "--json"]) == 0
    assert Store(db).job_state("spring", "a") == "cancelled"
    capsys.readouterr()
    assert main(["campaign", "--db", str(db), "status", "spring", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "finished" and status["jobs"]["cancelled"] == 1
