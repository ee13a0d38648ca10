"""``sim:`` backend: the in-process PC/AT model behind the common backend interface.

URL options: ``profile`` (``intel``, the default datasheet/chipset behaviour, or ``qemu``,
QEMU 7.2's i8257), ``mem`` (physical memory size: ``16M``, ``640K``, ``0x100000``), ``strict``
(``1``: accessing a port nothing decodes raises instead of floating), ``post`` (``bios``: channel
4 set to cascade and unmasked at reset, as an AT BIOS leaves it; ``none``: raw reset state; the
default is ``bios`` for ``intel`` and ``none`` for ``qemu``, matching QEMU under a halt firmware),
``sb16`` (``1``: plug a Sound Blaster 16 at 0x220 on DMA 1 and 5, IRQ 5, modelled per the profile:
:mod:`hil.sim.sb16`; capability ``sb16``).
``floppy`` (``generate``: a 1.44 MB disk where byte *i* of LBA *n* is ``(13n + i) & 0xFF``, as
``qemu:?floppy=generate``; or the path of a raw 1.44 MB / 720 KB image, read when the backend
opens and written back after each program that changed it): the profile's floppy controller
(:mod:`hil.sim.fdc`) at 0x3F0-0x3F7 on DMA 2 / IRQ 6, capability ``fdc``.
``ecp`` (``1``: an ECP parallel port at 0x378, or ``ecp=0x278`` / ``0x3BC``; DMA 3 and IRQ 7 unless
``ecp_dma=1|3`` / ``ecp_irq=5|7``; ``ecp_test_dma=1|0``, ``ecp_threshold``, and the stand-in
peripheral's ``ecp_rate``, ``ecp_stall``, ``ecp_starve``: :mod:`hil.sim.ecp`), capability ``ecp``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hil.backends import BackendURL
from hil.backends.base import Backend, Capabilities, Capability
from hil.errors import (
    BackendError,
    BackendOptionError,
    DeviceError,
    MemoryRangeError,
    UndecodedPortError,
)
from hil.ops import (
    ALL_OPS,
    Delay,
    DevAppend,
    DevAttach,
    DevDreq,
    DeviceState,
    DevState,
    In,
    IrqLines,
    IrqState,
    MemFill,
    MemRead,
    MemWrite,
    Op,
    Out,
    Poll,
    PowerReset,
    Result,
    Settle,
    WaitIrq,
    check_port,
    check_value,
    port_access,
    row_of,
)
from hil.ports import CASCADE_CHANNEL
from hil.sim.devices import Device, Sink, Source
from hil.sim.machine import PROFILES, Machine, Timing, machine_for

if TYPE_CHECKING:  # the device models and the tracer are imported when a URL asks for them
    from hil.sim.ecp import EcpConfig, EcpPort
    from hil.sim.fdc import FloppyController
    from hil.sim.isa import IsaDevice
    from hil.sim.trace import Emit, SignalTrace

#: the options that configure an ECP port (:func:`hil.sim.ecp.config_from_options` reads them)
ECP_OPTIONS = {
    "ecp": "0|1|0x378|0x278|0x3BC, plug an ECP parallel port (1: 0x378)",
    "ecp_dma": "1|3, the port's DMA channel (default 3)",
    "ecp_irq": "5|7, the port's IRQ (default 7)",
    "ecp_test_dma": "1|0, DMA in FIFO test mode (1: SMSC data sheets, 0: 86Box)",
    "ecp_threshold": "0-16, the FIFO threshold field (default 8: interrupt at 8 free / 8 full)",
    "ecp_rate": "bytes/s of the stand-in peripheral (default 2500000)",
    "ecp_stall": "0|1, the peripheral holds Busy (the FIFO never drains)",
    "ecp_starve": "N, the reverse source has N bytes, then runs dry",
}
OPTIONS = {
    "profile": "intel|qemu",
    "mem": "memory size such as 16M, 640K or 0x100000",
    "strict": "0|1, raise on undecoded ports",
    "post": "bios|none, BIOS channel-4 set-up at reset",
    "sb16": "0|1, plug a Sound Blaster 16 (220h, DMA 1/5, IRQ 5)",
    "floppy": "generate|PATH, drive A on the profile's floppy controller",
    **ECP_OPTIONS,
}
PROFILE_ALIASES = {"intel": "intel", "default": "intel", "datasheet": "intel", "qemu": "qemu"}
MIN_MEM, MAX_MEM = 1 << 16, 1 << 30


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(0x[0-9a-fA-F]+|\d+)\s*([kKmMgG]?)(?:i?[bB])?\s*", text)
    if not m:
        raise ValueError(text)
    value = int(m.group(1), 0)
    return value << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]



def from_url(url: BackendURL) -> SimBackend:
    opts = url.take(OPTIONS)
    name = opts.get("profile", "intel").lower()
    if name not in PROFILE_ALIASES:
        raise BackendOptionError(url.raw, f"unknown profile {name!r}; profiles: {', '.join(PROFILES)}")
    mem = 16 << 20
    if "mem" in opts:
        try:
            mem = parse_size(opts["mem"])
        except ValueError:
            raise BackendOptionError(url.raw, f"option mem={opts['mem']!r} is not a size (e.g. 16M, 0x100000)") from None
        if not MIN_MEM <= mem <= MAX_MEM:
            raise BackendOptionError(url.raw, f"option mem={opts['mem']!r}: size must be 64K..1G")
    post = None
    if "post" in opts:
        if opts["post"] not in ("bios", "none"):
            raise BackendOptionError(url.raw, f"option post={opts['post']!r}: expected bios or none")
        post = opts["post"] == "bios"
    strict = url.flag("strict")
    sb16 = url.flag("sb16")
    floppy = None
    if opts.get("floppy", "") not in ("", "none", "0"):
        floppy = opts["floppy"]
        if floppy != "generate":
            path = Path(floppy).expanduser()
            if not path.is_file():
                raise BackendOptionError(url.raw, f"option floppy={floppy!r}: no such image file (or use floppy=generate)")
            floppy = str(path.resolve())
    ecp = None
    if any(key in ECP_OPTIONS for key in opts):
        from hil.sim.ecp import config_from_options

        try:
            ecp = config_from_options(opts)
        except ValueError as e:
            raise BackendOptionError(url.raw, str(e)) from None
    try:
        return SimBackend(url.raw, profile=PROFILE_ALIASES[name], mem_size=mem, strict=strict, post=post, sb16=sb16,
                          floppy=floppy, ecp=ecp)
    except DeviceError as e:  # the port's DMA channel or ports taken by another device
        raise BackendOptionError(url.raw, str(e)) from None


class SimBackend(Backend):
    """Runs programs against the profile's :class:`hil.sim.machine.Machine`; ``.machine`` is public."""

    scheme = "sim"
    OPS = ALL_OPS  #: the model runs every operation itself

    def __init__(
        self,
        url: str = "sim",
        *,
        profile: str = "intel",
        mem_size: int = 16 << 20,
        strict: bool = False,
        post: bool | None = None,
        timing: Timing | None = None,
        sb16: bool = False,
        floppy: str | None = None,
        ecp: EcpConfig | None = None,
    ) -> None:
        super().__init__(url)
        self.machine = machine_for(profile, mem_size=mem_size, strict=strict, post=post, timing=timing)
        self.sb16: IsaDevice | None = None
        if sb16:
            from hil.sim.sb16 import card_for

            self.sb16 = self.machine.plug(card_for(self.machine.profile))
        self.ecp: EcpPort | None = None
        if ecp is not None:
            from hil.sim.ecp import EcpPort

            self.ecp = EcpPort(ecp)
            self.machine.plug(self.ecp)
        self.floppy = floppy  #: "generate", an image path, or None
        self.fdc: FloppyController | None = None  #: plugged when the backend opens
        self._irq_seen: tuple[object, IrqLines] = (None, IrqLines())  #: see _irq_lines

    @property
    def floppy_path(self) -> Path | None:
        """The image file drive A writes back to (None for ``generate`` or no floppy)."""
        return Path(self.floppy) if self.floppy not in (None, "generate") else None

    async def _open(self) -> None:
        """Plug the floppy controller; an image file is read off the event loop."""
        if self.floppy is None:
            return
        from hil.sim.fdc import Disk, fdc_for, generated_image

        path = self.floppy_path
        if path is None:
            disk = Disk(generated_image(), name="generated")
        else:
            try:
                image = await asyncio.to_thread(path.read_bytes)
            except OSError as e:
                raise BackendOptionError(self.url, f"option floppy={self.floppy!r}: cannot read the image: {e}") from None
            disk = Disk(image, name=path.name)
        self.fdc = fdc_for(self.machine.profile, {0: disk})
        self.machine.plug(self.fdc)

    async def _close(self) -> None:
        await self._write_back()

    async def _write_back(self) -> None:
        """Sectors WRITE DATA changed go to the image file, in a thread (no file I/O in the model)."""
        path = self.floppy_path
        disk = self.fdc.drives[0].disk if self.fdc is not None else None
        if path is None or disk is None or not disk.dirty:
            return
        from hil.sim.fdc import SECTOR

        sectors = sorted(disk.changed)
        chunks = [(lba, bytes(disk.data[lba * SECTOR:(lba + 1) * SECTOR])) for lba in sectors]
        disk.changed.clear()
        disk.dirty = False

        def write() -> None:
            with path.open("r+b") as f:
                for lba, data in chunks:
                    f.seek(lba * SECTOR)
                    f.write(data)

        try:
            await asyncio.to_thread(write)
        except OSError as e:
            raise DeviceError(f"floppy image {path}: cannot write back {len(chunks)} sector(s): {e}") from None

    @property
    def capabilities(self) -> Capabilities:
        m = self.machine
        features = {Capability.VIRTUAL_TIME, Capability.DEVICES, Capability.DREQ, Capability.IRQ}
        if self.sb16 is not None:
            features.add(Capability.SB16)
        if self.floppy:
            features.add(Capability.FDC)
        if self.ecp is not None:
            features.add(Capability.ECP)
        return Capabilities(
            backend="sim",
            identity=f"sim profile={m.profile} mem={len(m.memory) >> 10}KiB{' strict' if m.strict else ''}"
                     f"{' sb16' if self.sb16 is not None else ''}",
            features=frozenset(features),
            memory_window=(0, len(m.memory)),
            details={"profile": m.profile, "virtual_ns": m.now_ns, **({"sb16": True} if self.sb16 is not None else {}),
                     **({"floppy": self.floppy} if self.floppy else {}),
                     **({"ecp": ecp_details(self.ecp)} if self.ecp is not None else {})},
        )

    async def execute(self, ops: Sequence[Op]) -> list[Result]:
        # The model runs synchronously inside one event-loop step, so a program cannot be
        # interleaved with another task's: atomic without taking the lock.
        if self._closed or not self._opened:
            self._check_open()
        self.check(ops)
        results = self._run(ops) if self.machine.tracer is None else self._run_traced(ops)
        if self.fdc is not None:
            await self._write_back()
        return results

    @property
    def runs_inline(self) -> bool:
        """:meth:`execute` never waits here (no floppy image file to write sectors back to), so
        :meth:`run_inline` may stand for it: an agent runs a short program in its link's callback."""
        return self.fdc is None or self.floppy_path is None

    def run_inline(self, ops: Sequence[Op]) -> list[Result]:
        """What :meth:`execute` does with ``ops`` once :meth:`check` passed them (the caller
        checked them a moment before, with nothing run in between), without the event loop;
        only where :attr:`runs_inline`."""
        if self._closed or not self._opened:
            self._check_open()
        return self._run(ops) if self.machine.tracer is None else self._run_traced(ops)

    # --- one-op conveniences: the general path (an op object, the program checks, the op
    # switch) costs ten times the model's own port access. Each refuses exactly what that path
    # refuses, in the same order (the op's own validation, then use before open or after close,
    # then an undecoded port under strict=1); tests/test_sim_fast_paths.py compares them.

    def _port_ready(self, port: int, last: int, write: bool) -> Machine:
        if self._closed or not self._opened:
            self._check_open()
        m = self.machine
        if m.strict:
            for p in range(port, last + 1):
                if not m.decodes(p):
                    raise UndecodedPortError(p, write)
        return m

    async def inb(self, port: int) -> int:  # the hottest: _port_ready inlined
        m = self.machine
        if m.tracer is not None:  # a waveform is recorded: the traced one-op program
            return await super().inb(port)
        if type(port) is not int or not 0 <= port <= 0xFFFF:
            check_port(port)
        if self._closed or not self._opened:
            self._check_open()
        if m.strict and not m.decodes(port):
            raise UndecodedPortError(port, False)
        value = m.io_read(port)
        if self.fdc is not None:
            await self._write_back()
        return value

    async def inw(self, port: int) -> int:
        if self.machine.tracer is not None:
            return await super().inw(port)
        check_port(port, 16)
        value = self._port_ready(port, port + 1, False).io_read(port, 16)
        if self.fdc is not None:
            await self._write_back()
        return value

    async def outb(self, port: int, value: int) -> None:
        if self.machine.tracer is not None:
            return await super().outb(port, value)
        if type(port) is not int or not 0 <= port <= 0xFFFF:
            check_port(port)
        if type(value) is not int or not 0 <= value <= 0xFF:
            check_value(value, 8, port)
        self._port_ready(port, port, True).io_write(port, value)
        if self.fdc is not None:
            await self._write_back()

    async def outw(self, port: int, value: int) -> None:
        if self.machine.tracer is not None:
            return await super().outw(port, value)
        check_port(port, 16)
        check_value(value, 16, port)
        self._port_ready(port, port + 1, True).io_write(port, value, 16)
        if self.fdc is not None:
            await self._write_back()

    def check(self, ops: Sequence[Op]) -> None:
        """Refuse what the model would raise part-way through the program, before any op runs:
        memory past its end, a port nothing decodes under ``strict=1`` (both bytes of a 16-bit
        access), a device op on a channel that has no device, counting the devices this program
        attaches before it, and a device on the cascade channel."""
        m = self.machine
        if not m.strict and self.OPS is ALL_OPS:
            # A port-only program (the driver's): an Out or In validated itself when it was made,
            # and neither check refuses one but for an undecoded port under strict=1.
            for op in ops:
                kind = type(op)
                if kind is not Out and kind is not In:
                    break
            else:
                return
        super().check(ops)
        size = len(m.memory)
        takes_data: dict[int, bool] | None = None  #: channel -> a source? (built at the first device op)
        strict = m.strict
        for op in ops:
            row = row_of(op)  # one table lookup per op: a long program is checked in its hot loop
            if strict and row.port is not None:
                io = row.port(op)
                for p in range(io.port, io.last + 1):
                    if not m.decodes(p):
                        raise UndecodedPortError(p, io.write)
            if row.memory is not None and (mem := row.memory(op)).addr + mem.length > size:
                raise MemoryRangeError(mem.addr, mem.length, size, "the simulated memory")
            if row.device_use is None:
                continue
            dev = row.device_use(op)
            if takes_data is None:
                takes_data = {ch: isinstance(d, Source) for ch, d in m.devices.items()}
            if dev.attaches is not None:
                if dev.channel == CASCADE_CHANNEL:
                    raise DeviceError("channel 4 is the cascade input from DMA1; no device can use it")
                takes_data[dev.channel] = dev.attaches == "source"
                continue
            if dev.channel not in takes_data:
                raise DeviceError(f"no device attached to channel {dev.channel}")
            if dev.feeds and not takes_data[dev.channel]:
                raise DeviceError(f"channel {dev.channel}: only a source takes more data")

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        results = self._run(ops) if self.machine.tracer is None else self._run_traced(ops)
        if self.fdc is not None:
            await self._write_back()
        return results

    def _run(self, ops: Sequence[Op]) -> list[Result]:
        m = self.machine
        results: list[Result] = []
        for op in ops:
            match op:
                case Out():
                    m.io_write(op.port, op.value, op.width)
                case In():
                    results.append(m.io_read(op.port, op.width))
                case MemRead():
                    results.append(m.mem_read(op.addr, op.length))
                case MemWrite():
                    m.mem_write(op.addr, op.data)
                case MemFill():
                    m.mem_fill(op.addr, op.length, op.value)
                case Delay():
                    m.advance(round(op.us * 1000))
                case Poll():
                    results.append(self._poll(op))
                case Settle():
                    m.run_until_idle(round(op.timeout_us * 1000))
                case DevAttach():
                    m.attach(op.channel, Source(op.data, dreq=op.dreq) if op.kind == "source"
                             else Sink(op.dreq, op.capacity))
                case DevAppend():
                    device = self._device(op.channel)
                    if not isinstance(device, Source):
                        raise DeviceError(f"channel {op.channel}: only a source takes more data")
                    device.append(op.data)
                case DevDreq():
                    self._device(op.channel).dreq = op.level
                case DevState():
                    results.append(device_state(self._device(op.channel), op.max_bytes))
                case PowerReset():
                    m.reset(post=False)
                case IrqState():
                    results.append(self._irq_lines())
                case WaitIrq():
                    m.wait_irq(op.line, op.level, round(op.timeout_us * 1000))
                    results.append(self._irq_lines())
        return results

    def _run_traced(self, ops: Sequence[Op]) -> list[Result]:
        """:meth:`_run` one op at a time, telling the waveform tracer after each (the same
        machine calls in the same order: ``_run`` keeps nothing from one op to the next)."""
        tracer = self.machine.tracer
        results: list[Result] = []
        for op in ops:
            results += self._run((op,))
            if tracer is not None:
                io = port_access(op)
                if io is None:
                    tracer.op_done()
                else:
                    tracer.op_done(io.port, io.value, write=io.write, width=io.width)
        return results

    def signal_trace(self, emit: Emit) -> SignalTrace:
        """A waveform tracer of this machine, sending every signal change to ``emit`` (see
        :mod:`hil.sim.trace`): it runs from its ``attach()`` to its ``detach()``, one at a time."""
        if self.machine.tracer is not None:
            raise BackendError(f"backend {self.url} is already traced")
        from hil.sim.trace import SignalTrace

        return SignalTrace(self.machine, emit)

    def _irq_lines(self) -> IrqLines:
        """The machine's lines now: virtual time moves only inside programs, so between them
        this is the state at the end of the last one. Line 2 reads IRQ 9 (docs/reference/8259.md §1)."""
        lines = self.machine.irq_bus.lines()  # irq_level / irq_count of every line, at once
        if lines is not self._irq_seen[0]:  # the bus keeps its answer until a line changes; so does this
            self._irq_seen = (lines, IrqLines(*lines))
        return self._irq_seen[1]

    def _device(self, channel: int) -> Device:
        device = self.machine.devices.get(channel)
        if device is None:
            raise DeviceError(f"no device attached to channel {channel}")
        return device

    def _poll(self, op: Poll) -> int:
        m = self.machine
        deadline = m.now_ns + round(op.timeout_us * 1000)
        interval = round(op.interval_us * 1000)
        idle_misses = 0
        while True:
            value = m.io_read(op.port, op.width)
            if value & op.mask == op.expect or m.now_ns >= deadline:
                return value
            idle_misses = idle_misses + 1 if m.idle else 0
            if idle_misses >= 2:
                # Nothing can move any more, so reads repeat with a period of at most two (the
                # flip-flop alternates low/high bytes): skip to the deadline, keeping the parity
                # of the reads a literal loop would have made.
                per_read = interval + m.timing.port_ns * (op.width // 8)
                left = max(0, (deadline - m.now_ns) // per_read)
                if left % 2:
                    m.advance(interval)
                    value = m.io_read(op.port, op.width)
                m.advance(max(0, deadline - m.now_ns))
                return value
            m.advance(interval)

    def virtual_time_ns(self) -> int:
        return self.machine.now_ns

    async def settle(self, timeout_s: float | None = None) -> None:
        if self._closed or not self._opened:
            self._check_open()
        self._run_until_idle(timeout_s)  # _settle, one await less: settling is what a transfer waits on
        if self.fdc is not None:
            await self._write_back()

    async def _settle(self, timeout_s: float | None) -> None:
        """Run virtual time until no channel can be serviced (``timeout_s`` is virtual)."""
        self._run_until_idle(timeout_s)
        if self.fdc is not None:
            await self._write_back()

    def _run_until_idle(self, timeout_s: float | None) -> None:
        limit = 10.0 if timeout_s is None else timeout_s
        self.machine.run_until_idle(round(limit * 1e9))
        if self.machine.tracer is not None:
            self.machine.tracer.sample()


def ecp_details(port: EcpPort) -> dict[str, object]:
    """What the capabilities report of the ECP port: its configuration."""
    c = port.config
    return {"base": c.base, "dma": c.dma, "irq": c.irq, "test_dma": c.test_dma, "threshold": c.threshold}


def device_state(device: Device, max_bytes: int = 4096) -> DeviceState:
    if isinstance(device, Sink):
        data = bytes(device.received)
        return DeviceState("sink", device.tc_count, len(data), 0, device.overruns,
                           "sha256:" + hashlib.sha256(data).hexdigest(), data[:max_bytes])
    if isinstance(device, Source):
        return DeviceState("source", device.tc_count, device.pos, device.underruns, 0)
    return DeviceState(type(device).__name__.lower(), device.tc_count)


__all__ = ["SimBackend", "device_state", "from_url", "parse_size"]
