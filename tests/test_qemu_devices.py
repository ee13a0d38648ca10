"""QEMU's own DMA devices through the ``qemu:`` backend: the floppy controller (READ DATA / WRITE
DATA on channel 2, docs/reference/qemu-qtest.md §6) and the Sound Blaster 16 (8-bit playback on channel 1 in
single-cycle and auto-init mode, §7), run as the example scripts configs/scripts/floppy-*.toml and sb16-*.toml and
checked beyond what a script can say: the disk image on the host, IRQ 6 / IRQ 5 as QEMU reports
them, the residue samples falling as the SB16 plays.
"""

from __future__ import annotations

import os
import random
from itertools import pairwise
from pathlib import Path

import pytest

from hil.backends import open_backend
from hil.backends.qemu import SECTOR, floppy_image, floppy_sector, qemu_available
from hil.errors import SettleTimeout
from hil.journal import RunResult
from hil.ops import In, Out
from hil.runner import run_script
from hil.script import load_script
from hil.sim.devices import Source
from hil.testing import require

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "configs" / "scripts"
PAYLOAD = bytes.fromhex("deadbeef01234567") * 64  # floppy-write.toml's payload


def need_qemu() -> None:
    ok, why = qemu_available()
    require(ok, "qemu-system-x86_64 (QEMU 7.2 or later)", why)


def assert_passed(result: RunResult) -> None:
    assert result.status == "passed", (result.error, [(o.step, o.name, o.value, o.expect) for o in result.failures])


def samples(result: RunResult, name: str) -> list[int]:
    return [o.value for o in result.observations if o.op == "residue" and o.name == name]  # type: ignore[misc]


# --- floppy controller ---------------------------------------------------------------------------


@pytest.mark.parametrize("cpu", ["halt", "stopped"])
async def test_fdc_read_script(cpu: str):
    """docs/reference/qemu-qtest.md §6.1; identical under -S (§1.2): the FDC moves the data synchronously."""
    need_qemu()
    async with open_backend(f"qemu:?floppy=generate&cpu={cpu}") as be:
        result = await run_script(load_script(SCRIPTS / "floppy-read.toml"), be)
        assert_passed(result)
        events = [(e.line, e.level) for e in be.irq_events]
        # the reset raises IRQ 6, the first SENSE INTERRUPT lowers it; RECALIBRATE raises it, its
        # SENSE INTERRUPT lowers it; READ DATA raises it, the result phase lowers it
        assert events == [(6, True), (6, False)] * 3, events
        assert be.irq_count(6) == 3 and not be.irq_level(6)
    [data] = [o for o in result.observations if o.name == "the sector is LBA 2 of the generated disk"]
    assert data.ok


async def test_fdc_write_script_changes_the_image_on_the_host():
    """docs/reference/qemu-qtest.md §6.2: LBA 4 of the image file holds the payload, LBA 5 is untouched."""
    need_qemu()
    async with open_backend("qemu:?floppy=generate") as be:
        assert be.floppy_path is not None and be.floppy_path.read_bytes() == floppy_image()
        assert_passed(await run_script(load_script(SCRIPTS / "floppy-write.toml"), be))
        image = be.floppy_path.read_bytes()
        assert image[4 * SECTOR:5 * SECTOR] == PAYLOAD
        assert image[5 * SECTOR:6 * SECTOR] == floppy_sector(5)
        assert image[:4 * SECTOR] == floppy_image()[:4 * SECTOR]
        assert be.irq_count(6) == 4  # reset, RECALIBRATE, WRITE DATA, READ DATA


async def test_fdc_with_an_image_given_by_path(tmp_path: Path):
    """floppy=PATH attaches the user's raw image read-write."""
    need_qemu()
    image = tmp_path / "disk.img"
    image.write_bytes(floppy_image())
    async with open_backend(f"qemu:?floppy={image}") as be:
        assert be.floppy_path == image.resolve()
        assert be.capabilities.identity.endswith("floppy=disk.img")
        assert_passed(await run_script(load_script(SCRIPTS / "floppy-write.toml"), be))
    assert image.read_bytes()[4 * SECTOR:5 * SECTOR] == PAYLOAD  # the file survives the backend


