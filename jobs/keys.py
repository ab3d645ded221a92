"""Output destinations and object keys. Pure: parsing and sanitising only.

A destination is `s3://bucket/prefix`, `file:///abs/dir` or a plain path. Keys come from a template such
as `{campaign}/{job}/{seed}.mp4`; every field value is sanitised (no `..`, no `/` inside a value, no
control characters) and the finished key must be relative: a job can never write outside its prefix.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

DEFAULT_KEY_TEMPLATE = "{job}-seed{seed}.{ext}"
_SAFE = re.compile(r"[^A-Za-z0-9._=+-]")


class DestinationError(ValueError):
    """A destination or key that would be unsafe or cannot be used."""


@dataclass(frozen=True)
class Destination:
    scheme: str  # "s3" or "file"
    bucket: str  # s3 bucket, or "" for files
    prefix: str  # key prefix (s3) or directory (file), no trailing slash

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.scheme == "s3" else self.prefix


def parse_destination(url: str) -> Destination:
    """`s3://bucket/prefix`, `file:///dir` or a plain directory path."""
    if any(ord(c) < 32 for c in url):
        raise DestinationError("destination contains control characters")
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


def sanitize_component(value: object) -> str:
    """One path component: unsafe characters become '_', never empty, never '.' or '..'."""
    text = _SAFE.sub("_", str(value))
    text = text.strip(".") or "_"
    return text[:200]


def render_key(template: str, fields: dict[str, object]) -> str:
    """Fill `template` with sanitised `fields`; refuse templates that would escape the prefix."""
    if any(ord(c) < 32 for c in template):
        raise DestinationError("key template contains control characters")
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    missing = names - fields.keys()
    if missing:
        raise DestinationError(
            f"key template {template!r} uses unknown field(s) {sorted(missing)}; known: {sorted(fields)}"
        )
    key = template.format(**{k: sanitize_component(v) for k, v in fields.items()})
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise DestinationError(f"key {key!r} from template {template!r} is not a clean relative path")
    return key


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key
