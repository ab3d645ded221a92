"""Scheduling policy against a controllable clock, and the SQLite store's transitions."""

from __future__ import annotations

import datetime as dt
import sqlite3
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from jobs.campaign import WindowSpec, parse_manifest
from jobs.schedule import CampaignState, allocate, blocked_reason, in_window, next_window_open
from jobs.store import Store

PARIS = ZoneInfo("Europe/Paris")
NIGHTS = WindowSpec(days="weeknights", start="20:00", end="07:00", tz="Europe/Paris")


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    """2026-11-23 is a Monday; times are Paris local."""
    return dt.datetime(2026, 11, 23 + day, hour, minute, tzinfo=PARIS)


@pytest.mark.parametrize(
    ("when", "open_"),
    [
        (at(0, 19, 59), False),
        (at(0, 20, 0), True),
        (at(1, 6, 59), True),
        (at(1, 7, 0), False),
        (at(4, 23, 0), True),  # Friday night opens
        (at(5, 6, 0), True),  # ... and runs into Saturday morning
        (at(5, 21, 0), False),  # Saturday night: no window
        (at(6, 3, 0), False),  # Sunday early morning: Saturday opened none
        (at(0, 3, 0), False),  # Monday early morning: Sunday opened none
    ],
)
def test_weeknight_window(when, open_):
    assert in_window(NIGHTS, when) is open_
    assert in_window(NIGHTS, when.astimezone(dt.UTC)) is open_  # time zones respected


def test_next_window_open():
    assert next_window_open(NIGHTS, at(5, 12)) == at(7, 20)  # Saturday noon → Monday 20:00
    assert next_window_open(NIGHTS, at(1, 3)) == at(1, 3)  # already open


def state(name: str, priority: int = 0, **kw) -> CampaignState:
    base = dict(
        name=name,
        priority=priority,
        state="active",
        not_before=None,
        window=None,
        budget_gpu_seconds=None,
        gpu_seconds_used=0.0,
        failures=0,
        max_failures=5,
        queued=10,
        running=0,
    )
    return CampaignState(**{**base, **kw})


def test_priority_then_fair_share():
    now = at(0, 12)
    assert allocate([state("low", 0), state("high", 5, queued=2)], 4, now) == ["high", "high", "low", "low"]
    assert allocate([state("a"), state("b"), state("c", running=2)], 4, now) == ["a", "b", "a", "b"]
    assert allocate([state("a", gpu_seconds_used=50), state("b")], 1, now) == ["b"]


def test_blocked_campaigns():
    now = at(0, 12)
    cases = {
        "paused": state("p", state="paused"),
        "not before": state("n", not_before=at(1, 0)),
        "outside its window": state("w", window=NIGHTS),
        "budget spent": state("b", budget_gpu_seconds=100, gpu_seconds_used=100),
        "failure cap": state("f", failures=5),
        "nothing queued": state("q", queued=0),
    }
    for reason, c in cases.items():
        assert reason in blocked_reason(c, now)
        assert allocate([c], 3, now) == []
    assert allocate([state("w", window=NIGHTS)], 1, at(0, 21)) == ["w"]
    assert allocate([state("n", not_before=at(1, 0))], 1, at(1, 0)) == ["n"]


def manifest(name: str = "c", n: int = 3, **extra):
    return parse_manifest(
        {
            "campaign": name,
            "defaults": {"height": 64, "width": 64, "num_frames": 9},
            "rows": [{"id": f"r{i}", "prompt": f"p{i}"} for i in range(n)],
            **extra,
        }
    )


def test_resubmission_is_a_no_op(tmp_path):
    store = Store(tmp_path / "db")
    m = manifest()
    assert store.submit(m.spec, m.jobs) == {"jobs": 3, "new": 3, "existing": 0}
    assert store.submit(m.spec, m.jobs) == {"jobs": 3, "new": 0, "existing": 3}
    assert store.counts("c")["queued"] == 3


