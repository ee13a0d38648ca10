"""Simulator throughput, each figure beside its floor measured in the same run (issue 16).

Run: python benchmarks/bench_sim.py [--repeat N] [--json FILE]. Prints figures; asserts nothing
(timings belong in reports, not in the test suite).

* one awaited ``be.inb`` vs an awaited, already completed future (target: ratio <= 10);
* 1 MiB moved by DMA (device -> memory) in block, demand and single mode, as the driver does
  it (``IsaDma.program`` then ``settle``, 8 x 128 KiB on channel 5), vs a 1 MiB ``bytearray``
  slice copy (targets: block <= 5x, single <= 10x). The floor copies between buffers it has
  used before, so the transfer's are too: the device sends one of two payloads made once for
  the whole run, and each sample is the median of a backend's second, third and fourth
  transfer into the same megabyte (on this shared machine a single transfer is often
  preempted; the floor is a best of 20). The first (timed too, printed as the untouched-memory
  figure) also pays the kernel's first touch of each page of the fresh model memory, which a
  copy into a new buffer would pay as well;
* port ops/s, one await per op and inside 1000-op ``execute()`` programs (issue 2: >= 200,000).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from floors import Figure, report

from hil.backends import open_backend
from hil.dma import IsaDma
from hil.logconfig import configure
from hil.ops import DevAttach, In, Out
from hil.ports import Mode, ModeSelect, TransferType, channel_ports

MiB = 1 << 20
PAGE = channel_ports(2).page


async def awaited_future(n: int) -> float:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    fut.set_result(0)
    t0 = time.perf_counter()
    for _ in range(n):
        await fut
    return (time.perf_counter() - t0) / n


async def one_op(n: int) -> float:
    async with open_backend("sim") as be:
        t0 = time.perf_counter()
        for _ in range(n):
            await be.inb(PAGE)
        return (time.perf_counter() - t0) / n


async def port_ops(n: int) -> tuple[float, float]:
    """(single awaited calls per s, ops per s inside execute() programs)."""
    async with open_backend("sim") as be:
        t0 = time.perf_counter()
        for i in range(n // 2):
            await be.outb(PAGE, i & 0xFF)
            await be.inb(PAGE)
        single = n / (time.perf_counter() - t0)
        program = [Out(PAGE, 0x55), In(PAGE)] * 500
        t0 = time.perf_counter()
        for _ in range(n // len(program)):
            await be.execute(program)
        batched = n / (time.perf_counter() - t0)
    return single, batched


def payloads(total: int) -> tuple[bytes, bytes]:
    """What the device sends in a backend's first and second transfer (they differ in every byte)."""
    first = bytes(i & 0xFF for i in range(total))
    return first, first[1:] + first[:1]


async def dma_transfer(channel: int, mode: int, per_program: int, data: tuple[bytes, bytes]) -> tuple[float, float]:
    """Seconds to move a payload of ``data`` device -> memory in ``per_program`` pieces: the
    first transfer of a new backend (its memory untouched), and the median of three more into
    the same memory (each payload differs from the one before in every byte)."""
    times = []
    async with open_backend("sim") as be:
        dma = IsaDma(be)
        await dma.request_dma(channel, "bench")
        base = 0x100000
        for payload in (*data, *data):
            total = len(payload)
            await be.execute([DevAttach(channel, "source", payload)])
            t0 = time.perf_counter()
            async with dma.claim_dma_lock():
                for off in range(0, total, per_program):
                    await dma.program(channel, mode, base + off, per_program)
                    await be.settle()
            times.append(time.perf_counter() - t0)
            assert await be.read_mem(base, total) == payload, "data mismatch"
    return times[0], statistics.median(times[1:])


def copy_time(total: int) -> float:
    """One ``total``-byte bytearray slice copy (the best of 20: a copy is the floor)."""
    src, dst = bytes(total), bytearray(total)
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        dst[0:total] = src
        best = min(best, time.perf_counter() - t0)
    return best


async def main(repeat: int, json_path: str | None) -> None:
    figures: list[Figure] = []
    ops, floor = [], []
    for _ in range(repeat):
        floor.append(await awaited_future(100_000) * 1e9)
        ops.append(await one_op(100_000) * 1e9)
    figures.append(Figure("sim one-op `await be.inb`", "ns", ops, "an awaited completed future", floor,
                          "ratio <= 10"))
    data = payloads(MiB)
    for select, target in ((ModeSelect.BLOCK, "ratio <= 5"), (ModeSelect.DEMAND, ""), (ModeSelect.SINGLE, "ratio <= 10")):
        mode = Mode(TransferType.WRITE, select).encode()
        xfer, cold, floor = [], [], []
        for _ in range(repeat):
            floor.append(copy_time(MiB) * 1e3)
            untouched, again = await dma_transfer(5, mode, 0x20000, data)
            cold.append(untouched * 1e3)
            xfer.append(again * 1e3)
        figures.append(Figure(f"sim 1 MiB {select.name.lower()}-mode transfer (ch5, 8 x 128 KiB)", "ms", xfer,
                              "1 MiB bytearray slice copy", floor, target,
                              note="median of a backend's 2nd-4th transfer into that memory"))
        if select == ModeSelect.BLOCK:
            figures.append(Figure("sim 1 MiB block-mode transfer into untouched memory (a backend's first)", "ms",
                                  cold, "1 MiB bytearray slice copy", floor,
                                  note="includes the kernel's first touch of 256 fresh pages"))
    single, batched = [], []
    for _ in range(repeat):
        s, b = await port_ops(100_000)
        single.append(s)
        batched.append(b)
    figures.append(Figure("port ops/s, one await per op", "ops/s", single, target="value >= 200000", higher=True))
    figures.append(Figure("port ops/s, 1000-op execute() programs", "ops/s", batched, higher=True))
    report(figures, json_path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", metavar="FILE", help="append the figures to FILE (see readme_table.py)")
    configure("console", 0)
    a = ap.parse_args()
    asyncio.run(main(a.repeat, a.json))
