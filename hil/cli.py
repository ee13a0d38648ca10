"""The ``hil`` command. Errors the package raises on purpose print as one line, exit status 2."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from hil import __version__
from hil.backends import available_backends, open_backend
from hil.backends.base import Backend, Capability
from hil.errors import HilError
from hil.logconfig import configure


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (use 0x.. for hex)") from None


def _common(p: argparse.ArgumentParser, *, backend: bool = True) -> None:
    if backend:
        p.add_argument("--backend", "-b", default="sim", metavar="URL",
                       help="backend URL (default: sim; e.g. sim:?profile=qemu)")
    p.add_argument("--log-format", choices=("console", "json"), default="console", help="structlog output format")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hil", description="Hardware-in-the-loop bridge to the PC/AT ISA/LPC 8237A DMA controller."
    )
    parser.add_argument("--version", action="version", version=f"lpc-hil {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run a floppy-style DMA transfer and show what moved and the registers",
                       description="Program channel 2 with the Linux floppy sequence, let a simulated device "
                                   "send a sector into memory, then print the data, the residue and every register.")
    _common(p)
    p.add_argument("--bytes", type=_int, default=512, help="transfer length (default 512)")
    p.add_argument("--addr", type=_int, default=0x23400, help="physical buffer address (default 0x23400)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("backends", help="list backend URL schemes and their capabilities")
    _common(p, backend=False)
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("regs", help="read and decode every readable DMA register (clears status TC bits)")
    _common(p)
    p.set_defaults(func=cmd_regs)

    p = sub.add_parser("peek", help="read an I/O port")
    _common(p)
    p.add_argument("port", type=_int)
    p.add_argument("--width", type=int, choices=(8, 16), default=8)
    p.set_defaults(func=cmd_peek)

    p = sub.add_parser("poke", help="write an I/O port")
    _common(p)
    p.add_argument("port", type=_int)
    p.add_argument("value", type=_int)
    p.add_argument("--width", type=int, choices=(8, 16), default=8)
    p.set_defaults(func=cmd_poke)
    return parser


async def _with_backend(url: str, body: Callable[[Backend], Coroutine[Any, Any, int]]) -> int:
    async with open_backend(url) as backend:
        return await body(backend)


def _out(args: argparse.Namespace, text: str, data: object) -> None:
    print(json.dumps(data) if args.json else text)


async def cmd_demo(args: argparse.Namespace) -> int:
    from hil.dma import DMA_MODE_READ, IsaDma
    from hil.regs import read_registers
    from hil.sim.devices import Source

    async def body(be: Backend) -> int:
        if Capability.DEVICES not in be.capabilities:
            raise HilError(f"demo needs a backend with simulated devices (sim:), not {be.url}")
        payload = bytes((i * 7 + 1) & 0xFF for i in range(args.bytes))
        source = Source(payload)
        be.machine.attach(2, source)  # type: ignore[attr-defined]
        dma = IsaDma(be)
        await dma.request_dma(2, "floppy")
        async with dma.claim_dma_lock():
            await dma.disable_dma(2)
            await dma.clear_dma_ff(2)
            await dma.set_dma_mode(2, DMA_MODE_READ)
            await dma.set_dma_addr(2, args.addr)
            await dma.set_dma_count(2, args.bytes)
            await dma.enable_dma(2)
        result = await dma.wait_dma_done(2, timeout=1.0)
        await dma.free_dma(2)
        moved = await be.read_mem(args.addr, args.bytes)
        regs = await read_registers(be)
        ok = moved == payload
        if args.json:
            print(json.dumps({"channel": 2, "addr": args.addr, "bytes": args.bytes, "tc": result.tc,
                              "residue": result.residue, "data_ok": ok, "registers": regs.to_json()}))
        else:
            print(f"backend: {be.capabilities.identity}")
            print(f"channel 2, mode 0x{DMA_MODE_READ | 2:02X} (single, I/O->memory), {args.bytes} bytes "
                  f"-> 0x{args.addr:06X}")
            print(f"terminal count: {'yes' if result.tc else 'NO'}; residue {result.residue} bytes; "
                  f"{len(moved)} bytes in memory {'match' if ok else 'DO NOT match'} what the device sent")
            for off in range(0, min(len(moved), 64), 16):
                print(f"  {args.addr + off:06X}: {moved[off:off + 16].hex(' ')}")
            if len(moved) > 64:
                print(f"  ... ({len(moved) - 64} more bytes)")
            print(regs.format())
        return 0 if ok and result.complete else 1

    return await _with_backend(args.backend, body)


async def cmd_backends(args: argparse.Namespace) -> int:
    schemes = available_backends()
    rows = {}
    for scheme, desc in schemes.items():
        caps: list[str] = []
        try:
            be = open_backend(f"{scheme}:")
            caps = sorted(c.value for c in be.capabilities.features)
            await be.close()
        except HilError:
            caps = ["(needs a URL with target details)"]
        rows[scheme] = {"description": desc, "capabilities": caps}
    text = "\n".join(f"{s + ':':10} {r['description']}\n{'':10} capabilities: {', '.join(r['capabilities'])}"
                     for s, r in rows.items())
    _out(args, text, rows)
    return 0


async def cmd_regs(args: argparse.Namespace) -> int:
    from hil.regs import read_registers

    async def body(be: Backend) -> int:
        dump = await read_registers(be)
        _out(args, dump.format(), dump.to_json())
        return 0

    return await _with_backend(args.backend, body)


async def cmd_peek(args: argparse.Namespace) -> int:
    async def body(be: Backend) -> int:
        value = await (be.inw(args.port) if args.width == 16 else be.inb(args.port))
        digits = args.width // 4
        _out(args, f"0x{args.port:04X} -> 0x{value:0{digits}X}", {"port": args.port, "value": value})
        return 0

    return await _with_backend(args.backend, body)


async def cmd_poke(args: argparse.Namespace) -> int:
    async def body(be: Backend) -> int:
        await (be.outw(args.port, args.value) if args.width == 16 else be.outb(args.port, args.value))
        _out(args, f"0x{args.port:04X} <- 0x{args.value:X}", {"port": args.port, "value": args.value})
        return 0

    return await _with_backend(args.backend, body)


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


if __name__ == "__main__":
    sys.exit(main())
