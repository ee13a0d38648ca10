"""Link benchmark: how close the agent backend gets to what the wire physically allows.

Each figure is the best time of a few runs against the physical minimum of one exchange of
the wire bytes the run moved, on the link actually in use (:func:`floor_for`): a serial line
costs 10 bit times a byte (8N1) at its baud rate plus its latency timer; TCP has no baud rate,
so its floor is an echo of the same bytes over loopback, measured in the same run; a pty or
``loop://`` has no wire and no minimum. Without a real link, a :class:`ShapedLink` pair models
an FT232H in process (docs/reference/hil-lessons.md §1.12): every byte costs 10 bit times at
``baud`` each way, and what the agent sends waits ``latency`` more in the adapter (its latency
timer, 1 ms); what the host sends is not held.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import ctypes
import math
import os
import struct
import sys
import time
from collections.abc import Awaitable, Callable

from hil.agent.client import AgentBackend
from hil.agent.links import Link, LinkKind, link_kind
from hil.agent.server import AgentCore, serve_link, start
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.bench.heap import HeapPin, pin_malloc_thresholds
from hil.dma import DMA_MODE_READ, IsaDma
from hil.doctor.agent import Env
from hil.ops import In, MemRead, Op, Out
from hil.ports import channel_ports
from hil.records import dataclass
from hil.regs import dump_program, read_registers

PAGE = channel_ports(2).page  #: a harmless read/write register for raw timing


class _Alarm:
    """Calls ``fire`` on the event loop at a ``time.monotonic_ns()`` instant, not before it.

    On Linux a ``timerfd`` (nanosecond expiry on ``CLOCK_MONOTONIC``) on the loop's
    own selector: the loop sleeps until the instant and wakes once, with no thread handing bytes
    across (a delivery thread cost a second wake-up and GIL hand-offs inside the round trip).
    Elsewhere the loop's own timer, which may run late (epoll rounds its timeout up to whole
    milliseconds) or a clock tick early: ``fire`` checks the time and arms again if it is early."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[], None]) -> None:
        self._loop, self._fire = loop, fire
        self._fd = _timerfd()
        self._handle: asyncio.TimerHandle | None = None
        self._spec = _ITIMERSPEC()  #: reused: building one per arm cost as much as the call
        if self._fd is not None:
            loop.add_reader(self._fd, self._ready)

    def arm(self, when_ns: int) -> None:
        if self._fd is not None:
            spec = self._spec
            spec[2], spec[3] = divmod(when_ns, 1_000_000_000)
            if _LIBC.timerfd_settime(self._fd, 1, spec, None) != 0:  # type: ignore[union-attr]  # 1: TFD_TIMER_ABSTIME; a fd means libc
                raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        else:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(when_ns / 1e9, self._fire)  # loop.time() is time.monotonic()

    def _ready(self) -> None:
        try:
            os.read(self._fd, 8)  # type: ignore[arg-type]  # only registered with a timerfd
        except BlockingIOError:  # re-armed for later since it expired: nothing is due yet
            return
        self._fire()

    def close(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._handle is not None:
            self._handle.cancel()


class _Pipe:
    """One direction of the simulated line: the bytes of each write reach the far end when the line
    has carried them (10 bit times a byte, after whatever it still carries) plus ``hold``, and all
    that is due by then in one delivery. ``hold`` is the FTDI latency timer on the replies' way
    (docs/reference/hil-lessons.md §1.12), none on the requests'. Deliveries are timed by an
    :class:`_Alarm` on the loop; a delivery is never early (the model must not beat the wire)."""

    def __init__(self, baud: int, hold: float) -> None:
        self.baud, self.hold_ns = baud, math.ceil(hold * 1e9)
        self.receiver: Callable[[bytes], None] | None = None  #: set: deliveries go there, not to read()
        self.closed = False
        self._hung_up = False  #: the sender has gone: nothing follows its end
        self._busy_until = 0  #: monotonic ns: when the line has carried everything it was given
        self._due: collections.deque[tuple[int, bytes]] = collections.deque()  #: (when, bytes), in time order
        self._arrived = bytearray()  #: delivered, not yet read
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._alarm = _Alarm(asyncio.get_running_loop(), self._fire)

    def wire_ns(self, n: int) -> int:
        """The line's time for ``n`` bytes, 8N1, rounded up."""
        return -(-n * 10_000_000_000 // self.baud)

    def send(self, data: bytes) -> None:
        if self.closed or self._hung_up:
            return  # bytes into a line nobody listens to, or after the sender's end
        self._busy_until = max(time.monotonic_ns(), self._busy_until) + self.wire_ns(len(data))
        when = self._busy_until + self.hold_ns  # deliveries stay in order: both terms only grow
        self._due.append((when, data))
        if len(self._due) == 1:
            self._alarm.arm(when)

    def hang_up(self) -> None:
        """The sender has gone: the far end sees the end after what the line still carries."""
        if not self.closed and not self._hung_up:
            self._hung_up = True
            self._due.append((max(time.monotonic_ns(), self._busy_until) + self.hold_ns, b""))
            if len(self._due) == 1:
                self._alarm.arm(self._due[0][0])

    def _fire(self) -> None:
        now, due = time.monotonic_ns(), self._due
        parts = []
        while due and due[0][0] <= now:
            parts.append(due.popleft()[1])
        if due:
            self._alarm.arm(due[0][0])
        if not parts:
            return
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if data:
            self._deliver(data)
        if not parts[-1]:  # the far end hung up
            self._deliver(b"")

    def _deliver(self, data: bytes) -> None:
        if self.receiver is not None:
            self.receiver(data)
            return
        if data:
            self._arrived += data
        else:
            self._eof = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        while not self._arrived and not self._eof and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = bytes(self._arrived)
        self._arrived.clear()
        return data

    def close(self) -> None:
        """Nothing more is delivered (the receiving end closed)."""
        self.closed = True
        self._due.clear()
        self._alarm.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


_ITIMERSPEC = ctypes.c_long * 4  #: struct itimerspec: interval (s, ns), then the expiry (s, ns)


def _load_libc() -> ctypes.CDLL | None:
    """The C library, where it has timerfd (Linux: glibc >= 2.8, musl), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, _ITIMERSPEC, ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


def _timerfd() -> int | None:
    """A non-blocking ``CLOCK_MONOTONIC`` timerfd, or None where there is none."""
    if _LIBC is None:
        return None
    fd = _LIBC.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
    return fd if fd >= 0 else None


class ShapedLink(Link):
    def __init__(self, name: str, rx: _Pipe, tx: _Pipe) -> None:
        super().__init__(name)
        self._rx, self._tx = rx, tx

    async def read(self) -> bytes:
        data = await self._rx.read()
        self.stats.bytes_in += len(data)
        return data

    async def write(self, data: bytes) -> None:
        self.write_now(data)

    def write_now(self, data: bytes) -> bool:
        """The line takes any write at once (the bytes queue in the adapter), as ``write`` does."""
        self._tx.send(data)
        self.stats.bytes_out += len(data)
        return True

    def on_data(self, receiver: Callable[[bytes], None] | None) -> bool:
        """As a TCP link does: the bytes go to the host's router as they arrive."""
        self._rx.receiver = None if receiver is None else self.counted(receiver)
        return True

    async def close(self) -> None:
        self._tx.hang_up()
        self._rx.close()


def shaped_pair(baud: int, latency: float) -> tuple[ShapedLink, ShapedLink]:
    """(host end, agent end) of a simulated FT232H line: ``latency`` is its latency timer, which
    holds what the agent sends (docs/reference/hil-lessons.md §1.12)."""
    to_agent, to_host = _Pipe(baud, 0.0), _Pipe(baud, latency)
    return ShapedLink("host", to_host, to_agent), ShapedLink("agent", to_agent, to_host)


class Floor(abc.ABC):
    """The physical minimum of one exchange on a link: ``out`` bytes to the agent, ``back`` bytes
    from it. Figures are ratios to it, so they show protocol and host overhead, not the link."""

    description: str

    @abc.abstractmethod
    async def minimum(self, out: int, back: int, trips: int = 1) -> float | None:
        """Seconds for ``trips`` pipelined request/reply frames moving ``out`` and ``back`` bytes
        in all, or None when no minimum applies to this link."""

    async def close(self) -> None:
        """Only the measured floor holds resources."""


@dataclass
class SerialFloor(Floor):
    """A UART at ``baud``, 8N1 (10 bit times a byte), plus ``latency`` per exchange: the FTDI
    latency timer, which holds a short reply that long in the adapter before its USB transfer
    (only the replies' way: docs/reference/hil-lessons.md §1.12), real or simulated."""

    baud: int
    latency: float
    description: str = ""

    def __post_init__(self) -> None:
        if not self.description:
            self.description = f"{self.baud} baud 8N1 + {self.latency * 1e3:g} ms latency"

    async def minimum(self, out: int, back: int, trips: int = 1) -> float | None:
        # full duplex: replies flow while later requests are sent, but the first reply cannot start
        # before the first request is in, and the last request must be in before the last reply
        per = max(1, trips)
        return self.latency + max(out + back / per, out / per + back) * 10 / self.baud


@dataclass
class NoFloor(Floor):
    description: str

    async def minimum(self, out: int, back: int, trips: int = 1) -> float | None:
        return None


async def serve_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The echo floor's far end: each request is an 8-byte header (bytes that follow, bytes to
    answer), that many bytes, and the answer is that many zero bytes."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while header := await reader.readexactly(8):
            out, back = struct.unpack("<II", header)
            await reader.readexactly(out)
            writer.write(bytes(back))
            await writer.drain()


class EchoFloor(Floor):
    """TCP has no baud rate: its floor is measured in the same run, as the best of ``repeat``
    exchanges of the same byte counts with a plain echo server on this machine's loopback, with
    glibc's malloc thresholds fixed first (``heap``; see :mod:`hil.bench.heap`)."""

    def __init__(self, heap: HeapPin, repeat: int = 20) -> None:
        self.repeat = repeat
        self.description = f"TCP loopback echo of the same bytes, measured now ({heap.detail})"
        self._server: asyncio.Server | None = None
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._cache: dict[tuple[int, int], float] = {}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_echo(reader, writer)

    async def minimum(self, out: int, back: int, trips: int = 1) -> float | None:
        if (out, back) in self._cache:
            return self._cache[out, back]
        if self._conn is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            port = self._server.sockets[0].getsockname()[1]
            self._conn = await asyncio.open_connection("127.0.0.1", port)
        reader, writer = self._conn
        best = float("inf")
        payload = struct.pack("<II", max(0, out - 8), back) + bytes(max(0, out - 8))
        for _ in range(self.repeat):
            t0 = time.perf_counter()
            writer.write(payload)
            await writer.drain()
            await reader.readexactly(back)
            best = min(best, time.perf_counter() - t0)
        self._cache[out, back] = best
        return best

    async def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            with contextlib.suppress(Exception):
                await self._conn[1].wait_closed()
        if self._server is not None:
            self._server.close()


def floor_for(be: AgentBackend, env: Env | None = None) -> Floor:
    """The floor of the link ``be`` actually uses: TCP measured (glibc's malloc thresholds
    fixed first, :mod:`hil.bench.heap`), a serial line from its baud rate and latency timer, or
    none (a pty, loop://)."""
    link = be.link_url
    if be.scheme == "vm":  # the VM's UART: a 16550 model that QEMU does not pace (docs/reference/vm.md §6)
        return SerialFloor(be.baud, 0.0, f"{be.baud} baud 8N1, the rate the guest set on QEMU's 16550 (which does not "
                                         f"pace by the divisor: a ratio below 1 is the model, not the wire)")
    match link_kind(link):
        case LinkKind.TCP:
            return EchoFloor(pin_malloc_thresholds())
        case LinkKind.FTDI:  # open_link sets the latency timer to 1 ms (docs/reference/hil-lessons.md §1.4)
            return SerialFloor(be.baud, 1e-3, f"{be.baud} baud 8N1 + the 1 ms FTDI latency timer")
        case LinkKind.SERIAL:
            timer = (env or Env()).latency_timer(link.partition("?")[0])
            if timer is None:
                return SerialFloor(be.baud, 0.0, f"{be.baud} baud 8N1 (no ftdi_sio latency timer: latency not counted)")
            return SerialFloor(be.baud, timer / 1e3, f"{be.baud} baud 8N1 + the {timer} ms ftdi_sio latency timer")
        case LinkKind.RFC2217:
            return SerialFloor(be.baud, 0.0, f"{be.baud} baud 8N1 at the port server (network not counted)")
        case LinkKind.PTY:
            return NoFloor("none: a pty has no wire, so no physical minimum applies")
        case LinkKind.OTHER:
            return NoFloor(f"none: {link} has no physical line")


@dataclass
class Figure:
    name: str
    seconds: float
    minimum: float | None  #: the physical minimum on this link, None if none applies
    round_trips: int
    bytes_out: int = 0  #: wire bytes of one run, both directions
    bytes_in: int = 0

    @property
    def ratio(self) -> float | None:
        return self.seconds / self.minimum if self.minimum else None

    def line(self) -> str:
        floor = (f"minimum {self.minimum * 1e3:8.3f} ms   ratio {self.ratio:6.2f}" if self.minimum
                 else f"minimum {'n/a':>8}      ratio {'n/a':>6}")
        return f"{self.name:34} {self.seconds * 1e3:9.3f} ms   {floor}   round trips {self.round_trips}"

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "seconds": self.seconds, "minimum": self.minimum, "ratio": self.ratio,
                "round_trips": self.round_trips, "bytes_out": self.bytes_out, "bytes_in": self.bytes_in}


