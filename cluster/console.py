"""What a command shows a person while work runs, on stderr (stdout holds its result).

- **Quiet libraries.** Unless `--verbose` (LTX2_FARM_VERBOSE=1), the libraries' own chatter is off: transformers'
  warnings, Ray's log lines (its token-authentication banner among them) and Python warnings raised outside the
  farm; errors still show. Set before anything heavy is imported, and handed to Ray's workers with their
  environment (`cluster.ray_executor.worker_env`).
- **Progress.** On a terminal: a bar per render stage, drawn once per step it advances and ended at its total,
  its rate the stage's steps over the seconds they took on the worker; a campaign run's bar of finished jobs, its
  rate over the time jobs ran (not the time the queue waited), with a line per failed attempt above it. Where
  stderr is not a terminal (a log, a pipe), or TQDM_DISABLE is set (the image sets it), no bar: one JSON line per
  stage that ends and per campaign attempt that ends, never one per redraw.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from cluster.replies import StageRun, WorkerProgress
from jobs.text import one_line, printable

VERBOSE_ENV = "LTX2_FARM_VERBOSE"
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
"""Read by the libraries themselves when they load (in this process and in workers): set unless the user set
them, so a user's own choice stands."""
FARM_MODULES = r"(cluster|jobs|ltx2)(\.|$)"


def quiet_libraries(verbose: bool) -> None:
    """Libraries quiet in this process and the workers it starts, unless `verbose` (or LTX2_FARM_VERBOSE); called
    before they load."""
    if verbose or is_verbose():
        os.environ[VERBOSE_ENV] = "1"
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    quiet_warnings()


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_warnings() -> None:
    """Python warnings off, except those the farm's own modules raise; all of them with --verbose."""
    if is_verbose():
        return
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=FARM_MODULES)


def library_env() -> dict[str, str]:
    """The verbosity variables of this process, for workers whose environment is not this one's (a joined
    cluster's nodes)."""
    return {name: os.environ[name] for name in (*QUIET_ENV, VERBOSE_ENV) if name in os.environ}


def draws_bars(stream: TextIO) -> bool:
    """Whether progress on `stream` is drawn as bars: a terminal, and TQDM_DISABLE not set."""
    disabled = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")
    return not disabled and stream.isatty()


class Screen:
    """stderr shared by a bar redrawn in place (one write per update) and lines of text written above it, from
    any thread (a campaign's publishing threads report upload retries)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._bar = ""
        self._lock = threading.Lock()

    def draw(self, bar: str) -> None:
        with self._lock:
            self._bar = bar
            self.stream.write(f"\r{bar}\x1b[K")
            self.stream.flush()

    def end(self, bar: str | None = None) -> None:
        """The bar's last state left on its line (None: the state drawn last is the last)."""
        with self._lock:
            self._bar = ""
            self.stream.write("\n" if bar is None else f"\r{bar}\x1b[K\n")
            self.stream.flush()

    def line(self, text: str) -> None:
        """A line of text above the bar (escaped: it may carry input)."""
        with self._lock:
            clear = "\r\x1b[K" if self._bar else ""
            self.stream.write(f"{clear}{printable(text, keep_newlines=True)}\n{self._bar}")
            self.stream.flush()

    def event(self, fields: Mapping[str, Any]) -> None:
        """A JSON line (what logs get instead of bars)."""
        with self._lock:
            self.stream.write(json.dumps(fields, default=str) + "\n")
            self.stream.flush()


def meter(label: str, n: int, total: int, seconds: float, unit: str, postfix: str | None = None) -> str:
    """A bar's text: `n` of `total`, at `n / seconds` per second (what `seconds` covers is the caller's)."""
    from tqdm import tqdm

    rate = n / seconds if seconds > 0 and n else None
    width = shutil.get_terminal_size((100, 20)).columns - 1
    return tqdm.format_meter(n, total, seconds, ncols=width, prefix=label, unit=unit, rate=rate, postfix=postfix)


def stage_event(job: str | None, run: StageRun) -> dict[str, Any]:
    """A stage that ended, as its JSON line."""
    rate = round(run.steps / run.seconds, 3) if run.seconds > 0 else None
    return {
        "event": "stage",
        "job": job,
        "stage": run.stage,
        "steps": run.steps,
        "seconds": round(run.seconds, 3),
        "steps_per_s": rate,
    }


