"""``hil regs``, ``hil peek``, ``hil poke``: look at and touch single registers."""

from __future__ import annotations

import argparse

from hil.backends.base import Backend
from hil.cli.common import add_common, number, out, with_backend


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("regs", help="read and decode every readable DMA register (clears status TC bits)")
    add_common(p)
    p.set_defaults(func=cmd_regs)

    p = sub.add_parser("peek", help="read an I/O port")
    add_common(p)
    p.add_argument("port", type=number)
    p.add_argument("--width", type=int, choices=(8, 16), default=8)
    p.set_defaults(func=cmd_peek)

    p = sub.add_parser("poke", help="write an I/O port")
    add_common(p)
    p.add_argument("port", type=number)
    p.add_argument("value", type=number)
    p.add_argument("--width", type=int, choices=(8, 16), default=8)
    p.set_defaults(func=cmd_poke)


async def cmd_regs(args: argparse.Namespace) -> int:
    from hil.regs import read_registers

    async def body(be: Backend) -> int:
        dump = await read_registers(be)
        out(args, dump.format(), dump.to_json())
        return 0

    return await with_backend(args.backend, body)


async def cmd_peek(args: argparse.Namespace) -> int:
    async def body(be: Backend) -> int:
        value = await (be.inw(args.port) if args.width == 16 else be.inb(args.port))
        digits = args.width // 4
        out(args, f"0x{args.port:04X} -> 0x{value:0{digits}X}", {"port": args.port, "value": value})
        return 0

    return await with_backend(args.backend, body)


async def cmd_poke(args: argparse.Namespace) -> int:
    async def body(be: Backend) -> int:
        await (be.outw(args.port, args.value) if args.width == 16 else be.outb(args.port, args.value))
        out(args, f"0x{args.port:04X} <- 0x{args.value:X}", {"port": args.port, "value": args.value})
        return 0

    return await with_backend(args.backend, body)
