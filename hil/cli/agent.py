"""``hil agent``: the reference agent, serving a link."""

from __future__ import annotations

import argparse

from hil.agent.limits import (
    DEFAULT_HELLO_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_OP_US,
    DEFAULT_MAX_PROGRAM_US,
)
from hil.backends import open_backend
from hil.errors import HilError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent",
                       description="Run the reference agent: execute programs sent by an agent+... backend on an "
                                   "I/O backend (sim for tests, devport on a Linux target), within an allow-list.")
    p.add_argument("--io", default="sim", metavar="URL",
                   help="I/O backend the programs run on: sim, sim:?profile=qemu, qemu:, devport:?... (default sim). "
                        "A simulated one (sim, qemu) starts afresh for every new client session unless the client "
                        "asks to keep it (agent+...?keep=1)")
    p.add_argument("--listen", required=True, metavar="WHERE",
                   help="tcp://127.0.0.1:PORT (0: any free port), serial:///dev/ttyS0?baud=N, or pty; the address "
                        "to connect to is printed on stdout once listening")
    p.add_argument("--allow", metavar="FILE", help="allow-list TOML (default: the DMA controllers and page registers)")
    p.add_argument("--window", action="append", default=[], metavar="START-END",
                   help="physical memory window the host may use, END exclusive, e.g. 0x10000-0x90000 "
                        "(repeatable; default: the I/O backend's window, for sim all of its memory)")
    p.add_argument("--token", default="", metavar="TEXT",
                   help="token clients must present in HELLO (required to listen beyond loopback)")
    p.add_argument("--hello-timeout", type=_seconds, default=DEFAULT_HELLO_TIMEOUT, metavar="S",
                   help=f"TCP: drop a connection that has not completed HELLO after S seconds "
                        f"(default {DEFAULT_HELLO_TIMEOUT:g})")
    p.add_argument("--idle-timeout", type=_seconds, default=DEFAULT_IDLE_TIMEOUT, metavar="S",
                   help=f"TCP: drop an authenticated client silent for S seconds; it reconnects and resumes its "
                        f"session (default {DEFAULT_IDLE_TIMEOUT:g})")
    p.add_argument("--max-op-time", type=_seconds, default=DEFAULT_MAX_OP_US / 1e6, metavar="S",
                   help=f"longest DELAY, POLL or SETTLE of one op, advertised in HELLO; longer ones are refused "
                        f"(default {DEFAULT_MAX_OP_US / 1e6:g})")
    p.add_argument("--max-program-time", type=_seconds, default=DEFAULT_MAX_PROGRAM_US / 1e6, metavar="S",
                   help=f"most DELAY/POLL/SETTLE time in one program, advertised in HELLO (default "
                        f"{DEFAULT_MAX_PROGRAM_US / 1e6:g})")
    p.add_argument("--name", default="hil-agent", help="agent name reported in HELLO_REPLY (default hil-agent)")
    p.add_argument("--log-format", choices=("console", "json"), default="console",
                   help="structlog output format on stderr")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.set_defaults(func=cmd_agent)


def _seconds(text: str) -> float:
    """A positive number of seconds, at most what a u32 of microseconds holds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 4294:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds > 0 and at most 4294")
    return value


async def cmd_agent(args: argparse.Namespace) -> int:
    from hil.agent.server import AgentCore, serve
    from hil.allowlist import AllowList, parse_window
    from hil.backends.base import DEVICE_CAPABILITIES, DEVICE_PORTS, Capability

    allow = AllowList.from_toml(args.allow) if args.allow else AllowList.default()
    windows = [parse_window(w) for w in args.window]
    async with open_backend(args.io) as io:
        if not args.allow:  # the default list also opens the ports of the devices the I/O backend has
            allow = allow.with_ports([DEVICE_PORTS[c] for c in DEVICE_CAPABILITIES if c in io.capabilities])
        if windows:
            allow = allow.with_memory(windows)
        elif not allow.memory:
            lo, hi = io.capabilities.memory_window  # the I/O backend's own window (sim: all of it)
            if hi <= lo:
                raise HilError("give --window START-END (or [memory] windows in --allow): the agent needs to know "
                               "which physical memory the host may use")
            allow = allow.with_memory([range(lo, hi)])
        # a simulated machine belongs to the agent: every new session starts on a fresh one; real
        # hardware (devport) is the target's own, and what it holds is shared (docs/agent-protocol.md §3)
        owned = Capability.REAL_TIMING not in io.capabilities
        core = AgentCore(io, allow, name=args.name, token=args.token.encode(),
                         fresh_io=(lambda: open_backend(args.io)) if owned else None,
                         hello_timeout=args.hello_timeout, idle_timeout=args.idle_timeout,
                         max_op_us=round(args.max_op_time * 1e6), max_program_us=round(args.max_program_time * 1e6))

        def ready(address: str) -> None:
            print(address, flush=True)

        try:
            await serve(core, args.listen, ready=ready)
        finally:
            await core.aclose()
    return 0
