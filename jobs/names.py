"""One policy for every name that becomes a file name or an object-key component. Pure.

A job's `name`, a manifest row's `id` and a campaign's name become file names (`<name>-<hash12>-seed<seed>.mp4`
and its `.json`, each written through a `.<file>.partial-<pid>` temporary), folders (`renders/<campaign>/`) and
object-key components (`{name}`, `{job}`, `{campaign}`). One rule for the three, checked when a job, a row or a
campaign is validated, never at write time:

- letters and digits of any script (after the first, combining marks too), '-', '_' and '.'; in NFC
  (`jobs.text.normalized`), so that the same name typed on two systems is one file;
- starting with a letter or a digit: never only dots, never a hidden file, never read as a command-line flag;
- not ending with '.' (Windows drops it: `a.` and `a` would be one file) and not a Windows device name (CON, PRN,
  AUX, NUL, COM1-9, LPT1-9, alone or before a '.'), so that outputs copied to any disk keep their names;
- at most MAX_NAME_BYTES bytes in UTF-8: the longest file the farm writes for a name,
  `.<name>-<hash12>-seed<19 digits>.json.partial-<pid>`, then fits the 255-byte limit on a file name.

Object keys get their own checks (`jobs.keys`): at most KEY_BYTES with the prefix in a bucket; in a folder
(`file://`), each component at most MAX_COMPONENT_BYTES, as the copy is written through a temporary.
"""

from __future__ import annotations

import re
import unicodedata

from jobs.text import surrogate_problem

FILE_NAME_BYTES = 255
"""The longest file name (ext4, XFS, btrfs, ZFS: bytes; NTFS and APFS: 255 UTF-16 units or characters, which a
255-byte UTF-8 name never exceeds)."""
KEY_BYTES = 1024
"""S3's limit on an object key, in UTF-8 bytes."""
PID_DIGITS = 10
"""The widest process id a temporary file name can carry (a 32-bit pid)."""
TEMPORARY_BYTES = len(".") + len(".partial-") + PID_DIGITS
"""What a temporary adds to the name of the file it becomes: `.<file>.partial-<pid>`."""
SEED_DIGITS = len(str(2**63 - 1))
OUTPUT_SUFFIX_BYTES = len("-") + 12 + len("-seed") + SEED_DIGITS + len(".json")
"""What `jobs.outputs.output_paths` puts after the name: `-<hash12>-seed<seed>.json` (`.mp4` is shorter)."""
MAX_NAME_BYTES = FILE_NAME_BYTES - TEMPORARY_BYTES - OUTPUT_SUFFIX_BYTES
MAX_COMPONENT_BYTES = FILE_NAME_BYTES - TEMPORARY_BYTES
"""The longest key component in a folder destination (`file://`), which writes it through a temporary."""
NAME_PUNCTUATION = "-_."
RULE = "letters, digits, '-', '_' and '.', starting with a letter or digit"
_DEVICE = re.compile(r"(con|prn|aux|nul|com[1-9¹²³]|lpt[1-9¹²³])(\..*)?", re.IGNORECASE)


def is_name_char(char: str, first: bool = False) -> bool:
    """Whether `char` may stand in a name (`first`: as its first character)."""
    category = unicodedata.category(char)[0]
    if first:
        return category in "LN"
    return category in "LNM" or char in NAME_PUNCTUATION


def _shown_char(char: str) -> str:
    return f"{char!a} ({unicodedata.name(char, 'a control character')})"


def device_name(text: str) -> bool:
    """Whether `text` is a Windows device name (CON, NUL, COM1, ...), alone or before an extension."""
    return _DEVICE.fullmatch(text) is not None


def name_problem(name: str) -> str | None:
    """Why `name` (NFC already) cannot be a job name, row id or campaign name, with the fix; None if it can."""
    if not name:
        return f"is empty; give 1 to {MAX_NAME_BYTES} bytes of {RULE}"
    problem = surrogate_problem(name)
    if problem:
        return problem
    for at, char in enumerate(name):
        if not is_name_char(char, first=at == 0):
            return f"may only hold {RULE} (found {_shown_char(char)} at character {at + 1}){_fix(name)}"
    if name.endswith("."):
        return f"may not end with '.' (Windows drops it, and 'a.' would be the file 'a'){_fix(name)}"
    if device_name(name):
        return f"is a Windows device name (CON, PRN, AUX, NUL, COM1-9, LPT1-9), not a file name{_fix(name)}"
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return (  # no example: a name this long is better shortened by whoever chose it
            f"is {size} bytes in UTF-8; a name may have at most {MAX_NAME_BYTES} (its output file "
            f"'.<name>-<hash>-seed<seed>.json.partial-<pid>' must fit the {FILE_NAME_BYTES}-byte limit on file "
            "names); shorten it"
        )
    return None


def _fix(name: str) -> str:
    """'; e.g. SUGGESTION' for a bad name, when one can be made from it."""
    chars = [c if is_name_char(c) else "_" for c in name]
    text = "".join(chars).lstrip("".join(NAME_PUNCTUATION)).rstrip(".")
    while len(text.encode("utf-8")) > MAX_NAME_BYTES:
        text = text[:-1].rstrip(".")
    device = _DEVICE.fullmatch(text)
    if device:
        text = f"{device.group(1)}_{device.group(2) or ''}"
    if not text or not is_name_char(text[0], first=True) or text == name:
        return ""
    return f"; e.g. {text!r}"


def component_problem(component: str) -> str | None:
    """Why one component of an object key (between '/') cannot be a file or folder name anywhere, or None.
    Its length is the destination's business (`jobs.keys.output_key_problem`)."""
    if not component:
        return "has an empty component ('//', or a '/' at the start or end)"
    if set(component) == {"."}:
        return f"has the component {component!r}, which names a folder, not a file"
    if component.endswith("."):
        return f"has the component {component!r}, ending with '.' (Windows drops it)"
    if device_name(component):
        return f"has the component {component!r}, a Windows device name"
    return None
