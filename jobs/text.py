"""Text from users: decoded once, normalised once, checked, and escaped before it reaches a terminal. Pure.

- **Decoding.** Files are read as UTF-8 (a leading byte-order mark is dropped). Where a file is read row by row
  (JSONL, CSV rows files) bytes that are not UTF-8 are kept as lone surrogates (Python's `surrogateescape`), as
  command-line arguments are, so that only the row or field holding them is refused. YAML's `"\\ud83e\\udd8a"`
  escapes (what `json.dumps` writes for an emoji) come out of PyYAML as two surrogates: `join_surrogate_pairs`
  makes them the one character they stand for. Any surrogate left is refused where its field is validated.
- **Normalisation.** Prose and names are put in Unicode NFC, with CRLF line breaks as LF, once, where the job
  layer takes them (`validate_job`, `parse_manifest`): the same words typed on two systems are the same job.
  Not NFKC, which rewrites meaning ("x²" → "x2"). File paths and URLs are never normalised: on Linux a file
  name is its bytes, and another form of it names another file.
- **Prose** (prompts) may hold any character but controls: C0 other than tab and newline, DEL, C1, the
  bidirectional embeddings, overrides and isolates (they reorder how the text around them displays), and a
  byte-order mark inside the text (left by joining exported files). Names follow `jobs.names`.
- **Terminals.** `printable` escapes every character that is not printable before user input is shown, so a
  row id or a prompt cannot move the cursor, retitle the window (OSC), overwrite a line (CR) or reorder text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from typing import Any

_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Embeddings, overrides and isolates: they change the order in which the following text displays."""
BYTE_ORDER_MARK = "\ufeff"


def join_surrogate_pairs(data: Any) -> Any:
    """`data` (a parsed YAML/JSON document: mappings, lists, strings) with every high+low surrogate pair in its
    strings, keys included, made the character it encodes. Lone surrogates stay for validation to refuse."""
    if isinstance(data, str):
        if not _SURROGATE.search(data):
            return data
        return _PAIR.sub(lambda m: m.group().encode("utf-16-le", "surrogatepass").decode("utf-16-le"), data)
    if isinstance(data, dict):
        return {join_surrogate_pairs(k): join_surrogate_pairs(v) for k, v in data.items()}
    if isinstance(data, list):
        return [join_surrogate_pairs(v) for v in data]
    return data


def normalized(text: str) -> str:
    """Prose or a name as the farm keeps it: NFC, line breaks as LF."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n"))


def surrogate_problem(text: str) -> str | None:
    """Why `text` is not Unicode text (it holds a surrogate), or None."""
    found = _SURROGATE.search(text)
    if found is None:
        return None
    code = ord(found.group())
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for one undecodable byte
        return (
            f"holds bytes that are not UTF-8 (0x{code - 0xDC00:02X} at character {found.start() + 1}); "
            "save the file as UTF-8 (or fix the terminal's encoding)"
        )
    return (
        f"holds a lone UTF-16 surrogate (\\u{code:04x} at character {found.start() + 1}), half of a character; "
        "write the character itself or its complete \\uXXXX\\uXXXX pair"
    )


def _described(char: str, at: int) -> str:
    return f"{char!a} ({unicodedata.name(char, 'a control character')}) at character {at + 1}"


def prose_problem(text: str) -> str | None:
    """Why `text` cannot be a prompt (undecodable bytes, control characters), or None. Tab and newline are
    ordinary whitespace in prose; so are the no-break space and the zero-width joiners emoji and scripts need."""
    problem = surrogate_problem(text)
    if problem:
        return problem
    for at, char in enumerate(text):
        code = ord(char)
        if (code < 0x20 and char not in "\t\n") or 0x7F <= code <= 0x9F:
            return f"contains control characters ({_described(char, at)}); remove them"
        if char in BIDI_CONTROLS:
            return f"contains a bidirectional override ({_described(char, at)}), which reorders the text; remove it"
        if char == BYTE_ORDER_MARK:
            return f"contains a byte-order mark ({_described(char, at)}) inside the text; remove it"
    return None


def printable(text: object, keep_newlines: bool = False) -> str:
    """`str(text)` safe to write to a terminal: every character that is not printable (controls, ANSI and OSC
    escapes, CR, DEL, C1, bidirectional controls, surrogates, zero-width and separator characters) written as its
    Python escape (`\\x1b`, `\\u202e`). `keep_newlines` keeps the line breaks of our own multi-line output."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or (keep_newlines and c == "\n") else ascii(c)[1:-1] for c in text)


ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
"""Terminal escape sequences (colours, cursor moves, OSC titles) as libraries write them into their messages."""


def without_escapes(text: str) -> str:
    """`text` with its terminal escape sequences removed (Ray colours the tracebacks it forwards)."""
    return ANSI_ESCAPE.sub("", text)


def one_line(text: str, limit: int = 300) -> str:
    """An error's text as one line of at most `limit` characters: escapes removed; of a traceback its last line
    (the exception), else every line joined."""
    lines = [line.strip() for line in without_escapes(text).splitlines() if line.strip()]
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        lines = lines[-1:]
    joined = " ".join(lines)
    return joined if len(joined) <= limit else f"{joined[: limit - 1]}…"


def shortened(value: object, limit: int = 60) -> str:
    """`value` as a message shows it: its repr (controls escaped), cut to `limit` characters."""
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[: limit - 1]}…"


def strings(data: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, text) of every string value in a mapping/list tree, paths as pydantic writes them:
    `("images.0.path", "a.png")`."""
    if isinstance(data, str):
        yield path, data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            yield from strings(value, f"{path}.{i}")
