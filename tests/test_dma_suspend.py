"""Suspend/resume from the shadow (docs/reference/linux-isa-dma.md §3 rule 20, §5; docs/reference/8237.md §2.10)."""

from __future__ import annotations

import pytest

from hil.backends import open_backend
from hil.dma import DMA_AUTOINIT, DMA_MODE_CASCADE, DMA_MODE_READ, DMA_MODE_WRITE, IsaDma
from hil.ops import DevAttach, PowerReset
from hil.ports import DMA1, DMA2, PAGE_FILE, Ctrl, channel_ports

PROGRAM = {  # channel: (mode, phys, nbytes)
    2: (DMA_MODE_READ, 0x123400, 0x2400),
    5: (DMA_MODE_WRITE | DMA_AUTOINIT, 0x243000, 0x8000),
}


async def read_pair(be, port: int) -> int:
    lo, hi = await be.inb(port), await be.inb(port)
    return lo | hi << 8


async def readback(be, ch: int) -> tuple[int, int]:
    cp = channel_ports(ch)
    await be.outb(cp.ctrl.clear_ff, 0)
    return await read_pair(be, cp.addr), await read_pair(be, cp.count)


async def setup(be) -> IsaDma:
    dma = IsaDma(be)
    for ch, (mode, phys, n) in PROGRAM.items():
        await dma.request_dma(ch, f"dev{ch}")
        await dma.program(ch, mode, phys, n)
    await dma.request_dma(6, "busmaster")
    async with dma.claim_dma_lock():
        await dma.set_dma_mode(6, DMA_MODE_CASCADE)
        await dma.enable_dma(6)
    await dma.set_dma_command(Ctrl.DMA1, 0x10)  # rotating priority
    return dma


async def lose_state(be) -> None:
    """What a suspend to RAM does to the chipset: controllers reset, page latches garbage."""
    await be.execute([PowerReset()])
    for port in PAGE_FILE:
        await be.outb(port, 0xAA)


async def assert_as_programmed(be) -> None:
    for ch, (mode, phys, n) in PROGRAM.items():
        addr, count = await readback(be, ch)
        if ch >= 4:
            assert (addr, count) == ((phys >> 1) & 0xFFFF, (n >> 1) - 1)
            assert await be.inb(channel_ports(ch).page) == (phys >> 16) & 0xFE
        else:
            assert (addr, count) == (phys & 0xFFFF, n - 1)
            assert await be.inb(channel_ports(ch).page) == phys >> 16
    # masks read back at 0x0F / 0xDE on the intel profile (docs/reference/8237.md §2.9): 1 = masked
    assert await be.inb(DMA1.all_mask) == 0b1011  # ch2 enabled
    assert await be.inb(DMA2.all_mask) == 0b1000  # ch4 cascade, ch5, ch6 enabled; ch7 masked
    m = be.machine  # command and mode registers are write-only: only the model shows them
    assert m.dma1.command == 0x10
    assert m.dma1.channels[2].mode == (DMA_MODE_READ | 2) & 0xFC
    assert m.dma2.channels[1].mode == (DMA_MODE_WRITE | DMA_AUTOINIT | 1) & 0xFC
    assert m.dma2.channels[2].mode == DMA_MODE_CASCADE
    assert m.dma2.channels[0].mode == DMA_MODE_CASCADE


async def test_suspend_masks_owned_channels_and_resume_restores_every_register():
    async with open_backend("sim") as be:
        dma = await setup(be)
        snap = await dma.suspend()
        # masks read back at 0x0F / 0xDE on the intel profile (docs/reference/8237.md §2.9): 1 = masked
        assert await be.inb(DMA1.all_mask) & 0b0100 and await be.inb(DMA2.all_mask) & 0b0110
        assert not await be.inb(DMA2.all_mask) & 1  # the cascade is never masked by suspend
        await lose_state(be)
        await dma.resume(snap)
        await assert_as_programmed(be)


async def test_transfer_after_resume_behaves_as_before():
    async with open_backend("sim") as be:
        dma = await setup(be)
        snap = await dma.suspend()
        await lose_state(be)
        await dma.resume(snap)
        data = bytes((i * 5) & 0xFF for i in range(0x2400))
        await be.execute([DevAttach(2, "source", data)])
        result = await dma.wait_dma_done(2, timeout=0.5)
        assert result.complete
        assert await be.read_mem(0x123400, 0x2400) == data


async def test_resume_without_snapshot_uses_live_shadow():
    async with open_backend("sim") as be:
        await setup(be)
        await lose_state(be)
        await IsaDma(be).resume()  # a second IsaDma on the backend shares the shadow
        await assert_as_programmed(be)


async def test_backend_reset_notification_restores_automatically():
    """Step 4's agent reboot path: the backend reports a reset, the driver layer restores."""
    async with open_backend("sim") as be:
        await setup(be)
        await lose_state(be)
        await be._notify_reset()
        await assert_as_programmed(be)


async def test_suspend_records_a_transfer_in_flight():
    async with open_backend("sim") as be:
        dma = IsaDma(be)
        await dma.request_dma(1, "t")
        await be.execute([DevAttach(1, "source", b"z" * 10)])  # 10 of 100 bytes arrive
        await dma.program(1, DMA_MODE_READ, 0x9000, 100)
        await be.settle()
        snap = await dma.suspend()
        assert snap.residues[1] == 90


@pytest.mark.parametrize("profile", ["intel", "qemu"])
async def test_resume_on_both_profiles_restores_readable_registers(profile):
    async with open_backend(f"sim:?profile={profile}") as be:
        dma = await setup(be)
        snap = await dma.suspend()
        await be.execute([PowerReset()])
        await dma.resume(snap)
        for ch, (mode, phys, n) in PROGRAM.items():
            addr, count = await readback(be, ch)
            expect_addr = (phys >> 1) & 0xFFFF if ch >= 4 else phys & 0xFFFF
            expect_count = (n >> 1) - 1 if ch >= 4 else n - 1
            assert (addr, count) == (expect_addr, expect_count)
