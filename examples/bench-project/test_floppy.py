"""A sector read by the floppy controller on DMA channel 2, the driver's way: the channel is
programmed through the Linux ISA DMA API (``hil_dma``), the controller through its registers."""

from __future__ import annotations

import pytest
from conftest import FDC_DMA, FDC_IRQ, Floppy, generated_sector

from hil.buffers import DmaZone
from hil.dma import DMA_MODE_READ, IsaDma

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.mark.hil_requires("fdc", "irq")
async def test_read_sector(hil_dma: IsaDma, floppy: Floppy) -> None:
    be = hil_dma.backend
    lo, hi = be.capabilities.memory_window
    buf = DmaZone(start=max(lo, 0x10000), end=min(hi, 1 << 24)).alloc_nowait(512, FDC_DMA)
    await be.fill_mem(buf.phys, 512, 0xEE)
    await floppy.reset()
    await hil_dma.request_dma(FDC_DMA, "floppy")
    async with hil_dma.claim_dma_lock():
        await hil_dma.program(FDC_DMA, DMA_MODE_READ, buf.phys, 512)
    # READ DATA (MT | MFM | SK) of C0 H0 R3 (LBA 2), N 2 (512 bytes), EOT 18, GPL 0x1B, DTL 0xFF
    await floppy.command(0xE6, 0x00, 0, 0, 3, 2, 18, 0x1B, 0xFF)
    assert await be.wait_irq(FDC_IRQ, True, 1.0)
    st0, st1, st2, c, h, r, n = await floppy.result(7)
    assert (st0 & 0xC0, st1, st2, c, h, r, n) == (0x00, 0, 0, 0, 0, 4, 2)
    async with hil_dma.claim_dma_lock():
        await hil_dma.disable_dma(FDC_DMA)
        assert await hil_dma.get_dma_residue(FDC_DMA) == 0
    assert await be.read_mem(buf.phys, 512) == generated_sector(2)
    await hil_dma.free_dma(FDC_DMA)
