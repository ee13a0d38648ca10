"""Whole-run time of reading a full 1.44 MB floppy by DMA (2880 sectors, one READ DATA per track:
SEEK + SENSE INTERRUPT per cylinder, channel 2 programmed per track, MSR polled for the result
phase) on each backend, checked byte for byte against the generated image.

    python benchmarks/bench_fdc.py [--repeat K] [URL ...]

Each figure is min/median/max over ``--repeat`` runs, beside its floors measured or fixed in the
same run: the backend's own virtual time where it has one (a simulator runs the disk's physics:
300 rpm, so one track turns by in 200 ms), the drive's physical minimum (160 tracks x 200 ms =
32 s, the seeks not counted) and the fastest backend of the run (a ratio of whole-run times).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from hil.backends import open_backend
from hil.backends.base import Capability
from hil.errors import HilError
from hil.ops import In, Out, Poll
from hil.sim.fdc import generated_image

TRACK = 18 * 512
PHYSICAL_S = 160 * 0.2  #: 160 tracks, one revolution (200 ms at 300 rpm) each
DEFAULT_URLS = ["sim:?floppy=generate", "sim:?profile=qemu&floppy=generate", "qemu:?floppy=generate"]


async def read_disk(url: str) -> tuple[float, float | None]:
    """(wall seconds, virtual seconds or None) of one whole-disk read on ``url``."""
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
        virtual = be.virtual_time_ns() / 1e9 if Capability.VIRTUAL_TIME in be.capabilities.features else None
    return time.perf_counter() - start, virtual


def _mmm(values: list[float]) -> str:
    return f"{min(values):.3f}/{statistics.median(values):.3f}/{max(values):.3f}"


async def main(urls: list[str], repeat: int) -> None:
    walls: dict[str, list[float]] = {}
    virtual: dict[str, float | None] = {}
    for url in urls:
        for _ in range(repeat):
            try:
                wall, virt = await read_disk(url)
            except HilError as e:
                raise SystemExit(f"{url}: {e}") from None
            walls.setdefault(url, []).append(wall)
            virtual[url] = virt
    fastest = min(statistics.median(w) for w in walls.values())
    print(f"full 1.44 MB disk read by DMA, {repeat} run(s) each; wall s min/median/max; "
          f"physical minimum {PHYSICAL_S:.0f} s (rotation only)")
    for url, w in walls.items():
        med = statistics.median(w)
        virt = virtual[url]
        if virt is None:
            vt = "no virtual time"
        elif virt < 1e-3:
            vt = f"virtual {virt * 1e3:.3f} ms (the profile moves data inside the port write)"
        else:
            vt = f"virtual {virt:.2f} s, wall/virtual {med / virt:.2f}x"
        print(f"  {url}: {_mmm(w)} s; {vt}; wall/physical {med / PHYSICAL_S:.3f}x; vs fastest {med / fastest:.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("urls", nargs="*", metavar="URL", default=DEFAULT_URLS,
                        help="backends (default: sim intel, sim qemu, qemu)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per backend (default 3)")
    args = parser.parse_args()
    asyncio.run(main(args.urls, args.repeat))