async def test_fdc_transfer_waits_for_the_unmask():
    """docs/reference/qemu-qtest.md §6.3 'DREQ while masked': the FDC requests (status 0x40), nothing moves until
    the unmask, and then the whole sector moves inside that one port write."""
    need_qemu()
    async with open_backend("qemu:?floppy=generate") as be:
        await be.execute([Out(0x3F2, 0x1C), Out(0x3F5, 0x0F), Out(0x3F5, 0), Out(0x3F5, 0),
                          Out(0x3F5, 0x08), In(0x3F5), In(0x3F5)])
        await be.fill_mem(0x23000, 1024, 0xEE)
        await be.execute([Out(0x0A, 0x06), Out(0x0C, 0), Out(0x0B, 0x46), Out(0x04, 0x00), Out(0x04, 0x30),
                          Out(0x81, 0x02), Out(0x05, 0xFF), Out(0x05, 0x01)])  # left masked
        await be.execute([Out(0x3F5, b) for b in (0xE6, 0, 0, 0, 3, 2, 3, 0x1B, 0xFF)])
        assert await be.execute([In(0x3F4), In(0x08), Out(0x0C, 0), In(0x05), In(0x05)]) == [0x10, 0x40, 0xFF, 0x01]
        assert not be.irq_level(6)
        await be.settle(1.0)  # masked: nothing can move, settle returns at once
        await be.outb(0x0A, 0x02)  # unmask: the transfer runs inside this write
        assert be.irq_level(6)
        assert await be.execute([In(0x3F4), In(0x08), Out(0x0C, 0), In(0x05), In(0x05)]) == [0xD0, 0x04, 0xFF, 0xFF]
        assert await be.execute([In(0x3F5) for _ in range(7)]) == [0x04, 0, 0, 0, 1, 1, 2]
        assert await be.read_mem(0x23000, SECTOR) == floppy_sector(2)
        assert await be.read_mem(0x23000 + SECTOR, 4) == b"\xee" * 4


class FdcStandIn(Source):
    """The simulator's stand-in for QEMU's FDC in a one-sector READ without MT: it requests while
    it has bytes and ends its data phase at T/C (docs/reference/qemu-qtest.md §6.3 'the FDC ends normally on TC')."""

    def terminal_count(self, channel: int) -> None:
        super().terminal_count(channel)
        self.dreq = False


FDC_CASES = int(os.environ.get("HIL_QEMU_FDC_CASES", "300"))
DMA_STATE = [Out(0x0C, 0), In(0x04), In(0x04), In(0x05), In(0x05), In(0x08), In(0x09)]


async def fdc_case(qemu, sim, mode: int, count: int, addr: int, page: int, lba: int):  # type: ignore[no-untyped-def]
    """The same channel-2 programming on both; QEMU's FDC reads sector ``lba`` (READ DATA without
    MT, 0x66), the stand-in supplies the same 512 bytes. Returns (QEMU, model) register reads and
    the memory around the buffer."""
    phys = (page << 16) | addr
    lo, hi = max(0, phys - 0x800), phys + 0x800
    program = [Out(0x0A, 0x06), Out(0x0C, 0), Out(0x0B, mode), Out(0x04, addr & 0xFF), Out(0x04, addr >> 8),
               Out(0x81, page), Out(0x05, count & 0xFF), Out(0x05, count >> 8)]
    for be in (qemu, sim):
        await be.fill_mem(lo, hi - lo, 0xEE)
        await be.execute(program)
    sim.machine.attach(2, FdcStandIn(floppy_sector(lba)))
    await sim.outb(0x0A, 0x02)
    await sim.settle()
    await qemu.outb(0x0A, 0x02)
    await qemu.execute([Out(0x3F5, b) for b in (0x66, 0, 0, 0, lba + 1, 2, lba + 1, 0x1B, 0xFF)])
    await qemu.execute([In(0x3F5) for _ in range(7)])
    got = (await qemu.execute(DMA_STATE), await qemu.read_mem(lo, hi - lo))
    want = (await sim.execute(DMA_STATE), await sim.read_mem(lo, hi - lo))
    sim.machine.detach(2)
    return got, want


