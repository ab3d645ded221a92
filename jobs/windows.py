"""Recurring windows in which a campaign's new tasks may start, e.g. weeknights 20:00–07:00 Europe/Paris."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_SETS = {"daily": DAYS, "weekdays": DAYS[:5], "weeknights": DAYS[:5], "weekends": DAYS[5:]}


class WindowSpec(BaseModel):
    """A recurring window in which new tasks may start, e.g. weeknights 20:00–07:00 Europe/Paris.

    `days` are the days on which a window *opens* (a window past midnight ends the next morning).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: str = "daily"
    start: str = Field(description="HH:MM local time the window opens")
    end: str = Field(description="HH:MM local time it closes (before start = the next day)")
    tz: str = "UTC"

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"{value!r} is not a time HH:MM (00:00-23:59)")
        return value

    @field_validator("tz")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Paris, UTC)") from None
        return value

    @field_validator("days")
    @classmethod
    def _days(cls, value: str) -> str:
        expand_days(value)
        return value


def expand_days(value: str) -> tuple[str, ...]:
    """'weeknights', 'mon-fri', 'sat,sun', 'daily' → the opening days."""
    text = value.strip().lower()
    if text in DAY_SETS:
        return DAY_SETS[text]
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            if a not in DAYS or b not in DAYS:
                raise ValueError(f"{value!r}: use day names {', '.join(DAYS)}, ranges like mon-fri, or daily")
            i, j = DAYS.index(a), DAYS.index(b)
            out.extend(DAYS[i : j + 1] if i <= j else DAYS[i:] + DAYS[: j + 1])
        elif part in DAYS:
            out.append(part)
        else:
            raise ValueError(f"{value!r}: use day names {', '.join(DAYS)}, ranges like mon-fri, or daily")
    return tuple(dict.fromkeys(out))
