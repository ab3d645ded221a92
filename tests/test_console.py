"""What commands show on stderr: stage bars that end at their totals with sane rates, drawn once per update; JSON
lines where stderr is not a terminal; no library banners unless --verbose; `campaign logs` one line per attempt,
and `--full` the whole error without escape codes; no `--snap` offered where there is none."""

from __future__ import annotations

import io
import itertools
import json
import os
import pty
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.campaign_manifest import parse_manifest
from cluster.campaign_runner import error_texts
from cluster.campaign_store import Store
from cluster.console import CampaignProgress, Screen, StageProgress, busy_seconds, draws_bars
from cluster.model_choice import TINY_NOTE
from cluster.replies import WorkerProgress
from jobs.fallback import OOM_LADDER
from jobs.text import without_escapes
from tests.conftest import CACHE

TINY_RENDER = ["render", "--tiny", "--prompt", "rain on a tin roof", "--frames", "9", "--height", "64", "--width", "64"]
STEPS = 4
STAGE_2_STEPS = 3  # the official stage 2: three distilled sigmas
LIBRARY_CHATTER = ("slow image processor", "Token authentication", "(RayRenderWorker", "UserWarning", "FutureWarning")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "LTX2_FARM_CACHE": str(CACHE), "LTX2_FARM_STAGING": str(tmp_path / "staging"), **extra}
    for name in ("RAY_ADDRESS", "TQDM_DISABLE", "LTX2_FARM_VERBOSE", "TRANSFORMERS_VERBOSITY"):
        if name not in extra:
            env.pop(name, None)
    return env


