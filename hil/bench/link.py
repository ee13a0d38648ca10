"""Link benchmark: how close the agent backend gets to what the wire physically allows.

Each figure is the best time of a few runs against the physical minimum of one exchange of
the wire bytes the run moved, on the link actually in use (:func:`floor_for`): a serial line
costs 10 bit times a byte (8N1) at its baud rate plus its latency timer; TCP has no baud rate,
so its floor is an echo of the same bytes over loopback, measured in the same run; a pty or
``loop://`` has no wire and no minimum. Without a real link, a :class:`ShapedLink` pair models
one in process: every byte costs 10 bit times at ``baud`` and each direction adds ``latency``
(an FT232H with its latency timer at 1 ms).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import heapq
import struct
import threading
import time
from collections.abc import Awaitable, Callable

from hil.agent.client import AgentBackend
from hil.agent.links import Link, LinkKind, link_kind
from hil.agent.server import AgentCore, serve_link, start
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.dma import DMA_MODE_READ, IsaDma
from hil.doctor.agent import Env
from hil.ops import In, MemRead, Op, Out
from hil.ports import channel_ports
from hil.records import dataclass
from hil.regs import dump_program, read_registers

PAGE = channel_ports(2).page  #: a harmless read/write register for raw timing


SPIN = 200e-6  #: the last stretch before a delivery is waited out awake (see _Pipe)
TIMER_SLACK_NS = 1  #: the delivery thread's timer slack (Linux ``PR_SET_TIMERSLACK``): 50 µs by default


class _Pipe:
    """One direction: bytes arrive after their serialisation time plus the latency.

    Delivery is timed by a thread, because the event loop's own timers round up to whole
    milliseconds (epoll) and would double a 1 ms latency. The thread sleeps until shortly before
    a delivery is due and waits out the rest awake (yielding the GIL), so a delivery is not late
    by a sleep's overshoot (about 0.1 ms each way with the default timer slack, which made the
    model's latency 1.2 ms rather than 1 ms): the figures measure the protocol, not the model.
    """

    def __init__(self, baud: int, latency: float) -> None:
        self.byte_time, self.latency = 10 / baud, latency
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.receiver: Callable[[bytes], None] | None = None  #: set: deliveries go there, not to the queue
        self.busy_until = 0.0
        self._loop = asyncio.get_running_loop()
        self._heap: list[tuple[float, int, bytes]] = []
        self._cv = threading.Condition()
        self._n = 0
        self._thread = threading.Thread(target=self._deliver, daemon=True, name="shaped-pipe")
        self._thread.start()

    def send(self, data: bytes) -> None:
        now = time.perf_counter()
        self.busy_until = max(now, self.busy_until) + len(data) * self.byte_time
        with self._cv:
            self._n += 1
            heapq.heappush(self._heap, (self.busy_until + self.latency, self._n, data))
            self._cv.notify()

    def _deliver(self) -> None:
        _fine_timers()
        while True:
            with self._cv:
                while not self._heap:
                    self._cv.wait()
                due, _, data = self._heap[0]
                delay = due - time.perf_counter()
                if delay > SPIN:
                    self._cv.wait(delay - SPIN)
                    continue
            while time.perf_counter() < due:
                time.sleep(0)  # releases the GIL: the loop thread runs meanwhile
            with self._cv:
                heapq.heappop(self._heap)
            self._loop.call_soon_threadsafe(self.receiver or self.queue.put_nowait, data)


def _fine_timers() -> None:
    """This thread's sleeps end when asked, not up to 50 µs later (Linux timer slack); elsewhere
    (or without ctypes) the default stays, and the spin before each delivery covers the rest."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(29, TIMER_SLACK_NS, 0, 0, 0)  # 29: PR_SET_TIMERSLACK


class ShapedLink(Link):
    def __init__(self, name: str, rx: _Pipe, tx: _Pipe) -> None:
        super().__init__(name)
        self._rx, self._tx = rx, tx

    async def read(self) -> bytes:
        data = await self._rx.queue.get()
        self.stats.bytes_in += len(data)
        return data

    async def write(self, data: bytes) -> None:
        self._tx.send(data)
        self.stats.bytes_out += len(data)

    def on_data(self, receiver: Callable[[bytes], None] | None) -> bool:
        """As a TCP link does: the bytes go to the host's router as they arrive."""
        self._rx.receiver = None if receiver is None else self.counted(receiver)
        return True

    async def close(self) -> None:
        pass


def shaped_pair(baud: int, latency: float) -> tuple[ShapedLink, ShapedLink]:
    a2b, b2a = _Pipe(baud, latency), _Pipe(baud, latency)
    return ShapedLink("host", b2a, a2b), ShapedLink("agent", a2b, b2a)


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
    latency timer (the adapter holds received bytes for up to that long before the USB transfer),
    or, for the simulated link, its one-way latency twice."""

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
    exchanges of the same byte counts with a plain echo server on this machine's loopback."""

    description = "TCP loopback echo of the same bytes, measured now"

    def __init__(self, repeat: int = 20) -> None:
        self.repeat = repeat
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
    """The floor of the link ``be`` actually uses: TCP measured, a serial line from its baud
    rate and latency timer, or none (a pty, loop://)."""
    link = be.link_url
    if be.scheme == "vm":  # the VM's UART: a 16550 model that QEMU does not pace (docs/reference/vm.md §6)
        return SerialFloor(be.baud, 0.0, f"{be.baud} baud 8N1, the rate the guest set on QEMU's 16550 (which does not "
                                         f"pace by the divisor: a ratio below 1 is the model, not the wire)")
    match link_kind(link):
        case LinkKind.TCP:
            return EchoFloor()
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
    """Best of ``repeat``; the minimum is one exchange of the wire bytes the run actually moved."""
    best, trips, out, back = float("inf"), 0, 0, 0
    for _ in range(repeat):
        before = (be.stats.round_trips, be.stats.bytes_out, be.stats.bytes_in)
        t0 = time.perf_counter()
        await coro_factory()
        best = min(best, time.perf_counter() - t0)
        trips, out, back = (now - was for now, was in
                            zip((be.stats.round_trips, be.stats.bytes_out, be.stats.bytes_in), before))
    return Figure(name, best, await floor.minimum(out, back, trips), trips, out, back)


async def bench_shaped(baud: int = 3_000_000, latency: float = 0.001) -> tuple[Floor, list[Figure]]:
    """Programming, register dump and 64 KiB read through a simulated link to a sim agent."""
    host_link, agent_link = shaped_pair(baud, latency)
    async with open_backend("sim") as io:
        core = AgentCore(io, AllowList.default([range(0, 1 << 24)]))
        server = asyncio.create_task(serve_link(core, agent_link))
        be = AgentBackend("agent+bench", "shaped", baud=baud, timeout=1.0, link_factory=lambda: _ready(host_link))
        floor = SerialFloor(baud, 2 * latency, f"simulated {baud} baud 8N1, {latency * 1e3:g} ms latency each way")
        try:
            await be.open()
            return floor, await bench_backend(be, floor)
        finally:
            await be.close()
            server.cancel()


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