async def _measure(be: AgentBackend, floor: Floor, name: str, coro_factory: Callable[[], Awaitable[object]],
                   repeat: int = 5) -> Figure:
    """Best of ``repeat``; the minimum is one exchange of the wire bytes that run moved (not the
    last run's: a run with retransmissions moves more, and its minimum could exceed the best time)."""
    best, trips, out, back = float("inf"), 0, 0, 0
    for _ in range(repeat):
        before = (be.stats.round_trips, be.stats.bytes_out, be.stats.bytes_in)
        t0 = time.perf_counter()
        await coro_factory()
        took = time.perf_counter() - t0
        if took < best:
            best = took
            trips, out, back = (now - was for now, was in
                                zip((be.stats.round_trips, be.stats.bytes_out, be.stats.bytes_in), before))
    return Figure(name, best, await floor.minimum(out, back, trips), trips, out, back)


async def bench_shaped(baud: int = 3_000_000, latency: float = 0.001) -> tuple[Floor, list[Figure]]:
    """Programming, register dump and 64 KiB read through a simulated FT232H (``latency``: its
    latency timer) to a sim agent."""
    host_link, agent_link = shaped_pair(baud, latency)
    async with open_backend("sim") as io:
        core = AgentCore(io, AllowList.default([range(0, 1 << 24)]))
        server = asyncio.create_task(serve_link(core, agent_link))
        be = AgentBackend("agent+bench", "shaped", baud=baud, timeout=1.0, link_factory=lambda: _ready(host_link))
        floor = SerialFloor(baud, latency, f"simulated FT232H: {baud} baud 8N1 + its {latency * 1e3:g} ms latency timer")
        try:
            await be.open()
            return floor, await bench_backend(be, floor)
        finally:
            await be.close()
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server
            await agent_link.close()
            await host_link.close()


