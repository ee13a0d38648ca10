"""Link benchmark: how close the agent backend gets to what the wire physically allows.

A :class:`ShapedLink` pair models a serial link in process: every byte costs 10 bit times (8N1)
at ``baud``, and each direction adds a fixed ``latency`` (an FT232H with its latency timer at
1 ms: about 1 ms device-to-host). The figures are ratios of measured time to the physical
minimum for the same useful bytes, so they show protocol and host overhead, not the link.
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import time
from dataclasses import dataclass

from hil.agent.links import Link
from hil.agent.server import AgentCore, serve_link, start
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.backends.agent import AgentBackend
from hil.backends.ops import In, MemRead, Out
from hil.dma import DMA_MODE_READ, IsaDma
from hil.ports import channel_ports
from hil.regs import dump_program, read_registers

PAGE = channel_ports(2).page  #: a harmless read/write register for raw timing


class _Pipe:
    """One direction: bytes arrive after their serialisation time plus the latency.

    Delivery is timed by a thread with ``time.sleep`` (sub-millisecond), because the event
    loop's own timers round up to whole milliseconds (epoll) and would double a 1 ms latency.
    """

    def __init__(self, baud: int, latency: float) -> None:
        self.byte_time, self.latency = 10 / baud, latency
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
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
        while True:
            with self._cv:
                while not self._heap:
                    self._cv.wait()
                due, _, data = self._heap[0]
                delay = due - time.perf_counter()
                if delay > 0:
                    self._cv.wait(delay)
                    continue
                heapq.heappop(self._heap)
            self._loop.call_soon_threadsafe(self.queue.put_nowait, data)


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

    async def close(self) -> None:
        pass


def shaped_pair(baud: int, latency: float) -> tuple[ShapedLink, ShapedLink]:
    a2b, b2a = _Pipe(baud, latency), _Pipe(baud, latency)
    return ShapedLink("host", b2a, a2b), ShapedLink("agent", a2b, b2a)


@dataclass
class Figure:
    name: str
    seconds: float
    minimum: float  #: the physical minimum on this link
    round_trips: int

    @property
    def ratio(self) -> float:
        return self.seconds / self.minimum if self.minimum else float("nan")

    def line(self) -> str:
        return (f"{self.name:34} {self.seconds * 1e3:9.2f} ms   minimum {self.minimum * 1e3:8.2f} ms   "
                f"ratio {self.ratio:5.2f}   round trips {self.round_trips}")


async def _measure(be: AgentBackend, name: str, minimum: float, coro_factory, repeat: int = 5) -> Figure:
    best, trips = float("inf"), 0
    for _ in range(repeat):
        before = be.stats.round_trips
        t0 = time.perf_counter()
        await coro_factory()
        best = min(best, time.perf_counter() - t0)
        trips = be.stats.round_trips - before
    return Figure(name, best, minimum, trips)


async def bench_shaped(baud: int = 3_000_000, latency: float = 0.001) -> list[Figure]:
    """Programming, register dump and 64 KiB read through a simulated link to a sim agent."""
    host_link, agent_link = shaped_pair(baud, latency)
    async with open_backend("sim") as io:
        core = AgentCore(io, AllowList.default([range(0, 1 << 24)]))
        server = asyncio.create_task(serve_link(core, agent_link))
        be = AgentBackend("agent+bench", "shaped", baud=baud, timeout=1.0, link_factory=lambda: _ready(host_link))
        try:
            await be.open()
            return await bench_backend(be, baud, latency)
        finally:
            await be.close()
            server.cancel()


async def bench_backend(be: AgentBackend, baud: int, latency: float) -> list[Figure]:
    """The three figures on an opened agent backend (simulated or real link).

    Minimums: one round trip (a latency each way) plus the frames' bytes at 10 bit times each;
    for the 64 KiB read only the data itself is counted, so framing overhead shows in the ratio.
    """
    byte = 10 / baud
    dma = IsaDma(be)
    await dma.request_dma(2, "bench")

    async def program() -> None:
        async with dma.claim_dma_lock():
            await dma.program(2, DMA_MODE_READ, 0x123400, 0x2400)

    try:
        prog_frames = (12 + 9 * 4 + 2) + (12 + 4 + 2)  # request and reply: header, CRC, COBS, delimiter
        figures = [await _measure(be, "channel programming (9 writes)", 2 * latency + prog_frames * byte, program)]
        ops = dump_program()
        req = 14 + sum(4 if isinstance(o, Out) else 3 for o in ops)
        rep = 14 + 4 + sum(1 for o in ops if isinstance(o, In))
        figures.append(await _measure(be, f"read all registers ({len(ops)} ops)", 2 * latency + (req + rep) * byte,
                                      lambda: read_registers(be)))
        lo, hi = be.capabilities.memory_window
        addr, n = (0x100000 if hi >= 0x110000 else lo), 0x10000
        figures.append(await _measure(be, "read 64 KiB of memory", 2 * latency + n * byte,
                                      lambda: be.execute([MemRead(addr, n)])))
        return figures
    finally:
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
                program = [Out(PAGE, 0x12), In(PAGE)] * 50
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    await be.execute(program)
                    n += len(program)
                batched = n / (time.perf_counter() - t0)
        finally:
            listener.close()
    return single, batched

