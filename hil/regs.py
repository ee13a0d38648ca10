"""Read and decode every readable DMA register of both controllers and the page file.

The dump clears the flip-flop before the address/count reads and reads each register as a
low/high pair, so it leaves the flip-flop clear (docs/reference/hil-lessons.md §1.1). Reading the status
register clears its TC bits: that is the hardware's rule, and the dump says so when it did.

What is readable depends on the controller implementation (docs/reference/8237.md §2.9,
§2.11, §2.12, §5; docs/reference/qemu-qtest.md §8): Intel chipsets read the mask back at
0x0F / 0xDE and keep all 16 page-file latches, while QEMU's i8257 reads the mask at 0x09 / 0xD2,
has no temporary register and decodes only the eight channel page registers. The dump reads
only what the backend's :class:`Profile` defines, so a read of a write-only port is never
decoded as a register and the tool's own sweep never touches a port the backend does not
decode (which the simulator would rightly warn about). A backend whose profile is unknown gets
both mask read-backs, labelled with where each one means the mask.

Counts are decoded as Linux's ``get_dma_residue`` does (docs/reference/linux-isa-dma.md §1.3):
``count + 1`` in ``unsigned short`` arithmetic, so 0xFFFF (terminal count passed) is 0 bytes
left, doubled on the 16-bit channels.
"""

from __future__ import annotations

import enum
import functools

from hil.backends.base import Backend, Capabilities
from hil.ops import In, Op, Out
from hil.ports import (
    CONTROLLERS,
    PAGE_CHANNEL,
    PAGE_FILE,
    ControllerPorts,
    Reg,
    is_16bit,
    status_requests,
    status_tc,
)
from hil.records import dataclass

# --- hex formatting shared by the register commands (regs, peek, poke, demo) ---------------


def hex_port(port: int) -> str:
    """``0x0A`` for the ISA ports below 0x100, ``0x0220`` above: one rule for every command."""
    return f"0x{port:02X}" if port < 0x100 else f"0x{port:04X}"


def hex_value(value: int, width: int = 8) -> str:
    """``0x06`` for a byte, ``0x1234`` for a 16-bit value: always every digit of the width."""
    return f"0x{value:0{width // 4}X}"


# --- what a backend's controllers answer on read ---------------------------------------------


class Profile(enum.Enum):
    """A register read-back map (the simulator's profiles name the same two)."""

    INTEL = "intel"  #: datasheet 8237A as Intel chipsets extend it
    QEMU = "qemu"  #: QEMU 7.2's hw/dma/i8257.c


@dataclass(frozen=True)
class ReadMap:
    mask: Reg  #: the register index the mask reads back at
    temp: bool  #: the temporary register is readable
    pages: tuple[int, ...]  #: page-file ports the backend decodes
    note: str  #: what the other mask port is
    no_temp: str = ""  #: what the dump says instead of a temporary register that does not read


READ_MAPS = {
    Profile.INTEL: ReadMap(Reg.ALL_MASK, True, tuple(PAGE_FILE), "write-only"),
    Profile.QEMU: ReadMap(Reg.REQUEST, False, tuple(sorted(PAGE_CHANNEL)), "write-only (QEMU reads 0)",
                          "temp none (QEMU reads 0)"),
}
#: the mask read-back candidates for a backend of unknown profile, with where each is the mask
CANDIDATES = ((Reg.ALL_MASK, "the mask on Intel chipsets"), (Reg.REQUEST, "the mask on QEMU"))


def profile_of(caps: Capabilities) -> Profile | None:
    """The read-back map a backend has, from what it says about itself (None: unknown).

    ``qemu:`` is QEMU; ``devport:`` is a chipset's own controllers (Intel read-back); any
    backend that names its ``profile`` in its capability details (``sim:``, and an agent that
    reports its I/O backend's profile) has that one.
    """
    named = caps.details.get("profile")
    match caps.backend, named:
        case "qemu", _:
            return Profile.QEMU
        case _, "intel" | "qemu":
            return Profile(named)
        case "devport", _:
            return Profile.INTEL
    return None


# --- the dump --------------------------------------------------------------------------------


def residue(channel: int, count: int) -> int:
    """Bytes left as ``get_dma_residue`` computes them from the count register."""
    left = (count + 1) & 0xFFFF
    return left << 1 if is_16bit(channel) else left


def _bytes(n: int) -> str:
    return f"{n} byte" if n == 1 else f"{n} bytes"


@dataclass(frozen=True)
class ControllerDump:
    name: str
    ports: ControllerPorts
    addr: tuple[int, ...]
    count: tuple[int, ...]
    status: int
    temp: int | None  #: None: not readable on this profile
    masks: tuple[tuple[int, int], ...]  #: (port, value) of each mask read-back read
    profile: Profile | None

    @property
    def first_channel(self) -> int:
        return 4 * int(self.ports.ctrl)

    @property
    def mask(self) -> int | None:
        """The mask register, where the profile says it reads back."""
        return self.masks[0][1] if self.profile is not None else None

    def lines(self) -> list[str]:
        first = self.first_channel
        tc, req = status_tc(self.status), status_requests(self.status)
        parts = [f"{self.name}: status {hex_value(self.status)} (TC {_bits(tc, first)}; request {_bits(req, first)})"]
        if self.profile is None:
            parts.append(f"temp {hex_value(self.temp or 0)}")
            parts += [f"{hex_port(port)} {hex_value(value)} ({label})"
                      for (port, value), (_, label) in zip(self.masks, CANDIDATES)]
        else:
            rmap = READ_MAPS[self.profile]
            parts.append(f"temp {hex_value(self.temp)}" if self.temp is not None else rmap.no_temp)
            (port, value), = self.masks
            parts.append(f"mask@{hex_port(port)} {hex_value(value)} (masked {_bits(value & 0x0F, first, 'none')})")
            other = next(r for r, _ in CANDIDATES if r != rmap.mask)
            parts.append(f"{hex_port(self.ports.reg(other))} {rmap.note}")
        out = ["  ".join(parts)]
        for i in range(4):
            ch = first + i
            out.append(f"  ch{ch}: current address {hex_value(self.addr[i], 16)}  current count "
                       f"{hex_value(self.count[i], 16)} (residue {_bytes(residue(ch, self.count[i]))})")
        return out


