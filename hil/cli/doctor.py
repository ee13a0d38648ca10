"""``hil doctor``: say what stops a backend URL from reaching its target."""

from __future__ import annotations

import argparse
import json

from hil.cli.common import add_common


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor",
                       description="Run the diagnostics registered for the URL's scheme (devport: kernel lockdown, "
                                   "CAP_SYS_RAWIO, /dev/port, the /dev/mem window and its reservation; sim: opens). "
                                   "Exit status: 0 all checks passed, 1 a check failed.")
    p.add_argument("url", nargs="?", default="sim", metavar="URL", help="backend URL (default: sim)")
    add_common(p, backend=False)
    p.set_defaults(func=cmd_doctor)


async def cmd_doctor(args: argparse.Namespace) -> int:
    from hil.doctor import run_doctor

    report = await run_doctor(args.url)
    print(json.dumps(report.to_json()) if args.json else report.format())
    return report.exit_code
