"""`ltx2-farm campaign …`: submit manifests, run the queue, watch and steer campaigns."""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from cluster.exit_codes import ExitCode
from jobs.text import printable

CREATES_STORE = ("submit", "run")
"""The actions that make the store when there is none; the others say so instead (`NoStore`)."""


class NoStore(LookupError):
    """A campaign action on a store that does not exist: most likely another store was meant."""


HELP = """\
examples:
  ltx2-farm campaign submit spring.yaml            validate and queue (bad rows listed, good rows queued)
  ltx2-farm campaign run --workers 2 --models s3://bucket/ltx2
                                                   run the queue until nothing can start (Ctrl-C safe)
  ltx2-farm campaign status spring --json          progress, ETA, why it waits (window, budget, ...)
  ltx2-farm campaign pause spring                  no new jobs start; running ones finish
  ltx2-farm campaign retry-failed spring           requeue failed jobs
"""


def add_campaign_parser(sub: Any, epilog: str) -> None:
    from cluster.cli import (  # cluster.cli builds this parser: imported when called
        add_metrics_flags,
        add_model_flags,
        add_output_flags,
        add_speed_flags,
    )

    camp = sub.add_parser(
        "campaign",
        help="campaigns: durable queue of many jobs",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_db_flag(camp)
    actions = camp.add_subparsers(dest="campaign_command", required=True, metavar="ACTION")
    submit = actions.add_parser("submit", help="validate a manifest and queue its jobs")
    submit.add_argument("manifest")
    submit.add_argument("--suspended", action="store_true", help="queue but do not start until resumed")
    submit.add_argument("--json", action="store_true")
    run = actions.add_parser("run", help="run queued jobs on the workers (the farm's coordinator)")
    run.add_argument("--workers", type=int, default=1, help="workers (or gangs, with --placement) in the pool")
    run.add_argument(
        "--placement",
        choices=["replica", "sequence", "guidance", "sharded"],
        default="replica",
        help="pool shape: one GPU per worker (replica), or gangs of --gpus GPUs; every mode renders the same output",
    )
    run.add_argument("--gpus", type=int, help="GPUs per gang (default 2)")
    run.add_argument("--out", default="renders", help="local output root (a folder per campaign)")
    run.add_argument("--address", help="join this Ray cluster (env RAY_ADDRESS)")
    run.add_argument("--device", choices=["cuda", "cpu"])
    add_speed_flags(run)
    run.add_argument("--forever", action="store_true", help="keep waiting for windows and new jobs")
    run.add_argument("--endpoint-url", help="S3-compatible endpoint for s3:// outputs (env AWS_ENDPOINT_URL)")
    run.add_argument("--addressing-style", choices=["auto", "path", "virtual"], default="auto")
    add_metrics_flags(run, "while running")
    add_model_flags(run)
    add_output_flags(run)
    run.add_argument("--json", action="store_true")
    status = actions.add_parser("status", help="progress and ETA")
    status.add_argument("campaign", nargs="?")
    status.add_argument("--json", action="store_true")
    logs = actions.add_parser(
        "logs", help="the campaign's events and a line per job attempt: outcome, worker, duration, OOM rung, error"
    )
    logs.add_argument("campaign")
    logs.add_argument("--job", metavar="ID", help="only this job's attempts and events")
    logs.add_argument("--full", action="store_true", help="each attempt's whole error, traceback included")
    logs.add_argument("--json", action="store_true")
    lst = actions.add_parser("list", help="all campaigns")
    lst.add_argument("--json", action="store_true")
    for name, text in (
        ("pause", "stop starting new jobs"),
        ("resume", "start jobs again"),
        ("cancel", "drop queued jobs"),
        ("retry-failed", "requeue failed jobs"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument("campaign")
        if name in ("pause", "resume", "cancel"):
            p.add_argument("--job", help="only this job")
        p.add_argument("--json", action="store_true")
    for action in actions.choices.values():  # before the action or after it
        add_db_flag(action)


def add_db_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=argparse.SUPPRESS,  # not given here: the other place's, else the settings' (`cluster.settings`)
        help="campaign store (SQLite, WAL); env LTX2_FARM_DB; default: farm.db in the per-user data folder "
        "(`ltx2-farm config show`)",
    )


def open_store(args: argparse.Namespace, create: bool) -> Any:
    """The campaign store the settings name, said once on stderr ("store: …") unless the command line gave it
    (--db) or the output is --json. A store that does not exist is made only when `create`; otherwise `NoStore`,
    naming where it was looked for."""
    from cluster.campaign_store import Store
    from cluster.cli import farm_settings, setting_origins

    path = farm_settings(args).db
    if not create and not path.is_file():
        raise NoStore(
            f"no campaign store at {path}: nothing was submitted to it (`ltx2-farm campaign submit` makes it), or "
            "the store is elsewhere: give it with --db or LTX2_FARM_DB (`ltx2-farm config show`)"
        )
    if not args.json and setting_origins(args)["db"] != "--db":
        sys.stderr.write(f"store: {printable(str(path))}\n")
    return Store(path)


def _print(args: argparse.Namespace, payload: Any, human: str) -> None:
    print(json.dumps(payload, indent=2, default=str) if args.json else printable(human, keep_newlines=True))


def _bar(fraction: float, width: int = 30) -> str:
    filled = round(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + f"] {fraction * 100:5.1f}%"


def cmd_campaign(args: argparse.Namespace) -> int:
    from cluster.campaign_manifest import load_manifest

    action = args.campaign_command
    if action == "run":
        return _run(args)
    # a manifest is refused before anything is made, the store included
    manifest = load_manifest(Path(args.manifest)) if action == "submit" else None
    store = open_store(args, create=action in CREATES_STORE)
    try:
        if manifest is not None:
            result = store.submit(manifest.spec, manifest.jobs, suspended=args.suspended)
            problems = [
                {
                    "row": p.row,
                    "id": p.row_id,
                    "field": p.problem.field,
                    "value": p.problem.value,
                    "problem": p.problem.problem,
                    "nearest": p.problem.nearest,
                }
                for p in manifest.problems
            ]
            payload = {"ok": True, "campaign": manifest.spec.campaign, **result, "invalid_rows": problems}
            human = (
                f"{manifest.spec.campaign}: {result['new']} job(s) queued, {result['existing']} already known"
                + "".join(f"\n  skipped row {p.row} ({p.row_id}): {p.problem.message()}" for p in manifest.problems)
            )
            _print(args, payload, human)
            return ExitCode.ROWS_SKIPPED if problems else ExitCode.OK
        if action == "list":
            from cluster.campaign_runner import campaign_status

            rows = [campaign_status(store, n) for n in store.campaign_names()]
            for r in rows:
                r.pop("outputs")
            _print(
                args,
                rows,
                "\n".join(
                    f"{r['campaign']:<24} {r['state']:<10} prio {r['priority']:<3} "
                    f"{_bar(r['progress'])} {r['jobs']['done']}/{r['total']}"
                    for r in rows
                )
                or "no campaigns",
            )
            return ExitCode.OK
        if action == "status":
            from cluster.campaign_runner import campaign_status

            names = [args.campaign] if args.campaign else store.campaign_names()
            rows = [campaign_status(store, n) for n in names]
            lines = []
            for r in rows:
                eta = f", ETA {r['eta_seconds'] / 60:.1f} min" if r["eta_seconds"] else ""
                waiting = f"\n  waiting: {r['waiting']}" if r["waiting"] else ""
                counts = ", ".join(f"{k} {v}" for k, v in r["jobs"].items() if v)
                lines.append(f"{r['campaign']} ({r['state']}): {_bar(r['progress'])} {counts}{eta}{waiting}")
            _print(args, rows if not args.campaign else rows[0], "\n".join(lines))
            return ExitCode.OK
        if action == "logs":
            entries = campaign_log(store, args.campaign, args.job, args.full)
            _print(args, entries, "\n".join(_log_line(e) for e in entries) or f"{args.campaign}: nothing logged")
            return ExitCode.OK
        if action in ("pause", "resume", "cancel"):
            state = {"pause": "paused", "resume": "queued" if args.job else "active", "cancel": "cancelled"}[action]
            if args.job:
                store.set_job_state(args.campaign, args.job, state)
            else:
                store.set_campaign_state(args.campaign, state)
            _print(
                args,
                {"ok": True, "campaign": args.campaign, "job": args.job, "state": state},
                f"{args.campaign}{'/' + args.job if args.job else ''}: {state}",
            )
            return ExitCode.OK
        if action == "retry-failed":
            n = store.retry_failed(args.campaign)
            _print(args, {"ok": True, "requeued": n}, f"{args.campaign}: {n} failed job(s) requeued")
            return ExitCode.OK
        raise AssertionError(action)
    finally:
        store.close()


def campaign_log(store: Any, campaign: str, job: str | None = None, full: bool = False) -> list[dict[str, Any]]:
    """A campaign's log in time order (with `job`, that job's): its events and a record per job attempt
    (`cluster.console.attempt_event`; with `full`, its whole error as `trace`)."""
    from cluster.console import attempt_event
    from jobs.text import one_line, without_escapes

    if job is not None:
        store.job_state(campaign, job)  # NotFound, with the nearest job id, for a misspelt one
    entries = [
        {"event": "log", "ts": e["ts"], "job": e["job"], "message": e["message"] if full else one_line(e["message"])}
        for e in store.logs(campaign)
        if job is None or e["job"] == job
    ]
    for a in store.attempts(campaign, job):
        entry = attempt_event(a)
        entry["ts"] = a["ended"] if a["ended"] is not None else a["started"]
        if full:
            entry["trace"] = without_escapes(a.get("trace") or a.get("error") or "") or None
        entries.append(entry)
    return sorted(entries, key=lambda e: e["ts"])


def _log_line(entry: dict[str, Any]) -> str:
    from cluster.console import attempt_line

    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["ts"]))
    if entry["event"] == "log":
        return f"{when} {entry['job'] or '-':<20} {entry['message']}"
    line = f"{when} {attempt_line(entry)}"
    trace = entry.get("trace")
    return line + ("\n    " + trace.rstrip("\n").replace("\n", "\n    ") if trace else "")


def _run(args: argparse.Namespace) -> int:
    from cluster.cli import check_model_choice, start_metrics

    metrics = start_metrics(args)  # first: its port is held before anything else starts
    try:
        check_model_choice(args)  # no model set given: said before the store opens or the queue is read
        store = open_store(args, create=True)
        try:
            return _run_queue(args, store, metrics)
        finally:
            store.close()
    finally:
        if metrics is not None:
            metrics.close()


def _run_queue(args: argparse.Namespace, store: Any, metrics: Any) -> int:
    from cluster.cli import UploadWaitLines, farm_settings, resolve_checkpoints, start_workers
    from cluster.service import CampaignRunRequest, CampaignWatch, run_campaigns

    settings = farm_settings(args)
    request = CampaignRunRequest(
        Path(args.out).absolute(),  # the store records output paths: absolute, whichever folder reads them
        args.workers,
        args.placement,
        args.gpus,
        settings.address,
        endpoint_url=settings.endpoint_url,
        addressing_style=args.addressing_style,
        forever=args.forever,
    )
    watch = CampaignWatch()
    if not (args.json or args.quiet):
        from cluster.console import CampaignProgress, Screen, draws_bars

        screen = Screen(sys.stderr)
        jobs = CampaignProgress(screen, draws_bars(sys.stderr), store.ended_attempts)
        watch = CampaignWatch(jobs.open, jobs.show, UploadWaitLines(screen.line), jobs.close)
    stats = run_campaigns(
        store, request, lambda: resolve_checkpoints(args), partial(start_workers, args), metrics, watch
    )
    failed = stats["failed"] + stats.get("quarantined", 0)
    _print(args, {"ok": not failed, **stats}, ", ".join(f"{k} {v}" for k, v in stats.items()))
    if failed or stats.get("stopped"):
        why = f"{failed} job(s) failed" + (f" ({stats['quarantined']} quarantined)" if stats.get("quarantined") else "")
        if stats.get("stopped"):
            why = "every worker was blocklisted" + (f" and {why}" if failed else "")
        print(f"error: {why}: `ltx2-farm campaign status` and `campaign logs NAME` say which and why", file=sys.stderr)
        return ExitCode.JOBS_FAILED
    return ExitCode.OK
