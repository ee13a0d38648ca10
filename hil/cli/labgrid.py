"""``hil labgrid``: places on a labgrid coordinator as benches; ``hil run --place`` fans out over them."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from hil.cli.common import parse_variables
from hil.errors import HilError

if TYPE_CHECKING:
    from hil.labgrid.session import Coordinator


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("labgrid",
                       description="Benches shared through a labgrid coordinator (README: Sharing benches). "
                                   "A place's lock is stale when the lpc-hil run that took it is gone "
                                   "(docs/reference/labgrid.md §3).")
    _options(p, argparse.SUPPRESS)  # here or after the command: 'hil labgrid --json places' as 'places --json'
    p.set_defaults(coordinator=None, log_format="console", verbose=0, json=False)
    cmds = p.add_subparsers(dest="labgrid_command", required=True, metavar="COMMAND", help="places or release")
    places = cmds.add_parser("places", help="list places with their lock state and tags")
    places.add_argument("selector", nargs="?", default="", metavar="SELECTOR",
                        help="only places matching: name=GLOB, tag=KEY, KEY=VALUE, joined by ','")
    release = cmds.add_parser("release", help="release a stale (or, with --force, any) place lock",
                              description="Release PLACE when its lock is stale or this user's; refuse a live "
                                          "lock of someone else unless --force. Exit status: 0 released or already "
                                          "free, 1 refused, 2 error.")
    release.add_argument("places", nargs="*", metavar="PLACE", help="place name(s)")
    release.add_argument("--stale", action="store_true", help="release every stale lock on the coordinator")
    release.add_argument("--force", action="store_true", help="release even a live lock held by someone else")
    for q in (places, release):
        _options(q, argparse.SUPPRESS)
        q.set_defaults(func=cmd_labgrid)


def _options(p: argparse.ArgumentParser, default: str) -> None:
    """--coordinator and the common options; their defaults are the ``labgrid`` parser's, so that
    a subcommand's parser does not overwrite what was given before the subcommand's name."""
    p.add_argument("--coordinator", "-x", metavar="HOST:PORT", default=default,
                   help="labgrid coordinator (default: LG_COORDINATOR, else 127.0.0.1:20408)")
    p.add_argument("--log-format", choices=("console", "json"), default=default, help="structlog output format")
    p.add_argument("-v", "--verbose", action="count", default=default, help="more log output (-vv for debug)")
    p.add_argument("--json", action="store_true", default=default, help="machine-readable output on stdout")


async def cmd_labgrid(args: argparse.Namespace) -> int:
    from hil.labgrid.address import coordinator_address
    from hil.labgrid.session import Coordinator

    async with Coordinator(coordinator_address(args.coordinator)) as coordinator:
        if args.labgrid_command == "places":
            return _places(args, coordinator)
        return await _release(args, coordinator)


def _places(args: argparse.Namespace, coordinator: Coordinator) -> int:
    from hil.labgrid.address import Selector

    selector = Selector.parse(args.selector) if args.selector else None
    rows: list[dict[str, Any]] = []
    for name, info in coordinator.places().items():
        if selector is not None and not selector.matches(name, info.tags):
            continue
        verdict = coordinator.verdict(name)
        rows.append({"place": name, "state": verdict.state.value, "holder": verdict.holder, "reason": verdict.reason,
                     "tags": info.tags})
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        tags = ",".join(f"{k}={v}" for k, v in sorted(row["tags"].items()))
        print(f"{row['place']:<20} {row['state']:<6} {tags:<30} {row['reason']}")
    return 0


async def _release(args: argparse.Namespace, coordinator: Coordinator) -> int:
    from hil.labgrid.lock import LEASE_TAG, PID_TAG, LockState

    names = list(args.places)
    if args.stale:
        names += [n for n in coordinator.places() if coordinator.verdict(n).state is LockState.STALE and n not in names]
    elif not names:
        raise HilError("labgrid release: name a PLACE (or give --stale)")
    worst = 0
    done = []
    for name in names:
        verdict = coordinator.verdict(name)
        match verdict.state:
            case LockState.FREE:
                line = f"{name}: not acquired"
            case LockState.LIVE if not args.force:
                line = f"{name}: refused, busy: {verdict.reason} (--force releases it anyway)"
                worst = 1
            case _:
                await coordinator.set_tags(name, {PID_TAG: "", LEASE_TAG: ""})
                await coordinator.release(name, holder=verdict.holder)
                line = f"{name}: released ({verdict.state.value}: {verdict.reason})"
        done.append({"place": name, "state": verdict.state.value, "result": line})
        if not args.json:
            print(line)
    if args.json:
        print(json.dumps(done))
    return worst


# --- hil run --place ------------------------------------------------------------------------


async def run_on_places(args: argparse.Namespace) -> int:
    """``hil run --place SELECTOR``: every matching place that is free (or stale, or this user's)
    runs the scripts, all places at once (one worker process each, as ``hil diff`` runs
    backends); busy ones are reported and left alone. Exit status: the worst of the places'."""
    from hil.labgrid.address import Selector, coordinator_address
    from hil.labgrid.session import Coordinator
    from hil.script import load_script
    from hil.workers import run_on_backends

    selector = Selector.parse(args.place)
    address = coordinator_address(args.coordinator)
    async with Coordinator(address) as coordinator:
        matching = {n: coordinator.verdict(n) for n, i in coordinator.places().items() if selector.matches(n, i.tags)}
    if not matching:
        raise HilError(f"--place {args.place}: no place on {address} matches")
    free = [n for n, v in matching.items() if v.usable]
    busy = {n: v for n, v in matching.items() if not v.usable}
    scripts = [load_script(p, variables=parse_variables(args.var), allow_paths=args.allow_path) for p in args.scripts]
    urls = [f"labgrid://{address}/{n}" for n in free]
    errors: dict[int, HilError] = {}
    grid = await run_on_backends(scripts, urls, journal_dir=args.journal_dir, variables=args.var,
                                 allow_paths=args.allow_path, errors=errors) if urls else []
    worst = 0
    report: list[dict[str, Any]] = []
    for b, name in enumerate(free):
        for s, script in enumerate(scripts):
            result = grid[b][s]
            status = result.status if result is not None else "error"
            error = (result.error if result is not None else str(errors.get(b, "worker failed"))) or ""
            worst = max(worst, {"passed": 0, "skipped": 0, "failed": 1}.get(status, 2))
            report.append({"place": name, "script": script.name, "status": status, "error": error})
    for name, verdict in busy.items():
        report.append({"place": name, "script": None, "status": "busy", "error": verdict.reason})
    if args.json:
        print(json.dumps(report))
    else:
        for row in report:
            what = f" {row['script']}" if row["script"] else ""
            why = f" ({row['error']})" if row["error"] and row["status"] != "passed" else ""
            print(f"{row['place']}:{what} {str(row['status']).upper()}{why}")
        ran = len(free)
        print(f"{ran} place{'s' if ran != 1 else ''} ran, {len(busy)} busy", file=sys.stderr if args.quiet else sys.stdout)
    return worst
