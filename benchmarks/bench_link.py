"""The agent link against its floors, measured in the same run (issue 16). Asserts nothing.

Run: python benchmarks/bench_link.py [--repeat K] [--json FILE]

* a one-op program (``be.inb``) through an agent on loopback TCP vs an asyncio streams echo of
  the same request and reply bytes (target <= 1.3x), with glibc's malloc thresholds fixed first
  so that the echo's 256 KiB receive buffers come from the heap, as they do at its best
  (:mod:`hil.bench.heap`); beside it, the same round trips against no protocol at all
  (:class:`BareExchange`: what is left of one when framing, checks and model cost nothing),
  and with ``hil agent`` and the echo's server each in a process of their own;
* reading 1 MiB through the agent over TCP, MB/s, vs the same echo moving 1 MiB in 64 KiB
  messages (target >= 100 MB/s);
* the simulated FT232H link (3 Mbaud, a 1 ms latency timer on replies; ``hil bench link``): one
  op, channel programming (one round trip), every register, 64 KiB, each vs the physical minimum
  of the bytes it moved (target <= 1.10x), timed with a CPU latency request held where this may
  hold one (as ``hil bench link`` does; docs/reference/hil-lessons.md §1.13), then again with
  the CPUs' idle states as they are;
* the programs the ``floppy-read`` example takes on an agent (target <= 6).

Both ends run in this process, as the echo's do, so each figure and its floor share the CPU (but
for the one figure with ``hil agent`` in its own process, against an echo server in its own).
``hil bench link`` measures a real link (``--backend URL``).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, cast

from floors import Figure, report

from hil.agent.client import AgentBackend
from hil.agent.server import AgentCore, start
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.backends.base import DEVICE_CAPABILITIES, DEVICE_PORTS
from hil.bench.cpulatency import CpuLatency, hold_cpu_latency
from hil.bench.heap import pin_malloc_thresholds
from hil.bench.link import bench_shaped, serve_echo
from hil.logconfig import configure
from hil.runner import run_script
from hil.script import load_script

FLOPPY_READ = Path(__file__).resolve().parent.parent / "configs" / "scripts" / "floppy-read.toml"
MiB = 1 << 20


class Echo:
    """A plain asyncio streams echo on loopback: a request of ``out`` bytes, ``back`` bytes
    answered, the least any protocol over the same sockets can cost."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port  #: an echo server's, elsewhere; None: served here

    async def __aenter__(self) -> Echo:
        self.server: asyncio.Server | None = None
        port = self.port
        if port is None:
            self.server = await asyncio.start_server(serve_echo, "127.0.0.1", 0)
            port = self.server.sockets[0].getsockname()[1]
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()
        if self.server is not None:
            self.server.close()

    async def exchange(self, out: int, back: int) -> None:
        self.writer.write(struct.pack("<II", max(0, out - 8), back) + bytes(max(0, out - 8)))
        await self.writer.drain()
        await self.reader.readexactly(back)


