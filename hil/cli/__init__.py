"""The ``hil`` command. Errors the package raises on purpose print as one line, exit status 2.

One module per subcommand (or per small family of them); each adds its own parser. The command
line names one subcommand, so ``hil`` imports only that one's module (:data:`COMMANDS` lists
them all for ``hil --help``): a one-step ``hil run`` is mostly start-up, and the other commands'
modules (the agent, labgrid, the register decoder) are no part of it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, cast

from hil import __version__
from hil.errors import HilError, UsageError, error_record
from hil.logconfig import configure

#: Every subcommand, in ``hil --help`` order: (name, the module of hil.cli whose ``add_parsers``
#: adds its parser, the line ``hil --help`` gives it). Plain tuples: this table is read at every
#: start, before anything else is imported.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("demo", "demo", "run a floppy-style DMA transfer and show what moved and the registers"),
    ("backends", "backends", "list backend URL schemes and their capabilities"),
    ("regs", "registers", "read and decode every readable DMA register (clears status TC bits)"),
    ("peek", "registers", "read one I/O port (sim:, qemu: a fresh machine each time)"),
    ("poke", "registers", "write one I/O port (sim:, qemu: a fresh machine each time)"),
    ("run", "run", "run transfer scripts on a backend"),
    ("diff", "diff", "run scripts on several backends concurrently and compare step by step"),
    ("agent", "agent", "serve port I/O and memory to a host over a link (the far end of agent+...)"),
    ("doctor", "doctor", "check that a backend URL can reach its target, and say how to fix what cannot"),
    ("probe", "probe", "say what DMA hardware a target has: 8237, channels in use, FDC, ECP, SB16, Super I/O"),
    ("bench", "bench", "benchmarks: 'hil bench link' measures the agent link"),
    ("labgrid", "labgrid", "labgrid places as benches: list them, free stale locks"),
    ("vm", "vm", "the vm: backend's Linux VM: fetch its kernel, build its image, run commands in it"),
)

EXIT_INTERRUPTED = 130  #: 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  #: 128 + SIGPIPE, as a shell reports ``yes | head``'s ``yes``


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage error goes back to :func:`main`, which reports it the
    usual way and, under ``--json``, as JSON on stdout too. Subparsers are of this class."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


class Subcommands(argparse._SubParsersAction):
    """The COMMAND argument. Every command of :data:`COMMANDS` is a choice from the start (its
    name and help line, so ``hil --help`` and an invalid choice read as before); its module adds
    the real parser when the command is chosen (or :meth:`load_all`), in the command's place."""

    def list_commands(self) -> None:
        self._pending: dict[str, str] = {}  #: command -> its module, not imported yet
        self._listed = {name for name, _, _ in COMMANDS}
        self.unloaded = self._parser_class(prog=self._prog_prefix)  #: every choice's, until load() replaces it
        for name, module, text in COMMANDS:
            self._choices_actions.append(self._ChoicesPseudoAction(name, (), text))
            self._name_parser_map[name] = self.unloaded
            self._pending[name] = module

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """A listed command's parser, called by its module: it replaces the placeholder (the
        help line is the table's); any other name is an ordinary subparser."""
        if name not in self._listed:
            return super().add_parser(name, **kwargs)
        kwargs.setdefault("prog", f"{self._prog_prefix} {name}")
        parser = self._parser_class(**kwargs)
        self._name_parser_map[name] = parser  # an existing key: the listed order stays
        return parser

    def load(self, name: str) -> None:
        """Import the command's module, which adds the parsers of all the commands it serves."""
        module = self._pending.get(name)
        if module is None:
            return
        importlib.import_module(f"hil.cli.{module}").add_parsers(self)
        for command in [c for c, m in self._pending.items() if m == module]:
            del self._pending[command]

    def load_all(self) -> None:
        for name in list(self._pending):
            self.load(name)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        self.load(values[0])  # argparse checked it is one of the choices
        super().__call__(parser, namespace, values, option_string)


def build_parser(*, lazy: bool = False) -> argparse.ArgumentParser:
    """The whole command line; ``lazy``: each subcommand's parser (and module) only once the
    command line chooses it, as :func:`main` parses."""
    parser = Parser(
        prog="hil", description="Hardware-in-the-loop bridge to the PC/AT ISA/LPC 8237A DMA controller."
    )
    parser.add_argument("--version", action="version", version=f"lpc-hil {__version__}")
    # for hil.workers: an error is also written here as a JSON record, read back as the typed error
    parser.add_argument("--error-file", metavar="PATH", help=argparse.SUPPRESS)
    sub = cast(Subcommands, parser.add_subparsers(dest="command", required=True, metavar="COMMAND", action=Subcommands))
    sub.list_commands()
    if not lazy:
        sub.load_all()
    return parser


def _json_error(message: str, command: str | None) -> None:
    print(json.dumps({"error": message, "command": command}))


def _write_error(path: str, error: HilError) -> None:
    """The error as a JSON record for the process that started this one (after the event loop
    has ended, so the write blocks nothing)."""
    Path(path).write_text(json.dumps(error_record(error)), encoding="utf-8")


def _main(argv: list[str]) -> int:
    try:
        args = build_parser(lazy=True).parse_args(argv)
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
    import asyncio  # not for a usage error or --help

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