async def bench_backend(be: AgentBackend, floor: Floor | None = None) -> list[Figure]:
    """The four figures on an opened agent backend (simulated or real link), against ``floor``
    (default: :func:`floor_for` the backend's link)."""
    floor = floor or floor_for(be)
    dma = IsaDma(be)
    await dma.request_dma(2, "bench")

    async def program() -> None:
        async with dma.claim_dma_lock():
            await dma.program(2, DMA_MODE_READ, 0x123400, 0x2400)

    try:
        figures = [await _measure(be, floor, "one op (in 0x81)", lambda: be.inb(PAGE)),
                   await _measure(be, floor, "channel programming (9 writes)", program)]
        ops = dump_program()
        figures.append(await _measure(be, floor, f"read all registers ({len(ops)} ops)", lambda: read_registers(be)))
        lo, hi = be.capabilities.memory_window
        addr, n = (0x100000 if hi >= 0x110000 else lo), 0x10000
        figures.append(await _measure(be, floor, "read 64 KiB of memory", lambda: be.execute([MemRead(addr, n)])))
        return figures
    finally:
        await floor.close()
        async with dma.claim_dma_lock():
            await dma.disable_dma(2)
        await dma.free_dma(2)


async def _ready(link: Link) -> Link:
    return link


async def bench_pty(seconds: float = 1.0) -> tuple[float, float]:
    """(programs/s with one op, ops/s in 100-op programs) over a real pty, no shaping."""
    async with open_backend("sim") as io:
        core = AgentCore(io, AllowList.default([range(0, 1 << 24)]))
        listener = await start(core, "pty")
        try:
            async with open_backend(f"agent+serial://{listener.address}?baud=4000000") as be:
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    await be.inb(PAGE)
                    n += 1
                single = n / (time.perf_counter() - t0)
                program: list[Op] = [Out(PAGE, 0x12), In(PAGE)] * 50
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    await be.execute(program)
                    n += len(program)
                batched = n / (time.perf_counter() - t0)
        finally:
            listener.close()
    return single, batched

