"""Campaign manifests: many jobs at once, validated row by row. Reads the manifest, its rows file and the
rows' input files (`cluster.inputs`); no torch, no Ray.

A manifest (YAML or JSON) names the campaign, its scheduling policy, shared job defaults and the rows
(inline, or a JSONL/CSV file beside it). Each row becomes one job per variation (`variations: N` derives
N seeds from the row's). A bad row is reported with its row, field, value and fix, and never blocks the
good rows unless `all_or_nothing` is set.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cluster.inputs import input_roots, resolve_inputs
from jobs.keys import (
    CAMPAIGN_KEY_TEMPLATE,
    DestinationError,
    key_template_problem,
    output_key_problem,
    output_keys,
    parse_destination,
    split_video_file,
)
from jobs.names import name_problem
from jobs.outputs import job_content_hash
from jobs.plan import plan_job
from jobs.spec import FieldProblem, JobValidationError, ValidJob, validate_job
from jobs.text import join_surrogate_pairs, normalized, printable, shortened
from jobs.windows import WindowSpec


class CampaignSpec(BaseModel):
    """The campaign part of a manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    campaign: str = Field(description="Campaign name: a name (`jobs.names`), checked when submitted")
    priority: int = Field(0, description="Higher runs first; equal priorities share the farm fairly.")
    not_before: dt.datetime | None = Field(None, description="No task starts before this time (ISO 8601).")
    window: WindowSpec | None = None
    budget_gpu_seconds: float | None = Field(None, description="Stop scheduling when spent; running tasks finish.")
    max_task_retries: int = Field(2, description="Retries of one job after a failure.")
    max_failures: int = Field(20, description="Failed jobs after which the campaign stops scheduling.")
    variations: int = Field(1, description="Jobs per row, each with a derived seed.")
    all_or_nothing: bool = Field(False, description="Refuse the whole manifest if any row is invalid.")
    output: str | None = Field(None, description="s3://bucket/prefix or a folder; default ./renders/<campaign>.")
    key_template: str = Field(
        CAMPAIGN_KEY_TEMPLATE,
        description="Object key of each output under `output`; fields {campaign} {job} {name} {seed} {hash} {ext}. "
        "A campaign keeps the one it was first submitted with unless a manifest names another.",
    )
    defaults: dict[str, Any] = Field(default_factory=dict, description="Job fields shared by every row.")
    rows: list[Any] | None = Field(
        None, description="Job fields per row; a row that is not a mapping is refused alone."
    )
    rows_file: str | None = Field(None, description="JSONL or CSV file of rows (relative to the manifest).")

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
        if self.row == 0:  # a field of the manifest itself
            return self.problem.message()
        return f"row {self.row} ({printable(self.row_id)}): {self.problem.message()}"


@dataclass(frozen=True)
class Manifest:
    spec: CampaignSpec
    jobs: tuple[CampaignJob, ...]
    problems: tuple[RowProblem, ...]


class ManifestError(ValueError):
    """The manifest itself (not a row) is unusable, or all-or-nothing found bad rows: one line for one problem,
    else a line each."""

    def __init__(self, message: str, problems: tuple[RowProblem, ...] = ()) -> None:
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"{message}: {problems[0].message()}")
            return
        lines = "".join(f"\n  - {p.message()}" for p in problems)
        super().__init__(message + lines)


def variation_seed(seed: int, variation: int) -> int:
    """Variation 0 keeps the row's seed; the others derive theirs deterministically."""
    if variation == 0:
        return seed
    return int(hashlib.sha256(f"ltx2-farm/variation/{seed}/{variation}".encode()).hexdigest()[:15], 16)


def _read_rows(spec: CampaignSpec, base: Path) -> list[dict[str, Any] | FieldProblem]:
    """The rows, inline or from the rows file; a JSONL line that is not JSON is a problem of its row alone."""
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
        raise ManifestError(f"rows_file {printable(path)} not found")
    # Undecodable bytes stay in the row as lone surrogates: the row holding them is refused, not the file.
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    if path.suffix == ".csv":
        return [_csv_row(r) for r in csv.DictReader(io.StringIO(text, newline=""))]
    rows: list[dict[str, Any] | FieldProblem] = []
    for n, line in enumerate(text.split("\n"), 1):  # JSON text may hold U+2028, which splitlines() splits on
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                rows.append(FieldProblem("(row)", line, f"on line {n} of {path.name} is not JSON ({e.msg})"))
    return rows


def _csv_row(row: dict[str | None, Any]) -> dict[str, Any] | FieldProblem:
    """CSV cells are text: numbers and booleans become numbers and booleans (not the id: '007' stays '007');
    empty cells are absent. A row with more cells than the header is refused alone."""
    if None in row:
        return FieldProblem(
            "(row)",
            row[None],
            "has more cells than the header has columns (a comma in an unquoted cell?); quote that cell",
        )
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or value == "":
            continue
        if key == "id":
            out[key] = value
            continue
        try:
            out[key] = json.loads(value) if re.fullmatch(r"-?\d+(\.\d+)?|true|false", value) else value
        except json.JSONDecodeError:
            out[key] = value
    return out


def _manifest_problem(field: str, value: Any, problem: str) -> RowProblem:
    return RowProblem(0, "manifest", FieldProblem(field, value, problem))


