"""The durable campaign store: SQLite in WAL mode (safe with concurrent readers).

Holds campaigns, jobs, attempts and a log. A job's identity inside a campaign is its content hash, so
submitting the same manifest again adds nothing. Every state change is one transaction; a coordinator
killed at any moment leaves jobs `running` that `recover()` puts back in the queue on restart.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobs.campaign import CampaignJob, CampaignSpec
from jobs.schedule import CampaignState

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
    gpu_seconds REAL
);
CREATE TABLE IF NOT EXISTS log (
    ts REAL NOT NULL,
    campaign TEXT,
    job TEXT,
    message TEXT NOT NULL
);
"""

JOB_STATES = ("queued", "running", "done", "failed", "cancelled", "paused")


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

    def close(self) -> None:
        self._db.close()

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
        """Add a campaign's jobs; jobs already present (same content) are left as they are."""
        now = time.time()
        stored = spec.model_dump(mode="json", exclude={"rows"})
        with self._tx() as db:
            row = db.execute("SELECT state FROM campaigns WHERE name=?", (spec.campaign,)).fetchone()
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
        self.log(f"submitted {len(jobs)} jobs: {added} new, {len(jobs) - added} already known", spec.campaign)
        return {"jobs": len(jobs), "new": added, "existing": len(jobs) - added}

    # --- reads ----------------------------------------------------------------------------------------

    def campaign_names(self) -> list[str]:
        return [r["name"] for r in self._db.execute("SELECT name FROM campaigns ORDER BY created")]

    def campaign_spec(self, name: str) -> CampaignSpec:
        row = self._db.execute("SELECT spec FROM campaigns WHERE name=?", (name,)).fetchone()
        if row is None:
            raise KeyError(name)
        return CampaignSpec.model_validate(json.loads(row["spec"]))

    def counts(self, name: str) -> dict[str, int]:
        counts = dict.fromkeys(JOB_STATES, 0)
        for r in self._db.execute("SELECT state, COUNT(*) AS n FROM jobs WHERE campaign=? GROUP BY state", (name,)):
            counts[r["state"]] = r["n"]
        return counts

    def campaign_states(self) -> list[CampaignState]:
        out = []
        for r in self._db.execute("SELECT * FROM campaigns"):
            spec = CampaignSpec.model_validate(json.loads(r["spec"]))
            counts = self.counts(r["name"])
            out.append(
                CampaignState(
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
            )
        return out

    def campaign_row(self, name: str) -> dict[str, Any]:
        row = self._db.execute("SELECT * FROM campaigns WHERE name=?", (name,)).fetchone()
        if row is None:
            raise KeyError(name)
        return dict(row)

    def jobs(self, campaign: str, state: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM jobs WHERE campaign=?" + (" AND state=?" if state else "") + " ORDER BY created, id"
        return [dict(r) for r in self._db.execute(query, (campaign, state) if state else (campaign,))]

    def logs(self, campaign: str, limit: int = 200) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM log WHERE campaign=? ORDER BY ts DESC LIMIT ?", (campaign, limit))
        return [dict(r) for r in rows][::-1]

    def attempts(self, campaign: str) -> list[dict[str, Any]]:
        return [
            dict(r) for r in self._db.execute("SELECT * FROM attempts WHERE campaign=? ORDER BY started", (campaign,))
        ]

    # --- transitions ----------------------------------------------------------------------------------

    def recover(self) -> int:
        """After a coordinator crash: jobs left `running` go back to the queue (their attempt is closed)."""
        now = time.time()
        with self._tx() as db:
            stale = db.execute("SELECT campaign, id FROM jobs WHERE state='running'").fetchall()
            for r in stale:
                db.execute(
                    "UPDATE jobs SET state='queued', updated=? WHERE campaign=? AND id=?", (now, r["campaign"], r["id"])
                )
                db.execute(
                    "UPDATE attempts SET ended=?, outcome='interrupted' WHERE campaign=? AND job=? AND ended IS NULL",
                    (now, r["campaign"], r["id"]),
                )
        for r in stale:
            self.log("requeued after a coordinator restart", r["campaign"], r["id"])
        return len(stale)

    def claim(self, campaign: str, worker: str, prefer_loras: str | None = None) -> dict[str, Any] | None:
        """Move the oldest queued job of `campaign` to running and open an attempt.

        `prefer_loras` (a job's `lora_set` as returned by an earlier claim) picks the oldest job with that
        LoRA set first, so a worker keeps the set it holds (a pool per LoRA set) while such jobs are queued.
        The row's `lora_set` is the JSON of its LoRA list, normalised by SQLite.
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
            db.execute(
                "UPDATE jobs SET state='running', attempts=attempts+1, updated=? WHERE campaign=? AND id=?",
                (now, campaign, row["id"]),
            )
            db.execute(
                "INSERT INTO attempts (campaign, job, attempt, worker, started) VALUES (?, ?, ?, ?, ?)",
                (campaign, row["id"], row["attempts"] + 1, worker, now),
            )
        job = dict(row)
        job["attempts"] += 1
        return job

    def finish(self, campaign: str, job_id: str, output: dict[str, Any], gpu_seconds: float) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state='done', output=?, error=NULL, updated=? WHERE campaign=? AND id=?",
                (json.dumps(output), now, campaign, job_id),
            )
            db.execute(
                "UPDATE attempts SET ended=?, outcome='ok', gpu_seconds=COALESCE(gpu_seconds, 0)+? "
                "WHERE campaign=? AND job=? AND ended IS NULL",
                (now, gpu_seconds, campaign, job_id),
            )
            db.execute("UPDATE campaigns SET gpu_seconds=gpu_seconds+? WHERE name=?", (gpu_seconds, campaign))
        self.log("done", campaign, job_id)

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
        self, db: sqlite3.Connection, campaign: str, job_id: str, state: str, outcome: str, error: str, seconds: float
    ) -> None:
        """Close the job's open attempt with `outcome`, move the job to `state`, charge the GPU-seconds."""
        now = time.time()
        db.execute(
            "UPDATE jobs SET state=?, error=?, updated=? WHERE campaign=? AND id=?",
            (state, error[:2000], now, campaign, job_id),
        )
        db.execute(
            "UPDATE attempts SET ended=?, outcome=?, error=?, gpu_seconds=COALESCE(gpu_seconds, 0)+? "
            "WHERE campaign=? AND job=? AND ended IS NULL",
            (now, outcome, error[:2000], seconds, campaign, job_id),
        )
        db.execute("UPDATE campaigns SET gpu_seconds=gpu_seconds+? WHERE name=?", (seconds, campaign))

    def fail(self, campaign: str, job_id: str, error: str, gpu_seconds: float, max_retries: int) -> str:
        """Record a failed attempt; requeue while retries remain. Returns the job's new state.

        Attempts lost to a dead worker or a coordinator restart (`interrupt`, `recover`) do not count."""
        with self._tx() as db:
            tried = self._count_attempts(db, campaign, job_id, ("", "retried", "error"))
            state = "queued" if tried <= max_retries else "failed"
            outcome = "retried" if state == "queued" else "error"
            self._end_attempt(db, campaign, job_id, state, outcome, error, gpu_seconds)
        self.log(
            f"attempt failed ({'will retry' if state == 'queued' else 'no retries left'}): {error[:300]}",
            campaign,
            job_id,
        )
        return state

    def oom(
        self, campaign: str, job_id: str, error: str, gpu_seconds: float, ladder: tuple[str, ...] | None = None
    ) -> str:
        """The job ran out of GPU memory: requeue it for the next rung of the OOM ladder (not a retry) while
        rungs remain, else fail it saying so. Returns the new state; the next claim's `ooms` picks the rung."""
        from jobs.fallback import OOM_LADDER

        ladder = OOM_LADDER if ladder is None else ladder
        with self._tx() as db:
            ooms = self._count_attempts(db, campaign, job_id, ("oom",)) + 1
            state = "queued" if ooms <= len(ladder) else "failed"
            if state == "failed":
                error = (
                    f"out of GPU memory on every rung of the OOM ladder ({', '.join(ladder)}); last: {error}. "
                    "Render it smaller or shorter, or on a GPU with more memory"
                )
            self._end_attempt(db, campaign, job_id, state, "oom", error, gpu_seconds)
        self.log(
            f"out of memory ({'next rung' if state == 'queued' else 'ladder spent'}): {error[:300]}", campaign, job_id
        )
        return state

    def interrupt(self, campaign: str, job_id: str, reason: str, gpu_seconds: float, max_interruptions: int = 3) -> str:
        """The job's worker died under it: requeue without using a retry, unless the job has now lost
        `max_interruptions` workers (then it is the likely cause, and fails). Returns the new state."""
        with self._tx() as db:
            lost = self._count_attempts(db, campaign, job_id, ("worker_lost",)) + 1
            state = "queued" if lost < max_interruptions else "failed"
            error = reason if state == "queued" else f"lost its worker {lost} times (last: {reason})"
            outcome = "worker_lost" if state == "queued" else "error"
            self._end_attempt(db, campaign, job_id, state, outcome, error, gpu_seconds)
        self.log(f"worker lost ({'requeued' if state == 'queued' else 'failed'}): {error[:300]}", campaign, job_id)
        return state

    def requeue(self, campaign: str, job_id: str, outcome: str, reason: str) -> None:
        """Queue the job again without counting it against the job at all: what went wrong was not its doing
        (its finished output was lost with its worker before publishing; an input was lost with a node)."""
        with self._tx() as db:
            self._end_attempt(db, campaign, job_id, "queued", outcome, reason, 0.0)
        self.log(f"requeued ({outcome}): {reason[:300]}", campaign, job_id)

    def set_campaign_state(self, name: str, state: str) -> None:
        with self._tx() as db:
            if db.execute("UPDATE campaigns SET state=? WHERE name=?", (state, name)).rowcount == 0:
                raise KeyError(name)
            if state == "cancelled":
                db.execute("UPDATE jobs SET state='cancelled' WHERE campaign=? AND state='queued'", (name,))
        self.log(f"campaign {state}", name)

    def set_job_state(self, campaign: str, job_id: str, state: str) -> None:
        """Pause, resume or cancel one queued job."""
        allowed = {"paused": ("queued",), "queued": ("paused",), "cancelled": ("queued", "paused")}[state]
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE jobs SET state=? WHERE campaign=? AND id=? AND state IN ({','.join('?' * len(allowed))})",
                (state, campaign, job_id, *allowed),
            )
            if cur.rowcount == 0:
                raise KeyError(f"{campaign}/{job_id} is not in a state that can become {state}")
        self.log(f"job {state}", campaign, job_id)

    def retry_failed(self, name: str) -> int:
        with self._tx() as db:
            n = db.execute(
                "UPDATE jobs SET state='queued', attempts=0, error=NULL WHERE campaign=? AND state='failed'", (name,)
            ).rowcount
        self.log(f"{n} failed job(s) requeued", name)
        return n


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