async def test_fdc_transfers_match_the_qemu_profile():
    """Random channel-2 programming (single / block / demand / cascade select, autoinit, decrement,
    every transfer type but verify, addresses near the page end, counts below, at and above one
    sector) with a one-sector READ by QEMU's FDC, against the qemu profile with a stand-in device
    supplying the same bytes: registers and the memory around the buffer must be identical."""
    need_qemu()
    rng = random.Random(int(os.environ.get("HIL_QEMU_SEED", "8237"), 0))
    async with open_backend("qemu:?floppy=generate") as qemu, open_backend("sim:?profile=qemu") as sim:
        await qemu.execute([Out(0x3F2, 0x1C), Out(0x3F5, 0x0F), Out(0x3F5, 0), Out(0x3F5, 0), Out(0x3F5, 0x08),
                            In(0x3F5), In(0x3F5)])
        for i in range(FDC_CASES):
            select = rng.choice((0x00, 0x40, 0x80, 0xC0))
            mode = select | rng.choice((0x04, 0x08, 0x0C)) | rng.choice((0, 0x10)) | rng.choice((0, 0x20)) | 2
            count = rng.choice((511, 255, 1023, 100, 0, 600, rng.randrange(0x10000)))
            addr = rng.choice((rng.randrange(0x10000), 0xFF00, 0x0000, 0x3000, 0xFFF0))
            page, lba = rng.randrange(1, 8), rng.randrange(0, 17)
            got, want = await fdc_case(qemu, sim, mode, count, addr, page, lba)
            assert got == want, (f"case {i}: mode 0x{mode:02X} count {count} address 0x{addr:04X} page {page} LBA {lba}: "
                                 f"QEMU registers {[hex(v) for v in got[0]]}, model {[hex(v) for v in want[0]]}; "
                                 f"memory {'equal' if got[1] == want[1] else 'differs'}")


async def fdc_model_case(qemu, sim, mode: int, count: int, addr: int, page: int, lba: int):  # type: ignore[no-untyped-def]
    """As :func:`fdc_case`, but both sides run the same READ DATA (0x66) on their floppy
    controller: QEMU's, and the qemu profile's model of it (hil/sim/fdc.py)."""
    phys = (page << 16) | addr
    lo, hi = max(0, phys - 0x800), phys + 0x800
    program = [Out(0x0A, 0x06), Out(0x0C, 0), Out(0x0B, mode), Out(0x04, addr & 0xFF), Out(0x04, addr >> 8),
               Out(0x81, page), Out(0x05, count & 0xFF), Out(0x05, count >> 8), Out(0x0A, 0x02),
               *(Out(0x3F5, b) for b in (0x66, 0, 0, 0, lba + 1, 2, lba + 1, 0x1B, 0xFF)),
               *(In(0x3F5) for _ in range(7))]
    out = []
    for be in (qemu, sim):
        await be.execute([Out(0x3F2, 0x1C), Out(0x3F5, 0x0F), Out(0x3F5, 0), Out(0x3F5, 0), Out(0x3F5, 0x08),
                          In(0x3F5), In(0x3F5)])
        await be.fill_mem(lo, hi - lo, 0xEE)
        fdc = await be.execute(program)
        out.append((fdc, await be.execute(DMA_STATE), await be.read_mem(lo, hi - lo)))
    return out


async def test_fdc_verify_with_a_count_larger_than_the_sector():
    """docs/reference/qemu-qtest.md §6.3 'Verify' and 'Partial transfer': in verify mode QEMU's FDC
    still runs its 512-byte data phase (the i8257 skips only the memory access), so a count of
    1024 ends at 0x01FF with no TC. The qemu profile's FDC runs the same data phase through
    QEMU's transfer handler (hil/sim/machine.py QemuMachine._run_handlers)."""
    need_qemu()
    async with open_backend("qemu:?floppy=generate") as qemu, open_backend("sim:?profile=qemu&floppy=generate") as sim:
        got, want = await fdc_model_case(qemu, sim, 0x42, 1023, 0x3000, 2, 2)
        assert got[1][2:4] == [0xFF, 0x01]  # QEMU: count base - 512 = 0x01FF, no TC
        assert got[1][5] & 0x04 == 0
        assert got[2] == b"\xee" * len(got[2])  # verify: memory untouched
        assert got == want


# --- Sound Blaster 16 ------------------------------------------------------------------------------


