"""``hil run``: transfer scripts on one backend, journaled."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager, nullcontext
from typing import IO, TYPE_CHECKING, Any

from hil.backends import open_backend
from hil.cli.common import add_allow_path, add_common, parse_variables, write_report
from hil.errors import HilError
from hil.journal import RunResult

if TYPE_CHECKING:
    from hil.backends.base import Backend
    from hil.script.model import Script
    from hil.script.steps import StepArgs

#: Backend schemes each of whose opens is a machine of its own, at power-on, shared with nobody:
#: the in-process simulator and a QEMU this process starts. Each script after the first gets a
#: new one (its own fresh machine, as when run alone); nothing can be BUSY. Every other backend
#: (an agent link, devport, third-party schemes) is opened once for the whole run.
FRESH_PER_OPEN = frozenset({"sim", "qemu"})
REDRAW_HZ = 10  #: a terminal's progress line is redrawn at most this often
PLAIN_EVERY_S = 5.0  #: without a terminal (CI logs), one plain progress line this often, if the run lasts


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run",
                       description="Validate every script against the backend, then run each on it in order "
                                   "(one connection for the whole run; on sim: and qemu: each script gets a fresh "
                                   "machine), journaling every observation as it happens. A script whose "
                                   "`requires` the backend lacks is skipped. Exit status: 0 nothing failed "
                                   "(passed or skipped), 1 an expectation failed, 2 error, 130 interrupted.")
    add_common(p)
    p.add_argument("scripts", nargs="+", metavar="SCRIPT", help="transfer script (.toml)")
    p.add_argument("--journal", metavar="FILE", help="JSONL journal (one script only)")
    p.add_argument("--journal-dir", metavar="DIR",
                   help="one JSONL journal per script in DIR, named after the script file (floppy-read.jsonl)")
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report (one test case per script)")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="override a script variable")
    p.add_argument("--record", metavar="FILE",
                   help="also write every program, result and error to FILE (JSONL) for a later -b replay:FILE")
    p.add_argument("--vcd", metavar="FILE",
                   help="write the simulator's signals as a VCD waveform to FILE (sim: backends), "
                        "and a GTKWave view beside it (FILE with .gtkw)")
    add_allow_path(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary lines; no progress")
    p.add_argument("--place", metavar="SELECTOR",
                   help="instead of --backend: every free labgrid place matching SELECTOR (tag=KEY, KEY=VALUE, "
                        "name=GLOB, joined by ','), all at once, reported per place (README: Sharing benches)")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="labgrid coordinator for --place (default: LG_COORDINATOR)")
    p.set_defaults(func=cmd_run)


class Progress:
    """Progress on stderr, cheap enough to be called before every step.

    On a terminal: one line, redrawn at most :data:`REDRAW_HZ` times a second (a redraw per step
    wrote megabytes and made a long simulator run several times slower). Without one (CI logs):
    a plain line every :data:`PLAIN_EVERY_S` seconds, so a short run prints none. It also
    remembers where the run is, for the line an interrupted run prints.
    """

    def __init__(self, enabled: bool = True, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()
        self._due = self.t0 if self.tty else self.t0 + PLAIN_EVERY_S
        self._width = 0  #: characters of the progress line on the terminal
        self.label = ""
        self.at: tuple[int, int, Any] | None = None  #: (index, total, step) about to run

    def phase(self, label: str, text: str = "") -> None:
        self.label, self.at = label, None
        if self.enabled and time.monotonic() >= self._due:
            self._draw(text or label)

    def __call__(self, i: int, n: int, step: Any) -> None:
        self.at = (i, n, step)
        if self.enabled and time.monotonic() >= self._due:
            self._draw(f"{self.label}: step {i + 1}/{n} ({step.op.value})")

    def _draw(self, text: str) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + text + " " * max(0, self._width - len(text)))
            self._width = len(text)
            self._due = now + 1 / REDRAW_HZ
        else:
            self.stream.write(f"hil run: {text} ({now - self.t0:.0f} s)\n")
            self._due = now + PLAIN_EVERY_S
        self.stream.flush()

    def clear(self) -> None:
        """Remove the terminal line before anything else is printed."""
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


@contextmanager
def _sigint_raises() -> Iterator[None]:
    """Loading and binding are pure computation that never yields to the event loop, so
    asyncio's Ctrl-C handler (it cancels the main task) could not stop them; while they run,
    Ctrl-C raises KeyboardInterrupt on the spot, as in any Python program."""
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None):  # ignored (nohup, a background job)
        yield
        return
    try:
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread: signals are not ours
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _summary_line(result: RunResult, steps: int) -> str:
    head = f"{result.script} on {result.backend}: {result.status.upper()}"
    if result.status == "skipped":
        return f"{head} ({result.error})"
    return (f"{head} — {steps} steps, {len(result.observations)} observations, "
            f"{len(result.failures)} failed expectation(s), {result.elapsed * 1e3:.1f} ms")


def _totals(results: list[RunResult]) -> str:
    count = {s: sum(r.status == s for r in results) for s in ("passed", "failed", "error", "skipped")}
    parts = [f"{count['passed']} passed", f"{count['failed']} failed"]
    if count["error"]:
        parts.append(f"{count['error']} error" + ("s" if count["error"] > 1 else ""))
    return ", ".join([*parts, f"{count['skipped']} skipped"])


def _journal_paths(args: argparse.Namespace, names: list[str]) -> list[str | None]:
    """Where each script's journal goes, every path checked before anything runs: a journal
    that cannot be written is a one-line error now, not a traceback after the first script."""
    from hil.journal import check_journal_dir, check_journal_path

    if args.journal:
        return [str(check_journal_path(args.journal))]
    if args.journal_dir:
        base = check_journal_dir(args.journal_dir)
        return [str(check_journal_path(base / name)) for name in names]
    return [None] * len(names)


def _open(args: argparse.Namespace) -> Backend:
    """The backend of ``-b``, wrapped in a recorder under ``--record`` (every open of one run
    appends its session to the one file)."""
    backend = open_backend(args.backend)
    if args.record:
        from hil.backends.record import RecordBackend

        return RecordBackend(backend, args.record)
    return backend


def _scheme(be: Backend) -> str:
    """The scheme that decides whether each script gets a fresh open: a recorder's is its inner backend's."""
    from hil.backends.record import RecordBackend

    return _scheme(be.inner) if isinstance(be, RecordBackend) else type(be).scheme


def _waves(args: argparse.Namespace, be: Backend, script: Script) -> AbstractAsyncContextManager[object]:
    """Under ``--vcd FILE``, the simulator's waveform of this script in FILE (several scripts:
    one file each, FILE's stem and the script's name: ``out-floppy-read.vcd``), with a GTKWave
    view beside it (the same name ending in ``.gtkw``)."""
    if not args.vcd:
        return nullcontext()
    from pathlib import Path

    from hil.waves.vcd import waveform

    path = Path(args.vcd)
    if len(args.scripts) > 1:
        path = path.with_name(f"{path.stem}-{Path(script.file).stem}{path.suffix or '.vcd'}")
    return waveform(be, path, title=f"{script.name} on {args.backend}")


async def cmd_run(args: argparse.Namespace) -> int:
    from hil.journal import journal_names
    from hil.runner import missing_capabilities, prepare
    from hil.script import load_script

    if args.journal and len(args.scripts) > 1:
        raise HilError("--journal takes one script; use --journal-dir for several")
    if args.place is not None:
        from hil.cli.labgrid import run_on_places

        if args.backend != "sim" or args.journal or args.junit:
            raise HilError("--place runs on the matching places: give no --backend, --journal or --junit with it")
        return await run_on_places(args)
    variables = parse_variables(args.var)
    backend = _open(args)  # a bad URL is an error before the scripts load
    if args.vcd:
        from hil.waves.vcd import require_simulator

        require_simulator(backend)  # before anything starts (a QEMU, a link)
    progress = Progress(enabled=not args.quiet)
    total = len(args.scripts)
    args.interrupt_note = "while loading the scripts"
    try:
        with _sigint_raises():  # validate all first ...
            scripts = []
            for k, path in enumerate(args.scripts):
                progress.phase(f"loading {k + 1}/{total}: {path}")
                scripts.append(load_script(path, variables=variables, allow_paths=args.allow_path))
    finally:
        progress.clear()  # before the error, or the results, is printed
    journals = _journal_paths(args, journal_names([s.file for s in scripts]))
    args.interrupt_note = f"while checking the scripts against {args.backend}"
    # One backend, opened once, checks every script and runs them: a second connection to an
    # agent got BUSY while the first one was still closing. Each later script gets fresh
    # host-side state (start_fresh), or a machine of its own where opening is that (FRESH_PER_OPEN).
    async with backend as be:
        plans: list[list[StepArgs] | None] = []  # bound steps, or None: skip
        needs: list[list[str]] = []
        try:
            with _sigint_raises():  # ... and bind all against the backend: no I/O yet
                for k, script in enumerate(scripts):
                    progress.phase(f"checking {k + 1}/{total}: {script.name} on {be.url}")
                    needs.append(missing_capabilities(script, be))
                    plans.append(None if needs[-1] else prepare(script, be))
        finally:
            progress.clear()
        return await _run_all(args, be, scripts, journals, plans, needs, progress)


async def _run_all(args: argparse.Namespace, be: Backend, scripts: list[Script], journals: list[str | None],
                   plans: list[list[StepArgs] | None], needs: list[list[str]], progress: Progress) -> int:
    """Run (or record as skipped) each checked script on the one backend, printing as it goes."""
    from hil.journal import junit
    from hil.runner import record_skip, run_script, start_fresh

    worst = 0
    results: list[RunResult] = []
    summaries = []
    journal: str | None = None
    script = scripts[0]
    used = False  #: a script has run on ``be``
    try:
        for script, journal, plan, need in zip(scripts, journals, plans, needs):
            if plan is None:
                result = record_skip(script, be, need, journal=journal)
            elif used and _scheme(be) in FRESH_PER_OPEN:
                progress.phase(script.name)
                async with _open(args) as fresh, _waves(args, fresh, script):
                    result = await run_script(script, fresh, journal=journal, progress=progress, prepared=plan)
                progress.clear()
            else:
                if used:
                    start_fresh(be)
                used = True
                progress.phase(script.name)
                async with _waves(args, be, script):
                    result = await run_script(script, be, journal=journal, progress=progress, prepared=plan)
                progress.clear()
            results.append(result)
            worst = max(worst, {"passed": 0, "skipped": 0, "failed": 1}.get(result.status, 2))
            if args.json:  # built only when printed: a 100k-step run has 100k observations
                summaries.append({"script": script.name, "file": script.file, "backend": result.backend,
                                  "status": result.status, "error": result.error, "failures": len(result.failures),
                                  "observations": [o.to_json() for o in result.observations], "journal": journal})
            else:
                print(_summary_line(result, len(script.steps)))
                if result.status == "error" and result.error:
                    print(f"  ERROR {result.error}")
                for o in result.observations:
                    if o.error:
                        continue  # the run's error, printed above
                    if o.ok is False or (args.verbose and not args.quiet):
                        mark = "FAIL" if o.ok is False else "ok  " if o.ok else "    "
                        print(f"  {mark} {o.label}: {o.describe()}")
    except (asyncio.CancelledError, KeyboardInterrupt):
        progress.clear()
        if progress.at is not None:
            i, n, step = progress.at
            where = f"at step {step.path} ({i + 1} of {n}) of {script.name}"
        else:
            where = f"before {script.name} ran"
        kept = f"journal kept in {journal}" if journal else "no journal (--journal or --journal-dir keeps one)"
        args.interrupt_note = f"{where}; {kept}"
        if args.junit:
            results.append(RunResult(script.name, script.file, args.backend, status="interrupted",
                                     error=f"interrupted {where}"))
            await write_report(args.junit, junit(results))
        raise
    finally:
        progress.clear()
    if args.junit:
        await write_report(args.junit, junit(results))
    if args.json:
        print(json.dumps(summaries))
    elif len(results) > 1:
        print(_totals(results))
    return worst
