"""Simulator throughput: port operations per second and DMA MB/s, with ratios to plain copies.

Run: python benchmarks/bench_sim.py [--repeat N]. Prints figures; asserts nothing (timings
belong in reports, not in the test suite). Targets on the dev machine (issue 2): >= 200k port
ops/s, block mode >= 100 MB/s.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from hil.backends import open_backend
from hil.dma import DMA_MODE_READ, IsaDma
from hil.logconfig import configure
from hil.ops import DevAttach, In, Out
from hil.ports import Mode, ModeSelect, TransferType, channel_ports

MiB = 1 << 20


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


async def port_ops(n: int) -> tuple[float, float]:
    """(single awaited calls per s, ops per s inside execute() programs)."""
    async with open_backend("sim") as be:
        port = channel_ports(2).page
        t0 = time.perf_counter()
        for i in range(n // 2):
            await be.outb(port, i & 0xFF)
            await be.inb(port)
        single = n / (time.perf_counter() - t0)
        program = [Out(port, 0x55), In(port)] * 500
        t0 = time.perf_counter()
        for _ in range(n // len(program)):
            await be.execute(program)
        batched = n / (time.perf_counter() - t0)
    return single, batched


async def dma_transfer(total: int, channel: int, mode: int, per_program: int) -> float:
    """Seconds to move ``total`` bytes device -> memory in ``per_program`` pieces."""
    payload = bytes(i & 0xFF for i in range(total))
    async with open_backend("sim") as be:
        dma = IsaDma(be)
        await dma.request_dma(channel, "bench")
        await be.execute([DevAttach(channel, "source", payload)])
        base = 0x100000
        t0 = time.perf_counter()
        async with dma.claim_dma_lock():
            for off in range(0, total, per_program):
                await dma.program(channel, mode, base + off, per_program)
                await be.settle()
        elapsed = time.perf_counter() - t0
        assert await be.read_mem(base, total) == payload, "data mismatch"
    return elapsed


def copy_time(total: int, repeat: int) -> float:
    src = bytes(total)
    dst = bytearray(total)

    def run() -> None:
        dst[0:total] = src

    return best(run, repeat)


async def main(repeat: int) -> None:
    single, batched = await port_ops(200_000)
    print(f"port ops/s, one await per op:          {single:12,.0f}  (target >= 200,000: ratio {single / 200e3:.2f})")
    print(f"port ops/s, 1000-op execute() programs: {batched:12,.0f}  (ratio {batched / 200e3:.2f})")

    block_mode = Mode(TransferType.WRITE, ModeSelect.BLOCK).encode()  # block, I/O -> memory
    block = min([await dma_transfer(MiB, 5, block_mode, 0x20000) for _ in range(repeat)])
    copy_1m = copy_time(MiB, repeat * 10)
    print(f"1 MiB block mode (ch5, 8 x 128 KiB):    {MiB / block / 1e6:10.1f} MB/s  "
          f"(target >= 100 MB/s; {block / copy_1m:.1f}x the time of a 1 MiB bytes copy, "
          f"copy {MiB / copy_1m / 1e6:,.0f} MB/s)")

    single_t = min([await dma_transfer(0x10000, 1, DMA_MODE_READ, 0x10000) for _ in range(repeat)])
    copy_64k = copy_time(0x10000, repeat * 100)
    print(f"64 KiB single mode (ch1):               {0x10000 / single_t / 1e6:10.1f} MB/s  "
          f"({single_t / copy_64k:.1f}x the time of a 64 KiB bytes copy)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    configure("console", 0)
    asyncio.run(main(ap.parse_args().repeat))
