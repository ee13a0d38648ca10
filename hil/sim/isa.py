"""Port-mapped ISA devices and the AT's interrupt request lines.

An :class:`IsaDevice` declares the I/O ports it decodes, the ISA IRQ lines it drives and the DMA
channels it uses. :meth:`hil.sim.machine.Machine.plug` maps its ports into the machine's port
decoder (refusing overlaps), gives it one :class:`IrqLine` per IRQ and one :class:`DmaPort` per
channel, and from then on the device can read the virtual clock and schedule timers
(:mod:`hil.sim.timers`). A machine reset calls :meth:`IsaDevice.reset`.

The DMA side is the ordinary :class:`hil.sim.devices.Device` handshake: the device raises its
channel's DREQ (``self.dma_port(ch).dreq = True``) and answers the DACK cycles in
:meth:`IsaDevice.dma_supply` / :meth:`IsaDevice.dma_accept`; the controller moves memory, the
device never touches it.

IRQ lines (docs/reference/8259.md §1, §8): ISA IRQ ``n`` is one wire per number; several drivers
on one wire are OR-ed. IRQ 2 of the ISA slot is the AT's IRQ 9 (the slave's IR1): driving line
2 drives line 9, and both numbers read the same level and count. The count is the number of
rising edges of the wire since the machine's reset, as QEMU's qtest reports ``IRQ raise N``
only when a line changes (docs/reference/qemu-qtest.md §3.2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from hil.errors import DeviceError
from hil.records import dataclass
from hil.sim.devices import Device, Direction
from hil.sim.timers import Scheduler, Timer, TimerCallback


class DmaWindow(Protocol):
    """What a transfer handler sees of its channel: QEMU's ``read_memory`` / ``write_memory``,
    at byte ``pos`` of the transfer (the machine applies the channel's address, page, direction
    and verify mode as QEMU's i8257 does)."""

    def read(self, pos: int, length: int) -> bytes | None:
        """``length`` bytes from memory at transfer position ``pos``; None in verify mode
        (nothing is read and the device's buffer stays as it was)."""

    def write(self, pos: int, data: bytes) -> bytes:
        """Store ``data`` at transfer position ``pos``; returns the device's buffer as the
        controller leaves it (QEMU's decrement mode mangles it in place)."""


class Host(Protocol):
    """What a plugged device sees of its machine: the clock and the timers. A protocol rather
    than :class:`hil.sim.machine.Machine` itself, so the machine builds on this module and not
    the other way round."""

    now_ns: int
    timers: Scheduler

IRQ_LINES = 16
#: the ISA slot's IRQ 2 pin is wired to the AT's IRQ 9 (docs/reference/8259.md §1)
IRQ_ALIAS = {2: 9}


#: the wire each of IRQ 0-15 names
_WIRES = tuple(IRQ_ALIAS.get(n, n) for n in range(IRQ_LINES))


def isa_line(n: int) -> int:
    """The wire ISA IRQ ``n`` names (IRQ 2 is IRQ 9). Refuses numbers outside 0-15."""
    if type(n) is not int or n not in range(IRQ_LINES):
        raise DeviceError(f"IRQ {n!r}: ISA interrupt lines are 0-15")
    return IRQ_ALIAS.get(n, n)


class IrqBus:
    """The sixteen ISA IRQ wires: drivers, levels, rising-edge counts, and the 8259 inputs."""

    def __init__(self, sink: Callable[[int, bool], None]) -> None:
        self._sink = sink  #: called with (wire, level) on every change of a wire
        self._high = [0] * IRQ_LINES  #: drivers currently high, per wire
        self.counts = [0] * IRQ_LINES  #: rising edges per wire since reset
        self.changed: Callable[[], None] | None = None  #: the machine's wake-up (wait_irq)
        self._lines: tuple[int, tuple[int, ...]] | None = None  #: lines() until a wire changes

    def level(self, n: int) -> bool:
        return self._high[isa_line(n)] > 0

    def count(self, n: int) -> int:
        return self.counts[isa_line(n)]

    def lines(self) -> tuple[int, tuple[int, ...]]:
        """:meth:`level` of IRQ 0-15 as bits and :meth:`count` of each, in one pass: what a
        backend reports after every program (IRQ 2 reads IRQ 9, as in :meth:`level`). Kept
        until a wire's level changes (:meth:`_drive`) or the counts are cleared: an agent asks
        after every program, and a line changes in few of them."""
        lines = self._lines
        if lines is None:
            high, counts = self._high, self.counts
            lines = self._lines = (sum(1 << n for n, wire in enumerate(_WIRES) if high[wire] > 0),
                                   tuple(counts[wire] for wire in _WIRES))
        return lines

    def _drive(self, wire: int, up: bool) -> None:
        before = self._high[wire] > 0
        self._high[wire] += 1 if up else -1
        after = self._high[wire] > 0
        if before != after:
            self._lines = None
            if after:
                self.counts[wire] += 1
            self._sink(wire, after)
            if self.changed is not None:
                self.changed()

    def clear_counts(self) -> None:
        self.counts = [0] * IRQ_LINES
        self._lines = None


class IrqLine:
    """One driver on ISA IRQ ``n`` (a device's IRQ output pin)."""

    def __init__(self, bus: IrqBus, n: int) -> None:
        self.number = n
        self.wire = isa_line(n)
        self._bus = bus
        self._level = False

    @property
    def level(self) -> bool:
        """What this driver outputs (the wire may be high from another driver)."""
        return self._level

    def set(self, level: bool) -> None:
        level = bool(level)
        if level != self._level:
            self._level = level
            self._bus._drive(self.wire, level)

    def raise_(self) -> None:
        self.set(True)

    def lower(self) -> None:
        self.set(False)

    def pulse(self) -> None:
        """A rising edge and back: an edge-triggered request the device does not hold."""
        self.set(True)
        self.set(False)

    def __repr__(self) -> str:
        return f"IrqLine({self.number}, {'high' if self._level else 'low'})"


class DmaPort(Device):
    """The DREQ/DACK side of an :class:`IsaDevice` on one channel: delegates to its owner."""

    def __init__(self, owner: IsaDevice, channel: int) -> None:
        super().__init__()
        self.owner = owner
        self.channel = channel
        self.direction: Direction | None = None  #: set by owners that decide the direction (QEMU profile)

    def supply(self, channel: int, width: int) -> int:
        return self.owner.dma_supply(channel, width)

    def accept(self, channel: int, value: int, width: int) -> None:
        self.owner.dma_accept(channel, value, width)

    def terminal_count(self, channel: int) -> None:
        super().terminal_count(channel)
        self.owner.dma_terminal_count(channel)

    def verify_cycles(self, channel: int, count: int, width: int) -> None:
        self.owner.dma_verify(channel, count, width)

    def burst_units(self, channel: int, width: int, limit: int) -> int:
        return self.owner.dma_burst_units(channel, width, limit) if self.dreq else 0

    def ready(self, channel: int) -> bool:
        return self.owner.dma_ready(channel)

    def wraps_at_length(self, channel: int) -> bool:
        return self.owner.dma_wraps_at_length(channel)

    def __repr__(self) -> str:
        return f"DmaPort({self.owner.name}, ch{self.channel}, dreq={self.dreq})"


class IsolatedDmaPort(DmaPort):
    """The port of a device whose DMA callbacks change no other channel's DREQ
    (:attr:`IsaDevice.dma_isolated`): the machine may move a run of its single-mode transfers
    as one slice (docs/reference/8237.md §3.5, :attr:`hil.sim.devices.Device.isolated`)."""

    isolated = True


@dataclass(frozen=True)
class PortRange:
    """``size`` consecutive I/O ports from ``base``."""

    base: int
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 1 or self.base < 0 or self.base + self.size > 0x10000:
            raise DeviceError(f"port range 0x{self.base:X}+{self.size} is outside 0x0000-0xFFFF")

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.base <= port < self.base + self.size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.base, self.base + self.size))

    def __str__(self) -> str:
        last = self.base + self.size - 1
        return f"0x{self.base:04X}" if self.size == 1 else f"0x{self.base:04X}-0x{last:04X}"