class BareExchange:
    """The agent's own shape of round trip with no protocol at all: the far end answers ``back``
    bytes from its protocol's callback once ``out`` have come, and the near end awaits a future
    its protocol's callback sets, both ends receiving into buffers of their own (what
    :mod:`hil.streams` gives the agent's link). What is left of a one-op round trip when the
    framing, the checks and the model cost nothing: the event loop, two sends, two receives and
    one task's wake-up. Beside the target's floor, not instead of it."""

    class _Far(asyncio.BufferedProtocol):
        def __init__(self, owner: BareExchange) -> None:
            self.owner, self.buf, self.got = owner, bytearray(1 << 16), 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.got += nbytes
            out, back = self.owner.shape
            if self.got >= out:
                self.got -= out
                self.transport.write(bytes(back))

    class _Near(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf, self.got, self.want = bytearray(1 << 16), 0, 0
            self.waiter: asyncio.Future[None] | None = None

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.got += nbytes
            if self.got >= self.want and self.waiter is not None and not self.waiter.done():
                self.got -= self.want
                self.waiter.set_result(None)

    async def __aenter__(self) -> BareExchange:
        loop = asyncio.get_running_loop()
        self.shape = (1, 1)
        self.server = await loop.create_server(lambda: self._Far(self), "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.transport, self.near = await loop.create_connection(self._Near, "127.0.0.1", port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.transport.close()
        self.server.close()

    async def exchange(self, out: int, back: int) -> None:
        self.shape = (out, back)
        self.near.want = back
        self.near.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(bytes(out))
        await self.near.waiter


class Exchange(Protocol):
    """A floor of the one-op figures: ``out`` bytes sent, ``back`` bytes answered."""

    async def exchange(self, out: int, back: int) -> None: ...


async def one_op_rounds(be: AgentBackend, floors: Sequence[Exchange], repeat: int,
                        n: int) -> tuple[int, int, list[float], list[list[float]]]:
    """The wire bytes of one ``be.inb(0x83)`` (out, back), then ``repeat`` samples (us each,
    the mean of ``n``) of it and of each floor's exchange of those bytes, taken in turn."""
    out0, in0 = be.stats.bytes_out, be.stats.bytes_in
    await be.inb(0x83)
    out, back = be.stats.bytes_out - out0, be.stats.bytes_in - in0
    ops: list[float] = []
    samples: list[list[float]] = [[] for _ in floors]
    for _ in range(repeat):
        for floor, taken in zip(floors, samples):
            t0 = time.perf_counter()
            for _ in range(n):
                await floor.exchange(out, back)
            taken.append((time.perf_counter() - t0) / n * 1e6)
        t0 = time.perf_counter()
        for _ in range(n):
            await be.inb(0x83)
        ops.append((time.perf_counter() - t0) / n * 1e6)
    return out, back, ops, samples


async def tcp_figures(repeat: int, n: int) -> list[Figure]:
    heap = pin_malloc_thresholds()  # the echo's receive buffers from the heap, not an mmap per read (hil.bench.heap)
    async with open_backend("sim") as io:
        core = AgentCore(io, AllowList.default([range(0, 1 << 24)]))
        listener = await start(core, "tcp://127.0.0.1:0")
        try:
            async with open_backend(f"agent+{listener.address}") as be, Echo() as echo, BareExchange() as bare:
                out, back, ops, (floor, bare_floor) = await one_op_rounds(be, [echo, bare], repeat, n)
                one = Figure(f"agent one-op program over loopback TCP ({out} + {back} wire bytes)", "us", ops,
                             f"asyncio streams echo of the same bytes ({heap.detail})", floor, "ratio <= 1.3")
                beside = Figure(f"agent one-op program over loopback TCP ({out} + {back} wire bytes), against no protocol",
                                "us", ops, "a bare asyncio protocol round trip of the same bytes, answered in the "
                                "far end's callback as the agent answers (BareExchange)", bare_floor)
                bulk, bulk_floor = [], []
                await be.write_mem(0x100000, bytes(range(256)) * 4096)
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    for _ in range(MiB // 0x10000):
                        await echo.exchange(16, 0x10000)
                    bulk_floor.append(MiB / (time.perf_counter() - t0) / 1e6)
                    t0 = time.perf_counter()
                    await be.read_mem(0x100000, MiB)
                    bulk.append(MiB / (time.perf_counter() - t0) / 1e6)
                big = Figure("agent bulk 1 MiB read over loopback TCP", "MB/s", bulk,
                             "the echo moving 1 MiB in 64 KiB messages", bulk_floor, "value >= 100", higher=True)
                return [one, beside, big]
        finally:
            listener.close()


#: the echo's far end in a process of its own: glibc's thresholds fixed as in this process,
#: the address it listens on printed once it listens (as ``hil agent`` prints its own)
ECHO_SERVER = """
import asyncio
from hil.bench.heap import pin_malloc_thresholds
from hil.bench.link import serve_echo
pin_malloc_thresholds()
async def main():
    server = await asyncio.start_server(serve_echo, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


async def cross_process_figure(repeat: int, n: int) -> Figure:
    """The same one-op round trips with the agent where users run it, ``hil agent`` in a process
    of its own, against the same echo served by a process of its own: each round trip then also
    pays waking another process twice, in the figure and in its floor alike. No target: the
    target's figure is the in-process one above."""
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hil", "agent", "--io", "sim", "--listen", "tcp://127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    echo_server = await asyncio.create_subprocess_exec(sys.executable, "-c", ECHO_SERVER,
                                                       stdout=asyncio.subprocess.PIPE)
    try:
        assert agent.stdout is not None and echo_server.stdout is not None
        address = (await asyncio.wait_for(agent.stdout.readline(), 30)).decode().strip()
        port = int(await asyncio.wait_for(echo_server.stdout.readline(), 30))
        async with open_backend(f"agent+{address}") as be, Echo(port) as echo:
            out, back, ops, (floor,) = await one_op_rounds(be, [echo], repeat, n)
        return Figure(f"agent one-op program over loopback TCP ({out} + {back} wire bytes), `hil agent` in a "
                      "process of its own", "us", ops, "the same echo served by a process of its own", floor)
    finally:
        for proc in (agent, echo_server):
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()


async def shaped_figures(repeat: int, cpu: CpuLatency) -> list[Figure]:
    """The simulated FT232H's figures; the target goes with the CPU latency request held, as
    ``hil bench link`` measures by default (docs/reference/hil-lessons.md §1.13)."""
    runs = [await bench_shaped() for _ in range(repeat)]
    figures = []
    for i, first in enumerate(runs[0][1]):
        samples = [r[1][i].seconds * 1e3 for r in runs]
        minima = [(r[1][i].minimum or 0) * 1e3 for r in runs]
        when = "CPU wake-up latency held at 0 us" if cpu.held else "CPU idle states as they are"
        figures.append(Figure(f"agent over simulated 3 Mbaud FT232H + 1 ms: {first.name}, "
                              f"{first.round_trips} round trip(s), {when}", "ms", samples,
                              "the physical minimum of its bytes", minima, "ratio <= 1.1" if cpu.held else ""))
    return figures


async def programs_of_floppy_read() -> Figure:
    async with open_backend("sim:?floppy=generate&sb16=1") as io:
        allow = AllowList.default([range(0, 1 << 24)]).with_ports(
            [DEVICE_PORTS[c] for c in DEVICE_CAPABILITIES if c in io.capabilities])
        listener = await start(AgentCore(io, allow), "tcp://127.0.0.1:0")
        try:
            async with open_backend(f"agent+{listener.address}") as be:
                before = be.stats.programs
                result = await run_script(load_script(FLOPPY_READ), be)
                assert result.status == "passed", result.error
                return Figure("programs (round trips) for the floppy-read example on an agent", "programs",
                              [float(be.stats.programs - before)], target="value <= 6")
        finally:
            listener.close()


async def main(repeat: int, n: int, json_path: str | None) -> None:
    figures = await tcp_figures(repeat, n)
    figures.append(await cross_process_figure(repeat, n))
    with hold_cpu_latency() as cpu:
        if cpu.held:
            figures += await shaped_figures(max(1, repeat // 2), cpu)
    figures += await shaped_figures(max(1, repeat // 2), CpuLatency(False, "as they are"))
    figures.append(await programs_of_floppy_read())
    report(figures, json_path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ops", type=int, default=2000, help="one-op programs per sample")
    ap.add_argument("--json", metavar="FILE", help="append the figures to FILE (see readme_table.py)")
    configure("console", 0)
    a = ap.parse_args()
    asyncio.run(main(a.repeat, a.ops, a.json))
