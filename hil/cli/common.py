"""Argument types and helpers shared by the ``hil`` subcommands."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from hil.backends import open_backend
from hil.backends.base import Backend
from hil.errors import HilError


async def write_report(path: str, text: str) -> None:
    """Write a report file (JUnit XML) from a command's coroutine, off the event loop."""
    await asyncio.to_thread(Path(path).write_text, text, encoding="utf-8")


def number(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (use 0x.. for hex)") from None


def add_common(p: argparse.ArgumentParser, *, backend: bool = True) -> None:
    if backend:
        p.add_argument("--backend", "-b", default="sim", metavar="URL",
                       help="backend URL (default: sim; e.g. sim:?profile=qemu)")
    p.add_argument("--log-format", choices=("console", "json"), default="console", help="structlog output format")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


async def with_backend(url: str, body: Callable[[Backend], Coroutine[Any, Any, int]]) -> int:
    async with open_backend(url) as backend:
        return await body(backend)


def out(args: argparse.Namespace, text: str, data: object) -> None:
    print(json.dumps(data) if args.json else text)


def add_allow_path(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                   help="a directory data and include files may also come from (repeatable; by default only "
                        "the script's own directory tree)")


def parse_variables(items: list[str]) -> dict[str, int]:
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            values[name.strip()] = int(value, 0)
        except ValueError:
            raise HilError(f"--var {item!r}: expected NAME=INTEGER (0x.. for hex)") from None
        if not sep:
            raise HilError(f"--var {item!r}: expected NAME=INTEGER")
    return values