def _campaign_problems(data: dict[str, Any]) -> list[RowProblem]:
    """What the name, key template and destination of a manifest being submitted get wrong. Checked here, not
    by CampaignSpec, which also reads campaigns back from the store: a stored campaign is not judged again."""
    problems = []
    name, template = data.get("campaign"), data.get("key_template")
    for field, value, problem in (
        ("campaign", name, isinstance(name, str) and name_problem(name)),
        ("key_template", template, isinstance(template, str) and key_template_problem(template, campaign=True)),
    ):
        if problem:
            problems.append(_manifest_problem(field, value, problem))
    output = data.get("output")
    if isinstance(output, str):
        try:
            parse_destination(output)
        except DestinationError as e:
            problems.append(_manifest_problem("output", output, f"is not a destination: {e}"))
        else:
            named = split_video_file(output)
            if named.file:
                folder = str(dataclasses.replace(named, file=""))
                problems.append(
                    _manifest_problem(
                        "output",
                        output,
                        f"names one MP4, but a campaign writes one a job; give a folder or prefix, e.g. {folder!r} "
                        "(the key template names each file in it)",
                    )
                )
    return problems


def _row_id(row: dict[str, Any], n: int, variations: int) -> tuple[str, str | None]:
    """The row's id (NFC) and why it cannot be one (with variations, the longest derived name counts too)."""
    given = row.pop("id", None)
    row_id = normalized(f"row{n}" if given is None else str(given))  # `id:` left empty, like a CSV's empty cell
    problem = name_problem(row_id)
    if problem is None and variations > 1:
        longest = f"{row_id}-v{variations - 1}"  # the name of its last variation
        derived = name_problem(longest)
        if derived:
            problem = f"gives its variation {variations - 1} the name {shortened(longest)}, which {derived}"
    return row_id, problem


def parse_manifest(data: dict[str, Any], base: Path = Path(".")) -> Manifest:
    """Validate a manifest mapping; good rows become jobs, bad rows become problems."""
    data = {
        k: normalized(v) if k in ("campaign", "key_template") and isinstance(v, str) else v for k, v in data.items()
    }
    manifest_problems = _campaign_problems(data)
    try:
        spec = CampaignSpec.model_validate(data)
    except ValidationError as e:
        manifest_problems += [
            _manifest_problem(
                ".".join(str(x) for x in err["loc"]),
                err.get("input"),
                err["msg"] if err["type"] != "extra_forbidden" else "is not a manifest field",
            )
            for err in e.errors()
        ]
    if manifest_problems:
        raise ManifestError("the manifest is invalid", tuple(manifest_problems))
    destination = parse_destination(spec.output) if spec.output else None
    rows = _read_rows(spec, base)
    roots = input_roots(base)
    if not rows:
        raise ManifestError("the manifest has no rows")
    jobs: list[CampaignJob] = []
    problems: list[RowProblem] = []
    seen_ids: dict[str, int] = {}
    seen_keys: dict[str, tuple[int, str]] = {}  # object key -> (row, content hash) of the job that has it
    for n, row in enumerate(rows, 1):
        if isinstance(row, FieldProblem):
            problems.append(RowProblem(n, f"#{n}", row))
            continue
        if not isinstance(row, dict):
            problems.append(RowProblem(n, f"#{n}", FieldProblem("(row)", row, "must be a mapping of job fields")))
            continue
        row = dict(row)
        row_id, problem = _row_id(row, n, spec.variations)
        if problem:
            problems.append(RowProblem(n, row_id, FieldProblem("id", row_id, problem)))
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
        row_jobs = []
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
            row_jobs.append(CampaignJob(job_id, n, job, job_content_hash(job)))
        problem = _key_problems(destination, spec, row_jobs, seen_keys)
        if problem:
            problems.append(RowProblem(n, row_id, problem))
            continue
        jobs.extend(row_jobs)
    if problems and spec.all_or_nothing:
        raise ManifestError(f"{len(problems)} problem(s) and all_or_nothing is set: nothing submitted", tuple(problems))
    return Manifest(spec, tuple(jobs), tuple(problems))


def _key_problems(
    destination: Any, spec: CampaignSpec, row_jobs: list[CampaignJob], seen_keys: dict[str, tuple[int, str]]
) -> FieldProblem | None:
    """A row's jobs against the destination: keys that do not fit, or that another job of the manifest (with
    other content) already has, whose output would then count as this one's. Records the row's keys."""
    if destination is None:
        return None
    for job in row_jobs:
        name = job.job.spec.name
        problem = output_key_problem(destination, spec.key_template, job.job, spec.campaign)
        if problem:
            return FieldProblem("name", name, problem)
        for key in output_keys(spec.key_template, job.job, spec.campaign):
            row, content = seen_keys.get(key, (job.row, job.content_hash))
            if content != job.content_hash:
                return FieldProblem(
                    "name",
                    name,
                    f"gives the object key {key!r}, which row {row}'s output has already; give the rows distinct "
                    "names, or put {job} or {hash} in the key template",
                )
    for job in row_jobs:
        for key in output_keys(spec.key_template, job.job, spec.campaign):
            seen_keys.setdefault(key, (job.row, job.content_hash))
    return None


def read_mapping_file(path: Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """A YAML/JSON file holding a mapping; `error(message)` names the file and what is wrong. Its text is
    decoded here, once (`jobs.text`): UTF-8, a leading byte-order mark dropped, `\\ud83e\\udd8a` escapes joined."""
    path = Path(path)
    shown = printable(path)
    if not path.is_file():
        raise error(f"{what} {shown} not found")
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise error(f"{what} {shown} is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise error(
            f"{what} {shown} is not UTF-8 text (byte 0x{raw[e.start]:02X} on line {line}; a binary file, or text "
            "saved in another encoding?); save it as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{what} {shown} is not valid YAML/JSON: {printable(e)}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {shown} must hold a mapping of fields, not {type(data).__name__}")
    return join_surrogate_pairs(data)


def load_manifest(path: Path) -> Manifest:
    return parse_manifest(read_mapping_file(path, "manifest", ManifestError), Path(path).parent)