@dataclass(frozen=True)
class RegisterDump:
    controllers: tuple[ControllerDump, ControllerDump]
    pages: dict[int, int]  #: page-file port -> value, for the ports the profile decodes
    profile: Profile | None

    @property
    def tc_cleared(self) -> bool:
        """The dump's status reads found (and so cleared) at least one TC bit."""
        return any(status_tc(c.status) for c in self.controllers)

    def format(self) -> str:
        lines: list[str] = []
        for c in self.controllers:
            lines += c.lines()
        by_channel = sorted((ch, port) for port, ch in PAGE_CHANNEL.items() if port in self.pages)
        lines.append("page file: " + "  ".join(f"ch{ch} {hex_port(port)}={hex_value(self.pages[port])}"
                                                  for ch, port in by_channel))
        others = [p for p in PAGE_FILE if p not in PAGE_CHANNEL]
        read = [p for p in others if p in self.pages]
        if read:
            lines.append("page file, no channel: " + "  ".join(f"{hex_port(p)}={hex_value(self.pages[p])}" for p in read))
        if len(read) < len(others):
            where = self.profile.value if self.profile else "this backend"
            lines.append(f"page file, no channel: not decoded on {where}, not read "
                         f"({' '.join(hex_port(p) for p in others if p not in self.pages)})")
        if self.tc_cleared:
            lines.append("(the status read cleared the TC bits shown above)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {
            "profile": self.profile.value if self.profile else None,
            "controllers": [
                {
                    "name": c.name,
                    "status": c.status,
                    "temp": c.temp,
                    "mask": c.mask,
                    "mask_reads": {hex_port(port): value for port, value in c.masks},
                    "channels": {
                        str(c.first_channel + i): {"addr": c.addr[i], "count": c.count[i],
                                                   "residue": residue(c.first_channel + i, c.count[i])}
                        for i in range(4)
                    },
                }
                for c in self.controllers
            ],
            "pages": {hex_port(p): v for p, v in self.pages.items()},
            "tc_cleared": self.tc_cleared,
        }


def _bits(bits: int, first: int, empty: str = "-") -> str:
    chans = [str(first + i) for i in range(4) if bits & (1 << i)]
    return ",".join(chans) if chans else empty


def _mask_regs(profile: Profile | None) -> tuple[Reg, ...]:
    return (READ_MAPS[profile].mask,) if profile is not None else tuple(r for r, _ in CANDIDATES)


def _page_ports(profile: Profile | None) -> tuple[int, ...]:
    return READ_MAPS[profile].pages if profile is not None else tuple(PAGE_FILE)


def dump_program(profile: Profile | None = None) -> list[Op]:
    """The reads of one dump (``profile`` None: every candidate register of both maps)."""
    return list(_dump_ops(profile))


@functools.cache
def _dump_ops(profile: Profile | None) -> tuple[Op, ...]:
    """Made once per profile: a dump is the same 58 or so reads every time, and ops are
    immutable, so every dump (and a link's program cache) can share them."""
    ops: list[Op] = []
    for ports in CONTROLLERS:
        ops.append(Out(ports.clear_ff, 0))
        for local in range(4):
            ops += [In(ports.addr(local)), In(ports.addr(local)), In(ports.count(local)), In(ports.count(local))]
        ops.append(In(ports.status))
        if profile is None or READ_MAPS[profile].temp:
            ops.append(In(ports.temp))
        ops += [In(ports.reg(r)) for r in _mask_regs(profile)]
    ops += [In(port) for port in _page_ports(profile)]
    return tuple(ops)


async def read_registers(backend: Backend, profile: Profile | None = None) -> RegisterDump:
    """One program: a single round trip on a link. ``profile`` defaults to the backend's."""
    profile = profile or profile_of(backend.capabilities)
    values = iter(await backend.execute(_dump_ops(profile)))

    def take() -> int:
        value = next(values)
        assert isinstance(value, int)
        return value

    ctrls = []
    for ports, name in zip(CONTROLLERS, ("DMA1", "DMA2")):
        addr, count = [], []
        for _ in range(4):
            addr.append(take() | take() << 8)
            count.append(take() | take() << 8)
        status = take()
        temp = take() if profile is None or READ_MAPS[profile].temp else None
        masks = tuple((ports.reg(r), take()) for r in _mask_regs(profile))
        ctrls.append(ControllerDump(name, ports, tuple(addr), tuple(count), status, temp, masks, profile))
    pages = {port: take() for port in _page_ports(profile)}
    return RegisterDump((ctrls[0], ctrls[1]), pages, profile)
