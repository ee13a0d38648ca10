"""Signals of the simulated machine for a waveform: what a logic analyser on the AT would show.

:class:`SignalTrace` turns what the machine does into value changes of named signals on the
virtual-time axis and hands each to a callback; it does no I/O (the VCD file is written by
:mod:`hil.waves.vcd`, outside the simulator). It is off unless attached: ``Machine.tracer`` is
None by default, and the machine calls a tracer only where one is set, after a bus grant, for
each chunk a grant moves and after a device timer fires; the ``sim:`` backend calls it after
each op of a program (:meth:`SignalTrace.op_done`) and after a settle.

What the signals show (docs/reference/8237.md §2-§3 for the pins; README.md "Waveforms"):

* per controller (scope ``dma1``, ``dma2``): ``hrq`` (hold request to the CPU, or for DMA1 to
  DMA2's channel 4), ``hlda`` (hold acknowledge), ``event`` ("TC ch2");
* per channel (``dma1.ch0`` ... ``dma2.ch7``): ``dreq`` (the device's request line as the device
  drives it), ``dack`` (the acknowledge during each transfer cycle), ``eop`` (the terminal-count
  pulse in the last cycle), ``tc`` (the status bit, until a status read clears it), ``mask``,
  ``addr`` and ``count`` (current address and count registers);
* ``bus``: ``address`` (24-bit physical address of each DMA cycle), ``data`` (the byte or word
  moved), ``memr`` / ``memw`` (the memory strobe of the cycle: memory to device, device to memory);
* ``pic``: ``irq0`` ... ``irq15``, the ISA interrupt lines;
* one scope per plugged device (``fdc``, ``sb16``, ``ecp``): its ``drq`` and ``irq`` outputs and
  ``event``, the commands the host wrote to it, decoded ("FDC READ C0 H0 R1").

Timing inside a grant: a grant is atomic in the model (hil.sim.machine), so its cycles are laid
out from its start and cost: HRQ, then HLDA and DACK after the acquisition clocks, the units
evenly over the rest, EOP in the last one; a single-mode run the model moves as one slice shows
one HRQ/HLDA/DACK pulse per unit. On the ``qemu`` profile, devices with a transfer handler (its
FDC, its SB16) move their data inside a port write, without cycles: the registers jump and TC is
set, with no DACK pulse and no data on the bus.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

from hil.ports import ModeSelect
from hil.records import dataclass
from hil.sim.devices import Direction

if TYPE_CHECKING:
    from hil.sim.machine import Machine


class Kind(enum.Enum):
    WIRE = "wire"  #: one bit
    VECTOR = "vector"  #: ``width`` bits, an integer
    TEXT = "string"  #: a decoded event


@dataclass(frozen=True)
class Signal:
    scope: tuple[str, ...]
    name: str
    kind: Kind
    width: int = 1

    @property
    def path(self) -> str:
        return ".".join((*self.scope, self.name))


Value = int | str
#: (time in virtual ns, signal index, value)
Emit = Callable[[int, int, Value], None]

TOP = "pc"
FDC_DATA, FDC_DOR, DOR_RESET_OFF = 0x3F5, 0x3F2, 0x04
DSP_WRITE = 0x22C
#: SB16 DSP commands and how many parameter bytes follow (docs/reference/devices.md §5)
DSP_PARAMS = {0x10: 1, 0x14: 2, 0x1C: 0, 0x40: 1, 0x41: 2, 0x42: 2, 0x48: 2, 0xD0: 0, 0xD1: 0, 0xD3: 0,
              0xD4: 0, 0xD5: 0, 0xD6: 0, 0xD9: 0, 0xDA: 0, 0xE1: 0,
              **{c: 3 for c in range(0xB0, 0xD0)}}
#: the FDC commands whose C, H, R the event names (both profiles' command names)
FDC_SHORT = {"READ DATA": "READ", "READ": "READ", "WRITE DATA": "WRITE", "WRITE": "WRITE", "VERIFY": "VERIFY"}


def _controller(channel: int) -> str:
    return "dma2" if channel >= 4 else "dma1"


class SignalTrace:
    """The signal list of one machine and the changes of each, in time order (see the module
    docstring). ``emit(t_ns, index, value)`` receives every change; ``signals[index]`` names it."""

    def __init__(self, machine: Machine, emit: Emit) -> None:
        self.m = machine
        self.emit = emit
        self.signals: list[Signal] = []
        self._index: dict[str, int] = {}
        self._values: list[Value | None] = []
        self._last_t = machine.now_ns
        self._chunks: list[tuple[int, int, int, int, bytes | memoryview | None, Direction | None]] = []
        self._clear: list[int] = []  #: event signals to blank at the next later time
        self._clear_t = 0
        self._fdc_cmd: list[int] = []
        self._dsp_cmd: list[int] = []
        for ctl in ("dma1", "dma2"):
            self._add((TOP, ctl), "hrq")
            self._add((TOP, ctl), "hlda")
            self._add((TOP, ctl), "event", Kind.TEXT)
            for ch in range(4) if ctl == "dma1" else range(4, 8):
                scope = (TOP, ctl, f"ch{ch}")
                for name in ("dreq", "dack", "eop", "tc", "mask"):
                    self._add(scope, name)
                self._add(scope, "addr", Kind.VECTOR, 16)
                self._add(scope, "count", Kind.VECTOR, 16)
        self._add((TOP, "bus"), "address", Kind.VECTOR, 24)
        self._add((TOP, "bus"), "data", Kind.VECTOR, 16)
        self._add((TOP, "bus"), "memr")
        self._add((TOP, "bus"), "memw")
        for n in range(16):
            self._add((TOP, "pic"), f"irq{n}")
        for dev in machine.isa_devices:
            for ch in dev.dma_channels:
                self._add((TOP, dev.name), f"drq{ch}")
            for n in dev.irqs:
                self._add((TOP, dev.name), f"irq{n}")
            self._add((TOP, dev.name), "event", Kind.TEXT)

    def _add(self, scope: tuple[str, ...], name: str, kind: Kind = Kind.WIRE, width: int = 1) -> None:
        sig = Signal(scope, name, kind, width if kind is not Kind.TEXT else 0)
        self._index[sig.path] = len(self.signals)
        self.signals.append(sig)
        self._values.append(None)

    def index(self, path: str) -> int:
        """The index of the signal ``pc.dma1.ch2.dreq`` (its dotted path)."""
        return self._index[path]

    # --- attach / detach ---------------------------------------------------------------------

    def attach(self) -> None:
        """Start tracing: the machine calls this trace from now on; every signal's value now."""
        self.m.tracer = self
        self.sample()

    def detach(self) -> None:
        if self.m.tracer is self:
            self.m.tracer = None
        self.sample()

    # --- changes --------------------------------------------------------------------------------

    def _set(self, t: int, path: str, value: Value) -> None:
        i = self._index[path]
        if self._values[i] == value:
            return
        if t < self._last_t:
            t = self._last_t  # never backwards: a change reported late is shown when it was seen
        self._last_t = t
        self._values[i] = value
        self.emit(t, i, value)

    def _event(self, t: int, path: str, text: str) -> None:
        i = self._index[path]
        if self._values[i] == text:  # the same event again: blank it first, one ns before
            self._set(max(self._last_t, t - 1), path, "")
        self._set(t, path, text)
        self._clear.append(i)
        self._clear_t = max(t, self._last_t)

    def _blank(self, t: int) -> None:
        if self._clear and t > self._clear_t:
            for i in self._clear:
                self._set(t, self.signals[i].path, "")
            self._clear = []

    def sample(self, t: int | None = None) -> None:
        """Every register and line as the machine has it now (or at ``t``, a grant's end)."""
        m = self.m
        t = m.now_ns if t is None else t
        self._blank(t)
        for ch in range(8):
            ctl = m.dma2 if ch >= 4 else m.dma1
            local = ch & 3
            scope = f"{TOP}.{_controller(ch)}.ch{ch}"
            device = m.devices.get(ch)
            self._set(t, f"{scope}.dreq", int(bool(device is not None and device.dreq)))
            self._set(t, f"{scope}.tc", ctl.tc >> local & 1)
            self._set(t, f"{scope}.mask", ctl.mask >> local & 1)
            addr, count = ctl.current(local)
            self._set(t, f"{scope}.addr", addr & 0xFFFF)
            self._set(t, f"{scope}.count", count & 0xFFFF)
        for n in range(16):
            self._set(t, f"{TOP}.pic.irq{n}", int(m.irq_bus.level(n)))
        for dev in m.isa_devices:
            for ch, port in dev.dma_ports.items():
                self._set(t, f"{TOP}.{dev.name}.drq{ch}", int(bool(port.dreq)))
            for n, line in dev.irq_lines.items():
                self._set(t, f"{TOP}.{dev.name}.irq{n}", int(line.level))

    # --- the machine's hooks --------------------------------------------------------------------

    def moved(self, channel: int, phys: int, step: int, units: int, size: int, data: bytes | memoryview | None,
              direction: Direction | None) -> None:
        """One chunk of a grant in progress (called by ``Machine._move``)."""
        self._chunks.append((phys, step, units, size, data, direction))

    def fired(self) -> None:
        """A device timer fired at ``now_ns`` (its DRQ or IRQ may have changed)."""
        self.sample()

    def granted(self, channel: int, cost_ns: int, tc: bool) -> None:
        """A bus grant to ``channel`` from ``now_ns`` for ``cost_ns`` ended (TC if ``tc``): lay
        its cycles out, then sample the registers at its end."""
        m = self.m
        t0 = m.now_ns
        chunks, self._chunks = self._chunks, []
        ctl_name = _controller(channel)
        scope = f"{TOP}.{ctl_name}.ch{channel}"
        ctl = m.dma2 if channel >= 4 else m.dma1
        timing = m.timing
        acquire = timing.acquire_clocks * timing.clock_ns
        units = sum(c[2] for c in chunks)
        single = units > 1 and ctl.select(channel & 3) == ModeSelect.SINGLE
        addr = self._values[self._index[f"{scope}.addr"]]
        count = self._values[self._index[f"{scope}.count"]]
        assert isinstance(addr, int) and isinstance(count, int)

        def hold(t: int, level: int) -> None:
            if channel < 4:
                self._set(t, f"{TOP}.dma1.hrq", level)
                self._set(t, f"{TOP}.dma2.ch4.dreq", level)
            self._set(t, f"{TOP}.dma2.hrq", level)

        def granted_(t: int, level: int) -> None:
            self._set(t, f"{TOP}.dma2.hlda", level)
            if channel < 4:
                self._set(t, f"{TOP}.dma2.ch4.dack", level)
                self._set(t, f"{TOP}.dma1.hlda", level)
            self._set(t, f"{scope}.dack", level)

        def release(t: int) -> None:
            granted_(t, 0)
            hold(t, 0)
            self._set(t, f"{TOP}.bus.memr", 0)
            self._set(t, f"{TOP}.bus.memw", 0)
            self._set(t, f"{scope}.eop", 0)

        if not units:  # a cascade master's tenure, a memory-to-memory copy: one acknowledge
            hold(t0, 1)
            granted_(t0 + min(acquire, cost_ns), 1)
            if tc:
                self._set(t0 + min(acquire, cost_ns), f"{scope}.eop", 1)
                self._event(t0 + min(acquire, cost_ns), f"{TOP}.{ctl_name}.event", f"TC ch{channel}")
            release(t0 + cost_ns)
            self.sample(t0 + cost_ns)
            return
        period = cost_ns // units if single else 0
        unit_ns = max(1, (cost_ns - acquire) // units) if not single else max(1, period - acquire)
        if not single:
            hold(t0, 1)
            granted_(t0 + acquire, 1)
        i = 0
        for phys, step, k, size, data, direction in chunks:
            for j in range(k):
                start = t0 + i * period if single else t0 + acquire + i * unit_ns
                cycle = start + acquire if single else start
                if single:
                    hold(start, 1)
                    granted_(cycle, 1)
                self._set(cycle, f"{TOP}.bus.address", (phys + j * step * size) & 0xFFFFFF)
                if data is not None:
                    self._set(cycle, f"{TOP}.bus.data", int.from_bytes(data[j * size:(j + 1) * size], "little"))
                self._set(cycle, f"{TOP}.bus.memw", int(direction is Direction.TO_MEMORY))
                self._set(cycle, f"{TOP}.bus.memr", int(direction is Direction.FROM_MEMORY))
                self._set(cycle, f"{scope}.addr", (addr + (i + 1) * (1 if step > 0 else -1)) & 0xFFFF)
                self._set(cycle, f"{scope}.count", (count - (i + 1)) & 0xFFFF)
                if tc and i == units - 1:
                    self._set(cycle, f"{scope}.eop", 1)
                    self._event(cycle, f"{TOP}.{ctl_name}.event", f"TC ch{channel}")
                if single:
                    release(start + period)
                i += 1
        release(t0 + cost_ns)
        self.sample(t0 + cost_ns)

    # --- the backend's hook: each op of a program ---------------------------------------------

    def op_done(self, port: int | None = None, value: int = 0, *, write: bool = False, width: int = 8) -> None:
        """An op of a program ran (called by the ``sim:`` backend), ``port`` the I/O port it
        accessed, if any: decode what it wrote to a device, then sample."""
        t = self.m.now_ns
        self._blank(t)
        if port is not None and width == 8:
            if write:
                self._device_write(t, port, value)
            elif port == FDC_DATA:
                self._fdc_cmd = []  # a result byte: whatever was collected was not a command
        self.sample(t)

    def _device(self, name: str) -> object | None:
        return next((d for d in self.m.isa_devices if d.name == name), None)

    def _device_write(self, t: int, port: int, value: int) -> None:
        if port == FDC_DOR and not value & DOR_RESET_OFF:
            self._fdc_cmd = []
        elif port == FDC_DATA and (fdc := self._device("fdc")) is not None:
            self._fdc_byte(t, fdc, value)
        elif port == DSP_WRITE and self._device("sb16") is not None:
            self._dsp_byte(t, value)

    def _fdc_byte(self, t: int, fdc: object, value: int) -> None:
        table = getattr(fdc, "COMMANDS", ())
        if not self._fdc_cmd:
            command = next((c for c in table if value & c.mask == c.value), None)
            if command is None:
                self._event(t, f"{TOP}.fdc.event", f"FDC INVALID 0x{value:02X}")
                return
        self._fdc_cmd.append(value)
        command = next(c for c in table if self._fdc_cmd[0] & c.mask == c.value)
        if len(self._fdc_cmd) < command.params + 1:
            return
        b, self._fdc_cmd = self._fdc_cmd, []
        short = FDC_SHORT.get(command.name)
        if short is not None:
            text = f"FDC {short} C{b[2]} H{b[3]} R{b[4]}"
        elif command.name == "SEEK":
            text = f"FDC SEEK C{b[2]}"
        else:
            text = f"FDC {command.name}"
        self._event(t, f"{TOP}.fdc.event", text)

    def _dsp_byte(self, t: int, value: int) -> None:
        if not self._dsp_cmd and value not in DSP_PARAMS:
            self._event(t, f"{TOP}.sb16.event", f"SB16 DSP 0x{value:02X}")
            return
        self._dsp_cmd.append(value)
        if len(self._dsp_cmd) < DSP_PARAMS[self._dsp_cmd[0]] + 1:
            return
        b, self._dsp_cmd = self._dsp_cmd, []
        self._event(t, f"{TOP}.sb16.event", "SB16 DSP " + " ".join(f"{x:02X}" for x in b))