async def test_sb16_single_cycle_script():
    """docs/reference/qemu-qtest.md §7: the count falls at the sample rate; one IRQ 5 at the end; the channel then
    reads its base values, no TC."""
    need_qemu()
    async with open_backend("qemu:?sb16=1") as be:
        result = await run_script(load_script(SCRIPTS / "sb16-single.toml"), be)
        assert_passed(result)
        assert be.irq_count(5) == 1
    falling = samples(result, "the count as it falls at 8000 bytes/s")
    assert len(falling) == 3
    assert all(0 < s < 1000 for s in falling), falling
    assert all(b < a for a, b in pairwise(falling)), f"the count did not fall: {falling}"
    assert 100 <= (falling[0] - falling[-1]) / 2 <= 400, falling  # ~200 bytes per 25 ms at 8 kHz
    [after] = [o for o in result.observations if o.step == "24"]
    assert after.value == 1000  # QEMU's channel reads its base again


async def test_sb16_autoinit_script():
    """docs/reference/qemu-qtest.md §7: the ring wraps by itself, IRQ 5 once per period (1000 bytes at 8 kHz)."""
    need_qemu()
    async with open_backend("qemu:?sb16=1") as be:
        result = await run_script(load_script(SCRIPTS / "sb16-autoinit.toml"), be)
        assert_passed(result)
        assert be.irq_count(5) == 4
    ring = samples(result, "snd_dma_pointer: where the ring is")
    assert len(ring) == 3 and all(0 < s <= 2000 for s in ring), ring
    assert ring[1] > ring[0] and ring[1] > ring[2], f"no wrap after the second period in {ring}"


async def test_settle_waits_for_the_sb16_block():
    """settle() on qemu: returns once the counts stop moving: after the single-cycle block."""
    need_qemu()
    async with open_backend("qemu:?sb16=1") as be:
        await be.execute([Out(0x226, 1), Out(0x226, 0)])
        assert await be.execute([In(0x22E), In(0x22A)]) == [0x80, 0xAA]
        await be.execute([Out(0x0A, 0x05), Out(0x0C, 0), Out(0x0B, 0x49), Out(0x02, 0), Out(0x02, 0),
                          Out(0x83, 0x04), Out(0x03, 0x8F), Out(0x03, 0x01), Out(0x0A, 0x01)])  # 400 bytes
        await be.execute([Out(0x22C, b) for b in (0xD1, 0x40, 0x83, 0x14, 0x8F, 0x01)])
        await be.settle(2.0)
        assert be.irq_count(5) == 1  # settled means the block was over
        assert await be.execute([Out(0x0C, 0), In(0x03), In(0x03)]) == [0x8F, 0x01]


async def test_autoinit_never_settles_and_wait_irq():
    """An auto-init ring never stops by itself: settle() raises SettleTimeout (as on the sim);
    wait_irq() sees IRQ 5 rise at the end of a block and fall when 0x22E is read."""
    need_qemu()
    async with open_backend("qemu:?sb16=1") as be:
        await be.execute([Out(0x226, 1), Out(0x226, 0), In(0x22A)])
        await be.execute([Out(0x0A, 0x05), Out(0x0C, 0), Out(0x0B, 0x59), Out(0x02, 0), Out(0x02, 0),
                          Out(0x83, 0x04), Out(0x03, 0xFF), Out(0x03, 0x03), Out(0x0A, 0x01)])  # 1 KiB ring
        await be.execute([Out(0x22C, b) for b in (0xD1, 0x40, 0x83, 0x48, 0x8F, 0x01, 0x1C)])  # 400-byte blocks
        assert await be.wait_irq(5, True, timeout=1.0)
        await be.inb(0x22E)  # acknowledge
        assert await be.wait_irq(5, False, timeout=0.5)
        with pytest.raises(SettleTimeout, match="never stops by itself"):
            await be.settle(0.2)
        await be.outb(0x22C, 0xDA)  # end auto-init after this block
        await be.settle(2.0)
        assert [e.line for e in be.irq_events] and all(e.line == 5 for e in be.irq_events)


def test_image_helpers_agree_with_the_reference():
    """docs/reference/qemu-qtest.md §6: byte i of LBA n is (13 * n + i) & 0xFF."""
    assert floppy_sector(0)[:4] == b"\x00\x01\x02\x03"
    assert floppy_sector(1)[255:258] == bytes([(13 + 255) & 0xFF, (13 + 256) & 0xFF, (13 + 257) & 0xFF])