def test_claim_finish_fail_retry_and_recover(tmp_path):
    store = Store(tmp_path / "db")
    m = manifest(max_task_retries=1)
    store.submit(m.spec, m.jobs)
    a = store.claim("c", "w0")
    b = store.claim("c", "w1")
    store.finish("c", a["id"], {"video": "x"}, 2.5)
    assert store.fail("c", b["id"], "boom", 1.0, max_retries=1) == "queued"  # first failure: retry
    again = store.claim("c", "w0")
    assert (again["id"], again["attempts"]) == (b["id"], 2)  # oldest queued first; second attempt
    third = store.claim("c", "w1")
    assert third["id"] == "r2"
    assert store.counts("c")["running"] == 2
    assert store.recover() == 2  # a coordinator crash: both go back to the queue
    counts = store.counts("c")
    assert (counts["running"], counts["queued"], counts["done"]) == (0, 2, 1)
    job = store.claim("c", "w0")
    assert job["id"] == b["id"]
    assert store.fail("c", job["id"], "boom", 1.0, max_retries=1) == "failed"  # third attempt > 1 retry
    row = store.campaign_row("c")
    assert row["gpu_seconds"] == pytest.approx(4.5)
    outcomes = [a["outcome"] for a in store.attempts("c")]
    assert outcomes.count("ok") == 1 and outcomes.count("interrupted") == 2 and outcomes.count("error") == 1


def test_caps_cancel_pause_and_retry_failed(tmp_path):
    store = Store(tmp_path / "db")
    m = manifest(max_task_retries=0)
    store.submit(m.spec, m.jobs)
    job = store.claim("c", "w")
    assert store.fail("c", job["id"], "x", 0.0, max_retries=0) == "failed"
    assert store.retry_failed("c") == 1
    store.set_job_state("c", "r1", "paused")
    assert store.counts("c")["paused"] == 1
    store.set_job_state("c", "r1", "queued")
    store.set_campaign_state("c", "cancelled")
    assert store.counts("c")["cancelled"] == 3
    with pytest.raises(KeyError):
        store.set_campaign_state("nope", "paused")


def test_concurrent_reader_during_writes(tmp_path):
    store = Store(tmp_path / "db")
    m = manifest(n=50)
    reader = sqlite3.connect(str(tmp_path / "db"))
    store.submit(m.spec, m.jobs)
    reader.execute("BEGIN")  # a long read transaction (status polling) does not block the writer
    before = reader.execute("SELECT COUNT(*) FROM jobs WHERE state='queued'").fetchone()[0]
    for _ in range(5):
        store.claim("c", "w")
    assert reader.execute("SELECT COUNT(*) FROM jobs WHERE state='queued'").fetchone()[0] == before  # snapshot
    reader.execute("COMMIT")
    assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert reader.execute("SELECT COUNT(*) FROM jobs WHERE state='queued'").fetchone()[0] == 45


def test_claim_prefers_the_lora_set_a_worker_holds(tmp_path):
    """A worker keeps its LoRA set while such jobs are queued and takes another set only when none is left."""
    from safetensors.numpy import save_file

    sets = []
    for name in ("a", "b"):
        save_file(
            {"x.lora_A.weight": np.zeros((1, 2), np.float32), "x.lora_B.weight": np.zeros((2, 1), np.float32)},
            str(tmp_path / f"{name}.safetensors"),
        )
        sets.append([{"path": f"{name}.safetensors"}])
    m = parse_manifest(
        {
            "campaign": "c",
            "defaults": {"height": 64, "width": 64, "num_frames": 9},
            "rows": [{"id": f"r{i}", "prompt": f"p{i}", "loras": sets[i % 2]} for i in range(4)],
        },
        base=tmp_path,
    )
    store = Store(tmp_path / "db")
    store.submit(m.spec, m.jobs)
    first = store.claim("c", "w0")  # holds nothing: the oldest job
    assert first["id"] == "r0"
    held = first["lora_set"]
    assert [store.claim("c", "w0", held)["id"] for _ in range(2)] == ["r2", "r1"]  # its set first, then the other
    assert store.claim("c", "w1", held)["id"] == "r3"
    assert store.claim("c", "w1", held) is None
