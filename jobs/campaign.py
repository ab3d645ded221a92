"""Campaign manifests: many jobs at once, validated row by row. Pure: no torch, no Ray.

A manifest (YAML or JSON) names the campaign, its scheduling policy, shared job defaults and the rows
(inline, or a JSONL/CSV file beside it). Each row becomes one job per variation (`variations: N` derives
N seeds from the row's). A bad row is reported with its row, field, value and fix, and never blocks the
good rows unless `all_or_nothing` is set.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jobs.inputs import input_roots, resolve_inputs
from jobs.outputs import job_content_hash
from jobs.plan import plan_job
from jobs.spec import FieldProblem, JobValidationError, ValidJob, validate_job

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""Campaign names and row ids: safe as file names and object-key components."""
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


class CampaignSpec(BaseModel):
    """The campaign part of a manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    campaign: str = Field(description="Campaign name: letters, digits, - _ .")
    priority: int = Field(0, description="Higher runs first; equal priorities share the farm fairly.")
    not_before: dt.datetime | None = Field(None, description="No task starts before this time (ISO 8601).")
    window: WindowSpec | None = None
    budget_gpu_seconds: float | None = Field(None, description="Stop scheduling when spent; running tasks finish.")
    max_task_retries: int = Field(2, description="Retries of one job after a failure.")
    max_failures: int = Field(20, description="Failed jobs after which the campaign stops scheduling.")
    variations: int = Field(1, description="Jobs per row, each with a derived seed.")
    all_or_nothing: bool = Field(False, description="Refuse the whole manifest if any row is invalid.")
    output: str | None = Field(None, description="s3://bucket/prefix or a folder; default ./renders/<campaign>.")
    key_template: str = "{campaign}/{job}-seed{seed}.{ext}"
    defaults: dict[str, Any] = Field(default_factory=dict, description="Job fields shared by every row.")
    rows: list[dict[str, Any]] | None = None
    rows_file: str | None = Field(None, description="JSONL or CSV file of rows (relative to the manifest).")

    @field_validator("campaign")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r}: 1-100 letters, digits, '.', '_', '-', starting with a letter or digit")
        return value

    @field_validator("variations")
    @classmethod
    def _variations(cls, value: int) -> int:
        if not 1 <= value <= 1000:
            raise ValueError(f"{value} variations: use 1 to 1000")
        return value

    @field_validator("max_task_retries", "max_failures")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be ≥ 0")
        return value

    @field_validator("budget_gpu_seconds")
    @classmethod
    def _budget(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError("must be a positive number of seconds")
        return value

    @field_validator("not_before")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-11-26T20:00:00+01:00 or ...Z")
        return value


@dataclass(frozen=True)
class CampaignJob:
    """One job of a campaign: a validated render job plus its identity."""

    id: str  # "<row id>" or "<row id>~v<k>"
    row: int
    job: ValidJob
    content_hash: str


@dataclass(frozen=True)
class RowProblem:
    row: int
    row_id: str
    problem: FieldProblem

    def message(self) -> str:
        return f"row {self.row} ({self.row_id}): {self.problem.message()}"


@dataclass(frozen=True)
class Manifest:
    spec: CampaignSpec
    jobs: tuple[CampaignJob, ...]
    problems: tuple[RowProblem, ...]


class ManifestError(ValueError):
    """The manifest itself (not a row) is unusable, or all-or-nothing found bad rows."""

    def __init__(self, message: str, problems: tuple[RowProblem, ...] = ()) -> None:
        self.problems = problems
        lines = "".join(f"\n  - {p.message()}" for p in problems)
        super().__init__(message + lines)


def variation_seed(seed: int, variation: int) -> int:
    """Variation 0 keeps the row's seed; the others derive theirs deterministically."""
    if variation == 0:
        return seed
    return int(hashlib.sha256(f"ltx2-farm/variation/{seed}/{variation}".encode()).hexdigest()[:15], 16)