class IsaDevice:
    """Base class of a port-mapped ISA device (see the module docstring).

    Subclasses override :meth:`io_read`, :meth:`io_write`, :meth:`reset` and the ``dma_*``
    hooks they need. ``wide_ports`` are ports that answer a 16-bit access as one cycle (a card
    asserting IOCS16#); on every other port the bus splits a word access into two byte cycles,
    low byte first, as the AT does (docs/reference/8237.md §1.4).
    """

    name: str = "isa-device"

    def __init__(
        self,
        *,
        ports: Iterable[PortRange],
        irqs: Iterable[int] = (),
        dma: Iterable[int] = (),
        wide_ports: Iterable[int] = (),
        name: str | None = None,
    ) -> None:
        if name is not None:
            self.name = name
        self.ports = tuple(ports)
        self.irqs = tuple(irqs)
        for n in self.irqs:
            isa_line(n)
        self.dma_channels = tuple(dma)
        self.wide_ports = frozenset(wide_ports)
        self.machine: Host | None = None  #: set while plugged
        self.irq_lines: dict[int, IrqLine] = {}
        self.dma_ports: dict[int, DmaPort] = {}

    # --- the bus side (the machine calls these) ------------------------------------------------
    def io_read(self, port: int, width: int = 8) -> int:
        """One read cycle at ``port`` (width 16 only for ``wide_ports``). Default: floating bus."""
        return 0xFF if width == 8 else 0xFFFF

    def io_write(self, port: int, value: int, width: int = 8) -> None:
        """One write cycle at ``port``. Default: the write is lost."""

    def reset(self) -> None:
        """Machine reset (RESET DRV): back to the power-on state. The default drops the device's
        IRQ and DREQ outputs; subclasses call it and reset their own registers."""
        for line in self.irq_lines.values():
            line.lower()
        for port in self.dma_ports.values():
            port.dreq = False

    def plugged(self) -> None:
        """Called once the machine has mapped the device (lines, ports, timers usable)."""

    # --- the DMA side ----------------------------------------------------------------------
    def dma_port(self, channel: int) -> DmaPort:
        try:
            return self.dma_ports[channel]
        except KeyError:
            raise DeviceError(f"{self.name}: not plugged on DMA channel {channel}") from None

    def dma_supply(self, channel: int, width: int) -> int:
        """One DACK cycle I/O -> memory: the unit the device drives. Default: floating bus."""
        return 0xFF if width == 8 else 0xFFFF

    def dma_accept(self, channel: int, value: int, width: int) -> None:
        """One DACK cycle memory -> I/O: the unit the device latches. Default: ignored."""

    def dma_terminal_count(self, channel: int) -> None:
        """T/C came with the device's last DACK cycle."""

    def dma_verify(self, channel: int, count: int, width: int) -> None:
        """``count`` DACK cycles of a verify transfer: no data on the bus (see
        :meth:`hil.sim.devices.Device.verify_cycles`). Default: ignored."""

    #: the DMA callbacks touch no other channel's DREQ (see :class:`IsolatedDmaPort`)
    dma_isolated: bool = False

    #: the device moves its own data through the controller in one call, as QEMU's ISA DMA
    #: devices do (``IsaDmaTransferHandler``): a machine that models QEMU's i8257 calls
    #: :meth:`dma_handler` instead of running DACK cycles (docs/reference/qemu-qtest.md §6)
    transfer_handler: bool = False

    def dma_handler(self, channel: int, pos: int, size: int, dma: DmaWindow) -> int:
        """QEMU's transfer handler: called with the channel's position and size in bytes while
        its request is set and it is unmasked; returns the new position (QEMU stores it as the
        channel's count position). Only for devices with :attr:`transfer_handler` set."""
        raise DeviceError(f"{self.name}: no QEMU-style transfer handler")

    def dma_burst_units(self, channel: int, width: int, limit: int) -> int:
        """How many of the next ``limit`` units move while DREQ stays up (see
        :meth:`hil.sim.devices.Device.burst_units`). Default 1: DREQ is re-checked every unit."""
        return 1

    def dma_ready(self, channel: int) -> bool:
        """QEMU profile: would the device move data now (see :meth:`hil.sim.devices.Device.ready`)?"""
        return True

    def dma_wraps_at_length(self, channel: int) -> bool:
        """QEMU profile: position modulo the channel length, no TC (see
        :meth:`hil.sim.devices.Device.wraps_at_length`)."""
        return False

    # --- services -------------------------------------------------------------------------
    def _machine(self) -> Host:
        if self.machine is None:
            raise DeviceError(f"{self.name}: not plugged into a machine")
        return self.machine

    def irq(self, n: int | None = None) -> IrqLine:
        """The device's driver on IRQ ``n`` (default: its first IRQ)."""
        if n is None and self.irqs:
            n = self.irqs[0]
        line = self.irq_lines.get(n) if n is not None else None
        if line is None:
            raise DeviceError(f"{self.name}: no IRQ {n} (plugged: {sorted(self.irq_lines)})")
        return line

    @property
    def now_ns(self) -> int:
        return self._machine().now_ns

    def at(self, when_ns: int, callback: TimerCallback, *, busy: bool = True, name: str = "") -> Timer:
        m = self._machine()
        return m.timers.at(when_ns, callback, now_ns=m.now_ns, busy=busy, name=name or self.name)

    def after(self, delay_ns: int, callback: TimerCallback, *, busy: bool = True, name: str = "") -> Timer:
        m = self._machine()
        return m.timers.at(m.now_ns + delay_ns, callback, now_ns=m.now_ns, busy=busy, name=name or self.name)

    def cancel(self, timer: Timer | None) -> bool:
        return timer is not None and self._machine().timers.cancel(timer)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, ports={', '.join(map(str, self.ports))})"
