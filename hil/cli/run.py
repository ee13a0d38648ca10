"""``hil run``: transfer scripts on one backend, journaled."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hil.backends import open_backend
from hil.cli.common import add_common, parse_variables
from hil.errors import HilError
from hil.journal import Observation


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run transfer scripts on a backend",
                       description="Validate every script, then run each on the backend (a fresh connection "
                                   "per script), journaling every observation as it happens. Exit status: "
                                   "0 all expectations met, 1 an expectation failed, 2 error.")
    add_common(p)
    p.add_argument("scripts", nargs="+", metavar="SCRIPT", help="transfer script (.toml)")
    p.add_argument("--journal", metavar="FILE", help="JSONL journal (one script only)")
    p.add_argument("--journal-dir", metavar="DIR", help="one JSONL journal per script in DIR")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="override a script variable")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line per script")
    p.set_defaults(func=cmd_run)


def _describe_obs(o: Observation) -> str:
    if o.error:
        return f"error: {o.error}"
    if o.op == "in":
        shown = f"read 0x{o.value:02X}" if o.value is not None else "no value"
        if o.expect is not None:
            shown += f", expected 0x{o.expect:02X}" + (f" under mask 0x{o.mask:02X}" if o.mask not in (None, 0xFF, 0xFFFF) else "")
        return f"in 0x{o.port:02X}: {shown}"
    if o.op == "read":
        head = (o.data or "")[:32]
        return f"read 0x{o.addr:X}+{o.length}: {head}{'…' if o.data and len(o.data) > 32 else ''} {o.digest}" + (
            f", expected {str(o.expect)[:32]}" if o.ok is False else "")
    if o.op == "wait_tc":
        return f"wait_tc ch{o.channel}: tc={'yes' if o.tc else 'no'} residue {o.value} of {o.length}"
    if o.op == "residue":
        return f"residue ch{o.channel}: {o.value}" + (f", expected {o.expect}" if o.expect is not None else "")
    if o.op == "device":
        return f"device ch{o.channel}: {o.length} bytes moved, {'TC seen' if o.tc else 'no TC'}" + (
            f", digest {o.digest}" if o.digest else "")
    return o.op


def _progress(label: str) -> Callable[[int, int, Any], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(i: int, n: int, step: Any) -> None:
        sys.stderr.write(f"\r{label}: step {i + 1}/{n} ({step.op.value})   ")
        sys.stderr.flush()
        if i + 1 == n:
            sys.stderr.write("\r" + " " * (len(label) + 40) + "\r")

    return show


async def cmd_run(args: argparse.Namespace) -> int:
    from hil.runner import prepare, run_script
    from hil.script import load_script
    from hil.workers import journal_name

    if args.journal and len(args.scripts) > 1:
        raise HilError("--journal takes one script; use --journal-dir for several")
    variables = parse_variables(args.var)
    scripts = [load_script(path, variables=variables) for path in args.scripts]  # validate all first
    async with open_backend(args.backend) as be:  # ... and bind all against the backend: no I/O yet
        for script in scripts:
            prepare(script, be)
    worst = 0
    summaries = []
    for i, script in enumerate(scripts):
        journal = args.journal or (str(Path(args.journal_dir) / journal_name(i, script)) if args.journal_dir else None)
        async with open_backend(args.backend) as be:
            result = await run_script(script, be, journal=journal, progress=_progress(script.name))
        code = {"passed": 0, "failed": 1}.get(result.status, 2)
        worst = max(worst, code)
        summaries.append({"script": script.name, "file": script.file, "backend": result.backend,
                          "status": result.status, "error": result.error, "failures": len(result.failures),
                          "observations": [o.to_json() for o in result.observations], "journal": journal})
        if not args.json:
            print(f"{script.name} on {result.backend}: {result.status.upper()} — {len(script.steps)} steps, "
                  f"{len(result.observations)} observations, {len(result.failures)} failed expectation(s), "
                  f"{result.elapsed * 1e3:.1f} ms" + (f"\n  {result.error}" if result.error else ""))
            for o in result.observations:
                if o.ok is False or (args.verbose and not args.quiet):
                    mark = "FAIL" if o.ok is False else "ok  " if o.ok else "    "
                    label = f"step {o.step}" + (f" ({o.name})" if o.name else "")
                    print(f"  {mark} {label}: {_describe_obs(o)}")
    if args.json:
        print(json.dumps(summaries))
    return worst
