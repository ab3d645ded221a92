"""Output destinations and object keys. Pure: parsing and checking only.

A destination is `s3://bucket/prefix`, `file:///abs/dir` or a plain path. A render's may also name its MP4
itself (`render_destination`: `.../long.mp4`, its sidecar `long.json` beside it, as every sidecar is its MP4's
name with `.json`); a campaign's never does, as it writes one MP4 a job. Keys come from a template such as
`{campaign}/{job}.{ext}` (`{job}`: the output file's stem, `<name>-<hash12>-seed<seed>`), checked before any
render (`check_key_template`): every field known and written plain (`{job}`, never `{job!r}`, `{job:>9}` or
`{}`), `{ext}` in it so that a job's MP4 and sidecar land on two keys, and its literal text made of name
characters (`jobs.names`), '/', '=' and '+': never a backslash, '%' (`%2e%2e`), a space or a control character;
no absolute key, no empty, '.' or '..' component.
Field values are names checked by `jobs.names`, numbers and hex digests; a value that is not one (a job read back
from the campaign store is not validated again) has every other character replaced by '_'. Each job's keys are
measured against its own values (`output_key_problem`): at most 1024 bytes with the prefix in a bucket, each
component a file name in a folder.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from jobs.names import KEY_BYTES, MAX_COMPONENT_BYTES, NAME_PUNCTUATION, component_problem, is_name_char
from jobs.outputs import job_content_hash, output_paths
from jobs.spec import ValidJob
from jobs.text import normalized, shortened, surrogate_problem

DEFAULT_KEY_TEMPLATE = "{job}.{ext}"
"""A render's keys: its output files' own names (`jobs.outputs.output_paths`), which hold the name, hash and seed."""
CAMPAIGN_KEY_TEMPLATE = "{campaign}/" + DEFAULT_KEY_TEMPLATE
"""A campaign's keys: the same names, in a folder per campaign."""
VIDEO_SUFFIX = ".mp4"
"""A render destination ending so names the MP4 itself, not a folder (`render_destination`)."""
KEY_FIELDS = ("job", "name", "seed", "hash", "ext")
"""Fields of every key template; a campaign's also has `campaign`."""
KEY_PUNCTUATION = "/=+"
"""Literal characters a template may hold besides name characters."""
FILE_NAME_PUNCTUATION = KEY_PUNCTUATION.replace("/", "")
"""Characters a destination's file name may hold besides name characters: a template's, but the folder's '/'."""
_SAMPLE = {"job": "n-0123456789ab-seed1", "name": "n", "seed": 1, "hash": "0123456789ab", "campaign": "c"}


class DestinationError(ValueError):
    """A destination or key that would be unsafe or cannot be used."""


@dataclass(frozen=True)
class Destination:
    scheme: str  # "s3" or "file"
    bucket: str  # s3 bucket, or "" for files
    prefix: str  # key prefix (s3) or directory (file), no trailing slash
    file: str = ""
    """The MP4's own name under the prefix when the destination names it (`render_destination`), else ""."""

    @property
    def sidecar(self) -> str:
        """The named MP4's sidecar: its name with `.json` for the extension, as every sidecar's."""
        return self.file[: -len(VIDEO_SUFFIX)] + ".json"

    def __str__(self) -> str:
        if not self.file:
            return f"s3://{self.bucket}/{self.prefix}" if self.scheme == "s3" else self.prefix
        return (
            f"s3://{self.bucket}/{join_key(self.prefix, self.file)}"
            if self.scheme == "s3"
            else str(Path(self.prefix) / self.file)
        )


def parse_destination(url: str) -> Destination:
    """`s3://bucket/prefix`, `file:///dir` or a plain directory path."""
    if not url.isprintable():
        raise DestinationError(f"destination {shortened(url)} holds control or invisible characters; remove them")
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", parsed.netloc or ""):
            raise DestinationError(
                f"destination {url!r}: {parsed.netloc!r} is not a valid bucket name (3-63 of a-z 0-9 . -)"
            )
        prefix = parsed.path.strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise DestinationError(f"destination {url!r}: the prefix may not contain empty, '.' or '..' parts")
        return Destination("s3", parsed.netloc, prefix)
    if parsed.scheme == "file":
        return Destination("file", "", unquote(parsed.path).rstrip("/") or "/")
    if parsed.scheme and len(parsed.scheme) > 1:
        raise DestinationError(f"destination {url!r}: unknown scheme {parsed.scheme!r} (use s3://, file:// or a path)")
    return Destination("file", "", url.rstrip("/") or ".")