def _cli(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def _cli_on_a_terminal(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """The command's exit code and what it wrote to stderr, stderr a terminal (stdout a pipe)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", *args], stdout=subprocess.PIPE, stderr=follower, env=env
    )
    os.close(follower)
    written = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the command closed its end
            break
        if not chunk:
            break
        written += chunk
    os.close(leader)
    process.stdout.read()
    return process.wait(timeout=900), written.decode()


def _stage_lines(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


# --- a real render, as users run it --------------------------------------------------------------------------


def test_a_render_logs_one_json_line_per_stage_and_no_library_chatter(tmp_path):
    """stderr a pipe (a log): no bar, a JSON line per stage at its total with its own rate; nothing from
    transformers, Ray or Python warnings."""
    result = _cli(*TINY_RENDER, "--steps", str(STEPS), "--out", str(tmp_path / "out"), env=_env(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = _stage_lines(result.stderr)
    assert [(e["stage"], e["steps"]) for e in lines] == [("stage_1", STEPS), ("stage_2", STAGE_2_STEPS)]
    sidecar = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    for e in lines:
        assert 0 < e["seconds"] < sidecar["timings_s"]["total"]  # the stage's own time, within the render's
        assert e["steps_per_s"] == pytest.approx(e["steps"] / e["seconds"], rel=0.01)
    others = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert others == [TINY_NOTE, "starting worker (loading models)…"], result.stderr
    assert "\r" not in result.stderr


def test_a_render_on_a_terminal_draws_each_stage_to_its_total_once_per_step(tmp_path):
    """stderr a terminal: a bar per stage; each draw differs from the one before, the last of each stage shows its
    total, and nothing of a stage is drawn after its line ended. --verbose lets the libraries speak (the test
    above would see their lines)."""
    code, stderr = _cli_on_a_terminal(
        *TINY_RENDER, "--steps", str(STEPS), "--out", str(tmp_path / "out"), "--verbose", env=_env(tmp_path)
    )
    assert code == 0, stderr
    assert "slow image processor" in stderr  # transformers' own warning: shown with --verbose only
    lines = stderr[stderr.index("\rstage_1") :].split("\n")
    assert lines[-1] == "" and len(lines) == 3, lines  # a line per stage, ended once; nothing drawn after
    for line, stage, total in zip(lines, ("stage_1", "stage_2"), (STEPS, STAGE_2_STEPS), strict=False):
        draws = [d.removesuffix("\x1b[K") for d in line.split("\r") if d]
        assert all(d.startswith(f"{stage}: ") for d in draws), draws
        assert all(a != b for a, b in itertools.pairwise(draws)), draws  # one draw per update
        assert f"| {total}/{total} [" in draws[-1], draws
        for draw in draws:
            rate = re.search(r"([\d.]+)(s/step|step/s)\]$", draw)
            assert rate is not None, draw
            steps_per_s = float(rate[1]) if rate[2] == "step/s" else 1 / float(rate[1])
            assert 0.01 < steps_per_s < 1000, draw  # a stage's steps over its own seconds, not a poll's instant
    assert "render: 0step" not in stderr


@pytest.mark.parametrize(("tqdm_disable", "bars"), [(None, True), ("1", False), ("0", True), ("true", False)])
def test_bars_only_on_a_terminal_without_tqdm_disable(monkeypatch, tqdm_disable, bars):
    leader, follower = pty.openpty()
    if tqdm_disable is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", tqdm_disable)
    with open(follower, "w") as terminal:
        assert draws_bars(terminal) is bars
    os.close(leader)
    assert draws_bars(io.StringIO()) is False


# --- stage progress from polls ---------------------------------------------------------------------------------


def _polls(*seen: int, stage_1: int = 8, stage_2: int = 3) -> list[WorkerProgress]:
    """A job's progress as a worker records it (`WorkerProgress.stepped`, each step 0.5 s), and the records the
    head's polls happen to see: the indexes `seen` of every record in order (a poll misses steps)."""
    records, p = [], WorkerProgress("starting", job="j.mp4")
    for stage, total in (("stage_1", stage_1), ("stage_2", stage_2)):
        for step in range(1, total + 1):
            p = p.stepped(stage, step, total, 0.5)
            records.append(p)
    p = p.stepped("mux", 0, 0)
    records.append(p)
    records.append(p.stepped("idle", 0, 0))
    return [records[i] for i in seen]


def test_a_stage_whose_last_step_no_poll_saw_still_ends_at_its_total():
    stream = io.StringIO()
    progress = StageProgress(Screen(stream), bars=False)
    for p in _polls(0, 3, 6, 9, 12, 12):  # stage_1 seen at 1, 4, 7 of 8; stage_2 at 2 of 3; then idle, twice
        progress.show(p)
    progress.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines == [
        {"event": "stage", "job": "j.mp4", "stage": "stage_1", "steps": 8, "seconds": 4.0, "steps_per_s": 2.0},
        {"event": "stage", "job": "j.mp4", "stage": "stage_2", "steps": 3, "seconds": 1.5, "steps_per_s": 2.0},
    ]


@pytest.mark.parametrize(
    ("seen", "shown"),
    [
        ((0, 0, 3, 3, 7, 10, 10, 11, 12, 12), ["1/8", "4/8", "8/8", "3/3"]),  # the same record again: no draw
        ((0, 3, 9, 12), ["1/8", "4/8", "8/8", "2/3", "3/3"]),  # each stage's end drawn though no poll saw it
    ],
)
def test_bars_draw_when_a_step_advances_and_end_each_stage_once(seen, shown):
    stream = io.StringIO()
    progress = StageProgress(Screen(stream), bars=True)
    for p in _polls(*seen):
        progress.show(p)
    progress.close()
    out = stream.getvalue()
    lines = out.split("\n")
    assert len(lines) == 3 and lines[-1] == ""  # each stage's line ended once, nothing drawn after
    draws = [d for line in lines for d in line.split("\r") if d]
    assert [re.search(r"\| (\d/\d) ", d)[1] for d in draws] == shown
    assert all(d.endswith("2.00step/s]\x1b[K") for d in draws)  # 0.5 s a step, as the worker timed them


# --- campaigns ---------------------------------------------------------------------------------------------


def _store(tmp_path: Path, rows: int = 2) -> Store:
    store = Store(tmp_path / "farm.db")
    m = parse_manifest(
        {
            "campaign": "c",
            "defaults": {"height": 64, "width": 64, "num_frames": 9, "steps": 2},
            "rows": [{"id": f"r{i}", "prompt": f"scene {i}"} for i in range(rows)],
        }
    )
    store.submit(m.spec, m.jobs)
    return store


def _failure() -> BaseException:
    """An error as a worker's arrives here: its text coloured as Ray colours what it forwards, its cause's long
    (a traceback longer than any summary keeps)."""
    try:
        try:
            raise ValueError("\n".join(f"  at kernel frame {i}" for i in range(80)))
        except ValueError as cause:
            raise RuntimeError("\x1b[31mCUDA error: an illegal memory access\x1b[0m\nat kernel foo") from cause
    except RuntimeError as error:
        return error
    raise AssertionError


def test_campaign_logs_one_line_per_attempt_and_the_whole_error_with_full(tmp_path):
    store = _store(tmp_path)
    first = store.claim("c", "worker-1", ladder=OOM_LADDER)
    store.oom("c", first["id"], "OutOfMemoryError: CUDA out of memory", 2.0, OOM_LADDER)
    again = store.claim("c", "worker-0", ladder=OOM_LADDER)
    assert again["id"] == first["id"] and again["rung"] == OOM_LADDER[0]
    message, trace = error_texts(_failure())
    store.fail("c", again["id"], message, 1.0, max_retries=0, trace=trace)
    store.finish("c", store.claim("c", "worker-1")["id"], {"video": "x.mp4"}, 1.0)
    store.close()
    env = _env(tmp_path)
    db = ["campaign", "--db", str(tmp_path / "farm.db")]

    logs = _cli(*db, "logs", "c", env=env)
    assert logs.returncode == 0, logs.stderr
    attempts = [line.split(" ", 2)[2] for line in logs.stdout.splitlines() if " attempt " in line]
    assert attempts[0].startswith("r0                   attempt 1 oom on worker-1, ")
    assert attempts[0].endswith(" s: OutOfMemoryError: CUDA out of memory")
    assert re.fullmatch(
        r"r0 +attempt 2 error on worker-0, \d+\.\d s, rung smaller_tiles: RuntimeError: CUDA error: an illegal "
        r"memory access at kernel foo",
        attempts[1],
    ), attempts[1]
    assert re.fullmatch(r"r1 +attempt 1 ok on worker-1, \d+\.\d s", attempts[2]), attempts[2]
    assert "\x1b" not in logs.stdout and "Traceback" not in logs.stdout

    full = _cli(*db, "logs", "c", "--job", "r0", "--full", env=env)
    assert full.returncode == 0, full.stderr
    assert "\x1b" not in full.stdout and "r1" not in full.stdout
    assert "Traceback (most recent call last)" in full.stdout
    assert len(trace) > 2000
    for line in without_escapes(trace).splitlines():  # every line of it: nothing cut
        assert line in full.stdout
    assert "RuntimeError: CUDA error: an illegal memory access" in full.stdout

    records = json.loads(_cli(*db, "logs", "c", "--json", env=env).stdout)
    attempt = next(r for r in records if r["event"] == "attempt" and r["attempt"] == 2)
    assert attempt["rung"] == "smaller_tiles" and attempt["worker"] == "worker-0" and attempt["seconds"] >= 0
    assert _cli(*db, "logs", "c", "--job", "r9", env=env).returncode == 5  # no such job: named, nearest given


def test_campaign_progress_is_a_json_line_per_attempt_without_a_terminal(tmp_path):
    """What a log (the image: TQDM_DISABLE, no terminal) shows of a campaign run: each attempt once, as it ends."""
    store = _store(tmp_path, rows=3)
    stream = io.StringIO()
    progress = CampaignProgress(Screen(stream), bars=False, ended_attempts=store.ended_attempts)
    progress.open(3)
    a = store.claim("c", "worker-0")
    store.fail("c", a["id"], "ValueError: bad", 0.5, max_retries=1)
    progress.show({"done": 0, "failed": 0, "retried": 1})
    progress.show({"done": 0, "failed": 0, "retried": 1})  # nothing new ended: nothing written
    store.finish("c", store.claim("c", "worker-1")["id"], {"video": "x"}, 1.0)
    progress.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["job"], e["outcome"], e["worker"], e["error"]) for e in lines] == [
        ("r0", "retried", "worker-0", "ValueError: bad"),
        ("r0", "ok", "worker-1", None),  # retried first (the oldest queued job)
    ]


