"""The ``hil`` command. Errors the package raises on purpose print as one line, exit status 2.

One module per subcommand (or per small family of them); each adds its own parser.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

from hil import __version__
from hil.cli import agent, backends, bench, demo, diff, doctor, labgrid, probe, registers, run, vm
from hil.errors import HilError, UsageError, error_record
from hil.logconfig import configure

EXIT_INTERRUPTED = 130  #: 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  #: 128 + SIGPIPE, as a shell reports ``yes | head``'s ``yes``


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage error goes back to :func:`main`, which reports it the
    usual way and, under ``--json``, as JSON on stdout too. Subparsers are of this class."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hil", description="Hardware-in-the-loop bridge to the PC/AT ISA/LPC 8237A DMA controller."
    )
    parser.add_argument("--version", action="version", version=f"lpc-hil {__version__}")
    # for hil.workers: an error is also written here as a JSON record, read back as the typed error
    parser.add_argument("--error-file", metavar="PATH", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (demo, backends, registers, run, diff, agent, doctor, probe, bench, labgrid, vm):
        module.add_parsers(sub)
    return parser


def _json_error(message: str, command: str | None) -> None:
    print(json.dumps({"error": message, "command": command}))


def _write_error(path: str, error: HilError) -> None:
    """The error as a JSON record for the process that started this one (after the event loop
    has ended, so the write blocks nothing)."""
    Path(path).write_text(json.dumps(error_record(error)), encoding="utf-8")


def _main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        e.parser.print_usage(sys.stderr)
        print(f"{e.parser.prog}: error: {e.message}", file=sys.stderr)
        if "--json" in argv:
            command = e.parser.prog.removeprefix("hil").strip() or next((a for a in argv if a[:1] != "-"), None)
            _json_error(e.message, command)
        if argv[:1] == ["--error-file"] and len(argv) > 1:  # where hil.workers puts it; unparsed here
            _write_error(argv[1], e)
        sys.stdout.flush()
        raise SystemExit(2) from None
    configure(args.log_format, args.verbose + getattr(args, "log_offset", 0))
    try:
        return asyncio.run(args.func(args))
    except HilError as e:
        print(f"hil {args.command}: error: {e}", file=sys.stderr)
        if getattr(args, "json", False):
            _json_error(str(e), args.command)
        if args.error_file:
            _write_error(args.error_file, e)
        return 2
    except KeyboardInterrupt:
        note = getattr(args, "interrupt_note", "")  # where it stopped, if the command said
        print(f"hil {args.command}: interrupted" + (f" {note}" if note else ""), file=sys.stderr)
        return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(sys.argv[1:] if argv is None else list(argv))
        sys.stdout.flush()  # a closed pipe (``hil run ... | head``) shows here, not at exit
        return code
    except BrokenPipeError:
        # The reader went away: nothing more to say to it. As the Python docs advise (signal
        # module, "Note on SIGPIPE"), point stdout at devnull so the interpreter's own flush at
        # exit does not fail a second time, and leave quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
