"""The bench project's helpers: a floppy controller driver small enough to read, on top of the
plugin's ``hil_backend`` (what the registers do: docs/reference/devices.md §2 of lpc-hil).

The plugin provides ``hil_backend``, ``hil_dma`` and the markers; a project adds what its own
tests share, here the FDC's command/result handshake and the generated disk's contents.
"""

from __future__ import annotations

import pytest

from hil.backends.base import Backend

FDC_DOR, FDC_MSR, FDC_DATA, FDC_CCR = 0x3F2, 0x3F4, 0x3F5, 0x3F7
FDC_IRQ, FDC_DMA = 6, 2
RQM, DIO = 0x80, 0x40


def generated_sector(lba: int, size: int = 512) -> bytes:
    """Byte i of LBA n of the disk ``floppy=generate`` gives (sim: and qemu: alike)."""
    return bytes((13 * lba + i) & 0xFF for i in range(size))


class Floppy:
    """Drive 0 of the controller at 0x3F0, by its registers."""

    def __init__(self, backend: Backend) -> None:
        self.be = backend

    async def _wait_msr(self, want: int) -> None:
        for _ in range(1000):
            if await self.be.inb(FDC_MSR) & (RQM | DIO) == want:
                return
        raise AssertionError(f"MSR never showed 0x{want:02X}")

    async def command(self, *data: int) -> None:
        for byte in data:
            await self._wait_msr(RQM)
            await self.be.outb(FDC_DATA, byte)

    async def result(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            await self._wait_msr(RQM | DIO)
            out.append(await self.be.inb(FDC_DATA))
        return out

    async def reset(self) -> None:
        """The Linux floppy driver's bring-up: reset pulse, four SENSE INTERRUPT STATUS,
        500 kbit/s, SPECIFY (DMA mode), motor on, RECALIBRATE to cylinder 0."""
        await self.be.outb(FDC_DOR, 0x08)
        await self.be.outb(FDC_DOR, 0x0C)
        assert await self.be.wait_irq(FDC_IRQ, True, 1.0)
        for _ in range(4):
            await self.command(0x08)
            await self.result(2)
        await self.be.outb(FDC_CCR, 0x00)
        await self.command(0x03, 0xDF, 0x02)
        await self.be.outb(FDC_DOR, 0x1C)
        await self.command(0x07, 0x00)
        assert await self.be.wait_irq(FDC_IRQ, True, 1.0)
        await self.command(0x08)
        st0, pcn = await self.result(2)
        assert st0 & 0xF8 == 0x20 and pcn == 0, (st0, pcn)


@pytest.fixture
def floppy(hil_backend: Backend) -> Floppy:
    return Floppy(hil_backend)
