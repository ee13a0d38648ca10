"""``hil agent``: the reference agent, serving a link."""

from __future__ import annotations

import argparse

from hil.backends import open_backend
from hil.errors import HilError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="serve port I/O and memory to a host over a link (the far end of agent+...)",
                       description="Run the reference agent: execute programs sent by an agent+... backend on an "
                                   "I/O backend (sim for tests, devport on a Linux target), within an allow-list.")
    p.add_argument("--io", default="sim", metavar="URL", help="I/O backend: sim, sim:?profile=qemu, devport:?... (default sim)")
    p.add_argument("--listen", required=True, metavar="WHERE",
                   help="tcp://127.0.0.1:PORT, serial:///dev/ttyS0?baud=N, or pty (prints the slave path)")
    p.add_argument("--allow", metavar="FILE", help="allow-list TOML (default: the DMA controllers and page registers)")
    p.add_argument("--window", action="append", default=[], metavar="START-END",
                   help="physical memory window the host may use, END exclusive, e.g. 0x10000-0x90000 "
                        "(repeatable; default: the I/O backend's window, for sim all of its memory)")
    p.add_argument("--token", default="", help="token clients must present (required beyond loopback)")
    p.add_argument("--name", default="hil-agent", help="agent name reported in HELLO")
    p.add_argument("--log-format", choices=("console", "json"), default="console", help="structlog output format")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=cmd_agent)


async def cmd_agent(args: argparse.Namespace) -> int:
    from hil.agent.server import AgentCore, serve
    from hil.allowlist import AllowList, parse_window

    allow = AllowList.from_toml(args.allow) if args.allow else AllowList.default()
    windows = [parse_window(w) for w in args.window]
    async with open_backend(args.io) as io:
        if windows:
            allow = allow.with_memory(windows)
        elif not allow.memory:
            lo, hi = io.capabilities.memory_window  # the I/O backend's own window (sim: all of it)
            if hi <= lo:
                raise HilError("give --window START-END (or [memory] windows in --allow): the agent needs to know "
                               "which physical memory the host may use")
            allow = allow.with_memory([range(lo, hi)])
        core = AgentCore(io, allow, name=args.name, token=args.token.encode())

        def ready(address: str) -> None:
            print(address, flush=True)

        await serve(core, args.listen, ready=ready)
    return 0
