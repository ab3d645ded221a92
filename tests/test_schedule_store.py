"""Scheduling policy against a controllable clock, and the SQLite store's transitions."""

from __future__ import annotations

import datetime as dt
import sqlite3
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from cluster.campaign_manifest import parse_manifest
from cluster.campaign_store import QUARANTINE_AFTER, NotFound, StateError, Store
from jobs.schedule import CampaignState, allocate, blocked_reason, in_window, next_window_open
from jobs.windows import WindowSpec

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


def test_a_campaign_submitted_again_keeps_its_key_template_unless_the_manifest_names_one(tmp_path):
    """Its outputs stay under the keys they have: a stored campaign of an older default (which put the seed twice)
    submitted again without `key_template` keeps it; a manifest that names one changes it."""
    store = Store(tmp_path / "db")
    older = "{campaign}/{job}-seed{seed}.{ext}"
    store.submit(manifest(output="s3://camp/out", key_template=older).spec, manifest().jobs)
    store.submit(manifest(output="s3://camp/out").spec, manifest(n=4).jobs)
    assert store.campaign_spec("c").key_template == older
    store.submit(manifest(output="s3://camp/out", key_template="{campaign}/{job}.{ext}").spec, manifest(n=4).jobs)
    assert store.campaign_spec("c").key_template == "{campaign}/{job}.{ext}"
    store.submit(manifest("new").spec, manifest("new").jobs)
    assert store.campaign_spec("new").key_template == "{campaign}/{job}.{ext}"  # the default, seed once


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
    assert store.recover() == {"requeued": 2, "quarantined": 0, "cancelled": 0}  # a crash: both go back
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
    with pytest.raises(NotFound, match="campaign 'nope': no such campaign"):
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


def test_unknown_names_are_not_found_with_the_nearest_known(tmp_path):
    store = Store(tmp_path / "db")
    m = manifest("spring")
    store.submit(m.spec, m.jobs)
    for call in (
        lambda: store.campaign_row("sprign"),
        lambda: store.logs("sprign"),
        lambda: store.retry_failed("sprign"),
        lambda: store.set_job_state("sprign", "r0", "paused"),
    ):
        with pytest.raises(NotFound) as info:
            call()
        assert str(info.value).startswith("campaign 'sprign': no such campaign in ")
        assert "did you mean 'spring'?" in str(info.value) and "campaign list" in str(info.value)
    with pytest.raises(NotFound, match="job 'r00': campaign 'spring' has no such job; did you mean 'r0'"):
        store.set_job_state("spring", "r00", "paused")
    with pytest.raises(StateError, match="job 'r0' of campaign 'spring' is queued: only a paused or cancelled job"):
        store.set_job_state("spring", "r0", "queued")


def test_a_campaign_finishes_when_no_job_is_left_and_reopens_for_new_work(tmp_path):
    store = Store(tmp_path / "db")
    m = manifest(n=2, max_task_retries=0)
    store.submit(m.spec, m.jobs)
    a, b = store.claim("c", "w"), store.claim("c", "w")
    store.finish("c", a["id"], {"video": "x"}, 1.0)
    assert store.campaign_row("c")["state"] == "active"  # b still runs
    assert store.fail("c", b["id"], "boom", 1.0, max_retries=0) == "failed"
    assert store.campaign_row("c")["state"] == "finished"
    assert blocked_reason(store.campaign_state("c"), at(0, 12)) == "finished"
    assert store.logs("c")[-1]["message"] == "campaign finished: 1 done, 1 failed"
    assert store.retry_failed("c") == 1 and store.campaign_row("c")["state"] == "active"
    store.set_job_state("c", b["id"], "cancelled")
    assert store.campaign_row("c")["state"] == "finished"
    bigger = manifest(n=3)  # a resubmission with one more row
    assert store.submit(bigger.spec, bigger.jobs)["new"] == 1
    assert store.campaign_row("c")["state"] == "active"