class StageProgress:
    """A render's stages from its worker's progress polls (`cluster.replies.WorkerProgress`): a bar per stage on a
    terminal, drawn when a step advances and ended at the stage's total, else a JSON line as each stage ends."""

    def __init__(self, screen: Screen, bars: bool) -> None:
        self._screen = screen
        self._bars = bars
        self._job: str | None = None
        self._ended = 0  # of the job's finished stages, those shown
        self._drawn: tuple[str, int] | None = None  # the stage and step the open bar shows

    def show(self, p: WorkerProgress) -> None:
        if p.job != self._job:
            self._job, self._ended = p.job, 0
        for run in p.finished[self._ended :]:
            if self._bars and self._drawn == (run.stage, run.steps):
                self._screen.end()  # its last step is drawn already
            elif self._bars:
                self._screen.end(meter(run.stage, run.steps, run.steps, run.seconds, "step"))
            else:
                self._screen.event(stage_event(p.job, run))
            self._drawn = None
        self._ended = max(self._ended, len(p.finished))
        if self._bars and p.total and p.step and (p.stage, p.step) != self._drawn:
            self._drawn = (p.stage, p.step)
            self._screen.draw(meter(p.stage, p.step, p.total, p.seconds, "step"))

    def close(self) -> None:
        """A bar left open (the render stopped mid-stage) keeps its line."""
        if self._drawn is not None:
            self._screen.end()
            self._drawn = None


def busy_seconds(spans: Sequence[tuple[float, float]]) -> float:
    """The time covered by at least one of the (start, end) spans: how long jobs ran, however many at once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def attempt_event(a: Mapping[str, Any]) -> dict[str, Any]:
    """A campaign job's attempt that ended, as its JSON line (and `campaign logs --json`'s record of it)."""
    seconds = a["ended"] - a["started"] if a.get("ended") is not None else None
    return {
        "event": "attempt",
        "ts": a.get("ended"),
        "campaign": a["campaign"],
        "job": a["job"],
        "attempt": a["attempt"],
        "outcome": a.get("outcome"),
        "worker": a.get("worker"),
        "seconds": round(seconds, 3) if seconds is not None else None,
        "rung": a.get("rung"),
        "error": one_line(a["error"]) if a.get("error") else None,
    }


def attempt_line(e: Mapping[str, Any]) -> str:
    """A campaign job's attempt (`attempt_event`) in one line, after its job's id: outcome, worker, duration, OOM
    rung, its error."""
    took = f", {e['seconds']:.1f} s" if e["seconds"] is not None else ""
    rung = f", rung {e['rung']}" if e["rung"] else ""
    error = f": {e['error']}" if e["error"] else ""
    outcome = e["outcome"] or "running"
    return f"{e['job']:<20} attempt {e['attempt']} {outcome} on {e['worker'] or '?'}{took}{rung}{error}"


class CampaignProgress:
    """A campaign run's jobs as they end. `ended_attempts(since)` gives the store's attempts that ended at or
    after `since` (`cluster.campaign_store.Store.ended_attempts`): each is shown once, as a JSON line where
    there are no bars; on a terminal, a bar of finished jobs out of those pending, and a line per attempt
    that did not succeed."""

    def __init__(self, screen: Screen, bars: bool, ended_attempts: Callable[[float], list[dict[str, Any]]]) -> None:
        self._screen = screen
        self._bars = bars
        self._ended_attempts = ended_attempts
        self._since = time.time()
        self._seen: set[Any] = set()
        self._spans: list[tuple[float, float]] = []
        self._total = 0
        self._drawn: tuple[int, int, int] | None = None
        self._stats: dict[str, int] = {}

    def open(self, pending: int) -> None:
        self._since = time.time()
        self._total = pending
        self.show({})

    def show(self, stats: dict[str, int]) -> None:
        self._stats = stats or self._stats
        self._take_attempts()
        bar = self._bar()
        if self._bars and bar[0] != self._drawn:
            self._drawn = bar[0]
            self._screen.draw(bar[1])

    def close(self) -> None:
        self._take_attempts()  # those that ended since the last update
        if self._bars:
            shown, text = self._bar()
            self._screen.end(None if shown == self._drawn else text)

    def _take_attempts(self) -> None:
        for a in self._ended_attempts(self._since):
            if a["id"] in self._seen:
                continue
            self._seen.add(a["id"])
            self._spans.append((a["started"], a["ended"]))
            if not self._bars:
                self._screen.event(attempt_event(a))
            elif a.get("outcome") != "ok":
                self._screen.line(f"{a['campaign']}: {attempt_line(attempt_event(a))}")

    def _bar(self) -> tuple[tuple[int, int, int], str]:
        """What the bar shows (finished, failed, retried), and its text."""
        s = self._stats
        finished = s.get("done", 0) + s.get("skipped", 0) + s.get("failed", 0)
        shown = (finished, s.get("failed", 0), s.get("retried", 0))
        postfix = f"failed={shown[1]}, retried={shown[2]}"
        return shown, meter(
            "campaigns", finished, max(self._total, finished), busy_seconds(self._spans), "job", postfix
        )
