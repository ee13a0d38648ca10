"""``devport:`` backend: a Linux target's own 8237s through ``/dev/port`` and ``/dev/mem``.

URL: ``devport:?port=/dev/port&mem=/dev/mem&window=0x10000-0x90000&allow=FILE&dry_run=1``.

Why it is built the way it is (docs/reference/hil-lessons.md §1.2, §2.5, §3.20-§3.21):

* **One byte per access, at the exact offset.** The kernel's ``/dev/port`` turns an N-byte
  read or write at offset P into ``inb``/``outb`` on ports P, P+1, ..., P+N-1. A 2-byte write
  meant for an address register would land on the address *and* the count port, so every
  access here is a 1-byte ``os.pread``/``os.pwrite`` at the port number.
* **16-bit port accesses are refused** (:class:`~hil.errors.WideAccessError`). ``/dev/port``
  cannot issue ``inw``/``outw`` at all, and every DMA and page register is 8 bits wide
  (docs/reference/8237.md conventions, docs/reference/linux-isa-dma.md §1.1). Splitting into two bytes to the *same* port is
  what a driver does for a 16-bit DMA register (clear the flip-flop, then LSB, MSB) but not
  what the CPU's ``outw`` does (the bus sends the high byte to port+1), so doing it silently
  would run a different program from the one asked for. Write the two bytes explicitly, as
  :class:`hil.dma.IsaDma` does; the whole program is refused before any of it runs.
* **Memory is a mmap of /dev/mem restricted to one window.** ``read()`` of RAM in the low
  1 MiB returns zeros under ``CONFIG_STRICT_DEVMEM``, so the window is mapped instead; newer
  kernels refuse to map RAM the kernel owns even there, which is why the window should be
  reserved at boot (``memmap=SIZE$START``; README "Running on a real Linux target"). On x86,
  ISA DMA is cache-coherent, so an ordinary cached mapping sees what the controller wrote.
* **Safety rails.** Every program is checked against the allow-list (ports and the memory
  window) and the width rule before its first op reaches the kernel. ``dry_run=1`` opens no
  device, logs each access as a ``devport_dry_run`` event and reads 0xFF. On close, channels
  this session unmasked (single-mask, clear-mask, write-all-mask writes it made) are masked
  again; channel 4 is left alone, because masking the cascade stops all of DMA1.
* **Threading.** Blocking syscalls run on one worker thread owned by the backend; a whole
  program is one job on it, so ops run in order and programs never interleave, and the event
  loop is never blocked. ``Delay`` and ``Poll`` use wall-clock time on that thread.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import stat
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import field
from typing import Any, TypeVar

from hil import oserrors
from hil.allowlist import AllowList, AllowListError, parse_window
from hil.backends import BackendURL
from hil.backends.base import DEVICE_CAPABILITIES, DEVICE_IRQ, DEVICE_PORTS, Backend, Capabilities, Capability
from hil.backends.pic import PicObserver
from hil.errors import (
    BackendError,
    BackendNotOpenError,
    BackendOptionError,
    HilError,
    MemoryWindowError,
    SettleTimeout,
    UnsupportedOperationError,
    WideAccessError,
)
from hil.log import get_logger
from hil.ops import (
    Delay,
    In,
    IrqLines,
    IrqState,
    MemFill,
    MemRead,
    MemWrite,
    Op,
    Out,
    Poll,
    Result,
    WaitIrq,
    port_access,
)
from hil.ports import (
    CASCADE_CHANNEL,
    DMA_LIMIT,
    ELCR_PROGRAMMABLE,
    MASK_SET,
    PortRole,
    Reg,
    channel_ports,
    controller_of,
    decode_port,
)
from hil.records import dataclass

log = get_logger("hil.devport")

T = TypeVar("T")

DEFAULT_PORT = "/dev/port"
DEFAULT_MEM = "/dev/mem"
OPTIONS = {
    "port": f"I/O port device (default {DEFAULT_PORT})",
    "mem": f"physical memory device (default {DEFAULT_MEM})",
    "window": "physical memory window START-END (END exclusive) or START+SIZE, e.g. 0x10000-0x90000",
    "allow": "allow-list TOML file (default: the DMA controllers and page registers only)",
    "dry_run": "0|1, log the accesses instead of performing them",
    "devices": "ISA devices this machine has, e.g. fdc,sb16: capabilities, and their ports in the default allow-list",
    "irq": "pic: observe IRQ lines in the 8259s' request register (lines switched to level in the ELCR)",
    "irq_lines": "the lines irq=pic observes, e.g. 6,5 (default: those of the declared devices)",
}
PAGE = mmap.ALLOCATIONGRANULARITY
SPIN_US = 200.0  #: the tail of a delay that is spun, not slept: sleep() overshoots by ~50-100 us
SETTLE_INTERVAL_S = 0.001  #: two equal count samples this far apart = no DMA progressing
SETTLE_DEFAULT_S = 10.0
WIDE_REASON = (
    "/dev/port makes one byte access per port (a 2-byte access would touch port and port+1, not "
    "issue a 16-bit cycle), and every DMA and page register is 8 bits wide; for a 16-bit DMA "
    "register write two 8-bit accesses to the same port after clearing the flip-flop"
)


def _mmap(fd: int, length: int, offset: int) -> Any:
    return mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)


@dataclass(frozen=True)
class Host:
    """Every syscall and kernel status file the backend uses, so tests can replace them.

    Point ``port``/``mem`` at ordinary files to stand in for the devices (the offset semantics
    are the same), wrap ``pwrite`` to record offsets, or make ``open``/``mmap`` raise an
    ``OSError`` with the errno to diagnose.
    """

    open: Callable[[str, int], int] = os.open
    close: Callable[[int], None] = os.close
    pread: Callable[[int, int, int], bytes] = os.pread
    pwrite: Callable[[int, bytes, int], int] = os.pwrite
    fstat: Callable[[int], os.stat_result] = os.fstat
    mmap: Callable[[int, int, int], Any] = _mmap
    lockdown_path: str = oserrors.LOCKDOWN_PATH
    proc_status_path: str = oserrors.PROC_STATUS_PATH
    iomem_path: str = oserrors.IOMEM_PATH


# --- options --------------------------------------------------------------------------------



def _clip(windows: Sequence[range], to: range) -> list[range]:
    out = []
    for w in windows:
        lo, hi = max(w.start, to.start), min(w.stop, to.stop)
        if lo < hi:
            out.append(range(lo, hi))
        if lo > w.start or hi < w.stop:
            log.warning("devport_allow_window_clipped", allowed=f"0x{w.start:X}-0x{w.stop:X}",
                        window=f"0x{to.start:X}-0x{to.stop:X}", note="only the part inside the mapped window is usable")
    return out


def from_url(url: BackendURL, host: Host | None = None) -> DevPortBackend:
    opts = url.take(OPTIONS)
    if url.host or url.path:
        raise BackendOptionError(url.raw, "devport: takes only ?options (e.g. devport:?port=/dev/port), not a path")
    for name in ("port", "mem", "allow"):
        if name in opts and not opts[name]:
            raise BackendOptionError(url.raw, f"option {name}= needs a file name")
    allow = AllowList.from_toml(opts["allow"]) if "allow" in opts else AllowList.default()
    window: range | None = None
    if "window" in opts:
        try:
            window = parse_window(opts["window"])
        except AllowListError as e:
            raise BackendOptionError(url.raw, f"option {e}") from None
    elif allow.memory:
        window = range(min(r.start for r in allow.memory), max(r.stop for r in allow.memory))
        if window.stop > DMA_LIMIT:
            raise BackendOptionError(url.raw, f"allow-list memory ends at 0x{window.stop:X}: ISA DMA reaches only the low 16 MiB")
    dry = url.flag("dry_run")
    devices = _parse_devices(url.raw, opts.get("devices", ""))
    if devices and "allow" not in opts:  # as an agent's default list: the declared devices' ports too
        allow = allow.with_ports([DEVICE_PORTS[c] for c in devices])
    irq_lines = _parse_irq(url.raw, opts, devices)
    return DevPortBackend(url.raw, port_path=opts.get("port", DEFAULT_PORT), mem_path=opts.get("mem", DEFAULT_MEM),
                          window=window, allow=allow, dry_run=dry, host=host, devices=devices, irq_lines=irq_lines)


def _parse_devices(raw: str, text: str) -> tuple[Capability, ...]:
    known = {c.value: c for c in DEVICE_CAPABILITIES}
    out: list[Capability] = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        if name not in known:
            raise BackendOptionError(raw, f"option devices: unknown device {name!r}; known: {', '.join(known)}")
        out.append(known[name])
    return tuple(out)


def _parse_irq(raw: str, opts: dict[str, str], devices: Sequence[Capability]) -> tuple[int, ...] | None:
    """The IRQ lines ``irq=pic`` observes, or None without it."""
    if "irq" not in opts:
        if "irq_lines" in opts:
            raise BackendOptionError(raw, "option irq_lines needs irq=pic")
        return None
    if opts["irq"] != "pic":
        raise BackendOptionError(raw, f"option irq={opts['irq']!r}: the only observer is pic (the 8259s' IRR)")
    if "irq_lines" in opts:
        try:
            lines = tuple(int(t, 0) for t in opts["irq_lines"].split(",") if t.strip())
        except ValueError:
            raise BackendOptionError(raw, f"option irq_lines={opts['irq_lines']!r}: comma-separated IRQ numbers") from None
    else:
        lines = tuple(DEVICE_IRQ[c] for c in devices)
    if not lines:
        raise BackendOptionError(raw, "irq=pic needs lines to observe: irq_lines=6,5, or devices=fdc,sb16")
    bad = [n for n in lines if n not in ELCR_PROGRAMMABLE]
    if bad:
        raise BackendOptionError(raw, f"option irq_lines: IRQ {bad[0]} cannot be level-triggered in the ELCR "
                                      f"(possible: {', '.join(map(str, sorted(ELCR_PROGRAMMABLE)))})")
    return tuple(sorted(set(lines)))


# --- the byte-level I/O layer ---------------------------------------------------------------


class _PortFile:
    """/dev/port: exactly one byte per access, at offset = port number."""

    def __init__(self, fd: int, path: str, host: Host) -> None:
        self.fd, self.path, self.host = fd, path, host

    def read(self, port: int) -> int:
        try:
            data = self.host.pread(self.fd, 1, port)
        except OSError as e:
            raise oserrors.port_io_error(f"inb 0x{port:04X}", self.path, e) from None
        if len(data) != 1:
            raise BackendError(f"inb 0x{port:04X} through {self.path} returned {len(data)} bytes, expected 1")
        return data[0]

    def write(self, port: int, value: int) -> None:
        try:
            n = self.host.pwrite(self.fd, bytes((value,)), port)
        except OSError as e:
            raise oserrors.port_io_error(f"outb 0x{port:04X},0x{value:02X}", self.path, e) from None
        if n != 1:
            raise BackendError(f"outb 0x{port:04X},0x{value:02X} through {self.path} wrote {n} bytes, expected 1")


class _DryPort:
    """Performs nothing: logs the access it would make; reads float to 0xFF as on an empty bus."""

    def read(self, port: int) -> int:
        log.info("devport_dry_run", op="in", port=f"0x{port:04X}", result="0xFF")
        return 0xFF

    def write(self, port: int, value: int) -> None:
        log.info("devport_dry_run", op="out", port=f"0x{port:04X}", value=f"0x{value:02X}")


class _MemWindow:
    """A mapping of physical ``[base, base + size)``; addresses are physical."""

    def __init__(self, mapping: Any, base: int, size: int) -> None:
        self.map, self.base, self.size = mapping, base, size

    def _offset(self, addr: int, length: int) -> int:
        # The allow-list already keeps accesses inside the window; this guards the slice
        # arithmetic itself (a negative offset would silently wrap to the end of the mapping).
        off = addr - self.base
        if off < 0 or off + length > self.size:
            raise BackendError(f"memory 0x{addr:X}+0x{length:X} is outside the mapping "
                               f"0x{self.base:X}-0x{self.base + self.size:X}")
        return off

    def read(self, addr: int, length: int) -> bytes:
        off = self._offset(addr, length)
        return bytes(self.map[off : off + length])

    def write(self, addr: int, data: bytes) -> None:
        off = self._offset(addr, len(data))
        self.map[off : off + len(data)] = bytes(data)

    def fill(self, addr: int, length: int, value: int) -> None:
        off = self._offset(addr, length)
        self.map[off : off + length] = bytes((value,)) * length


class _DryMem:
    def read(self, addr: int, length: int) -> bytes:
        log.info("devport_dry_run", op="read", addr=f"0x{addr:X}", length=length)
        return b"\xff" * length

    def write(self, addr: int, data: bytes) -> None:
        log.info("devport_dry_run", op="write", addr=f"0x{addr:X}", length=len(data), head=bytes(data[:16]).hex())

    def fill(self, addr: int, length: int, value: int) -> None:
        log.info("devport_dry_run", op="fill", addr=f"0x{addr:X}", length=length, value=f"0x{value:02X}")


@dataclass
class MaskTracker:
    """Which channels this session unmasked, from the mask-register writes it made.

    The mask registers are write-only on the original 8237, so the backend cannot ask the
    controller what to restore; it can only undo what it did (docs/reference/hil-lessons.md §3.21).
    """

    enabled: set[int] = field(default_factory=set)

    def observe(self, port: int, value: int) -> None:
        info = decode_port(port)  # DMA1's 0x10-0x1F mirror and DMA2's odd aliases included
        if info.role is not PortRole.CONTROL or info.ctrl is None:
            return
        first = 4 * int(info.ctrl)
        group = range(first, first + 4)
        if info.reg == Reg.SINGLE_MASK:
            channel = first + (value & 3)
            (self.enabled.discard if value & MASK_SET else self.enabled.add)(channel)
        elif info.reg == Reg.CLEAR_MASK:
            self.enabled.update(group)
        elif info.reg == Reg.ALL_MASK:
            for i, channel in enumerate(group):
                (self.enabled.discard if value >> i & 1 else self.enabled.add)(channel)
        elif info.reg == Reg.TEMP_MASTER_CLEAR:  # a write is master clear: all four masked
            self.enabled.difference_update(group)

    def restore_ops(self) -> list[Op]:
        """Single-mask writes for every channel we enabled, except the cascade (channel 4)."""
        return [Out(controller_of(ch).single_mask, MASK_SET | (ch & 3))
                for ch in sorted(self.enabled) if ch != CASCADE_CHANNEL]


def _window(mem: _MemWindow | _DryMem | None) -> _MemWindow | _DryMem:
    assert mem is not None  # the allow-list has no memory without a window
    return mem


def _sleep_us(us: float) -> None:
    """Wall-clock delay: sleep the bulk, spin the tail (sleep alone overshoots short delays)."""
    deadline = time.perf_counter() + us / 1e6
    if us > SPIN_US:
        time.sleep((us - SPIN_US) / 1e6)
    while time.perf_counter() < deadline:
        pass


# --- the backend ----------------------------------------------------------------------------


class DevPortBackend(Backend):
    """Port I/O and a memory window of the machine this process runs on. See the module docstring."""

    scheme = "devport"
    OPS = (*Backend.OPS, IrqState, WaitIrq)  #: the IRQ ops run only with irq=pic (base check: capability irq)

    def __init__(
        self,
        url: str = "devport:",
        *,
        port_path: str = DEFAULT_PORT,
        mem_path: str = DEFAULT_MEM,
        window: range | None = None,
        allow: AllowList | None = None,
        dry_run: bool = False,
        host: Host | None = None,
        devices: Sequence[Capability] = (),
        irq_lines: Sequence[int] | None = None,
    ) -> None:
        super().__init__(url)
        self.devices = tuple(devices)  #: ISA devices the user declares this machine has
        self.irq_lines = tuple(irq_lines) if irq_lines is not None else None  #: observed by irq=pic
        self._pic: PicObserver | None = None
        self.port_path, self.mem_path, self.window, self.dry_run = port_path, mem_path, window, dry_run
        self.host = host or Host()
        base = allow if allow is not None else AllowList.default()
        if window is None:
            base = base.with_memory([])  # nothing is mapped: no memory op may pass
        else:
            base = base.with_memory(_clip(base.memory, window) if base.memory else [window])
        self.allow = base
        self.tracker = MaskTracker()
        self._executor: ThreadPoolExecutor | None = None
        self._port_fd: int | None = None
        self._mem_fd: int | None = None
        self._map: Any = None
        self._port: _PortFile | _DryPort | None = None
        self._mem: _MemWindow | _DryMem | None = None

    # --- capabilities ---------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        w = self.window
        win = f"0x{w.start:X}-0x{w.stop:X}" if w is not None else "none"
        return Capabilities(
            backend="devport",
            identity=f"devport {self.port_path} mem={self.mem_path} window={win}{' dry-run' if self.dry_run else ''}",
            features=frozenset(self._features()),
            memory_window=(w.start, w.stop) if w is not None else (0, 0),
            details={"port": self.port_path, "mem": self.mem_path, "allow": self.allow.describe(),
                     "dry_run": self.dry_run, "port_widths": [8], "enabled_channels": sorted(self.tracker.enabled.copy())},
        )

    def _features(self) -> set[Capability]:
        features = set(self.devices)
        if not self.dry_run:
            features.add(Capability.REAL_TIMING)
        if self.irq_lines is not None and not self.dry_run:
            features.add(Capability.IRQ)
        return features

    # --- life cycle -----------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hil-devport")
        if self.dry_run:
            self._port, self._mem = _DryPort(), _DryMem()
            log.info("devport_dry_run_open", port=self.port_path, mem=self.mem_path, allow=self.allow.describe(),
                     note="no device is opened; every access is logged, reads return 0xFF")
            return
        try:
            await self._call(self._open_devices)
        except BaseException:
            await self._call(self._release)
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        log.info("devport_open", port=self.port_path, mem=self.mem_path, allow=self.allow.describe())

    def _open_devices(self) -> None:
        h = self.host
        try:
            self._port_fd = h.open(self.port_path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise oserrors.explain_open_error(self.port_path, e, device="port", lockdown_path=h.lockdown_path,
                                            status_path=h.proc_status_path) from None
        self._port = _PortFile(self._port_fd, self.port_path, h)
        if self.irq_lines is not None:
            self._pic = PicObserver(self.irq_lines, self._port.read, self._port.write)
            self._pic.start()
            log.info("devport_irq_observed", lines=list(self.irq_lines), how="8259 IRR, lines level-triggered in the ELCR")
        if self.window is None:
            self._mem = None
            return
        try:
            self._mem_fd = h.open(self.mem_path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise oserrors.explain_open_error(self.mem_path, e, device="mem", lockdown_path=h.lockdown_path,
                                            status_path=h.proc_status_path) from None
        self._map, base, size = map_window(h, self._mem_fd, self.mem_path, self.window)
        self._mem = _MemWindow(self._map, base, size)
        overlap = oserrors.system_ram_overlap(self.window, h.iomem_path) if not _is_regular(h, self._mem_fd) else []
        if overlap:
            log.warning("devport_window_in_system_ram", window=f"0x{self.window.start:X}-0x{self.window.stop:X}",
                        ram=[f"0x{r.start:X}-0x{r.stop - 1:X}" for r in overlap],
                        note="the kernel may hand these pages out: DMA into them corrupts memory; reserve "
                             "the window with memmap= (see hil doctor)")

    def _release(self) -> None:
        if self._pic is not None:
            try:
                self._pic.stop()  # the ELCR as it was found
            except HilError as e:
                log.warning("devport_elcr_restore_failed", error=str(e))
            self._pic = None
        if self._map is not None:
            try:
                self._map.close()
            finally:
                self._map = None
        for attr in ("_mem_fd", "_port_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                setattr(self, attr, None)
                try:
                    self.host.close(fd)
                except OSError as e:
                    log.warning("devport_close_failed", fd=fd, error=str(e))

    async def _close(self) -> None:
        if self._executor is None:
            return
        try:
            if self._port is not None:
                ops = self.tracker.restore_ops()
                if ops:
                    masked = [ch for ch in sorted(self.tracker.enabled) if ch != CASCADE_CHANNEL]
                    try:
                        self.check(ops)
                        await self._call(self._run, ops)
                        log.info("devport_safe_state", masked=masked)
                    except HilError as e:
                        log.error("devport_safe_state_failed", error=str(e),
                                  channels=sorted(self.tracker.enabled), note="mask them by hand")
        finally:
            await self._call(self._release)
            self._port = self._mem = None
            self._executor.shutdown(wait=False)
            self._executor = None

    # --- programs -------------------------------------------------------------------------

    def check(self, ops: Sequence[Op]) -> None:
        """Refuse the whole program before any op of it reaches the kernel: 16-bit port accesses,
        and ports and memory outside the allow-list (whose memory is the mapped window)."""
        super().check(ops)
        for op in ops:
            if (io := port_access(op)) is not None and io.width != 8:
                raise WideAccessError(io.port, io.width, io.write, WIDE_REASON)
            if isinstance(op, WaitIrq) and op.line not in (self.irq_lines or ()):
                raise UnsupportedOperationError(
                    f"devport cannot wait for IRQ {op.line}: irq=pic observes only lines "
                    f"{', '.join(map(str, self.irq_lines or ())) or 'none'} (option irq_lines)", op="WaitIrq")
        self.allow.check(ops)

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        if self._port is None:
            raise BackendNotOpenError(self.url)
        return await self._call(self._run, list(ops))

    def _run(self, ops: Sequence[Op]) -> list[Result]:
        """Runs on the worker thread: the program's ops in order, nothing else in between."""
        port, mem, pic = self._port, self._mem, self._pic
        assert port is not None
        results: list[Result] = []
        for op in ops:
            match op:
                case Out():
                    port.write(op.port, op.value)
                    self.tracker.observe(op.port, op.value)
                    if pic is not None:  # a device's line moves with its port accesses: see each move
                        pic.sample()
                case In():
                    results.append(port.read(op.port))
                    if pic is not None:
                        pic.sample()
                case Delay():
                    _sleep_us(op.us)
                case Poll():
                    results.append(self._poll(op))
                case MemRead():
                    results.append(_window(mem).read(op.addr, op.length))
                case MemWrite():
                    _window(mem).write(op.addr, op.data)
                case MemFill():
                    _window(mem).fill(op.addr, op.length, op.value)
                case IrqState():
                    results.append(self._observer().sample())
                case WaitIrq():
                    results.append(self._observer().wait(op.line, op.level, op.timeout_us / 1e6))
        return results

    def _observer(self) -> PicObserver:
        if self._pic is None:  # check() refused IRQ ops without capability irq; a dry run has none
            raise UnsupportedOperationError(f"{self.url}: no IRQ observer (irq=pic)")
        return self._pic

    def _irq_lines(self) -> IrqLines:
        return self._pic.last if self._pic is not None else IrqLines()

    def _poll(self, op: Poll) -> int:
        assert self._port is not None
        deadline = time.perf_counter() + op.timeout_us / 1e6
        while True:
            value = self._port.read(op.port)
            left = deadline - time.perf_counter()
            if value & op.mask == op.expect or left <= 0:
                return value
            _sleep_us(min(op.interval_us, left * 1e6))

    # --- settle ---------------------------------------------------------------------------

    def settle_ops(self) -> list[Op]:
        """Current-count reads of every channel this session enabled, flip-flop cleared first.

        Each controller's flip-flop is cleared, then each count is read as an LSB/MSB pair, so
        the pairs are never swapped and the flip-flop is left clear. The status registers are
        not read: a status read clears the TC bits that ``IsaDma.wait_dma_done`` waits for.
        """
        ops: list[Op] = []
        channels = [ch for ch in sorted(self.tracker.enabled) if ch != CASCADE_CHANNEL]
        for ctrl in {controller_of(ch) for ch in channels}:
            ops.append(Out(ctrl.clear_ff, 0))
            for ch in channels:
                if controller_of(ch) == ctrl:
                    port = channel_ports(ch).count
                    ops += [In(port), In(port)]
        return ops

    async def _settle(self, timeout_s: float | None) -> None:
        """Poll the enabled channels' count registers until two samples 1 ms apart agree."""
        ops = self.settle_ops()
        if not ops:
            return
        if self._port is None:
            raise BackendNotOpenError(self.url)
        self.check(ops)
        loop = asyncio.get_running_loop()
        limit = SETTLE_DEFAULT_S if timeout_s is None else timeout_s
        deadline = loop.time() + limit
        previous = await self._call(self._run, ops)
        while True:
            await asyncio.sleep(SETTLE_INTERVAL_S)
            sample = await self._call(self._run, ops)
            if sample == previous:
                return
            if loop.time() >= deadline:
                raise SettleTimeout(f"backend {self.url}: DMA counts still changing after {limit:g} s "
                                    f"(channels {sorted(self.tracker.enabled)})")
            previous = sample


