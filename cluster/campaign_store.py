"""The durable campaign store: SQLite in WAL mode (safe with concurrent readers).

Holds campaigns, jobs, attempts and a log. A job's identity inside a campaign is its content hash, so
submitting the same manifest again adds nothing. Every state change is one transaction; a coordinator
killed at any moment leaves jobs `running` that `recover()` puts back in the queue on restart, unless the
same job was running at each of the last `QUARANTINE_AFTER` crashes (then it is quarantined as failed).

The store's word wins over a runner's: an operator can pause or cancel any job, a running one included (a
runner stuck on it, or dead), and a runner's late result for a job that is no longer running is ignored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cluster.campaign_manifest import CampaignJob, CampaignSpec
from jobs.fallback import OOM_LADDER, rung_after
from jobs.schedule import CampaignState
from jobs.text import one_line, without_escapes

SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    name TEXT PRIMARY KEY,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    created REAL NOT NULL,
    gpu_seconds REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    campaign TEXT NOT NULL REFERENCES campaigns(name),
    id TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    spec TEXT NOT NULL,
    num_frames INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    output TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (campaign, id),
    UNIQUE (campaign, content_hash)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(campaign, state);
CREATE TABLE IF NOT EXISTS attempts (
    campaign TEXT NOT NULL,
    job TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker TEXT,
    started REAL NOT NULL,
    ended REAL,
    outcome TEXT,
    error TEXT,
    gpu_seconds REAL,
    rung TEXT,
    trace TEXT
);
CREATE TABLE IF NOT EXISTS log (
    ts REAL NOT NULL,
    campaign TEXT,
    job TEXT,
    message TEXT NOT NULL
);
"""

JOB_STATES = ("queued", "running", "done", "failed", "cancelled", "paused")
UNFINISHED = ("queued", "running", "paused")
"""Job states that keep a campaign from finishing."""
CAMPAIGN_STATES = ("active", "suspended", "paused", "cancelled", "finished")
"""`finished`: an active campaign none of whose jobs is queued, running or paused (every one done, failed or
cancelled); it becomes active again when a job is queued again (a new submission, `retry-failed`, a resume).
Stored in the same column as the others: a store written before `finished` existed needs no migration beyond
`settle_all` (campaigns that finished under an older runner read `active` until then)."""

JOB_TRANSITIONS = {"paused": ("queued", "running"), "queued": ("paused", "cancelled"), "cancelled": UNFINISHED}
"""The states from which an operator may pause, resume (`queued`) or cancel a job."""

ATTEMPT_COLUMNS_ADDED = ("rung", "trace")
"""Columns of `attempts` newer than the first stores: added to a store that lacks them when it is opened."""
TRACE_CHARS = 200_000
"""The most of an attempt's whole error text (its traceback) kept: far more than any traceback, less than a
runaway message."""

QUARANTINE_AFTER = 3
"""Runner crashes in a row, each with the same job running, after which `recover()` fails that job instead of
queueing it again: a job that crashes the coordinator itself (not its worker) would otherwise take the whole
farm down at every restart."""


class NotFound(KeyError):
    """A campaign or job the store does not hold; the message names it and how to find the right one."""

    def __str__(self) -> str:  # KeyError's own would quote the sentence
        return str(self.args[0]) if self.args else ""


class StateError(ValueError):
    """A transition the job's current state does not allow (resuming a job that is not paused)."""


