"""The exit codes of `ltx2-farm`: one table for every command, mirrored in README's "Exit codes" section.

Scripts and schedulers (cron, a Kubernetes Job, `ray job submit`) decide from the code alone whether to fix
the input, retry later, or look at failed jobs; the one-line message on stderr says the rest.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    INVALID_INPUT = 2
    ROWS_SKIPPED = 3
    JOBS_FAILED = 4
    NOT_FOUND = 5
    UPLOAD_FAILED = 6
    INTERRUPTED = 130


MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "ok",
    ExitCode.ERROR: "unexpected error (a bug in the farm): its traceback follows",
    ExitCode.INVALID_INPUT: "invalid input (job, flag, file, no model set given, checkpoint, config file, destination, "
    "credentials, metrics address) or a full disk: the message names the fix",
    ExitCode.ROWS_SKIPPED: "campaign submit: the good rows were queued, the bad rows skipped (each listed)",
    ExitCode.JOBS_FAILED: "campaign run: jobs failed (retries spent, or quarantined), or every worker was blocklisted",
    ExitCode.NOT_FOUND: "no such campaign or job in the store, or no store where the settings point",
    ExitCode.UPLOAD_FAILED: "an upload failed after the work was done: nothing is lost, the files stay where the "
    "message says",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C): stopped cleanly; the message says what was kept and where",
}


def table() -> str:
    """The codes and their meanings, one line each (for `--help`)."""
    return "\n".join(f"  {code.value:<4}{MEANINGS[code]}" for code in ExitCode)
