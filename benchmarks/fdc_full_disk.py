"""Whole-run time of reading a full 1.44 MB floppy by DMA (2880 sectors, one READ DATA per track:
SEEK + SENSE INTERRUPT per cylinder, channel 2 programmed per track, MSR polled for the result
phase) on the
given backends, and a check that every byte read is the generated image's.

    PYTHONPATH=. python benchmarks/fdc_full_disk.py sim:?floppy=generate sim:?profile=qemu\\&floppy=generate qemu:?floppy=generate
"""

from __future__ import annotations

import asyncio
import sys
import time

from hil.backends import open_backend
from hil.ops import In, Out, Poll
from hil.sim.fdc import generated_image

TRACK = 18 * 512


async def read_disk(url: str) -> float:
    start = time.perf_counter()
    async with open_backend(url) as be:
        # motor on; CONFIGURE as Linux's floppy driver does: FIFO on, threshold 11, polling off
        await be.execute([Out(0x3F2, 0x1C), Out(0x3F5, 0x13), Out(0x3F5, 0), Out(0x3F5, 0x1A), Out(0x3F5, 0)])
        for cyl in range(80):
            # SEEK, wait for the drive-busy bit to drop (MSR polled, as a driver waits), SENSE INTERRUPT
            await be.execute([Out(0x3F5, 0x0F), Out(0x3F5, 0), Out(0x3F5, cyl), Poll(0x3F4, 0x01, 0x00, 2e6, 100.0),
                              Out(0x3F5, 0x08), In(0x3F5), In(0x3F5)])
            for head in (0, 1):
                track = cyl * 2 + head
                page, addr = 0x10 + track // 7, (track % 7) * TRACK
                count = TRACK - 1
                await be.execute([Out(0x0A, 0x06), Out(0x0C, 0), Out(0x0B, 0x46), Out(0x04, addr & 0xFF),
                                  Out(0x04, addr >> 8), Out(0x81, page), Out(0x05, count & 0xFF),
                                  Out(0x05, count >> 8), Out(0x0A, 0x02)]
                                 + [Out(0x3F5, b) for b in (0x46, head << 2, cyl, head, 1, 2, 18, 0x1B, 0xFF)]
                                 + [Poll(0x3F4, 0xC0, 0xC0, 5e6, 100.0)])  # the result phase
                st = await be.execute([In(0x3F5) for _ in range(7)])
                if st[0] & 0xC0:
                    raise SystemExit(f"{url}: track {track}: result {st}")
        image = generated_image()
        for track in range(160):
            page, addr = 0x10 + track // 7, (track % 7) * TRACK
            if await be.read_mem(page << 16 | addr, TRACK) != image[track * TRACK:(track + 1) * TRACK]:
                raise SystemExit(f"{url}: track {track} differs from the image")
    return time.perf_counter() - start


async def main(urls: list[str]) -> None:
    for url in urls:
        print(f"{url}: {await read_disk(url):.3f} s")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["sim:?floppy=generate", "sim:?profile=qemu&floppy=generate", "qemu:?floppy=generate"]))
