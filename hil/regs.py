"""Read and decode every readable DMA register of both controllers and the page file.

The dump clears the flip-flop before the address/count reads and reads each register as a
low/high pair, so it leaves the flip-flop clear (hil-lessons.md §1.1). Reading the status
register clears its TC bits: that is the hardware's rule, and the dump says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from hil.backends.base import Backend
from hil.backends.ops import In, Op, Out
from hil.ports import CONTROLLERS, PAGE_CHANNEL, PAGE_FILE, Reg, status_requests, status_tc


@dataclass(frozen=True)
class ControllerDump:
    name: str
    first_channel: int
    addr: tuple[int, int, int, int]
    count: tuple[int, int, int, int]
    status: int
    temp: int
    mask_0f: int  #: the chipset mask readback port (0x0F / 0xDE)
    mask_09: int  #: QEMU's mask readback port (0x09 / 0xD2)

    def lines(self) -> list[str]:
        tc, req = status_tc(self.status), status_requests(self.status)
        out = [
            f"{self.name}: status 0x{self.status:02X} (TC {_bits(tc, self.first_channel)}; "
            f"request {_bits(req, self.first_channel)})  temp 0x{self.temp:02X}  "
            f"mask@{'0F' if self.first_channel == 0 else 'DE'} 0x{self.mask_0f:02X}  "
            f"mask@{'09' if self.first_channel == 0 else 'D2'} 0x{self.mask_09:02X}"
        ]
        for i in range(4):
            ch = self.first_channel + i
            unit = "words" if ch >= 4 else "bytes"
            out.append(
                f"  ch{ch}: current address 0x{self.addr[i]:04X}  current count 0x{self.count[i]:04X}"
                f" ({(self.count[i] + 1) & 0xFFFF or 0x10000} {unit} left)"
            )
        return out


@dataclass(frozen=True)
class RegisterDump:
    controllers: tuple[ControllerDump, ControllerDump]
    pages: bytes  #: 0x80..0x8F

    def format(self) -> str:
        lines: list[str] = []
        for c in self.controllers:
            lines += c.lines()
        pages = "  ".join(
            f"{port:02X}={self.pages[port - PAGE_FILE.start]:02X}"
            + (f"(ch{PAGE_CHANNEL[port]})" if port in PAGE_CHANNEL else "")
            for port in PAGE_FILE
        )
        lines.append(f"page file: {pages}")
        lines.append("(the status read cleared the TC bits shown above)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {
            "controllers": [
                {
                    "name": c.name,
                    "status": c.status,
                    "temp": c.temp,
                    "mask_0f": c.mask_0f,
                    "mask_09": c.mask_09,
                    "channels": {
                        str(c.first_channel + i): {"addr": c.addr[i], "count": c.count[i]} for i in range(4)
                    },
                }
                for c in self.controllers
            ],
            "pages": {f"0x{p:02X}": self.pages[p - PAGE_FILE.start] for p in PAGE_FILE},
        }


def _bits(bits: int, first: int) -> str:
    chans = [str(first + i) for i in range(4) if bits & (1 << i)]
    return ",".join(chans) if chans else "-"


def dump_program() -> list[Op]:
    ops: list[Op] = []
    for ports in CONTROLLERS:
        ops.append(Out(ports.clear_ff, 0))
        for local in range(4):
            ops += [In(ports.addr(local)), In(ports.addr(local)), In(ports.count(local)), In(ports.count(local))]
        ops += [In(ports.status), In(ports.temp), In(ports.reg(Reg.ALL_MASK)), In(ports.reg(Reg.REQUEST))]
    ops += [In(port) for port in PAGE_FILE]
    return ops


async def read_registers(backend: Backend) -> RegisterDump:
    """One program: a single round trip on a link."""
    values = await backend.execute(dump_program())
    it = iter(values)
    ctrls = []
    for ports, name in zip(CONTROLLERS, ("DMA1", "DMA2")):
        addr, count = [], []
        for _ in range(4):
            a_lo, a_hi, c_lo, c_hi = next(it), next(it), next(it), next(it)
            addr.append(a_lo | a_hi << 8)  # type: ignore[operator]
            count.append(c_lo | c_hi << 8)  # type: ignore[operator]
        status, temp, m0f, m09 = next(it), next(it), next(it), next(it)
        ctrls.append(ControllerDump(name, 4 * int(ports.ctrl), tuple(addr), tuple(count), status, temp, m0f, m09))  # type: ignore[arg-type]
    pages = bytes(next(it) for _ in PAGE_FILE)  # type: ignore[misc]
    return RegisterDump((ctrls[0], ctrls[1]), pages)
