"""Simulated ISA devices: the far end of a DMA channel's DREQ/DACK handshake.

A device drives its channel's DREQ line (:attr:`Device.dreq`) and answers the DACK cycles the
controller runs for it: it *supplies* one unit when the controller moves I/O -> memory (an
8237 "write" transfer) and *accepts* one unit when the controller moves memory -> I/O (a "read"
transfer). A unit is one byte on channels 0-3 and one little-endian 16-bit word on channels 5-7.
It is told when the controller signals terminal count on one of its cycles.

The ``*_many`` methods and :meth:`Device.burst_units` let the machine move block and demand
transfers in bulk slices; their defaults fall back to the unit calls, so a device that only
implements :meth:`supply`/:meth:`accept` is still exact. A single-mode run is moved in one slice
only for a device that declares itself :attr:`Device.isolated` (docs/reference/8237.md §3.5: single
mode re-arbitrates after every transfer, so a request another device raises mid-run must win the
next cycle).

On a channel in cascade mode the controller only relays DREQ and DACK (docs/reference/8237.md §3.5
'Cascade'): the device is then a bus master and runs its own memory cycles in
:meth:`Device.master_cycles`; :class:`BusMaster` is one.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import ClassVar

from hil.errors import DeviceError
from hil.sim.memory import Memory


class Direction(enum.Enum):
    """Which way a device moves data when the controller does not decide (QEMU profile)."""

    TO_MEMORY = "to_memory"
    FROM_MEMORY = "from_memory"


class Device:
    """Base class. Subclasses override :meth:`supply` and/or :meth:`accept`."""

    #: the direction the device itself imposes, if any (QEMU's devices decide the direction)
    direction: Direction | None = None
    #: idle data bus value a device drives when asked for data it does not have
    FLOAT = 0xFF
    #: the device's callbacks change no request line but its own DREQ, so a single-mode run
    #: of it can move as one slice with the same result as transfer-by-transfer arbitration
    #: (the machine raises :class:`hil.errors.DeviceError` if one breaks that promise)
    isolated: ClassVar[bool] = False

    def __init__(self, *, dreq: bool = False) -> None:
        self._dreq = bool(dreq)
        self._listener: Callable[[], None] | None = None
        self.tc_count = 0  #: terminal counts seen on this device's cycles

    # --- the request line -------------------------------------------------------------
    @property
    def dreq(self) -> bool:
        """The DREQ line level (True = requesting). Set it to hold or drop the request."""
        return self._dreq

    @dreq.setter
    def dreq(self, level: bool) -> None:
        level = bool(level)
        if level != self._dreq:
            self._dreq = level
            if self._listener is not None:
                self._listener()

    def _bind(self, listener: Callable[[], None] | None) -> None:
        """Called by the machine on attach/detach so DREQ changes wake its arbiter."""
        self._listener = listener

    # --- DACK cycles ------------------------------------------------------------------
    def supply(self, channel: int, width: int) -> int:
        """Drive one unit onto the data bus (I/O -> memory). Default: a floating bus."""
        return self.FLOAT if width == 8 else 0xFFFF

    def accept(self, channel: int, value: int, width: int) -> None:
        """Latch one unit from the data bus (memory -> I/O). Default: ignore it."""

    def terminal_count(self, channel: int) -> None:
        """T/C was asserted during this device's last DACK cycle."""
        self.tc_count += 1

    def verify_cycles(self, channel: int, count: int, width: int) -> None:
        """``count`` DACK cycles of a verify transfer (docs/reference/8237.md §2.5): the
        controller generates no memory or I/O strobe, but the device sees its DACKs, as a
        floppy controller does. Default: nothing (a source keeps its data)."""

    # --- bulk helpers (override for speed; must behave like repeated unit calls) ---------------
    def burst_units(self, channel: int, width: int, limit: int) -> int:
        """How many of the next ``limit`` units can move while DREQ stays asserted.

        The machine uses this to move demand-mode runs, and single-mode runs of an
        :attr:`isolated` device with no other requester, in slices; a demand burst goes on over
        as many slices as DREQ stays active. The default (1 while requesting) makes the machine
        re-check DREQ after every unit.
        """
        return 1 if self._dreq else 0

    # --- QEMU's transfer handlers (used by the qemu profile's machine only) -----------------
    def ready(self, channel: int) -> bool:
        """Would the device move data if granted now? QEMU's DMA engine calls a device's
        transfer handler while its request is held, and the handler may move nothing (the
        SB16 waits for its audio timer: docs/reference/qemu-qtest.md §7, §8.1); such a channel
        is not serviced until the device calls :meth:`wake`. Default: always."""
        return True

    def wraps_at_length(self, channel: int) -> bool:
        """Does the device's transfer handler return its position modulo the channel's length?
        QEMU's SB16 does, so its channel restarts at the base values and never shows TC
        (docs/reference/qemu-qtest.md §7). Default: no, the channel reaches TC."""
        return False

    def wake(self) -> None:
        """Tell the machine that :meth:`ready` may have changed (DREQ changes tell it anyway)."""
        if self._listener is not None:
            self._listener()

    def master_cycles(self, channel: int, memory: Memory, budget_ns: int) -> int:
        """DACK on a cascade-mode channel: the device is bus master and runs its own cycles.

        Return the virtual ns it held the bus; the machine keeps granting it the bus while its
        DREQ stays active (docs/reference/8237.md §3.5 'Cascade': the channel passes HLDA to DACK
        until DREQ drops), so a master drops DREQ when it is done. ``budget_ns`` is the time the
        caller is advancing. The default is a card with no cycles of its own: it holds the bus,
        doing nothing, for as long as its DREQ is up, i.e. the whole budget.
        """
        return budget_ns

    def supply_many(self, channel: int, count: int, width: int) -> bytes | memoryview:
        """``count`` units (a view is fine: the machine copies them into memory at once)."""
        size = width // 8
        return b"".join(self.supply(channel, width).to_bytes(size, "little") for _ in range(count))

    def accept_many(self, channel: int, data: bytes, width: int) -> None:
        size = width // 8
        for i in range(0, len(data), size):
            self.accept(channel, int.from_bytes(data[i : i + size], "little"), width)


