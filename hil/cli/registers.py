"""``hil regs``, ``hil peek``, ``hil poke``: look at and touch single registers.

Ports are numbers or register names. The names are those of :func:`hil.ports.port_names` (the
one register map), plus two spellings a bench user reaches for: ``page.chN`` for ``chN.page``
and ``dmaN.mask`` for the mask register, which a peek reads where the backend's controllers
read it back (Intel chipsets: the write-all-mask port; QEMU: the request port; see
:mod:`hil.regs`) and a poke writes as the write-all-mask register.

``sim:`` and ``qemu:`` start a fresh machine for every command, so a peek sees the reset state
and a poke's effect is gone when the command ends: both say so (a note on stderr, and --help).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys

from hil.backends.base import Backend
from hil.cli.common import add_common, number, out, with_backend
from hil.errors import HilError
from hil.ports import CONTROLLERS, Reg, port_names
from hil.records import dataclass

FRESH = ("sim", "qemu")  #: backends that start a new machine on every open
FRESH_NOTE = ("On sim: and qemu: every command starts a fresh machine: a peek sees the reset state and a poke's "
              "effect ends with the command (a note on stderr says so); for a sequence use a transfer script "
              "(hil run) or an agent serving the simulator (hil agent --io sim).")
KEEP = "use a transfer script (hil run) or an agent (hil agent --io sim) to keep state between accesses"


@dataclass(frozen=True)
class PortArg:
    """A port as typed: a number, or a register name resolved once the backend is known."""

    text: str
    number: int | None = None

    def resolve(self, be: Backend, *, write: bool) -> tuple[int, str | None]:
        """The port number and the register name it was given by (None for a number)."""
        if self.number is not None:
            return self.number, None
        name = self.text.lower()
        if m := re.fullmatch(r"dma([12])\.mask", name):
            ports = CONTROLLERS[int(m.group(1)) - 1]
            if write:
                return ports.reg(Reg.ALL_MASK), name
            from hil.regs import READ_MAPS, profile_of

            profile = profile_of(be.capabilities)
            if profile is None:
                raise HilError(f"{name}: where {be.url} reads the mask back is not known; peek "
                               f"dma{m.group(1)}.all_mask (Intel chipsets) or dma{m.group(1)}.request (QEMU)")
            return ports.reg(READ_MAPS[profile].mask), name
        return NAMES[name], name


def _aliases() -> dict[str, int]:
    names = port_names()
    names |= {f"page.ch{name[2]}": port for name, port in names.items() if name.endswith(".page")}
    return names


NAMES = _aliases()
SPECIAL = ("dma1.mask", "dma2.mask")


def port_arg(text: str) -> PortArg:
    """argparse type: a port number or register name."""
    name = text.strip().lower()
    if name in NAMES or name in SPECIAL:
        return PortArg(name)
    try:
        return PortArg(text, number(text))
    except argparse.ArgumentTypeError:
        pass
    close = difflib.get_close_matches(name, [*NAMES, *SPECIAL], n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; names: dmaN.status, dmaN.mask, chN.count, page.chN, ..."
    raise argparse.ArgumentTypeError(f"{text!r} is neither a port number (0x.. for hex) nor a register name{hint}")


PORT_HELP = ("I/O port: a number (0x0A, 10) or a register name (dma1.status, dma2.mask, ch2.count, page.ch2, post; "
             "every name: docs/scripts.md, 'Register names')")
WIDTH_HELP = ("access width in bits: 8 (default; every DMA and page register is 8 bits wide) or 16 (one 16-bit "
              "bus access, which an ISA bus splits into port and port+1)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("regs",
                       description="Read both controllers' address, count, status, temporary and mask registers "
                                   "and the page registers in one program, and decode them for the backend's "
                                   "controllers (Intel chipsets or QEMU: which ports read back what). Counts are "
                                   "decoded as Linux's get_dma_residue does. Reading status clears its TC bits.")
    add_common(p)
    p.set_defaults(func=cmd_regs)

    p = sub.add_parser("peek",
                       description="Read one I/O port and print 'PORT -> VALUE'. " + FRESH_NOTE)
    add_common(p)
    p.add_argument("port", type=port_arg, metavar="PORT", help=PORT_HELP)
    p.add_argument("--width", type=int, choices=(8, 16), default=8, help=WIDTH_HELP)
    p.set_defaults(func=cmd_peek)

    p = sub.add_parser("poke",
                       description="Write one I/O port and print 'PORT <- VALUE'. " + FRESH_NOTE)
    add_common(p)
    p.add_argument("port", type=port_arg, metavar="PORT", help=PORT_HELP)
    p.add_argument("value", type=number, metavar="VALUE",
                   help="value to write: 0..0xFF, or 0..0xFFFF with --width 16 (0x.. for hex)")
    p.add_argument("--width", type=int, choices=(8, 16), default=8, help=WIDTH_HELP)
    p.set_defaults(func=cmd_poke)


async def cmd_regs(args: argparse.Namespace) -> int:
    from hil.regs import read_registers

    async def body(be: Backend) -> int:
        dump = await read_registers(be)
        out(args, dump.format(), dump.to_json())
        return 0

    return await with_backend(args.backend, body)


def _fresh_note(be: Backend, what: str) -> None:
    scheme = be.capabilities.backend
    if scheme in FRESH:
        print(f"note: {scheme}: is a fresh machine for each command, so {what}; {KEEP}", file=sys.stderr)


def _show(port: int, name: str | None, arrow: str, value: int, width: int) -> tuple[str, dict[str, object]]:
    from hil.regs import hex_port, hex_value

    label = f"{hex_port(port)} ({name})" if name else hex_port(port)
    data: dict[str, object] = {"port": port, "value": value} | ({"name": name} if name else {})
    return f"{label} {arrow} {hex_value(value, width)}", data


async def cmd_peek(args: argparse.Namespace) -> int:
    async def body(be: Backend) -> int:
        port, name = args.port.resolve(be, write=False)
        value = await (be.inw(port) if args.width == 16 else be.inb(port))
        out(args, *_show(port, name, "->", value, args.width))
        _fresh_note(be, "this is its reset state")
        return 0

    return await with_backend(args.backend, body)


async def cmd_poke(args: argparse.Namespace) -> int:
    async def body(be: Backend) -> int:
        port, name = args.port.resolve(be, write=True)
        await (be.outw(port, args.value) if args.width == 16 else be.outb(port, args.value))
        out(args, *_show(port, name, "<-", args.value, args.width))
        _fresh_note(be, "the write is gone when the command ends")
        return 0

    return await with_backend(args.backend, body)