def split_video_file(url: str) -> Destination:
    """`url` as a destination (`parse_destination`) with its last part split off as the MP4 it names (`file`)
    when that ends in `.mp4`, any case (`long.mp4/` is a folder, `s3://bucket.mp4` a bucket). The name is not
    checked: `render_destination` does."""
    whole = parse_destination(url)
    if url.endswith("/") or not whole.prefix.lower().endswith(VIDEO_SUFFIX):
        return whole
    folder, slash, name = whole.prefix.rpartition("/")
    if whole.scheme == "file" and not folder:
        folder = "/" if slash else "."
    return Destination(whole.scheme, whole.bucket, folder, normalized(name))


def render_destination(url: str) -> Destination:
    """A render's destination: a folder or prefix, or the MP4 itself (`split_video_file`: `s3://bucket/dir/long.mp4`,
    `long.mp4`), whose name is a key component written as it is: name characters (`jobs.names`), '=' and '+',
    starting with none of '.'."""
    destination = split_video_file(url)
    name = destination.file
    if not name:
        return destination
    problem = _literal_problem(name, "it", FILE_NAME_PUNCTUATION) or component_problem(name)
    if name.startswith("."):
        problem = f"{name!r} starts with '.': give the MP4 a name, e.g. 'render.mp4'"
    if problem:
        raise DestinationError(f"destination {shortened(url)}: the file name {problem}")
    return destination


def sanitize_component(value: object) -> str:
    """One key component from a field value: characters that may not stand in a name become '_', leading and
    trailing dots go, never empty. A valid name, a number or a digest is kept as it is."""
    text = "".join(c if is_name_char(c) else "_" for c in str(value))
    return text.strip(".") or "_"


def _literal_problem(text: str, what: str, punctuation: str = KEY_PUNCTUATION) -> str | None:
    """Why literal key text (`what`: how the message names it) holds a character no key may, or None."""
    bad = [c for c in text if not (is_name_char(c) or c in punctuation)]
    if not bad:
        return None
    marks = [f"'{c}'" for c in NAME_PUNCTUATION + punctuation]
    return (
        f"holds {bad[0]!a}: {what} may only hold letters, digits, {', '.join(marks[:-1])} and {marks[-1]} "
        "(no backslash, '%', space or control character)"
    )


def _template_problem(template: str, known: tuple[str, ...]) -> str | None:
    """Why `template` is not plain known fields and key-safe literal text, as a phrase; None if it is."""
    problem = surrogate_problem(template)
    if problem:
        return problem
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        return f"is not a template ({e}); write fields as {{job}}, and no other braces"
    for literal, name, spec, conversion in parsed:
        problem = _literal_problem(literal, "its text")
        if problem:
            return problem
        if name is None:
            continue
        if not name:
            return "has an unnamed field {}; name it, e.g. {job}"
        if spec or conversion:
            written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            return f"formats the field {written}; write it plain, as {{{name}}}"
        if name not in known:
            return f"uses the unknown field {{{name}}}; known: {', '.join(f'{{{k}}}' for k in sorted(known))}"
    return None


def _key_problem(key: str) -> str | None:
    for component in key.split("/"):
        problem = component_problem(component)
        if problem:
            return problem
    return None


def key_template_problem(template: str, campaign: bool = False) -> str | None:
    """Why a key template must be refused before any render, as a phrase; None if its keys are safe and a job's
    MP4 and sidecar land on two keys (on one, the sidecar, uploaded last, would replace the MP4 and the job
    would count as done)."""
    known = (*KEY_FIELDS, "campaign") if campaign else KEY_FIELDS
    template = normalized(template)
    problem = _template_problem(template, known)
    if problem:
        return problem
    video, sidecar = (template.format(**_SAMPLE, ext=ext) for ext in ("mp4", "json"))
    problem = _key_problem(video) or _key_problem(sidecar)
    if problem:
        return f"{problem}; keys are relative paths"
    if video == sidecar:
        example = CAMPAIGN_KEY_TEMPLATE if campaign else DEFAULT_KEY_TEMPLATE
        return f"puts a job's MP4 and its sidecar on one key; add {{ext}}, e.g. {example!r}"
    return None