def _read_rows(spec: CampaignSpec, base: Path) -> list[dict[str, Any]]:
    if spec.rows is not None and spec.rows_file is not None:
        raise ManifestError("give either rows or rows_file, not both")
    if spec.rows is not None:
        return spec.rows
    if spec.rows_file is None:
        raise ManifestError("the manifest has no rows: add `rows:` or `rows_file: rows.jsonl`")
    path = (base / spec.rows_file).resolve()
    if not path.is_relative_to(base.resolve()):
        raise ManifestError(f"rows_file {spec.rows_file!r} is outside the manifest's folder")
    if not path.is_file():
        raise ManifestError(f"rows_file {path} not found")
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [_csv_row(r) for r in csv.DictReader(f)]
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path.name} line {n} is not JSON ({e.msg})") from None
    return rows


def _csv_row(row: dict[str, str]) -> dict[str, Any]:
    """CSV cells are text: numbers and booleans become numbers and booleans; empty cells are absent."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or value == "":
            continue
        try:
            out[key] = json.loads(value) if re.fullmatch(r"-?\d+(\.\d+)?|true|false", value) else value
        except json.JSONDecodeError:
            out[key] = value
    return out


def parse_manifest(data: dict[str, Any], base: Path = Path(".")) -> Manifest:
    """Validate a manifest mapping; good rows become jobs, bad rows become problems."""
    try:
        spec = CampaignSpec.model_validate(data)
    except ValidationError as e:
        problems = tuple(
            RowProblem(
                0,
                "manifest",
                FieldProblem(
                    ".".join(str(x) for x in err["loc"]),
                    err.get("input"),
                    err["msg"] if err["type"] != "extra_forbidden" else "is not a manifest field",
                ),
            )
            for err in e.errors()
        )
        raise ManifestError("the manifest is invalid", problems) from None
    rows = _read_rows(spec, base)
    roots = input_roots(base)
    if not rows:
        raise ManifestError("the manifest has no rows")
    jobs: list[CampaignJob] = []
    problems: list[RowProblem] = []
    seen_ids: dict[str, int] = {}
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            problems.append(RowProblem(n, f"#{n}", FieldProblem("(row)", row, "must be a mapping of job fields")))
            continue
        row = dict(row)
        row_id = str(row.pop("id", f"row{n}"))
        if not NAME_PATTERN.fullmatch(row_id):
            problems.append(
                RowProblem(n, row_id, FieldProblem("id", row_id, "may only hold letters, digits, '.', '_', '-'"))
            )
            continue
        if row_id in seen_ids:
            problems.append(
                RowProblem(n, row_id, FieldProblem("id", row_id, f"duplicates the id of row {seen_ids[row_id]}"))
            )
            continue
        seen_ids[row_id] = n
        defaults = dict(spec.defaults)
        for a, b in (("duration", "num_frames"), ("num_frames", "duration")):
            if a in row:  # a row's length replaces the default length however it is given
                defaults.pop(b, None)
        fields = {**defaults, **row}
        fields.setdefault("name", row_id)
        try:
            base_job = validate_job(fields, source=f"row {n}")
            plan_job(base_job)  # e.g. more prompts than the job has chunks
            base_job = resolve_inputs(base_job, roots, base, f"row {n}")  # images: readable, inside the roots
        except JobValidationError as e:
            problems.extend(RowProblem(n, row_id, p) for p in e.problems)
            continue
        for v in range(spec.variations):
            job = (
                base_job
                if v == 0
                else ValidJob(
                    spec=base_job.spec.model_copy(
                        update={"seed": variation_seed(base_job.spec.seed, v), "name": f"{row_id}-v{v}"}
                    ),
                    num_frames=base_job.num_frames,
                    adjustments=base_job.adjustments,
                )
            )
            job_id = row_id if spec.variations == 1 else f"{row_id}~v{v}"
            jobs.append(CampaignJob(job_id, n, job, job_content_hash(job)))
    if problems and spec.all_or_nothing:
        raise ManifestError(f"{len(problems)} problem(s) and all_or_nothing is set: nothing submitted", tuple(problems))
    return Manifest(spec, tuple(jobs), tuple(problems))


def read_mapping_file(path: Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """A YAML/JSON file holding a mapping; `error(message)` names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8 text (a binary file?); give a YAML or JSON file") from None
    except yaml.YAMLError as e:
        raise error(f"{what} {path} is not valid YAML/JSON: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a mapping of fields, not {type(data).__name__}")
    return data


def load_manifest(path: Path) -> Manifest:
    return parse_manifest(read_mapping_file(path, "manifest", ManifestError), Path(path).parent)
