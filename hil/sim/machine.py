"""The PC/AT DMA subsystem: two 8237A, the page register file, physical memory, devices, time.

Wiring (docs/reference/8237.md §1, §3.5, §3.6): DMA1 (channels 0-3) requests the bus through DMA2's channel 4,
so DMA1 runs only while channel 4 is unmasked and in cascade mode and DMA2 is enabled; DMA2
arbitrates channel 4 (all of DMA1) against channels 5-7. Page registers supply A16-A23.

Time is virtual: every CPU port access costs :attr:`Timing.port_ns`, and DMA progresses only
while time advances (port accesses, :meth:`Machine.advance`, :meth:`Machine.run_until_idle`).
Arbitration follows the mode (docs/reference/8237.md §3.5, §3.9), and a bus grant is atomic in
virtual time: block and demand bursts, and the tenure of a bus master on a cascade channel, hold
the bus to their end (TC, or DREQ dropping), past the caller's time budget if need be, so the
CPU's next port access and every other channel come after them, as on the AT where the CPU sits
in HOLD. Single mode gives the bus back after every transfer; a lone requester's run is moved
as one slice only when nothing could have decided otherwise (no other request pending, and a
device that declares its callbacks raise no other line, :attr:`Device.isolated`). Bursts are
moved as memory slices; nothing observable differs because no CPU access or other request can
fall inside them. A caller with timed events inside the budget splits :meth:`Machine.advance`
at them: that is what bounds a single-mode slice.

Profiles: :class:`Machine` is the AT; :class:`QemuMachine` is QEMU 7.2's ``-machine pc``, a
subclass that overrides only where QEMU's wiring differs (docs/reference/8237.md §5,
docs/reference/qemu-qtest.md §8): no DMA1 mirror, only the eight channel page registers, word
accesses split by address alignment, no cascade gating or priority, devices that move as much as
they like per grant and choose the direction, decrementing chunks moved forward. The chip
differences are in the controller classes of :mod:`hil.sim.i8237`. :func:`machine_for` builds
the machine of a profile name.

Interrupts and port-mapped devices (docs/reference/8259.md §1, §8): the 8259A pair of
:mod:`hil.sim.i8259` decodes 0x20/0x21 and 0xA0/0xA1 on both profiles; ISA IRQ lines
(:meth:`Machine.irq_line`, :meth:`Machine.set_irq`) feed it and count rising edges
(:meth:`Machine.irq_count`). :meth:`Machine.plug` maps an :class:`hil.sim.isa.IsaDevice`'s ports
into the decoder. Device timers (:mod:`hil.sim.timers`, :attr:`Machine.timers`) fire in time
order between DMA grants while time advances; with none pending, time advances as before.

There is no I/O and no asyncio here; the backend in :mod:`hil.backends.sim` wraps it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import ClassVar, Protocol

from hil.errors import DeviceError, MemoryRangeError, SettleTimeout, UndecodedPortError
from hil.log import get_logger
from hil.ports import (
    CASCADE_CHANNEL,
    DMA1,
    DMA1_MIRROR,
    DMA2,
    MASK_SET,
    PAGE_BASE,
    PAGE_CHANNEL,
    PAGE_FILE,
    PAGE_PORT,
    Command,
    Ctrl,
    Mode,
    ModeSelect,
    Reg,
    TransferType,
)
from hil.records import dataclass
from hil.sim.devices import Device, Direction
from hil.sim.i8237 import FLOAT, I8237, Controller, QemuI8257, R, Sel, Xfer
from hil.sim.i8259 import PORTS as PIC_PORTS, PicPair, QemuPicPair
from hil.sim.isa import DmaPort, IrqBus, IrqLine, IsaDevice, IsolatedDmaPort, isa_line
from hil.sim.memory import Memory, zeroed
from hil.sim.timers import Scheduler

#: the command bits as plain ints: ``int & IntFlag`` goes through the enum's ``__rand__``,
#: a microsecond per test in the arbitration that runs at every port access
_CH0_HOLD = Command.CH0_HOLD.value
_COMPRESSED = Command.COMPRESSED.value
_DACK_ACTIVE_HIGH = Command.DACK_ACTIVE_HIGH.value
_DREQ_ACTIVE_LOW = Command.DREQ_ACTIVE_LOW.value
_CASCADE = ModeSelect.CASCADE.value
_TO_MEMORY, _FROM_MEMORY = Direction.TO_MEMORY, Direction.FROM_MEMORY  #: one global look-up, not an enum's

log = get_logger("hil.sim")


@dataclass(frozen=True)
class Timing:
    """Virtual-time costs. AT figures: 8237 clocked at 4 MHz, ~1 us per ISA I/O cycle."""

    port_ns: int = 1000  #: one CPU I/O cycle
    clock_ns: int = 250  #: one DMA clock
    cycle_clocks: int = 4  #: S1-S4 of one transfer
    compressed_clocks: int = 2  #: S2, S4 with compressed timing
    acquire_clocks: int = 2  #: HRQ -> HLDA -> first cycle (paid per bus acquisition)
    m2m_clocks: int = 8  #: memory-to-memory: read cycle + write cycle


class Tracer(Protocol):
    """What the machine tells a waveform tracer (:class:`hil.sim.trace.SignalTrace`)."""

    def moved(self, channel: int, phys: int, step: int, units: int, size: int, data: bytes | memoryview | None,
              direction: Direction | None) -> None:
        """A chunk of the grant in progress moved (``data`` None: verify cycles)."""

    def granted(self, channel: int, cost_ns: int, tc: bool) -> None:
        """A bus grant that started at ``now_ns`` and took ``cost_ns`` ended."""

    def fired(self) -> None:
        """A device timer fired at ``now_ns``."""

    def sample(self, t: int | None = None) -> None:
        """Look at every register and line now."""

    def op_done(self, port: int | None = None, value: int = 0, *, write: bool = False, width: int = 8) -> None:
        """The ``sim:`` backend ran an op of a program (``port``: the port it accessed)."""


@dataclass(frozen=True)
class ChannelState:
    """A decoded view of one channel, for dumps and tests (reading it has no side effects)."""

    channel: int
    mode: Mode
    masked: bool
    base_addr: int
    cur_addr: int
    base_count: int
    cur_count: int
    page: int
    tc: bool
    request: bool
    phys: int  #: physical address of the next unit


class Machine:
    """Two cascaded 8237A, page registers and memory, as on a PC/AT motherboard (``intel``)."""

    profile: ClassVar[str] = "intel"
    controller: ClassVar[type[Controller]] = I8237
    #: ports that decode DMA1 a second time (the AT decodes it in 0x00-0x1F)
    mirror_ports: ClassVar[tuple[int, ...]] = tuple(DMA1_MIRROR)
    #: page ports that are latches: the AT's 74LS612 keeps all 16 (docs/reference/8237.md §1.3)
    page_ports: ClassVar[tuple[int, ...]] = tuple(PAGE_FILE)
    #: the AT BIOS programs channel 4 as cascade and unmasks it at POST (docs/reference/8237.md §3.6)
    post_by_default: ClassVar[bool] = True
    #: the interrupt controllers (docs/reference/8259.md §7 for the QEMU variant)
    pic_pair: ClassVar[type[PicPair]] = PicPair
    #: while DMA runs, :meth:`wait_irq` looks at the line at least this often (virtual ns)
    wait_slice_ns: ClassVar[int] = 10_000
    #: a waveform tracer (:class:`hil.sim.trace.SignalTrace`) while one records; None (the
    #: default) costs one test per grant, per chunk and per timer
    tracer: Tracer | None = None

    def __init__(
        self,
        *,
        mem_size: int = 16 << 20,
        strict: bool = False,
        post: bool | None = None,
        timing: Timing | None = None,
    ) -> None:
        self.strict = strict
        self.timing = timing or Timing()
        self.dma1: Controller = self.controller(Ctrl.DMA1)
        self.dma2: Controller = self.controller(Ctrl.DMA2)
        self.pages = bytearray(16)
        self.memory: Memory = zeroed(mem_size)  #: touched pages only (hil.sim.memory)
        self.devices: dict[int, Device] = {}
        self.now_ns = 0
        self._idle = False  #: cached "nothing can be serviced"; cleared by anything that may change it
        #: the attached devices' DREQ lines, bit n = channel n, kept by the DREQ listener (as
        #: ``_idle`` is): the arbitration reads them at every port access and every grant
        self._lines = 0
        self._live_lines = False  #: a device with its own ``dreq`` property: read every line live
        self._warned: set[tuple[str, int]] = set()
        self._readers: dict[int, Callable[[], int]] = {}
        self._writers: dict[int, Callable[[int], None]] = {}
        self.pic: PicPair = self.pic_pair()
        self.irq_bus = IrqBus(self.pic.set_irq)
        self.timers = Scheduler()
        self._timer_heap = self.timers.heap  #: the same list: the fast path's one look-up
        self.isa_devices: list[IsaDevice] = []
        self._wide: dict[int, IsaDevice] = {}  #: ports answering a 16-bit access in one cycle
        self._own_lines: dict[int, IrqLine] = {}  #: drivers behind set_irq
        self._build_decoder()
        if post if post is not None else self.post_by_default:
            self.bios_post()

    # --- decoding ------------------------------------------------------------------------
    def _build_decoder(self) -> None:
        for ctl, ports in ((self.dma1, DMA1), (self.dma2, DMA2)):
            for port in ports.span:
                index = (port - ports.base) // ports.stride & 0x0F
                self._map(port, ctl, index)
        for port in self.mirror_ports:
            self._map(port, self.dma1, port & 0x0F)
        for port in self.page_ports:
            self._map_page(port - PAGE_BASE)
        for port in PIC_PORTS:
            self._map_pic(port)
        for device in self.isa_devices:
            self._map_device(device)

    def _map_pic(self, port: int) -> None:
        self._readers[port] = lambda: self.pic.read(port)
        self._writers[port] = lambda value: self.pic.write(port, value)

    def _map_device(self, device: IsaDevice) -> None:
        for span in device.ports:
            for port in span:
                self._readers[port] = partial(device.io_read, port)
                self._writers[port] = partial(device.io_write, port)
        for port in device.wide_ports:
            self._wide[port] = device

    def _map_page(self, index: int) -> None:
        # bound methods of the latch file (never rebound), not lambdas: no Python frame per access
        self._readers[PAGE_BASE + index] = partial(self.pages.__getitem__, index)
        self._writers[PAGE_BASE + index] = partial(self.pages.__setitem__, index)

    def _map(self, port: int, ctl: Controller, index: int) -> None:
        if index < 8:
            self._readers[port] = partial(ctl.read_channel, index)

            def write_channel(value: int) -> None:
                ctl.write_channel(index, value)
                self._idle = False

            # Where an address or count cannot change who requests (the 8237: §6's service
            # condition has neither), such a write keeps "nothing can be serviced" as it was:
            # half of a channel programming's writes, each an arbitration less.
            self._writers[port] = partial(ctl.write_channel, index) if not ctl.COUNT_IN_SERVICE else write_channel
        else:
            self._readers[port] = lambda: ctl.read_control(index, self._request_lines(ctl))

            def write_control(value: int) -> None:
                ctl.write_control(index, value)
                self._idle = False

            def write_mask(value: int) -> None:
                ctl.write_control(index, value)
                if not value & MASK_SET:
                    self._idle = False

            def write_mode(value: int) -> None:
                bit = 1 << (value & 3)
                ctl.write_control(index, value)
                if not ctl.mask & bit or ctl.sw_request & bit:
                    self._idle = False

            # Clearing the flip-flop changes nothing the arbiters look at, in either model. Nor
            # can setting a mask bit start a service (§6: a mask only ever refuses one; the
            # cascade closes with channel 4's), nor a mode written to a masked channel without
            # a software request (the one request a mask does not refuse, §2.6): the writes
            # that open a programming sequence keep "nothing can be serviced" as it was.
            match index:
                case R.CLEAR_FF:
                    self._writers[port] = partial(ctl.write_control, index)
                case R.SINGLE_MASK:
                    self._writers[port] = write_mask
                case R.MODE:
                    self._writers[port] = write_mode
                case _:
                    self._writers[port] = write_control

    def decodes(self, port: int) -> bool:
        return port in self._readers

    # --- CPU side ------------------------------------------------------------------------
    def io_read(self, port: int, width: int = 8) -> int:
        """One CPU ``in``. A 16-bit access to 8-bit registers is split by the bus, low first."""
        if width == 16:
            if self._wide and port in self._wide:  # a card that asserts IOCS16#: one word cycle
                self.advance(self.timing.port_ns)
                return self._wide[port].io_read(port, 16)
            if not self._splits_word(port, self._readers):
                return self.io_read(port) | (FLOAT << 8)
            return self.io_read(port) | (self.io_read(port + 1) << 8)
        if self._idle and not self._timer_heap:  # advance()'s common case, inlined
            self.now_ns += self.timing.port_ns
        else:
            self.advance(self.timing.port_ns)
        reader = self._readers.get(port)
        if reader is None:
            self._undecoded(port, write=False)
            return FLOAT
        return reader()

    def io_write(self, port: int, value: int, width: int = 8) -> None:
        if width == 16:
            if self._wide and port in self._wide:
                self.advance(self.timing.port_ns)
                self._wide[port].io_write(port, value, 16)
                return
            self.io_write(port, value & 0xFF)
            if self._splits_word(port, self._writers):  # see io_read: else the high byte is lost
                self.io_write(port + 1, value >> 8)
            return
        if self._idle and not self._timer_heap:  # advance()'s common case, inlined
            self.now_ns += self.timing.port_ns
        else:
            self.advance(self.timing.port_ns)
        writer = self._writers.get(port)
        if writer is None:
            self._undecoded(port, write=True)
            return
        writer(value)

    def _splits_word(self, port: int, decoded: Mapping[int, Callable[..., object]]) -> bool:
        """Does a 16-bit access at ``port`` reach ``port + 1`` as a second byte cycle? On the
        ISA bus always: the AT's 8-bit registers get the low byte, then the high byte."""
        return True

    def _undecoded(self, port: int, *, write: bool) -> None:
        if self.strict:
            raise UndecodedPortError(port, write)
        self._warn("undecoded_port", port, write=write, note="reads float to 0xFF, writes are lost")

    def _warn(self, event: str, key: int, **kw: object) -> None:
        if (event, key) not in self._warned:
            self._warned.add((event, key))
            log.warning(event, port=f"0x{key:04X}" if event == "undecoded_port" else key, **kw)

    def _check_mem(self, addr: int, length: int) -> None:
        if addr < 0 or addr + length > len(self.memory):
            raise MemoryRangeError(addr, length, len(self.memory), "the simulated memory")

    def mem_read(self, addr: int, length: int) -> bytes:
        self._check_mem(addr, length)
        return bytes(memoryview(self.memory)[addr : addr + length])  # one copy, not a slice and a copy

    def mem_write(self, addr: int, data: bytes) -> None:
        self._check_mem(addr, len(data))
        self.memory[addr : addr + len(data)] = data

    def mem_fill(self, addr: int, length: int, value: int) -> None:
        self._check_mem(addr, length)
        self.memory[addr : addr + length] = bytes([value]) * length

    # --- devices ------------------------------------------------------------------------
    def attach(self, channel: int, device: Device) -> None:
        """Connect ``device`` to ``channel``'s DREQ/DACK, replacing any device already there."""
        if type(channel) is not int or channel not in range(8):
            raise DeviceError(f"channel {channel!r}: devices attach to channels 0-3 and 5-7")
        if channel == CASCADE_CHANNEL:
            raise DeviceError("channel 4 is the cascade input from DMA1; no device can use it")
        if not isinstance(device, Device):
            raise DeviceError(f"{device!r} is not a hil.sim.devices.Device")
        held = self.devices.get(channel)
        if isinstance(held, DmaPort) and held is not device:
            raise DeviceError(f"channel {channel} belongs to {held.owner.name}; unplug it first")
        self.detach(channel)
        self.devices[channel] = device
        if type(device).dreq is not Device.dreq:  # its level may change without telling the listener
            self._live_lines = True
        device._bind(lambda: self._dreq_changed(channel))
        self._dreq_changed(channel)

    def detach(self, channel: int) -> Device | None:
        device = self.devices.pop(channel, None)
        if device is not None:
            device._bind(None)
            self._dreq_changed(channel)
        return device

    def _dreq_changed(self, channel: int) -> None:
        self._idle = False
        device = self.devices.get(channel)
        level = bool(device and device.dreq)
        self._lines = self._lines | 1 << channel if level else self._lines & ~(1 << channel)
        self._ctl(channel).dreq_edge(channel & 3, level)

    # --- ISA devices and IRQ lines ---------------------------------------------------------
    def plug(self, device: IsaDevice) -> IsaDevice:
        """Map ``device``'s ports, IRQ lines and DMA channels; refuses a port another owner
        decodes, or a channel another device holds, naming both."""
        if not isinstance(device, IsaDevice):
            raise DeviceError(f"{device!r} is not a hil.sim.isa.IsaDevice")
        if device.machine is not None:
            raise DeviceError(f"{device.name} is already plugged")
        for span in device.ports:
            for port in span:
                if port in self._readers:
                    owner = next((d.name for d in self.isa_devices if any(port in p for p in d.ports)), None)
                    raise DeviceError(
                        f"{device.name}: port 0x{port:04X} (in {span}) is already decoded by "
                        f"{owner or 'the motherboard (DMA, page or interrupt controller)'}"
                    )
        for port in device.wide_ports:
            if not any(port in span for span in device.ports):
                raise DeviceError(f"{device.name}: 16-bit port 0x{port:04X} is not one of its ports")
        for channel in device.dma_channels:
            if channel in self.devices:
                raise DeviceError(f"{device.name}: DMA channel {channel} already has {self.devices[channel]!r}")
            if type(channel) is not int or channel not in range(8) or channel == CASCADE_CHANNEL:
                raise DeviceError(f"{device.name}: channel {channel!r}: devices attach to channels 0-3 and 5-7")
        device.machine = self
        device.irq_lines = {n: IrqLine(self.irq_bus, n) for n in device.irqs}
        device.dma_ports = {}
        for channel in device.dma_channels:
            port_dev = (IsolatedDmaPort if device.dma_isolated else DmaPort)(device, channel)
            device.dma_ports[channel] = port_dev
            self.attach(channel, port_dev)
        self.isa_devices.append(device)
        self._map_device(device)
        device.plugged()
        return device

    def unplug(self, device: IsaDevice) -> None:
        """Remove ``device``: its ports float again, its lines drop, its channels are free."""
        if device not in self.isa_devices:
            raise DeviceError(f"{device.name} is not plugged into this machine")
        for line in device.irq_lines.values():
            line.lower()
        for channel in device.dma_ports:
            self.detach(channel)
        self.isa_devices.remove(device)
        for span in device.ports:
            for port in span:
                self._readers.pop(port, None)
                self._writers.pop(port, None)
        for port in device.wide_ports:
            self._wide.pop(port, None)
        device.machine = None
        device.irq_lines, device.dma_ports = {}, {}

    def irq_line(self, n: int) -> IrqLine:
        """A new driver on ISA IRQ ``n`` (for a device outside :class:`IsaDevice`, or a test)."""
        return IrqLine(self.irq_bus, n)

    def set_irq(self, n: int, level: bool) -> None:
        """Drive ISA IRQ ``n`` from the machine's own driver of that line."""
        wire = isa_line(n)
        line = self._own_lines.get(wire)
        if line is None:
            line = self._own_lines[wire] = IrqLine(self.irq_bus, wire)
        line.set(level)

    def irq_level(self, n: int) -> bool:
        """The level of ISA IRQ ``n`` (the wire, whoever drives it); IRQ 2 reads IRQ 9."""
        return self.irq_bus.level(n)

    def irq_count(self, n: int) -> int:
        """Rising edges of ISA IRQ ``n`` since the machine was built or reset."""
        return self.irq_bus.count(n)

    def wait_irq(self, n: int, level: bool = True, timeout_ns: int = 1_000_000_000) -> bool:
        """Let virtual time pass until IRQ ``n`` is at ``level``; False after ``timeout_ns``.

        With DMA idle the clock jumps from timer to timer; while DMA runs it advances by at
        most :attr:`wait_slice_ns` between looks, so the return is that close to the edge."""
        if self.irq_bus.level(n) == level:
            return True
        deadline = self.now_ns + timeout_ns
        while self.now_ns < deadline:
            if self.idle_dma:
                nxt = self.timers.next_ns()
                step = deadline - self.now_ns if nxt is None or nxt > deadline else max(0, nxt - self.now_ns)
            else:
                step = min(deadline - self.now_ns, self.wait_slice_ns)
            self.advance(step)
            if self.irq_bus.level(n) == level:
                return True
        return False

    def next_event_ns(self) -> int | None:
        """Virtual ns until something can happen without a CPU access: 0 while DMA can be
        serviced, the delay to the earliest timer, None when nothing is pending."""
        if not self.idle_dma:
            return 0
        nxt = self.timers.next_ns()
        return None if nxt is None else max(0, nxt - self.now_ns)

    # --- wiring -------------------------------------------------------------------------
    def _ctl(self, channel: int) -> Controller:
        return self.dma2 if channel >= 4 else self.dma1

    def page_of(self, channel: int) -> int:
        return self.pages[PAGE_PORT[channel] - PAGE_BASE]

    def _dreq_bits(self, first: int) -> int:
        """The DREQ lines of channels ``first``..``first + 3``, as bits 0-3."""
        if not self._live_lines:
            return self._lines >> first & 0x0F
        bits = 0
        for channel, device in self.devices.items():  # the few attached, not four look-ups
            if first <= channel < first + 4 and device.dreq:
                bits |= 1 << (channel - first)
        return bits

    def _dma1_winner(self) -> int | None:
        d1 = self.dma1
        if not d1.enabled:
            return None
        dreq = self._dreq_bits(0)
        for local in d1.priority_order():
            if d1.wants_service(local, dreq):
                return local
        return None

    def _cascade_open(self) -> bool:
        """§3.6: masking channel 4, or disabling DMA2, stops DMA1 (ch4 must be in cascade)."""
        d2 = self.dma2
        return d2.enabled and not d2.mask & 1 and d2.channels[0].mode >> 6 == _CASCADE  # select(0), no enum

    def _request_lines(self, ctl: Controller) -> int:
        if ctl is self.dma1:
            return ctl.request_lines(self._dreq_bits(0))
        hrq1 = 1 if self._dma1_winner() is not None else 0  # DMA1's HRQ is DMA2's DREQ0
        return ctl.request_lines(self._dreq_bits(4) | hrq1)

    def requesters(self) -> list[int]:
        """Channels that would be serviced, in the order the arbiters would grant them: DMA2
        in its priority order, with DMA1's requesters in its own order in DMA2 channel 0's
        place while the cascade is open (§3.6). It runs after every controller write, so each
        controller answers once for its four channels (:meth:`Controller.service_mask`) and
        nobody requesting, the common case, costs no ordering at all."""
        d2 = self.dma2
        if not d2.enabled:
            return []
        lines = self._lines if not self._live_lines else self._dreq_bits(0) | self._dreq_bits(4) << 4
        want2 = d2.service_mask(lines >> 4 & 0x0F) & 0x0E  # channel 4's place is DMA1's
        first: list[int] = []
        if self._cascade_open():
            d1 = self.dma1
            if d1.enabled and (want1 := d1.service_mask(lines & 0x0F)):
                first = [c for c in d1.priority_order() if want1 >> c & 1]
        if not want2:
            return first
        if not first and not want2 & (want2 - 1):  # one requester: no order to decide
            return [3 + want2.bit_length()]
        out: list[int] = []
        for local in d2.priority_order():
            if local == 0:
                out += first
            elif want2 >> local & 1:
                out.append(4 + local)
        return out

    # --- time ---------------------------------------------------------------------------
    def advance(self, ns: int) -> None:
        """Let ``ns`` of virtual time pass, servicing DMA requests as the arbiters grant them
        and firing device timers in time order between grants (a timer due while a burst holds
        the bus fires when the burst ends). Timers due exactly at the end fire too."""
        deadline = self.now_ns + ns
        if self._timer_heap:
            self._advance_timed(deadline)
        elif self._idle:  # the common case of a port access: nothing to service
            self.now_ns = deadline
        else:
            self._advance_dma(deadline)
            if self._timer_heap:  # a DMA cycle scheduled a device event before the deadline
                self._advance_timed(deadline)

    def _advance_timed(self, deadline: int) -> None:
        timers = self.timers
        while True:
            when = timers.next_ns()
            if when is None or when > deadline:
                self._advance_dma(deadline)
                if self.now_ns < deadline or ((when := timers.next_ns()) is not None and when <= deadline):
                    continue  # stopped for a timer a DMA cycle scheduled (or cancelled) on the way
                return
            if when > self.now_ns:
                self._advance_dma(when)
            self._fire_due()

    def _fire_due(self) -> None:
        """Fire every timer due by now, in (time, scheduling order); a callback may schedule more."""
        while (timer := self.timers.pop_due(self.now_ns)) is not None:
            timer.callback(timer.when_ns)
            if self.tracer is not None:
                self.tracer.fired()

    def _advance_dma(self, deadline: int) -> None:
        """DMA service up to ``deadline``; returns early when a DMA cycle schedules a timer due
        by then, so the caller fires it in order."""
        if self._idle:
            self.now_ns = max(self.now_ns, deadline)
            return
        heap = self._timer_heap
        while self.now_ns < deadline:
            waiting = self.requesters()
            if not waiting:
                self._idle = True
                self.now_ns = deadline
                return
            self.now_ns += self._service(waiting[0], deadline - self.now_ns, alone=len(waiting) == 1)
            if heap and heap[0].when_ns <= deadline:
                return

    def run_until_idle(self, limit_ns: int = 10_000_000_000) -> int:
        """Service requests until none is left; return the virtual ns that took.

        Raises :class:`SettleTimeout` when activity goes on past ``limit_ns`` (an autoinit
        channel fed by a device that never drops DREQ, for instance).

        Idle means no channel can be serviced and no *busy* timer is pending
        (:mod:`hil.sim.timers`): the clock runs on through busy timers due within the limit, since
        what a script settles for (a seek, then the transfer) may follow them; a busy timer due
        beyond the limit is activity that goes on past it. Background timers (``busy=False``)
        fire on the way but never keep the machine busy.
        """
        start = self.now_ns
        timers = self.timers
        while True:
            while not self._idle:
                waiting = self.requesters()
                if not waiting:
                    self._idle = True
                    break
                elapsed = self.now_ns - start
                if elapsed >= limit_ns:
                    raise SettleTimeout(
                        f"DMA still active after {limit_ns / 1e9:g} s of virtual time on channel(s) "
                        f"{', '.join(map(str, waiting))}: an autoinit channel, or a bus master on a cascade "
                        f"channel, whose device never drops DREQ does not settle; use delay instead of settle"
                    )
                budget = limit_ns - elapsed  # a bus master with no cycles of its own holds the bus this long
                if timers.heap and (nxt := timers.next_ns()) is not None:
                    if nxt <= self.now_ns:
                        self._fire_due()
                        continue
                    budget = min(budget, nxt - self.now_ns)
                self.now_ns += self._service(waiting[0], budget, alone=len(waiting) == 1)
            busy = timers.next_busy_ns()
            if busy is None:
                break
            if busy - start > limit_ns:
                pending = next(t for t in timers.pending() if t.busy)
                raise SettleTimeout(
                    f"device event {pending.name or pending.callback!r} still pending "
                    f"{(busy - self.now_ns) / 1e9:g} s ahead, beyond the {limit_ns / 1e9:g} s of virtual "
                    f"time settle waits: a device that keeps scheduling work does not settle; "
                    f"use delay instead of settle"
                )
            self.advance(max(0, busy - self.now_ns))
        return self.now_ns - start

    @property
    def idle_dma(self) -> bool:
        """No channel can be serviced (timers aside)."""
        if not self._idle and not self.requesters():
            self._idle = True
        return self._idle

    @property
    def idle(self) -> bool:
        """Nothing can change without a CPU access: no DMA to service and no timer pending."""
        return self.idle_dma and self.timers.next_ns() is None

    # --- transfers ----------------------------------------------------------------------
    def _unit_ns(self, ctl: Controller) -> int:
        t = self.timing
        clocks = t.compressed_clocks if ctl.command & _COMPRESSED else t.cycle_clocks
        return clocks * t.clock_ns

    def _service(self, channel: int, budget_ns: int, *, alone: bool) -> int:
        """Grant the bus to ``channel`` once; return the virtual ns the grant took."""
        ctl, local = self.dma2 if channel >= 4 else self.dma1, channel & 3  # self._ctl(channel)
        if channel == 0 and ctl.mem_to_mem() and ctl.software_started(0):
            cost = self._mem_to_mem()
            if self.tracer is not None:
                self.tracer.granted(0, cost, True)
            return cost
        device = self.devices.get(channel)
        width = 16 if channel >= 4 else 8
        cost, tc = self._grant(ctl, channel, device, width, budget_ns, alone=alone)
        ctl.served(local)
        if channel < 4:
            self.dma2.served(0)
        if tc:
            ctl.terminal_count(local)
            if device is not None and self._dack_seen(ctl):
                device.terminal_count(channel)
        if self.tracer is not None:
            self.tracer.granted(channel, cost, tc)
        return cost

    def _grant(
        self, ctl: Controller, channel: int, device: Device | None, width: int, budget_ns: int, *, alone: bool
    ) -> tuple[int, bool]:
        """Run one bus grant as the channel's mode select decides (docs/reference/8237.md §3.5);
        return (virtual ns it took, whether it ended at terminal count).

        A grant is atomic in virtual time: the CPU's next port access, and every other channel,
        come after it. Block and demand grants run to their end even past ``budget_ns`` (the
        CPU is in HOLD until they give the bus back, so its access happens afterwards, as on the
        AT); a single-mode grant is one transfer, merged with the next ones only where that is
        indistinguishable, and within the budget.
        """
        local = channel & 3
        left = ctl.units_to_tc(local)
        t = self.timing
        acquire = t.acquire_clocks * t.clock_ns
        unit = self._unit_ns(ctl)
        match ctl.channels[local].mode >> 6:  # ctl.select(local), without making the enum member
            case Sel.BLOCK:  # §3.5: runs to TC once started, DREQ or not
                return acquire + left * unit, self._move(ctl, channel, device, left, width)
            case Sel.DEMAND:  # §3.5: holds the bus while DREQ stays active, up to TC
                moved, tc = 0, False
                while not tc:
                    units = max(1, self._burst(ctl, channel, device, width, left - moved))
                    tc = self._move(ctl, channel, device, units, width)
                    moved += units
                    if not self._line_active(ctl, channel):
                        break
                return acquire + moved * unit, tc
            case Sel.CASCADE:  # §3.5: DACK to the bus master while its DREQ is active
                return self._cascade(ctl, channel, device, budget_ns), False
        # SINGLE (§3.5): one transfer per grant, then the arbiters decide again. Consecutive
        # grants of a lone requester are merged into one slice only when nothing could have
        # decided otherwise: no other request pending, and a device whose callbacks raise no
        # other line (Device.isolated), so no request can appear inside the slice.
        units = 1
        if alone and not ctl.software_started(local) and (device is None or device.isolated or not self._dack_seen(ctl)):
            fits = max(1, budget_ns // (acquire + unit))
            units = max(1, min(fits, self._burst(ctl, channel, device, width, left)))
        if units == 1:
            return acquire + unit, self._move(ctl, channel, device, 1, width)
        others = self._other_lines(channel)
        tc = self._move(ctl, channel, device, units, width)
        if self._other_lines(channel) != others:
            raise DeviceError(
                f"channel {channel}: {device!r} changed another channel's DREQ during a single-mode "
                f"slice but declares itself isolated; set isolated = False on its class"
            )
        return units * (acquire + unit), tc

    def _other_lines(self, channel: int) -> int:
        """Every device's DREQ but ``channel``'s, as one bit set (for the isolation check)."""
        return (self._dreq_bits(0) | self._dreq_bits(4) << 4) & ~(1 << channel)

    def _line_active(self, ctl: Controller, channel: int) -> bool:
        """Is ``channel``'s DREQ active now, after the sense polarity (command bit 6)?"""
        device = self.devices.get(channel)
        return bool(device is not None and device.dreq) != bool(ctl.command & _DREQ_ACTIVE_LOW)

    def _cascade(self, ctl: Controller, channel: int, device: Device | None, budget_ns: int) -> int:
        """The bus master behind a cascade channel holds the bus while its DREQ stays active.

        The master's own cycles are its business (:meth:`Device.master_cycles`); the 8237 drives
        no address and moves no count. A master that never drops DREQ (or a line held active by
        the sense polarity with no card) holds the bus for the rest of the caller's budget: in
        virtual time the caller's next access is then due, where a real CPU would stay in HOLD.
        """
        held = 0
        while True:
            if device is not None and self._dack_seen(ctl):
                held += max(1, device.master_cycles(channel, self.memory, max(0, budget_ns - held)))
            else:  # no card sees the DACK: nothing ends the hold but DREQ, which nothing drops
                held = max(held, budget_ns, 1)
            if not self._line_active(ctl, channel) or held >= budget_ns:
                return held

    def _burst(self, ctl: Controller, channel: int, device: Device | None, width: int, limit: int) -> int:
        """Units the request stays active for, given the DREQ sense polarity."""
        active_low = bool(ctl.command & _DREQ_ACTIVE_LOW)
        if device is None:
            return limit if active_low else 0
        if active_low:
            return 1  # the device line is low now; re-check after every unit
        return device.burst_units(channel, width, limit)

    def _dack_seen(self, ctl: Controller) -> bool:
        """AT cards expect DACK active low; with the sense inverted they never see their DACK."""
        return not ctl.command & _DACK_ACTIVE_HIGH

    def _direction(self, ctl: Controller, local: int, device: Device | None) -> Direction | None:
        """The memory cycle the transfer type selects (§2.5); verify and type 11 move nothing."""
        match ctl.channels[local].mode >> 2 & 3:  # ctl.transfer_type(local), as plain ints
            case Xfer.WRITE:
                return _TO_MEMORY
            case Xfer.READ:
                return _FROM_MEMORY
        return None

    def _move(self, ctl: Controller, channel: int, device: Device | None, units: int, width: int) -> bool:
        local = channel & 3
        page = self.pages[PAGE_PORT[channel] - PAGE_BASE]  # self.page_of(channel)
        direction = self._direction(ctl, local, device)
        dev = device if device is not None and self._dack_seen(ctl) else None
        size = width // 8
        moved = 0
        tc = False
        while moved < units and not tc:
            phys, step, before_wrap = ctl.next_unit(local, page)
            k = min(units - moved, before_wrap)
            if direction is _TO_MEMORY:
                data = dev.supply_many(channel, k, width) if dev is not None else bytes([FLOAT]) * (k * size)
                self._dma_store(phys, step, data, size)
            elif direction is _FROM_MEMORY:
                data = self._dma_load(phys, step, k, size)
                if dev is not None:
                    dev.accept_many(channel, data, width)
            elif dev is not None:  # verify: DACK cycles without strobes (§2.5)
                dev.verify_cycles(channel, k, width)
            if self.tracer is not None:
                self.tracer.moved(channel, phys, step, k, size, None if direction is None else data, direction)
            tc = ctl.advance(local, k)
            moved += k
        return tc

    def _span(self, phys: int, step: int, k: int, size: int) -> tuple[int, int]:
        low = phys if step > 0 else phys - (k - 1) * size
        return low, low + k * size

    def _dma_store(self, phys: int, step: int, data: bytes | memoryview, size: int) -> None:
        if step < 0:
            data = _reverse_units(data, size)
        low, high = self._span(phys, step, len(data) // size, size)
        mem = self.memory
        if low < 0 or high > len(mem):
            self._warn("dma_beyond_memory", low, note="cycles beyond the simulated memory are lost")
            lo, hi = max(low, 0), min(high, len(mem))
            if lo < hi:
                mem[lo:hi] = data[lo - low : hi - low]
            return
        mem[low:high] = data

    def _dma_load(self, phys: int, step: int, k: int, size: int) -> bytes:
        low, high = self._span(phys, step, k, size)
        mem = self.memory
        if low < 0 or high > len(mem):
            self._warn("dma_beyond_memory", low, note="reads beyond the simulated memory float to 0xFF")
            buf = bytearray([FLOAT]) * (high - low)
            lo, hi = max(low, 0), min(high, len(mem))
            if lo < hi:
                buf[lo - low : hi - low] = mem[lo:hi]
            data = bytes(buf)
        else:
            data = bytes(memoryview(mem)[low:high])  # one copy, not a slice and a copy
        return _reverse_units(data, size) if step < 0 else data

    def _mem_to_mem(self) -> int:
        """§3.8: channel 0 reads into the temporary register, channel 1 writes it; the copy
        ends at channel 1's TC, which sets TC for both. Each channel uses its own page register
        (chip-level semantics; MAME's AT glue has no page selected without DACK)."""
        d1 = self.dma1
        hold = bool(d1.command & _CH0_HOLD)
        left = d1.units_to_tc(1)
        p0, p1 = self.page_of(0), self.page_of(1)
        mem = self.memory
        done = 0
        while done < left:
            src, sstep, swrap = d1.next_unit(0, p0)
            dst, dstep, dwrap = d1.next_unit(1, p1)
            k = min(left - done, dwrap) if hold else min(left - done, dwrap, swrap)
            if hold:
                byte = self._dma_load(src, 1, 1, 1)
                self._dma_store(dst, dstep, byte * k, 1)
            elif sstep == dstep == 1 and not (dst > src and dst < src + k):
                self._dma_store(dst, 1, self._dma_load(src, 1, k, 1), 1)
            else:  # overlapping forward copies and decrementing sides: byte by byte, as the chip
                for i in range(k):
                    byte = self._dma_load(src + i * sstep, 1, 1, 1)
                    self._dma_store(dst + i * dstep, 1, byte, 1)
            last = dst + (k - 1) * dstep
            d1.temp = mem[last] if 0 <= last < len(mem) else FLOAT
            d1.advance(0, k, hold_address=hold)
            d1.advance(1, k)
            done += k
        d1.terminal_count(1)
        d1.terminal_count(0)
        d1.served(0)
        self.dma2.served(0)
        t = self.timing
        return (t.acquire_clocks + left * t.m2m_clocks) * t.clock_ns

    # --- set-up and inspection ------------------------------------------------------------
    def bios_post(self) -> None:
        """What an AT BIOS leaves behind: channel 4 in cascade mode and unmasked."""
        self.dma2.write_control(Reg.MODE, Mode(select=ModeSelect.CASCADE).encode(0))
        self.dma2.write_control(Reg.SINGLE_MASK, 0)  # unmask local channel 0 (= channel 4)
        self._idle = False

    def reset(self, *, post: bool | None = None) -> None:
        """Power-on reset of both controllers (registers as emulators initialise them: 0)."""
        self.dma1, self.dma2 = self.controller(Ctrl.DMA1), self.controller(Ctrl.DMA2)
        self._warned.clear()
        self._readers.clear()
        self._writers.clear()
        self._build_decoder()
        self.timers.clear()  # RESET DRV: no device event survives a reset
        self.pic.reset()
        for device in self.isa_devices:
            device.reset()
        self.irq_bus.clear_counts()
        for channel in self.devices:
            self._dreq_changed(channel)
        if post if post is not None else self.post_by_default:
            self.bios_post()
        self._idle = False

    def channel(self, channel: int) -> ChannelState:
        ctl, local = self._ctl(channel), channel & 3
        regs = ctl.channels[local]
        cur_addr, cur_count = ctl.current(local)
        page = self.page_of(channel)
        return ChannelState(
            channel=channel,
            mode=Mode.decode(regs.mode),
            masked=bool(ctl.mask & (1 << local)),
            base_addr=regs.base_addr,
            cur_addr=cur_addr,
            base_count=regs.base_count,
            cur_count=cur_count,
            page=page,
            tc=bool(ctl.tc & (1 << local)),
            request=bool(ctl.requests() & (1 << local)),
            phys=ctl.next_unit(local, page)[0],
        )


class QemuMachine(Machine):
    """QEMU 7.2's ``-machine pc`` DMA subsystem (``qemu``): two i8257, where QEMU wires them
    differently from the AT (docs/reference/8237.md §5, docs/reference/qemu-qtest.md §8)."""

    profile = "qemu"
    controller = QemuI8257
    pic_pair = QemuPicPair
    mirror_ports = ()  #: 0x10-0x1F are not decoded
    page_ports = tuple(sorted(PAGE_CHANNEL))  #: the eight channel page registers only
    #: QEMU driven by a halt firmware has run no BIOS: channel 4 stays as reset left it
    post_by_default = False

    def __init__(
        self,
        *,
        mem_size: int = 16 << 20,
        strict: bool = False,
        post: bool | None = None,
        timing: Timing | None = None,
    ) -> None:
        self._handlers: list[tuple[int, DmaPort]] = []  #: (channel, port) of transfer-handler devices
        super().__init__(mem_size=mem_size, strict=strict, post=post, timing=timing)

    def _splits_word(self, port: int, decoded: Mapping[int, Callable[..., object]]) -> bool:
        """QEMU's memory core bounds an access by the alignment of its address: at an odd port a
        word access becomes two byte accesses, each dispatched to the owner of its own port
        (`inw 0xBF` reads 0xBF, which nothing decodes, then the channel-4 address at 0xC0). At an
        even port the whole access goes to the owner of that port: the byte-wide DMA regions
        split it inside themselves (port, then port + 1), and when nothing of ours owns it the
        whole access floats (`inw 0x80` → 0xFFFF; `inw 0x86` does not reach 0x87). Found by the
        bit-exact check against QEMU; docs/reference/qemu-qtest.md §3.5 describes only the even case."""
        return bool(port & 1) or port in decoded

    def requesters(self) -> list[int]:
        """QEMU's DMA_run: controller 0 then 1, channel 0..3, no cascade gating, no priority;
        only channels with a device attached (a software request alone moves nothing). Devices
        with a transfer handler are not among them: they run inside port writes
        (:meth:`io_write`)."""
        out = []
        for ctl, first in ((self.dma1, 0), (self.dma2, 4)):
            dreq = self._dreq_bits(first)
            out += [first + c for c in range(4)
                    if first + c in self.devices and not _has_handler(self.devices[first + c])
                    and ctl.wants_service(c, dreq) and self.devices[first + c].ready(first + c)]
        return out

    def io_write(self, port: int, value: int, width: int = 8) -> None:
        """QEMU runs its DMA engine inside the port write that requests or unmasks a channel,
        and a device's own write that raises its request (``hold_DREQ``) runs it too: a device
        with a transfer handler has moved its data, raised its interrupt and entered its result
        phase before the ``outb`` returns (docs/reference/qemu-qtest.md §6.1, §6.3 'DREQ while
        masked')."""
        super().io_write(port, value, width)
        if width == 8 and self._handlers:
            self._run_handlers()

    def plug(self, device: IsaDevice) -> IsaDevice:
        super().plug(device)
        self._handlers = [(ch, p) for d in self.isa_devices if d.transfer_handler for ch, p in d.dma_ports.items()]
        return device

    def unplug(self, device: IsaDevice) -> None:
        super().unplug(device)
        self._handlers = [(ch, p) for d in self.isa_devices if d.transfer_handler for ch, p in d.dma_ports.items()]

    def _run_handlers(self) -> None:
        """QEMU's channel_run for each requested, unmasked handler channel: the handler gets
        (position, size in bytes), and what it returns becomes the position; TC (the status
        bit, nothing else: there is no TC line) when it equals the size."""
        for channel, port in self._handlers:
            ctl, local = self._ctl(channel), channel & 3
            if not isinstance(ctl, QemuI8257) or not ctl.requested(local):
                continue
            size = ctl.size_bytes(local)
            pos = port.owner.dma_handler(channel, ctl.channels[local].pos, size, _QemuWindow(self, channel))
            ctl.channels[local].pos = pos
            if pos == size:
                ctl.terminal_count(local)
            self._idle = False

    def _grant(
        self, ctl: Controller, channel: int, device: Device | None, width: int, budget_ns: int, *, alone: bool
    ) -> tuple[int, bool]:
        """No modes: QEMU's device handler moves as much as it likes while its request stays set
        (no bus arbitration either: docs/reference/qemu-qtest.md §8 'modes single / block / demand /
        cascade'). A handler that returns its position modulo the length (the SB16,
        docs/reference/qemu-qtest.md §7) restarts the channel at its base instead of reaching TC."""
        left = ctl.units_to_tc(channel & 3)
        if device is not None and device.dreq:
            units = max(1, device.burst_units(channel, width, left))
        else:
            units = left
        t = self.timing
        cost = t.acquire_clocks * t.clock_ns + units * self._unit_ns(ctl)
        tc = self._move(ctl, channel, device, units, width)
        if tc and device is not None and device.wraps_at_length(channel) and isinstance(ctl, QemuI8257):
            ctl.rewind(channel & 3)  # the handler returned position 0: base values again, no TC
            tc = False
        return cost, tc

    def _dack_seen(self, ctl: Controller) -> bool:
        return True  # no DACK sense: the command register is never consulted

    def _direction(self, ctl: Controller, local: int, device: Device | None) -> Direction | None:
        """QEMU ignores the direction bits, type 11 included: only verify is honoured and the
        device decides (docs/reference/qemu-qtest.md §8 'direction / transfer type')."""
        ttype = ctl.transfer_type(local)
        if ttype == TransferType.VERIFY:
            return None
        if device is not None and device.direction is not None:
            return device.direction
        return Direction.TO_MEMORY if ttype == TransferType.WRITE else Direction.FROM_MEMORY

    # QEMU's DMA_{read,write}_memory move a decrementing chunk *forward*, in the block ending
    # below the current address, and the read path then mirrors the chunk's first half from its
    # second (docs/reference/qemu-qtest.md §6.3 'Address decrement').
    def _dma_store(self, phys: int, step: int, data: bytes | memoryview, size: int) -> None:
        if step < 0:
            phys, step = self._span(phys, step, len(data) // size, size)[0], 1
        super()._dma_store(phys, step, data, size)

    def _dma_load(self, phys: int, step: int, k: int, size: int) -> bytes:
        if step > 0:
            return super()._dma_load(phys, step, k, size)
        data = super()._dma_load(self._span(phys, step, k, size)[0], 1, k, size)
        half = len(data) // 2
        return data[len(data) - half :][::-1] + data[half:]


def _has_handler(device: Device) -> bool:
    return isinstance(device, DmaPort) and device.owner.transfer_handler


class _QemuWindow:
    """QEMU's i8257 ``read_memory`` / ``write_memory`` for one channel (docs/reference/qemu-qtest.md
    §6.3): linear from ``page << 16 | start address`` plus the device's position, below the
    start address when decrementing (with the in-place half mirror of the buffer), and no memory
    access at all in verify mode."""

    def __init__(self, machine: QemuMachine, channel: int) -> None:
        self.m = machine
        ctl = machine._ctl(channel)
        assert isinstance(ctl, QemuI8257)  # QemuMachine's controllers
        self.ctl = ctl
        self.local = channel & 3
        self.base = (machine.page_of(channel) << 16) | self.ctl.channels[self.local].now_addr

    def _span(self, pos: int, length: int) -> tuple[int, bool]:
        mode = self.ctl.channels[self.local].mode
        if mode & 0x20:
            return self.base - pos - length, True
        return self.base + pos, False

    def _verify(self) -> bool:
        return self.ctl.transfer_type(self.local) == TransferType.VERIFY

    def read(self, pos: int, length: int) -> bytes | None:
        if self._verify():
            return None
        addr, down = self._span(pos, length)
        data = Machine._dma_load(self.m, addr, 1, length, 1)
        return _mirror(data) if down else data

    def write(self, pos: int, data: bytes) -> bytes:
        if self._verify():
            return data
        addr, down = self._span(pos, len(data))
        Machine._dma_store(self.m, addr, 1, data, 1)
        return _mirror(data) if down else data


def _mirror(data: bytes) -> bytes:
    """QEMU's 'reverse' of a decrementing chunk: the first half becomes the second half reversed."""
    half = len(data) // 2
    return data[len(data) - half :][::-1] + data[half:]


#: the machine of each simulator profile, by name
MACHINES: dict[str, type[Machine]] = {cls.profile: cls for cls in (Machine, QemuMachine)}
PROFILES = tuple(MACHINES)


def machine_for(
    profile: str = "intel",
    *,
    mem_size: int = 16 << 20,
    strict: bool = False,
    post: bool | None = None,
    timing: Timing | None = None,
) -> Machine:
    """The machine of ``profile`` (``intel`` or ``qemu``); the options are :class:`Machine`'s."""
    cls = MACHINES.get(profile)
    if cls is None:
        raise ValueError(f"unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")
    return cls(mem_size=mem_size, strict=strict, post=post, timing=timing)


def _reverse_units(data: bytes | memoryview, size: int) -> bytes:
    if size == 1:
        return bytes(data[::-1])  # a view reversed is not contiguous: one copy (of bytes: none more)
    view = memoryview(data)
    if len(data) % 2:
        return b"".join(bytes(view[i : i + 2]) for i in range(len(data) - 2, -1, -2))
    return memoryview(bytes(data)).cast("H")[::-1].tobytes()