def check_key_template(template: str, campaign: bool = False) -> None:
    """Raise DestinationError when `key_template_problem` finds one."""
    problem = key_template_problem(template, campaign)
    if problem:
        raise DestinationError(f"key template {shortened(template)} {problem}")


def render_key(template: str, fields: dict[str, object]) -> str:
    """Fill `template` (in NFC, as names are) with sanitised `fields`; refuse templates that would escape the
    prefix or make a component no file system holds."""
    template = normalized(template)
    problem = _template_problem(template, tuple(fields))
    if problem is None:
        key = template.format(**{k: sanitize_component(v) for k, v in fields.items()})
        problem = _key_problem(key)
        if problem is None:
            return key
    raise DestinationError(f"key template {shortened(template)} {problem}")


def output_keys(template: str, job: ValidJob, campaign: str | None = None) -> tuple[str, str]:
    """The object keys of a job's MP4 and sidecar under a destination."""
    check_key_template(template, campaign is not None)
    fields: dict[str, object] = {
        "job": output_paths(job, Path(".")).video.stem,
        "name": job.spec.name or "render",
        "seed": job.spec.seed,
        "hash": job_content_hash(job)[:12],
    }
    if campaign is not None:
        fields["campaign"] = campaign
    return render_key(template, {**fields, "ext": "mp4"}), render_key(template, {**fields, "ext": "json"})


def destination_keys(
    destination: Destination | None, template: str, job: ValidJob, campaign: str | None = None
) -> tuple[str, str]:
    """The object keys of a job's MP4 and sidecar under a destination: the MP4 it names and its sidecar, else
    `template`'s."""
    if destination is not None and destination.file:
        return destination.file, destination.sidecar
    return output_keys(template, job, campaign)


def output_key_problem(
    destination: Destination, template: str, job: ValidJob, campaign: str | None = None
) -> str | None:
    """Why a valid job's keys under a checked template (or the file the destination names) do not fit, as a phrase
    that follows the job's name (the destination's): S3's 1024 bytes with the prefix; in a folder, a component
    longer than a file name. None when they fit."""
    try:
        keys = destination_keys(destination, template, job, campaign)
    except DestinationError as e:
        return f"gives no usable object key: {e}; shorten the name or the key template"
    for key in keys:
        if destination.scheme == "s3":
            full = join_key(destination.prefix, key)
            size = len(full.encode("utf-8"))
            if size > KEY_BYTES:
                fix = "the file name or the prefix" if destination.file else "the name, the prefix or the key template"
                return (
                    f"gives the object key {shortened(full)} of {size} bytes in UTF-8, more than S3's {KEY_BYTES}; "
                    f"shorten {fix}"
                )
            continue
        for component in key.split("/"):
            size = len(component.encode("utf-8"))
            if size > MAX_COMPONENT_BYTES:
                fix = "the file name" if destination.file else "the name or the key template"
                return (
                    f"gives the file {shortened(key)} in {shortened(destination.prefix)}, with a part of {size} bytes "
                    f"in UTF-8; at most {MAX_COMPONENT_BYTES} fit a file name (with its temporary's "
                    f"'.partial-<pid>'); shorten {fix}"
                )
    return None


def check_output(url: str, template: str | None, job: ValidJob) -> Destination:
    """`render --output URL [--key-template T]` checked against the job before any compute (no template: the
    default, under a folder). A destination naming the MP4 takes no template: its keys are that file and its
    sidecar."""
    destination = render_destination(url)
    if destination.file:
        if template is not None:
            raise DestinationError(
                f"destination {shortened(url)} names the MP4 itself, which leaves a key template nothing to place; "
                f"drop the key template, or end the destination with '/' for a folder of that name"
            )
        problem = output_key_problem(destination, DEFAULT_KEY_TEMPLATE, job)
        if problem:
            raise DestinationError(f"destination {shortened(url)} {problem}")
        return destination
    template = DEFAULT_KEY_TEMPLATE if template is None else template
    check_key_template(template)
    problem = output_key_problem(destination, template, job)
    if problem:
        raise DestinationError(f"name {shortened(job.spec.name or 'render')} {problem}")
    return destination


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key