def test_the_campaign_bar_draws_once_per_change_and_rates_over_busy_time(tmp_path):
    store = _store(tmp_path)
    stream = io.StringIO()
    progress = CampaignProgress(Screen(stream), bars=True, ended_attempts=store.ended_attempts)
    progress.open(2)
    progress.show({"done": 0, "failed": 0, "retried": 0})  # the same counts: no draw
    store.finish("c", store.claim("c", "worker-0")["id"], {"video": "x"}, 1.0)
    with sqlite3.connect(tmp_path / "farm.db") as db:  # the job ran 8 s, all of them before this bar opened
        db.execute("UPDATE attempts SET started = ended - 8.0")
    progress.show({"done": 1, "failed": 0, "retried": 0})
    progress.close()
    out = stream.getvalue()
    draws = [d for d in out.replace("\n", "").split("\r") if d]
    assert [re.search(r"\| (\d/\d) ", d)[1] for d in draws] == ["0/2", "1/2"]  # open, a job; the end: its line
    assert "[00:08<00:08,  8.00s/job, failed=0, retried=0]" in draws[1]  # not the second the bar was open
    assert out.endswith("\n") and out.count("\n") == 1


def test_a_campaign_run_logs_a_json_line_per_attempt_and_no_library_chatter(tmp_path):
    """`campaign run` as the image runs it (TQDM_DISABLE set, stderr a log) on the embedded Ray cluster: a JSON line
    per attempt that ended, nothing from Ray, its workers, transformers or Python warnings."""
    manifest = tmp_path / "c.yaml"
    manifest.write_text(
        "campaign: c\ndefaults: {height: 64, width: 64, num_frames: 9, steps: 2, seed: 1}\nrows:\n"
        "  - {id: ok, prompt: rain}\n  - {id: broken, prompt: x, video_guidance: {stg_blocks: [7]}}\n"
    )
    env = _env(tmp_path, TQDM_DISABLE="1")
    db = ["campaign", "--db", str(tmp_path / "farm.db")]
    assert _cli(*db, "submit", str(manifest), env=env).returncode == 0
    run = _cli(*db, "run", "--tiny", "--out", str(tmp_path / "out"), env=env)
    assert run.returncode == 4, run.stderr[-3000:]  # the broken job failed (the tiny model has 2 blocks)
    lines = run.stderr.splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert sorted((e["job"], e["attempt"], e["outcome"]) for e in events) == [
        ("broken", 1, "retried"),
        ("broken", 2, "retried"),
        ("broken", 3, "error"),
        ("ok", 1, "ok"),
    ]
    assert all(e["worker"] == "worker-0" and e["seconds"] > 0 for e in events)
    assert all("names blocks [7], but the model has 2" in e["error"] for e in events if e["job"] == "broken")
    others = [line for line in lines if not line.startswith("{")]
    assert others == [
        TINY_NOTE,
        "error: 1 job(s) failed: `ltx2-farm campaign status` and `campaign logs NAME` say which and why",
    ]