class BusMaster(Device):
    """An ISA bus master on a cascade-mode channel (Linux ``DMA_MODE_CASCADE`` cards, AT DMA1).

    It raises DREQ, and once granted the bus it writes ``data`` at physical ``addr`` (its own
    memory cycles, not the 8237's: no address or count register moves) and holds the bus for
    ``hold_ns`` of virtual time in all, then drops DREQ. The hold is one tenure: the CPU and every
    other channel wait for all of it, as they would for a real master (docs/reference/8237.md
    §3.5). :meth:`request` raises DREQ again for another tenure.
    """

    def __init__(self, hold_ns: int, *, data: bytes = b"", addr: int = 0, dreq: bool = True) -> None:
        if hold_ns <= 0:
            raise DeviceError(f"hold_ns {hold_ns!r}: a bus master holds the bus for at least 1 ns")
        self.hold_ns = hold_ns
        self.data = bytes(data)
        self.addr = addr
        self.tenures = 0  #: bus tenures completed
        super().__init__(dreq=dreq)

    def request(self) -> None:
        self.dreq = True

    def master_cycles(self, channel: int, memory: Memory, budget_ns: int) -> int:
        end = min(self.addr + len(self.data), len(memory))
        if self.addr < end:
            memory[self.addr : end] = self.data[: end - self.addr]
        self.tenures += 1
        self.dreq = False
        return self.hold_ns

    def __repr__(self) -> str:
        return f"BusMaster({self.hold_ns} ns, {self.tenures} tenures, dreq={self.dreq})"