class Store:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._add_columns()
        self.settle_all()

    def close(self) -> None:
        self._db.close()

    def _add_columns(self) -> None:
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(attempts)")}
        for name in ATTEMPT_COLUMNS_ADDED:
            if name not in columns:
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it meanwhile
                    self._db.execute(f"ALTER TABLE attempts ADD COLUMN {name} TEXT")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def log(self, message: str, campaign: str | None = None, job: str | None = None) -> None:
        self._db.execute("INSERT INTO log VALUES (?, ?, ?, ?)", (time.time(), campaign, job, message))

    # --- submission -----------------------------------------------------------------------------------

    def submit(self, spec: CampaignSpec, jobs: tuple[CampaignJob, ...], suspended: bool = False) -> dict[str, int]:
        """Add a campaign's jobs; jobs already present (same content) are left as they are. A campaign submitted
        again keeps its key template unless the manifest names one: its outputs stay under the keys they have."""
        now = time.time()
        stored = spec.model_dump(mode="json", exclude={"rows"})
        with self._tx() as db:
            row = db.execute("SELECT state, spec FROM campaigns WHERE name=?", (spec.campaign,)).fetchone()
            if row is not None and "key_template" not in spec.model_fields_set:
                stored["key_template"] = json.loads(row["spec"])["key_template"]
            if row is None:
                db.execute(
                    "INSERT INTO campaigns VALUES (?, ?, ?, ?, ?, 0)",
                    (spec.campaign, spec.priority, "suspended" if suspended else "active", json.dumps(stored), now),
                )
            else:
                db.execute(
                    "UPDATE campaigns SET priority=?, spec=? WHERE name=?",
                    (spec.priority, json.dumps(stored), spec.campaign),
                )
            added = 0
            for j in jobs:
                cur = db.execute(
                    "INSERT OR IGNORE INTO jobs (campaign, id, content_hash, spec, num_frames, state, created, updated)"
                    " VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (spec.campaign, j.id, j.content_hash, j.job.spec.model_dump_json(), j.job.num_frames, now, now),
                )
                added += cur.rowcount
            self._settle(db, spec.campaign)  # new jobs in a finished campaign make it active again
        self.log(f"submitted {len(jobs)} jobs: {added} new, {len(jobs) - added} already known", spec.campaign)
        return {"jobs": len(jobs), "new": added, "existing": len(jobs) - added}

    # --- reads ----------------------------------------------------------------------------------------

    def campaign_names(self) -> list[str]:
        return [r["name"] for r in self._db.execute("SELECT name FROM campaigns ORDER BY created")]

    def campaign_spec(self, name: str) -> CampaignSpec:
        return CampaignSpec.model_validate(json.loads(self._campaign(self._db, name)["spec"]))

    def _campaign(self, db: sqlite3.Connection, name: str) -> sqlite3.Row:
        """The campaign's row; `NotFound` naming the store and the nearest known name when there is none."""
        row = db.execute("SELECT * FROM campaigns WHERE name=?", (name,)).fetchone()
        if row is None:
            close = difflib.get_close_matches(name, self.campaign_names(), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise NotFound(
                f"campaign {name!r}: no such campaign in {self.path}; {hint}"
                "`ltx2-farm campaign list` shows the campaigns there (--db or LTX2_FARM_DB picks another store)"
            )
        return row

    def job_state(self, campaign: str, job_id: str) -> str:
        return self._job_state(self._db, campaign, job_id)

    def _job_state(self, db: sqlite3.Connection, campaign: str, job_id: str) -> str:
        """The job's state; `NotFound` naming the campaign or the job (and the nearest job id) when unknown."""
        self._campaign(db, campaign)
        row = db.execute("SELECT state FROM jobs WHERE campaign=? AND id=?", (campaign, job_id)).fetchone()
        if row is None:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE campaign=?", (campaign,))]
            close = difflib.get_close_matches(job_id, ids, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise NotFound(
                f"job {job_id!r}: campaign {campaign!r} has no such job; {hint}its job ids are the manifest's row "
                f"ids (`ltx2-farm campaign logs {campaign}` names them)"
            )
        return row["state"]

    def counts(self, name: str) -> dict[str, int]:
        counts = dict.fromkeys(JOB_STATES, 0)
        for r in self._db.execute("SELECT state, COUNT(*) AS n FROM jobs WHERE campaign=? GROUP BY state", (name,)):
            counts[r["state"]] = r["n"]
        return counts

    def campaign_states(self) -> list[CampaignState]:
        return [self._state_of(r) for r in self._db.execute("SELECT * FROM campaigns")]

    def campaign_state(self, name: str) -> CampaignState:
        return self._state_of(self._campaign(self._db, name))

    def _state_of(self, r: sqlite3.Row) -> CampaignState:
        spec = CampaignSpec.model_validate(json.loads(r["spec"]))
        counts = self.counts(r["name"])
        return CampaignState(
            name=r["name"],
            priority=r["priority"],
            state=r["state"],
            not_before=spec.not_before,
            window=spec.window,
            budget_gpu_seconds=spec.budget_gpu_seconds,
            gpu_seconds_used=r["gpu_seconds"],
            failures=counts["failed"],
            max_failures=spec.max_failures,
            queued=counts["queued"],
            running=counts["running"],
        )

    def campaign_row(self, name: str) -> dict[str, Any]:
        return dict(self._campaign(self._db, name))

    def jobs(self, campaign: str, state: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM jobs WHERE campaign=?" + (" AND state=?" if state else "") + " ORDER BY created, id"
        return [dict(r) for r in self._db.execute(query, (campaign, state) if state else (campaign,))]

    def logs(self, campaign: str, limit: int = 200) -> list[dict[str, Any]]:
        self._campaign(self._db, campaign)
        rows = self._db.execute("SELECT * FROM log WHERE campaign=? ORDER BY ts DESC LIMIT ?", (campaign, limit))
        return [dict(r) for r in rows][::-1]

    def attempts(self, campaign: str, job: str | None = None) -> list[dict[str, Any]]:
        """The campaign's attempts (or its job `job`'s) in the order they started, each with its `id`, `worker`,
        `started`/`ended`, `outcome`, `rung` (of the OOM ladder), `error` (one line) and `trace` (the whole text)."""
        where, args = ("campaign=? AND job=?", (campaign, job)) if job else ("campaign=?", (campaign,))
        query = f"SELECT rowid AS id, * FROM attempts WHERE {where} ORDER BY started, rowid"
        return [dict(r) for r in self._db.execute(query, args)]

    def ended_attempts(self, since: float) -> list[dict[str, Any]]:
        """Every campaign's attempts that ended at or after `since` (`time.time()`), in the order they ended."""
        query = "SELECT rowid AS id, * FROM attempts WHERE ended >= ? ORDER BY ended, rowid"
        return [dict(r) for r in self._db.execute(query, (since,))]

    # --- transitions ----------------------------------------------------------------------------------

    def recover(self, quarantine_after: int = QUARANTINE_AFTER) -> dict[str, int]:
        """After a coordinator crash: jobs left `running` go back to the queue (their attempt closed as
        `interrupted`, which is no retry). A job that was also running at each of the `quarantine_after - 1`
        crashes before is their likely cause: it fails as quarantined instead (attempt `quarantined`), so that
        the campaign's other jobs can finish. A job of a cancelled campaign is cancelled. Returns how many jobs
        went each way."""
        now = time.time()
        moved = {"requeued": 0, "quarantined": 0, "cancelled": 0}
        notes: list[tuple[str, str, str]] = []
        with self._tx() as db:
            stale = db.execute(
                "SELECT j.campaign, j.id, c.state AS campaign_state FROM jobs j JOIN campaigns c ON c.name=j.campaign "
                "WHERE j.state='running'"
            ).fetchall()
            for r in stale:
                campaign, job_id = r["campaign"], r["id"]
                crashes = 1 + self._crash_streak(db, campaign, job_id)
                error = None
                if r["campaign_state"] == "cancelled":
                    state, outcome, way, note = "cancelled", "interrupted", "cancelled", "cancelled with its campaign"
                elif crashes >= quarantine_after:
                    state, outcome, way = "failed", "quarantined", "quarantined"
                    error = note = (
                        f"quarantined: the runner crashed {crashes} times while it ran (its own error, in its output, "
                        f"not a worker's); fix the cause, then `ltx2-farm campaign retry-failed {campaign}` queues it "
                        "again"
                    )
                else:
                    state, outcome, way, note = (
                        "queued",
                        "interrupted",
                        "requeued",
                        "requeued after a coordinator restart",
                    )
                db.execute(
                    "UPDATE jobs SET state=?, error=COALESCE(?, error), updated=? WHERE campaign=? AND id=?",
                    (state, error, now, campaign, job_id),
                )
                db.execute(
                    "UPDATE attempts SET ended=?, outcome=?, error=COALESCE(?, error) "
                    "WHERE campaign=? AND job=? AND ended IS NULL",
                    (now, outcome, error, campaign, job_id),
                )
                moved[way] += 1
                notes.append((note, campaign, job_id))
            for campaign in dict.fromkeys(r["campaign"] for r in stale):
                self._settle(db, campaign)
        for note in notes:
            self.log(*note)
        return moved

    def _crash_streak(self, db: sqlite3.Connection, campaign: str, job_id: str) -> int:
        """How many of the job's latest attempts in a row a coordinator crash ended (`interrupted`)."""
        streak = 0
        for (outcome,) in db.execute(
            "SELECT outcome FROM attempts WHERE campaign=? AND job=? AND ended IS NOT NULL "
            "ORDER BY started DESC, rowid DESC",
            (campaign, job_id),
        ):
            if outcome != "interrupted":
                break
            streak += 1
        return streak

    def claim(
        self, campaign: str, worker: str, prefer_loras: str | None = None, ladder: tuple[str, ...] = OOM_LADDER
    ) -> dict[str, Any] | None:
        """Move the oldest queued job of `campaign` to running and open an attempt.

        `prefer_loras` (a job's `lora_set` as returned by an earlier claim) picks the oldest job with that
        LoRA set first, so a worker keeps the set it holds (a pool per LoRA set) while such jobs are queued.
        The row's `lora_set` is the JSON of its LoRA list, normalised by SQLite. Its `rung` is the rung of
        `ladder` (the pool's OOM ladder) its earlier out-of-memory attempts call for, recorded with the attempt.
        """
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT *, json_extract(spec, '$.loras') AS lora_set, (SELECT COUNT(*) FROM attempts a WHERE "
                "a.campaign=jobs.campaign AND a.job=jobs.id AND a.outcome='oom') AS ooms "
                "FROM jobs WHERE campaign=? AND state='queued' "
                "ORDER BY COALESCE(json_extract(spec, '$.loras') = ?, 0) DESC, created, id LIMIT 1",
                (campaign, prefer_loras),
            ).fetchone()
            if row is None:
                return None
            rung = rung_after(row["ooms"], ladder)
            db.execute(
                "UPDATE jobs SET state='running', attempts=attempts+1, updated=? WHERE campaign=? AND id=?",
                (now, campaign, row["id"]),
            )
            db.execute(
                "INSERT INTO attempts (campaign, job, attempt, worker, started, rung) VALUES (?, ?, ?, ?, ?, ?)",
                (campaign, row["id"], row["attempts"] + 1, worker, now, rung),
            )
        job = dict(row)
        job["attempts"] += 1
        job["rung"] = rung
        return job

    def finish(self, campaign: str, job_id: str, output: dict[str, Any], gpu_seconds: float) -> bool:
        """Record the running job as done. False when it is no longer running (paused or cancelled meanwhile):
        the log says so, and once resumed the job finds its output published and is done without rendering."""
        now = time.time()
        with self._tx() as db:
            moved = db.execute(
                "UPDATE jobs SET state='done', output=?, error=NULL, updated=? WHERE campaign=? AND id=? "
                "AND state='running'",
                (json.dumps(output), now, campaign, job_id),
            ).rowcount
            db.execute(
                "UPDATE attempts SET ended=?, outcome='ok', gpu_seconds=COALESCE(gpu_seconds, 0)+? "
                "WHERE campaign=? AND job=? AND ended IS NULL",
                (now, gpu_seconds, campaign, job_id),
            )
            db.execute("UPDATE campaigns SET gpu_seconds=gpu_seconds+? WHERE name=?", (gpu_seconds, campaign))
            if moved:
                self._settle(db, campaign)
            else:
                state = self._job_state(db, campaign, job_id)
        if not moved:  # the attempt's record says the rest (`attempts`)
            self.log(f"output published; the job stays {state} (an operator's word wins)", campaign, job_id)
        return bool(moved)

    def spend(self, campaign: str, job_id: str, gpu_seconds: float) -> None:
        """Charge a job's render time as soon as it ends, before its output is published: budgets see it while
        the upload still runs. The attempt's closing call adds whatever it charges on top."""
        with self._tx() as db:
            db.execute(
                "UPDATE attempts SET gpu_seconds=COALESCE(gpu_seconds, 0)+? "
                "WHERE campaign=? AND job=? AND ended IS NULL",
                (gpu_seconds, campaign, job_id),
            )
            db.execute("UPDATE campaigns SET gpu_seconds=gpu_seconds+? WHERE name=?", (gpu_seconds, campaign))

    def _count_attempts(self, db: sqlite3.Connection, campaign: str, job_id: str, outcomes: tuple[str, ...]) -> int:
        """Attempts of a job whose outcome is one of `outcomes` ('' counts the open attempt)."""
        marks = ",".join("?" * len(outcomes))
        return db.execute(
            f"SELECT COUNT(*) FROM attempts WHERE campaign=? AND job=? AND COALESCE(outcome, '') IN ({marks})",
            (campaign, job_id, *outcomes),
        ).fetchone()[0]

    def _end_attempt(
        self,
        db: sqlite3.Connection,
        campaign: str,
        job_id: str,
        state: str,
        outcome: str,
        error: str,
        seconds: float,
        trace: str | None = None,
    ) -> str:
        """Close the job's open attempt with `outcome`, move the running job to `state`, charge the GPU-seconds.
        The error is kept as one line (job and attempt) and whole with its `trace` (the attempt's), without
        terminal escapes. Returns the job's state now: not `state` when the job was no longer running (an operator
        paused or cancelled it meanwhile, and the store's word wins)."""
        now = time.time()
        line = one_line(error, 2000)
        moved = db.execute(
            "UPDATE jobs SET state=?, error=?, updated=? WHERE campaign=? AND id=? AND state='running'",
            (state, line, now, campaign, job_id),
        ).rowcount
        db.execute(
            "UPDATE attempts SET ended=?, outcome=?, error=?, trace=?, gpu_seconds=COALESCE(gpu_seconds, 0)+? "
            "WHERE campaign=? AND job=? AND ended IS NULL",
            (now, outcome, line, without_escapes(trace or error)[-TRACE_CHARS:], seconds, campaign, job_id),
        )
        db.execute("UPDATE campaigns SET gpu_seconds=gpu_seconds+? WHERE name=?", (seconds, campaign))
        if not moved:
            return self._job_state(db, campaign, job_id)
        self._settle(db, campaign)
        return state

    def fail(
        self, campaign: str, job_id: str, error: str, gpu_seconds: float, max_retries: int, trace: str | None = None
    ) -> str:
        """Record a failed attempt (`error`, and the whole `trace` where there is one); requeue while retries
        remain. Returns the job's new state.

        Attempts lost to a dead worker or a coordinator restart (`interrupt`, `recover`) do not count."""
        with self._tx() as db:
            tried = self._count_attempts(db, campaign, job_id, ("", "retried", "error"))
            state = "queued" if tried <= max_retries else "failed"
            outcome = "retried" if state == "queued" else "error"
            state = self._end_attempt(db, campaign, job_id, state, outcome, error, gpu_seconds, trace)
        self._log_ignored(state, "attempt failed", error, campaign, job_id)
        return state

    def oom(
        self,
        campaign: str,
        job_id: str,
        error: str,
        gpu_seconds: float,
        ladder: tuple[str, ...] | None = None,
        trace: str | None = None,
    ) -> str:
        """The job ran out of GPU memory: requeue it for the next rung of the OOM ladder (not a retry) while
        rungs remain, else fail it saying so. Returns the new state; the next claim's `ooms` picks the rung."""
        ladder = OOM_LADDER if ladder is None else ladder
        with self._tx() as db:
            ooms = self._count_attempts(db, campaign, job_id, ("oom",)) + 1
            state = "queued" if ooms <= len(ladder) else "failed"
            if state == "failed":
                error = (
                    f"out of GPU memory on every rung of the OOM ladder ({', '.join(ladder)}); last: {error}. "
                    "Render it smaller or shorter, or on a GPU with more memory"
                )
            state = self._end_attempt(db, campaign, job_id, state, "oom", error, gpu_seconds, trace)
        self._log_ignored(state, "out of memory", error, campaign, job_id)
        return state

    def interrupt(
        self,
        campaign: str,
        job_id: str,
        reason: str,
        gpu_seconds: float,
        max_interruptions: int = 3,
        trace: str | None = None,
    ) -> str:
        """The job's worker died under it: requeue without using a retry, unless the job has now lost
        `max_interruptions` workers (then it is the likely cause, and fails). Returns the new state."""
        with self._tx() as db:
            lost = self._count_attempts(db, campaign, job_id, ("worker_lost",)) + 1
            state = "queued" if lost < max_interruptions else "failed"
            error = reason if state == "queued" else f"lost its worker {lost} times (last: {reason})"
            outcome = "worker_lost" if state == "queued" else "error"
            state = self._end_attempt(db, campaign, job_id, state, outcome, error, gpu_seconds, trace)
        self._log_ignored(state, "worker lost", error, campaign, job_id)
        return state

    def requeue(self, campaign: str, job_id: str, outcome: str, reason: str) -> str:
        """Queue the running job again without counting it against the job at all: what went wrong was not its
        doing (its finished output was lost with its worker before publishing; an input was lost with a node; the
        runner was stopped). Returns the job's state now."""
        with self._tx() as db:
            state = self._end_attempt(db, campaign, job_id, "queued", outcome, reason, 0.0)
        self._log_ignored(state, outcome, reason, campaign, job_id)
        return state

    def _log_ignored(self, state: str, what: str, error: str, campaign: str, job_id: str) -> None:
        """A runner's result for a job an operator paused or cancelled meanwhile: the store's word wins, and only
        the log keeps the result (the job's attempt was closed by the operator). Results that moved the job are
        in `attempts`, one record each."""
        if state not in ("queued", "failed"):
            self.log(f"{what} (ignored: the job stays {state}): {one_line(error)}", campaign, job_id)

    def set_campaign_state(self, name: str, state: str) -> None:
        with self._tx() as db:
            self._campaign(db, name)
            db.execute("UPDATE campaigns SET state=? WHERE name=?", (state, name))
            if state == "cancelled":
                db.execute("UPDATE jobs SET state='cancelled' WHERE campaign=? AND state='queued'", (name,))
            self._settle(db, name)  # resuming a campaign with nothing left to run finishes it
        self.log(f"campaign {state}", name)

    def set_job_state(self, campaign: str, job_id: str, state: str) -> None:
        """Pause, resume (`queued`) or cancel one job. A running job can be paused or cancelled too: its attempt is
        closed now, and whatever a runner still reports for it is ignored. So a job stuck `running` (its runner
        crashed on it, or hangs) can always be stopped, whether or not a runner is alive."""
        allowed = JOB_TRANSITIONS[state]
        now = time.time()
        with self._tx() as db:
            current = self._job_state(db, campaign, job_id)
            if current not in allowed:
                verb = {"paused": "paused", "queued": "resumed", "cancelled": "cancelled"}[state]
                fix = (
                    f"; `ltx2-farm campaign retry-failed {campaign}` queues failed jobs again"
                    if current == "failed"
                    else ""
                )
                raise StateError(
                    f"job {job_id!r} of campaign {campaign!r} is {current}: only a {' or '.join(allowed)} job can be "
                    f"{verb}{fix}"
                )
            db.execute("UPDATE jobs SET state=?, updated=? WHERE campaign=? AND id=?", (state, now, campaign, job_id))
            if current == "running":
                db.execute(
                    "UPDATE attempts SET ended=?, outcome=? WHERE campaign=? AND job=? AND ended IS NULL",
                    (now, state, campaign, job_id),
                )
            self._settle(db, campaign)
        self.log(
            f"job {state}" + (" while it ran: a runner's result for it is ignored" if current == "running" else ""),
            campaign,
            job_id,
        )

    def retry_failed(self, name: str) -> int:
        with self._tx() as db:
            self._campaign(db, name)
            n = db.execute(
                "UPDATE jobs SET state='queued', attempts=0, error=NULL WHERE campaign=? AND state='failed'", (name,)
            ).rowcount
            self._settle(db, name)
        self.log(f"{n} failed job(s) requeued", name)
        return n

    def _settle(self, db: sqlite3.Connection, name: str) -> None:
        """An active campaign none of whose jobs is unfinished becomes `finished`; a finished one with an unfinished
        job becomes `active` again. Called by every transition that moves a job, inside its transaction."""
        row = db.execute("SELECT state FROM campaigns WHERE name=?", (name,)).fetchone()
        if row is None or row["state"] not in ("active", "finished"):
            return
        counts = dict.fromkeys(JOB_STATES, 0)
        for r in db.execute("SELECT state, COUNT(*) AS n FROM jobs WHERE campaign=? GROUP BY state", (name,)):
            counts[r["state"]] = r["n"]
        finished = sum(counts.values()) > 0 and not any(counts[s] for s in UNFINISHED)
        state = "finished" if finished else "active"
        if state == row["state"]:
            return
        db.execute("UPDATE campaigns SET state=? WHERE name=?", (state, name))
        if finished:
            summary = ", ".join(f"{counts[s]} {s}" for s in ("done", "failed", "cancelled") if counts[s])
            self.log(f"campaign finished: {summary}", name)
        else:
            self.log("campaign active again: jobs were queued", name)

    def settle_all(self) -> None:
        """Settle every campaign whose state does not match its jobs: what a store written by a runner that
        predates `finished` holds (its finished campaigns read `active`). One read when nothing is to do."""
        unsettled = [
            r[0]
            for r in self._db.execute(
                "SELECT name FROM campaigns c WHERE (c.state='active' AND EXISTS (SELECT 1 FROM jobs j WHERE "
                "j.campaign=c.name) AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.campaign=c.name AND j.state IN "
                "(?, ?, ?))) OR (c.state='finished' AND EXISTS (SELECT 1 FROM jobs j WHERE j.campaign=c.name AND "
                "j.state IN (?, ?, ?)))",
                UNFINISHED * 2,
            )
        ]
        if unsettled:
            with self._tx() as db:
                for name in unsettled:
                    self._settle(db, name)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