def test_a_store_of_an_older_runner_settles_its_finished_campaigns_on_open(tmp_path):
    store = Store(tmp_path / "db")
    m = manifest(n=1)
    store.submit(m.spec, m.jobs)
    store.finish("c", store.claim("c", "w")["id"], {"video": "x"}, 1.0)
    store.close()
    with sqlite3.connect(tmp_path / "db") as db:  # what a runner before `finished` left: done, but active
        db.execute("UPDATE campaigns SET state='active'")
    assert Store(tmp_path / "db").campaign_row("c")["state"] == "finished"


def test_an_operator_can_pause_or_cancel_a_job_stuck_running(tmp_path):
    """A runner claimed two jobs and crashed (its store is simply left); another process pauses one and cancels
    the other. Whatever the dead runner's twin would still report for them is ignored."""
    crashed = Store(tmp_path / "db")
    m = manifest(n=3)
    crashed.submit(m.spec, m.jobs)
    a, b = crashed.claim("c", "w"), crashed.claim("c", "w")
    operator = Store(tmp_path / "db")
    operator.set_job_state("c", a["id"], "paused")
    operator.set_job_state("c", b["id"], "cancelled")
    assert {j["id"]: j["state"] for j in operator.jobs("c")} == {"r0": "paused", "r1": "cancelled", "r2": "queued"}
    assert [x["outcome"] for x in operator.attempts("c")] == ["paused", "cancelled"]  # no attempt left open
    assert crashed.finish("c", b["id"], {"video": "late"}, 1.0) is False  # a late result: the operator's word wins
    assert crashed.fail("c", a["id"], "late", 1.0, max_retries=0) == "paused"
    assert operator.job_state("c", b["id"]) == "cancelled" and operator.job_state("c", a["id"]) == "paused"
    assert operator.recover()["requeued"] == 0  # nothing was left running
    operator.set_job_state("c", a["id"], "queued")
    assert operator.claim("c", "w")["id"] == a["id"]


def test_recover_quarantines_a_job_running_at_each_of_the_last_crashes(tmp_path):
    store = Store(tmp_path / "db")
    m = manifest(n=2)
    store.submit(m.spec, m.jobs)
    for crash in range(1, QUARANTINE_AFTER + 1):
        poison = store.claim("c", "w")
        assert poison["id"] == "r0"  # the oldest: claimed first after each restart
        recovered = store.recover()
        assert recovered["quarantined"] == (crash == QUARANTINE_AFTER), (crash, recovered)
    job = next(j for j in store.jobs("c") if j["id"] == "r0")
    assert job["state"] == "failed"
    assert job["error"].startswith(f"quarantined: the runner crashed {QUARANTINE_AFTER} times while it ran")
    assert "campaign retry-failed c" in job["error"]
    assert store.claim("c", "w")["id"] == "r1"  # the others go on
    store.recover()  # r1 was running at one crash only: requeued
    assert store.job_state("c", "r1") == "queued"
    store.retry_failed("c")  # once the cause is fixed, the count starts again
    store.claim("c", "w")
    assert store.recover() == {"requeued": 1, "quarantined": 0, "cancelled": 0}
    assert store.job_state("c", "r0") == "queued"


def test_crashes_in_a_row_only_count_towards_a_quarantine(tmp_path):
    """Two crashes, then an ordinary failed attempt, then one more crash: not three in a row."""
    store = Store(tmp_path / "db")
    m = manifest(n=1, max_task_retries=5)
    store.submit(m.spec, m.jobs)
    for _ in range(2):
        store.claim("c", "w")
        store.recover()
    store.fail("c", store.claim("c", "w")["id"], "worker error", 1.0, max_retries=5)
    store.claim("c", "w")
    assert store.recover()["quarantined"] == 0 and store.job_state("c", "r0") == "queued"


def test_recover_cancels_the_running_jobs_of_a_cancelled_campaign(tmp_path):
    store = Store(tmp_path / "db")
    m = manifest(n=2)
    store.submit(m.spec, m.jobs)
    store.claim("c", "w")
    store.set_campaign_state("c", "cancelled")  # the queued job is cancelled now; the running one at recovery
    assert store.recover() == {"requeued": 0, "quarantined": 0, "cancelled": 1}
    assert set(store.counts("c").items()) >= {("cancelled", 2), ("running", 0)}
