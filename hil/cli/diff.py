"""``hil diff``: the same scripts on several backends, compared step by step."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from hil.backends import open_backend
from hil.cli.common import add_allow_path, add_common, parse_variables, write_report
from hil.errors import HilError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diff",
                       description="Run the scripts on every --backend at once (one worker process per backend, "
                                   "so wall time is that of the slowest), or compare saved journals (--journal), "
                                   "and report every divergence with its meaning. Exit status: 0 equal, "
                                   "1 diverged, 2 error.")
    p.add_argument("scripts", nargs="*", metavar="SCRIPT", help="transfer script (.toml) to run on every --backend")
    p.add_argument("--backend", "-b", action="append", default=[], metavar="URL", help="a backend (give two or more)")
    p.add_argument("--journal", action="append", default=[], metavar="FILE", help="compare saved journals instead")
    p.add_argument("--deviations", metavar="FILE", help="known-deviations list (TOML)")
    p.add_argument("--journal-dir", metavar="DIR", help="keep the workers' journals in DIR")
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="override a script variable")
    add_allow_path(p)
    add_common(p, backend=False)
    p.set_defaults(func=cmd_diff)


async def cmd_diff(args: argparse.Namespace) -> int:
    from hil.diff import DiffReport, compare, load_deviations
    from hil.journal import JournalError, read_journal
    from hil.script import load_script
    from hil.workers import run_on_backends

    deviations = load_deviations(args.deviations) if args.deviations else []
    if args.journal:
        if args.scripts or args.backend:
            raise HilError("give either saved journals (--journal) or scripts with --backend, not both")
        if len(args.journal) < 2:
            raise HilError("--journal: give at least two journals to compare")
        groups: dict[str, list] = {}
        for path in args.journal:
            try:
                r = read_journal(path)  # damaged lines are skipped and reported as warnings
            except JournalError as e:  # no usable header: nothing says what the records are
                raise HilError(f"--journal: {e}") from None
            groups.setdefault(r.script, []).append(r)
        report = DiffReport(backends=sorted({r.backend for rs in groups.values() for r in rs}))
        for rs in groups.values():
            if len(rs) < 2:
                report.errors.append(f"{rs[0].script}: only one journal, nothing to compare with")
            compare(rs, deviations, report)
    else:
        if len(args.backend) < 2:
            raise HilError("diff needs two or more --backend URLs (or --journal files)")
        if not args.scripts:
            raise HilError("diff needs at least one SCRIPT")
        variables = parse_variables(args.var)
        scripts = [load_script(path, variables=variables, allow_paths=args.allow_path) for path in args.scripts]
        for url in args.backend:
            open_backend(url)  # a bad URL fails here, before any worker starts

        def done(url: str, rc: int) -> None:
            if sys.stderr.isatty():
                sys.stderr.write(f"{url}: finished ({'ok' if rc == 0 else 'expectations failed' if rc == 1 else 'error'})\n")

        worker_errors: dict[int, HilError] = {}
        try:
            grid = await run_on_backends(scripts, args.backend, journal_dir=args.journal_dir, variables=args.var,
                                         allow_paths=args.allow_path, on_done=done, errors=worker_errors)
        except asyncio.CancelledError:
            kept = f"; journals kept in {args.journal_dir}" if args.journal_dir else ""
            args.interrupt_note = f"(workers stopped{kept})"
            raise
        report = DiffReport(backends=list(args.backend))
        for s, script in enumerate(scripts):
            runs = [grid[b][s] for b in range(len(args.backend))]
            missing = [b for b, r in enumerate(runs) if r is None]
            if missing:
                why = "; ".join(f"{args.backend[b]}: {worker_errors.get(b, 'worker failed to start')}" for b in missing)
                report.errors.append(f"{script.name}: no journal ({why})")
                continue
            compare([r for r in runs if r is not None], deviations, report)  # all of them: none is missing
    if args.junit:
        await write_report(args.junit, report.to_junit())
    print(json.dumps(report.to_json()) if args.json else report.format())
    return report.exit_code