class Source(Device):
    """A device that sends ``data`` to memory. DREQ is high while it still has data.

    Asked for more than it has (block mode runs to TC whatever DREQ says, or DREQ held by
    hand), it drives a floating bus (0xFF) and counts the shortfall in :attr:`underruns`.
    Its callbacks touch only its own DREQ (:attr:`Device.isolated`).
    """

    direction = Direction.TO_MEMORY
    isolated = True

    def __init__(self, data: bytes, *, dreq: bool = True) -> None:
        self._data = bytes(data)
        self.pos = 0
        self.underruns = 0  #: bytes supplied after the data ran out
        self._armed = bool(dreq)  #: requests whenever it has data (unless dropped by hand)
        super().__init__(dreq=bool(dreq) and bool(self._data))

    @property
    def remaining(self) -> int:
        return len(self._data) - self.pos

    def append(self, data: bytes) -> None:
        """Queue more data; a source that dropped DREQ because it ran dry requests again."""
        ran_dry = self.pos >= len(self._data) and not self.dreq
        self._data += bytes(data)
        if data and ran_dry and self._armed:
            self.dreq = True

    def _take(self, nbytes: int) -> bytes | memoryview:
        """The next ``nbytes``: a view of the (immutable) data where it has them all, so that a
        burst is copied once, into memory, rather than sliced out first."""
        pos, data = self.pos, self._data
        had_data = pos < len(data)
        chunk: bytes | memoryview
        if pos + nbytes <= len(data):
            chunk = memoryview(data)[pos : pos + nbytes]
            self.pos = pos + nbytes
        else:
            chunk = data[pos:]
            self.pos += len(chunk)
            short = nbytes - len(chunk)
            self.underruns += short
            chunk += bytes([self.FLOAT]) * short
        if had_data and self.pos == len(data):
            self.dreq = False  # FIFO empty: the request drops by itself
        return chunk

    def supply(self, channel: int, width: int) -> int:
        return int.from_bytes(self._take(width // 8), "little")

    def supply_many(self, channel: int, count: int, width: int) -> bytes | memoryview:
        return self._take(count * (width // 8))

    def burst_units(self, channel: int, width: int, limit: int) -> int:
        if not self._dreq:
            return 0
        if self.remaining:
            size = width // 8
            return min(limit, (self.remaining + size - 1) // size)
        return limit  # DREQ held by hand with no data left: it stays up whatever moves

    def __repr__(self) -> str:
        return f"Source({self.pos}/{len(self._data)} sent, dreq={self.dreq})"


class Sink(Device):
    """A device that takes data from memory into :attr:`received`.

    With ``dreq=True`` it requests while it has room (``capacity`` bytes, None = unlimited);
    with ``dreq=False`` it never requests and only takes what software requests deliver. Data
    offered beyond its capacity is counted in :attr:`overruns`, never silently kept.
    Its callbacks touch only its own DREQ (:attr:`Device.isolated`).
    """

    direction = Direction.FROM_MEMORY
    isolated = True

    def __init__(self, dreq: bool = True, capacity: int | None = None) -> None:
        self.received = bytearray()
        self.capacity = capacity
        self.overruns = 0
        super().__init__(dreq=bool(dreq) and (capacity is None or capacity > 0))

    @property
    def room(self) -> int | None:
        return None if self.capacity is None else self.capacity - len(self.received)

    def _put(self, data: bytes) -> None:
        room = self.room
        if room is not None and len(data) > room:
            self.overruns += len(data) - room
            data = data[:room]
        self.received += data
        if data and self.room == 0:
            self.dreq = False  # full: the request drops by itself

    def accept(self, channel: int, value: int, width: int) -> None:
        self._put(value.to_bytes(width // 8, "little"))

    def accept_many(self, channel: int, data: bytes, width: int) -> None:
        self._put(bytes(data))

    def burst_units(self, channel: int, width: int, limit: int) -> int:
        if not self._dreq:
            return 0
        room = self.room
        if room:
            size = width // 8
            return min(limit, (room + size - 1) // size)
        return limit

    def __repr__(self) -> str:
        return f"Sink({len(self.received)} received, dreq={self.dreq})"
