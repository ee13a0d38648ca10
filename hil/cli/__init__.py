"""The ``hil`` command. Errors the package raises on purpose print as one line, exit status 2.

One module per subcommand (or per small family of them); each adds its own parser.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from hil import __version__
from hil.cli import agent, backends, bench, demo, diff, doctor, registers, run
from hil.errors import HilError
from hil.logconfig import configure


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hil", description="Hardware-in-the-loop bridge to the PC/AT ISA/LPC 8237A DMA controller."
    )
    parser.add_argument("--version", action="version", version=f"lpc-hil {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (demo, backends, registers, run, diff, agent, doctor, bench):
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.log_format, args.verbose)
    try:
        return asyncio.run(args.func(args))
    except HilError as e:
        print(f"hil {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
