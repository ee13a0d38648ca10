"""IRQ lines seen from user space on a PC: the 8259 pair's request register, lines set to level.

A Linux target offers no interface to an interrupt line that no driver claims, but every PC
chipset still has the two 8259s on its ISA (or serial-IRQ) lines beside the I/O APIC, and their
request register (IRR) is readable by port I/O whatever the mask (docs/reference/8259.md §3.3).
In edge mode an IRR bit that nothing acknowledges stays set after its first edge (QEMU keeps it
until INTA, docs/reference/8259.md §7), so the observed lines are switched to level mode in the
chipset's ELCR (0x4D0/0x4D1), where the IRR follows the line (§4.2), and put back on close.

Costs and limits, which ``irq=pic`` documents to the user: the backend itself writes OCW3 and
ELCR and reads the IRR (ports 0x20, 0xA0, 0x4D0, 0x4D1, outside the script's allow-list); an OS
that runs these lines through the 8259 (no I/O APIC) would see them as level interrupts; edges
are counted when a read finds a line high that the previous read found low, so a pulse that
rises and falls between two reads is not seen (an ISA device holds its line until serviced; the
backend reads after every port access, the moments a line is raised or serviced by software).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from hil.ops import IRQ_LINES, IrqLines
from hil.ports import ELCR_PORTS, ELCR_PROGRAMMABLE, OCW3_READ_IRR, PIC_COMMAND

ReadPort = Callable[[int], int]
WritePort = Callable[[int, int], None]


class PicObserver:
    """The watched lines' levels and rising edges, read through ``read``/``write`` port access."""

    def __init__(self, lines: Iterable[int], read: ReadPort, write: WritePort) -> None:
        self.lines = tuple(sorted(set(lines)))
        bad = [n for n in self.lines if n not in ELCR_PROGRAMMABLE]
        if bad:
            raise ValueError(f"IRQ {bad[0]} cannot be set to level mode in the ELCR (programmable: "
                             f"{', '.join(map(str, sorted(ELCR_PROGRAMMABLE)))})")
        self._read, self._write = read, write
        self._mask = sum(1 << n for n in self.lines)
        self._saved: tuple[int, int] | None = None
        self._levels = 0
        self._counts = [0] * IRQ_LINES

    def start(self) -> None:
        """Set the watched lines to level mode, remembering the ELCR as found."""
        saved = (self._read(ELCR_PORTS[0]), self._read(ELCR_PORTS[1]))
        self._saved = saved
        self._write(ELCR_PORTS[0], saved[0] | (self._mask & 0xFF))
        self._write(ELCR_PORTS[1], saved[1] | (self._mask >> 8))
        self._levels = self._irr()  # what is already high is not an edge

    def stop(self) -> None:
        """Put the ELCR back as :meth:`start` found it."""
        if self._saved is not None:
            self._write(ELCR_PORTS[0], self._saved[0])
            self._write(ELCR_PORTS[1], self._saved[1])
            self._saved = None

    def _irr(self) -> int:
        value = 0
        for shift, port in zip((0, 8), PIC_COMMAND, strict=True):
            if self._mask >> shift & 0xFF:
                self._write(port, OCW3_READ_IRR)
                value |= self._read(port) << shift
        return value & self._mask

    def sample(self) -> IrqLines:
        """Read the IRR now; the lines with edges counted since the last sample."""
        now = self._irr()
        rose = now & ~self._levels
        for n in self.lines:
            if rose >> n & 1:
                self._counts[n] += 1
        self._levels = now
        return IrqLines(now, tuple(self._counts))

    @property
    def last(self) -> IrqLines:
        return IrqLines(self._levels, tuple(self._counts))

    def wait(self, line: int, level: bool, timeout_s: float, interval_s: float = 50e-6) -> IrqLines:
        """Blocking (the backend's I/O thread): sample until ``line`` is at ``level`` or the time is up."""
        deadline = time.perf_counter() + timeout_s
        while True:
            lines = self.sample()
            if lines.level(line) == level or time.perf_counter() >= deadline:
                return lines
            time.sleep(interval_s)