def test_busy_seconds_counts_overlaps_once_and_idle_gaps_not_at_all():
    assert busy_seconds([]) == 0
    assert busy_seconds([(0, 10), (5, 12), (100, 101)]) == 13  # two jobs at once, then an idle hour-like gap
    assert busy_seconds([(3, 4), (0, 10)]) == 10


# --- messages -----------------------------------------------------------------------------------------------


def test_snap_is_offered_only_by_the_commands_that_have_it(tmp_path):
    env = _env(tmp_path)
    validate = _cli("validate", "--prompt", "x", "--height", "500", "--frames", "17", env=env)
    assert validate.returncode == 2
    assert validate.stderr.endswith("  --snap moves height to their nearest valid values and says so\n")
    manifest = tmp_path / "c.yaml"
    manifest.write_text("campaign: c\nrows:\n  - {id: a, prompt: x, height: 500}\n  - {id: b, promt: y}\n")
    submit = _cli("campaign", "--db", str(tmp_path / "farm.db"), "submit", str(manifest), env=env)
    assert submit.returncode == 3
    assert "--snap" not in submit.stdout + submit.stderr
    assert "skipped row 1 (a): height: 500 is not a multiple of 64" in submit.stdout
    assert "skipped row 2 (b): promt is not a job field; did you mean 'prompt'?" in submit.stdout
