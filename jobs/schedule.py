"""Which queued jobs start now: priorities, fair share, not_before, windows, budgets, failure caps.

Pure and clock-free: every function takes `now`, so tests drive time explicitly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from jobs.windows import DAYS, WindowSpec, expand_days


def _hm(text: str) -> dt.time:
    h, m = text.split(":")
    return dt.time(int(h), int(m))


def in_window(window: WindowSpec, now: dt.datetime) -> bool:
    """Is `now` inside the recurring window? A window past midnight belongs to the day it opened."""
    local = now.astimezone(ZoneInfo(window.tz))
    start, end = _hm(window.start), _hm(window.end)
    days = expand_days(window.days)
    today = DAYS[local.weekday()]
    yesterday = DAYS[(local.weekday() - 1) % 7]
    t = local.time()
    if start < end:
        return today in days and start <= t < end
    if start == end:  # a whole day
        return today in days
    return (today in days and t >= start) or (yesterday in days and t < end)


def next_window_open(window: WindowSpec, now: dt.datetime) -> dt.datetime:
    """The next moment (≥ now) at which the window is open."""
    if in_window(window, now):
        return now
    local = now.astimezone(ZoneInfo(window.tz))
    days = expand_days(window.days)
    for offset in range(8):
        day = local.date() + dt.timedelta(days=offset)
        if DAYS[day.weekday()] in days:
            opening = dt.datetime.combine(day, _hm(window.start), tzinfo=ZoneInfo(window.tz))
            if opening >= local:
                return opening.astimezone(now.tzinfo or dt.UTC)
    raise ValueError("window never opens")  # pragma: no cover - expand_days is never empty


@dataclass(frozen=True)
class CampaignState:
    """What the scheduler needs to know about a campaign."""

    name: str
    priority: int
    state: str  # active | paused | cancelled | suspended
    not_before: dt.datetime | None
    window: WindowSpec | None
    budget_gpu_seconds: float | None
    gpu_seconds_used: float
    failures: int
    max_failures: int
    queued: int
    running: int


def blocked_reason(c: CampaignState, now: dt.datetime) -> str | None:
    """Why no new task of this campaign may start now (None: it may)."""
    if c.state != "active":
        return c.state
    if c.not_before is not None and now < c.not_before:
        return f"not before {c.not_before.isoformat()}"
    if c.window is not None and not in_window(c.window, now):
        return f"outside its window (opens {next_window_open(c.window, now).isoformat()})"
    if c.budget_gpu_seconds is not None and c.gpu_seconds_used >= c.budget_gpu_seconds:
        return f"budget spent ({c.gpu_seconds_used:.0f} of {c.budget_gpu_seconds:.0f} GPU-seconds)"
    if c.failures >= c.max_failures:
        return f"failure cap reached ({c.failures} failed jobs)"
    if c.queued == 0:
        return "nothing queued"
    return None


def allocate(campaigns: list[CampaignState], free_slots: int, now: dt.datetime) -> list[str]:
    """Campaign names for the next `free_slots` job starts, in order.

    Higher priority first; among equal priorities, each slot goes to the campaign with the fewest
    running jobs (then the fewest GPU-seconds used, then name), so campaigns share the farm fairly.
    """
    running = {c.name: c.running for c in campaigns}
    left = {c.name: c.queued for c in campaigns}
    ready = [c for c in campaigns if blocked_reason(c, now) is None]
    picks: list[str] = []
    for _ in range(free_slots):
        candidates = [c for c in ready if left[c.name] > 0]
        if not candidates:
            break
        top = max(c.priority for c in candidates)
        best = min(
            (c for c in candidates if c.priority == top), key=lambda c: (running[c.name], c.gpu_seconds_used, c.name)
        )
        picks.append(best.name)
        running[best.name] += 1
        left[best.name] -= 1
    return picks