def _is_regular(host: Host, fd: int) -> bool:
    return stat.S_ISREG(host.fstat(fd).st_mode)


def map_window(host: Host, fd: int, path: str, window: range) -> tuple[Any, int, int]:
    """Map the page-aligned hull of ``window``; return the mapping, its physical base and size.

    A regular file standing in for /dev/mem must be long enough: touching a mapped page past
    its end would kill the process with SIGBUS instead of raising.
    """
    base = window.start - window.start % PAGE
    end = -(-window.stop // PAGE) * PAGE
    if _is_regular(host, fd):
        size = host.fstat(fd).st_size
        if size < end:
            raise MemoryWindowError(
                f"memory window 0x{window.start:X}-0x{window.stop:X} ends beyond {path} ({size:#x} bytes)",
                f"make {path} at least {end:#x} bytes or choose a window inside it", path=path)
    try:
        return host.mmap(fd, end - base, base), base, end - base
    except OSError as e:
        raise oserrors.explain_mmap_error(path, e, window, iomem_path=host.iomem_path) from None
    except (ValueError, OverflowError) as e:
        raise MemoryWindowError(f"memory window 0x{window.start:X}-0x{window.stop:X} cannot be mapped from {path}: {e}",
                                "choose a window inside physical memory (see /proc/iomem)", path=path) from None


__all__ = ["DevPortBackend", "Host", "MaskTracker", "from_url", "map_window", "parse_window"]
